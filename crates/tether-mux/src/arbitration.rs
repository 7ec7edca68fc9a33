//! Who may do what in a session. Pure functions: the actor asks, these answer, and the
//! property tests check them against the rules of PROTOCOL.md §1 (Arbitration).

use tether_proto::{Class, ClientInfo, Policy, Reason};

/// Whether `answerer` may answer a permission request raised in a turn started by
/// `originator`, under `policy`.
///
/// The self-approval rule is checked before the policy so that an agent answering its own
/// request always learns the real reason (`agent_cannot_self_approve`), whatever the policy.
/// "Its own" means the same credential (principal), not merely the same connection: an agent
/// cannot dodge the rule by reconnecting.
pub fn may_answer(
    policy: Policy,
    answerer: &ClientInfo,
    originator: &ClientInfo,
) -> Result<(), Reason> {
    match answerer.class {
        Class::Observer => Err(Reason::Forbidden),
        Class::Agent if answerer.client_id.principal() == originator.client_id.principal() => {
            Err(Reason::AgentCannotSelfApprove)
        }
        Class::Agent if policy == Policy::Human => Err(Reason::HumanAnswerRequired),
        Class::Agent | Class::Human => Ok(()),
    }
}

/// Whether a client of `class` may send input, cancel or close.
pub fn may_act(class: Class) -> Result<(), Reason> {
    match class {
        Class::Observer => Err(Reason::Forbidden),
        Class::Human | Class::Agent => Ok(()),
    }
}

/// Whether a client of `class` may put a session under `policy`. Under `any`, agent-class
/// clients answer each other's prompts, so only a human may choose it (PROTOCOL.md §3).
pub fn may_choose_policy(class: Class, policy: Policy) -> Result<(), Reason> {
    match (policy, class) {
        (Policy::Human, _) | (Policy::Any, Class::Human) => Ok(()),
        (Policy::Any, Class::Agent | Class::Observer) => Err(Reason::Forbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tether_proto::ClientId;

    fn client(principal: &str, conn: u32, class: Class) -> ClientInfo {
        ClientInfo {
            client_id: ClientId(format!("{principal}/{conn}")),
            class,
            name: principal.into(),
        }
    }

    #[test]
    fn only_humans_choose_policy_any() {
        for class in Class::ALL.iter().copied() {
            assert_eq!(may_choose_policy(class, Policy::Human), Ok(()));
            let any = may_choose_policy(class, Policy::Any);
            assert_eq!(any.is_ok(), class == Class::Human, "{class}: {any:?}");
        }
    }

    fn class() -> impl Strategy<Value = Class> {
        prop_oneof![
            Just(Class::Human),
            Just(Class::Agent),
            Just(Class::Observer)
        ]
    }

    proptest! {
        #[test]
        fn rules_hold_for_every_combination(
            policy in prop_oneof![Just(Policy::Human), Just(Policy::Any)],
            a_class in class(), o_class in class(),
            a_principal in 0u8..3, o_principal in 0u8..3,
            a_conn in 0u32..3, o_conn in 0u32..3,
        ) {
            let answerer = client(&format!("p{a_principal}"), a_conn, a_class);
            let originator = client(&format!("p{o_principal}"), o_conn, o_class);
            let verdict = may_answer(policy, &answerer, &originator);
            // Observers never answer.
            if a_class == Class::Observer {
                prop_assert_eq!(verdict, Err(Reason::Forbidden));
            }
            // An agent never approves a request raised in its own turn, on any connection.
            if a_class == Class::Agent && a_principal == o_principal {
                prop_assert_eq!(verdict, Err(Reason::AgentCannotSelfApprove));
            }
            // Under the default policy only humans answer.
            if policy == Policy::Human && verdict.is_ok() {
                prop_assert_eq!(a_class, Class::Human);
            }
            // Humans may always answer.
            if a_class == Class::Human {
                prop_assert_eq!(verdict, Ok(()));
            }
            // Under `any`, an agent may answer someone else's turn.
            if policy == Policy::Any && a_class == Class::Agent && a_principal != o_principal {
                prop_assert_eq!(verdict, Ok(()));
            }
        }
    }
}
