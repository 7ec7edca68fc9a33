//! tether-host: what tether reads and runs on the host it is on, without a model.
//!
//! * [`host`] — `/proc` and `/sys` readings; [`inspect`] — inspection reports built from the
//!   diagnostic tools' readings against fixed thresholds.
//! * [`tools`] — the tool trait, the registry and the built-in tools (`system_info`,
//!   `read_file`, the diagnostic toolset and its probes, `shell`). A tool declares whether a
//!   call needs permission; asking for it, and the audit, are the engine's turn loop.
//! * Helpers shared with the engine, the checks and the link: [`process`] (the process-group
//!   kill and the minimal child environment), [`text`], [`sync`] (the locking policy),
//!   [`perms`] (private state files).
//!
//! Nothing here depends on `tether-engine`: the host checks and the hub link build on this
//! crate without the model providers.

pub mod host;
pub mod inspect;
pub mod perms;
pub mod process;
pub mod sync;
pub mod text;
pub mod tls;
pub mod tools;
