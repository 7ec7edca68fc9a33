//! The private mount namespace `tether eval` runs in, so a scenario can mount a small tmpfs
//! without root and without touching the host's mount table.
//!
//! `tether eval` re-executes itself (same pid, same arguments) under
//! `unshare --map-current-user --mount --keep-caps`: a user namespace in which the user is
//! still itself, holding capabilities over that namespace only, and a mount namespace of its
//! own. Every mount a fault makes there is invisible outside and disappears with the process,
//! even one killed with SIGKILL. The diagnostic tools run in the same process, so they see
//! exactly the mounts the faults made.
//!
//! When user namespaces are not available, eval runs without one, and the scenarios that need
//! a mount cannot be set up (an error naming why).

use std::ffi::OsString;

/// Set in the environment of the re-executed process.
pub const ENV: &str = "TETHER_EVAL_MOUNT_NS";

/// The `unshare` arguments, before the program.
const UNSHARE_ARGS: &[&str] = &["--map-current-user", "--mount", "--keep-caps"];

/// Whether this process runs in the private mount namespace.
pub fn active() -> bool {
    std::env::var_os(ENV).is_some_and(|v| v == "1")
}

/// Why the namespace is not available here, when a probe says so (`None`: it is).
pub fn unavailable() -> Option<String> {
    let probe = std::process::Command::new("unshare")
        .args(UNSHARE_ARGS)
        .arg("true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output();
    match probe {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`unshare {} true` failed: {}",
            UNSHARE_ARGS.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run unshare (util-linux): {e}")),
    }
}

/// Replaces this process by itself inside the private namespace (see the module
/// documentation). Returns only when that is not possible, with the reason; the caller goes
/// on without it.
pub fn reexec(args: &[OsString]) -> String {
    use std::os::unix::process::CommandExt;
    if let Some(why) = unavailable() {
        return why;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return format!("cannot find this program's path: {e}"),
    };
    let e = std::process::Command::new("unshare")
        .args(UNSHARE_ARGS)
        .arg("--")
        .arg(exe)
        .args(args.iter().skip(1))
        .env(ENV, "1")
        .exec();
    format!("cannot run unshare: {e}")
}
