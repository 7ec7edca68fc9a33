//! `http`: an HTTP(S) request — status, latency, body content and, for HTTPS, how long the
//! server's certificate stays valid.
//!
//! Settings:
//! * `url` (required) — `http://` or `https://`.
//! * `method` — `GET` (default) or `HEAD`.
//! * `expect_status` — the statuses that are fine: numbers (`200`) and classes (`"2xx"`), as
//!   a list or a single value. Default `["2xx", "3xx"]` (redirects are not followed).
//! * `body_contains` — text the body must contain (GET only; the first 1 MiB is searched).
//! * `tls_verify` — verify the server's certificate (default true).
//! * `ca_file` — PEM file of extra trusted CA certificates (added to the system's).
//!
//! | check              | target | unit   | default thresholds                              |
//! |--------------------|--------|--------|-------------------------------------------------|
//! | `status`           | `url`  |        | (Status) Critical when unreachable or the status is not expected |
//! | `latency_ms`       | `url`  | `ms`   | none (time until the response headers arrived)  |
//! | `body_match`       | `url`  |        | (Status) Critical when the body lacks `body_contains` |
//! | `cert_expiry_days` | `url`  | `days` | warn_lt 14, critical_lt 3 (https only)          |
//!
//! The request (and the certificate probe) get nine tenths of the instance's `timeout` (the
//! common key, default `10s`); no complete answer by then is a Critical `status`.
//!
//! The request ignores proxy settings (it checks the server itself). `cert_expiry_days`
//! comes from a separate TLS handshake that records the server's certificate without judging
//! it, so it is reported even when `tls_verify` fails the request (an expired certificate
//! shows as a negative number of days).

use super::{CANCELLED, Settings, clip, millis, number, round2, verdict, work_budget};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Status, Thresholds};
use futures_util::future::BoxFuture;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tether_host::text::error_chain;

const KEYS: &[&str] = &[
    "url",
    "method",
    "expect_status",
    "body_contains",
    "tls_verify",
    "ca_file",
];

/// Most body bytes searched for `body_contains`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

pub struct HttpPlugin;

/// One accepted status: an exact code or a class (`2xx` → 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusPattern {
    Exact(u16),
    Class(u16),
}

impl StatusPattern {
    pub fn parse(text: &str) -> Result<StatusPattern, String> {
        let t = text.trim().to_ascii_lowercase();
        if let Some(class) = t.strip_suffix("xx")
            && let Ok(c) = class.parse::<u16>()
            && (1..=5).contains(&c)
        {
            return Ok(StatusPattern::Class(c));
        }
        match t.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => Ok(StatusPattern::Exact(code)),
            _ => Err(format!(
                "`{text}` is not an HTTP status (100-599) or a class such as \"2xx\""
            )),
        }
    }

    pub fn matches(self, code: u16) -> bool {
        match self {
            StatusPattern::Exact(c) => c == code,
            StatusPattern::Class(c) => code / 100 == c,
        }
    }
}

impl std::fmt::Display for StatusPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatusPattern::Exact(c) => write!(f, "{c}"),
            StatusPattern::Class(c) => write!(f, "{c}xx"),
        }
    }
}

fn expect_status(s: &Settings<'_>) -> Result<Vec<StatusPattern>, String> {
    let Some(raw) = s.raw("expect_status") else {
        return Ok(vec![StatusPattern::Class(2), StatusPattern::Class(3)]);
    };
    let one = |v: &toml::Value| -> Result<StatusPattern, String> {
        match v {
            toml::Value::Integer(i) => StatusPattern::parse(&i.to_string()),
            toml::Value::String(t) => StatusPattern::parse(t),
            _ => Err("expected a status such as 200 or \"2xx\"".into()),
        }
    };
    let list = match raw {
        toml::Value::Array(items) => items
            .iter()
            .map(one)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("`expect_status`: {e}"))?,
        other => vec![one(other).map_err(|e| format!("`expect_status`: {e}"))?],
    };
    if list.is_empty() {
        return Err("`expect_status` must not be empty".into());
    }
    Ok(list)
}

