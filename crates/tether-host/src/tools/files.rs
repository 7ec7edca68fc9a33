//! Opening a file a model named, without ever blocking in open(2).
//!
//! open(2) of a FIFO waits for a writer, of a terminal or some devices for a carrier or the
//! device itself: a tool reading such a path would hang its thread for ever. So a tool
//! opens model-named paths only through [`open_regular`]: it checks the type first (symlinks
//! followed), opens with `O_NONBLOCK | O_NOCTTY` (so a path swapped for a FIFO or device
//! between the check and the open still cannot block) and checks the opened file again.
//! `O_NONBLOCK` stays set: it changes nothing for files on disk, and makes the few pseudo
//! files that would block on read (`/proc/kmsg`) answer `EAGAIN` instead.

use std::fs::{File, FileType, Metadata};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What a file type is called in messages: "a FIFO (named pipe)", "a directory", ….
pub fn describe(t: FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

fn not_regular(path: &Path, t: FileType) -> String {
    format!("{} is {}, not a regular file", path.display(), describe(t))
}

/// Why [`open_regular`] refused or failed: the message for the model.
#[derive(Debug)]
pub enum OpenError {
    /// The path is a directory, FIFO, socket or device.
    NotRegular(String),
    /// stat or open failed.
    Io(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::NotRegular(m) | OpenError::Io(m) => f.write_str(m),
        }
    }
}

/// Opens `path` for reading if it is a regular file; never blocks in open(2).
pub fn open_regular(path: &Path) -> Result<(File, Metadata), OpenError> {
    let before = std::fs::metadata(path)
        .map_err(|e| OpenError::Io(format!("cannot stat {}: {e}", path.display())))?;
    if !before.is_file() {
        return Err(OpenError::NotRegular(not_regular(path, before.file_type())));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| OpenError::Io(format!("cannot open {}: {e}", path.display())))?;
    let meta = file
        .metadata()
        .map_err(|e| OpenError::Io(format!("cannot stat {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(OpenError::NotRegular(not_regular(path, meta.file_type())));
    }
    Ok((file, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn opens_regular_files_and_refuses_the_rest_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ok.log");
        std::fs::write(&file, "hello").expect("write");
        let (mut f, meta) = open_regular(&file).expect("open");
        assert_eq!(meta.len(), 5);
        let mut text = String::new();
        f.read_to_string(&mut text).expect("read");
        assert_eq!(text, "hello");

        let fifo = dir.path().join("pipe");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("mkfifo")
                .success()
        );
        // A symlink is followed: the link to the FIFO is refused as a FIFO.
        std::os::unix::fs::symlink(&fifo, dir.path().join("link")).expect("symlink");
        let sock = dir.path().join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        for (path, kind) in [
            (fifo.clone(), "a FIFO (named pipe)"),
            (dir.path().join("link"), "a FIFO (named pipe)"),
            (sock, "a socket"),
            ("/dev/null".into(), "a character device"),
            (dir.path().to_path_buf(), "a directory"),
        ] {
            let err = open_regular(&path).expect_err("opened a non-regular file");
            assert!(matches!(err, OpenError::NotRegular(_)));
            assert_eq!(
                err.to_string(),
                format!("{} is {kind}, not a regular file", path.display())
            );
        }
        let missing = open_regular(&dir.path().join("missing")).expect_err("missing");
        assert!(
            matches!(&missing, OpenError::Io(m) if m.starts_with("cannot stat")),
            "{missing}"
        );
    }
}
