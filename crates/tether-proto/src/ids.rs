//! Identifiers. Each is a string on the wire; the newtypes keep them from being mixed up.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Per-session event sequence number; starts at 1 and has no holes.
pub type Seq = u64;

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// A session, unique per agent (UUID v7).
    SessionId
);
string_id!(
    /// A turn within a session (UUID v7).
    TurnId
);
string_id!(
    /// One tool call within a turn (UUID v7); permission prompts are keyed by it.
    CallId
);
string_id!(
    /// A queued input's receipt (UUID v7).
    InputId
);
string_id!(
    /// A connected client: the credential's stable principal plus a per-connection suffix,
    /// written `<principal>/<n>`.
    ClientId
);

impl ClientId {
    /// The stable part derived from the credential (everything before the last `/`).
    pub fn principal(&self) -> &str {
        match self.0.rfind('/') {
            Some(i) => &self.0[..i],
            None => &self.0,
        }
    }
}
