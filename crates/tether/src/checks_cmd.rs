//! `tether checks list`, `tether checks run PLUGIN`, `tether alerts`.

use crate::client_cmds::ConnectArgs;
use crate::config::AgentConfig;
use crate::verdict::Verdict;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tether_checks::engine::format_value;
use tether_checks::plugin::{CheckContext, Status};
use tether_checks::rules::judge;
use tokio_util::sync::CancellationToken;

/// `tether checks list`: each instance of the running agent with its last status and values,
/// then the config files that are broken (not in effect) with their errors.
pub async fn list(connect: &ConnectArgs, as_json: bool) -> Result<()> {
    let (mut client, _) = connect.connect().await?;
    let result = client
        .request("checks.list", json!({}))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&result)?)?;
        return Ok(());
    }
    let empty = Vec::new();
    let instances = result["instances"].as_array().unwrap_or(&empty);
    let errors = result["config_errors"].as_array().unwrap_or(&empty);
    if instances.is_empty() && errors.is_empty() {
        outln!("no check instances (put <plugin>.toml files in the agent's conf.d/)")?;
    }
    for i in instances {
        let name = i["name"].as_str().unwrap_or("-");
        let status = i["last_status"].as_str().unwrap_or("not run yet");
        outln!(
            "{:<10} {:<16} every {:<6} {:<11} last run {}",
            i["plugin"].as_str().unwrap_or("?"),
            name,
            i["interval"].as_str().unwrap_or("?"),
            status,
            i["last_run"].as_str().unwrap_or("never"),
        )?;
        if let Some(values) = i["last_values"].as_array() {
            for v in values {
                // (check, target, value, status) tuples.
                let part = |n: usize| v.get(n).and_then(Value::as_str).unwrap_or("").to_owned();
                outln!(
                    "    {:<18} {:<28} {:>14}  {}",
                    part(0),
                    part(1),
                    part(2),
                    part(3)
                )?;
            }
        }
        if let Some(e) = i["last_error"].as_str() {
            outln!("    error: {e}")?;
        }
    }
    if !errors.is_empty() {
        // In the listing itself (stdout), not only in the agent's log: a broken file is not in
        // effect, and its plugin keeps the instances it had before.
        outln!(
            "broken config ({} error{}; those files are not in effect, their plugins keep their previous instances):",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        )?;
        for e in errors {
            outln!("    {}", e.as_str().unwrap_or_default())?;
        }
    }
    Ok(())
}

/// One value of a `checks run`.
#[derive(Serialize)]
struct RunValue {
    instance: String,
    target: String,
    check: String,
    value: String,
    status: &'static str,
    /// The bound it crosses (`critical_ge 90`), when it would fire.
    bound: Option<String>,
    /// How long it must hold before it fires (`for_duration`), when it would fire.
    fires_after: Option<String>,
    description: String,
}

/// An instance of a `checks run` that could not run (UNKNOWN).
#[derive(Serialize)]
struct RunError {
    instance: String,
    error: String,
}

