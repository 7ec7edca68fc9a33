//! tether-link: the agent side of the hub link (PROTOCOL.md §2).
//!
//! * [`machine`] — the I/O-free protocol state machine (handshake, heartbeats, read deadline,
//!   ping/pong, disconnect, backoff, alert delivery accounting).
//! * [`backoff`] — the reconnect table with seedable jitter.
//! * [`spool`] — the SQLite alert spool and the never-blocking [`AlertSink`].
//! * [`driver`] — the tokio driver (dial, TLS, reader/writer, timers, alert flushing).
//! * [`outbox`] — per-connection priority queues whose sends watch the connection.
//! * [`remote`] — remote sessions through the multiplexer, v1 translation, v2 pass-through.

pub mod backoff;
pub mod driver;
pub mod machine;
pub mod outbox;
pub mod remote;
pub mod spool;

pub use driver::{Link, LinkError, LinkOptions, LinkStatus, TlsOptions};
pub use remote::{RemoteConfig, RemoteSessions};
pub use spool::{AlertSink, AlertSpool};
