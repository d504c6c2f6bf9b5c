//! The entity logic shared by the actor and the testkit: recovery from the newest usable
//! snapshot plus the events after it, event encoding, and snapshot upkeep.

use std::time::Instant;

use stateline_journal::{
    CodecError, Journal, JournalError, Manifest, NewEvent, PersistenceId, Seq,
};
use tracing::{debug, info_span, warn};

use crate::entity::{EventSourced, SnapshotPolicy};
use crate::error::RecoveryError;

/// A live entity: its state, the seq it reflects, and its journal.
pub(crate) struct EntityCore<S: EventSourced> {
    pub pid: PersistenceId,
    pub state: S,
    pub seq: u64,
    pub snapshot_seq: u64,
    pub journal: Journal,
}

/// Encodes an event payload (named fields: see `journal/FORMAT.md`).
pub(crate) fn encode_event<S: EventSourced>(event: &S::Event) -> Result<NewEvent, CodecError> {
    NewEvent::encode(Manifest::new(S::TYPE_NAME, S::EVENT_VERSION), event)
}

pub(crate) fn encode_state<S: EventSourced>(state: &S) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec_named(state).map_err(|e| CodecError::Encode(e.to_string()))
}

impl<S: EventSourced> EntityCore<S> {
    /// Recovers `pid`: the newest snapshot that decodes and is not ahead of the journal, then
    /// every event after it, streamed. Anything undecodable or missing fails loudly.
    pub(crate) fn recover(journal: Journal, pid: PersistenceId) -> Result<Self, RecoveryError> {
        let span = info_span!("recovery", entity_type = S::TYPE_NAME, id = %pid.entity_id());
        let _g = span.enter();
        let started = Instant::now();
        let jerr = |source: JournalError| RecoveryError::Journal {
            pid: pid.clone(),
            source,
        };
        let view = journal.recovery_view(&pid).map_err(jerr)?;
        let highest = view.highest_seq().0;
        let mut state = S::default();
        let mut from_snapshot = 0;
        for &seq in view.snapshot_seqs().iter().rev() {
            if seq.0 > highest {
                warn!(%pid, seq = seq.0, highest, "snapshot ahead of the journal ignored");
                continue;
            }
            let decoded = view
                .snapshot_at(seq)
                .map_err(|e| e.to_string())
                .and_then(|s| {
                    let s = s.ok_or_else(|| "deleted meanwhile".to_string())?;
                    if s.manifest.version != S::SNAPSHOT_VERSION {
                        return Err(format!("snapshot version {}", s.manifest.version));
                    }
                    rmp_serde::from_slice::<S>(&s.payload).map_err(|e| e.to_string())
                });
            match decoded {
                Ok(s) => {
                    state = s;
                    from_snapshot = seq.0;
                    break;
                }
                Err(e) => warn!(%pid, seq = seq.0, error = %e, "unusable snapshot skipped"),
            }
        }
        let mut seq = from_snapshot;
        let mut replayed = 0u64;
        if highest > from_snapshot {
            let events = view.events_from(Seq(from_snapshot + 1)).map_err(jerr)?;
            // Visited in place: no allocation per replayed event.
            let visited = events.for_each_ref(|rec| {
                if rec.seq.0 != seq + 1 {
                    return Err(Visit::Recovery(RecoveryError::Incomplete {
                        pid: pid.clone(),
                        expected: Seq(seq + 1),
                        found: Some(rec.seq),
                        highest: Seq(highest),
                    }));
                }
                let event = S::upcast(rec.manifest, rec.payload).map_err(|source| {
                    Visit::Recovery(RecoveryError::Decode {
                        pid: pid.clone(),
                        seq: rec.seq,
                        source,
                    })
                })?;
                state.apply(&event);
                seq = rec.seq.0;
                replayed += 1;
                Ok(())
            });
            match visited {
                Ok(()) => {}
                Err(Visit::Journal(e)) => return Err(jerr(e)),
                Err(Visit::Recovery(e)) => return Err(e),
            }
        }
        if seq != highest {
            return Err(RecoveryError::Incomplete {
                pid: pid.clone(),
                expected: Seq(seq + 1),
                found: None,
                highest: Seq(highest),
            });
        }
        debug!(
            events_replayed = replayed,
            from_snapshot_seq = from_snapshot,
            elapsed_us = started.elapsed().as_micros() as u64,
            "recovered"
        );
        Ok(Self {
            pid,
            state,
            seq,
            snapshot_seq: from_snapshot,
            journal,
        })
    }

