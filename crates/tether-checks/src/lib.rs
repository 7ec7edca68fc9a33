//! tether-checks: host checks → alert events.
//!
//! * [`plugin`] — the plugin, check and measurement interface.
//! * [`plugins`] — the core plugins (cpu, mem, disk, load, procnum, tcp, http, filecheck,
//!   logfile, exec, systemd, uptime).
//! * [`rules`] — thresholds and the alert lifecycle per alert key (pure, property-tested).
//! * [`config`] — `conf.d/<plugin>.toml` loading and reloading.
//! * [`engine`] — scheduling: intervals, timeouts, one run in flight per instance.
//! * [`notify`] — notifiers: console, webhook, exec.
//! * [`history`] — the agent's local alert history (`tether alerts`).

pub mod config;
pub mod engine;
pub mod history;
pub mod notify;
pub mod plugin;
pub mod plugins;
pub mod rules;
