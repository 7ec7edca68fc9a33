//! Operator ops on hub sessions: create, attach, detach, input, answer, cancel, close, list.

use super::shadow::{HubSession, Shadow};
use super::v1::{first_text, v1_descriptions, v1_string_params};
use super::{Relay, ack_error, agent_error, err, now};
use crate::agent_conn::AgentRef;
use crate::store::{SessionRecord, now_ms, rfc3339_ms};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tether_host::sync::lock;
use tether_mux::outbound::{OutItem, Outbound};
use tether_proto::link::{
    LinkMessage, SessionAnswer, SessionAttach, SessionCancel, SessionDetach, SessionInput,
    SessionStart,
};
use tether_proto::{
    Class, ClientInfo, Control, ErrorBody, EventBody, InputAccepted, InputId, Mode, Policy,
    QueuedInput, Reason, ReplyFrame, RequestId, Scope, Seq, SessionId, SessionState,
    SessionSummary, Snapshot, StopReason,
};
use tokio::sync::Mutex;

impl Relay {
    // ---- operator ops ----------------------------------------------------------------

    /// `session.create` with `agent_id`.
    pub async fn create(
        &self,
        creator: &ClientInfo,
        create: tether_proto::SessionCreate,
    ) -> Result<String, ErrorBody> {
        if creator.class == Class::Observer {
            return Err(err(Reason::Forbidden, "observers cannot create sessions"));
        }
        // The agent checks it as well, but a version-1 agent is never told the operator's
        // class.
        if tether_mux::arbitration::may_choose_policy(
            creator.class,
            create.policy.unwrap_or(Policy::Human),
        )
        .is_err()
        {
            return Err(err(
                Reason::Forbidden,
                format!(
                    "only a human-class operator may choose policy `any` ({} is {}-class)",
                    creator.name, creator.class
                ),
            ));
        }
        let Some(agent_id) = create.agent_id.clone().filter(|a| !a.is_empty()) else {
            return Err(err(
                Reason::BadRequest,
                "field `agent_id`: required at the hub (which agent should run the session?)",
            ));
        };
        let Some(agent) = self.inner.agents.find(&agent_id).await else {
            return Err(err(
                Reason::BadRequest,
                format!("field `agent_id`: agent {agent_id} is not connected"),
            ));
        };
        if let AgentRef::Remote(r) = &agent
            && r.proto < 2
        {
            return Err(v1_elsewhere(&agent_id));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let policy = create.policy.unwrap_or(Policy::Human);
        let mut params = create.params.clone().unwrap_or_default();
        // `params.alert_id`: a diagnosis of a stored alert of this agent, linked to it (the
        // alert's `diagnoses`). The hub's, not the agent's: it is not passed on.
        let alert_id = match params.remove("alert_id") {
            None => None,
            Some(v) => match v.as_i64() {
                Some(id) => Some(id),
                None => {
                    return Err(err(
                        Reason::BadRequest,
                        "field `params.alert_id`: not an alert id (an `alert_id` from alerts.list)",
                    ));
                }
            },
        };
        if let Some(aid) = alert_id {
            let now = self.inner.clock.now_ms();
            let alert = self
                .inner
                .store
                .run(move |s| s.get_alert(aid, now))
                .await
                .map_err(|e| err(Reason::Internal, e.to_string()))?;
            match alert {
                Some(a) if a.agent_id.as_deref() == Some(agent_id.as_str()) => {}
                Some(_) => {
                    return Err(err(
                        Reason::BadRequest,
                        format!(
                            "field `params.alert_id`: alert {aid} is not about agent {agent_id}"
                        ),
                    ));
                }
                None => {
                    return Err(err(
                        Reason::BadRequest,
                        format!("field `params.alert_id`: no alert {aid}"),
                    ));
                }
            }
        }
        if agent.proto() < 2 {
            if create.mode == Mode::Diagnose {
                // catpaw reads the alert text from `descriptions` only.
                v1_descriptions(&mut params);
            }
            // catpaw's params are a map of strings: anything else would make it refuse the
            // whole `session_start` as an invalid payload.
            v1_string_params(&mut params);
        }
        // One title, the same at the hub and (version 2) at the agent.
        let title = create
            .title
            .clone()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| format!("{} by {}", create.mode, creator.name));
        let v2 = agent.proto() >= 2;
        let start = SessionStart {
            session_id: id.clone(),
            session_type: create.mode.as_str().to_owned(),
            user_name: creator.name.clone(),
            params: params.clone(),
            class: v2.then(|| creator.class.as_str().to_owned()),
            policy: v2.then(|| policy.as_str().to_owned()),
            title: v2.then(|| title.clone()),
            client_id: v2.then(|| creator.client_id.to_string()),
        };
        // Registered before the agent's first event can arrive.
        let session = Arc::new(HubSession {
            id: id.clone(),
            agent_id: agent_id.clone(),
            hostname: agent.hostname().to_owned(),
            mode: create.mode,
            proto: agent.proto(),
            title: Some(title.clone()),
            policy,
            created_at: now(),
            created_by: creator.clone(),
            alert_id,
            alert_key: params
                .get("alert_key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            conn_id: agent.conn_id(),
            shadow: Mutex::new({
                let mut shadow = Shadow::new(SessionState::Idle, 0);
                shadow.v1.opening = agent.proto() < 2;
                shadow
            }),
        });
        let record = SessionRecord {
            session_id: id.clone(),
            agent_id: agent_id.clone(),
            mode: create.mode.as_str().to_owned(),
            title: Some(title),
            policy: policy.as_str().to_owned(),
            state: "idle".into(),
            created_at: rfc3339_ms(now_ms()),
            created_by: creator.name.clone(),
            proto: agent.proto(),
            params: Value::Object(params.clone()),
            last_seq: 0,
        };
        self.inner
            .store
            .run(move |s| s.insert_session(&record))
            .await
            .map_err(|e| err(Reason::Internal, e.to_string()))?;
        if let Some(aid) = alert_id {
            let sid = id.clone();
            let now = self.inner.clock.now_ms();
            match self
                .inner
                .store
                .run(move |s| s.link_alert_session(aid, &sid, now))
                .await
            {
                Ok(Some(change)) => self.announce(change),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(alert_id = aid, error = %e, "cannot link a session to its alert")
                }
            }
        }
        {
            let mut map = lock(&self.inner.sessions);
            map.insert(id.clone(), session.clone());
        }
        let ack = agent
            .request(LinkMessage::SessionStart(start), self.agent_timeout())
            .await;
        let refused = match ack {
            Ok(a) if a.ok => None,
            Ok(a) => {
                let why = a.error.unwrap_or_else(|| "refused".into());
                let reason = if why == tether_proto::link::refusal::MAX_CONCURRENT {
                    Reason::Overloaded
                } else {
                    Reason::BadRequest
                };
                let error = err(reason, format!("agent {agent_id}: {why}"));
                Some((why, error))
            }
            Err(e) => Some((e.to_string(), agent_error(&agent_id, e))),
        };
        if let Some((why, error)) = refused {
            let mut shadow = session.shadow.lock().await;
            shadow.v1.opening = false;
            shadow.v1.early.clear();
            self.publish(
                &session,
                &mut shadow,
                EventBody::SessionClosed {
                    reason: format!("the agent refused the session: {why}"),
                },
            )
            .await;
            return Err(error);
        }
        self.inner
            .metrics
            .sessions_created
            .fetch_add(1, Ordering::Relaxed);
        if agent.proto() < 2 {
            // The hub runs the event stream of a version-1 session itself.
            let mut shadow = session.shadow.lock().await;
            self.publish(
                &session,
                &mut shadow,
                EventBody::SessionState {
                    state: SessionState::Idle,
                },
            )
            .await;
            let first = match create.mode {
                Mode::Chat => params
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                Mode::Inspect | Mode::Diagnose => Some(first_text(create.mode, &params)),
            };
            if let Some(text) = first {
                self.v1_start_turn(&session, &mut shadow, creator.clone(), text, None)
                    .await;
            }
            // What the agent sent while the session was opening, in arrival order.
            shadow.v1.opening = false;
            for early in std::mem::take(&mut shadow.v1.early) {
                self.apply_v1(&session, &mut shadow, early).await;
            }
        }
        Ok(id)
    }

