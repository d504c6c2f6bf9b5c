//! [`EventSourcedTestKit`]: test an entity type without actors, against a real (in-memory)
//! journal. Given prior events, when a command, then inspect the persisted events, the reply
//! and the state; `restart()` recovers from the journal and asserts the recovered state equals
//! the live one. Every command, event, reply and state is round-tripped through rmp-serde, so a
//! type that does not serialize fails the test.
//!
//! Its methods block: use it from plain `#[test]` functions, not inside an async runtime.

use std::fmt::Debug;

use redb::backends::InMemoryBackend;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stateline_journal::{EntityId, EntityType, Journal, PersistenceId, Seq};

use crate::core::{encode_event, save_snapshot_blocking, EntityCore};
use crate::effect::Kind;
use crate::entity::{EventSourced, SnapshotPolicy};
use crate::error::{CommandError, RecoveryError};

/// What one command did.
#[derive(Debug)]
pub struct CommandResult<S: EventSourced> {
    /// The events it persisted (decoded back from the journal's bytes).
    pub events: Vec<S::Event>,
    /// Its reply, or the error a caller would get.
    pub reply: Result<S::Reply, CommandError<()>>,
    /// Whether the effect was a rejection.
    pub rejected: bool,
    /// Whether the entity stopped after it.
    pub stopped: bool,
}

impl<S: EventSourced> CommandResult<S> {
    /// The reply, panicking with the error if there is none.
    #[track_caller]
    pub fn reply(self) -> S::Reply
    where
        S::Reply: Debug,
    {
        match self.reply {
            Ok(r) => r,
            Err(e) => panic!("command failed: {e}"),
        }
    }
}

fn round_trip<T: Serialize + DeserializeOwned>(what: &str, value: &T) -> T {
    let bytes = rmp_serde::to_vec_named(value)
        .unwrap_or_else(|e| panic!("{what} does not serialize with rmp-serde: {e}"));
    rmp_serde::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{what} does not deserialize after serializing: {e}"))
}

/// Drives one entity of type `S` through commands against an in-memory journal.
pub struct EventSourcedTestKit<S: EventSourced> {
    journal: Journal,
    pid: PersistenceId,
    core: EntityCore<S>,
    policy: SnapshotPolicy,
}

