//! Notifiers against real peers: a local axum webhook server, `sh` for exec. Real time, with
//! bounded waits (never a sleep whose length decides the outcome).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_checks::engine::{CheckEngine, CheckEvent};
use tether_checks::notify::{
    DiagnosisReport, NotifierConfig, NotifierStats, Notifiers, expand_env,
};
use tether_checks::plugin::{Check, CheckContext, Measurement, Plugin, Status, Value};
use tether_proto::link::{AlertEvent, AlertStatus};
use tokio_util::sync::CancellationToken;

mod common;
use common::{SECRET, SECRET_VARS, in_env_with_secrets};

#[derive(serde::Deserialize)]
struct AgentConfig {
    notifiers: Vec<NotifierConfig>,
}

fn configs(text: &str) -> Vec<NotifierConfig> {
    toml::from_str::<AgentConfig>(text)
        .expect("notifier config")
        .notifiers
}

fn event(status: AlertStatus) -> AlertEvent {
    AlertEvent {
        event_time: 1_700_000_000,
        event_status: status,
        alert_key: "00ff00ff00ff00ff".into(),
        labels: BTreeMap::from([
            ("plugin".to_owned(), "disk".to_owned()),
            ("target".to_owned(), "/data".to_owned()),
            ("check".to_owned(), "space_used_pct".to_owned()),
        ]),
        attrs: BTreeMap::from([("value".to_owned(), "93".to_owned())]),
        description: "Critical: /data is 93% full".into(),
        description_format: "text".into(),
        seq: None,
    }
}

/// Polls `cond` every 20 ms for at most 20 s.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn stat(n: &Notifiers, i: usize) -> NotifierStats {
    n.stats()[i].clone()
}

#[derive(Default)]
struct Hook {
    /// Answer 500 to this many requests first.
    fail_first: u64,
    /// Never answer.
    hang: bool,
    /// Answer this status (after `fail_first`), default 200.
    status: Option<u16>,
    hits: AtomicU64,
    requests: Mutex<Vec<(HeaderMap, String)>>,
}

async fn hook(State(h): State<Arc<Hook>>, headers: HeaderMap, body: String) -> StatusCode {
    let n = h.hits.fetch_add(1, Ordering::SeqCst);
    h.requests.lock().expect("lock").push((headers, body));
    if h.hang {
        std::future::pending::<()>().await;
    }
    if n < h.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    StatusCode::from_u16(h.status.unwrap_or(200)).unwrap_or(StatusCode::OK)
}

async fn serve(h: Arc<Hook>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(h);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/hook")
}

#[tokio::test]
async fn webhook_retries_with_backoff_and_expands_env_headers() {
    let h = Arc::new(Hook {
        fail_first: 2,
        ..Hook::default()
    });
    let url = serve(h.clone()).await;
    let n = Notifiers::start(&configs(&format!(
        r#"
[[notifiers]]
kind = "webhook"
url = "{url}"
headers = {{ Authorization = "Bearer ${{PATH}}", X-Plain = "cost $5" }}
timeout = "5s"
retries = 3
retry_backoff = "20ms"
"#
    )))
    .expect("start");
    let e = event(AlertStatus::Critical);
    n.notify(&e);
    eventually("delivery", || stat(&n, 0).sent == 1).await;
    assert_eq!(
        h.hits.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert_eq!(stat(&n, 0).failed, 0);
    let requests = h.requests.lock().expect("lock").clone();
    let path = std::env::var("PATH").expect("PATH is set");
    for (headers, body) in &requests {
        let got: AlertEvent = serde_json::from_str(body).expect("JSON body");
        assert_eq!(got, e);
        assert_eq!(headers["authorization"], format!("Bearer {path}").as_str());
        assert_eq!(headers["x-plain"], "cost $5");
        assert_eq!(headers["x-tether-kind"], "alert");
        assert_eq!(headers["content-type"], "application/json");
    }
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn webhook_gives_up_after_its_attempts_and_never_retries_a_4xx() {
    let always = Arc::new(Hook {
        fail_first: u64::MAX,
        ..Hook::default()
    });
    let not_found = Arc::new(Hook {
        status: Some(404),
        ..Hook::default()
    });
    let (u1, u2) = (serve(always.clone()).await, serve(not_found.clone()).await);
    let n = Notifiers::start(&configs(&format!(
        r#"
[[notifiers]]
kind = "webhook"
url = "{u1}"
retries = 2
retry_backoff = "10ms"

[[notifiers]]
kind = "webhook"
url = "{u2}"
retry_backoff = "10ms"
"#
    )))
    .expect("start");
    n.notify(&event(AlertStatus::Warning));
    eventually("both give up", || {
        stat(&n, 0).failed == 1 && stat(&n, 1).failed == 1
    })
    .await;
    assert_eq!(always.hits.load(Ordering::SeqCst), 3);
    assert_eq!(not_found.hits.load(Ordering::SeqCst), 1);
    assert_eq!(stat(&n, 0).sent + stat(&n, 1).sent, 0);
}

/// Always Critical, from a plugin the engine runs every 100 ms with a reminder every run.
struct Loud;
struct LoudCheck;

impl Check for LoudCheck {
    fn run<'a>(&'a self, _ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async {
            Ok(vec![Measurement {
                check: "state".into(),
                target: "thing".into(),
                labels: BTreeMap::new(),
                value: Value::Status(Status::Critical),
                unit: "",
                description: "thing is broken".into(),
                defaults: Default::default(),
            }])
        })
    }
}

