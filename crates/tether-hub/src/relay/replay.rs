//! Replays read the hub's store.

use crate::store::HubStore;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use tether_mux::outbound::{ReplaySource, StoredEvent};
use tether_proto::{Seq, SessionId};

/// Replays read the hub's store.
pub struct StoreReplay {
    pub(super) store: HubStore,
}

impl ReplaySource for StoreReplay {
    fn read_range<'a>(
        &'a self,
        session_id: &'a SessionId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<StoredEvent>, String>> {
        Box::pin(async move {
            let id = session_id.to_string();
            let rows = self
                .store
                .run(move |s| s.read_events(&id, from, to, limit))
                .await
                .map_err(|e| e.to_string())?;
            Ok(rows
                .into_iter()
                .map(|(seq, frame)| StoredEvent {
                    seq,
                    frame: Bytes::from(frame),
                })
                .collect())
        })
    }
}
