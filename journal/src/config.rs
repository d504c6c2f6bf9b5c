//! [`JournalBuilder`]: how a journal is opened, with documented defaults.

use std::path::Path;

use crate::error::Result;
use crate::journal::Journal;

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// fsync on every group commit: an acknowledged append survives a crash (G1). The default.
    #[default]
    Immediate,
    /// No fsync: acknowledged appends may be lost on a crash or power loss (never torn: what
    /// survives is a prefix of committed transactions). For tests and users who ask for it.
    /// A journal opened this way is exclusive: read-only handles in other processes (the CLI)
    /// are refused while it is open.
    None,
}

/// Default number of key groups of a new journal.
pub const DEFAULT_KEY_GROUPS: u32 = 1024;

/// Largest key-group count a new journal gets from [`JournalBuilder::key_groups`] and a shard
/// region accepts: 65,536 (Flink caps its max parallelism at 32,768; a region keeps a table
/// entry per key group and copies it on every rescale).
pub const MAX_KEY_GROUPS: u32 = 1 << 16;

/// Largest [`JournalBuilder::queue_capacity`]: 2^24 waiting requests (the queue's bound
/// must stay below what its semaphore can count; larger values are clamped to this).
pub const MAX_QUEUE_CAPACITY: usize = 1 << 24;

/// Default largest event payload, in bytes (1 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;
/// Default largest snapshot payload, in bytes (16 MiB).
pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 16 << 20;

/// Configures and opens a [`Journal`]. Every setter documents its default.
///
/// ```no_run
/// # fn main() -> Result<(), stateline_journal::JournalError> {
/// use stateline_journal::{Durability, Journal};
/// let journal = Journal::builder()
///     .key_groups(1024)
///     .durability(Durability::Immediate)
///     .open("bank.redb")?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct JournalBuilder {
    pub(crate) key_groups: Option<u32>,
    pub(crate) durability: Durability,
    pub(crate) max_event_bytes: usize,
    pub(crate) max_snapshot_bytes: usize,
    pub(crate) segment_events: u64,
    pub(crate) pack_step_events: usize,
    pub(crate) max_chunk_bytes: usize,
    pub(crate) fill_chunk_leaves: bool,
    pub(crate) max_batch_events: usize,
    pub(crate) pack_cache_bytes: usize,
    pub(crate) merge_generations: bool,
    pub(crate) queue_capacity: usize,
    pub(crate) cache_bytes: usize,
    pub(crate) create: bool,
    pub(crate) verify_on_open: bool,
    /// Holds the applier thread (tests of a tail that lags the commits).
    #[cfg(test)]
    pub(crate) applier_gate: Option<std::sync::Arc<crate::writer::apply::Gate>>,
}

impl Default for JournalBuilder {
    fn default() -> Self {
        Self {
            key_groups: None,
            durability: Durability::Immediate,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            segment_events: 262_144,
            pack_step_events: 2_048,
            max_chunk_bytes: 256 << 10,
            fill_chunk_leaves: false,
            max_batch_events: 16_384,
            pack_cache_bytes: 128 << 20,
            merge_generations: false,
            queue_capacity: 65_536,
            cache_bytes: 256 << 20,
            create: true,
            verify_on_open: true,
            #[cfg(test)]
            applier_gate: None,
        }
    }
}

