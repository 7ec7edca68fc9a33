//! The host plugins (cpu, mem, disk, load, uptime, procnum, systemd) against the real system,
//! and the registry.

use serde_json::json;
use std::path::Path;
use std::time::Duration;
use tether_checks::plugin::{CheckContext, Measurement, Status, Thresholds, Value};
use tether_checks::plugins;
use tether_checks::rules::{evaluate, overlay};
use tether_host::host;
use tokio_util::sync::CancellationToken;

mod common;
use common::{build, ctx, number, run, settings, status, try_build};

/// The measurement named `check` on `target`.
fn find<'a>(ms: &'a [Measurement], check: &str, target: &str) -> &'a Measurement {
    ms.iter()
        .find(|m| m.check == check && m.target == target)
        .unwrap_or_else(|| panic!("no {check} on {target} in {ms:#?}"))
}

// ---------------------------------------------------------------------------------------------
// registry
// ---------------------------------------------------------------------------------------------

#[test]
fn the_registry_lists_every_core_plugin_once() {
    let names: Vec<&str> = plugins::registry().iter().map(|p| p.name()).collect();
    let expected = [
        "cpu",
        "mem",
        "disk",
        "load",
        "uptime",
        "procnum",
        "tcp",
        "http",
        "filecheck",
        "logfile",
        "exec",
        "systemd",
    ];
    assert_eq!(names.len(), expected.len(), "{names:?}");
    for e in expected {
        assert_eq!(
            names.iter().filter(|n| **n == e).count(),
            1,
            "{e} in {names:?}"
        );
    }
    for p in plugins::registry() {
        assert!(!p.about().is_empty(), "{}", p.name());
    }
}

#[test]
fn default_instances_exist_for_host_plugins_only_and_build() {
    for p in plugins::registry() {
        let defaults = p.default_instances();
        let wants_one = matches!(p.name(), "cpu" | "mem" | "disk" | "load" | "uptime");
        assert_eq!(defaults.len(), usize::from(wants_one), "{}", p.name());
        for d in defaults {
            p.build(&d)
                .unwrap_or_else(|e| panic!("{} default instance: {e}", p.name()));
        }
    }
}

#[test]
fn unknown_keys_are_rejected_naming_the_key() {
    // Valid required settings per plugin, so the unknown key is the only fault.
    let base = |name: &str| -> serde_json::Value {
        match name {
            "procnum" => json!({"process": "init"}),
            "tcp" => json!({"target": "127.0.0.1:1"}),
            "http" => json!({"url": "http://127.0.0.1:1/"}),
            "filecheck" | "logfile" => json!({"path": "/tmp/x", "pattern": "x"}),
            "exec" => json!({"command": "true"}),
            "systemd" => json!({"unit": "ssh.service"}),
            _ => json!({}),
        }
    };
    for p in plugins::registry() {
        let mut v = base(p.name());
        if p.name() == "filecheck" {
            v = json!({"path": "/tmp/x"});
        }
        p.build(&settings(v.clone()))
            .unwrap_or_else(|e| panic!("{} base settings: {e}", p.name()));
        v["bogus_key_xyz"] = json!(1);
        let err = match p.build(&settings(v)) {
            Ok(_) => panic!("{} accepted an unknown key", p.name()),
            Err(e) => e,
        };
        assert!(err.contains("`bogus_key_xyz`"), "{}: {err}", p.name());
    }
    let err = try_build("disk", json!({"mount": ["/"]}))
        .err()
        .expect("rejected");
    assert_eq!(err, "unknown key `mount`; did you mean `mounts`?");
    let err = try_build("logfile", json!({"path": "/x", "paterns": ["a"]}))
        .err()
        .expect("rejected");
    assert!(err.contains("did you mean `patterns`?"), "{err}");
    let err = try_build("cpu", json!({"interval": "5s"}))
        .err()
        .expect("rejected");
    assert!(
        err.contains("`interval`") && err.contains("takes no settings"),
        "{err}"
    );
}

