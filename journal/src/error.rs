//! Errors of the journal layer. Narrow enums ([`InvalidId`], [`Rejected`], [`CodecError`])
//! convert into the umbrella [`JournalError`]; every variant says what the caller should do.

use std::path::PathBuf;

use crate::ids::{PersistenceId, Seq};

/// An identifier failed validation. Nothing was written; fix the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidId {
    /// The identifier is empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which identifier.
        kind: &'static str,
    },
    /// The identifier is longer than allowed.
    #[error("{kind} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// Which identifier.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The identifier contains a NUL byte.
    #[error("{kind} must not contain NUL")]
    ContainsNul {
        /// Which identifier.
        kind: &'static str,
    },
}

/// A write was refused before anything was written: the journal and the entity are unchanged and
/// may continue. Retrying the same input fails the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    /// An event's payload is larger than the configured limit.
    #[error("event of {size} bytes exceeds the limit of {limit} bytes")]
    EventTooLarge {
        /// Payload size in bytes.
        size: usize,
        /// Configured limit (`JournalBuilder::max_event_bytes`).
        limit: usize,
    },
    /// A snapshot is larger than the configured limit.
    #[error("snapshot of {size} bytes exceeds the limit of {limit} bytes")]
    SnapshotTooLarge {
        /// Snapshot size in bytes.
        size: usize,
        /// Configured limit (`JournalBuilder::max_snapshot_bytes`).
        limit: usize,
    },
    /// An append carried no events.
    #[error("an append must carry at least one event")]
    EmptyAppend,
    /// A snapshot was offered for a seq the journal has not reached.
    #[error("snapshot at seq {seq} is ahead of the journal (highest seq {highest})")]
    SnapshotAhead {
        /// The snapshot's seq.
        seq: Seq,
        /// The highest persisted seq of the persistence id.
        highest: Seq,
    },
    /// A seq is above [`Seq::MAX`]: an append whose last event would pass it, or an import
    /// floor above it.
    #[error("seq {seq} is beyond the largest seq {}", Seq::MAX)]
    SeqOutOfRange {
        /// The seq that does not fit: an import floor, or the seq an append's last event would
        /// have (at most `u64::MAX`).
        seq: Seq,
    },
    /// A manifest (type name of an event or snapshot) is empty or too long.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// An identifier is invalid.
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
}

/// Bytes could not be encoded or decoded. Decoding errors mean the stored bytes are not what
/// stateline wrote: treat them as corruption of that record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The record is shorter than its framing says.
    #[error("record truncated: needed {needed} bytes, found {found}")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        found: usize,
    },
    /// The record's checksum does not match its bytes.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Checksum stored with the record.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// MessagePack decoding failed.
    #[error("malformed MessagePack: {0}")]
    Decode(String),
    /// MessagePack encoding failed (a value that does not serialize).
    #[error("cannot encode: {0}")]
    Encode(String),
    /// A decoded field is out of range or inconsistent.
    #[error("invalid field: {0}")]
    Invalid(String),
}

/// The umbrella error of the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// The append's expected seq did not match the journal (G5): another writer or a stale
    /// incarnation appended first. Nothing was written. Recover the entity from the journal.
    #[error("seq conflict for {pid}: expected next seq {expected}, journal is at {actual}")]
    Conflict {
        /// The persistence id.
        pid: PersistenceId,
        /// The next seq the caller expected to write.
        expected: Seq,
        /// The highest seq in the journal.
        actual: Seq,
    },
    /// The input was refused before anything was written; see [`Rejected`].
    #[error("rejected: {0}")]
    Rejected(#[from] Rejected),
    /// Stored data failed to decode or is inconsistent. The message names the location.
    #[error("journal corrupted at {location}: {detail}")]
    Corrupted {
        /// Where (table and key, or file).
        location: String,
        /// What is wrong.
        detail: String,
    },
    /// The file exists but is not a stateline journal (not redb, or redb without journal
    /// metadata). Check the path.
    #[error("{path}: not a stateline journal ({detail})")]
    NotAJournal {
        /// The path opened.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The journal was written by a newer on-disk format (G9). Upgrade stateline.
    #[error("journal format version {found} is newer than supported version {supported}")]
    UnsupportedFormat {
        /// Version found on disk.
        found: u32,
        /// Newest version this build reads.
        supported: u32,
    },
    /// The journal was created with another key-group count or hash; opening it with this
    /// configuration would silently remap entities. Use the stored configuration.
    #[error("journal was created with {stored}, this configuration asks for {requested}")]
    ConfigMismatch {
        /// What the journal stores.
        stored: String,
        /// What the caller configured.
        requested: String,
    },
    /// The file was not closed cleanly (a crash) and needs the recovery that only a writable
    /// open performs; a read-only open cannot. Open it with [`crate::Journal::open`] once (an
    /// application restart does), then read it.
    #[error("{path}: journal needs crash recovery; open it for writing once")]
    NeedsRecovery {
        /// The path opened.
        path: PathBuf,
    },
    /// Another process (or handle) has the journal open for writing.
    #[error("{path}: journal is locked by another process")]
    Locked {
        /// The path opened.
        path: PathBuf,
    },
    /// An I/O or storage error. The outcome of in-flight writes is unknown; the journal is now
    /// poisoned (G8): reopen it to continue.
    #[error("I/O error: {0}")]
    Io(String),
    /// An earlier I/O error poisoned this handle (G8). Nothing was written; reopen the journal.
    #[error("journal is poisoned by an earlier I/O error; reopen it")]
    Poisoned,
    /// The journal handle was closed (its writer stopped). Nothing was written.
    #[error("journal is closed")]
    Closed,
}

impl JournalError {
    /// Whether this error means the write was refused with nothing written and the entity may
    /// continue (*rejected*), as opposed to *failed* (outcome unknown, or state diverged).
    pub fn is_rejected(&self) -> bool {
        matches!(self, JournalError::Rejected(_))
    }

    pub(crate) fn corrupted(location: impl Into<String>, detail: impl ToString) -> Self {
        JournalError::Corrupted {
            location: location.into(),
            detail: detail.to_string(),
        }
    }
}

impl From<InvalidId> for JournalError {
    fn from(e: InvalidId) -> Self {
        JournalError::Rejected(Rejected::InvalidId(e))
    }
}

macro_rules! storage_error {
    ($($t:ty),*) => {$(
        impl From<$t> for JournalError {
            fn from(e: $t) -> Self {
                let e: redb::Error = e.into();
                match e {
                    redb::Error::Corrupted(detail) => JournalError::corrupted("redb", detail),
                    redb::Error::DatabaseAlreadyOpen => JournalError::Locked { path: PathBuf::new() },
                    // Every table the journal reads exists from creation on: a missing one is
                    // damage, not an I/O outcome.
                    redb::Error::TableDoesNotExist(name) => {
                        JournalError::corrupted(name, "table missing")
                    }
                    other => JournalError::Io(other.to_string()),
                }
            }
        }
    )*};
}
storage_error!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::CompactionError,
    redb::CursorError,
    redb::SetDurabilityError
);

/// Result alias of the journal.
pub type Result<T, E = JournalError> = std::result::Result<T, E>;