impl Plugin for HttpPlugin {
    fn name(&self) -> &'static str {
        "http"
    }

    fn about(&self) -> &'static str {
        "HTTP(S) request: status, latency, body content and certificate expiry"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        let s = Settings::new(self.name(), settings, self.settings_keys())?;
        let url_text = s.required_string("url")?;
        let url = reqwest::Url::parse(url_text.trim())
            .map_err(|e| format!("`url`: `{url_text}` is not a URL: {e}"))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            other => {
                return Err(format!(
                    "`url`: scheme `{other}` is not supported (use http or https)"
                ));
            }
        };
        // An IPv6 host is written in brackets in a URL.
        let host = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("`url`: `{url_text}` has no host"))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("`url`: `{url_text}` has no port"))?;
        let method = match s.string("method")?.as_deref().map(str::to_ascii_uppercase) {
            None => reqwest::Method::GET,
            Some(m) if m == "GET" => reqwest::Method::GET,
            Some(m) if m == "HEAD" => reqwest::Method::HEAD,
            Some(m) => return Err(format!("`method`: `{m}` is not supported (GET or HEAD)")),
        };
        let body_contains = s.string("body_contains")?;
        if body_contains.as_deref() == Some("") {
            return Err("`body_contains` must not be empty".into());
        }
        if body_contains.is_some() && method == reqwest::Method::HEAD {
            return Err(
                "`body_contains` needs `method = \"GET\"` (a HEAD response has no body)".into(),
            );
        }
        let tls_verify = s.bool("tls_verify")?.unwrap_or(true);

        tether_host::tls::ensure_provider();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("tether-checks/", env!("CARGO_PKG_VERSION")))
            .tls_danger_accept_invalid_certs(!tls_verify);
        if let Some(path) = s.string("ca_file")? {
            let pem =
                std::fs::read(&path).map_err(|e| format!("`ca_file`: cannot read {path}: {e}"))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("`ca_file`: {path} is not a PEM certificate bundle: {e}"))?;
            if certs.is_empty() {
                return Err(format!("`ca_file`: {path} holds no certificate"));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", error_chain(&e)))?;
        let cert_probe = if https {
            Some(CertProbe::new(&host)?)
        } else {
            None
        };
        Ok(Box::new(HttpCheck {
            target: url_text,
            url,
            host,
            port,
            method,
            expect: expect_status(&s)?,
            body_contains,
            client,
            cert_probe,
        }))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        KEYS
    }

    /// None: a request needs a URL.
    fn default_instances(&self) -> Vec<toml::Table> {
        Vec::new()
    }
}

struct HttpCheck {
    target: String,
    url: reqwest::Url,
    host: String,
    port: u16,
    method: reqwest::Method,
    expect: Vec<StatusPattern>,
    body_contains: Option<String>,
    client: reqwest::Client,
    cert_probe: Option<CertProbe>,
}

/// What came back from the request.
enum Outcome {
    Unreachable(String),
    Response {
        code: u16,
        reason: String,
        latency: Duration,
        /// Whether the body held `body_contains` (`Err` when it could not be read).
        body: Option<Result<bool, String>>,
    },
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

impl HttpCheck {
    async fn request(&self) -> Outcome {
        let start = Instant::now();
        let mut resp = match self
            .client
            .request(self.method.clone(), self.url.clone())
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => return Outcome::Unreachable(error_chain(&e)),
        };
        let latency = start.elapsed();
        let status = resp.status();
        let body = match &self.body_contains {
            None => None,
            Some(needle) => {
                let needle = needle.as_bytes();
                let mut seen: Vec<u8> = Vec::new();
                let mut verdict = Ok(false);
                loop {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            let room = MAX_BODY_BYTES.saturating_sub(seen.len());
                            seen.extend_from_slice(&chunk[..chunk.len().min(room)]);
                            // Only the tail that could still complete a match is rescanned.
                            let from = seen
                                .len()
                                .saturating_sub(chunk.len().min(room) + needle.len());
                            if contains(&seen[from..], needle) {
                                verdict = Ok(true);
                                break;
                            }
                            if seen.len() >= MAX_BODY_BYTES {
                                break;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            verdict = Err(error_chain(&e));
                            break;
                        }
                    }
                }
                Some(verdict)
            }
        };
        Outcome::Response {
            code: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("").to_owned(),
            latency,
            body,
        }
    }

    fn expected_text(&self) -> String {
        self.expect
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn measurements(
        &self,
        outcome: Outcome,
        cert: Option<Result<i64, String>>,
    ) -> Vec<Measurement> {
        let t = &self.target;
        let mut out = Vec::new();
        match outcome {
            Outcome::Unreachable(e) => out.push(verdict(
                "status",
                t,
                Status::Critical,
                format!("{t} is unreachable: {}", clip(&e, 500)),
            )),
            Outcome::Response {
                code,
                reason,
                latency,
                body,
            } => {
                let ms = millis(latency);
                let expected = self.expect.iter().any(|p| p.matches(code));
                let shown = format!("HTTP {code} {reason}").trim_end().to_owned();
                out.push(verdict(
                    "status",
                    t,
                    if expected {
                        Status::Ok
                    } else {
                        Status::Critical
                    },
                    if expected {
                        format!("{t} answered {shown} in {ms:.1} ms")
                    } else {
                        format!("{t} answered {shown}, expected {}", self.expected_text())
                    },
                ));
                out.push(number(
                    "latency_ms",
                    t,
                    ms,
                    "ms",
                    format!("{t} answered in {ms:.1} ms"),
                    Thresholds::default(),
                ));
                if let (Some(body), Some(needle)) = (body, &self.body_contains) {
                    let needle = clip(needle, 100);
                    out.push(match body {
                        Ok(true) => verdict(
                            "body_match",
                            t,
                            Status::Ok,
                            format!("the body of {t} contains {needle:?}"),
                        ),
                        Ok(false) => verdict(
                            "body_match",
                            t,
                            Status::Critical,
                            format!("the body of {t} does not contain {needle:?}"),
                        ),
                        Err(e) => verdict(
                            "body_match",
                            t,
                            Status::Critical,
                            format!("the body of {t} could not be read: {}", clip(&e, 300)),
                        ),
                    });
                }
            }
        }
        match cert {
            Some(Ok(not_after)) => out.push(expiry_measurement(t, not_after, unix_now())),
            Some(Err(e)) => {
                tracing::debug!(target = %t, error = %e, "certificate probe failed");
            }
            None => {}
        }
        out
    }
}

