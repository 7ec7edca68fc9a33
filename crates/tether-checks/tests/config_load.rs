//! Loading `conf.d/<plugin>.toml`: defaults, precedence, and errors that name file and key.

use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tether_checks::config::{InstanceSpec, load_dir, parse_file};
use tether_checks::plugin::{Check, CheckContext, Measurement, Plugin, Thresholds};

/// Accepts `targets` (array of strings) and `mode` (string); anything else is an error naming
/// the key, as real plugins do.
struct Probe(&'static str);

struct NoopCheck;

impl Check for NoopCheck {
    fn run<'a>(&'a self, _ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

impl Plugin for Probe {
    fn name(&self) -> &'static str {
        self.0
    }
    fn about(&self) -> &'static str {
        "test probe"
    }
    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        for (k, v) in settings {
            match (k.as_str(), v) {
                ("targets", toml::Value::Array(_)) | ("mode", toml::Value::String(_)) => {}
                ("targets" | "mode", _) => return Err(format!("{k}: wrong type")),
                _ => return Err(format!("{k}: unknown key")),
            }
        }
        Ok(Box::new(NoopCheck))
    }
    fn settings_keys(&self) -> &'static [&'static str] {
        &["targets", "mode"]
    }
    fn default_instances(&self) -> Vec<toml::Table> {
        let mut t = toml::Table::new();
        t.insert("targets".into(), toml::Value::Array(vec!["default".into()]));
        vec![t.clone(), t]
    }
}

fn plugins() -> Vec<Arc<dyn Plugin>> {
    vec![Arc::new(Probe("probe")), Arc::new(Probe("disk"))]
}

fn parse(text: &str) -> Result<Vec<InstanceSpec>, Vec<String>> {
    parse_file(Path::new("conf.d/probe.toml"), text, &Probe("probe"))
        .map_err(|e| e.iter().map(ToString::to_string).collect())
}

fn one_error(text: &str) -> String {
    match parse(text) {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => {
            assert_eq!(e.len(), 1, "{e:?}");
            e[0].clone()
        }
    }
}

#[test]
fn defaults_apply() {
    let specs = parse("[[instances]]\ntargets = [\"/\"]\n").expect("valid");
    assert_eq!(specs.len(), 1);
    let s = &specs[0];
    assert_eq!(s.plugin, "probe");
    assert_eq!(s.interval, Duration::from_secs(30));
    assert_eq!(s.timeout, Duration::from_secs(10));
    assert_eq!(s.lifecycle.for_duration, Duration::ZERO);
    assert_eq!(s.lifecycle.repeat_interval, None);
    assert_eq!(s.lifecycle.repeat_number, None);
    assert!(s.lifecycle.recovery);
    assert!(!s.diagnose);
    assert_eq!(s.name, None);
    assert_eq!(s.id(), "instances[0]");
    assert!(s.labels.is_empty());
    // The plugin got only its own keys.
    assert_eq!(s.settings.keys().collect::<Vec<_>>(), vec!["targets"]);
}

