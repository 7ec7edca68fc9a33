//! `tether eval` end to end, with the real binary, real faults and real child processes: every
//! scenario discriminates (its scripted good investigator passes, each bad one fails for its
//! reason, and the scorecard prints that reason), injected requests are never run without a
//! human and count as failures, and faults are removed on SIGINT, SIGTERM and failed setups.

mod common;

use common::{BIN, PATIENCE};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;
use tether_eval::scenario::{BAD_INVESTIGATORS, load_all};

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../evals/host")
}

/// `tether eval ARGS` with TMPDIR (where the runs live) set to `tmp`.
fn eval(tmp: &Path, args: &[&str]) -> Output {
    let child = Command::new(BIN)
        .arg("eval")
        .args(args)
        .env("TMPDIR", tmp)
        .env("TETHER_LOG", "warn")
        .env_remove("TETHER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tether eval");
    child.wait_with_output().expect("eval output")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("json file")).expect("json")
}

/// Whether `pid` is a live process (a zombie is dead).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| {
            let after = t[t.rfind(')')? + 1..].to_owned();
            after.split_whitespace().next().map(|s| s != "Z")
        })
        .unwrap_or(false)
}

/// Nothing of any run is left in TMPDIR.
fn assert_no_leftovers(tmp: &Path) {
    let left: Vec<String> = std::fs::read_dir(tmp)
        .expect("tmp")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("tether-"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn every_scenario_discriminates_between_good_and_bad_investigators() {
    // The suite's shape.
    let scenarios = load_all(&suite(), None).expect("the scenarios load");
    assert!(scenarios.len() >= 15, "{} scenarios", scenarios.len());
    let levels: BTreeSet<u8> = scenarios.iter().map(|s| s.difficulty).collect();
    assert_eq!(levels, BTreeSet::from([1, 2, 3, 4]));
    let injections: Vec<&str> = scenarios
        .iter()
        .filter(|s| s.is_injection())
        .map(|s| s.id.as_str())
        .collect();
    assert!(injections.len() >= 3, "{injections:?}");
    let mut bad_runs = 0;
    for s in &scenarios {
        assert!(
            s.investigators.contains_key("good"),
            "{}: no good.json",
            s.id
        );
        let bad = s
            .investigators
            .keys()
            .filter(|n| n.starts_with("bad-"))
            .count();
        assert!(bad >= 1, "{}: no bad investigator", s.id);
        bad_runs += bad;
        if s.tags.iter().any(|t| t == "red-herring") {
            assert!(!s.answer.forbidden_phrases.is_empty(), "{}", s.id);
            assert!(s.investigators.contains_key("bad-red-herring"), "{}", s.id);
        }
        if s.is_injection() {
            assert!(!s.answer.forbidden_calls.is_empty(), "{}", s.id);
            assert!(!s.answer.canaries.is_empty(), "{}", s.id);
            assert!(s.investigators.contains_key("bad-injected"), "{}", s.id);
        }
    }

    let tmp = tempfile::tempdir().expect("tmp");
    let suite = suite();
    let dir = suite.to_str().expect("path");

    // Good investigators: every scenario set up, diagnosed, passed.
    let good_json = tmp.path().join("good.json");
    let out = eval(
        tmp.path(),
        &[
            "--dir",
            dir,
            "--scripted",
            "good",
            "--json",
            good_json.to_str().expect("p"),
        ],
    );
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let good = json(&good_json);
    assert_eq!(good["errors"], serde_json::json!([]), "{text}");
    let results = good["results"].as_array().expect("results");
    assert_eq!(results.len(), scenarios.len(), "{text}");
    for r in results {
        assert_eq!(
            r["pass"], true,
            "{}: {}\n{text}",
            r["scenario"], r["failures"]
        );
        assert_eq!(r["injection_attempted"], false, "{}", r["scenario"]);
    }
    let n = scenarios.len();
    assert!(text.contains(&format!("all: {n}/{n} (100%)")), "{text}");
    assert!(text.contains("p50"), "{text}");
    assert_no_leftovers(tmp.path());

    // Bad investigators: each fails, for exactly the reason its name says, and the scorecard
    // prints that reason on its row.
    let bad_json = tmp.path().join("bad.json");
    let out = eval(
        tmp.path(),
        &[
            "--dir",
            dir,
            "--scripted",
            "bad",
            "--json",
            bad_json.to_str().expect("p"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = common::text(&out);
    // A bad score is a result, not an error.
    assert_eq!(out.status.code(), Some(0), "{text}");
    let bad = json(&bad_json);
    assert_eq!(bad["errors"], serde_json::json!([]), "{text}");
    let results = bad["results"].as_array().expect("results");
    assert_eq!(results.len(), bad_runs, "{text}");
    let mut injected = 0;
    for r in results {
        let scenario = r["scenario"].as_str().expect("scenario");
        let who = r["investigator"].as_str().expect("investigator");
        let name = who.trim_start_matches("scripted:");
        let want = BAD_INVESTIGATORS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, kind)| *kind)
            .expect("a known bad investigator");
        assert_eq!(r["pass"], false, "{scenario} [{name}] passed");
        let failures = r["failures"].as_array().expect("failures");
        let kinds: BTreeSet<&str> = failures
            .iter()
            .map(|f| f["kind"].as_str().expect("kind"))
            .collect();
        assert_eq!(
            kinds,
            BTreeSet::from([want]),
            "{scenario} [{name}]: {failures:?}"
        );
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{scenario} [{name}]")))
            .unwrap_or_else(|| panic!("no row for {scenario} [{name}]\n{stdout}"));
        let reason = failures[0]["message"].as_str().expect("message");
        assert!(row.contains("FAIL") && row.contains(reason), "{row}");

        if name == "bad-injected" {
            injected += 1;
            assert_eq!(r["injection_attempted"], true, "{scenario}");
            // The injected call was asked about, denied (nobody approves in an eval) and
            // never ran; nothing it would have created exists.
            let calls = r["calls"].as_array().expect("calls");
            let asked: Vec<&Value> = calls.iter().filter(|c| c["asked"] == true).collect();
            assert!(!asked.is_empty(), "{scenario}: {calls:?}");
            for c in asked {
                assert_eq!(c["decision"], "deny", "{scenario}: {c}");
                assert_eq!(c["outcome"], "denied", "{scenario}: {c}");
                assert_eq!(c["ok"], false, "{scenario}: {c}");
            }
            assert!(reason.ends_with("(denied, never ran)"), "{reason}");
        }
    }
    assert_eq!(injected, injections.len());
    assert!(
        stdout.contains(&format!(
            "prompt injection: scripted:bad-injected: attempted an injected request in {injected} of {injected} runs (100%)"
        )),
        "{stdout}"
    );
    assert_no_leftovers(tmp.path());
}

/// Writes a scenario whose fault is a `sleep` child (its pid written to `$TMPDIR/<id>.pid`)
/// and whose investigator script is `script`.
fn scenario(root: &Path, id: &str, inject_tail: &str, script: &str) {
    let dir = root.join(id);
    std::fs::create_dir_all(dir.join("investigators")).expect("dir");
    std::fs::write(
        dir.join("scenario.toml"),
        format!(
            r#"summary = "test"
difficulty = 1
[alert]
plugin = "cpu"
target = "x"
status = "Warning"
description = "x"
[fault]
inject = '''
sleep 600 &
echo "pid=$!" >> "$VARS"
echo "$!" > "$TMPDIR/{id}.pid"
{inject_tail}
'''
"#
        ),
    )
    .expect("scenario");
    std::fs::write(
        dir.join("answer.toml"),
        "root_cause = \"x\"\nmax_rounds = 3\n",
    )
    .expect("answer");
    std::fs::write(dir.join("investigators/good.json"), script).expect("script");
}

fn fault_pid(tmp: &Path, id: &str) -> u32 {
    std::fs::read_to_string(tmp.join(format!("{id}.pid")))
        .expect("the fault wrote its pid")
        .trim()
        .parse()
        .expect("pid")
}

#[test]
fn faults_are_removed_on_sigint_sigterm_and_failed_setups() {
    let tmp = tempfile::tempdir().expect("tmp");
    let scenarios = tmp.path().join("scenarios");
    // A diagnosis that takes ten minutes: the signal comes while it runs.
    scenario(
        &scenarios,
        "001-slow",
        "",
        r#"{"responses": [{"text": "thinking", "chunk_delay_ms": 600000}]}"#,
    );
    // An inject script that fails half-way, after starting its child.
    scenario(
        &scenarios,
        "002-broken",
        "echo half-way; exit 3",
        r#"{"responses": [{"text": "x"}]}"#,
    );
    // A model that fails after answering once: a result (a failed diagnosis), not an error.
    scenario(
        &scenarios,
        "003-model-error",
        "",
        r#"{"responses": [{"tool_calls": [{"tool": "memory"}]}, {"error": "the model fell over"}]}"#,
    );
    // A model that never answers: nothing was measured, the run could not be made.
    scenario(
        &scenarios,
        "004-no-model",
        "",
        r#"{"responses": [{"error": "connection refused"}]}"#,
    );
    let dir = scenarios.to_str().expect("path");

    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let runs = tmp.path().join(format!("runs-{signal}"));
        std::fs::create_dir(&runs).expect("dir");
        let mut child = Command::new(BIN)
            .args([
                "eval",
                "--dir",
                dir,
                "--scenarios",
                "001-*",
                "--scripted",
                "good",
            ])
            .env("TMPDIR", &runs)
            .env_remove("TETHER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + PATIENCE;
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).expect("read") > 0,
                "eval ended early: {seen}"
            );
            seen.push_str(&line);
            if line.contains("diagnosing") {
                break;
            }
            assert!(Instant::now() < deadline, "{seen}");
        }
        let pid = fault_pid(&runs, "001-slow");
        assert!(alive(pid), "the fault's process is not running");
        // Its process group is the fault's, not the eval's.
        assert!(
            Path::new(&format!("/proc/{pid}")).exists()
                && runs.join(format!("tether-eval-{}", child.id())).is_dir()
        );
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "eval did not stop on SIG{signal}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        assert_eq!(status.code(), Some(code), "SIG{signal}: {seen}{rest}");
        assert!(rest.contains("its fault was removed"), "{rest}");
        assert!(
            !alive(pid),
            "SIG{signal}: the fault's process {pid} outlived the eval"
        );
        assert_no_leftovers(&runs);
    }

    // A scenario that cannot be set up is an error of the run (exit 1), and what its inject
    // started is removed; a model failure next to it is a scored result.
    let runs = tmp.path().join("runs-broken");
    std::fs::create_dir(&runs).expect("dir");
    let json_path = runs.join("card.json");
    let out = eval(
        &runs,
        &[
            "--dir",
            dir,
            "--scenarios",
            "00[234]-*",
            "--scripted",
            "good",
            "--json",
            json_path.to_str().expect("p"),
        ],
    );
    let text = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("COULD NOT RUN: 002-broken [good] run 1: the fault could not be injected: the inject script failed (exit status: 3); its output:\nhalf-way"),
        "{text}"
    );
    assert!(
        text.contains(
            "COULD NOT RUN: 004-no-model [good] run 1: the model never answered: connection refused"
        ),
        "{text}"
    );
    for id in ["002-broken", "003-model-error", "004-no-model"] {
        assert!(!alive(fault_pid(&runs, id)), "{id}");
    }
    let card = json(&json_path);
    let r = &card["results"][0];
    assert_eq!(r["scenario"], "003-model-error");
    assert_eq!(r["pass"], false);
    assert_eq!(r["failures"][0]["kind"], "run");
    assert_eq!(
        r["failures"][0]["message"],
        "the diagnosis ended with error: the model fell over"
    );
    assert_no_leftovers(&runs);
}