impl JournalBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of key groups. Default: unset, which creates a new journal with
    /// [`DEFAULT_KEY_GROUPS`] (1024) and opens an existing one with the count it stores. When set,
    /// opening a journal created with another count fails with
    /// [`crate::JournalError::ConfigMismatch`] (never a silent remap). Values below 1 become 1.
    /// A new journal gets at most [`MAX_KEY_GROUPS`] (a larger value creates it with that
    /// many); an existing journal is opened with the count it stores, also a larger one an
    /// older build created (a shard region refuses such a journal).
    pub fn key_groups(mut self, n: u32) -> Self {
        self.key_groups = Some(n.max(1));
        self
    }

    /// When appends are acknowledged. Default [`Durability::Immediate`].
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }

    /// Largest accepted event payload in bytes; larger events are rejected. Default 1 MiB.
    pub fn max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = n;
        self
    }

    /// Largest accepted snapshot payload in bytes; larger ones are rejected. Default 16 MiB.
    pub fn max_snapshot_bytes(mut self, n: usize) -> Self {
        self.max_snapshot_bytes = n;
        self
    }

    /// Events per log segment before a new segment starts and the old one is packed into
    /// per-entity chunks. Default 262,144: measured with `cargo bench --bench journal`, two
    /// alternating rounds against 131,072, it gave persist ratios 0.60 and 0.68 (against 0.60
    /// and 0.53) and replay ratios 0.63 and 0.62 (against 0.43 and 0.55): half as many chunks
    /// per entity to read and entity rows to rewrite. Smaller values pack sooner (less memory
    /// for the tail index and the event cache, more chunks per entity).
    pub fn segment_events(mut self, n: u64) -> Self {
        self.segment_events = n.max(1);
        self
    }

    /// Events packed per write transaction at least (the writer packs 1.25 times what it
    /// appended in a transaction when that is more, so packing keeps up). Default 2,048:
    /// smaller steps spread packing over more commits (p99 ack 17 ms instead of 39 ms at the
    /// same throughput in `cargo bench --bench journal`).
    pub fn pack_step_events(mut self, n: usize) -> Self {
        self.pack_step_events = n.max(1);
        self
    }

    /// Largest chunk row in bytes (an event larger than this gets a chunk of its own).
    /// Default 256 KiB.
    pub fn max_chunk_bytes(mut self, n: usize) -> Self {
        self.max_chunk_bytes = n.max(1);
        self
    }

    /// Whether packing cuts an entity's chunk rows where the chunks table's current redb leaf
    /// (4 KiB) is full, so that chunk rows fill whole pages. Default `false`.
    ///
    /// A leaf of more than one row must fit one 4 KiB page, so a chunk row larger than about
    /// 4 KiB sits alone in a page rounded up to a power of two. Measured with chunks of frames
    /// (format 2; compact chunks are ~30% smaller): with 10,000 entities per 262,144-event
    /// segment (about 4.8 KB per entity and segment) 42% of the chunk table's pages went
    /// unused. Filling leaves wasted 3% and wrote ~660 bytes per event instead of ~750
    /// (`cargo bench --bench journal`); the persist ratio gained ~0.03 in alternating runs, less
    /// than the machine's noise between full runs, while such an entity's events of one
    /// segment then spanned two leaves instead of one and the replay ratio was 0.06–0.09 lower.
    /// Consider it for journals whose entities have 4–8 KB of events per segment and that are
    /// written much more than they are replayed. A chunk is cut at a full leaf only once it
    /// holds two events
    /// (so events too large for two to share a leaf are never one per chunk); merged
    /// generations are cut at [`Self::max_chunk_bytes`] only. Files may mix chunks cut either
    /// way.
    pub fn fill_chunk_leaves(mut self, fill: bool) -> Self {
        self.fill_chunk_leaves = fill;
        self
    }

    /// Most events one group commit takes. Default 16,384.
    pub fn max_batch_events(mut self, n: usize) -> Self {
        self.max_batch_events = n.max(1);
        self
    }

    /// Bytes of committed, not yet packed events kept in memory (the event cache: one buffer
    /// per entity and unpacked segment, counted by capacity; a packed segment's buffers are
    /// kept for reuse within the budget), so that packing copies them and
    /// replays decode them without reading the log back. Refilled on open. Default 128 MiB:
    /// up to about two segments of ~200-byte events are unpacked at a time (events beyond the
    /// budget are read from the log). 0 disables the cache.
    pub fn pack_cache_bytes(mut self, n: usize) -> Self {
        self.pack_cache_bytes = n;
        self
    }

    /// Merge packed generations four at a time, size-tiered, so that an entity's history lives
    /// in a number of chunks logarithmic in its age (faster replay of long histories, entity
    /// rows that stop growing). Default `false`: measured with `cargo bench --bench journal`,
    /// merging raised replay from ~1.4M to ~1.6M events/s but p99.9 ack from ~24 ms to ~65 ms,
    /// and the file grows while source and target generations coexist.
    pub fn merge_generations(mut self, yes: bool) -> Self {
        self.merge_generations = yes;
        self
    }

    /// Requests that may wait for the writer; appenders wait (asynchronously) beyond that.
    /// Default 65,536. Values below 1 become 1; values above [`MAX_QUEUE_CAPACITY`] become it.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.clamp(1, MAX_QUEUE_CAPACITY);
        self
    }

    /// redb page cache in bytes. Default 256 MiB.
    pub fn cache_bytes(mut self, n: usize) -> Self {
        self.cache_bytes = n;
        self
    }

    /// Whether a missing file is created. Default `true`; with `false` a missing or empty file
    /// is [`crate::JournalError::NotAJournal`].
    pub fn create(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }

    /// Verify the checksum of every page on open (reads the whole file once). Default `true`:
    /// redb trusts a cleanly closed file, so bytes damaged while the journal was closed (a bit
    /// flip inside a B-tree key, say) could otherwise read back as other data. Every record
    /// also carries its own CRC, but only the page check catches a key moved by damage. Turn it
    /// off only for very large journals whose open time matters more.
    pub fn verify_on_open(mut self, yes: bool) -> Self {
        self.verify_on_open = yes;
        self
    }

    /// Opens (or creates) the journal at `path` and starts its writer thread. Blocking: call it
    /// outside async code or through `spawn_blocking`.
    ///
    /// A missing file or an empty regular file becomes a new journal; through symbolic links,
    /// the journal is created where they lead. An empty file is written in place, so it keeps
    /// its mode, owner and hard links. A crash during creation leaves no file, the empty file,
    /// or a file whose creation was interrupted, which the next writable open creates again
    /// (and a read-only open refuses); two processes creating the same journal at once get one
    /// journal between them, the other one [`crate::JournalError::Locked`] or that journal. A
    /// directory, device, FIFO or socket is [`crate::JournalError::NotAJournal`] and is left
    /// as it is.
    ///
    /// # Errors
    /// [`crate::JournalError::NotAJournal`], [`crate::JournalError::UnsupportedFormat`],
    /// [`crate::JournalError::ConfigMismatch`], [`crate::JournalError::Locked`],
    /// [`crate::JournalError::Corrupted`], [`crate::JournalError::Io`].
    pub fn open(self, path: impl AsRef<Path>) -> Result<Journal> {
        Journal::open_with(self, path.as_ref())
    }

    /// Opens (or creates) a journal on a custom redb storage backend: an in-memory journal
    /// (`redb::backends::InMemoryBackend`) or a fault-injecting one in tests. `label` names it
    /// in errors and traces. Always exclusive (no read-only handles from other processes).
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_with_backend(
        self,
        backend: impl redb::StorageBackend,
        label: impl AsRef<Path>,
    ) -> Result<Journal> {
        Journal::open_backend(self, backend, label.as_ref())
    }
}
