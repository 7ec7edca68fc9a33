//! The file plugins (filecheck, logfile) on temporary files.

use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};
use tether_checks::plugin::{Check, Status};
use tether_checks::rules::evaluate;

mod common;
use common::{build, ctx, find, number, run, status, try_build};

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

// ---------------------------------------------------------------------------------------------
// filecheck
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn filecheck_age_and_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("backup.tar");
    std::fs::write(&path, vec![b'x'; 100]).expect("write");
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(two_hours_ago)
        .expect("set mtime");

    let check = build(
        "filecheck",
        json!({"path": s(&path), "max_age": "1h", "max_size": "1k", "min_size": 10}),
    );
    let ms = run(check.as_ref()).await;
    assert_eq!(status(find(&ms, "exists")), Status::Ok);
    let age = find(&ms, "age_seconds");
    assert!((number(age) - 7200.0).abs() < 60.0, "{age:#?}");
    assert_eq!(age.defaults.critical_gt, Some(3600.0));
    assert_eq!(evaluate(&age.value, &age.defaults), Status::Critical);
    let size = find(&ms, "size_bytes");
    assert_eq!(number(size), 100.0);
    assert_eq!(
        (size.defaults.critical_gt, size.defaults.critical_lt),
        (Some(1024.0), Some(10.0))
    );
    assert_eq!(evaluate(&size.value, &size.defaults), Status::Ok);

    // Too small now.
    std::fs::write(&path, b"abc").expect("rewrite");
    let ms = run(check.as_ref()).await;
    let size = find(&ms, "size_bytes");
    assert_eq!(number(size), 3.0);
    assert_eq!(evaluate(&size.value, &size.defaults), Status::Critical);
    let age = find(&ms, "age_seconds");
    assert!(number(age) < 60.0, "{age:#?}");
    assert_eq!(evaluate(&age.value, &age.defaults), Status::Ok);

    // Without limits there are no default thresholds.
    let ms = run(build("filecheck", json!({"path": s(&path)})).as_ref()).await;
    assert_eq!(find(&ms, "age_seconds").defaults, Default::default());
    assert_eq!(find(&ms, "size_bytes").defaults, Default::default());
}

#[tokio::test]
async fn filecheck_presence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("flag");
    let must = build("filecheck", json!({"path": s(&path)}));
    let must_not = build(
        "filecheck",
        json!({"path": s(&path), "must_not_exist": true}),
    );
    let either = build("filecheck", json!({"path": s(&path), "must_exist": false}));

    let ms = run(must.as_ref()).await;
    assert_eq!(status(find(&ms, "exists")), Status::Critical);
    assert_eq!(ms.len(), 1, "{ms:#?}");
    assert_eq!(
        status(find(&run(must_not.as_ref()).await, "exists")),
        Status::Ok
    );
    assert_eq!(
        status(find(&run(either.as_ref()).await, "exists")),
        Status::Ok
    );

    std::fs::write(&path, b"").expect("create");
    assert_eq!(
        status(find(&run(must.as_ref()).await, "exists")),
        Status::Ok
    );
    let ms = run(must_not.as_ref()).await;
    assert_eq!(status(find(&ms, "exists")), Status::Critical);
    assert_eq!(number(find(&ms, "size_bytes")), 0.0);
    assert_eq!(
        status(find(&run(either.as_ref()).await, "exists")),
        Status::Ok
    );
}

