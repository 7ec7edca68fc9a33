//! Child processes: the one place tether signals a process group (shell tool, MCP servers,
//! the exec check and the exec notifier all spawn their child as a group leader).

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
