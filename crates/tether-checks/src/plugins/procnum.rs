//! `procnum`: how many processes match a name or a command-line pattern.
//!
//! Settings (one of `pattern` and `process` is required):
//! * `pattern` — a substring of the command line (arguments joined by spaces).
//! * `process` — the exact process name: the kernel's command name (`comm`, e.g. `sshd`) or the
//!   file name of the program the command line starts with.
//! * `min` — fewest processes expected (default 1): fewer is Critical.
//! * `max` — most processes expected (no default): more is Critical.
//!
//! | check   | target                | unit    | default thresholds                         |
//! |---------|-----------------------|---------|--------------------------------------------|
//! | `count` | the pattern or process| `count` | critical_lt `min` (1), critical_gt `max`   |
//!
//! (The key is `process`, not `name`: `name` is every instance's own display name.)
//!
//! Zombie processes are not counted. Every process the agent can see counts, including the
//! agent itself (a `pattern` that appears in the agent's own command line matches it).

use super::{Settings, blocking, number};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Thresholds};
use futures_util::future::BoxFuture;
use tether_host::host;

const KEYS: &[&str] = &["pattern", "process", "min", "max"];

/// Most pids named in a description.
const SHOWN_PIDS: usize = 10;

pub struct ProcnumPlugin;

#[derive(Clone, Debug)]
enum Matcher {
    Pattern(String),
    Name(String),
}

impl Plugin for ProcnumPlugin {
    fn name(&self) -> &'static str {
        "procnum"
    }

    fn about(&self) -> &'static str {
        "Number of processes matching a name or command-line pattern (is the daemon running?)"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        let s = Settings::new(self.name(), settings, self.settings_keys())?;
        let matcher = match (s.has("pattern"), s.has("process")) {
            (true, true) => return Err("give either `pattern` or `process`, not both".into()),
            (false, false) => {
                return Err(
                    "`pattern` (a command-line substring) or `process` (the process \
                    name) is required"
                        .into(),
                );
            }
            (true, false) => Matcher::Pattern(s.required_string("pattern")?),
            (false, true) => {
                let name = s.required_string("process")?;
                if name.contains('/') {
                    return Err(format!(
                        "`process`: `{name}` contains a `/`; give the program's file name, or use \
                         `pattern`"
                    ));
                }
                Matcher::Name(name)
            }
        };
        let min = s.u64("min")?.unwrap_or(1);
        let max = s.u64("max")?;
        if let Some(max) = max
            && max < min
        {
            return Err(format!("`max` ({max}) is less than `min` ({min})"));
        }
        Ok(Box::new(ProcnumCheck { matcher, min, max }))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        KEYS
    }

    /// None: a process count needs a process name or pattern.
    fn default_instances(&self) -> Vec<toml::Table> {
        Vec::new()
    }
}

struct ProcnumCheck {
    matcher: Matcher,
    min: u64,
    max: Option<u64>,
}

fn program_name(cmdline: &str) -> &str {
    let first = cmdline.split(' ').next().unwrap_or("");
    first.rsplit('/').next().unwrap_or(first)
}

/// The pids of the live (non-zombie) processes `matcher` selects.
fn matching_pids(matcher: &Matcher) -> Vec<u32> {
    host::pids()
        .into_iter()
        .filter(|pid| {
            let Some(stat) = host::proc_stat(*pid) else {
                return false;
            };
            if stat.state == 'Z' {
                return false;
            }
            match matcher {
                Matcher::Pattern(p) => host::proc_cmdline(*pid).contains(p.as_str()),
                Matcher::Name(n) => {
                    stat.comm == *n || program_name(&host::proc_cmdline(*pid)) == n.as_str()
                }
            }
        })
        .collect()
}

impl Check for ProcnumCheck {
    fn run<'a>(&'a self, _ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let matcher = self.matcher.clone();
            let pids = blocking(move || matching_pids(&matcher)).await?;
            let (what, target) = match &self.matcher {
                Matcher::Pattern(p) => ("with a command line containing", p),
                Matcher::Name(n) => ("named", n),
            };
            let description = if pids.is_empty() {
                format!("no process {what} `{target}` is running")
            } else {
                let mut shown: Vec<String> =
                    pids.iter().take(SHOWN_PIDS).map(u32::to_string).collect();
                if pids.len() > SHOWN_PIDS {
                    shown.push("…".into());
                }
                format!(
                    "{} process{} {what} `{target}` (pid {})",
                    pids.len(),
                    if pids.len() == 1 { "" } else { "es" },
                    shown.join(", ")
                )
            };
            let defaults = Thresholds {
                critical_lt: (self.min > 0).then_some(self.min as f64),
                critical_gt: self.max.map(|m| m as f64),
                ..Thresholds::default()
            };
            Ok(vec![number(
                "count",
                target,
                pids.len() as f64,
                "count",
                description,
                defaults,
            )])
        })
    }
}