#[test]
fn wrong_value_types_are_rejected_naming_the_key() {
    let err = try_build("disk", json!({"mounts": [1]}))
        .err()
        .expect("rejected");
    assert!(err.contains("`mounts`"), "{err}");
    let err = try_build("tcp", json!({"target": 80}))
        .err()
        .expect("rejected");
    assert!(err.contains("`target`"), "{err}");
    let err = try_build("disk", json!({"exclude": ["[broken"]}))
        .err()
        .expect("rejected");
    assert!(err.contains("`exclude`"), "{err}");
    let err = try_build("disk", json!({"mounts": ["relative/path"]}))
        .err()
        .expect("rejected");
    assert!(err.contains("absolute"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// cpu, mem, load, uptime
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn cpu_percentages_are_within_range_over_two_runs() {
    let check = build("cpu", json!({}));
    for _ in 0..2 {
        let ms = run(check.as_ref()).await;
        assert_eq!(ms.len(), 3, "{ms:#?}");
        for name in ["usage_pct", "iowait_pct", "steal_pct"] {
            let m = find(&ms, name, "cpu");
            let v = number(m);
            assert!((0.0..=100.0).contains(&v), "{name} = {v}");
            assert_eq!(m.unit, "%");
        }
        assert_eq!(find(&ms, "usage_pct", "cpu").defaults.warn_ge, Some(90.0));
        let io = &find(&ms, "iowait_pct", "cpu").defaults;
        assert_eq!((io.warn_ge, io.critical_ge), (Some(20.0), Some(50.0)));
        assert_eq!(find(&ms, "steal_pct", "cpu").defaults.warn_ge, Some(10.0));
    }
}

#[tokio::test]
async fn a_cancelled_first_cpu_run_stops_at_once() {
    let check = build("cpu", json!({}));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let err = check
        .run(CheckContext {
            cancel,
            timeout: Duration::from_secs(3600),
        })
        .await
        .expect_err("cancelled");
    assert_eq!(err, "cancelled");
}

fn meminfo_kb(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/meminfo"))
}

#[tokio::test]
async fn mem_matches_proc_meminfo() {
    let ms = run(build("mem", json!({})).as_ref()).await;
    let total = meminfo_kb("MemTotal") * 1024;
    let avail = find(&ms, "available_pct", "memory");
    let v = number(avail);
    assert!(v > 0.0 && v <= 100.0, "{v}");
    let expected = meminfo_kb("MemAvailable") as f64 * 1024.0 / total as f64 * 100.0;
    assert!((v - expected).abs() < 5.0, "{v} vs {expected}");
    assert!(
        avail.description.contains(&host::human_bytes(total)),
        "{}",
        avail.description
    );
    assert_eq!(
        (avail.defaults.warn_lt, avail.defaults.critical_lt),
        (Some(10.0), Some(5.0))
    );
    let swap = ms.iter().find(|m| m.check == "swap_used_pct");
    assert_eq!(swap.is_some(), meminfo_kb("SwapTotal") > 0, "{ms:#?}");
    if let Some(s) = swap {
        assert!((0.0..=100.0).contains(&number(s)));
        assert_eq!(
            (s.defaults.warn_ge, s.defaults.critical_ge),
            (Some(80.0), Some(95.0))
        );
    }
}

#[tokio::test]
async fn load_is_per_online_core() {
    let ms = run(build("load", json!({})).as_ref()).await;
    let cores = host::cpu_times()
        .iter()
        .filter(|(n, _)| n != "cpu")
        .count()
        .max(1);
    let l = host::load().expect("loadavg");
    let one = number(find(&ms, "load1_per_core", "system"));
    let five = number(find(&ms, "load5_per_core", "system"));
    assert!(one >= 0.0 && five >= 0.0);
    assert!(
        (one - l.one / cores as f64).abs() < 0.5,
        "{one} vs {}",
        l.one
    );
    assert!(
        (five - l.five / cores as f64).abs() < 0.5,
        "{five} vs {}",
        l.five
    );
    let d = &find(&ms, "load5_per_core", "system").defaults;
    assert_eq!((d.warn_gt, d.critical_gt), (Some(1.5), Some(3.0)));
}

#[tokio::test]
async fn uptime_matches_proc_uptime() {
    let ms = run(build("uptime", json!({})).as_ref()).await;
    let m = find(&ms, "uptime_seconds", "system");
    let proc_uptime = host::uptime_sec().expect("uptime") as f64;
    assert!((number(m) - proc_uptime).abs() <= 5.0, "{}", number(m));
    assert_eq!(m.defaults.warn_lt, Some(600.0));
    // Just after a reboot the default fires.
    let mut fresh = m.clone();
    fresh.value = Value::Number(120.0);
    assert_eq!(evaluate(&fresh.value, &fresh.defaults), Status::Warning);
}

// ---------------------------------------------------------------------------------------------
// disk
// ---------------------------------------------------------------------------------------------

/// The visible mount holding `path`.
fn mount_of(path: &Path) -> host::Mount {
    let p = path.canonicalize().expect("canonical path");
    tether_host::tools::diag::disks::select_mounts(
        host::mounts(),
        Some(p.to_str().expect("utf-8 path")),
        true,
    )
    .expect("a mount holds the path")
    .remove(0)
}

fn df_pct(mount_point: &str) -> (f64, Option<f64>) {
    let st = host::statvfs(Path::new(mount_point)).expect("statvfs");
    let used = (st.blocks - st.blocks_free) * st.block_size;
    let avail = st.blocks_available * st.block_size;
    let inodes =
        (st.files > 0).then(|| (st.files - st.files_free) as f64 / st.files as f64 * 100.0);
    (used as f64 / (used + avail) as f64 * 100.0, inodes)
}

#[tokio::test]
async fn disk_measures_the_mount_of_a_temp_dir_like_statvfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = mount_of(dir.path());
    let check = build("disk", json!({"mounts": [mount.mount_point]}));
    let ms = run(check.as_ref()).await;
    let space = find(&ms, "space_used_pct", &mount.mount_point);
    let (want_space, want_inodes) = df_pct(&mount.mount_point);
    assert!(
        (number(space) - want_space).abs() <= 0.2,
        "{} vs statvfs {want_space}",
        number(space)
    );
    assert_eq!(space.labels.get("device"), Some(&mount.device));
    assert_eq!(space.unit, "%");
    assert_eq!(
        (space.defaults.warn_ge, space.defaults.critical_ge),
        (Some(80.0), Some(90.0))
    );
    match want_inodes {
        Some(want) => {
            let inodes = find(&ms, "inode_used_pct", &mount.mount_point);
            assert!(
                (number(inodes) - want).abs() <= 0.2,
                "{} vs {want}",
                number(inodes)
            );
            assert_eq!(inodes.labels.get("device"), Some(&mount.device));
        }
        None => assert!(ms.iter().all(|m| m.check != "inode_used_pct")),
    }
    assert_eq!(status(find(&ms, "mounted", &mount.mount_point)), Status::Ok);
    // Only the mount asked for.
    assert!(ms.iter().all(|m| m.target == mount.mount_point), "{ms:#?}");
}

#[tokio::test]
async fn disk_thresholds_make_it_fire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mount = mount_of(dir.path());
    let ms = run(build("disk", json!({"mounts": [mount.mount_point]})).as_ref()).await;
    let space = find(&ms, "space_used_pct", &mount.mount_point);
    let used = number(space);
    // An instance's thresholds below the figure fire; above it they do not.
    let low = Thresholds {
        warn_ge: Some(used - 1.0),
        critical_ge: Some(used),
        ..Thresholds::default()
    };
    assert_eq!(
        evaluate(&space.value, &overlay(&space.defaults, &low)),
        Status::Critical
    );
    let warn_only = Thresholds {
        warn_ge: Some(used),
        critical_ge: Some(used + 1.0),
        ..Thresholds::default()
    };
    assert_eq!(
        evaluate(&space.value, &overlay(&space.defaults, &warn_only)),
        Status::Warning
    );
    let high = Thresholds {
        warn_ge: Some(100.5),
        critical_ge: Some(101.0),
        ..Thresholds::default()
    };
    assert_eq!(
        evaluate(&space.value, &overlay(&space.defaults, &high)),
        Status::Ok
    );
}

#[tokio::test]
async fn disk_defaults_cover_real_file_systems_only() {
    let ms = run(build("disk", json!({})).as_ref()).await;
    let visible =
        tether_host::tools::diag::disks::select_mounts(host::mounts(), None, true).expect("mounts");
    for m in &ms {
        let mount = visible
            .iter()
            .find(|v| v.mount_point == m.target)
            .unwrap_or_else(|| panic!("not a mount point: {m:#?}"));
        assert!(
            !host::is_pseudo_fs(&mount.fs_type),
            "pseudo file system measured: {m:#?}"
        );
        if let Value::Number(v) = m.value {
            assert!((0.0..=100.0).contains(&v), "{m:#?}");
        }
    }
    assert!(
        ms.iter()
            .any(|m| m.target == "/" && m.check == "space_used_pct"),
        "{ms:#?}"
    );
    // `exclude` and `fs_types_exclude` remove them again.
    let root_type = host::mounts()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == "/")
        .expect("root mount")
        .fs_type;
    let ms = run(build("disk", json!({"exclude": ["/"]})).as_ref()).await;
    assert!(ms.iter().all(|m| m.target != "/"), "{ms:#?}");
    let ms = run(build("disk", json!({"fs_types_exclude": [root_type]})).as_ref()).await;
    assert!(ms.iter().all(|m| m.target != "/"), "{ms:#?}");
}

