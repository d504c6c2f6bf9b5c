#![doc = include_str!("../README.md")]

pub use stateline_actors as actors;
pub use stateline_journal as journal;

pub mod cli;

pub use stateline_actors::{
    CommandError, Effect, EventSourced, Persist, RecoveryError, Shard, ShardConfig, ShardRef,
    ShardStats, SnapshotPolicy,
};
pub use stateline_journal::{
    Durability, EntityId, EntityType, EventRecord, Journal, JournalBuilder, JournalError,
    JournalReader, Manifest, Offset, PersistenceId, Seq,
};

/// Everything an application needs to define and run entities.
pub mod prelude {
    pub use stateline_actors::{
        CommandError, Effect, EventSourced, Shard, ShardConfig, ShardRef, SnapshotPolicy,
    };
    pub use stateline_journal::{Durability, Journal, JournalError, PersistenceId, Seq};
}
