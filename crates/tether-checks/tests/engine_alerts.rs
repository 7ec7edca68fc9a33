//! The engine with paused time: for_duration, reminders, recovery, alert keys, check errors,
//! timeouts and one run at a time.

use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_checks::engine::{CheckEngine, CheckEvent, run_once};
use tether_checks::plugin::{Check, CheckContext, Measurement, Plugin, Status, Thresholds, Value};
use tether_proto::link::{AlertStatus, alert_key};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
enum Mode {
    Values,
    Fail(String),
    /// Never returns; notices the cancel token but ignores it.
    Hang,
    Panic,
}

/// What the test controls and observes.
struct Ctl {
    mode: Mutex<Mode>,
    /// target → value; measurement check `used`, unit `%`, defaults warn_ge 80 / critical_ge 95.
    values: Mutex<BTreeMap<String, f64>>,
    runs: Mutex<Vec<Instant>>,
    running: AtomicU64,
    max_running: AtomicU64,
    cancelled: AtomicU64,
}

impl Ctl {
    fn new() -> Arc<Ctl> {
        Arc::new(Ctl {
            mode: Mutex::new(Mode::Values),
            values: Mutex::new(BTreeMap::new()),
            runs: Mutex::new(Vec::new()),
            running: AtomicU64::new(0),
            max_running: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        })
    }
    fn set(&self, target: &str, v: f64) {
        self.values.lock().expect("lock").insert(target.into(), v);
    }
    fn remove(&self, target: &str) {
        self.values.lock().expect("lock").remove(target);
    }
    fn mode(&self, m: Mode) {
        *self.mode.lock().expect("lock") = m;
    }
    fn runs(&self) -> Vec<Instant> {
        self.runs.lock().expect("lock").clone()
    }
}

struct Probe(Arc<Ctl>);
struct ProbeCheck(Arc<Ctl>);