fn unix_now() -> i64 {
    match SystemTime::now().duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn rfc3339(unix: i64) -> String {
    // A peer's certificate chooses this time: clamped, never a panic.
    tether_proto::time::rfc3339_secs(unix)
}

/// `cert_expiry_days` for a certificate valid until `not_after` (Unix seconds), at `now`.
pub fn expiry_measurement(target: &str, not_after: i64, now: i64) -> Measurement {
    let days = round2((not_after - now) as f64 / 86_400.0);
    let when = rfc3339(not_after);
    number(
        "cert_expiry_days",
        target,
        days,
        "days",
        if days >= 0.0 {
            format!("the certificate of {target} expires in {days:.1} days ({when})")
        } else {
            format!(
                "the certificate of {target} expired {:.1} days ago ({when})",
                -days
            )
        },
        Thresholds {
            warn_lt: Some(14.0),
            critical_lt: Some(3.0),
            ..Thresholds::default()
        },
    )
}

impl Check for HttpCheck {
    fn run<'a>(&'a self, ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let timeout = work_budget(ctx.timeout);
            let request = async {
                match tokio::time::timeout(timeout, self.request()).await {
                    Ok(o) => o,
                    Err(_) => Outcome::Unreachable(format!(
                        "no complete answer within {}",
                        humantime::format_duration(timeout)
                    )),
                }
            };
            let cert = async {
                match &self.cert_probe {
                    Some(p) => Some(p.not_after(&self.host, self.port, timeout).await),
                    None => None,
                }
            };
            let (outcome, cert) = tokio::select! {
                r = async { tokio::join!(request, cert) } => r,
                _ = ctx.cancel.cancelled() => return Err(CANCELLED.into()),
            };
            Ok(self.measurements(outcome, cert))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The certificate probe: a TLS handshake that records the server's certificate
// ---------------------------------------------------------------------------------------------

/// Accepts any certificate (the probe only reads it), while still checking the handshake
/// signatures so the certificate really is the server's.
#[derive(Debug)]
struct RecordOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for RecordOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct CertProbe {
    connector: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
}

impl CertProbe {
    fn new(host: &str) -> Result<CertProbe, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(RecordOnly(provider)))
            .with_no_client_auth();
        let server_name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("`url`: `{host}` is not a valid TLS server name: {e}"))?;
        Ok(CertProbe {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// The notAfter (Unix seconds) of the certificate `host:port` presents.
    async fn not_after(&self, host: &str, port: u16, timeout: Duration) -> Result<i64, String> {
        let probe = async {
            let (tcp, _) = super::tcp::connect(host, port, timeout).await?;
            let tls = self
                .connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {host}:{port} failed: {e}"))?;
            let (_, conn) = tls.get_ref();
            let leaf = conn
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| format!("{host}:{port} presented no certificate"))?;
            cert_not_after(leaf.as_ref())
        };
        tokio::time::timeout(timeout, probe)
            .await
            .map_err(|_| "the TLS handshake did not finish in time".to_owned())?
    }
}

// ---------------------------------------------------------------------------------------------
// A minimal DER walker: Certificate → tbsCertificate → validity → notAfter
// ---------------------------------------------------------------------------------------------

/// One DER element: its tag, its contents, and the rest of the input after it.
fn der_element(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = input
        .split_first()
        .ok_or_else(|| "DER: unexpected end of data".to_owned())?;
    if tag & 0x1f == 0x1f {
        return Err("DER: multi-byte tags are not expected in a certificate".into());
    }
    let (&first, rest) = rest
        .split_first()
        .ok_or_else(|| "DER: missing length".to_owned())?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err("DER: unsupported length encoding".into());
        }
        if rest.len() < n {
            return Err("DER: truncated length".into());
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest)
    };
    if rest.len() < len {
        return Err("DER: element longer than its data".into());
    }
    let (content, rest) = rest.split_at(len);
    Ok((tag, content, rest))
}

