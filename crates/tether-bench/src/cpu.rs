//! CPU time used by this process (all threads), to report CPU cost per delivered frame: on a
//! shared machine that is steadier than wall-clock throughput.

/// User plus system CPU seconds used by the process so far; 0 when unavailable.
#[allow(unsafe_code)]
pub fn process_cpu_s() -> f64 {
    // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `getrusage` only writes the `rusage` we own and pass by valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}