    /// `attach`: replies with the snapshot, queues the replay, then live events. Whether the
    /// attach succeeded (the reply was the snapshot).
    #[allow(clippy::too_many_arguments)]
    pub async fn attach(
        &self,
        client: &ClientInfo,
        conn_id: u64,
        out: &Outbound,
        re: RequestId,
        session_id: &str,
        after_seq: Option<Seq>,
    ) -> bool {
        let Some(session) = self.find(session_id).await else {
            out.push_frame(
                ReplyFrame::err(
                    Some(re),
                    err(Reason::UnknownSession, format!("no session {session_id}")),
                )
                .encode(),
            );
            return false;
        };
        if session.proto < 2
            && let Some(AgentRef::Remote(_)) = self.inner.agents.find(&session.agent_id).await
        {
            out.push_frame(ReplyFrame::err(Some(re), v1_elsewhere(&session.agent_id)).encode());
            return false;
        }
        {
            let mut shadow = session.shadow.lock().await;
            if let Some(after) = after_seq
                && after > shadow.last_seq
            {
                out.push_frame(
                    ReplyFrame::err(
                        Some(re),
                        err(
                            Reason::BadRequest,
                            format!(
                                "after_seq {after} is beyond the session's last event ({})",
                                shadow.last_seq
                            ),
                        ),
                    )
                    .encode(),
                );
                return false;
            }
            let snapshot = Snapshot {
                session_id: SessionId(session.id.clone()),
                mode: session.mode,
                state: shadow.state,
                title: session.title.clone(),
                policy: session.policy,
                turn: shadow.turn.clone(),
                pending_permissions: shadow.pending.clone(),
                clients: shadow.clients.clone(),
                queued: shadow.queued.clone(),
                queued_count: shadow.queued.len(),
                last_seq: shadow.last_seq,
                first_seq: shadow.first_seq,
            };
            out.push_frame(
                ReplyFrame::ok(
                    re,
                    json!({"snapshot": snapshot, "agent_id": session.agent_id}),
                )
                .encode(),
            );
            if let Some(after) = after_seq {
                if after < shadow.last_seq {
                    out.push(OutItem::Replay {
                        session_id: SessionId(session.id.clone()),
                        from: after + 1,
                        to: shadow.last_seq,
                    });
                } else {
                    out.push_frame(
                        Control::ReplayComplete {
                            session_id: SessionId(session.id.clone()),
                            last_seq: shadow.last_seq,
                        }
                        .encode(),
                    );
                }
            }
            if shadow.state == SessionState::Closed
                || shadow.attached.iter().any(|(id, _, _)| *id == conn_id)
            {
                return true;
            }
            shadow.attached.push((conn_id, client.clone(), out.clone()));
            if session.proto < 2 {
                self.publish(
                    &session,
                    &mut shadow,
                    EventBody::ClientAttached {
                        client: client.clone(),
                        reason: None,
                    },
                )
                .await;
                return true;
            }
        }
        // Version 2: the agent learns the operator is present (and may answer prompts).
        if let Some(agent) = self.inner.agents.find(&session.agent_id).await {
            let msg = user_attach(&session.id, client);
            let timeout = self.agent_timeout();
            tokio::spawn(async move {
                let _ = agent.request(msg, timeout).await;
            });
        }
        true
    }