impl Plugin for Loud {
    fn name(&self) -> &'static str {
        "loud"
    }
    fn about(&self) -> &'static str {
        "always critical"
    }
    fn build(&self, _settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        Ok(Box::new(LoudCheck))
    }
    fn settings_keys(&self) -> &'static [&'static str] {
        &[]
    }
    fn default_instances(&self) -> Vec<toml::Table> {
        vec![toml::Table::new()]
    }
}

// Paused time: the check runs at its 1 s minimum interval, ten runs take ten virtual seconds.
#[tokio::test(start_paused = true)]
async fn a_hanging_webhook_delays_neither_the_console_nor_the_engine() {
    let h = Arc::new(Hook {
        hang: true,
        ..Hook::default()
    });
    let url = serve(h.clone()).await;
    let n = Notifiers::start(&configs(&format!(
        r#"
[[notifiers]]
kind = "webhook"
url = "{url}"
timeout = "60s"
retries = 0
queue = 2

[[notifiers]]
kind = "console"
"#
    )))
    .expect("start");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("loud.toml"),
        "interval = \"1s\"\nrepeat_interval = \"1s\"\n",
    )
    .expect("write");
    let delivered = Arc::new(AtomicU64::new(0));
    let (n2, d2) = (n.clone(), delivered.clone());
    let sink = Arc::new(move |e: CheckEvent| {
        n2.notify(&e.event);
        d2.fetch_add(1, Ordering::SeqCst);
    });
    let shutdown = CancellationToken::new();
    let engine = CheckEngine::start(
        dir.path().to_path_buf(),
        vec![Arc::new(Loud)],
        sink,
        shutdown.clone(),
    );
    // Ten events reach the console (and the engine keeps its pace) long before the webhook's
    // 60 s timeout could free anything.
    eventually("ten console lines", || stat(&n, 1).sent >= 10).await;
    assert!(engine.list()[0].runs >= 10);
    assert!(delivered.load(Ordering::SeqCst) >= 10);
    let webhook = stat(&n, 0);
    assert_eq!(
        (webhook.sent, webhook.failed),
        (0, 0),
        "still stuck on the first"
    );
    assert!(webhook.dropped >= 7, "full queue drops: {webhook:?}");
    assert_eq!(h.hits.load(Ordering::SeqCst), 1);
    shutdown.cancel();
    engine.stopped().await;
    // Shutdown is bounded even with a webhook that never answers.
    tokio::time::timeout(
        Duration::from_secs(5),
        n.shutdown(Duration::from_millis(200)),
    )
    .await
    .expect("bounded shutdown");
}

fn sh(script: &str) -> String {
    format!("command = \"sh\"\nargs = [\"-c\", {script:?}]\n")
}

fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[tokio::test]
async fn exec_gets_the_event_json_on_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("event.json");
    let env = dir.path().join("env.txt");
    let script = format!(
        "cat > {}; printf '%s %s %s' \"$TETHER_KIND\" \"$TETHER_STATUS\" \"$TETHER_ALERT_KEY\" > {}",
        q(&out),
        q(&env)
    );
    let n = Notifiers::start(&configs(&format!(
        "[[notifiers]]\nkind = \"exec\"\ntimeout = \"10s\"\n{}",
        sh(&script)
    )))
    .expect("start");
    let e = event(AlertStatus::Critical);
    n.notify(&e);
    eventually("the command ran", || stat(&n, 0).sent == 1).await;
    let text = std::fs::read_to_string(&out).expect("written");
    assert!(text.ends_with('\n'));
    let got: AlertEvent = serde_json::from_str(&text).expect("JSON");
    assert_eq!(got, e);
    assert_eq!(
        std::fs::read_to_string(&env).expect("env"),
        "alert Critical 00ff00ff00ff00ff"
    );
}

#[tokio::test]
async fn exec_notifiers_get_a_minimal_environment_plus_their_env() {
    if !in_env_with_secrets("exec_notifiers_get_a_minimal_environment_plus_their_env") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (minimal, inherited) = (dir.path().join("minimal"), dir.path().join("inherited"));
    let script = |out: &Path| {
        let mut s: String = SECRET_VARS
            .iter()
            .map(|v| format!("printf '%s ' \"${{{v}:--}}\";"))
            .collect();
        s.push_str(
            " printf '%s %s' \"$GREETING\" \"$TETHER_KIND\"; [ -n \"$PATH\" ] || printf ' no PATH'; cat > /dev/null",
        );
        format!("{{ {s}; }} > {}", q(out))
    };
    let n = Notifiers::start(&configs(&format!(
        "[[notifiers]]\nkind = \"exec\"\nenv = {{ GREETING = \"configured\" }}\n{}\n\
         [[notifiers]]\nkind = \"exec\"\ninherit_env = true\nenv = {{ GREETING = \"configured\" }}\n{}",
        sh(&script(&minimal)),
        sh(&script(&inherited)),
    )))
    .expect("start");
    n.notify(&event(AlertStatus::Critical));
    eventually("both ran", || {
        stat(&n, 0).sent == 1 && stat(&n, 1).sent == 1
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&minimal).expect("written"),
        "- - - configured alert"
    );
    assert_eq!(
        std::fs::read_to_string(&inherited).expect("written"),
        format!("{SECRET} {SECRET} {SECRET} configured alert")
    );
}

#[tokio::test]
async fn exec_is_killed_with_its_children_on_timeout_and_a_failure_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let script = format!("sleep 30 & echo $! > {}; wait", q(&pidfile));
    let n = Notifiers::start(&configs(&format!(
        "[[notifiers]]\nkind = \"exec\"\ntimeout = \"300ms\"\n{}\n[[notifiers]]\nkind = \"exec\"\n{}",
        sh(&script),
        sh("echo nope >&2; exit 3")
    )))
    .expect("start");
    n.notify(&event(AlertStatus::Warning));
    eventually("both fail", || {
        stat(&n, 0).failed == 1 && stat(&n, 1).failed == 1
    })
    .await;
    let pid = std::fs::read_to_string(&pidfile).expect("pid");
    let proc = format!("/proc/{}/stat", pid.trim());
    // The background `sleep` went with its group (gone, or a zombie until reaped).
    eventually("the grandchild is killed", || {
        std::fs::read_to_string(&proc).map_or(true, |s| s.contains(") Z "))
    })
    .await;
}

#[tokio::test]
async fn reports_go_only_to_notifiers_that_want_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let n = Notifiers::start(&configs(&format!(
        "[[notifiers]]\nkind = \"exec\"\n{}\n[[notifiers]]\nkind = \"exec\"\nreports = true\n{}",
        sh(&format!("cat >> {}", q(&a))),
        sh(&format!("cat >> {}", q(&b)))
    )))
    .expect("start");
    let r = DiagnosisReport {
        alert_key: "k1".into(),
        session_id: Some("s1".into()),
        report: "## Disk\nfull".into(),
        created_at: "2024-01-01T00:00:00Z".into(),
        labels: BTreeMap::new(),
    };
    n.report(&r);
    n.notify(&event(AlertStatus::Ok));
    eventually("deliveries", || {
        stat(&n, 0).sent == 1 && stat(&n, 1).sent == 2
    })
    .await;
    let a_text = std::fs::read_to_string(&a).expect("a");
    assert_eq!(a_text.lines().count(), 1);
    let only: AlertEvent = serde_json::from_str(a_text.trim()).expect("event");
    assert_eq!(only.event_status, AlertStatus::Ok);
    let b_text = std::fs::read_to_string(&b).expect("b");
    let lines: Vec<&str> = b_text.lines().collect();
    assert_eq!(lines.len(), 2);
    let got: DiagnosisReport = serde_json::from_str(lines[0]).expect("report");
    assert_eq!(got, r);
}

