//! Network diagnostics against sockets and servers the tests open themselves.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tether_host::tools::diag::{
    DiagConfig, diagnostic_tools,
    net::{NetInterfacesReport, SocketsReport},
    probes::{DnsReport, HttpCheckReport, TcpCheckReport, is_local_target},
};
use tether_host::tools::{Tool, ToolContext, ToolOutput, schema};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn tool(name: &str) -> Arc<dyn Tool> {
    diagnostic_tools(&DiagConfig::default())
        .into_iter()
        .find(|t| t.spec().name == name)
        .unwrap_or_else(|| panic!("no tool {name}"))
}

fn ctx(cancel: &CancellationToken) -> ToolContext {
    ToolContext {
        session_id: "s".into(),
        turn_id: "t".into(),
        cancel: cancel.clone(),
    }
}

async fn call(name: &str, args: Value) -> ToolOutput {
    let t = tool(name);
    schema::validate(&t.spec().parameters, &args).unwrap_or_else(|e| panic!("{name} {args}: {e}"));
    t.call(args, ctx(&CancellationToken::new())).await
}

fn decode<T: serde::de::DeserializeOwned>(out: &ToolOutput) -> T {
    serde_json::from_str(&out.output).unwrap_or_else(|e| panic!("{e}: {}", out.output))
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    port
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    addr
}

#[tokio::test]
async fn sockets_list_the_tests_own_listener_with_its_pid() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let udp_port = udp.local_addr().expect("addr").port();

    let r: SocketsReport = decode(&call("sockets", json!({})).await);
    let mine = r
        .listening
        .iter()
        .find(|s| s.port == port && s.protocol == "tcp")
        .unwrap_or_else(|| panic!("port {port} not in {r:?}"));
    assert_eq!(mine.address, "127.0.0.1");
    assert_eq!(mine.pid, Some(std::process::id()));
    assert!(mine.process.is_some());
    assert!(r.tcp_states.get("LISTEN").is_some_and(|n| *n >= 1));
    assert!(r.listening_tcp >= 1);
    let u = r
        .listening
        .iter()
        .find(|s| s.port == udp_port && s.protocol == "udp")
        .unwrap_or_else(|| panic!("udp port {udp_port} not in {r:?}"));
    assert_eq!(u.pid, Some(std::process::id()));

    let only: SocketsReport =
        decode(&call("sockets", json!({"protocol": "tcp", "port": port})).await);
    assert_eq!(only.listening.len(), 1);
    assert_eq!(only.listening[0].port, port);
    drop(listener);
    drop(udp);
}

#[tokio::test]
async fn tcp_check_connects_to_an_open_port_and_fails_on_a_closed_one() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let out = call("tcp_check", json!({"host": "127.0.0.1", "port": port})).await;
    assert!(out.ok, "{}", out.output);
    let r: TcpCheckReport = decode(&out);
    assert!(r.connected);
    assert_eq!(
        r.address.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert!(r.connect_ms.is_some_and(|ms| ms >= 0.0));

    let by_name: TcpCheckReport =
        decode(&call("tcp_check", json!({"host": "localhost", "port": port})).await);
    // localhost may resolve to ::1 first, which this listener does not serve; 127.0.0.1 then
    // answers.
    assert!(by_name.connected, "{by_name:?}");

    let closed = closed_port();
    let out = call(
        "tcp_check",
        json!({"host": "127.0.0.1", "port": closed, "timeout_ms": 2000}),
    )
    .await;
    assert!(!out.ok);
    let r: TcpCheckReport = decode(&out);
    assert!(!r.connected);
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains("refused")),
        "{r:?}"
    );
    drop(listener);
}

#[test]
fn probes_need_permission_only_for_other_hosts() {
    let tcp = tool("tcp_check");
    let http = tool("http_check");
    let dns = tool("dns_resolve");
    assert!(!tcp.needs_permission(&json!({"host": "127.0.0.1", "port": 80})));
    assert!(!tcp.needs_permission(&json!({"host": "localhost", "port": 80})));
    assert!(!tcp.needs_permission(&json!({"host": "::1", "port": 80})));
    assert!(tcp.needs_permission(&json!({"host": "192.0.2.1", "port": 80})));
    assert!(tcp.needs_permission(&json!({"host": "example.com", "port": 80})));
    assert!(!http.needs_permission(&json!({"url": "http://127.0.0.1:8080/x"})));
    assert!(http.needs_permission(&json!({"url": "http://192.0.2.1/"})));
    assert!(!dns.needs_permission(&json!({"name": "example.com"})));
    // The host's own name and addresses are local too.
    assert!(is_local_target(&tether_host::host::hostname()));
    for a in tether_host::host::interface_addresses().expect("getifaddrs") {
        assert!(is_local_target(&a.address.to_string()), "{a:?}");
    }
}

