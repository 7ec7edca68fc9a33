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

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tether_proto::{SessionId, TurnId};
use tokio_util::sync::CancellationToken;

pub use tether_proto::MAX_TOOL_OUTPUT_BYTES;

/// A tool offered to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments object.
    pub parameters: Value,
}

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
    /// Tools the host has that this registry leaves out on purpose, each with the reason a
    /// call to it is answered with (rather than "unknown tool").
    withheld: BTreeMap<String, String>,
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
        } else {
            registry.withhold(
                "shell",
                "`shell` is turned off on this host (`shell = false` under [tools] in its \
                 agent.toml)",
            );
        }
        registry
    }

    pub fn add(&mut self, tool: Arc<dyn Tool>) {
        let name = tool.spec().name;
        self.withheld.remove(&name);
        self.tools.insert(name, tool);
    }

    /// Leaves `name` out; a call to it is answered with `why`, which should say how it could
    /// be allowed.
    pub fn withhold(&mut self, name: &str, why: impl Into<String>) {
        self.tools.remove(name);
        self.withheld.insert(name.to_owned(), why.into());
    }

    /// Why `name` is left out, when it is on purpose.
    pub fn withheld(&self, name: &str) -> Option<&str> {
        self.withheld.get(name).map(String::as_str)
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

    /// Only the tools for which `keep` holds (what this registry withholds stays withheld,
    /// with its reason; the tools `keep` drops are simply absent).
    pub fn filtered(&self, mut keep: impl FnMut(&str, &dyn Tool) -> bool) -> ToolRegistry {
        ToolRegistry {
            tools: self
                .tools
                .iter()
                .filter(|(name, tool)| keep(name, tool.as_ref()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            withheld: self.withheld.clone(),
        }
    }

    /// The toolset of sessions started from the hub when `remote_tools` is not set: every
    /// read-only tool. The others are withheld with a message saying how to allow them.
    pub fn read_only_for_hub(&self) -> ToolRegistry {
        self.hub_subset(None, |_, tool| tool.read_only())
    }

    /// The toolset of sessions started from the hub: the tools `remote_tools` (under [hub] in
    /// agent.toml) names, or [`Self::read_only_for_hub`] when it is not set. The others are
    /// withheld with a message saying how to allow them. Errors name an unknown tool.
    pub fn for_hub_sessions(
        &self,
        remote_tools: Option<&[String]>,
    ) -> Result<ToolRegistry, String> {
        let Some(names) = remote_tools else {
            return Ok(self.read_only_for_hub());
        };
        for n in names {
            if self.get(n).is_none() {
                if let Some(why) = self.withheld(n) {
                    return Err(format!("hub.remote_tools: {why}"));
                }
                let known: Vec<&str> = self.names().collect();
                return Err(format!(
                    "hub.remote_tools: unknown tool `{n}`; tools are: {}",
                    known.join(", ")
                ));
            }
        }
        Ok(self.hub_subset(Some(names), |name, _| names.iter().any(|n| n == name)))
    }

    fn hub_subset(
        &self,
        configured: Option<&[String]>,
        mut keep: impl FnMut(&str, &dyn Tool) -> bool,
    ) -> ToolRegistry {
        let mut subset = self.filtered(&mut keep);
        // The line an operator would write: what hub sessions get now, plus the tool.
        let allowed: Vec<String> = match configured {
            Some(names) => names.to_vec(),
            None => subset.names().map(str::to_owned).collect(),
        };
        let why_not = match configured {
            None => {
                "without `remote_tools` under [hub] in this host's agent.toml they get \
                     only read-only tools"
            }
            Some(_) => "it is not in `remote_tools` under [hub] in this host's agent.toml",
        };
        let left_out: Vec<&str> = self.names().filter(|n| subset.get(n).is_none()).collect();
        for name in left_out {
            let line = allowed
                .iter()
                .map(String::as_str)
                .chain(std::iter::once(name))
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ");
            subset.withheld.insert(
                name.to_owned(),
                format!(
                    "`{name}` is not allowed in sessions started from the hub: {why_not}. An \
                     operator of this host can allow it with: remote_tools = [{line}]"
                ),
            );
        }
        subset
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

    #[test]
    fn hub_sessions_are_told_how_to_allow_what_they_do_not_get() {
        let all = ToolRegistry::builtin(&ToolsConfig::default());
        // Default: the read-only tools; `shell` is withheld with the line that allows it.
        let hub = all.for_hub_sessions(None).expect("default toolset");
        assert!(hub.get("shell").is_none());
        assert!(hub.get("memory").is_some());
        let why = hub.withheld("shell").expect("shell is withheld");
        assert!(
            why.starts_with("`shell` is not allowed in sessions started from the hub: ")
                && why.contains("only read-only tools"),
            "{why}"
        );
        let read_only: Vec<String> = hub.names().map(|n| format!("\"{n}\"")).collect();
        let line = format!("remote_tools = [{}, \"shell\"]", read_only.join(", "));
        assert!(why.ends_with(&line), "{why}\nwant: {line}");
        assert!(hub.withheld("memory").is_none());
        assert!(hub.withheld("no_such_tool").is_none());

        // Configured: the line keeps what is configured and adds the tool.
        let names = vec!["memory".to_owned(), "disks".to_owned()];
        let hub = all.for_hub_sessions(Some(&names)).expect("configured");
        assert_eq!(hub.names().collect::<Vec<_>>(), ["disks", "memory"]);
        let why = hub.withheld("cpu_load").expect("withheld");
        assert!(
            why.contains("not in `remote_tools`")
                && why.ends_with("remote_tools = [\"memory\", \"disks\", \"cpu_load\"]"),
            "{why}"
        );

        let err = all
            .for_hub_sessions(Some(&["shel".to_owned()]))
            .err()
            .expect("unknown");
        assert!(err.contains("unknown tool `shel`"), "{err}");
    }

    #[test]
    fn a_tool_turned_off_stays_explained_everywhere() {
        let all = ToolRegistry::builtin(&ToolsConfig {
            shell_enabled: false,
            ..ToolsConfig::default()
        });
        assert!(all.get("shell").is_none());
        let why = all.withheld("shell").expect("withheld");
        assert!(why.contains("`shell = false` under [tools]"), "{why}");
        // The hub's subset keeps the host's reason: allowing it in remote_tools would not help.
        let hub = all.for_hub_sessions(None).expect("default");
        assert_eq!(hub.withheld("shell"), Some(why));
        let err = all
            .for_hub_sessions(Some(&["shell".to_owned()]))
            .err()
            .expect("refused");
        assert!(err.contains("turned off"), "{err}");
        // Adding the tool back lifts the reason.
        let mut again = all.clone();
        again.add(Arc::new(shell::Shell::new(Duration::from_secs(1))));
        assert!(again.withheld("shell").is_none());
    }
}
