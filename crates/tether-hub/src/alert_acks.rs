//! What the hub may acknowledge to one agent connection (link protocol version 2).
//!
//! `alert_ack {upto_seq}` is cumulative: the agent deletes every spooled event up to it. So an
//! acknowledgement must never cover a `seq` the hub did not store — a frame it refused (too
//! large) or could not commit (store error) — even when a later batch with higher seqs was
//! stored fine. Once those seqs arrive again and are stored, the acknowledgement catches up
//! with everything stored on the connection. No I/O here: the agent endpoint feeds it.

use std::collections::BTreeSet;

/// Most seqs waiting to be sent again on one connection. Past it the agent is not splitting
/// or resending what was refused, and the connection is closed (its next one starts clean,
/// from the agent's own acknowledged mark).
pub const MAX_UNSTORED: usize = 100_000;

#[derive(Debug, Default)]
pub struct AlertAcks {
    /// The last `upto_seq` sent.
    acked: u64,
    /// The highest seq settled (stored, already held, or refused for good) on this connection.
    high: u64,
    /// Seqs the hub did not store and expects again.
    unstored: BTreeSet<u64>,
}

/// The agent left too many refused alerts unsent.
#[derive(Debug, PartialEq, Eq)]
pub struct TooManyUnstored(pub usize);

impl AlertAcks {
    pub fn new() -> Self {
        AlertAcks::default()
    }

    /// These seqs were not stored; the agent is expected to send them again.
    pub fn not_stored(
        &mut self,
        seqs: impl IntoIterator<Item = u64>,
    ) -> Result<(), TooManyUnstored> {
        for s in seqs {
            if s > self.acked {
                self.unstored.insert(s);
            }
        }
        if self.unstored.len() > MAX_UNSTORED {
            return Err(TooManyUnstored(self.unstored.len()));
        }
        Ok(())
    }

    /// These seqs are settled: stored now, stored before, or refused for good (an event that
    /// can never be stored, counted as such). Returns the `upto_seq` to send when the
    /// acknowledgement moves.
    pub fn settled(&mut self, seqs: impl IntoIterator<Item = u64>) -> Option<u64> {
        for s in seqs {
            self.unstored.remove(&s);
            self.high = self.high.max(s);
        }
        let upto = match self.unstored.first() {
            Some(first) => self.high.min(first - 1),
            None => self.high,
        };
        (upto > self.acked).then(|| {
            self.acked = upto;
            upto
        })
    }

    /// Seqs waiting to be sent again.
    pub fn unstored(&self) -> usize {
        self.unstored.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_refused_range_holds_the_ack_until_it_is_stored() {
        let mut a = AlertAcks::new();
        a.not_stored(1..=30).expect("room");
        assert_eq!(a.settled([31]), None, "31 is stored but 1..=30 are not");
        assert_eq!(a.settled(1..=15), Some(15));
        assert_eq!(a.settled(16..=30), Some(31));
        assert_eq!(a.settled([31]), None, "a duplicate moves nothing");
    }

    #[test]
    fn too_many_unstored_is_an_error() {
        let mut a = AlertAcks::new();
        assert!(a.not_stored(1..=(MAX_UNSTORED as u64 + 1)).is_err());
    }

    proptest! {
        /// Invariant: every acknowledgement sent is at most the smallest seq that was refused
        /// and not stored since, and never goes backwards.
        #[test]
        fn never_acks_an_unstored_seq(steps in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(1u64..200, 1..20)), 1..60)) {
            let mut a = AlertAcks::new();
            let mut stored: BTreeSet<u64> = BTreeSet::new();
            let mut refused: BTreeSet<u64> = BTreeSet::new();
            let mut last = 0;
            for (ok, seqs) in steps {
                if ok {
                    for s in &seqs { stored.insert(*s); refused.remove(s); }
                    if let Some(upto) = a.settled(seqs) {
                        prop_assert!(upto > last);
                        last = upto;
                        prop_assert!(refused.iter().all(|r| *r > upto),
                            "ack {} covers a refused seq {:?}", upto, refused);
                    }
                } else {
                    for s in &seqs { if *s > last && !stored.contains(s) { refused.insert(*s); } }
                    let unstored: Vec<u64> = seqs.into_iter().filter(|s| !stored.contains(s)).collect();
                    a.not_stored(unstored).expect("room");
                }
            }
        }
    }
}
