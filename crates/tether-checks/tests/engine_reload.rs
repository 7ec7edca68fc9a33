//! Reloading the checks directory: a broken file keeps the old instances, a fixed one applies,
//! unchanged instances run on undisturbed and alert state survives a changed instance.

use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_checks::engine::{CheckEngine, CheckEvent, InstanceStatus, RELOAD_POLL};
use tether_checks::plugin::{Check, CheckContext, Measurement, Plugin, Thresholds, Value};
use tether_proto::link::AlertStatus;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What the test controls and observes.
struct Ctl {
    /// target → value; measurement check `used`, unit `%`, defaults warn_ge 80 / critical_ge 95.
    values: Mutex<BTreeMap<String, f64>>,
    runs: Mutex<Vec<Instant>>,
}

impl Ctl {
    fn new() -> Arc<Ctl> {
        Arc::new(Ctl {
            values: Mutex::new(BTreeMap::new()),
            runs: Mutex::new(Vec::new()),
        })
    }
    fn set(&self, target: &str, v: f64) {
        self.values.lock().expect("lock").insert(target.into(), v);
    }
    fn runs(&self) -> Vec<Instant> {
        self.runs.lock().expect("lock").clone()
    }
}

struct Probe(Arc<Ctl>);
struct ProbeCheck(Arc<Ctl>);

impl Check for ProbeCheck {
    fn run<'a>(&'a self, _ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let ctl = &self.0;
            ctl.runs.lock().expect("lock").push(Instant::now());
            let values = ctl.values.lock().expect("lock").clone();
            Ok(values
                .into_iter()
                .map(|(target, v)| Measurement {
                    check: "used".into(),
                    labels: BTreeMap::new(),
                    value: Value::Number(v),
                    unit: "%",
                    description: format!("{target} is {v}"),
                    defaults: Thresholds {
                        warn_ge: Some(80.0),
                        ..Thresholds::default()
                    },
                    target,
                })
                .collect())
        })
    }
}

impl Plugin for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }
    fn about(&self) -> &'static str {
        "test probe"
    }
    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        if let Some(k) = settings.keys().next() {
            return Err(format!("{k}: unknown key"));
        }
        Ok(Box::new(ProbeCheck(self.0.clone())))
    }
    fn settings_keys(&self) -> &'static [&'static str] {
        &[]
    }
    fn default_instances(&self) -> Vec<toml::Table> {
        vec![toml::Table::new()]
    }
}

struct Harness {
    engine: CheckEngine,
    rx: mpsc::UnboundedReceiver<(Instant, CheckEvent)>,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

impl Harness {
    fn start(ctl: &Arc<Ctl>, config: &str) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("probe.toml"), config).expect("write");
        let (tx, rx) = mpsc::unbounded_channel();
        let sink = Arc::new(move |e: CheckEvent| {
            let _ = tx.send((Instant::now(), e));
        });
        let shutdown = CancellationToken::new();
        let engine = CheckEngine::start(
            dir.path().to_path_buf(),
            vec![Arc::new(Probe(ctl.clone()))],
            sink,
            shutdown.clone(),
        );
        assert!(
            engine.config_errors().is_empty(),
            "{:?}",
            engine.config_errors()
        );
        Harness {
            engine,
            rx,
            shutdown,
            dir,
        }
    }

    fn events(&mut self) -> Vec<(Instant, CheckEvent)> {
        let mut out = Vec::new();
        while let Ok(e) = self.rx.try_recv() {
            out.push(e);
        }
        out
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.engine.stopped())
            .await
            .expect("engine stops");
    }
}

impl Harness {
    fn write(&self, text: &str) {
        std::fs::write(self.dir.path().join("probe.toml"), text).expect("write");
    }

