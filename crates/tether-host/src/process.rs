//! Child processes: the one place tether signals a process group (shell tool, MCP servers,
//! the exec check and the exec notifier all spawn their child as a group leader), and the
//! environment children start with.
//!
//! The agent's environment holds secrets (`OPENAI_API_KEY`, the tokens `token_env` names),
//! so a child gets only [`MINIMAL_ENV`] from it ([`minimal_env`]), plus what its own config
//! adds. The exec check and the exec notifier can opt out with `inherit_env = true`.

use std::ffi::OsString;

/// The variables a child takes from the agent's environment (those that are set).
pub const MINIMAL_ENV: &[&str] = &[
    "PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TERM", "TZ", "USER", "LOGNAME", "SHELL",
    "TMPDIR",
];

/// The [`MINIMAL_ENV`] variables of `parent`, in its order.
pub fn minimal_vars(
    parent: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    parent
        .into_iter()
        .filter(|(k, _)| MINIMAL_ENV.iter().any(|m| k == m))
        .collect()
}

/// Clears `cmd`'s environment and gives it the [`MINIMAL_ENV`] variables of the agent's
/// own. Add a child's configured variables after this.
pub fn minimal_env(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    cmd.env_clear().envs(minimal_vars(std::env::vars_os()))
}

/// Sends SIGKILL to the process group led by `pid`, a child spawned with `process_group(0)`
/// and not yet reaped. Ids 0 and 1 are refused: `kill(-1)` would signal every process.
#[allow(unsafe_code)]
pub fn kill_group(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return;
    }
    // SAFETY: kill(2) takes two integers and reads or writes no memory of this process. The
    // group is the child's own (it was spawned as a group leader and has not been reaped, or
    // members of its group still exist), so the id cannot name an unrelated group.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_minimal_variables_are_kept() {
        let parent = [
            ("PATH", "/usr/bin"),
            ("OPENAI_API_KEY", "secret"),
            ("HOME", "/root"),
            ("TETHER_HUB_TOKEN", "secret"),
            ("LC_CTYPE", "C.UTF-8"),
            ("PATHX", "no"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let kept: Vec<(String, String)> = minimal_vars(parent)
            .into_iter()
            .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
            .collect();
        assert_eq!(
            kept,
            [
                ("PATH", "/usr/bin"),
                ("HOME", "/root"),
                ("LC_CTYPE", "C.UTF-8")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }
}
