//! The scorecard: one row per scenario (and investigator) with pass/fail and the reason,
//! rounds, tool calls, tokens and time; totals by difficulty, tokens per diagnosis, p50/p95
//! time, and how often each model attempted an injected request. Text for people, JSON for
//! comparisons.

use crate::score::Failure;
use crate::trajectory::Call;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use tether_proto::StopReason;

/// One diagnosis of one scenario, scored.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub difficulty: u8,
    pub root_cause: String,
    /// The scenario tests prompt injection.
    pub injection_scenario: bool,
    /// Who investigated: the model's description, or `scripted:<name>`.
    pub investigator: String,
    /// 1-based.
    pub run: u32,
    pub pass: bool,
    /// Most serious first; empty when it passed.
    pub failures: Vec<Failure>,
    /// A forbidden call (an injected request) was requested.
    pub injection_attempted: bool,
    pub rounds: u32,
    pub tool_calls: usize,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Some model call reported no usage: its tokens are estimated.
    pub tokens_estimated: bool,
    pub seconds: f64,
    pub stop: Option<StopReason>,
    pub report: String,
    pub calls: Vec<Call>,
}

/// A scenario run that could not be set up, torn down, or run at all: an error of the
/// harness (or the host), not a result of the model.
#[derive(Clone, Debug, Serialize)]
pub struct RunError {
    pub scenario: String,
    pub investigator: String,
    pub run: u32,
    pub message: String,
}

/// Pass counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub passed: usize,
    pub runs: usize,
}

impl Tally {
    fn add(&mut self, pass: bool) {
        self.runs += 1;
        if pass {
            self.passed += 1;
        }
    }

    fn show(self) -> String {
        let pct = (self.passed * 100).checked_div(self.runs).unwrap_or(0);
        format!("{}/{} ({pct}%)", self.passed, self.runs)
    }
}

/// Injected requests, per investigator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InjectionTally {
    /// Runs of injection scenarios.
    pub runs: usize,
    /// Runs in which an injected request was made.
    pub attempted: usize,
}

/// The totals line of the scorecard.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub all: Tally,
    pub by_difficulty: BTreeMap<u8, Tally>,
    pub tokens_in_mean: u64,
    pub tokens_out_mean: u64,
    pub tokens_estimated: bool,
    pub seconds_p50: f64,
    pub seconds_p95: f64,
    pub injection: BTreeMap<String, InjectionTally>,
    pub errors: usize,
}

/// Everything an eval produced.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scorecard {
    /// The configured model (`--scripted` runs name their scripts per row instead).
    pub model: String,
    pub runs_per_scenario: u32,
    pub results: Vec<RunResult>,
    pub errors: Vec<RunError>,
    /// The eval was stopped by a signal before every scenario ran.
    pub interrupted: bool,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

impl Scorecard {
    pub fn totals(&self) -> Totals {
        let mut t = Totals {
            errors: self.errors.len(),
            ..Totals::default()
        };
        let mut secs: Vec<f64> = Vec::new();
        let (mut tin, mut tout) = (0u64, 0u64);
        for r in &self.results {
            t.all.add(r.pass);
            t.by_difficulty.entry(r.difficulty).or_default().add(r.pass);
            tin += r.tokens_in;
            tout += r.tokens_out;
            t.tokens_estimated |= r.tokens_estimated;
            secs.push(r.seconds);
            if r.injection_scenario {
                let i = t.injection.entry(r.investigator.clone()).or_default();
                i.runs += 1;
                if r.injection_attempted {
                    i.attempted += 1;
                }
            }
        }
        let n = self.results.len().max(1) as u64;
        t.tokens_in_mean = tin / n;
        t.tokens_out_mean = tout / n;
        secs.sort_by(f64::total_cmp);
        t.seconds_p50 = percentile(&secs, 0.50);
        t.seconds_p95 = percentile(&secs, 0.95);
        t
    }

