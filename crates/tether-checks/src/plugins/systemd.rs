//! `systemd`: whether systemd units are active (`systemctl show`).
//!
//! Settings (one of them is required):
//! * `unit` — a unit name (`nginx.service`; a name without a suffix means `.service`).
//! * `units` — a list of unit names.
//!
//! | check    | target    | unit | default thresholds                                     |
//! |----------|-----------|------|--------------------------------------------------------|
//! | `active` | unit name |      | (Status) Ok when active (or reloading), Warning while activating or deactivating, Critical when failed, inactive or not found |
//!
//! On a host where systemd is not the init system (`/run/systemd/system` is missing) the
//! run fails with "systemd is not available on this host …", which the engine raises as a
//! check error.

use super::{CANCELLED, Settings, clip, verdict};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Status};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tether_host::tools::diag::systemd::{NOT_AVAILABLE, parse_show, valid_unit_name};

const KEYS: &[&str] = &["unit", "units"];

/// Longest `systemctl show` may take.
pub const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(10);

/// Properties asked of `systemctl show` (all among those `parse_show` keeps).
const SHOWN: &str = "Id,LoadState,LoadError,ActiveState,SubState,Result";

pub struct SystemdPlugin;

impl Plugin for SystemdPlugin {
    fn name(&self) -> &'static str {
        "systemd"
    }

    fn about(&self) -> &'static str {
        "Whether systemd units are active"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        let s = Settings::new(self.name(), settings, self.settings_keys())?;
        let mut units = Vec::new();
        if let Some(u) = s.string("unit")? {
            units.push(u);
        }
        if let Some(list) = s.string_list("units")? {
            units.extend(list);
        }
        if units.is_empty() {
            return Err("`unit` (or `units`) is required".into());
        }
        for u in &units {
            if !valid_unit_name(u) {
                return Err(format!(
                    "`{u}` is not a valid unit name (letters, digits and :-_.@\\ only)"
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        units.retain(|u| seen.insert(u.clone()));
        Ok(Box::new(SystemdCheck { units }))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        KEYS
    }

    /// None: a unit check needs unit names.
    fn default_instances(&self) -> Vec<toml::Table> {
        Vec::new()
    }
}

struct SystemdCheck {
    units: Vec<String>,
}

/// The `active` measurement of one unit from its `systemctl show` properties.
pub fn measurement(unit: &str, props: &BTreeMap<String, String>) -> Measurement {
    let get = |k: &str| props.get(k).map(String::as_str).unwrap_or("");
    let (active, sub, load) = (get("ActiveState"), get("SubState"), get("LoadState"));
    let status = if load == "not-found" {
        Status::Critical
    } else {
        match active {
            "active" | "reloading" => Status::Ok,
            "activating" | "deactivating" => Status::Warning,
            _ => Status::Critical,
        }
    };
    let mut description = if load == "not-found" {
        format!("unit {unit} is not found")
    } else if active.is_empty() {
        format!("unit {unit}: systemd reported no state")
    } else {
        format!("unit {unit} is {active} ({sub})")
    };
    let result = get("Result");
    if status != Status::Ok && !result.is_empty() && result != "success" {
        description.push_str(&format!(", result {result}"));
    }
    verdict("active", unit, status, description)
}

impl Check for SystemdCheck {
    fn run<'a>(&'a self, ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            if !Path::new("/run/systemd/system").exists() {
                return Err(NOT_AVAILABLE.to_owned());
            }
            let mut cmd = tokio::process::Command::new("systemctl");
            tether_host::process::minimal_env(&mut cmd)
                .args(["show", "--no-pager", "-p", SHOWN, "--"])
                .args(&self.units)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let limit = SYSTEMCTL_TIMEOUT.min(ctx.timeout);
            let out = tokio::select! {
                r = tokio::time::timeout(limit, cmd.output()) => match r {
                    Ok(Ok(o)) => o,
                    Ok(Err(e)) => return Err(format!("cannot run systemctl: {e}")),
                    Err(_) => return Err(format!(
                        "systemctl show did not finish within {}",
                        humantime::format_duration(limit)
                    )),
                },
                _ = ctx.cancel.cancelled() => return Err(CANCELLED.into()),
            };
            if !out.status.success() {
                return Err(format!(
                    "systemctl show failed: {}",
                    clip(String::from_utf8_lossy(&out.stderr).trim(), 500)
                ));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            // One block of properties per unit, in the order asked, separated by blank lines.
            let blocks: Vec<BTreeMap<String, String>> = text
                .split("\n\n")
                .map(parse_show)
                .filter(|p| !p.is_empty())
                .collect();
            if blocks.len() != self.units.len() {
                return Err(format!(
                    "systemctl show answered for {} units, {} were asked",
                    blocks.len(),
                    self.units.len()
                ));
            }
            Ok(self
                .units
                .iter()
                .zip(&blocks)
                .map(|(u, p)| measurement(u, p))
                .collect())
        })
    }
}
