//! Who may read what tether keeps on disk: only its own user.
//!
//! State directories hold transcripts, tool output, alert history and credentials
//! (`events.db` keeps every event a session produced), so directories are 0700 and files
//! 0600. New files are created that way ([`create_private`] before SQLite opens a database,
//! whose `-wal` and `-shm` files then take the same mode); existing ones that others can
//! read are tightened, and the caller logs the warning returned.

use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode bits that let anyone but the owner in.
const OTHERS: u32 = 0o077;

/// Makes `dir` (and missing parents) with mode 0700, or tightens an existing one that group
/// or others can enter. Returns a warning when it tightened something.
pub fn private_dir(dir: &Path) -> io::Result<Option<String>> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        return Ok(None);
    }
    tighten(dir, 0o700)
}

/// Creates `path` empty with mode 0600 if it does not exist (so whatever opens it next keeps
/// that mode), or tightens an existing one. Returns a warning when it tightened something.
pub fn create_private(path: &Path) -> io::Result<Option<String>> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => tighten(path, 0o600),
        Err(e) => Err(e),
    }
}

/// Tightens every regular file directly in `dir` that group or others can read or write
/// (databases and their `-wal`/`-shm`, logs, ids). Returns one warning per file changed.
pub fn tighten_files_in(dir: &Path) -> io::Result<Vec<String>> {
    let mut warnings = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file()
            && let Some(w) = tighten(&entry.path(), 0o600)?
        {
            warnings.push(w);
        }
    }
    Ok(warnings)
}

fn tighten(path: &Path, mode: u32) -> io::Result<Option<String>> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if current & OTHERS == 0 {
        return Ok(None);
    }
    let tightened = current & !OTHERS & 0o700 | (mode & 0o700 & current);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened))?;
    Ok(Some(format!(
        "{} was readable by other users (mode {current:04o}); tightened to {tightened:04o}",
        path.display()
    )))
}

/// From now on, files and directories this process creates are its user's only (umask 077).
/// Called once at the start of `tether agent`, `hub` and `up`.
#[allow(unsafe_code)]
pub fn restrict_umask() {
    // SAFETY: umask(2) only sets the process's file mode creation mask; it cannot fail and
    // touches no memory.
    unsafe {
        libc::umask(0o077);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn new_state_is_private_and_loose_state_is_tightened() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("a/b");
        assert_eq!(private_dir(&dir).expect("dir"), None);
        assert_eq!(mode(&dir), 0o700);
        let db = dir.join("events.db");
        assert_eq!(create_private(&db).expect("file"), None);
        assert_eq!(mode(&db), 0o600);

        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let w = private_dir(&dir).expect("dir").expect("a warning");
        assert!(w.contains("0755") && w.contains("0700"), "{w}");
        assert_eq!(mode(&dir), 0o700);
        let w = tighten_files_in(&dir).expect("files");
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(mode(&db), 0o600);
        // Already private: nothing to say.
        assert!(tighten_files_in(&dir).expect("files").is_empty());
        assert_eq!(create_private(&db).expect("file"), None);
    }
}
