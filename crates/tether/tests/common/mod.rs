//! Helpers shared by the tests that drive the real `tether` binary: an agent child process,
//! client commands over its Unix socket, and a client in a real pseudo-terminal.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tether");

/// How long any wait in these tests may take before it fails (never how long it takes).
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct AgentProc {
    pub child: Child,
}

impl AgentProc {
    pub fn start(config: &Path) -> AgentProc {
        let child = Command::new(BIN)
            .args(["agent", "--config"])
            .arg(config)
            .env("TETHER_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn agent");
        let socket = config.parent().expect("dir").join("state/agent.sock");
        let deadline = Instant::now() + PATIENCE;
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "agent did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        AgentProc { child }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills a child that outlives the test's patience, so a hang fails instead of blocking.
fn watchdog(pid: u32) {
    std::thread::spawn(move || {
        std::thread::sleep(PATIENCE);
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    });
}

/// Runs `tether ARGS --config CONFIG` with `stdin` piped in (not a terminal).
pub fn client(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env("TETHER_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    // The client may exit without reading its input (it is not chat input): ignore EPIPE.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    watchdog(child.id());
    child.wait_with_output().expect("client output")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An agent config in `dir` whose model replays `script`.
pub fn write_config(dir: &Path, script: &str) -> PathBuf {
    std::fs::write(dir.join("script.json"), script).expect("script");
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        "listen = \"off\"\nstate_dir = \"state\"\n[model]\nprovider = \"scripted\"\nscript = \"script.json\"\n",
    )
    .expect("config");
    config
}

/// The interpreter of the Python protocol SDKs (ACP, MCP) that `scripts/python-sdks.sh`
/// installs: TETHER_PYTHON (scripts/test.sh sets it), else the project's virtual environment.
/// `None`, after a notice naming `what` is skipped, when neither exists and CI is not "true";
/// under CI=true a missing SDK fails the test.
pub fn python_sdk(what: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TETHER_PYTHON").filter(|p| !p.is_empty()) {
        return Some(p.into());
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/python-sdk/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the Python SDKs are missing ({what}): run scripts/python-sdks.sh (or set TETHER_PYTHON)"
    );
    eprintln!(
        "NOTICE: skipping {what}: TETHER_PYTHON is not set and {} does not exist \
         (run scripts/python-sdks.sh)",
        venv.display()
    );
    None
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A child process on a real pseudo-terminal: stdin, stdout and stderr are the terminal, and
/// everything it shows is collected from the master side.
pub struct Pty {
    master: std::fs::File,
    pub child: Child,
    output: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    pub fn spawn(args: &[&str]) -> Pty {
        use std::os::fd::FromRawFd;
        let (mut master_fd, mut slave_fd) = (-1, -1);
        // SAFETY: openpty only writes the two descriptors into the out-parameters; a null
        // name, termios and window size are documented as allowed (defaults).
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::openpty(
                &mut master_fd,
                &mut slave_fd,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned by nothing else.
        #[allow(unsafe_code)]
        let (master, slave) = unsafe {
            (
                std::fs::File::from_raw_fd(master_fd),
                std::fs::File::from_raw_fd(slave_fd),
            )
        };
        let child = Command::new(BIN)
            .args(args)
            .env("TETHER_LOG", "warn")
            .stdin(slave.try_clone().expect("dup"))
            .stdout(slave.try_clone().expect("dup"))
            .stderr(slave)
            .spawn()
            .expect("spawn on the pty");
        watchdog(child.id());
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup master");
        let sink = output.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the child (the last holder of the slave side) has exited.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().expect("lock").extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            child,
            output,
        }
    }

    /// Types `text` at the terminal.
    pub fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("type");
        self.master.flush().expect("flush");
    }

    /// Everything written to the terminal so far, raw.
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("lock")).into_owned()
    }

    /// The screen as a terminal shows it (see [`screen`]).
    pub fn screen(&self) -> Vec<String> {
        screen(&self.raw())
    }

    /// Waits until `ready` holds for the screen; returns it.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let s = self.screen();
            if ready(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{}",
                s.join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.child.wait().expect("wait")
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a terminal shows for `raw` output: `\r` returns to the line start and later text
/// overwrites, `ESC [ 2 K` erases the line, `ESC [ K` erases to its end, other escape
/// sequences (colours) show nothing. Trailing blanks are trimmed.
pub fn screen(raw: &str) -> Vec<String> {
    let mut lines: Vec<Vec<char>> = vec![Vec::new()];
    let mut col = 0usize;
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        let line = lines.last_mut().expect("a line");
        match c {
            '\r' => col = 0,
            '\n' => {
                lines.push(Vec::new());
                col = 0;
            }
            '\x08' => col = col.saturating_sub(1),
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    continue;
                }
                chars.next();
                let mut params = String::new();
                for n in chars.by_ref() {
                    if n.is_ascii_alphabetic() || n == '~' {
                        if n == 'K' {
                            if params == "2" {
                                line.clear();
                            } else {
                                line.truncate(col);
                            }
                        }
                        break;
                    }
                    params.push(n);
                }
            }
            c if c.is_control() => {}
            c => {
                while line.len() < col {
                    line.push(' ');
                }
                if col < line.len() {
                    line[col] = c;
                } else {
                    line.push(c);
                }
                col += 1;
            }
        }
    }
    lines
        .into_iter()
        .map(|l| l.into_iter().collect::<String>().trim_end().to_owned())
        .collect()
}

/// A child process stopped like a service when dropped: SIGTERM, up to 15 s to exit, then
/// SIGKILL.
pub struct ServiceProc(pub Child);

impl ServiceProc {
    /// `tether ARGS --config CONFIG`, logging at warn, stdout discarded.
    pub fn start(args: &[&str], config: &Path) -> ServiceProc {
        ServiceProc(
            Command::new(BIN)
                .args(args)
                .arg("--config")
                .arg(config)
                .env("TETHER_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn tether"),
        )
    }

    /// SIGKILL now: no goodbye to anyone.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ServiceProc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a file, creating its directory.
pub fn write_file(path: &Path, text: &str) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).expect("dir");
    }
    std::fs::write(path, text).expect("write");
}

/// A plain HTTP GET on loopback with a Bearer token: the body as JSON when the answer is 200
/// (`Connection: close` bodies read whole, chunked ones decoded).
pub fn get_json(port: u16, path: &str, token: &str) -> Option<serde_json::Value> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(tail.get(..n)?);
            rest = tail.get(n + 2..)?;
        }
        out
    } else {
        body.to_owned()
    };
    serde_json::from_str(&body).ok()
}

/// Polls `f` every 200 ms until it gives a value; fails the test after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