    /// Removes an operator from a session (explicitly, or because its connection went).
    pub async fn detach(
        &self,
        client: &ClientInfo,
        conn_id: u64,
        session_id: &str,
    ) -> Result<(), ErrorBody> {
        let Some(session) = self.find(session_id).await else {
            return Err(err(
                Reason::UnknownSession,
                format!("no session {session_id}"),
            ));
        };
        let was = {
            let mut shadow = session.shadow.lock().await;
            let before = shadow.attached.len();
            shadow.attached.retain(|(id, _, _)| *id != conn_id);
            let was = shadow.attached.len() != before;
            if was && session.proto < 2 && shadow.state != SessionState::Closed {
                self.publish(
                    &session,
                    &mut shadow,
                    EventBody::ClientDetached {
                        client: client.clone(),
                        reason: None,
                    },
                )
                .await;
            }
            was
        };
        // Each operator connection is a user of its own at the agent.
        if was
            && session.proto >= 2
            && let Some(agent) = self.inner.agents.find(&session.agent_id).await
        {
            let _ = agent
                .send(
                    LinkMessage::SessionDetach(SessionDetach {
                        session_id: session.id.clone(),
                        user_name: client.name.clone(),
                        client_id: Some(client.client_id.to_string()),
                    }),
                    self.agent_timeout(),
                )
                .await;
        }
        Ok(())
    }

