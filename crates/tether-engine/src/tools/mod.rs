//! Tools the model may call. A tool declares its argument schema, whether a call needs a
//! permission prompt, and whether it is read-only (only read-only tools are offered to
//! remote sessions by default).

pub mod blocking;
pub mod diag;
pub mod files;
pub mod read_file;
pub mod schema;
pub mod shell;
pub mod system_info;

use crate::model::ToolSpec;
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tether_proto::{SessionId, TurnId};
use tokio_util::sync::CancellationToken;

pub use tether_proto::MAX_TOOL_OUTPUT_BYTES;

/// What a tool call returns: success flag and text for the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolOutput {
    pub ok: bool,
    pub output: String,
}

impl ToolOutput {
    pub fn ok(output: impl Into<String>) -> Self {
        ToolOutput {
            ok: true,
            output: output.into(),
        }
    }

    pub fn error(output: impl Into<String>) -> Self {
        ToolOutput {
            ok: false,
            output: output.into(),
        }
    }
}

/// Where a call runs: which session and turn, and the token that cancels it.
#[derive(Clone, Debug)]
pub struct ToolContext {
    pub session_id: SessionId,
    pub turn_id: TurnId,
    pub cancel: CancellationToken,
}

pub trait Tool: Send + Sync {
    fn spec(&self) -> ToolSpec;

    /// Whether this call must be approved first. May depend on the arguments
    /// (a probe of the host itself is harmless, of another host is not).
    fn needs_permission(&self, args: &Value) -> bool;

    /// Whether the tool only reads. Remote sessions get read-only tools by default.
    fn read_only(&self) -> bool;

    /// Runs the call. Must return promptly once `ctx.cancel` fires, killing any child process.
    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput>;
}

/// Decodes a tool's arguments, turning a mismatch into an error result for the model.
pub fn parse_args<T: DeserializeOwned>(tool: &str, args: Value) -> Result<T, ToolOutput> {
    serde_json::from_value(args)
        .map_err(|e| ToolOutput::error(format!("invalid arguments for `{tool}`: {e}")))
}

/// Checks `args` against the tool's JSON schema before it runs; a violation goes back to the
/// model as an error result.
pub fn validate_args(tool: &dyn Tool, args: &Value) -> Result<(), String> {
    if !args.is_object() {
        return Err("arguments must be a JSON object".into());
    }
    schema::validate(&tool.spec().parameters, args)
}

/// Caps text at `MAX_TOOL_OUTPUT_BYTES` on a character boundary. Returns the text and whether
/// it was cut.
pub fn cap_output(mut text: String) -> (String, bool) {
    if text.len() <= MAX_TOOL_OUTPUT_BYTES {
        return (text, false);
    }
    let mut end = MAX_TOOL_OUTPUT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    (text, true)
}

/// Settings of the built-in tools.
#[derive(Clone, Debug)]
pub struct ToolsConfig {
    /// `read_file` only reads below these directories (after resolving symlinks).
    pub read_dirs: Vec<PathBuf>,
    /// Longest a `shell` command may run.
    pub shell_timeout: Duration,
    /// `false` removes `shell` from the toolset entirely.
    pub shell_enabled: bool,
    /// `log_tail` and `log_grep` only read below these directories.
    pub log_dirs: Vec<PathBuf>,
    /// Longest a diagnostic tool's helper command (`journalctl`, `systemctl`) may run.
    pub command_timeout: Duration,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            read_dirs: vec![PathBuf::from("/var/log")],
            shell_timeout: Duration::from_secs(60),
            shell_enabled: true,
            log_dirs: vec![PathBuf::from("/var/log")],
            command_timeout: Duration::from_secs(30),
        }
    }
}

/// The tools offered to a session, by name.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: BTreeMap<String, Arc<dyn Tool>>,
}

impl ToolRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in tools configured by `config`: `system_info`, `read_file`, the diagnostic
    /// toolset, and `shell` unless disabled.
    pub fn builtin(config: &ToolsConfig) -> Self {
        let mut registry = ToolRegistry::new();
        registry.add(Arc::new(system_info::SystemInfo));
        registry.add(Arc::new(read_file::ReadFile::new(config.read_dirs.clone())));
        for tool in diag::diagnostic_tools(&diag::DiagConfig {
            log_dirs: config.log_dirs.clone(),
            command_timeout: config.command_timeout,
        }) {
            registry.add(tool);
        }
        if config.shell_enabled {
            registry.add(Arc::new(shell::Shell::new(config.shell_timeout)));
        }
        registry
    }

    pub fn add(&mut self, tool: Arc<dyn Tool>) {
        self.tools.insert(tool.spec().name, tool);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Tool>> {
        self.tools.get(name)
    }

    pub fn specs(&self) -> Vec<ToolSpec> {
        self.tools.values().map(|t| t.spec()).collect()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    /// Only the tools for which `keep` holds.
    pub fn filtered(&self, mut keep: impl FnMut(&str, &dyn Tool) -> bool) -> ToolRegistry {
        ToolRegistry {
            tools: self
                .tools
                .iter()
                .filter(|(name, tool)| keep(name, tool.as_ref()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_output_cuts_on_a_char_boundary() {
        let s = "é".repeat(MAX_TOOL_OUTPUT_BYTES); // 2 bytes each
        let (capped, truncated) = cap_output(s);
        assert!(truncated);
        assert!(capped.len() <= MAX_TOOL_OUTPUT_BYTES);
        assert_eq!(capped.len() % 2, 0);
        let (short, t) = cap_output("abc".into());
        assert_eq!((short.as_str(), t), ("abc", false));
    }
}
