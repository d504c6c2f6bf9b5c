//! stateline's actor runtime on actix: the [`EventSourced`] programming model, entity actors
//! that recover from the journal and persist before they reply, the [`Shard`] actor that hosts
//! them with passivation, hibernation of idle entities and backpressure, and the
//! [`ShardRegion`] that routes by key group and rescales at run time. With the `testkit`
//! feature, `testkit::EventSourcedTestKit` tests an entity type without actors.

mod core;
mod effect;
mod entity;
mod entity_actor;
mod error;
mod region;
mod shard;
mod shard_config;
mod shard_ref;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use effect::{Effect, Persist};
pub use entity::{EventSourced, SnapshotPolicy};
pub use error::{CommandError, RecoveryError};
pub use region::{
    layout, KeyGroupInfo, RegionConfig, RegionError, RegionStats, RescaleReport, ShardInfo,
    ShardRegion,
};
pub use shard::{ReleaseReport, Shard, ShardConfig, ShardRef, ShardStats};