/// The contents of the element at the start of `input`, requiring tag `want`.
fn expect_tag<'d>(input: &'d [u8], want: u8, what: &str) -> Result<(&'d [u8], &'d [u8]), String> {
    let (tag, content, rest) = der_element(input)?;
    if tag != want {
        return Err(format!(
            "DER: expected {what} (tag {want:#04x}), found tag {tag:#04x}"
        ));
    }
    Ok((content, rest))
}

fn digits(s: &[u8], what: &str) -> Result<u32, String> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return Err(format!("certificate time: bad {what}"));
    }
    Ok(s.iter().fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')))
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSS[.f]Z`) into Unix
/// seconds.
fn parse_time(tag: u8, text: &[u8]) -> Result<i64, String> {
    let body = text
        .strip_suffix(b"Z")
        .ok_or_else(|| "certificate time: not in UTC (no trailing Z)".to_owned())?;
    let (year, rest) = match tag {
        0x17 => {
            if body.len() != 12 {
                return Err("certificate time: bad UTCTime length".into());
            }
            let yy = digits(&body[..2], "year")?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &body[2..])
        }
        0x18 => {
            // Fractional seconds are forbidden in DER, but tolerated.
            let body = match body.iter().position(|b| *b == b'.') {
                Some(dot) => &body[..dot],
                None => body,
            };
            if body.len() != 14 {
                return Err("certificate time: bad GeneralizedTime length".into());
            }
            (digits(&body[..4], "year")?, &body[4..])
        }
        other => return Err(format!("certificate time: unexpected tag {other:#04x}")),
    };
    let month = digits(&rest[0..2], "month")?;
    let day = digits(&rest[2..4], "day")?;
    let hour = digits(&rest[4..6], "hour")?;
    let minute = digits(&rest[6..8], "minute")?;
    let second = digits(&rest[8..10], "second")?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err("certificate time: field out of range".into());
    }
    let days = days_from_civil(i64::from(year), month, day);
    Ok(days * 86_400 + i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second))
}

/// The end of a DER X.509 certificate's validity (notAfter), as Unix seconds.
pub fn cert_not_after(der: &[u8]) -> Result<i64, String> {
    let (cert, _) = expect_tag(der, 0x30, "Certificate")?;
    let (tbs, _) = expect_tag(cert, 0x30, "tbsCertificate")?;
    let mut rest = tbs;
    // version [0] EXPLICIT, optional.
    if rest.first() == Some(&0xa0) {
        rest = der_element(rest)?.2;
    }
    rest = expect_tag(rest, 0x02, "serialNumber")?.1;
    rest = expect_tag(rest, 0x30, "signature algorithm")?.1;
    rest = expect_tag(rest, 0x30, "issuer")?.1;
    let (validity, _) = expect_tag(rest, 0x30, "validity")?;
    let (_, _, after_not_before) = der_element(validity)?;
    let (tag, not_after, _) = der_element(after_not_before)?;
    parse_time(tag, not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_and_times() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(parse_time(0x17, b"000301000000Z"), Ok(11_017 * 86_400));
        assert_eq!(
            parse_time(0x18, b"20000301000001Z"),
            Ok(11_017 * 86_400 + 1)
        );
        assert_eq!(parse_time(0x17, b"691231235959Z"), Ok(-1));
        assert!(parse_time(0x17, b"001301000000Z").is_err());
        assert!(parse_time(0x17, b"0003010000Z").is_err());
        assert!(parse_time(0x18, b"20000301000000+0100").is_err());
    }

    #[test]
    fn status_patterns() {
        assert_eq!(StatusPattern::parse("2xx"), Ok(StatusPattern::Class(2)));
        assert_eq!(StatusPattern::parse("404"), Ok(StatusPattern::Exact(404)));
        assert!(StatusPattern::parse("9xx").is_err());
        assert!(StatusPattern::parse("99").is_err());
        assert!(StatusPattern::Class(3).matches(301));
        assert!(!StatusPattern::Class(3).matches(200));
    }
}
