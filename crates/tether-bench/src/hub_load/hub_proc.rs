//! The hub under test: a real `tether hub` process with its own config and state directory,
//! plus what the bench reads about it (`/proc/<pid>/status`, `/proc/<pid>/stat`, `/healthz`,
//! `/metrics`).

use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long the hub may take to answer `/healthz` after it is spawned.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the hub may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// One HTTP request to the hub, connect to last byte.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running hub process. Killed if dropped without [`HubProc::stop`].
pub struct HubProc {
    child: tokio::process::Child,
    pid: u32,
    pub addr: SocketAddr,
    pub token: String,
    log: PathBuf,
}

/// How the hub stopped.
pub struct Stopped {
    /// Exited by itself after SIGTERM (false: it had to be killed).
    pub clean: bool,
    pub status: String,
    pub stop_s: f64,
}

/// `/proc/<pid>/status` figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStatus {
    pub vm_rss_kib: u64,
    pub rss_anon_kib: u64,
    pub threads: u64,
}

/// A free loopback port (bound and released; the hub binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl HubProc {
    /// Writes `hub.toml` in `dir` (state in `dir/state`, listen on a free loopback port, a
    /// shared enrollment token, `max_agents`, then `extra`: `[[operators]]`, `[store]`, ...)
    /// and starts `tether hub` on it; returns once `/healthz` answers. The hub inherits this
    /// process's open-files limit.
    pub async fn start_with(
        bin: &Path,
        dir: &Path,
        max_agents: usize,
        extra: &str,
    ) -> anyhow::Result<HubProc> {
        let token = format!("bench-enroll-{}", uuid::Uuid::now_v7().simple());
        Self::start_with_token(bin, dir, max_agents, extra, &token).await
    }

    /// As [`HubProc::start_with`], with the given enrollment token (replicas share one, so an
    /// agent may register with any of them).
    pub async fn start_with_token(
        bin: &Path,
        dir: &Path,
        max_agents: usize,
        extra: &str,
        token: &str,
    ) -> anyhow::Result<HubProc> {
        let mut last_error = None;
        // The port is free when chosen but another process could take it before the hub
        // binds it: try a few.
        for _ in 0..3 {
            match Self::start_once(bin, dir, max_agents, extra, token).await {
                Ok(h) => return Ok(h),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("the hub did not start")))
    }

    async fn start_once(
        bin: &Path,
        dir: &Path,
        max_agents: usize,
        extra: &str,
        token: &str,
    ) -> anyhow::Result<HubProc> {
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let token = token.to_owned();
        let state = dir.join("state");
        // 0700, as the hub wants its state directory (it would tighten it and warn).
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&state)
            .with_context(|| format!("creating {}", state.display()))?;
        let config = dir.join("hub.toml");
        let toml = format!(
            "listen = \"{addr}\"\nstate_dir = \"{}\"\nenrollment_token = \"{token}\"\nmax_agents = {max_agents}\n{extra}",
            state.display()
        );
        std::fs::write(&config, toml).with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("hub.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = tokio::process::Command::new(bin)
            .arg("hub")
            .arg("--config")
            .arg(&config)
            .env("NO_COLOR", "1")
            .env_remove("TETHER_HUB_CONFIG")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .context("the hub exited before its pid was known")?;
        let mut hub = HubProc {
            child,
            pid,
            addr,
            token,
            log,
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = hub.child.try_wait()? {
                bail!(
                    "the hub exited at start ({status}); its log ends:\n{}",
                    hub.log_tail(20)
                );
            }
            if hub.healthz().await.is_ok() {
                return Ok(hub);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "the hub did not answer /healthz within {} s; its log ends:\n{}",
                    START_TIMEOUT.as_secs(),
                    hub.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How the hub exited, if it has.
    pub fn exit_status(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown: {e}")),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `agents_connected` from `GET /healthz`.
    pub async fn healthz(&self) -> anyhow::Result<u64> {
        let body = http_get(self.addr, "/healthz").await?;
        let v: serde_json::Value = serde_json::from_str(&body).context("/healthz body")?;
        v["agents_connected"]
            .as_u64()
            .context("/healthz has no agents_connected")
    }

    /// One counter or gauge from `GET /metrics`.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let body = http_get(self.addr, "/metrics").await?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (key, value) = l.split_once(' ')?;
                (key == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .with_context(|| format!("/metrics has no {name}"))
    }

    pub fn status(&self) -> anyhow::Result<ProcStatus> {
        proc_status(self.pid)
    }

    /// User plus system CPU time the hub has used, in seconds.
    pub fn cpu_s(&self) -> anyhow::Result<f64> {
        proc_cpu_s(self.pid)
    }

    /// The hub's soft open-files limit, from `/proc/<pid>/limits`.
    pub fn open_files_limit(&self) -> Option<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/limits", self.pid)).ok()?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        line.trim_start_matches("Max open files")
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Lines of the hub's log at `WARN` and `ERROR` (and panics), counted.
    pub fn log_problems(&self) -> (u64, u64, Option<String>) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let (mut warn, mut error, mut first) = (0, 0, None);
        for line in text.lines() {
            let is_warn = line.contains(" WARN ");
            let is_error = line.contains(" ERROR ") || line.contains("panicked");
            if is_warn {
                warn += 1;
            }
            if is_error {
                error += 1;
            }
            if (is_warn || is_error) && first.is_none() {
                first = Some(line.chars().take(300).collect());
            }
        }
        (warn, error, first)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM, then waits for the exit (SIGKILL after [`STOP_TIMEOUT`]).
    pub async fn stop(mut self) -> anyhow::Result<Stopped> {
        let started = std::time::Instant::now();
        if let Ok(Some(status)) = self.child.try_wait() {
            return Ok(Stopped {
                clean: false,
                status: format!("it had already exited ({status})"),
                stop_s: 0.0,
            });
        }
        signal(self.pid, libc::SIGTERM)?;
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(Stopped {
                clean: true,
                status: status?.to_string(),
                stop_s: started.elapsed().as_secs_f64(),
            }),
            Err(_) => {
                self.child.kill().await?;
                Ok(Stopped {
                    clean: false,
                    status: format!("killed after {} s", STOP_TIMEOUT.as_secs()),
                    stop_s: started.elapsed().as_secs_f64(),
                })
            }
        }
    }
}

#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(pid).context("pid out of range")?;
    // SAFETY: `kill` takes plain integers; `pid` is our own child, which we have not reaped.
    if unsafe { libc::kill(pid, sig) } != 0 {
        return Err(std::io::Error::last_os_error()).context("signalling the hub");
    }
    Ok(())
}

pub fn proc_status(pid: u32) -> anyhow::Result<ProcStatus> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Ok(ProcStatus {
        vm_rss_kib: field("VmRSS:").with_context(|| format!("{path} has no VmRSS"))?,
        rss_anon_kib: field("RssAnon:").unwrap_or(0),
        threads: field("Threads:").unwrap_or(0),
    })
}

#[allow(unsafe_code)]
fn clock_ticks() -> f64 {
    // SAFETY: `sysconf` only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

pub fn proc_cpu_s(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces, so split after its `)`): state is
    // field 3, utime 14, stime 15.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path} is malformed"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|v| v as f64)
            .with_context(|| format!("{path}: field {} missing", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// A minimal HTTP/1.1 GET (the bench has no HTTP client); the body, if the status is 200.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let fetch = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(buf)
    };
    let buf = tokio::time::timeout(HTTP_TIMEOUT, fetch)
        .await
        .with_context(|| format!("GET {path} timed out"))??;
    let text = String::from_utf8(buf).context("the response is not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: malformed response"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("GET {path}: {status}");
    }
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok(body.to_owned());
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").context("malformed chunked body")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .context("malformed chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = after.get(..size).context("truncated chunk")?;
        out.push_str(chunk);
        rest = after.get(size..).unwrap_or("").trim_start_matches("\r\n");
    }
}

/// The machine's `TcpExt: ListenOverflows` counter (`/proc/net/netstat`).
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}
