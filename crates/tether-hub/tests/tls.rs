//! Requirement 9: TLS. With a self-signed certificate the hub serves `wss://`; an agent that
//! trusts the certificate (`ca_file`) registers, one that does not fails the handshake; a
//! non-loopback listener without TLS is refused.

mod common;

use common::*;
use tether_link::TlsOptions;
use tether_link::driver::prepare_endpoint;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_hub_serves_agents_that_trust_its_certificate() {
    let certs = tempfile::tempdir().expect("tempdir");
    let (cert, key) = self_signed(certs.path(), "hub", &["localhost", "127.0.0.1"]);
    let (stranger, _) = self_signed(certs.path(), "stranger", &["localhost", "127.0.0.1"]);
    let hub = TestHub::start_with(|c| c.tls = Some((cert.clone(), key.clone()))).await;
    let running = hub.running.as_ref().expect("running");
    assert!(running.tls);
    assert!(running.url().starts_with("https://"), "{}", running.url());
    let addr = hub.addr;
    let url = format!("wss://127.0.0.1:{}/api/v1/agent/ws", addr.port());

    // Trusting the hub's certificate: registers over wss://, and alerts flow.
    let token = hub.create_token("tls-trusted").await;
    let trusted = TlsOptions {
        ca_file: Some(cert.clone()),
        ..TlsOptions::default()
    };
    let mut good = V2Agent::new(&url, &token, &shell_script(), Some(&trusted));
    good.start_link();
    let s = good.wait_registered().await;
    assert_eq!(s.version, Some(2), "{s:?}");
    hub.wait_connected(&good.agent_id, true).await;
    good.sink.send(alert(0));
    hub.wait_alerts(1).await;

    // Trusting some other certificate: the handshake fails, nothing registers.
    let token2 = hub.create_token("tls-untrusted").await;
    let wrong = TlsOptions {
        ca_file: Some(stranger.clone()),
        ..TlsOptions::default()
    };
    let mut bad = V2Agent::new(&url, &token2, &shell_script(), Some(&wrong));
    bad.start_link();
    let s = bad
        .wait_status("the TLS handshake to fail", |s| {
            s.state == "backing_off" && s.last_error.is_some()
        })
        .await;
    let error = s.last_error.clone().unwrap_or_default().to_lowercase();
    assert!(
        error.contains("certificate") || error.contains("issuer"),
        "a certificate error: {s:?}"
    );
    assert_eq!(s.registrations, 0, "{s:?}");
    assert!(!hub.hub().is_connected(&bad.agent_id));

    // Without a CA file (system roots only) the self-signed hub is not trusted either.
    match prepare_endpoint(&url, false, &TlsOptions::default()) {
        Ok(_) => {
            let mut plain =
                V2Agent::new(&url, &token2, &shell_script(), Some(&TlsOptions::default()));
            plain.start_link();
            let s = plain
                .wait_status("the TLS handshake to fail (system roots)", |s| {
                    s.state == "backing_off" && s.last_error.is_some()
                })
                .await;
            assert_eq!(s.registrations, 0, "{s:?}");
            assert!(!hub.hub().is_connected(&plain.agent_id));
            plain.stop().await;
        }
        Err(e) => assert!(e.to_string().contains("no trusted CA"), "{e}"),
    }

    // Plain ws:// to the TLS listener gets no upgrade.
    let r = dial_agent(
        &format!("ws://{addr}/api/v1/agent/ws"),
        &token,
        &uuid::Uuid::now_v7().to_string(),
        "1",
    )
    .await;
    assert!(r.is_err(), "a plaintext upgrade on the TLS port succeeded");

    good.stop().await;
    bad.stop().await;
    hub.stop().await;
    // Stopped means stopped: the TLS listener is closed (the port is free again).
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the stopped TLS hub still accepts connections"
    );
    let again = tokio::net::TcpListener::bind(addr).await;
    assert!(
        again.is_ok(),
        "the stopped TLS hub still holds {addr}: {again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exposed_listeners_need_tls_and_operators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config =
        tether_hub::HubConfig::new("0.0.0.0:0".parse().expect("addr"), dir.path().to_owned());
    config.operators = operators();
    match tether_hub::start(config.clone(), false).await {
        Ok(_) => panic!("a non-loopback listener without TLS was allowed"),
        Err(e) => assert!(e.contains("without TLS"), "{e}"),
    }
    // allow_plaintext lifts the TLS rule by name, but operators are still required.
    config.operators.clear();
    match tether_hub::start(config, true).await {
        Ok(_) => panic!("a non-loopback listener without operators was allowed"),
        Err(e) => assert!(e.contains("operator"), "{e}"),
    }
}
