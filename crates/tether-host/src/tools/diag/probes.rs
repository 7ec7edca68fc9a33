//! Network probes: `dns_resolve`, `tcp_check` and `http_check`.
//!
//! A probe of this host needs no permission; a probe of any other host does (design rule 8).
//! "This host" is decided from the target as written, without resolving it — a name can be
//! made to resolve anywhere — as: `localhost`, an IP literal in 127.0.0.0/8, `::1`, the
//! unspecified address, one of the host's own interface addresses, or the host's own name.
//! When a name (`localhost`, the hostname) was judged local, the probe then only connects to
//! the addresses it resolves to that really are this host's, so a permission-free probe
//! cannot leave the host whatever the resolver says. `http_check` never follows redirects
//! (a redirect could point elsewhere) and ignores proxy settings.

use super::{cancelled, clip, json_output};
use crate::host;
use crate::text::{error_chain, millis};
use crate::tools::ToolSpec;
use crate::tools::blocking::{BlockingError, run_blocking};
use crate::tools::{Tool, ToolContext, ToolOutput, parse_args};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How a probe target was classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An IP literal of this host.
    LocalIp,
    /// `localhost` or this host's name: local, provided it resolves to this host.
    LocalName,
    /// Anything else.
    Remote,
}

/// Strips the brackets of an IPv6 literal and a trailing root dot, and lowercases.
fn normalise_host(h: &str) -> String {
    let h = h.trim();
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Classifies a probe target without resolving it.
pub fn classify(host_text: &str) -> Target {
    let h = normalise_host(host_text);
    if h.is_empty() {
        return Target::Remote;
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return if host::is_local_ip(ip) {
            Target::LocalIp
        } else {
            Target::Remote
        };
    }
    if h == "localhost" || h == host::hostname().to_ascii_lowercase() {
        return Target::LocalName;
    }
    Target::Remote
}

/// Whether a probe of `host_text` stays on this host (so needs no permission).
pub fn is_local_target(host_text: &str) -> bool {
    classify(host_text) != Target::Remote
}

/// Resolves `host:port`. IP literals are used as they are. The system resolver blocks a
/// thread, so it runs through the tools' shared cap of blocking jobs.
async fn resolve(
    host_text: &str,
    port: u16,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<SocketAddr>, String> {
    let h = normalise_host(host_text);
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let name = h.clone();
    let looked_up = run_blocking(&format!("resolving `{h}`"), cancel, timeout, move |_| {
        (name.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect::<Vec<_>>)
    })
    .await;
    match looked_up {
        Ok(Ok(addrs)) => {
            let mut out: Vec<SocketAddr> = Vec::new();
            for a in addrs {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            if out.is_empty() {
                Err(format!("`{h}` resolved to no address"))
            } else {
                Ok(out)
            }
        }
        Ok(Err(e)) => Err(format!("cannot resolve `{h}`: {e}")),
        Err(BlockingError::TimedOut { after, .. }) => Err(format!(
            "resolving `{h}` took longer than {}",
            humantime::format_duration(after)
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// The addresses a probe may use: for a name judged local, only those of this host.
fn allowed_addresses(host_text: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    if classify(host_text) != Target::LocalName {
        return Ok(addrs);
    }
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    let local: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| host::is_local_ip(a.ip()))
        .collect();
    if local.is_empty() {
        Err(format!(
            "`{host_text}` is this host's name but resolves to {}, none of which is an address \
             of this host; probe an IP address instead",
            shown.join(", ")
        ))
    } else {
        Ok(local)
    }
}

/// A requested timeout in milliseconds, bounded by the configured limit.
fn bounded(timeout_ms: Option<u64>, default_ms: u64, limit: Duration) -> Duration {
    Duration::from_millis(timeout_ms.unwrap_or(default_ms).max(1)).min(limit)
}

// ---------------------------------------------------------------------------------------------
// dns_resolve
// ---------------------------------------------------------------------------------------------

/// What `dns_resolve` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DnsReport {
    pub name: String,
    pub addresses: Vec<String>,
    pub elapsed_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsArgs {
    name: String,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

pub struct DnsResolve {
    limit: Duration,
}

impl DnsResolve {
    pub fn new(limit: Duration) -> Self {
        DnsResolve { limit }
    }
}

impl Tool for DnsResolve {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "dns_resolve".into(),
            description: "Resolve a host name with this host's resolver (getaddrinfo: \
                /etc/hosts, then DNS) and report the IPv4/IPv6 addresses and how long it took. \
                Read-only."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 253,
                        "description": "Host name to resolve."},
                    "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 60000,
                        "description": "Give up after this long (default 5000)."}
                },
                "required": ["name"],
                "additionalProperties": false
            }),
        }
    }

    fn needs_permission(&self, _args: &Value) -> bool {
        false
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: DnsArgs = match parse_args("dns_resolve", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let timeout = bounded(args.timeout_ms, 5000, self.limit);
            let start = Instant::now();
            let result = tokio::select! {
                r = resolve(&args.name, 0, timeout, &ctx.cancel) => r,
                _ = ctx.cancel.cancelled() => return cancelled(),
            };
            let elapsed_ms = millis(start.elapsed());
            match result {
                Ok(addrs) => json_output(
                    &DnsReport {
                        name: args.name,
                        addresses: addrs.iter().map(|a| a.ip().to_string()).collect(),
                        elapsed_ms,
                        error: None,
                    },
                    true,
                ),
                Err(error) => json_output(
                    &DnsReport {
                        name: args.name,
                        addresses: Vec::new(),
                        elapsed_ms,
                        error: Some(error),
                    },
                    false,
                ),
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// tcp_check
// ---------------------------------------------------------------------------------------------

/// What `tcp_check` prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TcpCheckReport {
    pub host: String,
    pub port: u16,
    pub connected: bool,
    /// The address that accepted the connection.
    pub address: Option<String>,
    pub resolve_ms: Option<f64>,
    pub connect_ms: Option<f64>,
    /// Why it did not connect (each address tried, when there were several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpArgs {
    host: String,
    port: u16,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// The host of a tool's arguments, if they have one (`host`, or the host of `url`).
fn target_host(args: &Value) -> Option<String> {
    if let Some(h) = args.get("host").and_then(Value::as_str) {
        return Some(h.to_owned());
    }
    let url = args.get("url").and_then(Value::as_str)?;
    reqwest::Url::parse(url).ok()?.host_str().map(str::to_owned)
}

pub struct TcpCheck {
    limit: Duration,
}

impl TcpCheck {
    pub fn new(limit: Duration) -> Self {
        TcpCheck { limit }
    }
}

async fn tcp_probe(
    host_text: &str,
    port: u16,
    timeout: Duration,
    cancel: &CancellationToken,
) -> TcpCheckReport {
    let mut report = TcpCheckReport {
        host: host_text.to_owned(),
        port,
        connected: false,
        address: None,
        resolve_ms: None,
        connect_ms: None,
        error: None,
    };
    let deadline = Instant::now() + timeout;
    let start = Instant::now();
    let addrs = match resolve(host_text, port, timeout, cancel)
        .await
        .and_then(|a| allowed_addresses(host_text, a))
    {
        Ok(a) => a,
        Err(e) => {
            report.error = Some(e);
            return report;
        }
    };
    report.resolve_ms = Some(millis(start.elapsed()));
    match connect_first(addrs, deadline).await {
        Ok((_stream, addr, took)) => {
            report.connected = true;
            report.address = Some(addr.to_string());
            report.connect_ms = Some(millis(took));
        }
        Err(e) => report.error = Some(e),
    }
    report
}

/// Connects to the first of `addrs` that accepts before `deadline`: the stream, its address
/// and how long that address took to accept; or why each address failed, joined.
pub async fn connect_first(
    addrs: Vec<SocketAddr>,
    deadline: Instant,
) -> Result<(tokio::net::TcpStream, SocketAddr, Duration), String> {
    let mut errors = Vec::new();
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            errors.push(format!("{addr}: no time left"));
            break;
        }
        let began = Instant::now();
        match tokio::time::timeout(left, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr, began.elapsed())),
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!(
                "{addr}: no answer within {}",
                humantime::format_duration(left)
            )),
        }
    }
    Err(errors.join("; "))
}

