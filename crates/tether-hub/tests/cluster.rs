//! Replicas talking through a real PostgreSQL (the one `scripts/postgres.sh` started:
//! `TETHER_TEST_PG_URL`). Each test has a database of its own.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use tether_hub::alerts::Change;
use tether_hub::cluster::{CallError, CallHandler, Cluster, ClusterConfig, ClusterNote};
use tether_hub::store::PgStore;
use tether_hub::store::testing::TestDatabase;
use tether_proto::link::{Ack, LinkMessage, SessionNotice};

fn config(name: &str) -> ClusterConfig {
    ClusterConfig {
        lease: Duration::from_secs(3),
        name: name.into(),
        ..ClusterConfig::default()
    }
}

fn pg(db: &TestDatabase) -> tokio_postgres::Config {
    tokio_postgres::Config::from_str(&db.url).expect("test database URL")
}

async fn two(db: &TestDatabase) -> (Cluster, Cluster) {
    // The store's migrations create the cluster's tables.
    let settings = db.settings(Duration::from_secs(10));
    tokio::task::spawn_blocking(move || PgStore::connect(settings).map(drop))
        .await
        .expect("join")
        .expect("the store migrates the database");
    let a = Cluster::join(pg(db), config("a")).await.expect("a joins");
    let b = Cluster::join(pg(db), config("b")).await.expect("b joins");
    (a, b)
}

/// The next note that is not a resync, within 10 s.
async fn next_note(
    rx: &mut tokio::sync::broadcast::Receiver<Arc<ClusterNote>>,
) -> Arc<ClusterNote> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = rx.recv().await.expect("notes open");
            if *n != ClusterNote::Resync {
                return n;
            }
        }
    })
    .await
    .expect("a note within 10 s")
}

#[tokio::test]
async fn notes_reach_every_replica_in_order() {
    let Some(db) = TestDatabase::create("notes_reach_every_replica_in_order") else {
        return;
    };
    let (a, b) = two(&db).await;
    let mut at_b = b.notes();
    for seq in 1..=50u64 {
        a.publish(&ClusterNote::Events {
            session_id: "s1".into(),
            seq,
        })
        .await
        .expect("publish");
    }
    a.publish(&ClusterNote::Alert {
        alert_id: 7,
        change: Change::Fired,
        previous: None,
    })
    .await
    .expect("publish");
    for seq in 1..=50u64 {
        assert_eq!(
            *next_note(&mut at_b).await,
            ClusterNote::Events {
                session_id: "s1".into(),
                seq
            }
        );
    }
    assert_eq!(
        *next_note(&mut at_b).await,
        ClusterNote::Alert {
            alert_id: 7,
            change: Change::Fired,
            previous: None
        }
    );
    a.leave().await;
    b.leave().await;
}

#[tokio::test]
async fn the_newest_hold_wins_and_a_lapsed_lease_holds_nothing() {
    let Some(db) = TestDatabase::create("the_newest_hold_wins_and_a_lapsed_lease_holds_nothing")
    else {
        return;
    };
    let (a, b) = two(&db).await;
    let mut at_a = a.notes();
    a.hold("agent-1", 1).await.expect("hold");
    assert_eq!(
        b.holder_of("agent-1").await.expect("query").as_deref(),
        Some(a.replica_id())
    );
    // The agent reconnects to B: A hears it moved.
    b.hold("agent-1", 9).await.expect("hold");
    loop {
        if let ClusterNote::Held { agent_id, replica } = &*next_note(&mut at_a).await
            && agent_id == "agent-1"
            && replica == b.replica_id()
        {
            break;
        }
    }
    // A's late release of its old connection does not undo B's hold.
    a.release("agent-1", 1).await.expect("release");
    assert_eq!(
        a.holder_of("agent-1").await.expect("query").as_deref(),
        Some(b.replica_id())
    );
    // B's lease lapses (as when it is killed): nobody holds the agent.
    db.execute(&format!(
        "UPDATE hub_replicas SET lease_until_ms = 0 WHERE replica_id = '{}'",
        b.replica_id()
    ));
    assert_eq!(a.holder_of("agent-1").await.expect("query"), None);
    assert!(a.held_agents().await.expect("query").is_empty());
    assert_eq!(a.replicas().await.expect("query").len(), 1);
    a.leave().await;
    b.leave().await;
}

/// Answers calls for `agent-1` (echoing the notice as the ack's result); knows no other.
struct Holder;

impl CallHandler for Holder {
    fn handle(
        &self,
        agent_id: String,
        message: LinkMessage,
        want_ack: bool,
        timeout: Duration,
    ) -> futures_util::future::BoxFuture<'static, Result<Option<Ack>, CallError>> {
        Box::pin(async move {
            match (agent_id.as_str(), message) {
                ("agent-1", LinkMessage::SessionNotice(n)) if n.message == "hang" => {
                    tokio::time::sleep(timeout + Duration::from_secs(5)).await;
                    Ok(None)
                }
                ("agent-1", LinkMessage::SessionNotice(n)) => Ok(want_ack.then(|| Ack {
                    ok: true,
                    result: Some(serde_json::json!({"echo": n.message})),
                    ..Ack::default()
                })),
                _ => Err(CallError::Gone(format!("{agent_id} is not here"))),
            }
        })
    }
}

