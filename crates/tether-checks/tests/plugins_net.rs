//! The network plugins (tcp, http) against loopback servers.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tether_checks::plugin::{CheckContext, Status};
use tether_checks::plugins;
use tether_checks::rules::evaluate;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

mod common;
use common::{build, find, number, run, status, try_build};

// ---------------------------------------------------------------------------------------------
// tcp
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tcp_port_closed_then_opened() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let target = addr.to_string();
    let check = build("tcp", json!({"target": target}));

    let ms = run(check.as_ref()).await;
    let connect = find(&ms, "connect");
    assert_eq!(status(connect), Status::Critical, "{connect:#?}");
    assert_eq!(connect.target, target);
    assert!(
        connect.description.contains("refused"),
        "{}",
        connect.description
    );
    assert!(ms.iter().all(|m| m.check != "connect_ms"), "{ms:#?}");

    let _listener = TcpListener::bind(addr).await.expect("bind again");
    let ms = run(check.as_ref()).await;
    assert_eq!(status(find(&ms, "connect")), Status::Ok, "{ms:#?}");
    let ms_taken = find(&ms, "connect_ms");
    assert!(number(ms_taken) >= 0.0);
    assert_eq!(ms_taken.unit, "ms");
    assert_eq!(ms_taken.defaults, Default::default());
}

#[tokio::test]
async fn tcp_resolves_names() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let check = build("tcp", json!({"target": format!("localhost:{port}")}));
    let ms = run(check.as_ref()).await;
    // localhost may resolve to ::1 first (refused); the IPv4 address then answers.
    assert_eq!(status(find(&ms, "connect")), Status::Ok, "{ms:#?}");
}

#[test]
fn tcp_targets_are_validated() {
    for bad in [
        "localhost",
        "localhost:0",
        "localhost:70000",
        ":80",
        "::1:80",
        "[::1",
    ] {
        let err = try_build("tcp", json!({"target": bad})).err();
        assert!(err.is_some(), "{bad} accepted");
    }
    assert!(try_build("tcp", json!({"target": "[::1]:22"})).is_ok());
    assert!(try_build("tcp", json!({})).is_err());
    // The connect timeout is the instance's common `timeout`, not a plugin setting.
    assert!(try_build("tcp", json!({"target": "a:1", "timeout": "3s"})).is_err());
}

// ---------------------------------------------------------------------------------------------
// http
// ---------------------------------------------------------------------------------------------

fn app() -> Router {
    Router::new()
        .route("/ok", get(|| async { "hello from the tether test server" }))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "broken") }),
        )
        .route(
            "/moved",
            get(|| async { (StatusCode::FOUND, [("location", "/ok")], "") }),
        )
}

async fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app()).await;
    });
    addr
}

#[tokio::test]
async fn http_500_is_critical() {
    let addr = http_server().await;
    let url = format!("http://{addr}/fail");
    let ms = run(build("http", json!({"url": url})).as_ref()).await;
    let s = find(&ms, "status");
    assert_eq!(status(s), Status::Critical, "{s:#?}");
    assert_eq!(s.target, url);
    assert!(s.description.contains("500"), "{}", s.description);
    assert!(number(find(&ms, "latency_ms")) >= 0.0);
    assert!(ms.iter().all(|m| m.check != "cert_expiry_days"));
    assert!(ms.iter().all(|m| m.check != "body_match"));

    // Unless 500 is what is expected.
    let ms = run(build("http", json!({"url": url, "expect_status": [500]})).as_ref()).await;
    assert_eq!(status(find(&ms, "status")), Status::Ok, "{ms:#?}");
}

#[tokio::test]
async fn http_200_with_body_match() {
    let addr = http_server().await;
    let url = format!("http://{addr}/ok");
    let ms = run(build("http", json!({"url": url, "body_contains": "tether test"})).as_ref()).await;
    assert_eq!(status(find(&ms, "status")), Status::Ok, "{ms:#?}");
    assert_eq!(status(find(&ms, "body_match")), Status::Ok, "{ms:#?}");
    assert_eq!(find(&ms, "latency_ms").unit, "ms");

    let ms = run(build("http", json!({"url": url, "body_contains": "nginx"})).as_ref()).await;
    assert_eq!(status(find(&ms, "status")), Status::Ok);
    let m = find(&ms, "body_match");
    assert_eq!(status(m), Status::Critical);
    assert!(
        m.description.contains("does not contain"),
        "{}",
        m.description
    );

    let ms = run(build("http", json!({"url": url, "method": "HEAD"})).as_ref()).await;
    assert_eq!(status(find(&ms, "status")), Status::Ok, "{ms:#?}");
}

#[tokio::test]
async fn http_redirects_are_not_followed_and_count_as_3xx() {
    let addr = http_server().await;
    let url = format!("http://{addr}/moved");
    let ms = run(build("http", json!({"url": url})).as_ref()).await;
    assert_eq!(status(find(&ms, "status")), Status::Ok, "{ms:#?}");
    assert!(find(&ms, "status").description.contains("302"));
    let ms = run(build("http", json!({"url": url, "expect_status": "2xx"})).as_ref()).await;
    assert_eq!(status(find(&ms, "status")), Status::Critical, "{ms:#?}");
}

#[tokio::test]
async fn http_unreachable_is_critical() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let ms = run(build("http", json!({"url": format!("http://{addr}/")})).as_ref()).await;
    let s = find(&ms, "status");
    assert_eq!(status(s), Status::Critical);
    assert!(s.description.contains("unreachable"), "{}", s.description);
    assert_eq!(ms.len(), 1, "{ms:#?}");
}

