//! A check fires on an agent linked to a hub (v2): the alert is stored on the hub once, the
//! automatic diagnosis (scripted model) runs, and its report reaches the hub. Real binaries,
//! real sockets, real files.

mod common;

use common::{BIN, ServiceProc, free_port, get_json, wait_for, write_file};
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::Duration;

const OPERATOR: &str = "operator-token-0123456789";

#[test]
fn a_firing_check_reaches_the_hub_once_and_its_diagnosis_follows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let port = free_port();

    let hub_toml = root.join("hub/hub.toml");
    write_file(
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

    let _hub = ServiceProc(
        Command::new(BIN)
            .args(["hub", "--config"])
            .arg(&hub_toml)
            .env("TETHER_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("hub"),
    );
    wait_for("the hub", Duration::from_secs(30), || {
        get_json(port, "/healthz", OPERATOR)
    });

    // The diagnosis "model": a scripted report.
    write_file(
        &root.join("agent/script.json"),
        r###"{"responses": [{"text": "## Summary\nThe marker file is gone.\n## Root cause\nSomething deleted it.\n## Evidence\nfilecheck\n## Suggested actions\nRestore it."}], "loop": true}"###,
    );
    let missing = root.join("agent/marker-that-does-not-exist");
    write_file(
        &root.join("agent/conf.d/filecheck.toml"),
        &format!(
            "interval = \"1s\"\n[[instances]]\nname = \"marker\"\npath = \"{}\"\ndiagnose = true\n",
            missing.display()
        ),
    );
    let agent_toml = root.join("agent/agent.toml");
    write_file(
        &agent_toml,
        &format!(
            "listen = \"off\"\nstate_dir = \"state\"\n[model]\nprovider = \"scripted\"\nscript = \"script.json\"\n[diagnosis]\nwindow = \"1s\"\n[hub]\nurl = \"ws://127.0.0.1:{port}\"\nallow_plaintext = true\ntoken = \"{agent_token}\"\n"
        ),
    );
    let _agent = ServiceProc(
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
            let v = get_json(port, "/api/v1/alerts?limit=100", OPERATOR)?;
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
    let timeline =
        get_json(port, &format!("/api/v1/alerts/{alert_id}"), OPERATOR).expect("timeline");
    assert!(
        timeline["events"][0]["seq"].as_u64().is_some(),
        "a v2 alert event carries its seq: {timeline}"
    );

    // The automatic diagnosis runs and its report reaches the hub.
    let report = wait_for(
        "the diagnosis report at the hub",
        Duration::from_secs(90),
        || {
            let v = get_json(port, "/api/v1/reports", OPERATOR)?;
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
    let v = get_json(port, "/api/v1/alerts?limit=1000", OPERATOR).expect("alerts");
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
