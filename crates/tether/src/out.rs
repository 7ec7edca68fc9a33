//! Writing to stdout without panicking when its reader has gone.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe (`tether sessions --json | head -1`)
//! fails with `BrokenPipe`, and `println!` turns that into a panic. Everything the CLI prints
//! to stdout goes through [`print`] (the [`outln!`] macro) instead: a closed stdout becomes the
//! [`StdoutClosed`] error, which ends the command quietly as Unix tools do (with the exit code
//! computed so far).

use std::io::Write;

/// Stdout's reader went away: stop printing and exit quietly.
#[derive(Debug)]
pub struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Maps a stdout write error: a closed pipe is [`StdoutClosed`], anything else (a full disk)
/// is reported.
pub fn write_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::anyhow!("cannot write to stdout: {e}")
    }
}

/// Writes to stdout and flushes.
pub fn print(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(write_error)
}

/// True when `e` (or what it wraps) is [`StdoutClosed`].
pub fn is_closed(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<StdoutClosed>().is_some())
}

/// `println!` that returns `anyhow::Result<()>` instead of panicking on a closed stdout.
macro_rules! outln {
    () => {
        $crate::out::print(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::out::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
