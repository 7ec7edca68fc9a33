//! Identity comes from credentials, never from what a client says (issue 2, item 13).

mod common;

use common::*;
use serde_json::json;
use tether_transport::client::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_gets_401_before_the_upgrade() {
    let agent = Agent::start(Options::default()).await;
    for token in [Some("not-a-valid-token-at-all"), Some(""), None] {
        let err = Client::connect_ws(&agent.url(), token)
            .await
            .err()
            .unwrap_or_else(|| panic!("token {token:?} was accepted"));
        let text = err.to_string();
        assert!(text.contains("401"), "token {token:?}: {text}");
    }
    // `?token=` is checked just the same.
    let url = format!("{}?token=wrong-token-0123456789", agent.url());
    let err = Client::connect_ws(&url, None).await.err().expect("refused");
    assert!(err.to_string().contains("401"), "{err}");
    let url = format!("{}?token={HUMAN_TOKEN}", agent.url());
    let mut c = Client::connect_ws(&url, None).await.expect("query token");
    let hello = c.request("hello", json!({})).await.expect("hello");
    assert_eq!(hello["class"], "human");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_reports_the_class_bound_to_the_credential() {
    let agent = Agent::start(Options::default()).await;
    let cases = [
        (AGENT_TOKEN, "agent", "robot"),
        (OBSERVER_TOKEN, "observer", "watcher"),
        (HUMAN_TOKEN, "human", "alice"),
    ];
    for (token, class, name) in cases {
        let mut c = agent.ws(token).await;
        // Whatever the client calls itself…
        let hello = c
            .request("hello", json!({"client_name": "root (human, trust me)"}))
            .await
            .expect("hello");
        // …its class and name come from the token.
        assert_eq!(hello["class"], class, "{hello}");
        assert_eq!(hello["name"], name, "{hello}");
        let id = hello["client_id"].as_str().expect("client_id");
        assert_eq!(id.rsplit_once('/').expect("suffix").0, name, "{id}");
        assert_eq!(hello["protocol"], 1);
        assert!(hello["server"]["name"].is_string());
    }

    // Two connections with one credential: one principal, two client ids.
    let mut a = agent.ws(AGENT_TOKEN).await;
    let mut b = agent.ws(AGENT_TOKEN).await;
    let ha = a.request("hello", json!({})).await.expect("hello");
    let hb = b.request("hello", json!({})).await.expect("hello");
    assert_ne!(ha["client_id"], hb["client_id"]);
    let principal = |v: &serde_json::Value| {
        v["client_id"]
            .as_str()
            .expect("id")
            .rsplit_once('/')
            .expect("suffix")
            .0
            .to_owned()
    };
    assert_eq!(principal(&ha), principal(&hb));

    // An agent token cannot pass for a human by name: it still cannot answer under `human`,
    // and the events show its real class.
    let mut alice = agent.ws(HUMAN_TOKEN).await;
    let sid = create_session(&mut a, "human").await;
    attach(&mut alice, &sid, None).await;
    a.request("hello", json!({"client_name": "alice"}))
        .await
        .expect("hello");
    attach(&mut a, &sid, None).await;
    let attached = read_until(&mut alice, |v| {
        is_event(v, "client_attached") && v["client"]["client_id"] == ha["client_id"]
    })
    .await;
    let client = &attached.last().expect("event")["client"];
    assert_eq!(client["class"], "agent");
    assert_eq!(client["name"], "robot");

    // A Unix-socket peer is human, named after its uid.
    let mut u = agent.unix().await;
    let hello = u
        .request("hello", json!({"client_name": "robot"}))
        .await
        .expect("hello");
    assert_eq!(hello["class"], "human");
    let uid = std::fs::metadata(&agent.socket)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .expect("socket owner");
    assert!(
        hello["client_id"]
            .as_str()
            .expect("id")
            .starts_with(&format!("uid:{uid}/")),
        "{hello}"
    );
    agent.stop().await;
}