#[test]
fn plugin_level_defaults_and_instance_overrides() {
    let text = r#"
interval = "1m"
timeout = "5s"
for_duration = "2m"
repeat_interval = "1h"
repeat_number = 3
recovery = false
diagnose = true
labels = { team = "infra", env = "prod" }
warn_ge = 80
critical_ge = 90.5

[checks.inodes]
critical_ge = 99

[[instances]]
name = "root"
targets = ["/"]
interval = "10s"
labels = { env = "staging" }
critical_ge = 95
recovery = true

[instances.checks.inodes]
warn_ge = 70

[[instances]]
targets = ["/data"]
"#;
    let specs = parse(text).expect("valid");
    assert_eq!(specs.len(), 2);
    let (a, b) = (&specs[0], &specs[1]);
    assert_eq!(a.id(), "root");
    assert_eq!(a.interval, Duration::from_secs(10));
    assert_eq!(b.interval, Duration::from_secs(60));
    assert_eq!(a.timeout, Duration::from_secs(5));
    assert_eq!(a.lifecycle.for_duration, Duration::from_secs(120));
    assert_eq!(a.lifecycle.repeat_interval, Some(Duration::from_secs(3600)));
    assert_eq!(a.lifecycle.repeat_number, Some(3));
    assert!(a.lifecycle.recovery);
    assert!(!b.lifecycle.recovery);
    assert!(a.diagnose && b.diagnose);
    assert_eq!(
        a.labels,
        BTreeMap::from([
            ("env".to_owned(), "staging".to_owned()),
            ("team".to_owned(), "infra".to_owned())
        ])
    );
    assert_eq!(b.labels["env"], "prod");

    // Effective thresholds: measurement defaults < instance < checks.<name>.
    let defaults = Thresholds {
        warn_ge: Some(50.0),
        warn_le: Some(1.0),
        ..Thresholds::default()
    };
    let t = a.thresholds_for("used", &defaults);
    assert_eq!(t.warn_ge, Some(80.0));
    assert_eq!(t.critical_ge, Some(95.0));
    assert_eq!(t.warn_le, Some(1.0));
    let t = a.thresholds_for("inodes", &defaults);
    assert_eq!(t.warn_ge, Some(70.0));
    assert_eq!(t.critical_ge, Some(99.0));
    let t = b.thresholds_for("used", &defaults);
    assert_eq!(t.critical_ge, Some(90.5));
    assert_eq!(
        b.thresholds_for("inodes", &defaults).critical_ge,
        Some(99.0)
    );
}

#[test]
fn errors_name_the_file_and_the_key() {
    let text = "[[instances]]\ntargets = []\n[[instances]]\nfor_duration = \"5x\"\n";
    let e = one_error(text);
    assert!(
        e.starts_with("conf.d/probe.toml: instances[1].for_duration: \"5x\" is not a duration"),
        "{e}"
    );

    let cases: &[(&str, &str)] = &[
        (
            "interval = 30\n",
            "conf.d/probe.toml: interval: expected a duration string",
        ),
        (
            "interval = \"0s\"\n",
            "conf.d/probe.toml: interval: \"0s\" must be longer than zero",
        ),
        (
            "interval = \"500ms\"\n",
            "conf.d/probe.toml: interval: \"500ms\" is below the minimum of 1s",
        ),
        (
            "[[instances]]\ninterval = \"1ms\"\n",
            "conf.d/probe.toml: instances[0].interval: \"1ms\" is below the minimum of 1s",
        ),
        (
            "[[instances]]\ntimeout = true\n",
            "conf.d/probe.toml: instances[0].timeout:",
        ),
        (
            "[[instances]]\nrepeat_number = -1\n",
            "conf.d/probe.toml: instances[0].repeat_number:",
        ),
        (
            "[[instances]]\nrecovery = \"yes\"\n",
            "conf.d/probe.toml: instances[0].recovery: expected true or false",
        ),
        (
            "[[instances]]\nwarn_ge = \"high\"\n",
            "conf.d/probe.toml: instances[0].warn_ge: expected a number",
        ),
        (
            "[[instances]]\nlabels = { plugin = \"x\" }\n",
            "conf.d/probe.toml: instances[0].labels.plugin: reserved label",
        ),
        (
            "[[instances]]\nlabels = { env = 3 }\n",
            "conf.d/probe.toml: instances[0].labels.env: expected a string",
        ),
        (
            "[[instances]]\n[instances.checks.used]\nwarn_gee = 1\n",
            "conf.d/probe.toml: instances[0].checks.used.warn_gee: unknown key",
        ),
        (
            "[[instances]]\nchecks = { used = 3 }\n",
            "conf.d/probe.toml: instances[0].checks.used: expected a table",
        ),
        (
            "[[instances]]\nbogus = 1\n",
            "conf.d/probe.toml: instances[0]: unknown key `bogus`; the probe plugin takes: \
             targets, mode; and the common keys: name, interval,",
        ),
        (
            "bogus = 1\n",
            "conf.d/probe.toml: unknown key `bogus` at plugin level; the plugin level takes: \
             instances, interval,",
        ),
        (
            "name = \"x\"\n",
            "conf.d/probe.toml: name: `name` is set per instance",
        ),
        (
            "instances = 3\n",
            "conf.d/probe.toml: instances: expected an array of tables",
        ),
        (
            "instances = [3]\n",
            "conf.d/probe.toml: instances[0]: expected a table",
        ),
        (
            "[[instances]]\nname = \"a\"\n[[instances]]\nname = \"a\"\n",
            "conf.d/probe.toml: instances[1].name: \"a\" is already the name of instances[0]",
        ),
        ("[[instances]\n", "conf.d/probe.toml: TOML parse error"),
    ];
    for (text, want) in cases {
        let e = one_error(text);
        assert!(
            e.starts_with(want),
            "for {text:?}: got {e:?}, want {want:?}"
        );
    }
}