impl<S> EventSourcedTestKit<S>
where
    S: EventSourced + PartialEq + Debug,
    S::Command: Serialize + DeserializeOwned,
    S::Event: Clone + Debug,
    S::Reply: Serialize + DeserializeOwned + Debug,
{
    /// A test kit for entity `id` on a fresh in-memory journal, with the type's snapshot policy.
    #[track_caller]
    pub fn new(id: &str) -> Self {
        Self::with_policy(id, S::snapshot_policy())
    }

    /// A test kit with another snapshot policy (to test recovery with snapshots).
    #[track_caller]
    pub fn with_policy(id: &str, policy: SnapshotPolicy) -> Self {
        let journal = Journal::builder()
            .open_with_backend(InMemoryBackend::new(), format!("testkit:{}", S::TYPE_NAME))
            .unwrap_or_else(|e| panic!("in-memory journal: {e}"));
        let entity_type = EntityType::new(S::TYPE_NAME)
            .unwrap_or_else(|e| panic!("TYPE_NAME {:?}: {e}", S::TYPE_NAME));
        let pid = PersistenceId::new(
            entity_type,
            EntityId::new(id).unwrap_or_else(|e| panic!("entity id {id:?}: {e}")),
        );
        let core = EntityCore::recover(journal.clone(), pid.clone())
            .unwrap_or_else(|e| panic!("recovery: {e}"));
        Self {
            journal,
            pid,
            core,
            policy,
        }
    }

    /// Persists `events` as if earlier commands had, then recovers the entity from them.
    #[track_caller]
    pub fn given(&mut self, events: Vec<S::Event>) -> &mut Self {
        if !events.is_empty() {
            let encoded = events
                .iter()
                .map(|e| encode_event::<S>(&round_trip("event", e)))
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| panic!("event does not serialize: {e}"));
            let next = Seq(self.core.seq + 1);
            self.journal
                .append_blocking(&self.pid, next, encoded)
                .unwrap_or_else(|e| panic!("given events: {e}"));
        }
        self.core = self
            .recover()
            .unwrap_or_else(|e| panic!("recovery after given: {e}"));
        self
    }

    /// Runs one command as the entity actor would: persist, apply, reply, side effects,
    /// snapshot per policy.
    #[track_caller]
    pub fn run(&mut self, command: S::Command) -> CommandResult<S> {
        let command = round_trip("command", &command);
        let effect = self.core.state.handle(command);
        let after = effect.after;
        let result = match effect.kind {
            Kind::Reply(r) => (Ok(r), Vec::new(), false, false),
            Kind::Reject(r) => (Ok(r), Vec::new(), true, false),
            Kind::Stop(r) => (Ok(r), Vec::new(), false, true),
            Kind::Persist { events, reply } if events.is_empty() => {
                (Ok(reply(&self.core.state)), Vec::new(), false, false)
            }
            Kind::Persist { events, reply } => {
                let encoded: Result<Vec<_>, _> = events.iter().map(encode_event::<S>).collect();
                match encoded {
                    Err(e) => panic!("event does not serialize: {e}"),
                    Ok(encoded) => {
                        let next = Seq(self.core.seq + 1);
                        match self.journal.append_blocking(&self.pid, next, encoded) {
                            Ok(ack) => {
                                let events: Vec<S::Event> =
                                    events.iter().map(|e| round_trip("event", e)).collect();
                                self.core.applied(&events, ack.last_seq);
                                let r = reply(&self.core.state);
                                if self.core.snapshot_due(&self.policy) {
                                    if let Some((seq, bytes)) = self.core.take_snapshot() {
                                        save_snapshot_blocking::<S>(
                                            &self.journal,
                                            &self.pid,
                                            self.policy,
                                            seq,
                                            bytes,
                                        )
                                        .unwrap_or_else(|e| panic!("snapshot: {e}"));
                                    }
                                }
                                (Ok(r), events, false, false)
                            }
                            Err(e) if e.is_rejected() => {
                                (Err(CommandError::Rejected(e)), Vec::new(), false, false)
                            }
                            Err(e) => {
                                (Err(CommandError::PersistFailed(e)), Vec::new(), false, true)
                            }
                        }
                    }
                }
            }
        };
        let (reply, events, rejected, stopped) = result;
        if reply.is_ok() {
            for f in after {
                f(&self.core.state);
            }
        }
        let reply = reply.map(|r| round_trip("reply", &r));
        let state = round_trip("state", &self.core.state);
        assert_eq!(
            state, self.core.state,
            "state changed by an rmp-serde round trip"
        );
        if stopped {
            self.core = self
                .recover()
                .unwrap_or_else(|e| panic!("recovery after stop: {e}"));
        }
        CommandResult {
            events,
            reply,
            rejected,
            stopped,
        }
    }

    /// The live state.
    pub fn state(&self) -> &S {
        &self.core.state
    }

    /// The seq of the last applied event.
    pub fn seq(&self) -> Seq {
        Seq(self.core.seq)
    }

    /// Every stored event of the entity, decoded.
    #[track_caller]
    pub fn persisted_events(&self) -> Vec<S::Event> {
        self.journal
            .all_events(&self.pid)
            .unwrap_or_else(|e| panic!("read events: {e}"))
            .into_iter()
            .map(|r| {
                S::upcast(&r.manifest, &r.payload)
                    .unwrap_or_else(|e| panic!("decode seq {}: {e}", r.seq))
            })
            .collect()
    }

    /// The journal the kit writes to (to inspect snapshots, or append events of an older
    /// schema version by hand).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn recover(&self) -> Result<EntityCore<S>, RecoveryError> {
        EntityCore::recover(self.journal.clone(), self.pid.clone())
    }

    /// Recovers the entity from the journal (newest snapshot plus events) and asserts the
    /// recovered state equals the live one (G4).
    #[track_caller]
    pub fn restart(&mut self) -> &mut Self {
        let recovered = self.recover().unwrap_or_else(|e| panic!("recovery: {e}"));
        assert_eq!(
            recovered.state, self.core.state,
            "recovered state differs from the live state"
        );
        assert_eq!(recovered.seq, self.core.seq, "recovered seq differs");
        self.core = recovered;
        self
    }

    /// Recovers from the journal and returns the error instead of panicking.
    ///
    /// # Errors
    /// The [`RecoveryError`] a new incarnation would fail with.
    pub fn try_restart(&mut self) -> Result<&mut Self, RecoveryError> {
        self.core = self.recover()?;
        Ok(self)
    }
}
