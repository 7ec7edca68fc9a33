//! `systemd_unit`: the state of a systemd unit and its newest journal lines, or the list of
//! failed units.

use super::{clip, json_output, run_program};
use crate::tools::ToolSpec;
use crate::tools::{Tool, ToolContext, ToolOutput, parse_args};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The `systemctl show` properties reported.
pub const PROPERTIES: &[&str] = &[
    "Id",
    "Description",
    "LoadState",
    "LoadError",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "Result",
    "MainPID",
    "ExecMainStatus",
    "ExecMainCode",
    "ExecMainStartTimestamp",
    "ExecMainExitTimestamp",
    "ActiveEnterTimestamp",
    "InactiveEnterTimestamp",
    "StateChangeTimestamp",
    "NRestarts",
    "Restart",
    "MemoryCurrent",
    "CPUUsageNSec",
    "TasksCurrent",
    "FragmentPath",
    "StatusText",
];

/// At most this many failed units are listed.
pub const MAX_FAILED: usize = 100;

/// The message when the host does not run systemd.
pub const NOT_AVAILABLE: &str = "systemd is not available on this host (/run/systemd/system \
    does not exist, so systemd is not the init system)";

/// A unit `systemctl list-units --state=failed` lists.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FailedUnit {
    pub unit: String,
    pub load: String,
    pub active: String,
    pub sub: String,
    pub description: String,
}

/// What `systemd_unit` prints: one unit's state and journal, or (without `unit`) the failed
/// units.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SystemdReport {
    pub unit: Option<String>,
    /// `systemctl show` properties ([`PROPERTIES`]); empty when listing failed units.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The newest journal lines of the unit, oldest first.
    #[serde(default)]
    pub journal: Vec<String>,
    /// Why the journal could not be read, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_error: Option<String>,
    /// Only without `unit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_units: Option<Vec<FailedUnit>>,
    pub truncated: bool,
}

/// Parses `KEY=value` lines of `systemctl show`, keeping the keys in [`PROPERTIES`] that have
/// a value.
pub fn parse_show(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, v)| PROPERTIES.contains(k) && !v.is_empty())
        .map(|(k, v)| (k.to_owned(), clip(v, 500)))
        .collect()
}

/// Parses `systemctl list-units --no-legend --plain` lines.
pub fn parse_failed(text: &str) -> Vec<FailedUnit> {
    text.lines()
        .filter_map(|l| {
            // Some versions still print a status bullet before the name.
            let l = l.trim_start().trim_start_matches(['●', '*']).trim_start();
            let mut parts = l.split_whitespace();
            let unit = parts.next()?.to_owned();
            let load = parts.next()?.to_owned();
            let active = parts.next()?.to_owned();
            let sub = parts.next()?.to_owned();
            let description = parts.collect::<Vec<_>>().join(" ");
            Some(FailedUnit {
                unit,
                load,
                active,
                sub,
                description,
            })
        })
        .collect()
}

/// Whether `unit` is a plausible unit name: systemd's characters only, not an option.
pub fn valid_unit_name(unit: &str) -> bool {
    !unit.is_empty()
        && unit.len() <= 256
        && !unit.starts_with('-')
        && unit
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.@\\".contains(c))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    #[serde(default)]
    unit: Option<String>,
    #[serde(default)]
    lines: Option<usize>,
}

pub struct SystemdUnit {
    timeout: Duration,
}

impl SystemdUnit {
    pub fn new(timeout: Duration) -> Self {
        SystemdUnit { timeout }
    }
}

