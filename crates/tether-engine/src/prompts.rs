//! What the model is told: the system prompt per mode, and the first input of a session that
//! starts by itself (`diagnose` and `inspect` with params).

use crate::host;
use crate::tools::ToolRegistry;
use serde_json::{Map, Value};
use tether_proto::Mode;

fn param<'a>(params: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    params
        .get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A short description of the host, gathered when the session starts.
fn host_line() -> String {
    let snap = host::snapshot();
    let mem = snap
        .memory
        .as_ref()
        .map(|m| {
            format!(
                ", memory {} ({}% used)",
                host::human_bytes(m.total_bytes),
                m.used_pct
            )
        })
        .unwrap_or_default();
    let load = snap
        .load
        .as_ref()
        .map(|l| format!(", load {:.2}/{:.2}/{:.2}", l.one, l.five, l.fifteen))
        .unwrap_or_default();
    format!(
        "Host: {} ({}), kernel {} {}, {} CPUs, up {} s{mem}{load}.",
        snap.hostname,
        snap.os.as_deref().unwrap_or("unknown OS"),
        snap.kernel.release,
        snap.kernel.arch,
        snap.cpus,
        snap.uptime_sec.unwrap_or(0),
    )
}

pub fn system_prompt(mode: Mode, params: &Map<String, Value>, tools: &ToolRegistry) -> String {
    let mut prompt = String::from(
        "You are tether, an operations assistant for Linux hosts, running on the host below. \
         Investigate with the tools instead of guessing; prefer read-only tools. A tool with side \
         effects runs only after a human approves it, and may be denied: then continue without \
         it. Be concise and precise, quote the figures you rely on, and say what you could not \
         check.\n\n",
    );
    prompt.push_str(&host_line());
    prompt.push('\n');
    let names: Vec<&str> = tools.names().collect();
    prompt.push_str(&format!("Tools: {}.\n", names.join(", ")));
    if mode == Mode::Diagnose {
        prompt.push_str(
            "\nYou are diagnosing an alert raised on this host. Gather evidence with the tools \
             first. Then answer with a Markdown report and nothing else, with these sections:\n\
             ## Summary (one or two sentences)\n\
             ## Root cause (the most likely cause, and how sure you are)\n\
             ## Evidence (the figures and log lines that support it, with the tool that showed them)\n\
             ## Suggested actions (ordered, safest first; mark anything disruptive)\n",
        );
        for key in ["plugin", "target"] {
            if let Some(v) = param(params, key) {
                prompt.push_str(&format!("Alert {key}: {v}\n"));
            }
        }
    }
    prompt
}

/// The input a session starts with by itself, if its params call for one.
pub fn initial_input(mode: Mode, params: &Map<String, Value>) -> Option<String> {
    match mode {
        Mode::Chat => None,
        Mode::Inspect => {
            let plugin = param(params, "plugin")?;
            Some(match param(params, "target") {
                Some(t) => format!("inspect {plugin} {t}"),
                None => format!("inspect {plugin}"),
            })
        }
        Mode::Diagnose => {
            let alert = param(params, "alert")
                .or_else(|| param(params, "descriptions"))
                .or_else(|| param(params, "message"));
            let plugin = param(params, "plugin");
            let target = param(params, "target");
            if alert.is_none() && plugin.is_none() {
                return None;
            }
            let mut text = format!(
                "Diagnose this alert: {}",
                alert.unwrap_or("(no description given)")
            );
            if let Some(p) = plugin {
                text.push_str(&format!("\nplugin: {p}"));
            }
            if let Some(t) = target {
                text.push_str(&format!("\ntarget: {t}"));
            }
            Some(text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn sessions_with_params_start_by_themselves() {
        assert_eq!(
            initial_input(
                Mode::Inspect,
                &map(json!({"plugin": "disk", "target": "/data"}))
            ),
            Some("inspect disk /data".into())
        );
        let d = initial_input(
            Mode::Diagnose,
            &map(json!({"descriptions": "disk /data 95% full", "plugin": "disk"})),
        )
        .expect("diagnose input");
        assert!(d.contains("disk /data 95% full") && d.contains("plugin: disk"));
        assert_eq!(
            initial_input(Mode::Chat, &map(json!({"plugin": "x"}))),
            None
        );
        assert_eq!(initial_input(Mode::Inspect, &map(json!({}))), None);
    }

    #[test]
    fn the_diagnose_prompt_asks_for_the_report_sections() {
        let p = system_prompt(Mode::Diagnose, &Map::new(), &ToolRegistry::new());
        for section in ["## Root cause", "## Evidence", "## Suggested actions"] {
            assert!(p.contains(section));
        }
    }
}
