//! The hub's view of one session and the operators attached to it.

use super::v1::V1Track;
use crate::hub::Metrics;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use tether_mux::outbound::{OutItem, Outbound};
use tether_proto::{
    ClientInfo, EventBody, Mode, PendingPermission, Policy, QueuedInput, Seq, SessionState, TurnRef,
};
use tokio::sync::Mutex;

/// An event accepted into a session but not yet committed to the store: applied to the view
/// (so what follows is judged against it), not yet shown to anyone.
pub(super) struct Unstored {
    pub(super) seq: Seq,
    pub(super) frame: String,
    pub(super) body: EventBody,
}

/// The hub's view of a session, rebuilt from its events.
pub(super) struct Shadow {
    pub(super) state: SessionState,
    /// The last committed event (what operators have been sent, what replays reach).
    pub(super) last_seq: Seq,
    pub(super) first_seq: Seq,
    pub(super) turn: Option<TurnRef>,
    pub(super) pending: Vec<PendingPermission>,
    pub(super) clients: Vec<ClientInfo>,
    pub(super) queued: Vec<QueuedInput>,
    /// Operators attached at the hub: connection id, who, where their frames go.
    pub(super) attached: Vec<(u64, ClientInfo, Outbound)>,
    pub(super) v1: V1Track,
    /// `session_closed` is accepted: nothing follows it.
    pub(super) finished: bool,
    /// Accepted events the store has not taken yet, in seq order: committed (then shown) by
    /// the next flush that succeeds.
    pub(super) unstored: Vec<Unstored>,
    /// Why the last commit failed, while events wait in `unstored` (operators were sent
    /// `log_unavailable`; `log_restored` follows the commit that succeeds).
    pub(super) degraded: Option<String>,
}

impl Shadow {
    pub(super) fn new(state: SessionState, last_seq: Seq) -> Shadow {
        Shadow {
            state,
            last_seq,
            first_seq: 1,
            turn: None,
            pending: Vec::new(),
            clients: Vec::new(),
            queued: Vec::new(),
            attached: Vec::new(),
            v1: V1Track::default(),
            finished: state == SessionState::Closed,
            unstored: Vec::new(),
            degraded: None,
        }
    }

    /// The highest seq accepted (committed or waiting to be).
    pub(super) fn highest_seq(&self) -> Seq {
        self.unstored.last().map_or(self.last_seq, |u| u.seq)
    }

    /// Folds an accepted event into the view (`last_seq` moves only on commit).
    pub(super) fn apply(&mut self, body: &EventBody) {
        match body {
            EventBody::SessionState { state } => self.state = *state,
            EventBody::ClientAttached { client, .. }
                if !self.clients.iter().any(|c| c.client_id == client.client_id) =>
            {
                self.clients.push(client.clone());
            }
            EventBody::ClientDetached { client, .. } => {
                self.clients.retain(|c| c.client_id != client.client_id)
            }
            EventBody::TurnStarted {
                turn_id,
                originator,
                input_id,
                ..
            } => {
                self.turn = Some(TurnRef {
                    turn_id: turn_id.clone(),
                    originator: originator.clone(),
                });
                if let Some(id) = input_id {
                    self.queued.retain(|q| &q.input_id != id);
                }
            }
            EventBody::TurnEnded { .. } => self.turn = None,
            EventBody::PermissionRequested { .. } => {
                self.pending.extend(PendingPermission::requested_by(body))
            }
            EventBody::PermissionResolved { call_id, .. } => {
                self.pending.retain(|p| &p.call_id != call_id)
            }
            EventBody::SessionClosed { .. } => {
                self.finished = true;
                self.state = SessionState::Closed;
                self.turn = None;
                self.pending.clear();
            }
            _ => {}
        }
    }

    /// Sends a frame to every attached operator; drops those whose queue overflowed.
    pub(super) fn broadcast(&mut self, frame: &Bytes, metrics: &Metrics) -> Vec<(u64, ClientInfo)> {
        let mut gone = Vec::new();
        self.attached.retain(|(id, client, out)| {
            let ok = out.push(OutItem::Frame(frame.clone()));
            if !ok {
                if out.is_evicted() {
                    metrics.operator_evictions.fetch_add(1, Ordering::Relaxed);
                }
                gone.push((*id, client.clone()));
            }
            ok
        });
        gone
    }
}

/// One hub session.
pub struct HubSession {
    pub id: String,
    pub agent_id: String,
    pub hostname: String,
    pub mode: Mode,
    pub proto: u32,
    pub title: Option<String>,
    pub policy: Policy,
    pub created_at: String,
    pub created_by: ClientInfo,
    /// The alert it diagnoses (`params.alert_id` at creation; `None` once read back).
    pub alert_id: Option<i64>,
    /// `params.alert_key`: what a version-1 agent's report is filed under.
    pub(super) alert_key: String,
    /// The agent connection the session runs on (0: read back from the store).
    pub(super) conn_id: u64,
    /// The session's ordering point. Whoever holds it decides the next events, commits them
    /// to the store, and only then sends them to the attached operators, so every operator
    /// and every replay sees one order. It is held across store calls (the commit is part of
    /// the order) but never while waiting on an agent or an operator: frames to an agent go
    /// out with `try_send` under it, requests that wait for an agent's `ack` are made after
    /// it is released, and operators' queues never block (a full one is evicted).
    pub(super) shadow: Mutex<Shadow>,
}
