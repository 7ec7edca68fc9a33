//! A check fires on an agent linked to a hub (v2): the alert is stored on the hub once, the
//! automatic diagnosis (scripted model) runs, and its report reaches the hub. Real binaries,
//! real sockets, real files.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tether");
const OPERATOR: &str = "operator-token-0123456789";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A plain HTTP GET on loopback (no client dependency needed for a JSON API).
fn get_json(port: u16, path: &str) -> Option<Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {OPERATOR}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // Bodies are small and may be chunked.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(tail.get(..n)?);
            rest = tail.get(n + 2..)?;
        }
        out
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).ok()
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("dir");
    }
    std::fs::write(path, text).expect("write");
}

#[test]
fn a_firing_check_reaches_the_hub_once_and_its_diagnosis_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let port = free_port();

    let hub_toml = root.join("hub/hub.toml");
    write(
        &hub_toml,
        &format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n[[operators]]\nname = \"admin\"\nclass = \"human\"\ntoken = \"{OPERATOR}\"\n"
        ),
    );
    let out = Command::new(BIN)
        .args(["hub", "token", "create", "--name", "e2e", "--config"])
        .arg(&hub_toml)
        .output()
        .expect("token create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(agent_token.starts_with("tt_"), "{agent_token}");

    let _hub = Proc(
        Command::new(BIN)
            .args(["hub", "--config"])
            .arg(&hub_toml)
            .env("TETHER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("hub"),
    );
    wait_for("the hub", Duration::from_secs(30), || {
        get_json(port, "/healthz")
    });

    // The diagnosis "model": a scripted report.
    write(
        &root.join("agent/script.json"),
        r###"{"responses": [{"text": "## Summary\nThe marker file is gone.\n## Root cause\nSomething deleted it.\n## Evidence\nfilecheck\n## Suggested actions\nRestore it."}], "loop": true}"###,
    );
    let missing = root.join("agent/marker-that-does-not-exist");
    write(
        &root.join("agent/conf.d/filecheck.toml"),
        &format!(
            "interval = \"1s\"\n[[instances]]\nname = \"marker\"\npath = \"{}\"\ndiagnose = true\n",
            missing.display()
        ),
    );
    let agent_toml = root.join("agent/agent.toml");
    write(
        &agent_toml,
        &format!(
            "listen = \"off\"\nstate_dir = \"state\"\n[model]\nprovider = \"scripted\"\nscript = \"script.json\"\n[diagnosis]\nwindow = \"1s\"\n[hub]\nurl = \"ws://127.0.0.1:{port}\"\nallow_plaintext = true\ntoken = \"{agent_token}\"\n"
        ),
    );
    let _agent = Proc(
        Command::new(BIN)
            .args(["agent", "--config"])
            .arg(&agent_toml)
            .env("TETHER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("agent"),
    );

    // The alert reaches the hub.
    let alert = wait_for(
        "the filecheck alert at the hub",
        Duration::from_secs(90),
        || {
            let v = get_json(port, "/api/v1/alerts?limit=100")?;
            v["alerts"]
                .as_array()?
                .iter()
                .find(|a| {
                    a["labels"]["plugin"] == "filecheck"
                        && a["state"] == "firing"
                        && a["severity"] == "critical"
                })
                .cloned()
        },
    );
    let key = alert["alert_key"].as_str().expect("key").to_owned();
    let alert_id = alert["alert_id"].as_i64().expect("alert_id");
    let timeline = get_json(port, &format!("/api/v1/alerts/{alert_id}")).expect("timeline");
    assert!(
        timeline["events"][0]["seq"].as_u64().is_some(),
        "a v2 alert event carries its seq: {timeline}"
    );

    // The automatic diagnosis runs and its report reaches the hub.
    let report = wait_for(
        "the diagnosis report at the hub",
        Duration::from_secs(90),
        || {
            let v = get_json(port, "/api/v1/reports")?;
            v["reports"]
                .as_array()?
                .iter()
                .find(|r| r["alert_key"] == key.as_str())
                .cloned()
        },
    );
    assert!(
        report["report"]
            .as_str()
            .unwrap_or("")
            .contains("## Root cause"),
        "{report}"
    );
    assert!(report["session_id"].is_string(), "{report}");

    // Stored once: the check keeps failing every second, but a firing alert is not re-sent.
    let v = get_json(port, "/api/v1/alerts?limit=1000").expect("alerts");
    let same: Vec<&Value> = v["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| a["alert_key"] == key.as_str())
        .collect();
    assert_eq!(same.len(), 1, "one alert per key: {same:?}");
    assert_eq!(
        same[0]["event_count"], 1,
        "the alert was stored more than once: {same:?}"
    );
    assert_eq!(
        same[0]["diagnoses"][0]["session_id"], report["session_id"],
        "the report is linked to its alert: {same:?}"
    );

    // The agent's own history has it too.
    let out = Command::new(BIN)
        .args(["alerts", "--json", "--config"])
        .arg(&agent_toml)
        .output()
        .expect("alerts");
    let local: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        local
            .as_array()
            .expect("array")
            .iter()
            .any(|e| e["alert_key"] == key.as_str()),
        "{local}"
    );
}
