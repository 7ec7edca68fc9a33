//! The hub's side of the link protocol with no I/O, the counterpart of the agent's
//! `tether_link::machine::LinkMachine` (PROTOCOL.md §2): the register deadline, the `ack` to
//! `register` once the store recorded the agent, pings, the read deadline, refusals of bad
//! frames, and the alert accounting (`alert_ack` only after a commit, never past a seq that
//! was not stored — [`AlertAcks`]). A driver feeds it [`Input`]s and carries out its
//! [`Output`]s; the tests below step it against the agent's machine with no sockets, and
//! `agents::serve_agent` drives it over the live WebSocket.

use crate::alert_acks::AlertAcks;
use std::time::Duration;
use tether_proto::link::{
    Ack, AlertAck, AlertEvents, Disconnect, LinkFrame, LinkMessage, Register, refused,
};

/// Timers the driver keeps for the machine; setting one replaces its deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The agent must register by then.
    Register,
    /// Send the next ping.
    Ping,
    /// Nothing from the agent until then: the connection is dead.
    Read,
}

/// The link's time limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub register: Duration,
    pub ping: Duration,
    pub read: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            register: Duration::from_secs(10),
            ping: Duration::from_secs(30),
            read: Duration::from_secs(90),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Frame(Box<LinkFrame>),
    /// A frame that did not decode (`id`: as far as it could be read).
    BadFrame {
        id: String,
        error: String,
    },
    /// A frame over the size limit, not decoded (`id`: as far as it could be read).
    /// `alert_seqs`: the seqs of an `alert_events` frame, kept out of every acknowledgement
    /// until they come again in smaller frames (a lone event is refused for good).
    TooLarge {
        id: String,
        error: String,
        alert_seqs: Option<Vec<u64>>,
    },
    /// A message that is not a frame (a WebSocket ping, a binary message): the agent is there.
    Heard,
    /// The hub sends the agent away (`disconnect`), then closes.
    Disconnect {
        reason: String,
        retry_after_sec: u64,
    },
    Timer(Timer),
    /// The store recorded (or could not record) the registration asked for by
    /// [`Output::Record`].
    Recorded(Result<(), String>),
    /// The outcome of an [`Output::StoreAlerts`]: `seqs` of the events it tried to store,
    /// `refused` those refused for good at the edge (settled without being stored).
    AlertsStored {
        frame_id: String,
        seqs: Vec<u64>,
        refused: Vec<u64>,
        result: Result<(), String>,
    },
    /// The connection ended.
    Closed,
}

// Outputs live only until the driver carries them out (as the agent machine's do).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Send(LinkFrame),
    SetTimer(Timer, Duration),
    /// Record the agent in the store, then report [`Input::Recorded`].
    Record(Box<Register>),
    /// Check and store this batch (committed before anything is acknowledged), then report
    /// [`Input::AlertsStored`].
    StoreAlerts {
        frame_id: String,
        batch: AlertEvents,
    },
    /// For the hub: heartbeats, session traffic, `ack`s to the hub's own frames, reports.
    Deliver(Box<LinkFrame>),
    /// Registered at this version.
    Up {
        version: u32,
    },
    /// Close the connection.
    Close {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    AwaitRegister,
    Recording { frame_id: String },
    Open,
    Closed,
}

pub struct HubLinkMachine {
    state: State,
    version: u32,
    limits: Limits,
    acks: AlertAcks,
}

impl HubLinkMachine {
    /// A connection upgraded with `X-Proto-Version: offered`; returns the machine and what to
    /// do first (arm the register deadline).
    pub fn new(offered: u32, limits: Limits) -> (HubLinkMachine, Vec<Output>) {
        let m = HubLinkMachine {
            state: State::AwaitRegister,
            version: offered.clamp(1, 2),
            limits,
            acks: AlertAcks::new(),
        };
        let first = vec![Output::SetTimer(Timer::Register, limits.register)];
        (m, first)
    }

    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Frame ids are UUIDv7, as on every other frame the hub sends.
    fn frame(&mut self, ref_id: Option<String>, message: LinkMessage) -> LinkFrame {
        LinkFrame {
            id: uuid::Uuid::now_v7().to_string(),
            ref_id,
            message,
        }
    }

