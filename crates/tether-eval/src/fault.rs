//! Making and unmaking a scenario's fault, contained.
//!
//! Each run gets a private directory (`<work>/<n>/`) holding the scratch directory the fault
//! lives in (`srv/`, the only part the model's file tools may read) and the harness's own
//! files. Every process the fault starts is in one process group, led by a keeper process the
//! harness spawns first and does not reap until the end, so the group's id can never be
//! reused by an unrelated group while the fault exists.
//!
//! Removal ([`Fault::remove`], and [`Drop`] when a run is abandoned by an error, a panic or a
//! signal) kills the whole group, runs the scenario's `remove` script, unmounts anything
//! still mounted below the run's directory, and deletes it. Each step runs even when an
//! earlier one failed; the errors are returned together.

use crate::scenario::FaultSpec;
use crate::template::Vars;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tether_host::process::{kill_group, minimal_vars};

/// Longest the `remove` script may run.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest the killed group may take to disappear.
const GROUP_EXIT_WAIT: Duration = Duration::from_secs(5);

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// The process group of `pid`, from `/proc/PID/stat` (`None` when it is gone).
fn pgrp(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    // state ppid pgrp …
    after.split_whitespace().nth(2)?.parse().ok()
}

/// The live members of process group `pgid` (zombies are dead).
pub fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| pgrp(*pid) == Some(pgid))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|t| {
                    let after = t[t.rfind(')')? + 1..].to_owned();
                    after.split_whitespace().next().map(|s| s != "Z")
                })
                .unwrap_or(false)
        })
        .collect()
}

/// The last `n` lines of a file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One run's fault: its directories, its process group, and how to remove it.
pub struct Fault {
    run_dir: PathBuf,
    scratch: PathBuf,
    spec: FaultSpec,
    env: Vec<(String, String)>,
    /// The group leader; `None` once killed and reaped.
    keeper: Option<Child>,
    keeper_pid: u32,
    removed: bool,
}

