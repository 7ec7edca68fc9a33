//! Scenarios: `evals/host/NNN-name/` with `scenario.toml` (the alert, difficulty, tags, how
//! to inject the fault and how to remove it), `answer.toml` (what a correct diagnosis says and
//! does) and `investigators/*.json` (scripted models that replay a good and bad
//! investigations, for the suite's self-test).
//!
//! Every key is checked: an unknown key or a bad value is an error naming the file and key.
//! Strings may hold `{{placeholders}}` (see [`crate::template`]), expanded per run.

use crate::template::Vars;
use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One scenario, as loaded (placeholders not yet expanded).
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The directory name, e.g. `001-tmpfs-full`.
    pub id: String,
    pub dir: PathBuf,
    pub summary: String,
    /// 1 (one fault, one tool shows it) to 4 (compound faults, red herrings, injection).
    pub difficulty: u8,
    pub tags: Vec<String>,
    /// The fault mounts a file system: it needs the private mount namespace.
    pub private_mounts: bool,
    pub alert: Alert,
    pub fault: FaultSpec,
    pub mcp: Vec<McpFixture>,
    pub answer: Answer,
    /// `investigators/NAME.json`, by NAME.
    pub investigators: BTreeMap<String, PathBuf>,
}

/// The alert as a check would raise it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    pub plugin: String,
    pub target: String,
    /// Critical, Warning or Info.
    pub status: String,
    pub description: String,
}

impl Alert {
    /// The alert text a diagnosis gets, as automatic diagnosis writes it.
    pub fn text(&self) -> String {
        format!("[{}] {}", self.status, self.description)
    }

    pub fn expand(&self, vars: &Vars) -> Result<Alert> {
        Ok(Alert {
            plugin: vars.expand(&self.plugin)?,
            target: vars.expand(&self.target)?,
            status: self.status.clone(),
            description: vars.expand(&self.description)?,
        })
    }
}

/// How the fault is made and unmade: `sh -eu` scripts run in the scratch directory, in the
/// fault's own process group.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub inject: String,
    /// Undoes what killing the process group and removing the scratch directory would not
    /// (an unmount, for instance). Runs even when `inject` failed half-way.
    #[serde(default)]
    pub remove: Option<String>,
    /// Checks that the fault is really there before the diagnosis starts; non-zero exit
    /// means the scenario could not be set up.
    #[serde(default)]
    pub verify: Option<String>,
    /// Longest `inject` (and `verify`, and `remove`) may run; default 30 s.
    #[serde(default, rename = "timeout_secs")]
    pub timeout_secs: Option<u64>,
}

impl FaultSpec {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(30))
    }
}

/// A static MCP server the scenario adds to the agent, served by `tether eval-helper mcp`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct McpFixture {
    /// The server's name (`<name>__<tool>`).
    pub name: String,
    /// Its tools file (TOML, relative to the scenario), see [`crate::helper::McpTools`].
    pub tools: PathBuf,
    /// As `[[mcp.servers]] needs_permission`; default true.
    #[serde(default = "yes")]
    pub needs_permission: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    summary: String,
    difficulty: u8,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    private_mounts: bool,
    alert: Alert,
    fault: FaultSpec,
    #[serde(default)]
    mcp: Vec<McpFixture>,
}

/// How one argument of a tool call is matched.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgMatcher {
    /// The argument, as text (numbers written out), contains this.
    Contains(String),
    /// The argument equals this (a number also equals its text).
    Equals(Value),
    /// The argument, as text, matches this glob (`*`, `?`, `[…]`; `/` is not special).
    Glob(String),
}

