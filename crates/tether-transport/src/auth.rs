//! Credentials → identity (hard rule 2). A client's id and class come from its token, or from
//! the Unix peer's uid; nothing the client sends can change them.

use std::net::SocketAddr;
use tether_mux::Identity;
use tether_proto::Class;

/// One configured client credential (`[[clients]] name, class, token`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCredential {
    pub name: String,
    pub class: Class,
    pub token: String,
}

/// Shortest token accepted in a config: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required (Authorization: Bearer <token>, or ?token= for browsers)")]
    MissingToken,
    #[error("the token is not valid")]
    BadToken,
    #[error("no tokens are configured, so only loopback peers are accepted")]
    NotLoopback,
}

/// Checks tokens in constant time against the configured credentials.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    credentials: Vec<ClientCredential>,
}

/// Compares without an early exit, so the time taken does not reveal how much matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

impl Authenticator {
    /// Validates the credential list: names and tokens unique, tokens long enough.
    pub fn new(credentials: Vec<ClientCredential>) -> Result<Self, String> {
        for (i, c) in credentials.iter().enumerate() {
            if c.name.trim().is_empty() {
                return Err(format!("clients[{i}].name is empty"));
            }
            if c.token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "clients[{i}].token (client `{}`) is {} characters; use at least {MIN_TOKEN_LEN}",
                    c.name,
                    c.token.len()
                ));
            }
            for (j, d) in credentials.iter().enumerate().take(i) {
                if d.name == c.name {
                    return Err(format!(
                        "clients[{i}].name `{}` repeats clients[{j}]",
                        c.name
                    ));
                }
                if d.token == c.token {
                    return Err(format!(
                        "clients[{i}].token repeats clients[{j}].token: each client needs its own"
                    ));
                }
            }
        }
        Ok(Authenticator { credentials })
    }

    /// True when no tokens are configured (loopback-only mode).
    pub fn is_open(&self) -> bool {
        self.credentials.is_empty()
    }

    /// The identity for a network peer presenting `token`.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        peer: SocketAddr,
    ) -> Result<Identity, AuthError> {
        if self.credentials.is_empty() {
            if !peer.ip().is_loopback() {
                return Err(AuthError::NotLoopback);
            }
            return Ok(Identity {
                principal: "local".into(),
                class: Class::Human,
                name: "local".into(),
            });
        }
        let token = token.ok_or(AuthError::MissingToken)?;
        let mut found: Option<&ClientCredential> = None;
        // Check every credential so the time taken does not depend on which one matched.
        for c in &self.credentials {
            if constant_time_eq(c.token.as_bytes(), token.as_bytes()) {
                found = Some(c);
            }
        }
        let c = found.ok_or(AuthError::BadToken)?;
        Ok(Identity {
            principal: c.name.clone(),
            class: c.class,
            name: c.name.clone(),
        })
    }
}

/// The identity of a Unix-socket peer: human, named after its uid.
pub fn unix_identity(uid: u32) -> Identity {
    let name = user_name(uid).unwrap_or_else(|| format!("uid {uid}"));
    Identity {
        principal: format!("uid:{uid}"),
        class: Class::Human,
        name,
    }
}

/// Looks `uid` up in `/etc/passwd`.
fn user_name(uid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let id: u32 = fields.next()?.parse().ok()?;
        (id == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(name: &str, class: Class, token: &str) -> ClientCredential {
        ClientCredential {
            name: name.into(),
            class,
            token: token.into(),
        }
    }

    #[test]
    fn tokens_map_to_their_identity() {
        let auth = Authenticator::new(vec![
            cred("alice", Class::Human, "alice-token-0123456789"),
            cred("bot", Class::Agent, "bot-token-0123456789ab"),
        ])
        .expect("valid");
        let peer: SocketAddr = "10.0.0.5:5000".parse().expect("addr");
        let id = auth
            .authenticate(Some("bot-token-0123456789ab"), peer)
            .expect("ok");
        assert_eq!((id.principal.as_str(), id.class), ("bot", Class::Agent));
        assert_eq!(
            auth.authenticate(Some("nope"), peer),
            Err(AuthError::BadToken)
        );
        assert_eq!(auth.authenticate(None, peer), Err(AuthError::MissingToken));
    }

    #[test]
    fn open_mode_accepts_only_loopback() {
        let auth = Authenticator::default();
        assert!(
            auth.authenticate(None, "127.0.0.1:1".parse().expect("addr"))
                .is_ok()
        );
        assert!(
            auth.authenticate(None, "[::1]:1".parse().expect("addr"))
                .is_ok()
        );
        assert_eq!(
            auth.authenticate(None, "192.168.1.2:1".parse().expect("addr")),
            Err(AuthError::NotLoopback)
        );
    }

    #[test]
    fn bad_credential_lists_are_refused() {
        assert!(Authenticator::new(vec![cred("a", Class::Human, "short")]).is_err());
        assert!(
            Authenticator::new(vec![
                cred("a", Class::Human, "0123456789abcdef"),
                cred("a", Class::Human, "0123456789abcdeg"),
            ])
            .is_err()
        );
        assert!(
            Authenticator::new(vec![
                cred("a", Class::Human, "0123456789abcdef"),
                cred("b", Class::Agent, "0123456789abcdef"),
            ])
            .is_err()
        );
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn root_is_named() {
        assert_eq!(unix_identity(0).name, "root");
        assert_eq!(unix_identity(0).principal, "uid:0");
    }
}