fn notice(text: &str) -> LinkMessage {
    LinkMessage::SessionNotice(SessionNotice {
        session_id: "s1".into(),
        level: "info".into(),
        message: text.into(),
    })
}

#[tokio::test]
async fn a_call_reaches_the_holder_and_its_errors_are_typed() {
    let Some(db) = TestDatabase::create("a_call_reaches_the_holder_and_its_errors_are_typed")
    else {
        return;
    };
    let (a, b) = two(&db).await;
    a.set_handler(Arc::new(Holder));
    let t = Duration::from_secs(5);
    let ack = b
        .call(a.replica_id(), "agent-1", notice("hello"), true, t)
        .await
        .expect("the call is answered")
        .expect("an ack");
    assert_eq!(ack.result, Some(serde_json::json!({"echo": "hello"})));
    assert_eq!(
        b.call(a.replica_id(), "agent-1", notice("x"), false, t)
            .await,
        Ok(None)
    );
    assert!(matches!(
        b.call(a.replica_id(), "agent-2", notice("x"), true, t)
            .await,
        Err(CallError::Gone(_))
    ));
    // B serves nothing: a call to it is `Gone`, not a timeout.
    assert!(matches!(
        a.call(b.replica_id(), "agent-1", notice("x"), true, t)
            .await,
        Err(CallError::Gone(_))
    ));
    // An agent that never answers: a timeout, and the call's row is gone afterwards.
    let slow = b
        .call(
            a.replica_id(),
            "agent-1",
            notice("hang"),
            true,
            Duration::from_millis(300),
        )
        .await;
    assert!(matches!(slow, Err(CallError::Timeout(_))), "{slow:?}");
    // Several calls at once, each gets its own answer.
    let calls = (0..20).map(|i| {
        let b = b.clone();
        let to = a.replica_id().to_owned();
        async move {
            b.call(&to, "agent-1", notice(&format!("m{i}")), true, t)
                .await
                .map(|ack| ack.and_then(|a| a.result))
        }
    });
    let results = futures_util::future::join_all(calls).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r, Ok(Some(serde_json::json!({"echo": format!("m{i}")}))));
    }
    a.leave().await;
    b.leave().await;
}

#[tokio::test]
async fn a_dropped_database_connection_is_re_established_with_a_resync() {
    let Some(db) =
        TestDatabase::create("a_dropped_database_connection_is_re_established_with_a_resync")
    else {
        return;
    };
    let (a, b) = two(&db).await;
    let mut at_a = a.notes();
    // The server drops every connection of A's (and B's): both reconnect.
    db.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()");
    let resynced = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if *at_a.recv().await.expect("notes open") == ClusterNote::Resync {
                return;
            }
        }
    })
    .await;
    assert!(resynced.is_ok(), "A resyncs after reconnecting");
    // Notes flow again (B may still be reconnecting: retry its publish).
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if b.publish(&ClusterNote::Events {
                session_id: "after".into(),
                seq: 1,
            })
            .await
            .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("B publishes again");
    assert_eq!(
        *next_note(&mut at_a).await,
        ClusterNote::Events {
            session_id: "after".into(),
            seq: 1
        }
    );
    a.leave().await;
    b.leave().await;
}

/// A database that stops answering (a table locked by someone else) holds no caller for
/// longer than `query_timeout`: the lookup behind every operator op fails with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_database_call_is_bounded() {
    let Some(db) = TestDatabase::create("a_stalled_database_call_is_bounded") else {
        return;
    };
    let settings = db.settings(Duration::from_secs(10));
    tokio::task::spawn_blocking(move || PgStore::connect(settings).map(drop))
        .await
        .expect("join")
        .expect("the store migrates the database");
    let a = Cluster::join(
        pg(&db),
        ClusterConfig {
            query_timeout: Duration::from_millis(300),
            ..config("a")
        },
    )
    .await
    .expect("a joins");
    let lock = db.hold_lock("LOCK TABLE agent_holders IN ACCESS EXCLUSIVE MODE");
    let looked_up = tokio::time::timeout(Duration::from_secs(30), a.holder_of("agent-1"))
        .await
        .expect("the lookup returned instead of waiting on the lock");
    let e = looked_up.expect_err("a lookup that could not run is an error");
    assert!(e.to_string().contains("no answer within"), "{e}");
    drop(lock);
    assert_eq!(a.holder_of("agent-1").await.expect("works again"), None);
    a.leave().await;
}