#[tokio::test]
async fn http_timeout_is_critical() {
    // A server that accepts and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut conns: Vec<TcpStream> = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let check = build("http", json!({"url": format!("http://{addr}/")}));
    // A run timeout of 200 ms: the request gets 180 ms and its verdict beats the deadline.
    let ms = check
        .run(CheckContext {
            cancel: CancellationToken::new(),
            timeout: Duration::from_millis(200),
        })
        .await
        .expect("a timeout is a verdict, not a run error");
    assert_eq!(status(find(&ms, "status")), Status::Critical, "{ms:#?}");
    held.abort();
}

#[test]
fn http_settings_are_validated() {
    let bad = [
        json!({}),
        json!({"url": "ftp://example.invalid/"}),
        json!({"url": "not a url"}),
        json!({"url": "http://x/", "method": "POST"}),
        json!({"url": "http://x/", "method": "HEAD", "body_contains": "a"}),
        json!({"url": "http://x/", "expect_status": ["6xx"]}),
        json!({"url": "http://x/", "expect_status": []}),
        json!({"url": "http://x/", "tls_verify": "no"}),
        json!({"url": "https://x/", "ca_file": "/no/such/ca.pem"}),
    ];
    for v in bad {
        assert!(try_build("http", v.clone()).is_err(), "{v} accepted");
    }
    let err = try_build("http", json!({"url": "http://x/", "expect": 200}))
        .err()
        .expect("rejected");
    assert!(
        err.contains("`expect`") && err.contains("`expect_status`"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// https and the certificate expiry
// ---------------------------------------------------------------------------------------------

struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            // Clients that reject the certificate end their handshake here.
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A self-signed certificate for 127.0.0.1 and localhost, valid until `valid_for` from now:
/// (DER, PKCS#8 key DER, PEM).
fn certificate(valid_for: Duration) -> (Vec<u8>, Vec<u8>, String) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock");
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params");
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + (now - Duration::from_secs(86_400));
    params.not_after = epoch + (now + valid_for);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.der().to_vec(), key.serialize_der(), cert.pem())
}

async fn https_server(cert_der: Vec<u8>, key_der: Vec<u8>) -> SocketAddr {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![rustls::pki_types::CertificateDer::from(cert_der)],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
        )
        .expect("server config");
    let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app()).await;
    });
    addr
}

#[tokio::test]
async fn https_certificate_near_expiry_is_critical() {
    let (der, key, _) = certificate(Duration::from_secs(2 * 86_400));
    let addr = https_server(der, key).await;
    let url = format!("https://{addr}/ok");
    let check = build(
        "http",
        json!({"url": url, "tls_verify": false, "body_contains": "hello"}),
    );
    let ms = run(check.as_ref()).await;
    assert_eq!(status(find(&ms, "status")), Status::Ok, "{ms:#?}");
    assert_eq!(status(find(&ms, "body_match")), Status::Ok, "{ms:#?}");
    let cert = find(&ms, "cert_expiry_days");
    let days = number(cert);
    assert!((days - 2.0).abs() < 0.01, "{days}");
    assert_eq!(cert.unit, "days");
    assert_eq!(
        (cert.defaults.warn_lt, cert.defaults.critical_lt),
        (Some(14.0), Some(3.0))
    );
    assert_eq!(evaluate(&cert.value, &cert.defaults), Status::Critical);
    assert!(
        cert.description.contains("expires in 2.0 days"),
        "{}",
        cert.description
    );
}

#[tokio::test]
async fn https_expiry_is_reported_even_when_verification_fails() {
    let (der, key, _) = certificate(Duration::from_secs(10 * 86_400));
    let addr = https_server(der, key).await;
    let url = format!("https://{addr}/ok");
    // Verified against the system's roots, the self-signed certificate is refused…
    let ms = run(build("http", json!({"url": url})).as_ref()).await;
    let s = find(&ms, "status");
    assert_eq!(status(s), Status::Critical, "{s:#?}");
    // …and its expiry still reported (10 days: a warning).
    let cert = find(&ms, "cert_expiry_days");
    assert!((number(cert) - 10.0).abs() < 0.01, "{cert:#?}");
    assert_eq!(evaluate(&cert.value, &cert.defaults), Status::Warning);
}

#[tokio::test]
async fn https_ca_file_makes_the_certificate_trusted() {
    let (der, key, pem) = certificate(Duration::from_secs(90 * 86_400));
    let addr = https_server(der, key).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).expect("write ca");
    let url = format!("https://{addr}/ok");
    let ms = run(build("http", json!({"url": url, "ca_file": ca})).as_ref()).await;
    assert_eq!(status(find(&ms, "status")), Status::Ok, "{ms:#?}");
    let cert = find(&ms, "cert_expiry_days");
    assert_eq!(evaluate(&cert.value, &cert.defaults), Status::Ok);
}

#[test]
fn certificate_not_after_is_read_from_der() {
    let (der, _, _) = certificate(Duration::from_secs(5 * 86_400));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let not_after = plugins::http::cert_not_after(&der).expect("notAfter");
    assert!(
        (not_after - (now + 5 * 86_400)).abs() <= 2,
        "{not_after} vs {now}"
    );
    // Truncated or garbled certificates are errors, never panics.
    for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
        assert!(
            plugins::http::cert_not_after(&der[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    let mut garbled = der.clone();
    garbled[0] = 0x31;
    assert!(plugins::http::cert_not_after(&garbled).is_err());
}

proptest::proptest! {
    #[test]
    fn the_der_walker_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = plugins::http::cert_not_after(&bytes);
    }
}