    /// The answer to a first frame that is not a decodable `register`: sent under both
    /// versions (catpaw logs the ack's error), with no `ref_id` when the frame had no id.
    fn refuse_register(&mut self, out: &mut Vec<Output>, id: String, why: String) {
        let ack = Ack {
            ok: false,
            error: Some(why.clone()),
            reason: (self.version >= 2).then(|| refused::BAD_REQUEST.to_owned()),
            ..Ack::default()
        };
        let f = self.frame((!id.is_empty()).then_some(id), LinkMessage::Ack(ack));
        out.push(Output::Send(f));
        self.close(out, why);
    }

    fn close(&mut self, out: &mut Vec<Output>, reason: String) {
        self.state = State::Closed;
        out.push(Output::Close { reason });
    }

    /// `ack {ok: false}` to a frame, with a reason under version 2.
    fn refusal(&mut self, frame_id: String, reason: &str, error: String) -> Option<Output> {
        if frame_id.is_empty() {
            return None;
        }
        let ack = Ack {
            ok: false,
            error: Some(error),
            reason: (self.version >= 2).then(|| reason.to_owned()),
            ..Ack::default()
        };
        Some(Output::Send(
            self.frame(Some(frame_id), LinkMessage::Ack(ack)),
        ))
    }

    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        if self.state == State::Closed {
            return out;
        }
        match (self.state.clone(), input) {
            (_, Input::Closed) => self.state = State::Closed,
            (State::AwaitRegister, Input::Frame(frame)) => match frame.message {
                LinkMessage::Register(reg) => {
                    self.state = State::Recording { frame_id: frame.id };
                    out.push(Output::Record(Box::new(reg)));
                }
                other => {
                    let why = format!("the first frame must be `register`, not `{}`", other.kind());
                    self.refuse_register(&mut out, frame.id, why);
                }
            },
            (
                State::AwaitRegister,
                Input::BadFrame { id, error } | Input::TooLarge { id, error, .. },
            ) => {
                self.refuse_register(&mut out, id, format!("register refused: {error}"));
            }
            (State::AwaitRegister | State::Recording { .. }, Input::Timer(Timer::Register)) => {
                let why = format!(
                    "the agent did not register within {} s",
                    self.limits.register.as_secs()
                );
                self.close(&mut out, why);
            }
            (State::Recording { frame_id }, Input::Recorded(result)) => match result {
                Ok(()) => {
                    let ack = Ack {
                        ok: true,
                        proto: (self.version >= 2).then_some(2),
                        ..Ack::default()
                    };
                    let f = self.frame(Some(frame_id), LinkMessage::Ack(ack));
                    out.push(Output::Send(f));
                    self.state = State::Open;
                    out.push(Output::SetTimer(Timer::Ping, self.limits.ping));
                    out.push(Output::SetTimer(Timer::Read, self.limits.read));
                    out.push(Output::Up {
                        version: self.version,
                    });
                }
                Err(e) => {
                    let ack = Ack {
                        ok: false,
                        error: Some("the hub cannot record this agent right now".into()),
                        ..Ack::default()
                    };
                    let f = self.frame(Some(frame_id), LinkMessage::Ack(ack));
                    out.push(Output::Send(f));
                    self.close(&mut out, format!("cannot record the agent: {e}"));
                }
            },
            (State::Open, Input::Frame(frame)) => {
                out.push(Output::SetTimer(Timer::Read, self.limits.read));
                match frame.message {
                    LinkMessage::AlertEvents(batch) => out.push(Output::StoreAlerts {
                        frame_id: frame.id,
                        batch,
                    }),
                    LinkMessage::Pong | LinkMessage::Register(_) => {}
                    _ => out.push(Output::Deliver(frame)),
                }
            }
            (State::Open, Input::BadFrame { id, error }) => {
                out.push(Output::SetTimer(Timer::Read, self.limits.read));
                if self.version >= 2 {
                    out.extend(self.refusal(id, refused::BAD_REQUEST, error));
                }
            }
            (
                State::Open,
                Input::TooLarge {
                    id,
                    error,
                    alert_seqs,
                },
            ) => {
                out.push(Output::SetTimer(Timer::Read, self.limits.read));
                match alert_seqs {
                    // Too large on its own: the agent drops it, so it counts as settled.
                    Some(seqs) if seqs.len() == 1 => {
                        self.acks.settled(seqs);
                    }
                    Some(seqs) => {
                        if let Err(e) = self.acks.not_stored(seqs) {
                            let why =
                                format!("{} refused alerts were never sent again; closing", e.0);
                            self.close(&mut out, why);
                            return out;
                        }
                    }
                    None => {}
                }
                if self.version >= 2 {
                    out.extend(self.refusal(id, refused::TOO_LARGE, error));
                }
            }
            (State::Open, Input::Heard) => {
                out.push(Output::SetTimer(Timer::Read, self.limits.read));
            }
            (
                _,
                Input::Disconnect {
                    reason,
                    retry_after_sec,
                },
            ) => {
                let bye = Disconnect {
                    reason: reason.clone(),
                    retry_after_sec,
                };
                let f = self.frame(None, LinkMessage::Disconnect(bye));
                out.push(Output::Send(f));
                self.close(&mut out, reason);
            }
            (State::Open, Input::Timer(Timer::Ping)) => {
                let f = self.frame(None, LinkMessage::Ping);
                out.push(Output::Send(f));
                out.push(Output::SetTimer(Timer::Ping, self.limits.ping));
            }
            (State::Open, Input::Timer(Timer::Read)) => {
                let why = format!(
                    "nothing from the agent for {} s",
                    self.limits.read.as_secs()
                );
                self.close(&mut out, why);
            }
            (
                State::Open,
                Input::AlertsStored {
                    frame_id,
                    seqs,
                    refused,
                    result,
                },
            ) => match result {
                Ok(()) => {
                    let upto = self.acks.settled(refused.into_iter().chain(seqs));
                    // Acknowledged only now that they are committed, and only as far as
                    // nothing unstored lies below.
                    if self.version >= 2
                        && let Some(upto_seq) = upto
                    {
                        let f = self.frame(None, LinkMessage::AlertAck(AlertAck { upto_seq }));
                        out.push(Output::Send(f));
                    }
                }
                Err(e) => {
                    if let Err(too_many) = self.acks.not_stored(seqs) {
                        let why = format!("{} alerts could not be stored; closing", too_many.0);
                        self.close(&mut out, why);
                        return out;
                    }
                    self.acks.settled(refused);
                    if self.version >= 2 {
                        out.extend(self.refusal(
                            frame_id,
                            refused::STORE_UNAVAILABLE,
                            format!("the hub cannot store alerts right now: {e}"),
                        ));
                    }
                }
            },
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_link::backoff::SeededRng;
    use tether_link::machine::{self as agent, LinkMachine};
    use tether_proto::link::AlertEvent;

    fn open(version: u32) -> HubLinkMachine {
        let (mut hub, _) = HubLinkMachine::new(version, Limits::default());
        let reg = LinkFrame::new("r1".to_owned(), LinkMessage::Register(Register::default()));
        hub.handle(Input::Frame(Box::new(reg)));
        hub.handle(Input::Recorded(Ok(())));
        assert!(hub.is_open());
        hub
    }

    fn alert(seq: u64) -> AlertEvent {
        serde_json::from_value(serde_json::json!({
            "event_time": 1_700_000_000, "event_status": "Critical", "alert_key": format!("k{seq}"),
            "labels": {}, "attrs": {}, "description": "d", "seq": seq,
        }))
        .expect("alert event")
    }

    fn batch(id: &str, seqs: std::ops::RangeInclusive<u64>) -> Input {
        let events = AlertEvents::new(seqs.map(alert).collect());
        let f = LinkFrame::new(id.to_owned(), LinkMessage::AlertEvents(events));
        Input::Frame(Box::new(f))
    }

    fn sent(out: &[Output]) -> Vec<&LinkMessage> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send(f) => Some(&f.message),
                _ => None,
            })
            .collect()
    }

    fn closes(out: &[Output]) -> bool {
        out.iter().any(|o| matches!(o, Output::Close { .. }))
    }

    #[test]
    fn an_agent_that_does_not_register_in_time_is_closed() {
        let (mut hub, first) = HubLinkMachine::new(2, Limits::default());
        assert_eq!(
            first,
            [Output::SetTimer(Timer::Register, Duration::from_secs(10))]
        );
        // Pings and the read deadline do not run before the registration.
        assert!(hub.handle(Input::Timer(Timer::Ping)).is_empty());
        assert!(closes(&hub.handle(Input::Timer(Timer::Register))));
        assert!(hub.is_closed());
        // A registration still being recorded does not stop the clock either.
        let (mut hub, _) = HubLinkMachine::new(2, Limits::default());
        let reg = LinkFrame::new("r1".to_owned(), LinkMessage::Register(Register::default()));
        assert!(matches!(
            hub.handle(Input::Frame(Box::new(reg)))[..],
            [Output::Record(_)]
        ));
        assert!(closes(&hub.handle(Input::Timer(Timer::Register))));
        // Another first frame is answered, then closed.
        let (mut hub, _) = HubLinkMachine::new(2, Limits::default());
        let out = hub.handle(Input::Frame(Box::new(LinkFrame::new(
            "x".to_owned(),
            LinkMessage::Ping,
        ))));
        assert!(
            matches!(sent(&out)[..], [LinkMessage::Ack(a)] if !a.ok && a.reason.as_deref() == Some("bad_request"))
        );
        assert!(closes(&out));
    }

    /// docs/protocol.md: a first frame that is not a decodable `register` is answered, then
    /// the connection closes; one with no readable id is answered too, with no `ref_id`.
    #[test]
    fn a_bad_first_frame_without_an_id_is_still_answered() {
        for version in [1, 2] {
            let (mut hub, _) = HubLinkMachine::new(version, Limits::default());
            let out = hub.handle(Input::BadFrame {
                id: String::new(),
                error: "expected value at line 1 column 1".into(),
            });
            let [Output::Send(f), Output::Close { .. }] = &out[..] else {
                panic!("v{version}: {out:?}");
            };
            assert_eq!(f.ref_id, None);
            let LinkMessage::Ack(a) = &f.message else {
                panic!("not an ack: {f:?}");
            };
            assert!(!a.ok);
            assert_eq!(
                a.error.as_deref(),
                Some("register refused: expected value at line 1 column 1")
            );
            assert_eq!(a.reason.is_some(), version >= 2);
            // Another frame first, with an empty id: the same.
            let (mut hub, _) = HubLinkMachine::new(version, Limits::default());
            let out = hub.handle(Input::Frame(Box::new(LinkFrame::new(
                "",
                LinkMessage::Pong,
            ))));
            assert!(
                matches!(&out[..], [Output::Send(f), Output::Close { .. }] if f.ref_id.is_none()),
                "v{version}: {out:?}"
            );
        }
    }

    #[test]
    fn an_oversized_frame_is_refused_and_its_alerts_held_back() {
        let mut hub = open(2);
        let too_large = |id: &str, alert_seqs: Option<Vec<u64>>| Input::TooLarge {
            id: id.into(),
            error: "frame is 2000000 bytes; the limit is 1048576".into(),
            alert_seqs,
        };
        let out = hub.handle(too_large("big", Some(vec![1, 2])));
        assert!(out.contains(&Output::SetTimer(Timer::Read, Duration::from_secs(90))));
        let [LinkMessage::Ack(a)] = sent(&out)[..] else {
            panic!("{out:?}");
        };
        assert_eq!(a.reason.as_deref(), Some("too_large"));
        // 3 stored: not acknowledged while 1 and 2 are missing.
        let stored = |seqs: Vec<u64>| Input::AlertsStored {
            frame_id: "a".into(),
            seqs,
            refused: vec![],
            result: Ok(()),
        };
        assert!(sent(&hub.handle(stored(vec![3]))).is_empty());
        // A lone event too large on its own is dropped by the agent: settled.
        hub.handle(too_large("one", Some(vec![1])));
        let out = hub.handle(stored(vec![2]));
        assert!(matches!(
            sent(&out)[..],
            [LinkMessage::AlertAck(AlertAck { upto_seq: 3 })]
        ));
        // Not alerts (a session output): refused, nothing held.
        let out = hub.handle(too_large("out", None));
        assert!(
            matches!(sent(&out)[..], [LinkMessage::Ack(a)] if a.reason.as_deref() == Some("too_large"))
        );
        // Version 1 has no refusal to send.
        let mut v1 = open(1);
        assert!(sent(&v1.handle(too_large("big", Some(vec![1, 2])))).is_empty());
        // Before the registration it is a bad first frame.
        let (mut fresh, _) = HubLinkMachine::new(2, Limits::default());
        assert!(closes(&fresh.handle(too_large("big", None))));
    }

    #[test]
    fn any_message_keeps_the_link_and_a_disconnect_ends_it() {
        let mut hub = open(2);
        assert_eq!(
            hub.handle(Input::Heard),
            [Output::SetTimer(Timer::Read, Duration::from_secs(90))]
        );
        let out = hub.handle(Input::Disconnect {
            reason: "the hub is at its agent limit".into(),
            retry_after_sec: 60,
        });
        assert!(matches!(
            sent(&out)[..],
            [LinkMessage::Disconnect(d)] if d.retry_after_sec == 60 && d.reason == "the hub is at its agent limit"
        ));
        assert!(closes(&out));
        assert!(hub.is_closed());
    }

    #[test]
    fn pings_go_out_and_a_silent_agent_is_dropped() {
        let mut hub = open(2);
        let out = hub.handle(Input::Timer(Timer::Ping));
        assert!(matches!(sent(&out)[..], [LinkMessage::Ping]));
        assert!(out.contains(&Output::SetTimer(Timer::Ping, Duration::from_secs(30))));
        // Any frame pushes the read deadline back.
        let hb = LinkFrame::new("h".to_owned(), LinkMessage::Pong);
        assert_eq!(
            hub.handle(Input::Frame(Box::new(hb))),
            [Output::SetTimer(Timer::Read, Duration::from_secs(90))]
        );
        let out = hub.handle(Input::Timer(Timer::Read));
        assert!(closes(&out), "{out:?}");
        assert!(hub.handle(Input::Timer(Timer::Ping)).is_empty());
    }

    #[test]
    fn alert_ack_only_after_a_commit_and_never_past_an_unstored_seq() {
        let mut hub = open(2);
        let out = hub.handle(batch("a1", 1..=3));
        assert!(
            sent(&out).is_empty(),
            "nothing acknowledged before the commit"
        );
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::StoreAlerts { frame_id, .. } if frame_id == "a1"))
        );
        // The commit failed: refused (store_unavailable), not acknowledged.
        let out = hub.handle(Input::AlertsStored {
            frame_id: "a1".into(),
            seqs: vec![1, 2, 3],
            refused: vec![],
            result: Err("disk full".into()),
        });
        assert!(
            matches!(sent(&out)[..], [LinkMessage::Ack(a)] if !a.ok && a.reason.as_deref() == Some("store_unavailable"))
        );
        // A later batch stored: still nothing acknowledged past seq 0 (1..3 are missing).
        let out = hub.handle(Input::AlertsStored {
            frame_id: "a2".into(),
            seqs: vec![4, 5],
            refused: vec![],
            result: Ok(()),
        });
        assert!(sent(&out).is_empty(), "{out:?}");
        // 1..3 again, stored: everything up to 5.
        let out = hub.handle(Input::AlertsStored {
            frame_id: "a3".into(),
            seqs: vec![1, 2, 3],
            refused: vec![],
            result: Ok(()),
        });
        assert!(matches!(
            sent(&out)[..],
            [LinkMessage::AlertAck(AlertAck { upto_seq: 5 })]
        ));
        // Version 1 never acknowledges alerts.
        let mut v1 = open(1);
        let out = v1.handle(Input::AlertsStored {
            frame_id: "a".into(),
            seqs: vec![1],
            refused: vec![],
            result: Ok(()),
        });
        assert!(sent(&out).is_empty());
    }

    /// The two machines stepped against each other, no sockets: register → ack → heartbeat
    /// and alerts → commit → `alert_ack` → the agent deletes them → a ping answered → the link
    /// drops and both sides see it.
    #[test]
    fn paired_with_the_agents_machine() {
        let mut a = LinkMachine::new(2, SeededRng::new(7), 0);
        let (mut h, _) = HubLinkMachine::new(2, Limits::default());
        let mut spool: Vec<u64> = vec![1, 2, 3];
        let mut deleted = 0;
        let mut to_agent: Vec<LinkFrame> = Vec::new();
        let mut to_hub: Vec<LinkFrame> = Vec::new();
        let mut delivered = Vec::new();
        let mut n = 0;
        let mut id = || {
            n += 1;
            format!("agent-{n}")
        };
        let mut agent_out = a.handle(agent::Input::Start);
        agent_out.extend(a.handle(agent::Input::Connected));
        for _ in 0..20 {
            for o in std::mem::take(&mut agent_out) {
                match o {
                    agent::Output::SendRegister => to_hub.push(LinkFrame::new(
                        id(),
                        LinkMessage::Register(Register::default()),
                    )),
                    agent::Output::SendHeartbeat => to_hub.push(LinkFrame::new(
                        id(),
                        LinkMessage::Heartbeat(Default::default()),
                    )),
                    agent::Output::Send(f) => to_hub.push(f),
                    agent::Output::SendAlerts { after_seq, .. } => {
                        let seqs: Vec<u64> =
                            spool.iter().copied().filter(|s| *s > after_seq).collect();
                        let upto = seqs.last().copied();
                        if !seqs.is_empty() {
                            let events = AlertEvents::new(seqs.into_iter().map(alert).collect());
                            to_hub.push(LinkFrame::new(id(), LinkMessage::AlertEvents(events)));
                        }
                        agent_out.extend(a.handle(agent::Input::AlertsWritten { upto_seq: upto }));
                    }
                    agent::Output::DeleteAlerts { upto_seq } => {
                        spool.retain(|s| *s > upto_seq);
                        deleted = upto_seq;
                    }
                    _ => {}
                }
            }
            let mut hub_out = Vec::new();
            for f in to_hub.drain(..) {
                hub_out.extend(h.handle(Input::Frame(Box::new(f))));
            }
            while !hub_out.is_empty() {
                for o in std::mem::take(&mut hub_out) {
                    match o {
                        Output::Send(f) => to_agent.push(f),
                        Output::Record(_) => hub_out.extend(h.handle(Input::Recorded(Ok(())))),
                        // The store commits, then the outcome comes back.
                        Output::StoreAlerts { frame_id, batch } => {
                            let seqs = batch.events.iter().filter_map(|e| e.seq).collect();
                            hub_out.extend(h.handle(Input::AlertsStored {
                                frame_id,
                                seqs,
                                refused: vec![],
                                result: Ok(()),
                            }));
                        }
                        Output::Deliver(f) => delivered.push(f.message.kind().to_owned()),
                        _ => {}
                    }
                }
            }
            for f in to_agent.drain(..) {
                agent_out.extend(a.handle(agent::Input::Frame(Box::new(f))));
            }
            if agent_out.is_empty() && to_hub.is_empty() {
                break;
            }
        }
        assert_eq!(a.state(), agent::State::Registered { version: 2 });
        assert!(h.is_open());
        assert_eq!(
            deleted, 3,
            "acknowledged after the commit, deleted from the spool"
        );
        assert!(spool.is_empty());
        assert_eq!(delivered, ["heartbeat"]);

        // A ping from the hub is answered with a pong, which the hub swallows.
        let ping = h.handle(Input::Timer(Timer::Ping));
        let Some(Output::Send(ping)) = ping.into_iter().next() else {
            panic!("no ping");
        };
        let pong = a.handle(agent::Input::Frame(Box::new(ping)));
        let Some(agent::Output::Send(pong)) = pong
            .into_iter()
            .find(|o| matches!(o, agent::Output::Send(_)))
        else {
            panic!("no pong");
        };
        assert_eq!(
            h.handle(Input::Frame(Box::new(pong))),
            [Output::SetTimer(Timer::Read, Duration::from_secs(90))]
        );

        // The link drops: the agent goes down and backs off; the hub's side closes.
        let out = a.handle(agent::Input::ConnectionLost {
            error: "reset".into(),
        });
        assert!(out.iter().any(|o| matches!(o, agent::Output::Down { .. })));
        assert!(
            out.iter()
                .any(|o| matches!(o, agent::Output::Backoff { .. }))
        );
        assert!(h.handle(Input::Closed).is_empty());
        assert!(h.is_closed());
        assert!(h.handle(Input::Timer(Timer::Ping)).is_empty());
    }
}