#[test]
fn filecheck_settings_are_validated() {
    let bad = [
        json!({}),
        json!({"path": "relative"}),
        json!({"path": "/x", "must_exist": true, "must_not_exist": true}),
        json!({"path": "/x", "max_age": "soon"}),
        json!({"path": "/x", "max_size": "12 parsecs"}),
        json!({"path": "/x", "max_size": 1, "min_size": 2}),
    ];
    for v in bad {
        assert!(try_build("filecheck", v.clone()).is_err(), "{v} accepted");
    }
    let err = try_build("filecheck", json!({"path": "/x", "max_sise": 1}))
        .err()
        .expect("rejected");
    assert!(err.contains("did you mean `max_size`?"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// logfile
// ---------------------------------------------------------------------------------------------

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

async fn matches(check: &dyn Check) -> (f64, String) {
    let ms = run(check).await;
    assert_eq!(ms.len(), 1, "{ms:#?}");
    let m = find(&ms, "matches");
    assert_eq!(m.defaults.warn_ge, Some(1.0));
    assert_eq!(m.unit, "count");
    (number(m), m.description.clone())
}

#[tokio::test]
async fn logfile_counts_new_lines_across_rotation_without_double_counting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("app.log");
    append(&log, "ERROR history one\nERROR history two\n");
    let check = build("logfile", json!({"path": s(&log), "pattern": "ERROR"}));

    // The first run starts at the end: history does not count.
    assert_eq!(matches(check.as_ref()).await.0, 0.0);

    append(&log, "ERROR one\ninfo line\nERROR two\n");
    let (n, d) = matches(check.as_ref()).await;
    assert_eq!(n, 2.0);
    assert!(d.contains("ERROR two"), "{d}");
    assert_eq!(matches(check.as_ref()).await.0, 0.0);

    // A line still being written counts once complete.
    append(&log, "ERROR par");
    assert_eq!(matches(check.as_ref()).await.0, 0.0);
    append(&log, "tial\n");
    let (n, d) = matches(check.as_ref()).await;
    assert_eq!(n, 1.0);
    assert!(d.contains("ERROR partial"), "{d}");

    // Rotation: a last line in the old file, rename, new file.
    append(&log, "ERROR before rotation\n");
    std::fs::rename(&log, dir.path().join("app.log.1")).expect("rotate");
    append(&log, "ERROR after rotation\nok\nERROR after again\n");
    let (n, d) = matches(check.as_ref()).await;
    assert_eq!(n, 3.0, "{d}");
    assert!(d.contains("ERROR after again"), "{d}");
    assert!(d.contains("rotated"), "{d}");
    assert_eq!(matches(check.as_ref()).await.0, 0.0);

    append(&log, "ERROR new file\n");
    assert_eq!(matches(check.as_ref()).await.0, 1.0);

    // Rotation where the old file is deleted before the run: its rest is still read through
    // the open handle.
    append(&log, "ERROR last words\n");
    std::fs::remove_file(&log).expect("remove");
    let (n, d) = matches(check.as_ref()).await;
    assert_eq!(n, 1.0, "{d}");
    assert!(d.contains("removed"), "{d}");
    assert_eq!(matches(check.as_ref()).await.0, 0.0);
    // The new file is read from its start.
    append(&log, "ERROR reborn\n");
    assert_eq!(matches(check.as_ref()).await.0, 1.0);
    assert_eq!(matches(check.as_ref()).await.0, 0.0);
}

#[tokio::test]
async fn logfile_copytruncate_is_read_again_from_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("app.log");
    append(&log, "a\nb\nc\nERROR old\n");
    let check = build("logfile", json!({"path": s(&log), "pattern": "ERROR"}));
    assert_eq!(matches(check.as_ref()).await.0, 0.0);
    std::fs::File::options()
        .write(true)
        .open(&log)
        .expect("open")
        .set_len(0)
        .expect("truncate");
    append(&log, "ERROR x\n");
    let (n, d) = matches(check.as_ref()).await;
    assert_eq!(n, 1.0, "{d}");
    assert!(d.contains("truncated"), "{d}");
}

#[tokio::test]
async fn logfile_from_start_patterns_ignore_case_and_the_line_cap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("app.log");
    let mut text = String::new();
    for i in 0..10 {
        text.push_str(&format!("line {i} panic\n"));
    }
    text.push_str("an Oops here\n");
    append(&log, &text);
    let check = build(
        "logfile",
        json!({
            "path": s(&log),
            "patterns": ["PANIC", "oops"],
            "ignore_case": true,
            "from_start": true,
            "max_lines": 4,
        }),
    );
    let (n, d) = matches(check.as_ref()).await;
    assert_eq!(n, 4.0);
    assert!(d.contains("next run"), "{d}");
    assert_eq!(matches(check.as_ref()).await.0, 4.0);
    let (n, d) = matches(check.as_ref()).await;
    assert_eq!(n, 3.0, "{d}");
    assert!(d.contains("an Oops here"), "{d}");
    assert_eq!(matches(check.as_ref()).await.0, 0.0);

    // Case matters by default.
    let strict = build(
        "logfile",
        json!({"path": s(&log), "pattern": "PANIC", "from_start": true}),
    );
    assert_eq!(matches(strict.as_ref()).await.0, 0.0);
}

#[tokio::test]
async fn logfile_missing_file_on_first_run_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("nope.log");
    let check = build("logfile", json!({"path": s(&log), "pattern": "x"}));
    let err = check.run(ctx()).await.expect_err("missing");
    assert!(err.contains("does not exist"), "{err}");
    // Once it appears, watching starts at its end.
    append(&log, "x\n");
    assert_eq!(matches(check.as_ref()).await.0, 0.0);
    append(&log, "x\n");
    assert_eq!(matches(check.as_ref()).await.0, 1.0);
}

#[test]
fn logfile_settings_are_validated() {
    let bad = [
        json!({"path": "/x"}),
        json!({"pattern": "x"}),
        json!({"path": "x.log", "pattern": "x"}),
        json!({"path": "/x", "pattern": ""}),
        json!({"path": "/x", "pattern": "x", "max_lines": 0}),
        json!({"path": "/x", "patterns": [1]}),
    ];
    for v in bad {
        assert!(try_build("logfile", v.clone()).is_err(), "{v} accepted");
    }
}
