//! The link's protocol logic with no I/O (in the style of quinn-proto): the driver feeds it
//! [`Input`]s — connected, frame received, timer fired, alerts written, connection lost, HTTP
//! status on upgrade — and carries out the [`Output`]s it returns — dial, send, set or cancel a
//! timer, close, deliver a session message. Every rule of PROTOCOL.md §2 about the connection's
//! life lives here, so it can be tested exhaustively without sockets or clocks.

use crate::backoff::{Backoff, Cause, SeededRng};
use std::time::Duration;
use tether_proto::link::{
    AlertAck, Disconnect, LinkDecodeError, LinkFrame, LinkMessage, MAX_ALERT_BATCH,
};

/// The agent waits this long for the hub's `ack` to its `register`.
pub const REGISTER_ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat period.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Without any frame from the hub for this long, the connection is dead.
pub const READ_DEADLINE: Duration = Duration::from_secs(90);
/// Alerts are flushed at least this often while registered.
pub const ALERT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Timers the driver keeps for the machine. Setting a timer replaces its previous deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    Reconnect,
    AckDeadline,
    Heartbeat,
    ReadDeadline,
    AlertFlush,
}

impl Timer {
    pub const ALL: [Timer; 5] = [
        Timer::Reconnect,
        Timer::AckDeadline,
        Timer::Heartbeat,
        Timer::ReadDeadline,
        Timer::AlertFlush,
    ];
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Begin dialing.
    Start,
    /// The WebSocket upgrade succeeded.
    Connected,
    /// Dialing failed; `status` is the HTTP status when the hub answered the upgrade.
    ConnectFailed { status: Option<u16>, error: String },
    /// A frame arrived (boxed: a frame is large, the other inputs small).
    Frame(Box<LinkFrame>),
    /// A frame arrived that could not be decoded.
    BadFrame(LinkDecodeError),
    /// A timer fired.
    Timer(Timer),
    /// New alert events are in the spool.
    AlertsPending,
    /// The driver finished a `SendAlerts`: events up to `upto_seq` were written to the socket
    /// (`None`: there was nothing to send).
    AlertsWritten { upto_seq: Option<u64> },
    /// The hub refused (version 2, `ack {ok: false}`) an `alert_events` frame that carried
    /// the events `first..=last` (`events` of them). `retry`: the hub could not store them
    /// right now (send them again later, as they are); otherwise the frame was too large or
    /// malformed (split it; a single event is dropped and counted).
    AlertsRefused {
        first: u64,
        last: u64,
        events: usize,
        retry: bool,
    },
    /// The connection broke (read or write error, peer closed).
    ConnectionLost { error: String },
    /// Stop for good: close and never dial again.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Dial the hub.
    Connect,
    /// Send `register` (the driver fills in the host's details).
    SendRegister,
    /// Send `heartbeat` (the driver fills in live figures).
    SendHeartbeat,
    /// Send this frame as is.
    Send(LinkFrame),
    /// Send spooled alert events with `seq > after_seq`, in batches, then report
    /// [`Input::AlertsWritten`].
    SendAlerts {
        after_seq: u64,
        /// Most events per frame (frames are bounded by bytes as well).
        max_events: usize,
    },
    /// The hub has these events: delete them from the spool.
    DeleteAlerts {
        upto_seq: u64,
    },
    /// These events can never be delivered (refused on their own): delete them from the spool
    /// and count them as dropped.
    DropAlerts {
        first: u64,
        last: u64,
    },
    SetTimer(Timer, Duration),
    CancelTimer(Timer),
    /// Close the socket (with a close frame when possible).
    Close,
    /// The link is up.
    Registered {
        version: u32,
        warning: Option<String>,
    },
    /// The link went down: its remote sessions end.
    Down {
        reason: String,
    },
    /// Waiting this long before dialing again.
    Backoff {
        wait: Duration,
        reason: String,
    },
    /// A session message for the session layer.
    Deliver(LinkFrame),
    /// Something worth a log line that changes nothing.
    Note(String),
}

