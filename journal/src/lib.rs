//! stateline's storage layer: an append-only event journal with snapshots in one redb file.
//!
//! Appends go through one group-commit writer thread and resolve once durable; events are
//! stored in offset order in log segments that are packed, off the acknowledgement path, into
//! per-entity chunk rows for fast replay. See `FORMAT.md` for the on-disk format and the crash
//! argument, and `../shared/DESIGN.md` for the guarantees (G1–G9).
//!
//! ```no_run
//! # async fn demo() -> Result<(), stateline_journal::JournalError> {
//! use stateline_journal::{Journal, Manifest, NewEvent, PersistenceId, Seq};
//! let journal = Journal::open("bank.redb")?;
//! let pid = PersistenceId::parse("account", "alice")?;
//! let ev = NewEvent::new(Manifest::new("Deposited", 1), vec![0x2a]);
//! let ack = journal.append(&pid, Seq(1), vec![ev]).await?;
//! assert_eq!(ack.last_seq, Seq(1));
//! for event in journal.events(&pid, Seq(1), Seq(u64::MAX), u64::MAX)? {
//!     println!("{:?}", event?);
//! }
//! # Ok(()) }
//! ```

mod codec;
mod config;
mod error;
mod fault;
mod file;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod ids;
mod journal;
mod keys;
mod log;
mod meta;
mod power_loss;
mod read;
mod record;
mod scan;
mod store;
mod tail;
mod verify;
mod writer;

pub use config::{
    Durability, JournalBuilder, DEFAULT_KEY_GROUPS, DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_SNAPSHOT_BYTES, MAX_KEY_GROUPS, MAX_QUEUE_CAPACITY,
};
pub use error::{CodecError, InvalidId, JournalError, Rejected, Result};
pub use fault::FaultyStorage;
pub use ids::{
    EntityId, EntityType, KeyGroup, Offset, PersistenceId, Seq, KEY_GROUP_HASH, MAX_ENTITY_ID_LEN,
    MAX_TYPE_NAME_LEN,
};
pub use journal::{Journal, SnapshotCriteria};
pub use meta::FORMAT_VERSION;
pub use power_loss::PowerLossStorage;
pub use read::{ChangelogIter, EntitySummary, EventIter, JournalInfo, JournalReader, RecoveryView};
pub use record::{
    AppendAck, EventRecord, EventRef, Manifest, NewEvent, SnapshotRecord, MAX_MANIFEST_LEN,
};
pub use verify::{check_file_integrity, compact_file, CompactReport, Problem, VerifyReport};
