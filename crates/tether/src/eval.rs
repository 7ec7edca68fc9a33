//! `tether eval`: for each scenario (see `tether_eval::scenario`), inject its fault, run a
//! real diagnosis through the same in-process session path as `tether diagnose` (the
//! configured model, the agent's tools, the scenario's MCP fixtures), remove the fault, and
//! score the report and the tool calls. Prints a scorecard.
//!
//! Nobody approves anything in an eval: every permission prompt is denied, and a request the
//! scenario forbids (an injected command) is a failure of the run whatever its fate.
//! Faults are removed after each run, on errors, and on SIGINT/SIGTERM (the run in progress is
//! abandoned, its fault removed, then the command exits 130/143).

use crate::agent::build_engine;
use crate::client_cmds::{Answers, RunEnd, RunMode};
use crate::config::{AgentConfig, ModelChoice};
use crate::oneshot::run_local_with;
use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;
use tether_eval::fault::{Fault, free_port};
use tether_eval::metered::Metered;
use tether_eval::scenario::{self, Scenario};
use tether_eval::score::{Diagnosis, score};
use tether_eval::scorecard::{RunError, RunResult, Scorecard};
use tether_eval::template::Vars;
use tether_eval::trajectory::Trajectory;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// What `tether eval` was asked.
#[derive(Debug)]
pub struct EvalArgs {
    pub scenarios: Option<String>,
    pub dir: Option<PathBuf>,
    pub config: Option<PathBuf>,
    pub runs: u32,
    pub json: Option<PathBuf>,
    pub list: bool,
    pub scripted: Option<String>,
    pub verbose: bool,
    /// Why the private mount namespace is not available (`None`: this process runs in it,
    /// or it was not needed).
    pub no_namespace: Option<String>,
}

/// Where the scenarios are when `--dir` is not given: `evals/host` here, else in the source
/// tree this binary was built from.
fn scenario_root(dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.to_owned());
    }
    let here = PathBuf::from("evals/host");
    if here.is_dir() {
        return Ok(here);
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../evals/host");
    if source.is_dir() {
        return Ok(source);
    }
    bail!(
        "no scenarios: pass --dir (the evals/host directory of tether's source), or run from \
         the source tree"
    )
}

/// Who investigates a scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Investigator {
    /// The configured model.
    Model,
    /// The scenario's `investigators/<name>.json`.
    Scripted(String),
}

impl Investigator {
    fn label(&self, model: &str) -> String {
        match self {
            Investigator::Model => model.to_owned(),
            Investigator::Scripted(n) => format!("scripted:{n}"),
        }
    }
}

/// The investigators `--scripted` asks for on `scenario`.
fn investigators(scenario: &Scenario, scripted: Option<&str>) -> Result<Vec<Investigator>> {
    let names: Vec<String> = match scripted {
        None => return Ok(vec![Investigator::Model]),
        Some("bad") => scenario
            .investigators
            .keys()
            .filter(|n| n.starts_with("bad-"))
            .cloned()
            .collect(),
        Some(name) => vec![name.to_owned()],
    };
    if names.is_empty() {
        bail!("{}: no investigators/bad-*.json", scenario.id);
    }
    for n in &names {
        if !scenario.investigators.contains_key(n) {
            bail!("{}: no investigators/{n}.json", scenario.id);
        }
    }
    Ok(names.into_iter().map(Investigator::Scripted).collect())
}

/// SIGINT and SIGTERM, watched for the whole eval.
struct Signals {
    int: Signal,
    term: Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
        })
    }

    /// The next signal's number.
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.int.recv() => 2,
            _ = self.term.recv() => 15,
        }
    }
}

/// `fut`, unless a signal comes first (then `fut` is dropped).
async fn or_signal<T>(signals: &mut Signals, fut: impl Future<Output = T>) -> Result<T, i32> {
    tokio::select! {
        out = fut => Ok(out),
        sig = signals.recv() => Err(sig),
    }
}