/// Where the link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Connecting,
    Handshaking,
    Registered { version: u32 },
    Waiting,
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Connecting => "connecting",
            State::Handshaking => "handshaking",
            State::Registered { .. } => "registered",
            State::Waiting => "backing_off",
            State::Stopped => "stopped",
        }
    }
}

pub struct LinkMachine {
    state: State,
    backoff: Backoff,
    /// The version the agent offers (`X-Proto-Version`).
    offered: u32,
    /// v2: every event up to here is stored by the hub.
    acked: u64,
    /// Events up to here were written on this connection.
    sent: u64,
    /// A `SendAlerts` is being carried out.
    flushing: bool,
    /// Alerts arrived while a flush was running: flush again after it.
    more_alerts: bool,
    /// The version of the connection the last `SendAlerts` wrote to.
    flush_version: u32,
    /// Events per frame: halved each time the hub refuses a frame as too large, back to
    /// [`MAX_ALERT_BATCH`] on each new connection.
    batch_events: usize,
    /// `sent` was moved back (a refusal) while a flush ran: what that flush wrote does not
    /// move it forward again.
    rewound: bool,
    /// The hub could not store alerts: send again on the next flush tick, not at once.
    hold: bool,
}

impl LinkMachine {
    /// `offered` is 1 or 2; `rng` drives the jitter; `acked` is the spool's high-water mark of
    /// events the hub already has (0 for a fresh spool).
    pub fn new(offered: u32, rng: SeededRng, acked: u64) -> LinkMachine {
        LinkMachine {
            state: State::Idle,
            backoff: Backoff::new(rng),
            offered: offered.clamp(1, 2),
            acked,
            sent: acked,
            flushing: false,
            more_alerts: false,
            flush_version: 1,
            batch_events: MAX_ALERT_BATCH,
            rewound: false,
            hold: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The negotiated version while registered.
    pub fn version(&self) -> Option<u32> {
        match self.state {
            State::Registered { version } => Some(version),
            _ => None,
        }
    }

    pub fn offered(&self) -> u32 {
        self.offered
    }

    /// Feeds one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        // A flush cut short by the shutdown still reports what it wrote.
        if self.state == State::Stopped && !matches!(input, Input::AlertsWritten { .. }) {
            return out;
        }
        match input {
            Input::Start => {
                if matches!(self.state, State::Idle | State::Waiting) {
                    out.push(Output::CancelTimer(Timer::Reconnect));
                    self.state = State::Connecting;
                    out.push(Output::Connect);
                }
            }
            Input::Connected => {
                if self.state == State::Connecting {
                    self.state = State::Handshaking;
                    out.push(Output::SendRegister);
                    out.push(Output::SetTimer(Timer::AckDeadline, REGISTER_ACK_TIMEOUT));
                }
            }
            Input::ConnectFailed { status, error } => {
                if self.state == State::Connecting {
                    let (cause, reason) = match status {
                        Some(401) => (
                            Cause::Unauthorized,
                            "the hub refused the agent token (HTTP 401)".to_owned(),
                        ),
                        Some(code) => (
                            Cause::Failure,
                            format!("the hub answered HTTP {code}: {error}"),
                        ),
                        None => (Cause::Failure, format!("cannot connect: {error}")),
                    };
                    self.back_off(&mut out, cause, reason);
                }
            }
            Input::Frame(frame) => self.on_frame(&mut out, *frame),
            Input::BadFrame(e) => match self.state {
                State::Handshaking => {
                    self.fail(&mut out, format!("bad frame during the handshake: {e}"));
                }
                State::Registered { .. } => {
                    // A garbled frame is not a dead connection: it still proves the hub is
                    // there, and catpaw ignores it too.
                    out.push(Output::SetTimer(Timer::ReadDeadline, READ_DEADLINE));
                    out.push(Output::Note(format!(
                        "ignored a bad frame from the hub: {e}"
                    )));
                }
                _ => {}
            },
            Input::Timer(timer) => self.on_timer(&mut out, timer),
            Input::AlertsPending => {
                self.more_alerts = true;
                self.maybe_flush(&mut out);
            }
            Input::AlertsWritten { upto_seq } => {
                self.flushing = false;
                let upto_seq = if std::mem::take(&mut self.rewound) {
                    None
                } else {
                    upto_seq
                };
                match (upto_seq, self.state) {
                    (Some(upto), State::Registered { version }) => {
                        self.sent = self.sent.max(upto);
                        // Version 1 delivers at most once: written is done.
                        if version == 1 {
                            self.acked = self.sent;
                            out.push(Output::DeleteAlerts { upto_seq: upto });
                        }
                        // More may have queued behind a full batch.
                        self.more_alerts = true;
                    }
                    // A version-1 flush cut short by the end of its connection: what it wrote
                    // is delivered as far as version 1 knows, so it must not be sent again
                    // (version 2 resends everything unacknowledged anyway).
                    (Some(upto), _) if self.flush_version == 1 && upto > self.acked => {
                        self.sent = self.sent.max(upto);
                        self.acked = self.sent;
                        out.push(Output::DeleteAlerts { upto_seq: upto });
                    }
                    _ => {}
                }
                self.maybe_flush(&mut out);
            }
            Input::AlertsRefused {
                first,
                last,
                events,
                retry,
            } => {
                if let State::Registered { version: 2 } = self.state {
                    self.on_refused(&mut out, first, last, events, retry);
                }
            }
            Input::ConnectionLost { error } => match self.state {
                State::Handshaking => self.fail(&mut out, format!("connection lost: {error}")),
                State::Registered { .. } => {
                    self.drop_registered(&mut out, format!("connection lost: {error}"))
                }
                _ => {}
            },
            Input::Shutdown => {
                if matches!(self.state, State::Registered { .. }) {
                    out.push(Output::Down {
                        reason: "agent shutting down".into(),
                    });
                }
                if matches!(
                    self.state,
                    State::Handshaking | State::Registered { .. } | State::Connecting
                ) {
                    out.push(Output::Close);
                }
                for t in Timer::ALL {
                    out.push(Output::CancelTimer(t));
                }
                self.state = State::Stopped;
            }
        }
        out
    }

    fn on_frame(&mut self, out: &mut Vec<Output>, frame: LinkFrame) {
        match self.state {
            State::Handshaking => match frame.message {
                LinkMessage::Ack(ack) if ack.ok => {
                    let version = match ack.proto {
                        Some(2) if self.offered >= 2 => 2,
                        _ => 1,
                    };
                    self.state = State::Registered { version };
                    self.backoff.reset();
                    // Version 2 resends everything the hub has not acknowledged.
                    self.sent = self.acked;
                    self.flushing = false;
                    self.rewound = false;
                    self.hold = false;
                    self.batch_events = MAX_ALERT_BATCH;
                    out.push(Output::CancelTimer(Timer::AckDeadline));
                    out.push(Output::Registered {
                        version,
                        warning: ack.warning,
                    });
                    // One heartbeat at once, so the hub has figures from the start.
                    out.push(Output::SendHeartbeat);
                    out.push(Output::SetTimer(Timer::Heartbeat, HEARTBEAT_INTERVAL));
                    out.push(Output::SetTimer(Timer::ReadDeadline, READ_DEADLINE));
                    out.push(Output::SetTimer(Timer::AlertFlush, ALERT_FLUSH_INTERVAL));
                    self.more_alerts = true;
                    self.maybe_flush(out);
                }
                LinkMessage::Ack(ack) => {
                    let why = ack.error.unwrap_or_else(|| "no reason given".into());
                    self.fail(out, format!("the hub refused the registration: {why}"));
                }
                LinkMessage::Disconnect(Disconnect {
                    reason,
                    retry_after_sec,
                }) => {
                    out.push(Output::CancelTimer(Timer::AckDeadline));
                    out.push(Output::Close);
                    self.back_off(
                        out,
                        Cause::Disconnect { retry_after_sec },
                        format!("the hub asked us to disconnect: {reason}"),
                    );
                }
                other => {
                    self.fail(
                        out,
                        format!("expected an ack to register, got `{}`", other.kind()),
                    );
                }
            },
            State::Registered { version } => {
                out.push(Output::SetTimer(Timer::ReadDeadline, READ_DEADLINE));
                match frame.message {
                    LinkMessage::Ping => {
                        if version >= 2 {
                            out.push(Output::Send(LinkFrame::new(
                                uuid::Uuid::now_v7().to_string(),
                                LinkMessage::Pong,
                            )));
                        }
                    }
                    LinkMessage::Disconnect(Disconnect {
                        reason,
                        retry_after_sec,
                    }) => {
                        self.leave_registered(
                            out,
                            format!("the hub asked us to disconnect: {reason}"),
                        );
                        self.back_off(
                            out,
                            Cause::Disconnect { retry_after_sec },
                            format!("the hub asked us to disconnect: {reason}"),
                        );
                    }
                    LinkMessage::AlertAck(AlertAck { upto_seq }) => {
                        if version >= 2 && upto_seq > self.acked {
                            self.acked = upto_seq;
                            out.push(Output::DeleteAlerts {
                                upto_seq: self.acked,
                            });
                        }
                    }
                    LinkMessage::SessionStart(_)
                    | LinkMessage::SessionInput(_)
                    | LinkMessage::SessionCancel(_)
                    | LinkMessage::SessionAttach(_)
                    | LinkMessage::SessionDetach(_)
                    | LinkMessage::SessionAnswer(_)
                    | LinkMessage::SessionNotice(_) => out.push(Output::Deliver(frame)),
                    LinkMessage::Ack(_) | LinkMessage::Pong => {}
                    other => out.push(Output::Note(format!(
                        "ignored an unexpected `{}` from the hub",
                        other.kind()
                    ))),
                }
            }
            _ => {}
        }
    }

    fn on_timer(&mut self, out: &mut Vec<Output>, timer: Timer) {
        match (timer, self.state) {
            (Timer::Reconnect, State::Waiting) => {
                self.state = State::Connecting;
                out.push(Output::Connect);
            }
            (Timer::AckDeadline, State::Handshaking) => {
                self.fail(
                    out,
                    format!(
                        "no ack to register within {} s",
                        REGISTER_ACK_TIMEOUT.as_secs()
                    ),
                );
            }
            (Timer::Heartbeat, State::Registered { .. }) => {
                out.push(Output::SendHeartbeat);
                out.push(Output::SetTimer(Timer::Heartbeat, HEARTBEAT_INTERVAL));
            }
            (Timer::ReadDeadline, State::Registered { .. }) => {
                self.drop_registered(
                    out,
                    format!("nothing from the hub for {} s", READ_DEADLINE.as_secs()),
                );
            }
            (Timer::AlertFlush, State::Registered { .. }) => {
                self.more_alerts = true;
                self.hold = false;
                self.maybe_flush(out);
                out.push(Output::SetTimer(Timer::AlertFlush, ALERT_FLUSH_INTERVAL));
            }
            _ => {}
        }
    }

    fn maybe_flush(&mut self, out: &mut Vec<Output>) {
        if self.flushing || !self.more_alerts || self.hold {
            return;
        }
        if let State::Registered { version } = self.state {
            self.flushing = true;
            self.more_alerts = false;
            self.flush_version = version;
            out.push(Output::SendAlerts {
                after_seq: self.sent,
                max_events: self.batch_events,
            });
        }
    }

    /// A refused alert frame: nothing in it is acknowledged (the hub keeps its acks below
    /// it), so send it again — split when it was too large, later when the hub could not
    /// store it — or, for a single event refused as too large, give it up and count it.
    fn on_refused(
        &mut self,
        out: &mut Vec<Output>,
        first: u64,
        last: u64,
        events: usize,
        retry: bool,
    ) {
        if !retry && events <= 1 {
            out.push(Output::DropAlerts { first, last });
            return;
        }
        if !retry {
            self.batch_events = (events / 2).max(1);
        } else {
            self.hold = true;
        }
        // `sent` moves only when a flush reports; one still running may write past the
        // refused frame, and what it reports must not carry `sent` over it.
        self.sent = self.sent.min(first.saturating_sub(1).max(self.acked));
        self.rewound |= self.flushing;
        self.more_alerts = true;
        self.maybe_flush(out);
    }

    /// Leaves `Registered` (timers off, `Down`, close).
    fn leave_registered(&mut self, out: &mut Vec<Output>, reason: String) {
        for t in [Timer::Heartbeat, Timer::ReadDeadline, Timer::AlertFlush] {
            out.push(Output::CancelTimer(t));
        }
        out.push(Output::Down { reason });
        out.push(Output::Close);
        self.flushing = false;
    }

    fn drop_registered(&mut self, out: &mut Vec<Output>, reason: String) {
        self.leave_registered(out, reason.clone());
        self.back_off(out, Cause::Dropped, reason);
    }

    /// A failure before registration: close and back off.
    fn fail(&mut self, out: &mut Vec<Output>, reason: String) {
        out.push(Output::CancelTimer(Timer::AckDeadline));
        out.push(Output::Close);
        self.back_off(out, Cause::Failure, reason);
    }

    fn back_off(&mut self, out: &mut Vec<Output>, cause: Cause, reason: String) {
        let wait = self.backoff.wait(cause);
        self.state = State::Waiting;
        out.push(Output::Backoff { wait, reason });
        out.push(Output::SetTimer(Timer::Reconnect, wait));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tether_proto::link::Ack;

    fn frame(message: LinkMessage) -> Input {
        Input::Frame(Box::new(LinkFrame::new("f", message)))
    }

    fn ack(ok: bool, proto: Option<u32>) -> Input {
        frame(LinkMessage::Ack(Ack {
            ok,
            error: (!ok).then(|| "nope".into()),
            proto,
            ..Ack::default()
        }))
    }

    fn backoff_wait(out: &[Output]) -> Option<Duration> {
        out.iter().find_map(|o| match o {
            Output::Backoff { wait, .. } => Some(*wait),
            _ => None,
        })
    }

    fn registered(offered: u32, proto: Option<u32>) -> LinkMachine {
        let mut m = LinkMachine::new(offered, SeededRng::new(1), 0);
        m.handle(Input::Start);
        m.handle(Input::Connected);
        m.handle(ack(true, proto));
        m
    }

    #[test]
    fn handshake_sends_register_then_waits_for_the_ack() {
        let mut m = LinkMachine::new(2, SeededRng::new(1), 0);
        assert_eq!(
            m.handle(Input::Start),
            vec![Output::CancelTimer(Timer::Reconnect), Output::Connect]
        );
        assert_eq!(
            m.handle(Input::Connected),
            vec![
                Output::SendRegister,
                Output::SetTimer(Timer::AckDeadline, REGISTER_ACK_TIMEOUT)
            ]
        );
        let out = m.handle(ack(true, Some(2)));
        assert!(out.contains(&Output::Registered {
            version: 2,
            warning: None
        }));
        assert!(out.contains(&Output::SetTimer(Timer::Heartbeat, HEARTBEAT_INTERVAL)));
        assert!(out.contains(&Output::SetTimer(Timer::ReadDeadline, READ_DEADLINE)));
        assert_eq!(m.version(), Some(2));
    }

    #[test]
    fn a_version_one_hub_gets_version_one() {
        assert_eq!(registered(2, None).version(), Some(1));
        assert_eq!(registered(1, Some(2)).version(), Some(1));
    }

    #[test]
    fn no_ack_in_ten_seconds_reconnects() {
        let mut m = LinkMachine::new(2, SeededRng::new(1), 0);
        m.handle(Input::Start);
        m.handle(Input::Connected);
        let out = m.handle(Input::Timer(Timer::AckDeadline));
        assert!(out.contains(&Output::Close));
        assert_eq!(m.state(), State::Waiting);
        assert!(backoff_wait(&out).is_some());
        let out = m.handle(Input::Timer(Timer::Reconnect));
        assert_eq!(out, vec![Output::Connect]);
    }

    #[test]
    fn ping_gets_pong_only_under_version_two() {
        let mut v2 = registered(2, Some(2));
        assert!(
            v2.handle(frame(LinkMessage::Ping))
                .iter()
                .any(|o| matches!(o, Output::Send(f) if f.message == LinkMessage::Pong))
        );
        let mut v1 = registered(2, None);
        assert!(
            !v1.handle(frame(LinkMessage::Ping))
                .iter()
                .any(|o| matches!(o, Output::Send(_)))
        );
    }

    #[test]
    fn version_one_deletes_alerts_once_written_version_two_on_ack() {
        let mut v1 = registered(2, None);
        let out = v1.handle(Input::AlertsWritten { upto_seq: Some(5) });
        assert!(out.contains(&Output::DeleteAlerts { upto_seq: 5 }));

        let mut v2 = registered(2, Some(2));
        let out = v2.handle(Input::AlertsWritten { upto_seq: Some(5) });
        assert!(!out.iter().any(|o| matches!(o, Output::DeleteAlerts { .. })));
        let out = v2.handle(frame(LinkMessage::AlertAck(AlertAck { upto_seq: 3 })));
        assert!(out.contains(&Output::DeleteAlerts { upto_seq: 3 }));
        // After a reconnect, version 2 resends from the last acknowledged event.
        v2.handle(Input::ConnectionLost { error: "x".into() });
        v2.handle(Input::Timer(Timer::Reconnect));
        v2.handle(Input::Connected);
        let out = v2.handle(ack(true, Some(2)));
        assert!(
            out.contains(&Output::SendAlerts {
                after_seq: 3,
                max_events: MAX_ALERT_BATCH
            }),
            "{out:?}"
        );
    }

    #[test]
    fn a_version_one_flush_cut_short_still_counts_what_it_wrote() {
        // The connection drops while a flush (started at registration) runs; the flush
        // reports afterwards.
        let mut v1 = registered(2, None);
        v1.handle(Input::ConnectionLost {
            error: "cut".into(),
        });
        let out = v1.handle(Input::AlertsWritten {
            upto_seq: Some(300),
        });
        assert!(
            out.contains(&Output::DeleteAlerts { upto_seq: 300 }),
            "{out:?}"
        );
        // Nothing is flushed while the link is down ...
        assert!(!out.iter().any(|o| matches!(o, Output::SendAlerts { .. })));
        // ... and after the reconnect, sending resumes after what was written.
        v1.handle(Input::Timer(Timer::Reconnect));
        v1.handle(Input::Connected);
        let out = v1.handle(ack(true, None));
        assert!(
            out.contains(&Output::SendAlerts {
                after_seq: 300,
                max_events: MAX_ALERT_BATCH
            }),
            "{out:?}"
        );

        // Shutdown during a flush: what was written still counts.
        let mut v1 = registered(2, None);
        v1.handle(Input::AlertsPending);
        v1.handle(Input::Shutdown);
        let out = v1.handle(Input::AlertsWritten { upto_seq: Some(7) });
        assert_eq!(out, vec![Output::DeleteAlerts { upto_seq: 7 }]);

        // Version 2 keeps everything unacknowledged for the next connection.
        let mut v2 = registered(2, Some(2));
        v2.handle(Input::AlertsPending);
        v2.handle(Input::ConnectionLost {
            error: "cut".into(),
        });
        let out = v2.handle(Input::AlertsWritten {
            upto_seq: Some(300),
        });
        assert!(
            !out.iter().any(|o| matches!(o, Output::DeleteAlerts { .. })),
            "{out:?}"
        );
        v2.handle(Input::Timer(Timer::Reconnect));
        v2.handle(Input::Connected);
        let out = v2.handle(ack(true, Some(2)));
        assert!(
            out.contains(&Output::SendAlerts {
                after_seq: 0,
                max_events: MAX_ALERT_BATCH
            }),
            "{out:?}"
        );
    }

    #[test]
    fn disconnect_waits_retry_after_and_resets_the_backoff() {
        let mut m = registered(2, Some(2));
        let out = m.handle(frame(LinkMessage::Disconnect(Disconnect {
            reason: "maintenance".into(),
            retry_after_sec: 40,
        })));
        let wait = backoff_wait(&out).expect("wait");
        assert!(
            wait >= Duration::from_secs(30) && wait <= Duration::from_secs(50),
            "{wait:?}"
        );
        assert!(out.contains(&Output::Down {
            reason: "the hub asked us to disconnect: maintenance".into()
        }));
    }

    #[test]
    fn silence_for_ninety_seconds_drops_the_link() {
        let mut m = registered(2, Some(2));
        let out = m.handle(Input::Timer(Timer::ReadDeadline));
        assert!(out.iter().any(|o| matches!(o, Output::Down { .. })));
        let wait = backoff_wait(&out).expect("wait");
        // A registered link that dropped waits about 1 s.
        assert!(wait <= Duration::from_millis(1250), "{wait:?}");
    }

    #[test]
    fn shutdown_closes_and_stops_for_good() {
        let mut m = registered(2, Some(2));
        let out = m.handle(Input::Shutdown);
        assert!(out.contains(&Output::Close));
        assert_eq!(m.state(), State::Stopped);
        assert!(m.handle(Input::Start).is_empty());
        assert!(m.handle(Input::Timer(Timer::Reconnect)).is_empty());
    }

    fn sends(out: &[Output]) -> Option<(u64, usize)> {
        out.iter().find_map(|o| match o {
            Output::SendAlerts {
                after_seq,
                max_events,
            } => Some((*after_seq, *max_events)),
            _ => None,
        })
    }

    #[test]
    fn a_refused_alert_frame_is_split_resent_or_dropped() {
        let mut m = registered(2, Some(2));
        // The flush after registering writes 1..=40 in frames; the hub refuses 1..=30.
        let out = m.handle(Input::AlertsRefused {
            first: 1,
            last: 30,
            events: 30,
            retry: false,
        });
        assert_eq!(sends(&out), None, "a flush is still running: {out:?}");
        // That flush ends having written up to 40: it must not move past the refused frame.
        let out = m.handle(Input::AlertsWritten { upto_seq: Some(40) });
        assert_eq!(sends(&out), Some((0, 15)), "{out:?}");
        // A later ack for 40 would be a hub bug; the agent trusts the hub's acks, which never
        // cover a refused seq. A single event refused as too large is dropped and counted.
        m.handle(Input::AlertsWritten { upto_seq: Some(15) });
        let out = m.handle(Input::AlertsRefused {
            first: 16,
            last: 16,
            events: 1,
            retry: false,
        });
        assert!(
            out.contains(&Output::DropAlerts {
                first: 16,
                last: 16
            }),
            "{out:?}"
        );
    }

    #[test]
    fn alerts_the_hub_could_not_store_wait_for_the_next_tick() {
        let mut m = registered(2, Some(2));
        m.handle(Input::AlertsWritten { upto_seq: Some(10) });
        let out = m.handle(Input::AlertsRefused {
            first: 1,
            last: 10,
            events: 10,
            retry: true,
        });
        assert_eq!(sends(&out), None, "not at once: {out:?}");
        // The flush that was running when the refusal came ends (it had nothing more).
        let out = m.handle(Input::AlertsWritten { upto_seq: None });
        assert_eq!(sends(&out), None, "not after that flush: {out:?}");
        let out = m.handle(Input::AlertsPending);
        assert_eq!(sends(&out), None, "not before the tick: {out:?}");
        let out = m.handle(Input::Timer(Timer::AlertFlush));
        assert_eq!(
            sends(&out),
            Some((0, MAX_ALERT_BATCH)),
            "same size, from the start: {out:?}"
        );
    }

    #[derive(Clone, Debug)]
    enum Step {
        Start,
        Connected,
        Fail401,
        FailOther,
        AckOk(bool),
        AckRefused,
        Ping,
        Disconnect(u64),
        Lost,
        Fire(Timer),
        Garbage,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            Just(Step::Start),
            Just(Step::Connected),
            Just(Step::Fail401),
            Just(Step::FailOther),
            any::<bool>().prop_map(Step::AckOk),
            Just(Step::AckRefused),
            Just(Step::Ping),
            (0u64..600).prop_map(Step::Disconnect),
            Just(Step::Lost),
            proptest::sample::select(Timer::ALL.to_vec()).prop_map(Step::Fire),
            Just(Step::Garbage),
        ]
    }

    proptest! {
        /// Whatever happens, the machine keeps the handshake and backoff rules: a dial only
        /// from Connecting, register only right after Connected, Registered only after an ok
        /// ack, every failure followed by exactly one reconnect timer within the table, and a
        /// 401 never waits less than 45 s.
        #[test]
        fn rules_hold_for_any_sequence(seed in any::<u64>(), offered in 1u32..3, steps in proptest::collection::vec(step(), 1..80)) {
            let mut m = LinkMachine::new(offered, SeededRng::new(seed), 0);
            for s in steps {
                let before = m.state();
                let input = match s {
                    Step::Start => Input::Start,
                    Step::Connected => Input::Connected,
                    Step::Fail401 => Input::ConnectFailed { status: Some(401), error: "401".into() },
                    Step::FailOther => Input::ConnectFailed { status: None, error: "refused".into() },
                    Step::AckOk(v2) => ack(true, v2.then_some(2)),
                    Step::AckRefused => ack(false, None),
                    Step::Ping => frame(LinkMessage::Ping),
                    Step::Disconnect(r) => frame(LinkMessage::Disconnect(Disconnect { reason: "r".into(), retry_after_sec: r })),
                    Step::Lost => Input::ConnectionLost { error: "x".into() },
                    Step::Fire(t) => Input::Timer(t),
                    Step::Garbage => Input::BadFrame(LinkDecodeError::Json("x".into())),
                };
                let was_401 = matches!(s, Step::Fail401);
                let out = m.handle(input);
                let after = m.state();
                for o in &out {
                    match o {
                        Output::Connect => prop_assert_eq!(after, State::Connecting),
                        Output::SendRegister => prop_assert!(before == State::Connecting && after == State::Handshaking),
                        Output::Registered { version, .. } => {
                            prop_assert_eq!(before, State::Handshaking);
                            prop_assert!(*version == 1 || (*version == 2 && offered == 2));
                        }
                        Output::SendHeartbeat | Output::SendAlerts { .. } => {
                            let registered = matches!(after, State::Registered { .. });
                            prop_assert!(registered);
                        }
                        _ => {}
                    }
                }
                let reconnects = out.iter().filter(|o| matches!(o, Output::SetTimer(Timer::Reconnect, _))).count();
                if after == State::Waiting && before != State::Waiting {
                    prop_assert_eq!(reconnects, 1, "entering Waiting must set exactly one reconnect timer: {:?}", out);
                    let wait = backoff_wait(&out).expect("backoff output");
                    prop_assert!(wait >= Duration::from_millis(750) && wait <= Duration::from_secs(2250));
                    if was_401 {
                        prop_assert!(wait >= Duration::from_secs(45), "401 waited only {:?}", wait);
                    }
                } else {
                    prop_assert_eq!(reconnects, 0);
                }
                if matches!(after, State::Registered { .. }) && !matches!(before, State::Registered { .. }) {
                    let announced = out.iter().any(|o| matches!(o, Output::Registered { .. }));
                    prop_assert!(announced);
                }
            }
        }
    }
}
