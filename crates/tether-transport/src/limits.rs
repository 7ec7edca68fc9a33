//! Connection caps: a total per server and one per credential. The total protects the process
//! (descriptors, memory); the per-credential cap keeps one client — an observer's token, a
//! runaway script — from taking every place, so the humans who answer permission prompts can
//! always connect (up to their own cap).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Connections served at once, all credentials together; more get `overloaded`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Connections one credential (a token's client, a Unix user, an operator) may hold at once.
pub const DEFAULT_MAX_PER_CLIENT: usize = 64;

/// Why a connection was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("too many connections ({0} open); retry shortly")]
    Total(usize),
    #[error("`{principal}` already has {cap} connections open, its limit; close one first")]
    PerClient { principal: String, cap: usize },
}

/// The caps, and what is open now.
#[derive(Debug)]
pub struct ConnectionLimits {
    total: usize,
    per_client: usize,
    /// Caps of particular principals, overriding `per_client`.
    caps: HashMap<String, usize>,
    state: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_principal: HashMap<String, usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits::new(DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_PER_CLIENT)
    }
}

impl ConnectionLimits {
    /// `total` connections at most, `per_client` for each principal.
    pub fn new(total: usize, per_client: usize) -> Self {
        ConnectionLimits {
            total,
            per_client,
            caps: HashMap::new(),
            state: Mutex::new(Open::default()),
        }
    }

    /// Gives `principal` its own cap.
    pub fn with_cap(mut self, principal: &str, cap: usize) -> Self {
        self.caps.insert(principal.to_owned(), cap);
        self
    }

    /// The cap of `principal`.
    pub fn cap(&self, principal: &str) -> usize {
        self.caps.get(principal).copied().unwrap_or(self.per_client)
    }

    /// A place for one connection of `principal`, held until the permit is dropped.
    pub fn acquire(self: &Arc<Self>, principal: &str) -> Result<ConnectionPermit, LimitError> {
        let cap = self.cap(principal);
        let mut open = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mine = open.by_principal.get(principal).copied().unwrap_or(0);
        if mine >= cap {
            return Err(LimitError::PerClient {
                principal: principal.to_owned(),
                cap,
            });
        }
        if open.total >= self.total {
            return Err(LimitError::Total(open.total));
        }
        open.total += 1;
        open.by_principal.insert(principal.to_owned(), mine + 1);
        Ok(ConnectionPermit {
            limits: self.clone(),
            principal: principal.to_owned(),
        })
    }

    /// Connections holding a permit now.
    pub fn open(&self) -> usize {
        self.state.lock().map(|o| o.total).unwrap_or_default()
    }
}

/// One connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    principal: String,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut open = self.limits.state.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_principal.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                open.by_principal.remove(&self.principal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_principal_and_in_total() {
        let limits = Arc::new(ConnectionLimits::new(5, 2).with_cap("alice", 3));
        let w1 = limits.acquire("watcher").expect("1");
        let _w2 = limits.acquire("watcher").expect("2");
        assert_eq!(
            limits.acquire("watcher").map(|_| ()),
            Err(LimitError::PerClient {
                principal: "watcher".into(),
                cap: 2
            })
        );
        let a: Vec<_> = (0..3)
            .map(|_| limits.acquire("alice").expect("alice"))
            .collect();
        assert!(matches!(
            limits.acquire("alice"),
            Err(LimitError::PerClient { cap: 3, .. })
        ));
        assert_eq!(limits.open(), 5);
        assert_eq!(limits.acquire("bob").map(|_| ()), Err(LimitError::Total(5)));
        drop(w1);
        let _w3 = limits.acquire("watcher").expect("freed");
        drop(a);
        assert_eq!(limits.open(), 2);
        assert!(
            !limits
                .state
                .lock()
                .expect("lock")
                .by_principal
                .contains_key("alice")
        );
    }
}
