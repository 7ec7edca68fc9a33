//! `system_info`: hostname, OS and kernel, uptime, load, memory and disks of this host.

use super::blocking::run_blocking;
use super::{Tool, ToolContext, ToolOutput};
use crate::host;
use crate::tools::ToolSpec;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use std::time::Duration;

/// Longest the reading may take (it reads `/proc` and calls `statvfs` on every mount).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(15);

pub struct SystemInfo;

impl Tool for SystemInfo {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "system_info".into(),
            description: "Describe this host: hostname, OS, kernel, uptime, CPU count, load \
                averages, memory and swap, and space on each mounted file system. Read-only."
                .into(),
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        false
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, _args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            // statvfs on a hung network mount can block: keep it off the async workers, and
            // bounded.
            let snapshot = run_blocking("system_info", &ctx.cancel, SNAPSHOT_TIMEOUT, |_| {
                host::snapshot()
            });
            match snapshot.await {
                Ok(snapshot) => match serde_json::to_string_pretty(&snapshot) {
                    Ok(text) => ToolOutput::ok(text),
                    Err(e) => ToolOutput::error(format!("cannot encode the reading: {e}")),
                },
                Err(e) => e.into(),
            }
        })
    }
}