/// A line of progress on stderr.
fn progress(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// Everything the runs share.
struct Ctx {
    base: AgentConfig,
    /// This eval's private directory (runs, state); removed at the end.
    work: PathBuf,
    tether: PathBuf,
    verbose: bool,
    no_namespace: Option<String>,
}

/// What one run produced.
#[derive(Default)]
struct Outcome {
    result: Option<RunResult>,
    error: Option<String>,
    signal: Option<i32>,
}

/// A directory removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn eval(args: EvalArgs) -> Result<ExitCode> {
    let root = scenario_root(args.dir.as_deref())?;
    let scenarios = scenario::load_all(&root, args.scenarios.as_deref())?;
    if args.list {
        let width = scenarios.iter().map(|s| s.id.len()).max().unwrap_or(8);
        let tags = scenarios
            .iter()
            .map(|s| s.tags.join(",").len())
            .max()
            .unwrap_or(4);
        outln!("{:<width$}  D  {:<tags$}  SUMMARY", "SCENARIO", "TAGS")?;
        for s in &scenarios {
            outln!(
                "{:<width$}  {}  {:<tags$}  {}",
                s.id,
                s.difficulty,
                s.tags.join(","),
                s.summary
            )?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let base = AgentConfig::load(args.config.as_deref())?;
    let model = match &args.scripted {
        Some(name) => format!("scripted investigators ({name})"),
        None => {
            if !base.model.answers_diagnoses() {
                bail!(
                    "tether eval needs a model: give --config with a [model] section (or \
                     --scripted good|bad to replay the scenarios' own scripted investigators)"
                );
            }
            crate::agent::build_provider(&base.model)?.describe()
        }
    };
    let mut cases = Vec::new();
    for s in &scenarios {
        for inv in investigators(s, args.scripted.as_deref())? {
            cases.push((s, inv));
        }
    }
    let mut signals = Signals::install()?;
    let work = std::env::temp_dir().join(format!("tether-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    tether_host::perms::private_dir(&work)
        .with_context(|| format!("cannot create {}", work.display()))?;
    let work = WorkDir(work);
    let ctx = Ctx {
        base,
        work: work.0.clone(),
        tether: std::env::current_exe().context("cannot find this program's path")?,
        verbose: args.verbose,
        no_namespace: args.no_namespace.clone(),
    };
    let mut card = Scorecard {
        model: model.clone(),
        runs_per_scenario: args.runs,
        ..Scorecard::default()
    };
    let total = cases.len() * args.runs as usize;
    progress(&format!(
        "tether eval: {} scenarios, {total} runs, {model}",
        scenarios.len()
    ));
    let mut n = 0usize;
    let mut stopped_by: Option<i32> = None;
    'cases: for (scenario, inv) in &cases {
        for run in 1..=args.runs {
            n += 1;
            let who = inv.label(&model);
            let tag = format!(
                "[{n:>width$}/{total}] {}{}",
                scenario.id,
                match inv {
                    Investigator::Scripted(name) => format!(" [{name}]"),
                    Investigator::Model => String::new(),
                },
                width = total.to_string().len()
            );
            let out = run_once(&ctx, scenario, inv, &who, run, n, &tag, &mut signals).await;
            if let Some(r) = &out.result {
                let line = if r.pass {
                    "pass".to_owned()
                } else {
                    format!(
                        "FAIL: {}",
                        r.failures.first().map(|f| f.message.as_str()).unwrap_or("")
                    )
                };
                progress(&format!(
                    "{tag}: {line} — {} rounds, {} calls, {}{}/{} tokens, {:.1} s",
                    r.rounds,
                    r.tool_calls,
                    if r.tokens_estimated { "~" } else { "" },
                    r.tokens_in,
                    r.tokens_out,
                    r.seconds
                ));
                card.results.push(r.clone());
            }
            if let Some(e) = out.error {
                progress(&format!("{tag}: COULD NOT RUN: {e}"));
                card.errors.push(RunError {
                    scenario: scenario.id.clone(),
                    investigator: who.clone(),
                    run,
                    message: e,
                });
            }
            if let Some(sig) = out.signal {
                progress(&format!(
                    "{tag}: interrupted by signal {sig}; its fault was removed"
                ));
                stopped_by = Some(sig);
                card.interrupted = true;
                break 'cases;
            }
        }
    }
    drop(work);
    let text = card.render();
    match args.json.as_deref() {
        Some(p) if p == Path::new("-") => {
            progress(&text);
            outln!("{}", serde_json::to_string_pretty(&card.to_json())?)?;
        }
        Some(p) => {
            std::fs::write(p, serde_json::to_string_pretty(&card.to_json())?)
                .with_context(|| format!("--json: cannot write {}", p.display()))?;
            outln!("{}", text.trim_end())?;
        }
        None => outln!("{}", text.trim_end())?,
    }
    if let Some(sig) = stopped_by {
        return Ok(ExitCode::from(128 + sig as u8));
    }
    if !card.errors.is_empty() {
        progress(&format!(
            "error: {} of {total} runs could not run (listed above); a score is only complete \
             when every scenario ran",
            card.errors.len()
        ));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// One run of one scenario: inject, diagnose, remove, score.
#[allow(clippy::too_many_arguments)]
async fn run_once(
    ctx: &Ctx,
    scenario: &Scenario,
    inv: &Investigator,
    who: &str,
    run: u32,
    n: usize,
    tag: &str,
    signals: &mut Signals,
) -> Outcome {
    if scenario.private_mounts
        && let Some(why) = &ctx.no_namespace
    {
        return Outcome {
            error: Some(format!(
                "it mounts a file system, which needs a private mount namespace: {why}"
            )),
            ..Outcome::default()
        };
    }
    let env = [("TETHER".to_owned(), ctx.tether.display().to_string())];
    let mut fault = match Fault::create(&ctx.work.join(n.to_string()), &scenario.fault, &env) {
        Ok(f) => f,
        Err(e) => {
            return Outcome {
                error: Some(format!("{e:#}")),
                ..Outcome::default()
            };
        }
    };
    let mut out = Outcome::default();
    match or_signal(
        signals,
        diagnose(ctx, scenario, inv, who, run, &mut fault, tag),
    )
    .await
    {
        Ok(Ok(Some(result))) => out.result = Some(result),
        // The diagnosis saw the Ctrl-C first (and cancelled its turn).
        Ok(Ok(None)) => out.signal = Some(2),
        Ok(Err(e)) => out.error = Some(format!("{e:#}")),
        Err(sig) => out.signal = Some(sig),
    }
    // Removal is not raced: a signal during it changes nothing.
    if let Err(e) = fault.remove().await {
        let e = format!("removing its fault: {e:#}");
        out.error = Some(match out.error.take() {
            Some(first) => format!("{first}; {e}"),
            None => e,
        });
    }
    out
}

/// Injects the fault, runs the diagnosis, scores it (the fault is left for the caller to
/// remove). `None`: the diagnosis was cancelled by Ctrl-C.
async fn diagnose(
    ctx: &Ctx,
    scenario: &Scenario,
    inv: &Investigator,
    who: &str,
    run: u32,
    fault: &mut Fault,
    tag: &str,
) -> Result<Option<RunResult>> {
    let mut vars = Vars::new();
    let scratch = fault.scratch().to_owned();
    vars.set("scratch", scratch.display().to_string());
    // Two free loopback ports: one a service should use, one it may use instead.
    for (var, env) in [("port", "PORT"), ("port2", "PORT2")] {
        let port = free_port()?.to_string();
        vars.set(var, port.clone());
        fault.set_env(env, &port);
    }
    fault
        .inject(&mut vars)
        .await
        .context("the fault could not be injected")?;
    let alert = scenario.alert.expand(&vars).context("scenario.toml")?;
    let answer = scenario.answer.expand(&vars).context("answer.toml")?;
    let run_dir = fault.run_dir().to_owned();
    let mut cfg = ctx.base.clone();
    cfg.tools.read_dirs.push(scratch.clone());
    cfg.tools.log_dirs.push(scratch.clone());
    cfg.mcp.servers.extend(tether_eval::mcp_servers(
        scenario,
        &vars,
        &run_dir,
        &ctx.tether,
    )?);
    cfg.sessions.max_rounds = answer.max_rounds;
    // The run's own state: its audit log says what came of each tool call.
    cfg.state_dir = run_dir.join("state");
    if let Investigator::Scripted(name) = inv {
        cfg.model = ModelChoice::Scripted {
            script: Some(tether_eval::expand_investigator(
                scenario, name, &vars, &run_dir,
            )?),
        };
    }
    let mut engine = build_engine(&cfg)?;
    let meter = match engine.provider.take() {
        Some(p) => {
            let (metered, meter) = Metered::wrap(p);
            engine.provider = Some(metered);
            meter
        }
        None => bail!("no model to evaluate"),
    };
    let params = json!({
        "alert": alert.text(),
        "plugin": alert.plugin,
        "target": alert.target,
    });
    progress(&format!("{tag}: fault in place; diagnosing"));
    let started = Instant::now();
    let output = run_local_with(
        &cfg,
        engine,
        "diagnose",
        params,
        RunMode::Report {
            answers: Answers::Eval,
            stream: false,
            progress: ctx.verbose,
        },
    )
    .await
    .context("the diagnosis could not run")?;
    let seconds = started.elapsed().as_secs_f64();
    if output.end == RunEnd::Interrupted {
        return Ok(None);
    }
    let canaries_found = tether_eval::canaries_found(&answer);
    let mut trajectory = Trajectory::from_events(&output.events);
    let audit = cfg.state_dir.join("audit.jsonl");
    match std::fs::read_to_string(&audit) {
        Ok(text) => trajectory.add_audit(&text),
        // No tool call, no audit log.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("cannot read the run's audit log {}: {e}", audit.display()),
    }
    let cost = meter.cost();
    // A model that never answered measured nothing: the endpoint is wrong or down, or does
    // not speak the dialect. That is a run that could not be made, not a score.
    if !cost.answered && trajectory.stop == Some(tether_proto::StopReason::Error) {
        bail!(
            "the model never answered: {}",
            trajectory.error.as_deref().unwrap_or("no error given")
        );
    }
    let s = score(
        &answer,
        &Diagnosis {
            trajectory: &trajectory,
            report: &output.answer,
            rounds: cost.rounds,
            canaries_found,
        },
    );
    Ok(Some(RunResult {
        scenario: scenario.id.clone(),
        difficulty: scenario.difficulty,
        root_cause: answer.root_cause.clone(),
        injection_scenario: scenario.is_injection(),
        investigator: who.to_owned(),
        run,
        pass: s.pass,
        failures: s.failures,
        injection_attempted: s.injection_attempted,
        rounds: cost.rounds,
        tool_calls: trajectory.calls.len(),
        tokens_in: cost.tokens_in,
        tokens_out: cost.tokens_out,
        tokens_estimated: cost.estimated,
        seconds: (seconds * 10.0).round() / 10.0,
        stop: trajectory.stop,
        report: output.answer,
        calls: trajectory.calls,
    }))
}