    /// The scorecard as text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Rows: results grouped by (scenario, investigator), in the order they ran.
        let mut rows: Vec<(&str, &str, Vec<&RunResult>)> = Vec::new();
        for r in &self.results {
            match rows
                .iter_mut()
                .find(|(s, i, _)| *s == r.scenario && *i == r.investigator)
            {
                Some(row) => row.2.push(r),
                None => rows.push((&r.scenario, &r.investigator, vec![r])),
            }
        }
        let several_investigators = rows
            .iter()
            .map(|(_, i, _)| *i)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
            > 1;
        let label = |s: &str, i: &str| {
            if several_investigators {
                format!("{s} [{}]", i.trim_start_matches("scripted:"))
            } else {
                s.to_owned()
            }
        };
        let width = rows
            .iter()
            .map(|(s, i, _)| label(s, i).chars().count())
            .max()
            .unwrap_or(8)
            .max(8);
        let _ = writeln!(
            out,
            "{:<width$}  D  RESULT  ROUNDS  CALLS  TOKENS IN/OUT      TIME  REASON",
            "SCENARIO"
        );
        for (scenario, investigator, runs) in &rows {
            let n = runs.len();
            let passed = runs.iter().filter(|r| r.pass).count();
            let result = match (n, passed) {
                (1, 1) => "pass".to_owned(),
                (1, _) => "FAIL".to_owned(),
                (n, p) => format!("{p}/{n}"),
            };
            let mean =
                |f: &dyn Fn(&RunResult) -> f64| runs.iter().map(|r| f(r)).sum::<f64>() / n as f64;
            let rounds = mean(&|r| f64::from(r.rounds));
            let calls = mean(&|r| r.tool_calls as f64);
            let tin = mean(&|r| r.tokens_in as f64) as u64;
            let tout = mean(&|r| r.tokens_out as f64) as u64;
            let est = if runs.iter().any(|r| r.tokens_estimated) {
                "~"
            } else {
                " "
            };
            let secs = mean(&|r| r.seconds);
            let reason = runs
                .iter()
                .find(|r| !r.pass)
                .map(|r| {
                    let first = r.failures.first().map(|f| f.message.as_str()).unwrap_or("");
                    match r.failures.len() {
                        0 | 1 => first.to_owned(),
                        more => format!("{first} (+{} more)", more - 1),
                    }
                })
                .unwrap_or_default();
            let d = runs.first().map_or(0, |r| r.difficulty);
            let _ = writeln!(
                out,
                "{:<width$}  {d}  {result:<6}  {rounds:>6.1}  {calls:>5.1}  {est}{:>6}/{:>6}  {secs:>6.1} s  {reason}",
                label(scenario, investigator),
                thousands(tin),
                thousands(tout),
            );
        }
        let t = self.totals();
        let mut by_d: Vec<String> = t
            .by_difficulty
            .iter()
            .map(|(d, tally)| format!("{d}: {}", tally.show()))
            .collect();
        by_d.push(format!("all: {}", t.all.show()));
        let _ = writeln!(out);
        let _ = writeln!(out, "pass rate by difficulty: {}", by_d.join(" · "));
        let _ = writeln!(
            out,
            "tokens per diagnosis: {} in, {} out (mean{})",
            thousands(t.tokens_in_mean),
            thousands(t.tokens_out_mean),
            if t.tokens_estimated {
                "; ~ estimated where the model reported no usage"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "time per diagnosis: p50 {:.1} s, p95 {:.1} s",
            t.seconds_p50, t.seconds_p95
        );
        for (who, i) in &t.injection {
            let pct = (i.attempted * 100).checked_div(i.runs).unwrap_or(0);
            let _ = writeln!(
                out,
                "prompt injection: {who}: attempted an injected request in {} of {} runs ({pct}%)",
                i.attempted, i.runs
            );
        }
        for e in &self.errors {
            let _ = writeln!(
                out,
                "COULD NOT RUN: {} [{}] run {}: {}",
                e.scenario,
                e.investigator.trim_start_matches("scripted:"),
                e.run,
                e.message
            );
        }
        if self.interrupted {
            let _ = writeln!(out, "interrupted: not every scenario ran");
        }
        out
    }

    /// The scorecard as JSON: every run with its failures and trajectory, and the totals.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "runs_per_scenario": self.runs_per_scenario,
            "interrupted": self.interrupted,
            "totals": self.totals(),
            "results": self.results,
            "errors": self.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(scenario: &str, d: u8, pass: bool, secs: f64, injected: Option<bool>) -> RunResult {
        RunResult {
            scenario: scenario.into(),
            difficulty: d,
            root_cause: "x".into(),
            injection_scenario: injected.is_some(),
            investigator: "m".into(),
            run: 1,
            pass,
            failures: if pass {
                vec![]
            } else {
                vec![Failure {
                    kind: crate::score::FailureKind::Evidence,
                    message: "skipped evidence".into(),
                }]
            },
            injection_attempted: injected.unwrap_or(false),
            rounds: 2,
            tool_calls: 3,
            tokens_in: 1000,
            tokens_out: 100,
            tokens_estimated: false,
            seconds: secs,
            stop: Some(StopReason::Completed),
            report: String::new(),
            calls: vec![],
        }
    }

    #[test]
    fn totals_and_the_text() {
        let card = Scorecard {
            model: "m".into(),
            runs_per_scenario: 1,
            results: vec![
                result("001-a", 1, true, 1.0, None),
                result("002-b", 2, false, 3.0, None),
                result("003-c", 4, false, 2.0, Some(true)),
                result("004-d", 4, true, 10.0, Some(false)),
            ],
            errors: vec![],
            interrupted: false,
        };
        let t = card.totals();
        assert_eq!(t.all, Tally { passed: 2, runs: 4 });
        assert_eq!(t.by_difficulty[&4], Tally { passed: 1, runs: 2 });
        assert_eq!((t.seconds_p50, t.seconds_p95), (2.0, 10.0));
        assert_eq!(
            t.injection["m"],
            InjectionTally {
                runs: 2,
                attempted: 1
            }
        );
        let text = card.render();
        assert!(text.contains("002-b     2  FAIL"), "{text}");
        assert!(text.contains("skipped evidence"), "{text}");
        assert!(
            text.contains("pass rate by difficulty: 1: 1/1 (100%) · 2: 0/1 (0%) · 4: 1/2 (50%) · all: 2/4 (50%)"),
            "{text}"
        );
        assert!(
            text.contains(
                "prompt injection: m: attempted an injected request in 1 of 2 runs (50%)"
            ),
            "{text}"
        );
        assert_eq!(thousands(1234567), "1 234 567");
    }
}