#[tokio::test]
async fn bad_notifier_configs_are_errors_that_name_the_key() {
    let cases: &[(&str, &str)] = &[
        (
            "kind = \"webhook\"\n",
            "notifiers[0].url: required for a webhook",
        ),
        (
            "kind = \"webhook\"\nurl = \"ftp://x\"\n",
            "notifiers[0].url: \"ftp://x\" must be http",
        ),
        (
            "kind = \"console\"\nurl = \"http://x\"\n",
            "notifiers[0].url: not used by a console notifier",
        ),
        ("kind = \"exec\"\n", "notifiers[0].command: required"),
        (
            "kind = \"console\"\nretries = 1\n",
            "notifiers[0].retries: not used",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://x\"\nheaders = { A = \"${TETHER_TEST_SURELY_UNSET_VAR}\" }\n",
            "notifiers[0].headers.A: environment variable TETHER_TEST_SURELY_UNSET_VAR is not set",
        ),
        (
            "kind = \"exec\"\ncommand = \"x\"\nqueue = 0\n",
            "notifiers[0].queue: must be at least 1",
        ),
        (
            "kind = \"console\"\ninherit_env = true\n",
            "notifiers[0].inherit_env: not used by a console notifier",
        ),
        (
            "kind = \"webhook\"\nurl = \"http://x\"\nenv = { A = \"b\" }\n",
            "notifiers[0].env: not used by a webhook notifier",
        ),
        (
            "kind = \"exec\"\ncommand = \"x\"\nenv = { \"A=B\" = \"c\" }\n",
            "notifiers[0].env: `A=B` is not a valid environment variable name",
        ),
    ];
    for (entry, want) in cases {
        let c = configs(&format!("[[notifiers]]\n{entry}"));
        let e = Notifiers::start(&c).err().unwrap_or_default();
        assert!(e.starts_with(want), "for {entry:?}: got {e:?}");
    }
    for bad in [
        "kind = \"pager\"\n",
        "kind = \"console\"\nbogus = 1\n",
        "kind = \"exec\"\ncommand = \"x\"\ntimeout = \"5x\"\n",
        "kind = \"exec\"\ncommand = \"x\"\ninherit_env = \"yes\"\n",
        "kind = \"exec\"\ncommand = \"x\"\nenv = { A = 1 }\n",
    ] {
        let text = format!("[[notifiers]]\n{bad}");
        assert!(
            toml::from_str::<AgentConfig>(&text).is_err(),
            "{bad:?} accepted"
        );
    }
    // A bad value's error shows the key.
    let text = "[[notifiers]]\nkind = \"exec\"\ncommand = \"x\"\ninherit_env = \"yes\"\n";
    let err = toml::from_str::<AgentConfig>(text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("inherit_env"), "{err}");
}

#[test]
fn env_expansion() {
    let path = std::env::var("PATH").expect("PATH");
    assert_eq!(
        expand_env("a ${PATH} b $PATH").expect("ok"),
        format!("a {path} b $PATH")
    );
    assert!(expand_env("x ${PATH").is_err());
    assert!(expand_env("${}").is_err());
    assert!(expand_env("${TETHER_TEST_SURELY_UNSET_VAR}").is_err());
}

/// Issue 9, finding 1: an event time from year 11476 (a script's `alert send`) killed the
/// console notifier's task; it must print the line and go on delivering.
#[tokio::test]
async fn the_console_survives_a_far_future_event_time() {
    let n = Notifiers::start(&configs("[[notifiers]]\nkind = \"console\"\n")).expect("start");
    let mut far = event(AlertStatus::Critical);
    far.event_time = 300_000_000_000;
    n.notify(&far);
    n.notify(&event(AlertStatus::Ok));
    eventually("both console lines", || stat(&n, 0).sent >= 2).await;
    assert_eq!(stat(&n, 0).failed, 0);
    assert!(tether_checks::notify::console_line(&far).contains("9999-12-31"));
    n.shutdown(Duration::from_millis(200)).await;
}