    /// The session's agent, connected. Away, it is `overloaded` (try again), not
    /// `session_closed`: the session stays open and resumes when the agent is back.
    async fn live_agent(&self, session: &HubSession) -> Result<AgentRef, ErrorBody> {
        self.inner
            .agents
            .find(&session.agent_id)
            .await
            .ok_or_else(|| {
                err(
                    Reason::Overloaded,
                    format!(
                        "agent {} is not connected; the session resumes when it is back",
                        session.agent_id
                    ),
                )
            })
    }

    async fn open_session(&self, session_id: &str) -> Result<Arc<HubSession>, ErrorBody> {
        let session = self
            .find(session_id)
            .await
            .ok_or_else(|| err(Reason::UnknownSession, format!("no session {session_id}")))?;
        if session.shadow.lock().await.state == SessionState::Closed {
            return Err(err(
                Reason::SessionClosed,
                format!("session {session_id} is closed"),
            ));
        }
        Ok(session)
    }

    /// `input`
    pub async fn input(
        &self,
        client: &ClientInfo,
        input: tether_proto::Input,
    ) -> Result<Value, ErrorBody> {
        if client.class == Class::Observer {
            return Err(err(Reason::Forbidden, "observers cannot send input"));
        }
        let session = self.open_session(input.session_id.as_str()).await?;
        let agent = self.live_agent(&session).await?;
        if session.proto >= 2 {
            let ack = agent
                .request(
                    LinkMessage::SessionInput(SessionInput {
                        session_id: session.id.clone(),
                        message: input.text,
                        user_name: Some(client.name.clone()),
                        class: Some(client.class.as_str().to_owned()),
                        queue: input.queue,
                        client_id: Some(client.client_id.to_string()),
                    }),
                    self.agent_timeout(),
                )
                .await
                .map_err(|e| agent_error(&session.agent_id, e))?;
            return if ack.ok {
                Ok(ack.result.unwrap_or(json!({})))
            } else {
                Err(ack_error(&ack))
            };
        }
        // Version 1: the hub keeps the turn order; the agent queues what it is sent.
        let mut shadow = session.shadow.lock().await;
        if let Some(turn) = &shadow.turn
            && !input.queue
        {
            return Err(ErrorBody::turn_in_progress(&turn.turn_id, &turn.originator));
        }
        let AgentRef::Local(agent) = agent else {
            return Err(v1_elsewhere(&session.agent_id));
        };
        // Under the session's lock: queued without waiting (a full queue is `overloaded`).
        agent
            .try_send(LinkMessage::SessionInput(SessionInput {
                session_id: session.id.clone(),
                message: input.text.clone(),
                user_name: None,
                class: None,
                queue: false,
                client_id: None,
            }))
            .map_err(|e| agent_error(&session.agent_id, e))?;
        if shadow.turn.is_some() {
            let input_id = InputId(uuid::Uuid::now_v7().to_string());
            shadow
                .v1
                .queue
                .push_back((input_id.clone(), client.clone(), input.text.clone()));
            shadow.queued.push(QueuedInput {
                input_id: input_id.clone(),
                originator: client.clone(),
                text: input.text,
            });
            let position = shadow.v1.queue.len();
            return Ok(
                serde_json::to_value(InputAccepted::Queued { input_id, position })
                    .unwrap_or(json!({})),
            );
        }
        let turn_id = self
            .v1_start_turn(&session, &mut shadow, client.clone(), input.text, None)
            .await;
        Ok(serde_json::to_value(InputAccepted::Started { turn_id }).unwrap_or(json!({})))
    }

