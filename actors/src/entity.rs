//! The programming model: [`EventSourced`], implemented by a user's state type, and the
//! [`SnapshotPolicy`] of an entity type.

use serde::de::DeserializeOwned;
use serde::Serialize;
use stateline_journal::{CodecError, Manifest};

use crate::effect::Effect;

/// A user's entity state, driven by commands and rebuilt from its events.
///
/// `handle` decides (it never mutates); `apply` is the only place state changes, and it runs
/// both live (after the events are durable) and during recovery, so it must be pure:
/// deterministic, no I/O, no clock.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use stateline_actors::{Effect, EventSourced};
///
/// #[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct Counter { value: i64 }
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// enum Cmd { Add(i64), Get }
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// enum Ev { Added(i64) }
///
/// impl EventSourced for Counter {
///     const TYPE_NAME: &'static str = "counter";
///     type Command = Cmd;
///     type Event = Ev;
///     type Reply = i64;
///
///     fn handle(&self, cmd: Cmd) -> Effect<Self> {
///         match cmd {
///             Cmd::Add(n) => Effect::persist(vec![Ev::Added(n)]).then_reply(|s: &Self| s.value),
///             Cmd::Get => Effect::reply(self.value),
///         }
///     }
///
///     fn apply(&mut self, event: &Ev) {
///         match event { Ev::Added(n) => self.value += n }
///     }
/// }
/// ```
pub trait EventSourced: Default + Serialize + DeserializeOwned + Send + Unpin + 'static {
    /// Stable name of the entity type; part of every persistence id. Never change it.
    const TYPE_NAME: &'static str;
    /// Schema version of the events this code writes. Default 1. Bump it when the event type
    /// changes incompatibly, and decode older versions in [`Self::upcast`].
    const EVENT_VERSION: u32 = 1;
    /// Schema version of the snapshots this code writes. Default 1. A snapshot of another
    /// version is skipped (recovery falls back to older snapshots or full replay).
    const SNAPSHOT_VERSION: u32 = 1;

    /// Whether a shard that receives this type's key groups in a handoff recovers their
    /// entities at once (in the background, a few at a time) instead of on their first
    /// command. Default `false` (lazy). Eager recovery suits entities that must be warm, such
    /// as those with timers or low-latency first commands.
    const RECOVER_EAGERLY: bool = false;

    /// What callers send.
    type Command: Send + Unpin + 'static;
    /// What is persisted.
    type Event: Serialize + DeserializeOwned + Send + Unpin + 'static;
    /// What callers get back.
    type Reply: Send + Unpin + 'static;

    /// Decides what a command does, looking at the current state.
    fn handle(&self, command: Self::Command) -> Effect<Self>;

    /// Applies one persisted event to the state.
    fn apply(&mut self, event: &Self::Event);

    /// Decodes an event stored with `manifest`. The default decodes the current
    /// [`Self::EVENT_VERSION`] with rmp-serde and refuses any other version; override it to
    /// upcast older versions. An error fails the entity's recovery with the persistence id and
    /// seq named; the event is never skipped.
    ///
    /// # Errors
    /// [`CodecError`] if the bytes are not an event of a known version.
    fn upcast(manifest: &Manifest, payload: &[u8]) -> Result<Self::Event, CodecError> {
        if manifest.version != Self::EVENT_VERSION {
            return Err(CodecError::Invalid(format!(
                "event version {} of {:?}, this code reads version {} (provide an upcaster)",
                manifest.version,
                manifest.type_name,
                Self::EVENT_VERSION
            )));
        }
        rmp_serde::from_slice(payload).map_err(|e| CodecError::Decode(e.to_string()))
    }

    /// The snapshot policy of this entity type. Default: [`SnapshotPolicy::default`].
    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::default()
    }
}

/// When an entity type snapshots, and what it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot after this many events since the last snapshot; `None` never snapshots.
    /// Default `Some(100)`.
    pub every_events: Option<u64>,
    /// Keep this many newest snapshots (older ones are deleted after a save). Default 2.
    pub keep: usize,
    /// Delete the events a snapshot covers, once it is saved (retention). Default `false`.
    pub delete_covered_events: bool,
    /// Snapshot when the entity is passivated or handed off, if at least
    /// [`Self::on_stop_min_events`] events arrived since the last snapshot. Default `true`.
    pub on_stop: bool,
    /// Fewest events since the last snapshot that make passivation or handoff write one.
    /// Default 16: replaying fewer costs the next incarnation less than the snapshot write
    /// costs the stop (a handoff of 50,000 entities pays it 50,000 times).
    pub on_stop_min_events: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            every_events: Some(100),
            keep: 2,
            delete_covered_events: false,
            on_stop: true,
            on_stop_min_events: 16,
        }
    }
}

impl SnapshotPolicy {
    /// Never snapshot.
    pub fn never() -> Self {
        Self {
            every_events: None,
            on_stop: false,
            ..Self::default()
        }
    }

    /// Snapshot every `n` events (n ≥ 1), other settings default.
    pub fn every(n: u64) -> Self {
        Self {
            every_events: Some(n.max(1)),
            ..Self::default()
        }
    }
}