impl Tool for TcpCheck {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "tcp_check".into(),
            description: "Open a TCP connection to host:port and report whether it connected, \
                to which address, and how long resolving and connecting took (the connection \
                is closed at once; nothing is sent). Needs approval unless the host is this \
                host (localhost, 127.0.0.0/8, ::1, its own name or addresses)."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "host": {"type": "string", "minLength": 1, "maxLength": 253,
                        "description": "Host name or IP address."},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 60000,
                        "description": "Give up after this long (default 3000)."}
                },
                "required": ["host", "port"],
                "additionalProperties": false
            }),
        }
    }

    fn needs_permission(&self, args: &Value) -> bool {
        target_host(args).is_none_or(|h| !is_local_target(&h))
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: TcpArgs = match parse_args("tcp_check", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let timeout = bounded(args.timeout_ms, 3000, self.limit);
            let report = tokio::select! {
                r = tcp_probe(&args.host, args.port, timeout, &ctx.cancel) => r,
                _ = ctx.cancel.cancelled() => return cancelled(),
            };
            let ok = report.connected;
            json_output(&report, ok)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// http_check
// ---------------------------------------------------------------------------------------------

/// Response headers `http_check` reports.
pub const HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "server",
    "location",
    "cache-control",
    "retry-after",
    "www-authenticate",
    "date",
    "last-modified",
];

/// What `http_check` prints. `ok` is true whenever a response came back, whatever its status.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HttpCheckReport {
    pub url: String,
    pub method: String,
    pub status: Option<u16>,
    pub reason: Option<String>,
    pub http_version: Option<String>,
    /// Time until the response headers arrived.
    pub latency_ms: Option<f64>,
    /// Time until the body snippet was read.
    pub total_ms: Option<f64>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body_snippet: Option<String>,
    /// Whether the body was longer than the snippet.
    pub body_truncated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpArgs {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    body_bytes: Option<usize>,
}

pub struct HttpCheck {
    limit: Duration,
}

impl HttpCheck {
    pub fn new(limit: Duration) -> Self {
        HttpCheck { limit }
    }
}

async fn http_probe(
    args: HttpArgs,
    timeout: Duration,
    cancel: &CancellationToken,
) -> HttpCheckReport {
    let method = args.method.clone().unwrap_or_else(|| "GET".into());
    let mut report = HttpCheckReport {
        url: args.url.clone(),
        method: method.clone(),
        status: None,
        reason: None,
        http_version: None,
        latency_ms: None,
        total_ms: None,
        headers: BTreeMap::new(),
        body_snippet: None,
        body_truncated: false,
        error: None,
    };
    let url = match reqwest::Url::parse(&args.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => u,
        Ok(u) => {
            report.error = Some(format!(
                "unsupported scheme `{}` (http or https only)",
                u.scheme()
            ));
            return report;
        }
        Err(e) => {
            report.error = Some(format!("invalid URL: {e}"));
            return report;
        }
    };
    let Some(host_text) = url.host_str().map(str::to_owned) else {
        report.error = Some("the URL has no host".into());
        return report;
    };
    let method = match method.as_str() {
        "GET" => reqwest::Method::GET,
        "HEAD" => reqwest::Method::HEAD,
        other => {
            report.error = Some(format!("method must be GET or HEAD, not {other}"));
            return report;
        }
    };
    // rustls needs a process-wide crypto provider; an error means one is installed already.
    crate::tls::ensure_provider();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("tether-http-check/", env!("CARGO_PKG_VERSION")));
    let start = Instant::now();
    // Names are resolved here rather than by the client's own resolver, whose lookups would
    // run on the blocking pool unbounded; and a name judged local must stay on this host.
    if normalise_host(&host_text).parse::<IpAddr>().is_err() {
        let port = url.port_or_known_default().unwrap_or(80);
        let addrs = match resolve(&host_text, port, timeout, cancel)
            .await
            .and_then(|a| allowed_addresses(&host_text, a))
        {
            Ok(a) => a,
            Err(e) => {
                report.error = Some(e);
                return report;
            }
        };
        builder = builder.resolve_to_addrs(&normalise_host(&host_text), &addrs);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(format!("cannot build an HTTP client: {}", error_chain(&e)));
            return report;
        }
    };
    let mut response = match client.request(method.clone(), url).send().await {
        Ok(r) => r,
        Err(e) => {
            report.error = Some(error_chain(&e));
            report.total_ms = Some(millis(start.elapsed()));
            return report;
        }
    };
    report.latency_ms = Some(millis(start.elapsed()));
    let status = response.status();
    report.status = Some(status.as_u16());
    report.reason = status.canonical_reason().map(str::to_owned);
    report.http_version = Some(format!("{:?}", response.version()));
    for name in HEADERS {
        if let Some(v) = response.headers().get(*name) {
            report.headers.insert(
                (*name).to_owned(),
                clip(&String::from_utf8_lossy(v.as_bytes()), 300),
            );
        }
    }
    let cap = args.body_bytes.unwrap_or(512).min(4096);
    if method != reqwest::Method::HEAD && cap > 0 {
        let mut body: Vec<u8> = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = cap.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..room.min(chunk.len())]);
                    if chunk.len() > room {
                        report.body_truncated = true;
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    report.error = Some(format!("reading the body failed: {}", error_chain(&e)));
                    break;
                }
            }
        }
        report.body_snippet = Some(String::from_utf8_lossy(&body).into_owned());
    }
    report.total_ms = Some(millis(start.elapsed()));
    report
}

