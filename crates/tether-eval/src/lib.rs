//! tether-eval: measuring diagnoses. Scenarios of real host faults ([`scenario`]), made and
//! unmade contained in a scratch directory and a process group ([`fault`], [`namespace`],
//! [`helper`]), and deterministic scoring of what a diagnosis reported and did ([`trajectory`],
//! [`score`], [`metered`], [`scorecard`]). No model judges another.
//!
//! The `tether eval` command (crate `tether`) runs each scenario's diagnosis through the same
//! session path as `tether diagnose`.

pub mod fault;
pub mod helper;
pub mod metered;
pub mod namespace;
pub mod scenario;
pub mod score;
pub mod scorecard;
pub mod template;
pub mod trajectory;

use anyhow::{Context, Result};
use scenario::{Answer, Scenario};
use std::path::{Path, PathBuf};
use template::Vars;
use tether_engine::mcp::McpServerConfig;

/// Writes the scenario's scripted investigator `name` into `dir` with its placeholders
/// expanded (see [`Vars::expand_json`]); returns the file's path.
pub fn expand_investigator(
    scenario: &Scenario,
    name: &str,
    vars: &Vars,
    dir: &Path,
) -> Result<PathBuf> {
    let src = scenario.investigators.get(name).with_context(|| {
        format!(
            "{}: no investigators/{name}.json (it has: {})",
            scenario.id,
            scenario
                .investigators
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let text =
        std::fs::read_to_string(src).with_context(|| format!("cannot read {}", src.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", src.display()))?;
    let expanded = vars
        .expand_json(&value)
        .with_context(|| src.display().to_string())?;
    let out = dir.join(format!("investigator-{name}.json"));
    std::fs::write(&out, expanded.to_string())
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out)
}

/// The scenario's MCP fixtures as `[[mcp.servers]]` entries run by `tether eval-helper mcp`
/// (`tether` is this program), their tools files expanded into `dir`.
pub fn mcp_servers(
    scenario: &Scenario,
    vars: &Vars,
    dir: &Path,
    tether: &Path,
) -> Result<Vec<McpServerConfig>> {
    scenario
        .mcp
        .iter()
        .map(|m| {
            let src = scenario.dir.join(&m.tools);
            let text = std::fs::read_to_string(&src)
                .with_context(|| format!("cannot read {}", src.display()))?;
            let expanded = vars
                .expand(&text)
                .with_context(|| src.display().to_string())?;
            let out = dir.join(format!("mcp-{}.toml", m.name));
            std::fs::write(&out, expanded)
                .with_context(|| format!("cannot write {}", out.display()))?;
            helper::McpTools::load(&out)?;
            let mut server = McpServerConfig::new(m.name.clone(), tether.display().to_string());
            server.args = vec![
                "eval-helper".into(),
                "mcp".into(),
                out.display().to_string(),
            ];
            server.needs_permission = m.needs_permission;
            Ok(server)
        })
        .collect()
}

/// The answer's canary files that exist.
pub fn canaries_found(answer: &Answer) -> Vec<String> {
    answer
        .canaries
        .iter()
        .filter(|c| Path::new(c).exists())
        .cloned()
        .collect()
}