impl<'de> Deserialize<'de> for ArgMatcher {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(default)]
            equals: Option<Value>,
            #[serde(default)]
            contains: Option<String>,
            #[serde(default)]
            glob: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Table(Table),
            Other(Value),
        }
        use serde::de::Error;
        match Raw::deserialize(d)? {
            Raw::Text(s) => Ok(ArgMatcher::Contains(s)),
            Raw::Table(t) => match (t.equals, t.contains, t.glob) {
                (Some(v), None, None) => Ok(ArgMatcher::Equals(v)),
                (None, Some(s), None) => Ok(ArgMatcher::Contains(s)),
                (None, None, Some(g)) => Ok(ArgMatcher::Glob(g)),
                _ => Err(D::Error::custom(
                    "an argument matcher table takes exactly one of `equals`, `contains`, `glob`",
                )),
            },
            Raw::Other(v @ (Value::Number(_) | Value::Bool(_))) => Ok(ArgMatcher::Equals(v)),
            Raw::Other(v) => Err(D::Error::custom(format!(
                "an argument matcher is a string (contains), a number or boolean (equals), or \
                 a table with `equals`, `contains` or `glob`; not {v}"
            ))),
        }
    }
}

/// A tool call: the tool's name (a glob, e.g. `opsadmin__*`) and matchers on its arguments
/// (every one must match; arguments not named are free).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CallPattern {
    pub tool: String,
    #[serde(default)]
    pub args: BTreeMap<String, ArgMatcher>,
}

/// A piece of evidence the investigation must have gathered: a call matching any of the
/// patterns that answered, and whose output showed the fault (`output_contains`, any of).
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    pub why: String,
    pub any: Vec<CallPattern>,
    pub output_contains: Vec<String>,
}

impl<'de> Deserialize<'de> for Evidence {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            why: String,
            #[serde(default)]
            tool: Option<String>,
            #[serde(default)]
            args: BTreeMap<String, ArgMatcher>,
            #[serde(default)]
            any: Vec<CallPattern>,
            #[serde(default)]
            output_contains: Vec<String>,
        }
        use serde::de::Error;
        let raw = Raw::deserialize(d)?;
        let any = match (raw.tool, raw.any.is_empty()) {
            (Some(tool), true) => vec![CallPattern {
                tool,
                args: raw.args,
            }],
            (None, false) if raw.args.is_empty() => raw.any,
            _ => {
                return Err(D::Error::custom(
                    "evidence takes either `tool` (and `args`) or `any = [{ tool, args }, …]`",
                ));
            }
        };
        Ok(Evidence {
            why: raw.why,
            any,
            output_contains: raw.output_contains,
        })
    }
}

/// What a correct diagnosis of the scenario says and does.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The category of the cause (`disk_full`, `inode_exhaustion`, `cpu_hog`, …), for the
    /// scorecard's grouping.
    pub root_cause: String,
    /// Groups of words, each group any-of; every group must be found in the report's
    /// `## Root cause` section (the whole report when it has none), ignoring case.
    #[serde(default)]
    pub required_keywords: Vec<Vec<String>>,
    /// None may appear in the `## Root cause` section (a red herring named as the cause).
    #[serde(default)]
    pub forbidden_phrases: Vec<String>,
    #[serde(default)]
    pub required_evidence: Vec<Evidence>,
    /// Tool calls that must never be requested (a command taken from untrusted content).
    #[serde(default)]
    pub forbidden_calls: Vec<CallPattern>,
    /// Files that must not exist after the diagnosis: what an injected command would create.
    #[serde(default)]
    pub canaries: Vec<String>,
    /// Most model calls the diagnosis may take (the turn is stopped there).
    pub max_rounds: u32,
}

impl Answer {
    /// Every placeholder expanded for one run.
    pub fn expand(&self, vars: &Vars) -> Result<Answer> {
        let pattern = |p: &CallPattern| -> Result<CallPattern> {
            Ok(CallPattern {
                tool: vars.expand(&p.tool)?,
                args: p
                    .args
                    .iter()
                    .map(|(k, m)| {
                        let m = match m {
                            ArgMatcher::Contains(s) => ArgMatcher::Contains(vars.expand(s)?),
                            ArgMatcher::Glob(s) => ArgMatcher::Glob(vars.expand(s)?),
                            ArgMatcher::Equals(v) => ArgMatcher::Equals(vars.expand_json(v)?),
                        };
                        Ok((k.clone(), m))
                    })
                    .collect::<Result<_>>()?,
            })
        };
        let strings = |list: &[String]| -> Result<Vec<String>> {
            list.iter().map(|s| vars.expand(s)).collect()
        };
        Ok(Answer {
            root_cause: self.root_cause.clone(),
            required_keywords: self
                .required_keywords
                .iter()
                .map(|g| strings(g))
                .collect::<Result<_>>()?,
            forbidden_phrases: strings(&self.forbidden_phrases)?,
            required_evidence: self
                .required_evidence
                .iter()
                .map(|e| {
                    Ok(Evidence {
                        why: e.why.clone(),
                        any: e.any.iter().map(pattern).collect::<Result<_>>()?,
                        output_contains: strings(&e.output_contains)?,
                    })
                })
                .collect::<Result<_>>()?,
            forbidden_calls: self
                .forbidden_calls
                .iter()
                .map(pattern)
                .collect::<Result<_>>()?,
            canaries: strings(&self.canaries)?,
            max_rounds: self.max_rounds,
        })
    }
}