#[test]
fn every_error_of_a_file_is_reported() {
    let text = "interval = \"x\"\n[[instances]]\ntimeout = \"y\"\n[[instances]]\nnope = 1\n";
    let e = parse(text).expect_err("three errors");
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn no_instances_key_runs_the_default_instances_with_file_defaults() {
    let specs = parse("interval = \"2m\"\nlabels = { env = \"x\" }\n").expect("valid");
    assert_eq!(specs.len(), 2);
    assert!(specs.iter().all(|s| s.interval == Duration::from_secs(120)));
    assert!(specs.iter().all(|s| s.labels["env"] == "x"));
    assert_eq!(specs[1].index, 1);
    assert!(parse("instances = []\n").expect("valid").is_empty());
}

#[test]
fn a_bad_file_loads_nothing_and_the_others_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(
        d.join("probe.toml"),
        "[[instances]]\ntargets = [\"a\"]\n[[instances]]\ninterval = \"5x\"\n",
    )
    .expect("write");
    std::fs::write(d.join("disk.toml"), "[[instances]]\ntargets = [\"/\"]\n").expect("write");
    std::fs::write(d.join("nosuch.toml"), "").expect("write");
    // Not config files: ignored.
    std::fs::write(d.join("README.md"), "x").expect("write");
    std::fs::write(d.join(".probe.toml.swp"), "x").expect("write");
    std::fs::write(d.join("probe.toml.bak"), "x").expect("write");
    std::fs::create_dir(d.join("sub.toml")).expect("mkdir");

    let (specs, errors) = load_dir(d, &plugins());
    assert_eq!(specs.len(), 1, "{specs:?}");
    assert_eq!(specs[0].plugin, "disk");
    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    let probe = d.join("probe.toml").display().to_string();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{probe}: instances[1].interval: \"5x\""))),
        "{errors:?}"
    );
    let nosuch = d.join("nosuch.toml").display().to_string();
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{nosuch}: no plugin is named `nosuch`"))),
        "{errors:?}"
    );
}

#[test]
fn a_missing_directory_is_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (specs, errors) = load_dir(&dir.path().join("absent"), &plugins());
    assert!(specs.is_empty() && errors.is_empty());
}

#[test]
fn same_config_ignores_only_the_check_object() {
    let a = parse("[[instances]]\ntargets = [\"a\"]\n").expect("valid");
    let b = parse("[[instances]]\ntargets = [\"a\"]\n").expect("valid");
    let c = parse("[[instances]]\ntargets = [\"b\"]\n").expect("valid");
    let d = parse("[[instances]]\ntargets = [\"a\"]\nwarn_ge = 1\n").expect("valid");
    assert!(a[0].same_config(&b[0]));
    assert!(!a[0].same_config(&c[0]));
    assert!(!a[0].same_config(&d[0]));
}

#[test]
fn the_core_plugins_load_with_their_defaults_and_reject_unknown_keys() {
    let registry = tether_checks::plugins::registry();
    let dir = tempfile::tempdir().expect("tempdir");
    for p in &registry {
        std::fs::write(
            dir.path().join(format!("{}.toml", p.name())),
            "interval = \"1m\"\n",
        )
        .expect("write");
    }
    let (specs, errors) = load_dir(dir.path(), &registry);
    assert!(errors.is_empty(), "{errors:?}");
    let expected: usize = registry.iter().map(|p| p.default_instances().len()).sum();
    assert_eq!(specs.len(), expected);
    assert!(specs.iter().all(|s| s.interval == Duration::from_secs(60)));

    // Common keys never reach a plugin; an unknown one does, and is refused by name.
    std::fs::write(
        dir.path().join("disk.toml"),
        "[[instances]]\nfor_duration = \"5m\"\nwarn_ge = 80\nlabels = { env = \"x\" }\n[[instances]]\nfor_durration = \"5m\"\n",
    )
    .expect("write");
    let (_, errors) = load_dir(dir.path(), &registry);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].to_string();
    assert!(
        e.contains("disk.toml: instances[1]") && e.contains("for_durration"),
        "{e}"
    );
}

