//! The hub's state is its user's only (issue 9, finding 9): the state directory was 0755 and
//! `hub.db` 0644. A new state directory is 0700 with its files 0600; a loose existing one is
//! tightened at start.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_state_is_private_and_loose_state_is_tightened() {
    let hub = TestHub::start().await;
    // A write, so the WAL files exist too.
    hub.create_token("perm-check").await;
    let dir = hub.dir.clone();
    let addr = hub.addr;
    let check = |dir: &Path| {
        assert_eq!(mode(dir), 0o700, "state dir");
        let mut files = 0;
        for entry in std::fs::read_dir(dir).expect("read") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_file() {
                files += 1;
                assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
            }
        }
        assert!(files >= 1, "hub.db exists");
    };
    check(dir.path());
    hub.stop().await;

    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::set_permissions(
        dir.path().join("hub.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let hub = TestHub::start_in(dir.clone(), addr, |_| {}).await;
    check(dir.path());
    hub.stop().await;
}