struct Running(Arc<Ctl>);
impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Check for ProbeCheck {
    fn run<'a>(&'a self, ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let ctl = self.0.clone();
            let now = ctl.running.fetch_add(1, Ordering::SeqCst) + 1;
            ctl.max_running.fetch_max(now, Ordering::SeqCst);
            let _guard = Running(ctl.clone());
            ctl.runs.lock().expect("lock").push(Instant::now());
            let mode = ctl.mode.lock().expect("lock").clone();
            match mode {
                Mode::Fail(e) => Err(e),
                Mode::Panic => panic!("kaboom"),
                Mode::Hang => {
                    // Sees the cancellation while still alive, then ignores it.
                    ctx.cancel.cancelled().await;
                    ctl.cancelled.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    Ok(Vec::new())
                }
                Mode::Values => {
                    let values = ctl.values.lock().expect("lock").clone();
                    let out = values
                        .into_iter()
                        .map(|(target, v)| Measurement {
                            check: "used".into(),
                            labels: BTreeMap::from([("device".to_owned(), format!("dev{target}"))]),
                            value: Value::Number(v),
                            unit: "%",
                            description: format!("{target} is {v}"),
                            defaults: Thresholds {
                                warn_ge: Some(80.0),
                                critical_ge: Some(95.0),
                                ..Thresholds::default()
                            },
                            target,
                        })
                        .collect();
                    Ok(out)
                }
            }
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
    _dir: tempfile::TempDir,
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
            _dir: dir,
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

fn statuses(events: &[(Instant, CheckEvent)]) -> Vec<AlertStatus> {
    events.iter().map(|(_, e)| e.event.event_status).collect()
}

async fn wait(secs: u64) {
    tokio::time::sleep(Duration::from_secs(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn for_duration_holds_back_the_first_event() {
    let ctl = Ctl::new();
    ctl.set("/a", 90.0);
    let mut h = Harness::start(
        &ctl,
        "interval = \"10s\"\nfor_duration = \"30s\"\n[[instances]]\n",
    );
    wait(100).await;
    let runs = ctl.runs();
    assert!(runs.len() >= 9, "{} runs", runs.len());
    let first = runs[0];
    let events = h.events();
    assert_eq!(statuses(&events), vec![AlertStatus::Warning], "{events:?}");
    // Fired at the first run at least 30 s after the first non-Ok run, not before.
    assert_eq!(events[0].0 - first, Duration::from_secs(30));
    assert_eq!(h.engine.active_alerts(), 1);

    // Ok while firing → one recovery.
    ctl.set("/a", 10.0);
    wait(30).await;
    let events = h.events();
    assert_eq!(statuses(&events), vec![AlertStatus::Ok]);
    assert!(
        events[0].1.event.description.starts_with("Ok: /a is 10"),
        "{events:?}"
    );
    assert_eq!(h.engine.active_alerts(), 0);

    // Non-Ok for less than for_duration, then Ok: nothing at all.
    ctl.set("/a", 99.0);
    wait(20).await;
    ctl.set("/a", 10.0);
    wait(30).await;
    assert!(h.events().is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reminders_severity_changes_and_recovery() {
    let ctl = Ctl::new();
    ctl.set("/a", 90.0);
    let mut h = Harness::start(
        &ctl,
        "interval = \"10s\"\nrepeat_interval = \"20s\"\nrepeat_number = 2\n[[instances]]\n",
    );
    wait(200).await;
    let first = ctl.runs()[0];
    let events = h.events();
    let at: Vec<(Duration, AlertStatus)> = events
        .iter()
        .map(|(t, e)| (*t - first, e.event.event_status))
        .collect();
    assert_eq!(
        at,
        vec![
            (Duration::from_secs(0), AlertStatus::Warning),
            (Duration::from_secs(20), AlertStatus::Warning),
            (Duration::from_secs(40), AlertStatus::Warning),
        ]
    );
    // Critical is sent at the next run.
    ctl.set("/a", 99.0);
    wait(10).await;
    let events = h.events();
    assert_eq!(statuses(&events), vec![AlertStatus::Critical]);
    assert_eq!(events[0].1.event.attrs["threshold"], "critical_ge 95");
    ctl.set("/a", 1.0);
    wait(60).await;
    assert_eq!(statuses(&h.events()), vec![AlertStatus::Ok]);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn alert_keys_are_stable_and_distinct_per_target() {
    let ctl = Ctl::new();
    ctl.set("/a", 90.0);
    ctl.set("/b", 96.0);
    let config = "interval = \"10s\"\n[[instances]]\nname = \"n\"\ndiagnose = true\nlabels = { env = \"x\" }\n";
    let mut h = Harness::start(&ctl, config);
    wait(15).await;
    let events = h.events();
    assert_eq!(events.len(), 2, "{events:?}");
    let mut keys = Vec::new();
    for (_, e) in &events {
        let target = e.target.clone();
        let want = BTreeMap::from([
            ("plugin".to_owned(), "probe".to_owned()),
            ("target".to_owned(), target.clone()),
            ("check".to_owned(), "used".to_owned()),
            ("name".to_owned(), "n".to_owned()),
            ("env".to_owned(), "x".to_owned()),
            ("device".to_owned(), format!("dev{target}")),
        ]);
        assert_eq!(e.event.labels, want);
        assert_eq!(e.event.alert_key, alert_key(&want));
        assert_eq!(e.plugin, "probe");
        assert!(e.diagnose);
        assert_eq!(e.event.description_format, "text");
        assert_eq!(e.event.attrs["plugin"], "probe");
        assert_eq!(e.event.attrs["instance"], "n");
        assert_eq!(e.event.attrs["unit"], "%");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(e.event.event_time.abs_diff(now as i64) < 5);
        keys.push(e.event.alert_key.clone());
    }
    assert_ne!(keys[0], keys[1]);
    let a = &events.iter().find(|(_, e)| e.target == "/a").expect("/a").1;
    assert_eq!(a.event.event_status, AlertStatus::Warning);
    assert_eq!(a.event.description, "Warning: /a is 90");
    assert_eq!(a.event.attrs["value"], "90");
    assert_eq!(a.event.attrs["threshold"], "warn_ge 80");
    h.stop().await;

    // A new engine with the same config gives the same keys.
    let ctl2 = Ctl::new();
    ctl2.set("/a", 90.0);
    ctl2.set("/b", 96.0);
    let mut h2 = Harness::start(&ctl2, config);
    wait(15).await;
    let mut keys2: Vec<String> = h2
        .events()
        .iter()
        .map(|(_, e)| e.event.alert_key.clone())
        .collect();
    keys2.sort();
    keys.sort();
    assert_eq!(keys, keys2);
    h2.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_target_no_longer_reported_recovers() {
    let ctl = Ctl::new();
    ctl.set("/a", 90.0);
    ctl.set("/b", 90.0);
    let mut h = Harness::start(&ctl, "interval = \"10s\"\n[[instances]]\n");
    wait(15).await;
    assert_eq!(h.events().len(), 2);
    ctl.remove("/b");
    wait(10).await;
    let events = h.events();
    assert_eq!(statuses(&events), vec![AlertStatus::Ok]);
    assert_eq!(events[0].1.target, "/b");
    assert!(events[0].1.event.description.contains("no longer reported"));
    assert_eq!(h.engine.active_alerts(), 1);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_check_raises_check_error_until_it_runs_again() {
    let ctl = Ctl::new();
    ctl.mode(Mode::Fail("boom: no such device".into()));
    let mut h = Harness::start(&ctl, "interval = \"10s\"\n[[instances]]\n");
    wait(35).await;
    let events = h.events();
    assert_eq!(
        statuses(&events),
        vec![AlertStatus::Warning],
        "one event, no repeats"
    );
    let e = &events[0].1.event;
    assert_eq!(e.labels["check"], "check_error");
    assert_eq!(e.labels["plugin"], "probe");
    assert_eq!(e.description, "Warning: boom: no such device");
    let list = h.engine.list();
    assert_eq!(list[0].last_error.as_deref(), Some("boom: no such device"));
    assert_eq!(list[0].last_status, Some(Status::Warning));
    assert_eq!(h.engine.active_alerts(), 1);

    ctl.mode(Mode::Values);
    ctl.set("/a", 1.0);
    wait(10).await;
    let events = h.events();
    assert_eq!(statuses(&events), vec![AlertStatus::Ok]);
    assert_eq!(events[0].1.event.alert_key, e.alert_key);
    assert_eq!(h.engine.active_alerts(), 0);
    let list = h.engine.list();
    assert_eq!(list[0].last_error, None);
    assert_eq!(
        list[0].last_values,
        vec![("used".into(), "/a".into(), "1%".into(), Status::Ok)]
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_is_bounded_and_never_runs_twice_at_once() {
    let ctl = Ctl::new();
    ctl.mode(Mode::Hang);
    let mut h = Harness::start(
        &ctl,
        "interval = \"10s\"\ntimeout = \"25s\"\n[[instances]]\n",
    );
    wait(100).await;
    let runs = ctl.runs();
    // Each run takes 25 s (the timeout): runs at +0, +30, +60, +90; the two due in between
    // are skipped each time.
    assert!((3..=4).contains(&runs.len()), "{} runs", runs.len());
    for w in runs.windows(2) {
        assert_eq!(w[1] - w[0], Duration::from_secs(30));
    }
    assert_eq!(ctl.max_running.load(Ordering::SeqCst), 1);
    assert!(
        ctl.cancelled.load(Ordering::SeqCst) >= 3,
        "the cancel token fired"
    );
    let list = h.engine.list();
    assert!(list[0].skipped_runs >= 4, "{list:?}");
    assert!(
        list[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("timed out after 25s"))
    );
    let events = h.events();
    assert_eq!(statuses(&events), vec![AlertStatus::Warning]);
    assert_eq!(events[0].1.event.labels["check"], "check_error");
    assert!(
        events[0]
            .1
            .event
            .description
            .contains("timed out after 25s")
    );

    ctl.mode(Mode::Values);
    wait(40).await;
    let events = h.events();
    assert_eq!(statuses(&events), vec![AlertStatus::Ok]);
    assert_eq!(ctl.running.load(Ordering::SeqCst), 0);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn first_runs_are_spread_and_soon() {
    let ctl = Ctl::new();
    ctl.set("/a", 1.0);
    let mut config = String::from("interval = \"30s\"\n");
    for i in 0..20 {
        config.push_str(&format!("[[instances]]\nname = \"i{i}\"\n"));
    }
    let start = Instant::now();
    let h = Harness::start(&ctl, &config);
    wait(6).await;
    let runs = ctl.runs();
    assert_eq!(runs.len(), 20, "every instance ran within 5 s");
    let distinct: std::collections::BTreeSet<Duration> = runs.iter().map(|t| *t - start).collect();
    assert!(distinct.len() >= 10, "first runs are spread: {distinct:?}");
    assert!(distinct.iter().all(|d| *d <= Duration::from_secs(5)));
    assert_eq!(h.engine.list().len(), 20);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn run_once_uses_defaults_or_settings() {
    let ctl = Ctl::new();
    ctl.set("/a", 96.0);
    let plugin = Probe(ctl.clone());
    let out = run_once(&plugin, None, Duration::from_secs(5))
        .await
        .expect("runs");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1, Status::Critical);
    let settings: toml::Table = toml::from_str("critical_ge = 99.0").expect("toml");
    let out = run_once(&plugin, Some(&settings), Duration::from_secs(5))
        .await
        .expect("runs");
    assert_eq!(out[0].1, Status::Warning);
    let bad: toml::Table = toml::from_str("nope = 1").expect("toml");
    let e = run_once(&plugin, Some(&bad), Duration::from_secs(5))
        .await
        .expect_err("bad settings");
    assert!(e.contains("unknown key `nope`"), "{e}");
    ctl.mode(Mode::Hang);
    let e = run_once(&plugin, None, Duration::from_secs(5))
        .await
        .expect_err("times out");
    assert!(e.contains("timed out after 5s"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_is_a_check_error() {
    let ctl = Ctl::new();
    ctl.mode(Mode::Panic);
    let mut h = Harness::start(&ctl, "interval = \"10s\"\n[[instances]]\n");
    wait(25).await;
    let events = h.events();
    assert_eq!(statuses(&events), vec![AlertStatus::Warning]);
    assert_eq!(
        events[0].1.event.description,
        "Warning: check panicked: kaboom"
    );
    assert_eq!(ctl.running.load(Ordering::SeqCst), 0);
    assert!(h.engine.list()[0].runs >= 2, "the engine goes on");
    h.stop().await;
}
