//! Configuration and counters of a shard actor.

use std::time::Duration;

/// Configuration of a shard actor, with documented defaults.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// An entity idle this long is passivated (stopped, snapshotted per its policy).
    /// Default 120 s.
    pub passivate_after: Duration,
    /// Most live entities; starting one more passivates the least recently used idle one.
    /// Default 100,000.
    pub max_active_entities: usize,
    /// An entity idle this long hibernates, as an Erlang process does: its actor (mailbox and
    /// task) stops, its state stays in the shard, and its next command starts a fresh actor on
    /// that state without reading the journal. It is still live (counted in
    /// [`ShardStats::live_entities`] and in [`Self::max_active_entities`]); only passivation
    /// ([`Self::passivate_after`]) drops the state. Keeps warm entities small in memory.
    /// `Duration::MAX` turns idle hibernation off. Default 2 s.
    pub hibernate_after: Duration,
    /// Most live entities whose actor runs at once. Starting or waking one more hibernates
    /// idle running ones, chosen by second chance (the oldest started that received no command
    /// since they were last looked at): a burst that touches many entities within
    /// [`Self::hibernate_after`] costs the memory of this many actors, not of one per entity.
    /// Busy entities are never hibernated, so the bound can be exceeded while they all work.
    /// `usize::MAX` turns it off (with `hibernate_after = Duration::MAX`, every live entity's
    /// actor keeps running). Default 10,000.
    pub max_running_entities: usize,
    /// Most commands queued or running in the shard; more are refused with
    /// [`CommandError::Overloaded`](crate::CommandError::Overloaded), handing the command back. Default 100,000.
    pub max_queued_commands: usize,
    /// How often idle entities are looked for. Default 1 s.
    pub sweep_interval: Duration,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            passivate_after: Duration::from_secs(120),
            max_active_entities: 100_000,
            hibernate_after: Duration::from_secs(2),
            max_running_entities: 10_000,
            max_queued_commands: 100_000,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

/// Counters of one shard actor. More counters may be added (`#[non_exhaustive]`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStats {
    /// Live entities: those with a running actor plus the hibernated ones.
    pub live_entities: usize,
    /// Live entities that are hibernated (state kept, actor stopped while idle).
    pub hibernated_entities: usize,
    /// Commands queued or running.
    pub queued_commands: usize,
    /// Commands handled since the shard started.
    pub messages_handled: u64,
    /// Events persisted since the shard started.
    pub events_persisted: u64,
    /// Serialized size of the live entities' states (as last measured).
    pub state_bytes: u64,
    /// Entities passivated since the shard started.
    pub passivations: u64,
    /// Times an idle entity hibernated since the shard started.
    pub hibernations: u64,
}