#[tokio::test]
async fn disk_reports_a_missing_literal_mount() {
    let ms = run(build("disk", json!({"mounts": ["/no/such/mount-xyz"]})).as_ref()).await;
    let m = find(&ms, "mounted", "/no/such/mount-xyz");
    assert_eq!(status(m), Status::Critical);
    assert_eq!(ms.len(), 1, "{ms:#?}");
}

// ---------------------------------------------------------------------------------------------
// procnum
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn procnum_finds_its_own_process_by_name_and_pattern() {
    let me = host::proc_stat(std::process::id()).expect("own stat");
    let ms = run(build("procnum", json!({"process": me.comm})).as_ref()).await;
    let m = find(&ms, "count", &me.comm);
    assert!(number(m) >= 1.0, "{m:#?}");
    assert!(
        m.description.contains(&std::process::id().to_string()) || number(m) > 10.0,
        "{}",
        m.description
    );
    assert_eq!(evaluate(&m.value, &m.defaults), Status::Ok);

    let exe = std::env::current_exe().expect("exe");
    let pattern = exe
        .file_name()
        .and_then(|n| n.to_str())
        .expect("exe name")
        .to_owned();
    let ms = run(build("procnum", json!({"pattern": pattern})).as_ref()).await;
    assert!(number(find(&ms, "count", &pattern)) >= 1.0);
}