/// The common keys are taken out before a plugin sees its settings, so a plugin setting with
/// a common key's name (procnum once had `name`) could never be set from a file. This parses
/// a named instance of the real procnum plugin to keep it that way.
#[test]
fn a_named_procnum_instance_keeps_its_process_setting() {
    let procnum = tether_checks::plugins::find("procnum").expect("procnum is a core plugin");
    let text = "[[instances]]\nname = \"web\"\nprocess = \"nginx\"\nmax = 8\n";
    let specs = parse_file(Path::new("conf.d/procnum.toml"), text, procnum.as_ref())
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].name.as_deref(), Some("web"));
    assert_eq!(
        specs[0].settings.get("process").and_then(|v| v.as_str()),
        Some("nginx")
    );

    // `name` alone is the instance's name, not a process to look for.
    let err = parse_file(
        Path::new("conf.d/procnum.toml"),
        "[[instances]]\nname = \"nginx\"\n",
        procnum.as_ref(),
    )
    .expect_err("no process or pattern");
    assert!(
        err.iter().any(|e| e.to_string().contains("`process`")),
        "{err:?}"
    );
}

/// A misspelt key names itself, the likely intended key, and every key the plugin takes —
/// the common keys too, which a plugin with no settings of its own still takes.
#[test]
fn an_unknown_key_is_named_with_the_keys_the_plugin_takes() {
    let cpu = tether_checks::plugins::find("cpu").expect("cpu is a core plugin");
    let errors = parse_file(
        Path::new("conf.d/cpu.toml"),
        "[[instances]]\nwarn_gee = 90\n",
        cpu.as_ref(),
    )
    .expect_err("a typo");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = errors[0].to_string();
    assert!(
        e.starts_with(
            "conf.d/cpu.toml: instances[0]: unknown key `warn_gee` (did you mean `warn_ge`?); \
             the cpu plugin takes only the common keys: name, interval, timeout, labels, \
             checks, for_duration, repeat_interval, repeat_number, recovery, diagnose, \
             warn_ge, critical_ge, warn_gt, critical_gt, warn_le, critical_le, warn_lt, \
             critical_lt"
        ),
        "{e}"
    );
    assert!(!e.contains("takes no settings"), "{e}");

    // The same typo at plugin level.
    let errors = parse_file(
        Path::new("conf.d/cpu.toml"),
        "warn_gee = 90\n",
        cpu.as_ref(),
    )
    .expect_err("a typo");
    let e = errors[0].to_string();
    assert!(
        e.starts_with(
            "conf.d/cpu.toml: unknown key `warn_gee` at plugin level (did you mean \
             `warn_ge`?); the plugin level takes: instances, interval, timeout, labels,"
        ),
        "{e}"
    );

    // A plugin with settings lists them first; no near key, no guess.
    let disk = tether_checks::plugins::find("disk").expect("disk is a core plugin");
    let errors = parse_file(
        Path::new("conf.d/disk.toml"),
        "[[instances]]\nname = \"data\"\nvolumes = [\"/data\"]\n",
        disk.as_ref(),
    )
    .expect_err("unknown");
    let e = errors[0].to_string();
    assert!(
        e.starts_with(
            "conf.d/disk.toml: instances[0]: unknown key `volumes`; the disk plugin takes: \
             mounts, exclude, fs_types_exclude; and the common keys: name, interval,"
        ),
        "{e}"
    );
    // A plugin setting at plugin level is pointed to [[instances]].
    let errors = parse_file(
        Path::new("conf.d/disk.toml"),
        "mounts = [\"/data\"]\n",
        disk.as_ref(),
    )
    .expect_err("misplaced");
    let e = errors[0].to_string();
    assert!(
        e.starts_with(
            "conf.d/disk.toml: `mounts` is a setting of each instance of the disk plugin: \
             put it under [[instances]]"
        ),
        "{e}"
    );
}
