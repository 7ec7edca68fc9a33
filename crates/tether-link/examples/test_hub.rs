//! A minimal stand-in hub (the acceptance tests' test hub) for measuring a real agent, e.g.
//! with `scripts/footprint.sh`:
//!
//! ```text
//! cargo run --release -p tether-link --example test_hub -- [--listen 127.0.0.1:0]
//!     [--version 2] [--ping-every 30] [--token TOKEN]
//! ```
//!
//! It prints `listening on ws://ADDR` once bound, then one line per registration, acks
//! `register`, answers alerts with `alert_ack` (version 2), and pings every N seconds.

#[path = "../tests/common/hub.rs"]
mod hub;

use hub::{HubSettings, TestHub};
use std::io::Write;
use std::time::Duration;

fn usage() -> ! {
    eprintln!(
        "usage: test_hub [--listen ADDR] [--version 1|2] [--ping-every SECONDS] [--token TOKEN]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut settings = HubSettings {
        ping_every: Some(Duration::from_secs(30)),
        ..HubSettings::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => listen = value(),
            "--version" => settings.version = value().parse().unwrap_or_else(|_| usage()),
            "--ping-every" => {
                let s: u64 = value().parse().unwrap_or_else(|_| usage());
                settings.ping_every = (s > 0).then(|| Duration::from_secs(s));
            }
            "--token" => settings.token = Some(value()),
            _ => usage(),
        }
    }
    let hub = TestHub::start_on(&listen, settings).await;
    println!("listening on {}", hub.url());
    let _ = std::io::stdout().flush();
    let year = Duration::from_secs(365 * 24 * 3600);
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            conn = hub.next_conn(year) => {
                let p = &conn.register["payload"];
                println!(
                    "registered: connection {} from {} ({}), protocol v{}",
                    conn.index, p["hostname"], p["agent_version"], conn.version
                );
                let _ = std::io::stdout().flush();
            }
        }
    }
    hub.with(|r| {
        println!(
            "connections: {}, heartbeats: {}, alerts stored: {}, pongs: {}",
            r.conns.len(),
            r.heartbeats.len(),
            r.alerts.len(),
            r.pongs
        )
    });
}
