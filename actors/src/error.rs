//! Errors of the actor layer: recovery failures, and command errors that hand an undelivered
//! command back to its sender.

use stateline_journal::{CodecError, InvalidId, JournalError, PersistenceId, Seq};

/// An entity could not be recovered from the journal. The command that started it was not
/// applied; the next command tries a fresh incarnation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// Reading the journal failed.
    #[error("recovery of {pid} failed: {source}")]
    Journal {
        /// The entity.
        pid: PersistenceId,
        /// The journal error.
        source: JournalError,
    },
    /// An event could not be decoded (or upcast); it is never skipped.
    #[error("recovery of {pid} failed: event seq {seq} does not decode: {source}")]
    Decode {
        /// The entity.
        pid: PersistenceId,
        /// The seq of the event.
        seq: Seq,
        /// Why.
        source: CodecError,
    },
    /// The events after the newest usable snapshot are not all in the journal (deleted
    /// without a snapshot covering them, or a gap): recovering would silently lose state.
    #[error("recovery of {pid} failed: expected event seq {expected}, journal has {found:?} (highest {highest})")]
    Incomplete {
        /// The entity.
        pid: PersistenceId,
        /// The seq recovery needed next.
        expected: Seq,
        /// What the journal returned instead (`None`: nothing).
        found: Option<Seq>,
        /// The highest seq of the persistence id.
        highest: Seq,
    },
}

/// Why a command was not (or may not have been) applied. Variants that never reached the
/// entity hand the command back ([`CommandError::into_command`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<C> {
    /// The shard's queue is full (backpressure). Not delivered; retry later.
    #[error("shard is overloaded: {queued} commands queued")]
    Overloaded {
        /// The command, handed back.
        command: C,
        /// Commands queued at the shard when this one was refused.
        queued: usize,
    },
    /// The shard has stopped. Not delivered.
    #[error("shard has stopped")]
    ShardStopped {
        /// The command, handed back.
        command: C,
    },
    /// The entity id is invalid. Not delivered.
    #[error("invalid entity id: {error}")]
    InvalidId {
        /// The command, handed back.
        command: C,
        /// What is wrong with the id.
        error: InvalidId,
    },
    /// Persisting was refused before anything was written (event too large, not
    /// serializable). State unchanged; the entity continues.
    #[error("persist rejected: {0}")]
    Rejected(JournalError),
    /// Persisting failed with an unknown outcome (I/O error, poisoned journal, seq conflict).
    /// The entity stopped; its next command recovers it from the journal, which tells whether
    /// the events were written.
    #[error("persist failed: {0}")]
    PersistFailed(JournalError),
    /// The entity could not be recovered; the command was not applied.
    #[error(transparent)]
    Recovery(#[from] RecoveryError),
    /// The entity stopped before answering (its actor died). The command may not have been
    /// applied.
    #[error("entity stopped before replying")]
    EntityStopped,
}

impl<C> CommandError<C> {
    /// The command, if it was never delivered to the entity.
    pub fn into_command(self) -> Option<C> {
        match self {
            CommandError::Overloaded { command, .. }
            | CommandError::ShardStopped { command }
            | CommandError::InvalidId { command, .. } => Some(command),
            _ => None,
        }
    }

    /// Whether the command certainly was not applied and may be retried as is.
    pub fn was_not_applied(&self) -> bool {
        matches!(
            self,
            CommandError::Overloaded { .. }
                | CommandError::ShardStopped { .. }
                | CommandError::InvalidId { .. }
                | CommandError::Rejected(_)
                | CommandError::Recovery(_)
        )
    }
}