impl Fault {
    /// Creates `run_dir` (which must not exist) with its scratch directory `srv/`, and the
    /// keeper of the fault's process group. `env` is added to the scripts' environment
    /// (`SCRATCH`, `VARS` and `PORT` are set here).
    pub fn create(run_dir: &Path, spec: &FaultSpec, env: &[(String, String)]) -> Result<Fault> {
        std::fs::create_dir(run_dir)
            .with_context(|| format!("cannot create {}", run_dir.display()))?;
        let scratch = run_dir.join("srv");
        std::fs::create_dir(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        use std::os::unix::process::CommandExt;
        let keeper = std::process::Command::new("sleep")
            .arg("2147483647")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let keeper = match keeper {
            Ok(k) => k,
            Err(e) => {
                let _ = std::fs::remove_dir_all(run_dir);
                bail!("cannot start the fault's process group (sleep): {e}");
            }
        };
        let mut all_env = env.to_vec();
        all_env.push(("SCRATCH".into(), scratch.display().to_string()));
        all_env.push(("VARS".into(), run_dir.join("vars").display().to_string()));
        Ok(Fault {
            run_dir: run_dir.to_owned(),
            scratch,
            spec: spec.clone(),
            env: all_env,
            keeper_pid: keeper.id(),
            keeper: Some(keeper),
            removed: false,
        })
    }

    /// The directory the fault lives in (`{{scratch}}`).
    pub fn scratch(&self) -> &Path {
        &self.scratch
    }

    /// The run's private directory (not readable by the model's tools).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The fault's process group id.
    pub fn pgid(&self) -> u32 {
        self.keeper_pid
    }

    /// Adds a variable to the scripts' environment.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Runs a script of the fault in its process group, in the scratch directory, output to
    /// `<run>/<what>.log`. A non-zero exit or the timeout is an error quoting its output.
    async fn script(&self, what: &str, script: &str) -> Result<()> {
        let log_path = self.run_dir.join(format!("{what}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-euc")
            .arg(script)
            .current_dir(&self.scratch)
            .env_clear()
            .envs(minimal_vars(std::env::vars_os()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(i32::try_from(self.keeper_pid).unwrap_or(0))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot run the {what} script"))?;
        let status = match tokio::time::timeout(self.spec.timeout(), child.wait()).await {
            Ok(status) => status.with_context(|| format!("waiting for the {what} script"))?,
            Err(_) => bail!(
                "the {what} script did not finish within {} s; its output:\n{}",
                self.spec.timeout().as_secs(),
                tail(&log_path, 10)
            ),
        };
        if !status.success() {
            bail!(
                "the {what} script failed ({status}); its output:\n{}",
                tail(&log_path, 10)
            );
        }
        Ok(())
    }

    /// Injects the fault: runs `inject`, then `verify`, and reads what `inject` wrote to
    /// `$VARS` into `vars`.
    pub async fn inject(&mut self, vars: &mut Vars) -> Result<()> {
        self.script("inject", &self.spec.inject.clone()).await?;
        let vars_file = self.run_dir.join("vars");
        if vars_file.exists() {
            let text = std::fs::read_to_string(&vars_file)
                .with_context(|| format!("cannot read {}", vars_file.display()))?;
            vars.read_lines(&text)?;
        }
        if let Some(verify) = self.spec.verify.clone() {
            self.script("verify", &verify)
                .await
                .context("the fault is not in place")?;
        }
        Ok(())
    }

    /// Removes the fault (see the module documentation). Blocking work runs on the blocking
    /// pool.
    pub async fn remove(mut self) -> Result<()> {
        let errors = tokio::task::spawn_blocking(move || self.remove_now())
            .await
            .map_err(|e| anyhow::anyhow!("removal stopped: {e}"))?;
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("{}", errors.join("; "))
        }
    }

    /// Every removal step, each run whatever happened before; the errors.
    fn remove_now(&mut self) -> Vec<String> {
        if self.removed {
            return Vec::new();
        }
        self.removed = true;
        let mut errors = Vec::new();
        // 1. Every process of the fault, at once.
        kill_group(self.keeper_pid);
        let deadline = Instant::now() + GROUP_EXIT_WAIT;
        if let Some(mut k) = self.keeper.take() {
            // Bounded: should the group not have been signalled, the keeper is killed alone
            // (the wait below then names what is left).
            while matches!(k.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if matches!(k.try_wait(), Ok(None)) {
                let _ = k.kill();
            }
            let _ = k.wait();
        }
        loop {
            let left = group_members(self.keeper_pid);
            if left.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                errors.push(format!(
                    "processes of the fault's group {} did not exit: {left:?}",
                    self.keeper_pid
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // 2. The scenario's own undoing.
        if let Some(remove) = &self.spec.remove
            && let Err(e) = self.remove_script(remove)
        {
            errors.push(e);
        }
        // 3. Anything still mounted below the run (innermost first).
        let prefix = format!("{}/", self.run_dir.display());
        let mut mounted: Vec<String> = tether_host::host::mounts()
            .into_iter()
            .map(|m| m.mount_point)
            .filter(|p| p.starts_with(&prefix))
            .collect();
        mounted.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for point in mounted {
            let out = std::process::Command::new("umount")
                .arg("-l")
                .arg(&point)
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => errors.push(format!(
                    "cannot unmount {point}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => errors.push(format!("cannot run umount for {point}: {e}")),
            }
        }
        // 4. The files.
        if let Err(e) = remove_tree(&self.run_dir) {
            errors.push(format!("cannot remove {}: {e}", self.run_dir.display()));
        }
        errors
    }

    /// Runs `remove` in a process group of its own, bounded; the group is killed after.
    fn remove_script(&self, script: &str) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        let log_path = self.run_dir.join("remove.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let err_log = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = std::process::Command::new("sh")
            .arg("-uc")
            .arg(script)
            .current_dir(&self.scratch)
            .env_clear()
            .envs(minimal_vars(std::env::vars_os()))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| format!("cannot run the remove script: {e}"))?;
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break None,
            }
        };
        kill_group(child.id());
        let _ = child.wait();
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!(
                "the remove script failed ({s}): {}",
                tail(&log_path, 5)
            )),
            None => Err(format!(
                "the remove script did not finish within {} s",
                REMOVE_TIMEOUT.as_secs()
            )),
        }
    }
}

impl Drop for Fault {
    /// A fault abandoned without [`Fault::remove`] (an error, a panic, a signal) is removed
    /// here, blocking.
    fn drop(&mut self) {
        for e in self.remove_now() {
            let _ = writeln_stderr(&format!("tether eval: while removing a fault: {e}"));
        }
    }
}

fn writeln_stderr(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    writeln!(std::io::stderr(), "{text}")
}

/// `remove_dir_all`, after making directories the fault left unwritable writable again.
fn remove_tree(dir: &Path) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if std::fs::remove_dir_all(dir).is_ok() {
        return Ok(());
    }
    fn open_up(dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(dir);
    std::fs::remove_dir_all(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(inject: &str, remove: Option<&str>) -> FaultSpec {
        FaultSpec {
            inject: inject.into(),
            remove: remove.map(str::to_owned),
            verify: None,
            timeout_secs: Some(10),
        }
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| {
                let after = t[t.rfind(')')? + 1..].to_owned();
                after.split_whitespace().next().map(|s| s != "Z")
            })
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn processes_and_files_of_the_fault_are_removed_on_drop_and_on_remove() {
        let tmp = tempfile::tempdir().expect("tmp");
        for explicit in [false, true] {
            let run = tmp.path().join(format!("run-{explicit}"));
            let mut fault = Fault::create(
                &run,
                &spec(
                    "sleep 600 & echo \"pid=$!\" >> \"$VARS\"; mkdir -p ro/x; chmod 0500 ro",
                    Some("echo removed > \"$SCRATCH/../removed-mark\""),
                ),
                &[],
            )
            .expect("create");
            let mut vars = Vars::new();
            fault.inject(&mut vars).await.expect("inject");
            let pid: u32 = vars.get("pid").and_then(|p| p.parse().ok()).expect("pid");
            assert!(alive(pid));
            assert_eq!(pgrp(pid), Some(fault.pgid()));
            if explicit {
                fault.remove().await.expect("remove");
            } else {
                drop(fault);
            }
            assert!(!alive(pid), "the fault's process outlived its removal");
            assert!(!run.exists(), "the run directory is left");
        }
    }

    #[tokio::test]
    async fn a_failing_inject_is_an_error_quoting_its_output_and_still_cleans_up() {
        let tmp = tempfile::tempdir().expect("tmp");
        let run = tmp.path().join("run");
        let mut fault = Fault::create(&run, &spec("echo half-way; sleep 600 & false", None), &[])
            .expect("create");
        let e = fault.inject(&mut Vars::new()).await.expect_err("fails");
        let e = format!("{e:#}");
        assert!(
            e.contains("inject script failed") && e.contains("half-way"),
            "{e}"
        );
        let pgid = fault.pgid();
        assert!(!group_members(pgid).is_empty());
        drop(fault);
        assert!(group_members(pgid).is_empty());
        assert!(!run.exists());
    }
}