impl Tool for SystemdUnit {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "systemd_unit".into(),
            description: "State of a systemd unit (`systemctl show`: ActiveState, SubState, \
                Result, MainPID, ExecMainStatus, NRestarts, memory, timestamps, …) and its \
                newest journal lines (`journalctl -u`). Without `unit`, lists the failed units. \
                Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "unit": {"type": "string", "minLength": 1, "maxLength": 256,
                        "description": "Unit name, e.g. nginx.service (a name without a suffix means .service)."},
                    "lines": {"type": "integer", "minimum": 0, "maximum": 200,
                        "description": "Journal lines to show (default 30; 0 for none)."}
                },
                "additionalProperties": false
            }),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        false
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: Args = match parse_args("systemd_unit", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            if let Some(u) = &args.unit
                && !valid_unit_name(u)
            {
                return ToolOutput::error(format!(
                    "`unit`: {u:?} is not a valid unit name (letters, digits and :-_.@\\ only)"
                ));
            }
            if !Path::new("/run/systemd/system").exists() {
                return ToolOutput::error(NOT_AVAILABLE);
            }
            let Some(unit) = args.unit else {
                return match run_program(
                    "systemctl",
                    &[
                        "list-units",
                        "--state=failed",
                        "--no-legend",
                        "--plain",
                        "--no-pager",
                        "--all",
                    ],
                    self.timeout,
                    &ctx.cancel,
                )
                .await
                {
                    Ok(out) if out.success => {
                        let mut failed = parse_failed(&out.stdout);
                        let truncated = failed.len() > MAX_FAILED;
                        failed.truncate(MAX_FAILED);
                        json_output(
                            &SystemdReport {
                                unit: None,
                                properties: BTreeMap::new(),
                                journal: Vec::new(),
                                journal_error: None,
                                failed_units: Some(failed),
                                truncated,
                            },
                            true,
                        )
                    }
                    Ok(out) => ToolOutput::error(format!(
                        "systemctl list-units failed: {}",
                        clip(&out.stderr, 500)
                    )),
                    Err(e) if e == "cancelled" => super::cancelled(),
                    Err(e) => ToolOutput::error(e),
                };
            };
            let props = PROPERTIES.join(",");
            let show = run_program(
                "systemctl",
                &["show", "--no-pager", "-p", &props, "--", &unit],
                self.timeout,
                &ctx.cancel,
            )
            .await;
            let properties = match show {
                Ok(out) if out.success => parse_show(&out.stdout),
                Ok(out) => {
                    return ToolOutput::error(format!(
                        "systemctl show {unit} failed: {}",
                        clip(&out.stderr, 500)
                    ));
                }
                Err(e) if e == "cancelled" => return super::cancelled(),
                Err(e) => return ToolOutput::error(e),
            };
            let want = args.lines.unwrap_or(30).min(200);
            let (mut journal, mut journal_error) = (Vec::new(), None);
            if want > 0 {
                let n = want.to_string();
                match run_program(
                    "journalctl",
                    &["-u", &unit, "-n", &n, "--no-pager", "-q", "-o", "short-iso"],
                    self.timeout,
                    &ctx.cancel,
                )
                .await
                {
                    Ok(out) if out.success => {
                        journal = out.stdout.lines().map(|l| clip(l, 500)).collect();
                    }
                    Ok(out) => journal_error = Some(clip(&out.stderr, 500)),
                    Err(e) if e == "cancelled" => return super::cancelled(),
                    Err(e) => journal_error = Some(e),
                }
            }
            // Keep the newest lines within the output budget.
            let mut used = 0;
            let keep = journal
                .iter()
                .rev()
                .take_while(|l| {
                    used += l.len() + 8;
                    used <= super::logs::TEXT_BUDGET
                })
                .count();
            let truncated = keep < journal.len();
            journal.drain(..journal.len() - keep);
            json_output(
                &SystemdReport {
                    unit: Some(unit),
                    properties,
                    journal,
                    journal_error,
                    failed_units: None,
                    truncated,
                },
                true,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_output_keeps_the_known_properties() {
        let text = "Id=nginx.service\nActiveState=failed\nSubState=failed\nNRestarts=4\n\
                    ExecMainStatus=1\nStatusText=\nSomethingElse=1\nMainPID=0\n";
        let p = parse_show(text);
        assert_eq!(p.get("ActiveState").map(String::as_str), Some("failed"));
        assert_eq!(p.get("NRestarts").map(String::as_str), Some("4"));
        assert!(!p.contains_key("StatusText"));
        assert!(!p.contains_key("SomethingElse"));
    }

    #[test]
    fn failed_units_parse_with_or_without_bullets() {
        let text = "nginx.service loaded failed failed A high performance web server\n\
                    ● foo.mount     loaded failed failed /foo\n";
        let units = parse_failed(text);
        assert_eq!(units.len(), 2);
        assert_eq!(units[0].unit, "nginx.service");
        assert_eq!(units[0].description, "A high performance web server");
        assert_eq!(units[1].unit, "foo.mount");
    }

    #[test]
    fn unit_names_are_checked() {
        assert!(valid_unit_name("nginx.service"));
        assert!(valid_unit_name("getty@tty1.service"));
        assert!(valid_unit_name("dev-disk-by\\x2duuid.device"));
        assert!(!valid_unit_name("--all"));
        assert!(!valid_unit_name("a b"));
        assert!(!valid_unit_name("x;rm"));
        assert!(!valid_unit_name(""));
    }
}