    /// `answer`
    pub async fn answer(
        &self,
        client: &ClientInfo,
        answer: tether_proto::Answer,
    ) -> Result<Value, ErrorBody> {
        if client.class == Class::Observer {
            return Err(err(
                Reason::Forbidden,
                "observers cannot answer permission requests",
            ));
        }
        let session = self.open_session(answer.session_id.as_str()).await?;
        if session.proto < 2 {
            return Err(err(
                Reason::NoPendingPermission,
                "this agent speaks protocol v1: it never asks for permission (it denies)",
            ));
        }
        let agent = self.live_agent(&session).await?;
        let ack = agent
            .request(
                LinkMessage::SessionAnswer(SessionAnswer {
                    session_id: session.id.clone(),
                    call_id: answer.call_id.to_string(),
                    user_name: client.name.clone(),
                    class: client.class.as_str().to_owned(),
                    decision: answer.decision.as_str().to_owned(),
                    scope: answer.scope.map(|s: Scope| s.as_str().to_owned()),
                    client_id: Some(client.client_id.to_string()),
                }),
                self.agent_timeout(),
            )
            .await
            .map_err(|e| agent_error(&session.agent_id, e))?;
        if ack.ok {
            Ok(json!({}))
        } else {
            Err(ack_error(&ack))
        }
    }

    /// `cancel`: under version 2 only the turn; under version 1 (catpaw cancels sessions)
    /// the whole session.
    pub async fn cancel(
        &self,
        client: &ClientInfo,
        cancel: tether_proto::Cancel,
    ) -> Result<Value, ErrorBody> {
        if client.class == Class::Observer {
            return Err(err(Reason::Forbidden, "observers cannot cancel turns"));
        }
        let session = self.open_session(cancel.session_id.as_str()).await?;
        {
            let shadow = session.shadow.lock().await;
            match &shadow.turn {
                Some(t) if t.turn_id == cancel.turn_id => {}
                _ => {
                    return Err(err(
                        Reason::StaleTurn,
                        format!("turn {} is not running", cancel.turn_id),
                    ));
                }
            }
        }
        let agent = self.live_agent(&session).await?;
        let v2 = session.proto >= 2;
        if !v2 && let AgentRef::Remote(_) = agent {
            return Err(v1_elsewhere(&session.agent_id));
        }
        let reason = format!("cancelled by {}", client.name);
        agent
            .send(
                LinkMessage::SessionCancel(SessionCancel {
                    session_id: session.id.clone(),
                    reason: reason.clone(),
                    turn_id: v2.then(|| cancel.turn_id.to_string()),
                    user_name: v2.then(|| client.name.clone()),
                    class: v2.then(|| client.class.as_str().to_owned()),
                    client_id: v2.then(|| client.client_id.to_string()),
                }),
                self.agent_timeout(),
            )
            .await
            .map_err(|e| agent_error(&session.agent_id, e))?;
        if !v2 {
            // catpaw cancels the whole session and answers with a bare `done` (or nothing,
            // if it had already finished): the hub ends it now, saying who and how.
            let mut shadow = session.shadow.lock().await;
            self.close_locally(&session, &mut shadow, StopReason::Cancelled, &reason)
                .await;
        }
        Ok(json!({}))
    }