    /// Applies events that are durable at seqs `seq+1..=last`.
    pub(crate) fn applied(&mut self, events: &[S::Event], last: Seq) {
        for e in events {
            self.state.apply(e);
        }
        self.seq = last.0;
    }

    /// The entity type's policy (asked each time rather than kept: live entities stay small).
    pub(crate) fn policy(&self) -> SnapshotPolicy {
        S::snapshot_policy()
    }

    /// A periodic snapshot is due under `policy` (the testkit passes its own).
    pub(crate) fn snapshot_due(&self, policy: &SnapshotPolicy) -> bool {
        policy
            .every_events
            .is_some_and(|n| self.seq >= self.snapshot_seq.saturating_add(n))
    }

    pub(crate) fn events_since_snapshot(&self) -> u64 {
        self.seq.saturating_sub(self.snapshot_seq)
    }

    /// Stopping now (passivation, handoff) writes a snapshot under `policy`.
    pub(crate) fn snapshot_on_stop_due(&self, policy: &SnapshotPolicy) -> bool {
        policy.on_stop && self.events_since_snapshot() >= policy.on_stop_min_events.max(1)
    }

    /// What to save for a snapshot now: `(seq, bytes)`. Marks the snapshot as taken.
    pub(crate) fn take_snapshot(&mut self) -> Option<(Seq, Vec<u8>)> {
        match encode_state(&self.state) {
            Ok(bytes) => {
                self.snapshot_seq = self.seq;
                Some((Seq(self.seq), bytes))
            }
            Err(e) => {
                warn!(pid = %self.pid, error = %e, "state does not serialize; no snapshot");
                None
            }
        }
    }
}

/// Saves a snapshot and applies the policy's retention afterwards.
pub(crate) async fn save_snapshot<S: EventSourced>(
    journal: Journal,
    pid: PersistenceId,
    policy: SnapshotPolicy,
    seq: Seq,
    bytes: Vec<u8>,
) -> Result<(), JournalError> {
    let manifest = Manifest::new(S::TYPE_NAME, S::SNAPSHOT_VERSION);
    journal
        .save_snapshot_retaining(&pid, seq, manifest, bytes, policy.keep.max(1))
        .await?;
    if policy.delete_covered_events {
        journal.delete_events_to(&pid, seq).await?;
    }
    Ok(())
}

/// [`save_snapshot`] outside an async runtime (testkit).
#[cfg(feature = "testkit")]
pub(crate) fn save_snapshot_blocking<S: EventSourced>(
    journal: &Journal,
    pid: &PersistenceId,
    policy: SnapshotPolicy,
    seq: Seq,
    bytes: Vec<u8>,
) -> Result<(), JournalError> {
    let manifest = Manifest::new(S::TYPE_NAME, S::SNAPSHOT_VERSION);
    journal.save_snapshot_blocking(pid, seq, manifest, bytes)?;
    journal.delete_snapshots_blocking(
        pid,
        stateline_journal::SnapshotCriteria::keep_newest(policy.keep.max(1)),
    )?;
    if policy.delete_covered_events {
        journal.delete_events_to_blocking(pid, seq)?;
    }
    Ok(())
}

/// Why visiting the events of a recovery stopped.
enum Visit {
    Journal(JournalError),
    Recovery(RecoveryError),
}

impl From<JournalError> for Visit {
    fn from(e: JournalError) -> Self {
        Visit::Journal(e)
    }
}