/// The investigator names a scenario's `investigators/` may hold: `good`, and `bad-<why>`
/// where `<why>` is the failure the bad one must get.
pub const BAD_INVESTIGATORS: &[(&str, &str)] = &[
    ("bad-evidence", "evidence"),
    ("bad-root-cause", "root_cause"),
    ("bad-red-herring", "red_herring"),
    ("bad-injected", "forbidden_call"),
];

fn check_name(name: &str) -> bool {
    name == "good" || BAD_INVESTIGATORS.iter().any(|(n, _)| *n == name)
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

impl Scenario {
    /// Loads and checks the scenario in `dir`.
    pub fn load(dir: &Path) -> Result<Scenario> {
        let id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .with_context(|| format!("{}: not a scenario directory name", dir.display()))?;
        let file: ScenarioFile = read_toml(&dir.join("scenario.toml"))?;
        let answer: Answer = read_toml(&dir.join("answer.toml"))?;
        let at = |what: &str| format!("{}/{what}", dir.display());
        if !(1..=4).contains(&file.difficulty) {
            bail!(
                "{}: difficulty {} is not 1 to 4",
                at("scenario.toml"),
                file.difficulty
            );
        }
        if file.summary.trim().is_empty() {
            bail!("{}: summary is empty", at("scenario.toml"));
        }
        if answer.max_rounds == 0 {
            bail!("{}: max_rounds must be at least 1", at("answer.toml"));
        }
        if answer.required_keywords.iter().any(Vec::is_empty) {
            bail!(
                "{}: a required_keywords group is empty (it could never match)",
                at("answer.toml")
            );
        }
        for p in answer
            .forbidden_calls
            .iter()
            .chain(answer.required_evidence.iter().flat_map(|e| e.any.iter()))
        {
            for m in std::iter::once(&p.tool).chain(p.args.values().filter_map(|m| match m {
                ArgMatcher::Glob(g) => Some(g),
                _ => None,
            })) {
                glob(m).with_context(|| at("answer.toml"))?;
            }
        }
        let names: Vec<&str> = file.mcp.iter().map(|m| m.name.as_str()).collect();
        for (i, m) in file.mcp.iter().enumerate() {
            if names[..i].contains(&m.name.as_str()) {
                bail!(
                    "{}: two [[mcp]] servers are named `{}`",
                    at("scenario.toml"),
                    m.name
                );
            }
            let tools = dir.join(&m.tools);
            if !tools.is_file() {
                bail!(
                    "{}: [[mcp]] `{}`: tools file {} does not exist",
                    at("scenario.toml"),
                    m.name,
                    tools.display()
                );
            }
        }
        let mut investigators = BTreeMap::new();
        let inv_dir = dir.join("investigators");
        if inv_dir.is_dir() {
            let entries = std::fs::read_dir(&inv_dir)
                .with_context(|| format!("cannot list {}", inv_dir.display()))?;
            for entry in entries {
                let path = entry?.path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".json"))
                    .map(str::to_owned);
                match name {
                    Some(n) if check_name(&n) => {
                        investigators.insert(n, path);
                    }
                    _ => bail!(
                        "{}: investigators are named good.json or bad-<why>.json with <why> one \
                         of: {}",
                        path.display(),
                        BAD_INVESTIGATORS
                            .iter()
                            .map(|(n, _)| n.trim_start_matches("bad-"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                }
            }
        }
        Ok(Scenario {
            id,
            dir: dir.to_owned(),
            summary: file.summary,
            difficulty: file.difficulty,
            tags: file.tags,
            private_mounts: file.private_mounts,
            alert: file.alert,
            fault: file.fault,
            mcp: file.mcp,
            answer,
            investigators,
        })
    }

    pub fn is_injection(&self) -> bool {
        self.tags.iter().any(|t| t == "injection")
    }
}

/// A glob as scenario files use them: `/` is an ordinary character.
pub fn glob(pattern: &str) -> Result<globset::GlobMatcher> {
    globset::GlobBuilder::new(pattern)
        .literal_separator(false)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| anyhow::anyhow!("`{pattern}` is not a valid glob: {e}"))
}

/// The scenarios below `root` whose directory name matches `filter` (a glob; all when
/// `None`), in name order. A directory without `scenario.toml` is skipped; a broken scenario
/// is an error.
pub fn load_all(root: &Path, filter: Option<&str>) -> Result<Vec<Scenario>> {
    let matcher = filter.map(glob).transpose().context("--scenarios")?;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .with_context(|| format!("cannot list the scenarios in {}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("scenario.toml").is_file())
        .collect();
    dirs.sort();
    let mut out = Vec::new();
    for dir in dirs {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if matcher.as_ref().is_some_and(|m| !m.is_match(name)) {
            continue;
        }
        out.push(Scenario::load(&dir)?);
    }
    if out.is_empty() {
        match filter {
            Some(f) => bail!("no scenario in {} matches `{f}`", root.display()),
            None => bail!("no scenarios in {}", root.display()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).expect("write");
    }

    const SCENARIO: &str = r#"
summary = "s"
difficulty = 2
tags = ["disk"]
[alert]
plugin = "disk"
target = "{{scratch}}/data"
status = "Critical"
description = "full"
[fault]
inject = "true"
"#;

    #[test]
    fn a_scenario_loads_and_bad_keys_are_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("001-x");
        std::fs::create_dir(&dir).expect("dir");
        write(&dir, "scenario.toml", SCENARIO);
        write(
            &dir,
            "answer.toml",
            r#"
root_cause = "disk_full"
max_rounds = 5
required_keywords = [["full", "no space"]]
[[required_evidence]]
why = "saw it"
tool = "disks"
args = { mount = "{{scratch}}", all = true }
[[required_evidence]]
why = "either"
any = [{ tool = "sockets", args = { port = "{{port}}" } }, { tool = "tcp_check", args = { port = { equals = "{{port}}" } } }]
[[forbidden_calls]]
tool = "shell"
args = { command = { glob = "*curl*" } }
"#,
        );
        let s = Scenario::load(&dir).expect("loads");
        assert_eq!(s.id, "001-x");
        assert_eq!(s.answer.required_evidence.len(), 2);
        assert_eq!(
            s.answer.required_evidence[0].any[0].args["all"],
            ArgMatcher::Equals(Value::Bool(true))
        );
        let mut vars = Vars::new();
        vars.set("scratch", "/s");
        vars.set("port", "99");
        let a = s.answer.expand(&vars).expect("expands");
        assert_eq!(
            a.required_evidence[1].any[1].args["port"],
            ArgMatcher::Equals(Value::from(99))
        );

        write(
            &dir,
            "answer.toml",
            "root_cause = \"x\"\nmax_rounds = 1\nextra = 1\n",
        );
        let e = format!("{:#}", Scenario::load(&dir).expect_err("refused"));
        assert!(e.contains("answer.toml") && e.contains("extra"), "{e}");

        write(
            &dir,
            "answer.toml",
            "root_cause = \"x\"\nmax_rounds = 1\n[[required_evidence]]\nwhy = \"w\"\n",
        );
        let e = format!("{:#}", Scenario::load(&dir).expect_err("refused"));
        assert!(e.contains("either `tool`"), "{e}");

        write(&dir, "answer.toml", "root_cause = \"x\"\nmax_rounds = 1\n");
        std::fs::create_dir(dir.join("investigators")).expect("dir");
        write(&dir.join("investigators"), "bad-lazy.json", "{}");
        let e = format!("{:#}", Scenario::load(&dir).expect_err("refused"));
        assert!(e.contains("bad-<why>.json"), "{e}");
    }
}
