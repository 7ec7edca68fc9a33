//! Credentials: random tokens, stored only as SHA-256 hashes, compared in constant time.

use ring::rand::{SecureRandom, SystemRandom};

/// A new random token: `tt_` followed by 32 random bytes in hex.
pub fn generate() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the system random source failed".to_owned())?;
    let mut s = String::with_capacity(3 + 64);
    s.push_str("tt_");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Ok(s)
}

/// The SHA-256 of a token, in hex: what the store keeps.
pub fn hash(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// How often the hub looks for credentials revoked by another process (`tether hub token
/// revoke` writes the store directly; so does any other replica).
pub const REVOCATION_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// Revocations are looked for this far back from the newest one seen, so a revoking process
/// whose clock runs a little behind this one's is not missed (cutting twice is harmless).
const REVOCATION_SKEW_MS: i64 = 60_000;

/// Cuts the live link of every agent whose credential is revoked, within
/// [`REVOCATION_POLL`] of the revocation, whoever revoked it.
pub fn spawn_revocation_watch(hub: crate::Hub, stop: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let mut seen = crate::store::now_ms();
        let mut tick = tokio::time::interval(REVOCATION_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let since = seen - REVOCATION_SKEW_MS;
            let revoked = match hub
                .store()
                .run(move |s| s.tokens_revoked_since(since))
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot check for revoked credentials");
                    continue;
                }
            };
            for (token_id, at) in revoked {
                seen = seen.max(at);
                for agent in hub.agents_with_token(&token_id) {
                    tracing::warn!(agent = %agent.agent_id, token = %token_id, "credential revoked: closing the agent's link");
                    agent
                        .disconnect("this agent's credential was revoked", 3600)
                        .await;
                }
            }
        }
    });
}

/// Constant-time equality of two secrets.
pub fn same(a: &str, b: &str) -> bool {
    tether_transport::auth::constant_time_eq(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let a = generate().expect("token");
        let b = generate().expect("token");
        assert_ne!(a, b);
        assert!(a.starts_with("tt_") && a.len() == 67);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(same("x", "x") && !same("x", "y"));
    }
}
