//! Revoking an agent's credential cuts its live link (issue 9, finding 10): before, the
//! revoked agent stayed connected until its next reconnect. The revocation is made the way
//! `tether hub token revoke` makes it: by another process writing the store directly.

mod common;

use common::*;
use tether_hub::store::{SqliteStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_credential_closes_its_agents_link_at_once() {
    let hub = TestHub::start().await;
    let token = hub.create_token("doomed").await;
    let mut agent = V2Agent::new(&hub.agent_url(), &token, &shell_script(), None);
    agent.start_link();
    agent.wait_registered().await;
    hub.wait_connected(&agent.agent_id, true).await;

    // Another process (the CLI) revokes it through its own connection to the store.
    let cli = SqliteStore::open(&hub.dir.path().join("hub.db")).expect("open store");
    assert_eq!(cli.revoke_token("doomed").expect("revoke"), 1);

    hub.wait_connected(&agent.agent_id, false).await;
    let status = agent
        .wait_status("told why", |s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("revoked"))
        })
        .await;
    assert_ne!(status.state, "registered", "{status:?}");
    agent.stop().await;
    hub.stop().await;
}
