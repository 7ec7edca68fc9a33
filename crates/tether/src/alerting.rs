//! Where the agent's alert events go. Checks and `alert.send` hand every event to one
//! delivery task, which records it in the local history, queues it for the hub (when a hub is
//! configured), offers it to the notifiers, and — for checks that ask for it — to automatic
//! diagnosis. Nothing on this path waits for a slow consumer: the hub spool's sink, the
//! notifiers and auto-diagnosis all take events without blocking, and the history write runs
//! on the blocking pool.

use crate::autodiag::AutoDiagnosis;
use std::sync::Arc;
use tether_checks::engine::{CheckEngine, CheckEvent};
use tether_checks::history::AlertHistory;
use tether_checks::notify::Notifiers;
use tether_link::AlertSink;
use tether_link::driver::HeartbeatSource;
use tether_proto::link::AlertEvent;
use tokio::sync::mpsc;

/// One event to deliver.
pub enum Delivery {
    /// From a check: may ask for a diagnosis.
    Check(CheckEvent),
    /// From `alert.send`.
    Manual(AlertEvent),
}

/// The sending side, shared by the check engine and `alert.send`.
#[derive(Clone)]
pub struct Deliver {
    tx: mpsc::UnboundedSender<Delivery>,
}

impl Deliver {
    pub fn send(&self, d: Delivery) {
        if self.tx.send(d).is_err() {
            tracing::error!("alert delivery has stopped; an alert event was lost");
        }
    }
}

/// The receiving side, until its outlets are known.
pub struct Pending {
    rx: mpsc::UnboundedReceiver<Delivery>,
}

pub fn channel() -> (Deliver, Pending) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Deliver { tx }, Pending { rx })
}

/// Where delivered events go.
pub struct Outlets {
    pub history: Arc<AlertHistory>,
    pub hub: Option<AlertSink>,
    pub notifiers: Notifiers,
    pub autodiag: AutoDiagnosis,
}

impl Pending {
    /// Starts delivering. Ends when every sender is gone.
    pub fn start(mut self, out: Outlets) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Some(d) = self.rx.recv().await {
                let (event, check) = match d {
                    Delivery::Check(c) => (c.event.clone(), Some(c)),
                    Delivery::Manual(e) => (e, None),
                };
                let history = out.history.clone();
                let recorded = event.clone();
                // SQLite off the async workers; the event goes on regardless.
                let write = tokio::task::spawn_blocking(move || history.record(&recorded));
                if let Some(sink) = &out.hub {
                    sink.send(event.clone());
                }
                out.notifiers.notify(&event);
                if let Some(c) = &check {
                    out.autodiag.offer(&event, &c.plugin, &c.target, c.diagnose);
                }
                match write.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot record an alert in the history")
                    }
                    Err(e) => tracing::error!(error = %e, "history write failed"),
                }
            }
        })
    }
}

/// Heartbeat figures from the check engine.
pub struct EngineFigures(pub CheckEngine);

impl HeartbeatSource for EngineFigures {
    fn active_alerts(&self) -> u64 {
        self.0.active_alerts()
    }
}