    /// `session.close`
    pub async fn close(&self, client: &ClientInfo, session_id: &str) -> Result<Value, ErrorBody> {
        if client.class == Class::Observer {
            return Err(err(Reason::Forbidden, "observers cannot close sessions"));
        }
        let Some(session) = self.find(session_id).await else {
            return Err(err(
                Reason::UnknownSession,
                format!("no session {session_id}"),
            ));
        };
        if session.shadow.lock().await.state == SessionState::Closed {
            return Ok(json!({}));
        }
        let reason = format!("closed by {}", client.name);
        let agent = self.inner.agents.find(&session.agent_id).await;
        if session.proto < 2
            && let Some(AgentRef::Remote(_)) = &agent
        {
            return Err(v1_elsewhere(&session.agent_id));
        }
        if let Some(agent) = &agent {
            let v2 = session.proto >= 2;
            agent
                .send(
                    LinkMessage::SessionCancel(SessionCancel {
                        session_id: session.id.clone(),
                        reason: reason.clone(),
                        turn_id: None,
                        user_name: v2.then(|| client.name.clone()),
                        class: v2.then(|| client.class.as_str().to_owned()),
                        client_id: v2.then(|| client.client_id.to_string()),
                    }),
                    self.agent_timeout(),
                )
                .await
                .map_err(|e| agent_error(&session.agent_id, e))?;
        }
        // Version 2: the agent closes it and its `session_closed` says why. Version 1 (or an
        // agent away): the hub closes it, saying who.
        if agent.is_none() || session.proto < 2 {
            let mut shadow = session.shadow.lock().await;
            self.close_locally(&session, &mut shadow, StopReason::Cancelled, &reason)
                .await;
        }
        Ok(json!({}))
    }

    /// `session.list`
    pub async fn list(&self, agent_id: Option<String>) -> Result<Vec<Value>, ErrorBody> {
        let (records, hosts) = self
            .inner
            .store
            .run(move |s| {
                let records = s.list_sessions(agent_id.as_deref())?;
                let mut hosts: HashMap<String, String> = HashMap::new();
                for r in &records {
                    if !hosts.contains_key(&r.agent_id)
                        && let Some(a) = s.get_agent(&r.agent_id)?
                    {
                        hosts.insert(a.agent_id, a.hostname);
                    }
                }
                Ok((records, hosts))
            })
            .await
            .map_err(|e| err(Reason::Internal, e.to_string()))?;
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let live = self.get(&r.session_id);
            let (state, clients, last_seq) = match &live {
                Some(s) => {
                    let sh = s.shadow.lock().await;
                    (sh.state, sh.clients.clone(), sh.last_seq)
                }
                None => (
                    SessionState::parse(&r.state).unwrap_or(SessionState::Closed),
                    Vec::new(),
                    r.last_seq,
                ),
            };
            let summary = SessionSummary {
                session_id: SessionId(r.session_id.clone()),
                mode: Mode::parse(&r.mode).unwrap_or(Mode::Chat),
                state,
                title: r.title.clone(),
                created_at: r.created_at.clone(),
                clients,
                last_seq,
            };
            let mut v = serde_json::to_value(summary).unwrap_or(json!({}));
            if let Value::Object(m) = &mut v {
                m.insert("agent_id".into(), json!(r.agent_id));
                // The agent's hostname now (or as it last registered).
                let hostname = hosts
                    .get(&r.agent_id)
                    .cloned()
                    .or_else(|| live.map(|s| s.hostname.clone()))
                    .unwrap_or_default();
                m.insert("hostname".into(), json!(hostname));
                m.insert("created_by".into(), json!(r.created_by));
            }
            out.push(v);
        }
        Ok(out)
    }

    /// An operator connection went away: leave every session it was in.
    pub async fn operator_gone(&self, client: &ClientInfo, conn_id: u64, sessions: Vec<String>) {
        for id in sessions {
            let _ = self.detach(client, conn_id, &id).await;
        }
    }
}

/// Version 2: `session_attach` making an operator connection a user of the session at the
/// agent (present, and able to answer prompts as itself).
pub(super) fn user_attach(session_id: &str, client: &ClientInfo) -> LinkMessage {
    LinkMessage::SessionAttach(SessionAttach {
        session_id: session_id.to_owned(),
        user_name: client.name.clone(),
        class: client.class.as_str().to_owned(),
        after_seq: None,
        client_id: Some(client.client_id.to_string()),
    })
}

/// A version-1 (catpaw) session is translated by the replica holding its agent, which orders
/// its events: another replica cannot run it.
fn v1_elsewhere(agent_id: &str) -> ErrorBody {
    err(
        Reason::Overloaded,
        format!(
            "agent {agent_id} speaks protocol v1 and is connected to another hub replica, which runs its sessions: use that replica (a version-1 agent's sessions are not relayed between replicas)"
        ),
    )
}
