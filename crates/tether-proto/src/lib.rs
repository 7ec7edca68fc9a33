//! Wire types for tether. No I/O lives here: only the shapes of what crosses a socket,
//! their serde mappings, and typed decode errors.
//!
//! * [`client`] — the client protocol (PROTOCOL.md §1): requests, replies, events, control frames.
//! * [`ids`] — identifiers shared by every protocol.
//! * [`link`] — the link protocol (PROTOCOL.md §2), agent ↔ hub.
//! * [`time`] — RFC 3339 formatting that never panics, and the sane range of a peer's time.

pub mod client;
pub mod ids;
pub mod link;
pub mod time;

pub use client::*;
pub use ids::*;

/// The client protocol version spoken by this crate (`hello` → `protocol`).
pub const CLIENT_PROTOCOL_VERSION: u32 = 1;

/// Largest message accepted on any client transport (PROTOCOL.md §1, framing).
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Largest tool output carried in a `tool_result` event.
pub const MAX_TOOL_OUTPUT_BYTES: usize = 32 * 1024;
