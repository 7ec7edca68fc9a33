//! tether-link: the agent side of the hub link (PROTOCOL.md §2).
//!
//! * [`machine`] — the I/O-free protocol state machine (handshake, heartbeats, read deadline,
//!   ping/pong, disconnect, backoff, alert delivery accounting).
//! * [`backoff`] — the reconnect table with seedable jitter.
//! * [`spool`] — the SQLite alert spool and the never-blocking [`AlertSink`].

pub mod backoff;
pub mod machine;
pub mod spool;

pub use spool::{AlertSink, AlertSpool};
