//! Who may do what in a session. Pure functions: the actor asks, these answer, and the
//! property tests check them against the rules of PROTOCOL.md §1 (Arbitration).

use tether_proto::{Class, ClientInfo, ErrorBody, Policy, Reason};

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

/// How much a class may do: an observer watches, an agent also acts, a human also answers
/// every prompt.
fn rank(class: Class) -> u8 {
    match class {
        Class::Observer => 0,
        Class::Agent => 1,
        Class::Human => 2,
    }
}

/// Whether a connection of class `current` may act as `requested` from now on (`hello`'s
/// `class`, PROTOCOL.md §3): the same class or a lower one (`human` → `agent` → `observer`),
/// never a higher one. A class is part of what the credential grants (lowered, it stays
/// lowered for the connection's life), so raising it is `forbidden`.
pub fn may_become(current: Class, requested: Class) -> Result<(), Reason> {
    if rank(requested) <= rank(current) {
        Ok(())
    } else {
        Err(Reason::Forbidden)
    }
}

/// `hello`'s `class` on a connection of class `current` that is attached to `attached`
/// sessions: the refusal, if any, as both the agent and the hub give it.
///
/// Raising is `forbidden`. Changing the class while attached is `bad_request`: each session
/// keeps the class a client attached with (its client list, and whether anyone who may answer
/// a prompt is still attached), so a client lowers itself before it attaches, or detaches
/// first.
pub fn check_class_change(
    current: Class,
    requested: Class,
    attached: usize,
) -> Result<(), ErrorBody> {
    if requested == current {
        return Ok(());
    }
    if may_become(current, requested).is_err() {
        return Err(ErrorBody::new(
            Reason::Forbidden,
            format!(
                "field `class`: a client may lower its class, never raise it; this connection \
                 is {current}-class, so it cannot act as {requested}"
            ),
        )
        .with("field", "class")
        .with("class", current));
    }
    if attached > 0 {
        return Err(ErrorBody::new(
            Reason::BadRequest,
            format!(
                "field `class`: this connection is attached to {attached} session(s), which \
                 know it as {current}-class; detach first, or lower the class before attaching"
            ),
        )
        .with("field", "class")
        .with("class", current));
    }
    Ok(())
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

    #[test]
    fn a_class_may_be_lowered_never_raised() {
        use Class::*;
        let allowed = [
            (Human, Human),
            (Human, Agent),
            (Human, Observer),
            (Agent, Agent),
            (Agent, Observer),
            (Observer, Observer),
        ];
        for current in Class::ALL.iter().copied() {
            for requested in Class::ALL.iter().copied() {
                let ok = allowed.contains(&(current, requested));
                assert_eq!(
                    may_become(current, requested).is_ok(),
                    ok,
                    "{current} -> {requested}"
                );
                let change = check_class_change(current, requested, 0);
                assert_eq!(change.is_ok(), ok, "{current} -> {requested}: {change:?}");
                if let Err(e) = change {
                    assert_eq!(e.reason, Reason::Forbidden);
                    assert!(e.message.starts_with("field `class`"), "{}", e.message);
                }
            }
        }
        // Attached: only "no change" passes.
        let e = check_class_change(Human, Agent, 1).expect_err("attached");
        assert_eq!(e.reason, Reason::BadRequest);
        assert!(e.message.contains("detach first"), "{}", e.message);
        assert_eq!(check_class_change(Agent, Agent, 3), Ok(()));
    }

    proptest! {
        /// Lowering a class never lets a client do more than its credential allows: whatever
        /// a lowered client may do, the same client at its credential's class may do too.
        #[test]
        fn lowering_never_grants_anything(
            policy in prop_oneof![Just(Policy::Human), Just(Policy::Any)],
            from in class(), to in class(), o_class in class(),
            a_principal in 0u8..3, o_principal in 0u8..3,
        ) {
            prop_assume!(may_become(from, to).is_ok());
            let original = client(&format!("p{a_principal}"), 1, from);
            let lowered = client(&format!("p{a_principal}"), 1, to);
            let originator = client(&format!("p{o_principal}"), 2, o_class);
            if may_answer(policy, &lowered, &originator).is_ok() {
                prop_assert!(may_answer(policy, &original, &originator).is_ok());
            }
            if may_act(to).is_ok() {
                prop_assert!(may_act(from).is_ok());
            }
            if may_choose_policy(to, policy).is_ok() {
                prop_assert!(may_choose_policy(from, policy).is_ok());
            }
            // Lowering is transitive: a lowered client can go on lowering, never back up.
            prop_assert!(may_become(to, from).is_err() || to == from);
        }

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