#[tokio::test]
async fn procnum_missing_process_is_critical_and_min_max_become_thresholds() {
    let name = "no-such-proc-xyz";
    let ms = run(build("procnum", json!({"process": name})).as_ref()).await;
    let m = find(&ms, "count", name);
    assert_eq!(number(m), 0.0);
    assert_eq!(m.defaults.critical_lt, Some(1.0));
    assert_eq!(evaluate(&m.value, &m.defaults), Status::Critical);

    let me = host::proc_stat(std::process::id()).expect("own stat");
    let ms = run(build("procnum", json!({"process": me.comm, "min": 0, "max": 0})).as_ref()).await;
    let m = find(&ms, "count", &me.comm);
    assert_eq!(
        (m.defaults.critical_lt, m.defaults.critical_gt),
        (None, Some(0.0))
    );
    assert_eq!(evaluate(&m.value, &m.defaults), Status::Critical);

    assert!(try_build("procnum", json!({})).is_err());
    assert!(try_build("procnum", json!({"process": "a", "pattern": "b"})).is_err());
    assert!(try_build("procnum", json!({"process": "a", "min": 3, "max": 2})).is_err());
    assert!(try_build("procnum", json!({"process": "a", "min": -1})).is_err());
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn systemd_without_systemd_is_an_error() {
    let check = build("systemd", json!({"units": ["ssh.service", "cron"]}));
    let result = check.run(ctx()).await;
    if Path::new("/run/systemd/system").exists() {
        let ms = result.expect("systemd runs here");
        assert_eq!(ms.len(), 2, "{ms:#?}");
        assert!(ms.iter().all(|m| m.check == "active"));
    } else {
        let err = result.expect_err("no systemd in this container");
        assert!(
            err.starts_with("systemd is not available on this host"),
            "{err}"
        );
    }
}

#[test]
fn systemd_settings_are_validated() {
    assert!(try_build("systemd", json!({})).is_err());
    let err = try_build("systemd", json!({"unit": "--all"}))
        .err()
        .expect("rejected");
    assert!(err.contains("not a valid unit name"), "{err}");
    assert!(try_build("systemd", json!({"unit": "a;b"})).is_err());
    assert!(
        try_build(
            "systemd",
            json!({"units": ["nginx.service", "getty@tty1.service"]})
        )
        .is_ok()
    );
}

#[test]
fn systemd_states_map_to_statuses() {
    use std::collections::BTreeMap;
    use tether_checks::plugins::systemd::measurement;
    let props = |active: &str, load: &str| -> BTreeMap<String, String> {
        BTreeMap::from([
            ("ActiveState".to_owned(), active.to_owned()),
            ("SubState".to_owned(), "x".to_owned()),
            ("LoadState".to_owned(), load.to_owned()),
            ("Result".to_owned(), "exit-code".to_owned()),
        ])
    };
    let s = |a: &str, l: &str| status(&measurement("u.service", &props(a, l)));
    assert_eq!(s("active", "loaded"), Status::Ok);
    assert_eq!(s("failed", "loaded"), Status::Critical);
    assert_eq!(s("inactive", "loaded"), Status::Critical);
    assert_eq!(s("activating", "loaded"), Status::Warning);
    assert_eq!(s("inactive", "not-found"), Status::Critical);
    let m = measurement("u.service", &props("failed", "loaded"));
    assert!(m.description.contains("failed") && m.description.contains("exit-code"));
}