impl Tool for HttpCheck {
    fn spec(&self) -> ToolSpec {
        ToolSpec {
            name: "http_check".into(),
            description: "Send one GET or HEAD request to an http(s) URL and report the status, \
                latency, HTTP version, key response headers and the start of the body. \
                Redirects are reported, not followed; proxies are not used. Needs approval \
                unless the URL's host is this host (localhost, 127.0.0.0/8, ::1, its own name \
                or addresses)."
                .into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "url": {"type": "string", "minLength": 1, "maxLength": 2048,
                        "description": "http:// or https:// URL."},
                    "method": {"type": "string", "enum": ["GET", "HEAD"],
                        "description": "Default GET."},
                    "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 60000,
                        "description": "Give up after this long (default 5000)."},
                    "body_bytes": {"type": "integer", "minimum": 0, "maximum": 4096,
                        "description": "How much of the body to show (default 512)."}
                },
                "required": ["url"],
                "additionalProperties": false
            }),
        }
    }

    fn needs_permission(&self, args: &Value) -> bool {
        target_host(args).is_none_or(|h| !is_local_target(&h))
    }

    fn read_only(&self) -> bool {
        true
    }

    fn call<'a>(&'a self, args: Value, ctx: ToolContext) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let args: HttpArgs = match parse_args("http_check", args) {
                Ok(a) => a,
                Err(e) => return e,
            };
            let timeout = bounded(args.timeout_ms, 5000, self.limit);
            let report = tokio::select! {
                r = http_probe(args, timeout, &ctx.cancel) => r,
                _ = ctx.cancel.cancelled() => return cancelled(),
            };
            let ok = report.status.is_some();
            json_output(&report, ok)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_classified_without_resolving() {
        assert_eq!(classify("127.0.0.1"), Target::LocalIp);
        assert_eq!(classify("127.8.9.10"), Target::LocalIp);
        assert_eq!(classify("[::1]"), Target::LocalIp);
        assert_eq!(classify("::ffff:127.0.0.1"), Target::LocalIp);
        assert_eq!(classify("0.0.0.0"), Target::LocalIp);
        assert_eq!(classify("LOCALHOST."), Target::LocalName);
        assert_eq!(classify(&host::hostname()), Target::LocalName);
        assert_eq!(classify("192.0.2.1"), Target::Remote);
        assert_eq!(classify("example.com"), Target::Remote);
        assert_eq!(classify("localhost.example.com"), Target::Remote);
        assert_eq!(classify(""), Target::Remote);
    }

    #[test]
    fn permission_follows_the_target() {
        let tcp = TcpCheck::new(Duration::from_secs(5));
        assert!(!tcp.needs_permission(&json!({"host": "127.0.0.1", "port": 22})));
        assert!(tcp.needs_permission(&json!({"host": "192.0.2.1", "port": 22})));
        // Malformed arguments fail closed.
        assert!(tcp.needs_permission(&json!({"port": 22})));
        let http = HttpCheck::new(Duration::from_secs(5));
        assert!(!http.needs_permission(&json!({"url": "http://[::1]:8080/health"})));
        assert!(!http.needs_permission(&json!({"url": "http://localhost/"})));
        assert!(http.needs_permission(&json!({"url": "https://192.0.2.1/"})));
        assert!(http.needs_permission(&json!({"url": "not a url"})));
    }

    #[test]
    fn a_local_name_only_reaches_local_addresses() {
        let remote: SocketAddr = "192.0.2.1:80".parse().expect("addr");
        let local: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        assert!(allowed_addresses("localhost", vec![remote]).is_err());
        assert_eq!(
            allowed_addresses("localhost", vec![remote, local]),
            Ok(vec![local])
        );
        // A remote target (already approved) is not filtered.
        assert_eq!(
            allowed_addresses("example.com", vec![remote]),
            Ok(vec![remote])
        );
    }
}