/// `tether checks run PLUGIN`: runs the plugin's configured instances once (or its default
/// instance when it has no config) and prints every value and what would fire. The exit code
/// is the worst result: 2 a Critical value, 3 an instance that could not run, 1 a Warning,
/// 0 otherwise; 3 also for an unknown plugin or a broken config (an error from here).
pub async fn run(config: Option<&Path>, plugin_name: &str, as_json: bool) -> Result<ExitCode> {
    let cfg = AgentConfig::load(config)?;
    let Some(plugin) = tether_checks::plugins::find(plugin_name) else {
        let names: Vec<&str> = tether_checks::plugins::registry()
            .iter()
            .map(|p| p.name())
            .collect();
        bail!(
            "unknown plugin `{plugin_name}`; plugins are: {}",
            names.join(", ")
        );
    };
    let file = cfg.checks_dir.join(format!("{plugin_name}.toml"));
    let defaults = !file.exists();
    let specs = if !defaults {
        tether_checks::config::load_file(&file, plugin.as_ref()).map_err(|errs| {
            anyhow::anyhow!(
                "{}",
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?
    } else {
        let mut specs = Vec::new();
        for (i, table) in plugin.default_instances().iter().enumerate() {
            let label = format!("{plugin_name} default instance {i}");
            let spec = tether_checks::config::parse_instance(plugin.as_ref(), table, &label)
                .map_err(|errs| {
                    anyhow::anyhow!(
                        "{}",
                        errs.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    )
                })?;
            specs.push(spec);
        }
        if specs.is_empty() {
            bail!(
                "`{plugin_name}` has no default instance (it needs a target): configure it in {}",
                file.display()
            );
        }
        specs
    };
    let mut worst = Verdict::Ok;
    // Text goes out as it is found; a closed stdout ends the run with the verdict so far.
    let say = |r: Result<()>, worst: Verdict| -> Result<Option<ExitCode>> {
        match r {
            Ok(()) => Ok(None),
            Err(e) if crate::out::is_closed(&e) => Ok(Some(worst.exit_code())),
            Err(e) => Err(e),
        }
    };
    if defaults && !as_json {
        let r = outln!("(no {} — running the default instance)", file.display());
        if let Some(code) = say(r, worst)? {
            return Ok(code);
        }
    }
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for spec in specs {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| format!("instances[{}]", spec.index));
        let cancel = CancellationToken::new();
        let ctx = CheckContext {
            cancel: cancel.clone(),
            timeout: spec.timeout,
        };
        let ran =
            tokio::time::timeout(spec.timeout + Duration::from_secs(1), spec.check.run(ctx)).await;
        cancel.cancel();
        let failure = match ran {
            Ok(Ok(measurements)) => {
                for m in measurements {
                    let thresholds = spec.thresholds_for(&m.check, &m.defaults);
                    let verdict = judge(&m.value, &thresholds);
                    let fires = verdict.status != Status::Ok;
                    let bound = verdict.bound.as_ref().filter(|_| fires);
                    let fires_after =
                        (fires && !spec.lifecycle.for_duration.is_zero()).then(|| {
                            humantime::format_duration(spec.lifecycle.for_duration).to_string()
                        });
                    let v = RunValue {
                        instance: name.clone(),
                        target: m.target.clone(),
                        check: m.check.clone(),
                        value: format_value(&m.value, m.unit),
                        status: verdict.status.as_str(),
                        bound: bound.map(|b| format!("{} {}", b.key, b.limit)),
                        fires_after,
                        description: m.description.clone(),
                    };
                    worst = worst.worst(Verdict::of_check(verdict.status));
                    if !as_json {
                        let fire = match (&v.bound, fires) {
                            (_, false) => String::new(),
                            (Some(b), true) => format!("  → would fire {} ({b})", v.status),
                            (None, true) => format!("  → would fire {}", v.status),
                        };
                        let after = v
                            .fires_after
                            .as_ref()
                            .map(|d| format!(" once it holds for {d}"))
                            .unwrap_or_default();
                        let r = outln!(
                            "{plugin_name:<9} {:<20} {:<16} {:>14}  {:<8}{fire}{after}\n          {}",
                            v.target,
                            v.check,
                            v.value,
                            v.status,
                            v.description,
                        );
                        if let Some(code) = say(r, worst)? {
                            return Ok(code);
                        }
                    }
                    values.push(v);
                }
                None
            }
            Ok(Err(e)) => Some(format!("check failed: {e}")),
            Err(_) => Some(format!(
                "timed out after {}",
                humantime::format_duration(spec.timeout)
            )),
        };
        if let Some(error) = failure {
            // It could not run: UNKNOWN (the agent raises a check_error alert for it).
            worst = worst.worst(Verdict::Unknown);
            if !as_json {
                let r = outln!("{plugin_name} {name}: {error} (raises a check_error alert)");
                if let Some(code) = say(r, worst)? {
                    return Ok(code);
                }
            }
            errors.push(RunError {
                instance: name,
                error,
            });
        }
    }
    if as_json {
        let doc = json!({
            "command": "checks run",
            "plugin": plugin_name,
            "default_instance": defaults,
            "status": worst,
            "exit_code": worst.code(),
            "values": values,
            "errors": errors,
        });
        let r = outln!("{}", serde_json::to_string_pretty(&doc)?);
        if let Some(code) = say(r, worst)? {
            return Ok(code);
        }
    }
    Ok(worst.exit_code())
}

/// `tether alerts`: the agent's alerts from its local history (works with the agent
/// stopped), through the hub's lifecycle (`tether_hub::alerts`): one per alert key, firing
/// or resolved, with its severity and readable title, newest change first. `events`: the raw
/// events instead, newest first.
pub fn alerts(config: Option<&Path>, limit: usize, events: bool, as_json: bool) -> Result<()> {
    let cfg = AgentConfig::load(config)?;
    let path = cfg.state_dir.join("alerts.db");
    if !path.exists() {
        if as_json {
            outln!("[]")?;
        } else {
            outln!("no alerts yet ({} does not exist)", path.display())?;
        }
        return Ok(());
    }
    let history = tether_checks::history::AlertHistory::open(
        &path,
        tether_checks::history::DEFAULT_HISTORY_MAX,
    )
    .context("alert history")?;
    if !events {
        let all = history
            .recent(tether_checks::history::DEFAULT_HISTORY_MAX as usize)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut alerts = local_alerts(all);
        alerts.truncate(limit);
        return print_local_alerts(&alerts, as_json);
    }
    let events = history.recent(limit).map_err(|e| anyhow::anyhow!("{e}"))?;
    if as_json {
        outln!("{}", serde_json::to_string_pretty(&events)?)?;
        return Ok(());
    }
    if events.is_empty() {
        outln!("no alerts yet")?;
    }
    for e in events {
        let when = std::time::UNIX_EPOCH + Duration::from_secs(e.event_time.max(0) as u64);
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "{}  {:<8}  {}  {}",
            humantime::format_rfc3339_seconds(when),
            e.event_status,
            e.alert_key,
            labels.join(",")
        )?;
        if !e.description.is_empty() {
            outln!("    {}", e.description.lines().next().unwrap_or(""))?;
        }
    }
    Ok(())
}

/// One alert of `tether alerts`, as `--json` prints it.
#[derive(Debug, Serialize)]
struct LocalAlert {
    alert_key: String,
    title: String,
    state: tether_hub::alerts::AlertState,
    severity: tether_hub::alerts::Severity,
    labels: std::collections::BTreeMap<String, String>,
    description: String,
    first_at: String,
    last_at: String,
    resolved_at: Option<String>,
    event_count: u64,
}

/// Events (newest first, as the history gives them) folded into alerts, newest change first.
fn local_alerts(newest_first: Vec<tether_proto::link::AlertEvent>) -> Vec<LocalAlert> {
    use tether_hub::alerts::{Alert, Source, apply, observe_agent_event};
    let mut by_key: std::collections::HashMap<String, Alert> = std::collections::HashMap::new();
    for e in newest_first.iter().rev() {
        let obs = observe_agent_event(e);
        match by_key.get_mut(&e.alert_key) {
            Some(a) => {
                apply(a, &obs, 0);
            }
            None => {
                by_key.insert(
                    e.alert_key.clone(),
                    Alert::new(Source::Agent, &e.alert_key, &obs, 0),
                );
            }
        }
    }
    let mut alerts: Vec<Alert> = by_key.into_values().collect();
    alerts.sort_by(|a, b| {
        b.last_at
            .cmp(&a.last_at)
            .then(a.alert_key.cmp(&b.alert_key))
    });
    let time = tether_hub::store::rfc3339_ms;
    alerts
        .into_iter()
        .map(|a| LocalAlert {
            description: a
                .annotations
                .get("description")
                .cloned()
                .unwrap_or_default(),
            alert_key: a.alert_key,
            title: a.title,
            state: a.state,
            severity: a.severity,
            labels: a.labels,
            first_at: time(a.first_at),
            last_at: time(a.last_at),
            resolved_at: a.resolved_at.map(time),
            event_count: a.event_count,
        })
        .collect()
}

fn print_local_alerts(alerts: &[LocalAlert], as_json: bool) -> Result<()> {
    if as_json {
        outln!("{}", serde_json::to_string_pretty(alerts)?)?;
        return Ok(());
    }
    if alerts.is_empty() {
        outln!("no alerts yet")?;
    }
    for a in alerts {
        let status = match a.state {
            tether_hub::alerts::AlertState::Firing => a.severity.as_str(),
            tether_hub::alerts::AlertState::Resolved => "resolved",
        };
        outln!(
            "{}  {:<8}  {}  ({} event{}, key {})",
            a.last_at,
            status,
            a.title,
            a.event_count,
            if a.event_count == 1 { "" } else { "s" },
            a.alert_key
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_hub::alerts::{AlertState, Severity};
    use tether_proto::link::{AlertEvent, AlertStatus};

    fn event(t: i64, key: &str, status: AlertStatus) -> AlertEvent {
        AlertEvent {
            event_time: t,
            event_status: status,
            alert_key: key.into(),
            labels: [
                ("plugin".to_owned(), "disk".to_owned()),
                ("check".to_owned(), "space_used_pct".to_owned()),
                ("target".to_owned(), key.to_owned()),
            ]
            .into(),
            attrs: Default::default(),
            description: format!("{key} is {status:?}"),
            description_format: "text".into(),
            seq: None,
        }
    }

    #[test]
    fn the_history_folds_into_alerts() {
        // Newest first, as the history gives them.
        let history = vec![
            event(40, "/home", AlertStatus::Warning),
            event(30, "/var", AlertStatus::Ok),
            event(20, "/var", AlertStatus::Critical),
            event(10, "/var", AlertStatus::Warning),
        ];
        let alerts = local_alerts(history);
        let summary: Vec<(&str, AlertState, Severity, u64)> = alerts
            .iter()
            .map(|a| (a.alert_key.as_str(), a.state, a.severity, a.event_count))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/home", AlertState::Firing, Severity::Warning, 1),
                ("/var", AlertState::Resolved, Severity::Critical, 3),
            ]
        );
        assert_eq!(alerts[1].title, "disk space_used_pct /var");
        assert_eq!(alerts[1].first_at, "1970-01-01T00:00:10.000Z");
        assert_eq!(
            alerts[1].resolved_at.as_deref(),
            Some("1970-01-01T00:00:30.000Z")
        );
        assert_eq!(alerts[1].description, "/var is Ok");
    }
}
