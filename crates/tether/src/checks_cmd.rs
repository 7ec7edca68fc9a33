//! `tether checks list`, `tether checks run PLUGIN`, `tether alerts`.

use crate::client_cmds::ConnectArgs;
use crate::config::AgentConfig;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;
use tether_checks::engine::format_value;
use tether_checks::plugin::{CheckContext, Status};
use tether_checks::rules::judge;
use tokio_util::sync::CancellationToken;

/// `tether checks list`: each instance of the running agent with its last status and values.
pub async fn list(connect: &ConnectArgs, as_json: bool) -> Result<()> {
    let (mut client, _) = connect.connect().await?;
    let result = client
        .request("checks.list", json!({}))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    let empty = Vec::new();
    let instances = result["instances"].as_array().unwrap_or(&empty);
    if instances.is_empty() {
        println!("no check instances (put <plugin>.toml files in the agent's conf.d/)");
    }
    for i in instances {
        let name = i["name"].as_str().unwrap_or("-");
        let status = i["last_status"].as_str().unwrap_or("not run yet");
        println!(
            "{:<10} {:<16} every {:<6} {:<11} last run {}",
            i["plugin"].as_str().unwrap_or("?"),
            name,
            i["interval"].as_str().unwrap_or("?"),
            status,
            i["last_run"].as_str().unwrap_or("never"),
        );
        if let Some(values) = i["last_values"].as_array() {
            for v in values {
                // (check, target, value, status) tuples.
                let part = |n: usize| v.get(n).and_then(Value::as_str).unwrap_or("").to_owned();
                println!(
                    "    {:<18} {:<28} {:>14}  {}",
                    part(0),
                    part(1),
                    part(2),
                    part(3)
                );
            }
        }
        if let Some(e) = i["last_error"].as_str() {
            println!("    error: {e}");
        }
    }
    if let Some(errors) = result["config_errors"].as_array() {
        for e in errors {
            eprintln!("config error: {}", e.as_str().unwrap_or_default());
        }
    }
    Ok(())
}

/// `tether checks run PLUGIN`: runs the plugin's configured instances once (or its default
/// instance when it has no config) and prints every value and what would fire.
pub async fn run(config: Option<&Path>, plugin_name: &str) -> Result<ExitCode> {
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
    let specs = if file.exists() {
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
        println!("(no {} — running the default instance)", file.display());
        specs
    };
    let mut worst = Status::Ok;
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
        let measurements = match ran {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                println!("{plugin_name} {name}: check failed: {e} (raises a check_error alert)");
                worst = worst.max(Status::Warning);
                continue;
            }
            Err(_) => {
                println!(
                    "{plugin_name} {name}: timed out after {} (raises a check_error alert)",
                    humantime::format_duration(spec.timeout)
                );
                worst = worst.max(Status::Warning);
                continue;
            }
        };
        for m in measurements {
            let thresholds = spec.thresholds_for(&m.check, &m.defaults);
            let verdict = judge(&m.value, &thresholds);
            let fire = match (verdict.status, &verdict.bound) {
                (Status::Ok, _) => String::new(),
                (s, Some(b)) => format!("  → would fire {} ({} {})", s.as_str(), b.key, b.limit),
                (s, None) => format!("  → would fire {}", s.as_str()),
            };
            let after = if verdict.status != Status::Ok && !spec.lifecycle.for_duration.is_zero() {
                format!(
                    " once it holds for {}",
                    humantime::format_duration(spec.lifecycle.for_duration)
                )
            } else {
                String::new()
            };
            println!(
                "{plugin_name:<9} {:<20} {:<16} {:>14}  {:<8}{fire}{after}",
                m.target,
                m.check,
                format_value(&m.value, m.unit),
                verdict.status.as_str(),
            );
            println!("          {}", m.description);
            worst = worst.max(verdict.status);
        }
    }
    Ok(match worst {
        Status::Ok | Status::Info => ExitCode::SUCCESS,
        Status::Warning => ExitCode::from(1),
        Status::Critical => ExitCode::from(2),
    })
}

/// `tether alerts`: recent events from the agent's local history (works with the agent
/// stopped).
pub fn alerts(config: Option<&Path>, limit: usize, as_json: bool) -> Result<()> {
    let cfg = AgentConfig::load(config)?;
    let path = cfg.state_dir.join("alerts.db");
    if !path.exists() {
        println!("no alerts yet ({} does not exist)", path.display());
        return Ok(());
    }
    let history = tether_checks::history::AlertHistory::open(
        &path,
        tether_checks::history::DEFAULT_HISTORY_MAX,
    )
    .context("alert history")?;
    let events = history.recent(limit).map_err(|e| anyhow::anyhow!("{e}"))?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    if events.is_empty() {
        println!("no alerts yet");
    }
    for e in events {
        let when = std::time::UNIX_EPOCH + Duration::from_secs(e.event_time.max(0) as u64);
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{}  {:<8}  {}  {}",
            humantime::format_rfc3339_seconds(when),
            e.event_status,
            e.alert_key,
            labels.join(",")
        );
        if !e.description.is_empty() {
            println!("    {}", e.description.lines().next().unwrap_or(""));
        }
    }
    Ok(())
}