    /// Waits (paused time) until `cond` holds, at most a minute.
    async fn until(&self, what: &str, cond: impl Fn(&CheckEngine) -> bool) {
        for _ in 0..60 {
            if cond(&self.engine) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        panic!(
            "timed out waiting for {what}; errors {:?}, instances {:?}",
            self.engine.config_errors(),
            self.engine.list()
        );
    }
}

fn names(list: &[InstanceStatus]) -> Vec<(String, Duration)> {
    list.iter().map(|s| (s.name.clone(), s.interval)).collect()
}

fn statuses(events: &[(Instant, CheckEvent)]) -> Vec<AlertStatus> {
    events.iter().map(|(_, e)| e.event.event_status).collect()
}

#[tokio::test(start_paused = true)]
async fn a_broken_file_keeps_the_old_instances_and_a_fix_applies() {
    let ctl = Ctl::new();
    ctl.set("/a", 1.0);
    let h = Harness::start(&ctl, "[[instances]]\nname = \"a\"\ninterval = \"10s\"\n");
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(!ctl.runs().is_empty());

    h.write("[[instances]\nthis is not toml");
    h.until("the error to be reported", |e| {
        !e.config_errors().is_empty()
    })
    .await;
    let errors = h.engine.config_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let file = h.dir.path().join("probe.toml").display().to_string();
    assert!(
        errors[0].starts_with(&format!("{file}: TOML parse error")),
        "{errors:?}"
    );
    // The old instance still runs.
    assert_eq!(
        names(&h.engine.list()),
        vec![("a".to_owned(), Duration::from_secs(10))]
    );
    let before = ctl.runs().len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(ctl.runs().len() >= before + 2, "still running");

    // A file that parses but is invalid is just as harmless.
    h.write("[[instances]]\nname = \"a\"\ninterval = \"5x\"\n");
    h.until("the new error", |e| {
        e.config_errors()
            .iter()
            .any(|x| x.contains("instances[0].interval: \"5x\" is not a duration"))
    })
    .await;
    assert_eq!(names(&h.engine.list()).len(), 1);

    // Fixed: the change applies and the errors clear.
    h.write("[[instances]]\nname = \"b\"\ninterval = \"20s\"\n");
    h.until("the fix to apply", |e| {
        e.config_errors().is_empty() && e.list().first().is_some_and(|s| s.name == "b")
    })
    .await;
    assert_eq!(
        names(&h.engine.list()),
        vec![("b".to_owned(), Duration::from_secs(20))]
    );
    let before = ctl.runs().len();
    tokio::time::sleep(Duration::from_secs(45)).await;
    let after = ctl.runs().len();
    assert!(
        (2..=3).contains(&(after - before)),
        "one run per 20 s: {}",
        after - before
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn alert_state_survives_a_changed_instance_and_a_removed_one_recovers() {
    let ctl = Ctl::new();
    ctl.set("/a", 90.0);
    let mut h = Harness::start(&ctl, "[[instances]]\nname = \"a\"\ninterval = \"10s\"\n");
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(statuses(&h.events()), vec![AlertStatus::Warning]);
    assert_eq!(h.engine.active_alerts(), 1);

    // Same instance, new interval and a second instance: "a" restarts and keeps its state.
    h.write(
        "[[instances]]\nname = \"a\"\ninterval = \"1m\"\n[[instances]]\nname = \"c\"\ninterval = \"10s\"\nlabels = { x = \"y\" }\n",
    );
    h.until("the change", |e| e.list().len() == 2).await;
    tokio::time::sleep(Duration::from_secs(70)).await;
    let events = h.events();
    // Only the new instance "c" fires (its labels differ); "a" stays firing without a resend.
    assert_eq!(statuses(&events), vec![AlertStatus::Warning], "{events:?}");
    assert_eq!(events[0].1.event.labels["name"], "c");
    assert_eq!(h.engine.active_alerts(), 2);
    let list = h.engine.list();
    assert_eq!(list[0].interval, Duration::from_secs(60));
    assert!(list[0].runs >= 1);
    let c_runs = list[1].runs;

    // Touching only "a" leaves "c" running undisturbed (its run count goes on).
    h.write(
        "[[instances]]\nname = \"a\"\ninterval = \"30s\"\n[[instances]]\nname = \"c\"\ninterval = \"10s\"\nlabels = { x = \"y\" }\n",
    );
    h.until("the second change", |e| {
        e.list()
            .first()
            .is_some_and(|s| s.interval == Duration::from_secs(30))
    })
    .await;
    assert!(h.engine.list()[1].runs > c_runs);

    // The file is removed: both instances stop and their alerts recover.
    std::fs::remove_file(h.dir.path().join("probe.toml")).expect("rm");
    h.until("the removal", |e| e.list().is_empty()).await;
    let events = h.events();
    assert_eq!(
        statuses(&events),
        vec![AlertStatus::Ok, AlertStatus::Ok],
        "{events:?}"
    );
    assert!(events.iter().all(|(_, e)| {
        e.event
            .description
            .contains("removed from the configuration")
    }));
    assert_eq!(h.engine.active_alerts(), 0);
    let runs = ctl.runs().len();
    tokio::time::sleep(RELOAD_POLL * 20).await;
    assert_eq!(ctl.runs().len(), runs, "no runs after removal");
    h.stop().await;
}
