//! `tcp`: can a TCP connection be opened to `host:port`, and how long does it take?
//!
//! Settings:
//! * `target` (required) — `host:port`, `1.2.3.4:port` or `[v6::addr]:port`.
//!
//! Resolving and connecting together get nine tenths of the instance's `timeout` (the common
//! key, default `10s`); no connection by then is a Critical `connect`.
//!
//! | check        | target   | unit | default thresholds                               |
//! |--------------|----------|------|--------------------------------------------------|
//! | `connect`    | `target` |      | (Status) Ok when connected, Critical with the error |
//! | `connect_ms` | `target` | `ms` | none (only when connected)                       |
//!
//! Each address the name resolves to is tried in turn until one accepts. The connection is
//! closed at once; nothing is sent.

use super::{CANCELLED, Settings, millis, number, verdict, work_budget};
use crate::plugin::{Check, CheckContext, Measurement, Plugin, Status, Thresholds};
use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tether_host::tools::diag::probes::connect_first;

const KEYS: &[&str] = &["target"];

pub struct TcpPlugin;

impl Plugin for TcpPlugin {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn about(&self) -> &'static str {
        "TCP connect to host:port: reachable or not, and the connect time"
    }

    fn build(&self, settings: &toml::Table) -> Result<Box<dyn Check>, String> {
        let s = Settings::new(self.name(), settings, self.settings_keys())?;
        let target = s.required_string("target")?;
        let (host, port) = split_host_port(&target).map_err(|e| format!("`target`: {e}"))?;
        Ok(Box::new(TcpCheck { target, host, port }))
    }

    fn settings_keys(&self) -> &'static [&'static str] {
        KEYS
    }

    /// None: a connection needs a target.
    fn default_instances(&self) -> Vec<toml::Table> {
        Vec::new()
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
pub fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let t = text.trim();
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{text}`: missing `]` after the IPv6 address"))?;
        let p = p
            .strip_prefix(':')
            .ok_or_else(|| format!("`{text}` has no port (write `[addr]:port`)"))?;
        (h, p)
    } else {
        let (h, p) = t
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}` has no port (write `host:port`)"))?;
        if h.contains(':') {
            return Err(format!(
                "`{text}`: put an IPv6 address in brackets (`[{h}]:{p}`)"
            ));
        }
        (h, p)
    };
    if host.is_empty() {
        return Err(format!("`{text}` has no host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("`{port}` is not a port number (1-65535)"))?;
    Ok((host.to_owned(), port))
}

/// Resolves `host` (an IP literal is used as it is).
pub(crate) async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("`{host}` resolved to no address"));
    }
    Ok(addrs)
}

/// Connects to the first address of `host:port` that accepts, within `timeout`.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(tokio::net::TcpStream, Duration), String> {
    let deadline = Instant::now() + timeout;
    let addrs = tokio::time::timeout(timeout, resolve(host, port))
        .await
        .map_err(|_| {
            format!(
                "resolving `{host}` took longer than {}",
                humantime::format_duration(timeout)
            )
        })??;
    let (stream, _, took) = connect_first(addrs, deadline).await?;
    Ok((stream, took))
}

struct TcpCheck {
    target: String,
    host: String,
    port: u16,
}

impl Check for TcpCheck {
    fn run<'a>(&'a self, ctx: CheckContext) -> BoxFuture<'a, Result<Vec<Measurement>, String>> {
        Box::pin(async move {
            let timeout = work_budget(ctx.timeout);
            let result = tokio::select! {
                r = connect(&self.host, self.port, timeout) => r,
                _ = ctx.cancel.cancelled() => return Err(CANCELLED.into()),
            };
            Ok(match result {
                Ok((_stream, took)) => {
                    let ms = millis(took);
                    vec![
                        verdict(
                            "connect",
                            &self.target,
                            Status::Ok,
                            format!("connected to {} in {ms:.1} ms", self.target),
                        ),
                        number(
                            "connect_ms",
                            &self.target,
                            ms,
                            "ms",
                            format!("connecting to {} took {ms:.1} ms", self.target),
                            Thresholds::default(),
                        ),
                    ]
                }
                Err(e) => vec![verdict(
                    "connect",
                    &self.target,
                    Status::Critical,
                    format!("cannot connect to {}: {e}", self.target),
                )],
            })
        })
    }
}