#[tokio::test]
async fn http_check_reports_status_headers_and_body() {
    let (hit_tx, mut hit_rx) = mpsc::channel::<()>(4);
    let router = Router::new()
        .route(
            "/ok",
            get(|| async {
                (
                    StatusCode::OK,
                    [(header::SERVER, "tether-test")],
                    "hello from axum",
                )
            }),
        )
        .route(
            "/fail",
            get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
        )
        .route(
            "/redirect",
            get(|| async {
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "http://192.0.2.1/")],
                    "",
                )
            }),
        )
        .route("/big", get(|| async { "x".repeat(10_000) }))
        .route(
            "/hang",
            get(move || {
                let tx = hit_tx.clone();
                async move {
                    let _ = tx.send(()).await;
                    std::future::pending::<()>().await;
                    "never"
                }
            }),
        );
    let addr = serve(router).await;
    let base = format!("http://{addr}");

    let ok = call("http_check", json!({"url": format!("{base}/ok")})).await;
    assert!(ok.ok, "{}", ok.output);
    let r: HttpCheckReport = decode(&ok);
    assert_eq!(r.status, Some(200));
    assert_eq!(r.reason.as_deref(), Some("OK"));
    assert_eq!(
        r.headers.get("server").map(String::as_str),
        Some("tether-test")
    );
    assert_eq!(r.body_snippet.as_deref(), Some("hello from axum"));
    assert!(!r.body_truncated);
    assert!(r.latency_ms.is_some());

    let head: HttpCheckReport = decode(
        &call(
            "http_check",
            json!({"url": format!("{base}/ok"), "method": "HEAD"}),
        )
        .await,
    );
    assert_eq!(head.status, Some(200));
    assert_eq!(head.body_snippet, None);

    let fail = call("http_check", json!({"url": format!("{base}/fail")})).await;
    assert!(fail.ok, "a response is a reading, whatever its status");
    assert_eq!(decode::<HttpCheckReport>(&fail).status, Some(503));

    // A redirect is reported, never followed (it points at another host).
    let redirect: HttpCheckReport =
        decode(&call("http_check", json!({"url": format!("{base}/redirect")})).await);
    assert_eq!(redirect.status, Some(302));
    assert_eq!(
        redirect.headers.get("location").map(String::as_str),
        Some("http://192.0.2.1/")
    );

    let big: HttpCheckReport = decode(
        &call(
            "http_check",
            json!({"url": format!("{base}/big"), "body_bytes": 100}),
        )
        .await,
    );
    assert_eq!(big.body_snippet.as_deref().map(str::len), Some(100));
    assert!(big.body_truncated);

    let closed = call(
        "http_check",
        json!({"url": format!("http://127.0.0.1:{}/", closed_port()), "timeout_ms": 2000}),
    )
    .await;
    assert!(!closed.ok);
    let r: HttpCheckReport = decode(&closed);
    assert_eq!(r.status, None);
    assert!(r.error.is_some());

    let bad = call("http_check", json!({"url": "ftp://127.0.0.1/"})).await;
    assert!(
        !bad.ok && bad.output.contains("unsupported scheme"),
        "{}",
        bad.output
    );

    // Cancelling a request the server never answers returns at once.
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    let url = format!("{base}/hang");
    let started = Instant::now();
    let pending = tokio::spawn(async move {
        tool("http_check")
            .call(json!({"url": url, "timeout_ms": 60000}), ctx(&c2))
            .await
    });
    tokio::time::timeout(Duration::from_secs(10), hit_rx.recv())
        .await
        .expect("the request reached the server");
    cancel.cancel();
    let out = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("returned after cancel")
        .expect("joined");
    assert_eq!(out.output, "cancelled");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn dns_resolves_localhost() {
    let out = call("dns_resolve", json!({"name": "localhost"})).await;
    assert!(out.ok, "{}", out.output);
    let r: DnsReport = decode(&out);
    assert!(
        r.addresses.iter().any(|a| a == "127.0.0.1" || a == "::1"),
        "{r:?}"
    );
    assert!(r.elapsed_ms >= 0.0);
    let bad = call(
        "dns_resolve",
        json!({"name": "no-such-host.invalid", "timeout_ms": 5000}),
    )
    .await;
    assert!(!bad.ok);
    let r: DnsReport = decode(&bad);
    assert!(r.addresses.is_empty() && r.error.is_some(), "{r:?}");
}

#[tokio::test]
async fn interfaces_include_loopback_with_its_address() {
    let r: NetInterfacesReport = decode(&call("net_interfaces", json!({})).await);
    let lo = r
        .interfaces
        .iter()
        .find(|i| i.name == "lo")
        .unwrap_or_else(|| panic!("no lo in {r:?}"));
    assert!(lo.addresses.iter().any(|a| a == "127.0.0.1/8"), "{lo:?}");
    assert!(lo.rx_packets > 0 || lo.rx_bytes == 0);
    let dev = std::fs::read_to_string("/proc/net/dev").expect("net/dev");
    for i in &r.interfaces {
        assert!(dev.contains(&format!("{}:", i.name)), "{}", i.name);
    }
    let only: NetInterfacesReport =
        decode(&call("net_interfaces", json!({"interface": "lo"})).await);
    assert_eq!(only.interfaces.len(), 1);
    let missing = call("net_interfaces", json!({"interface": "nosuch0"})).await;
    assert!(!missing.ok && missing.output.contains("no interface `nosuch0`"));
}
