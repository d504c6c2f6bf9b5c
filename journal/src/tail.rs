//! The tail index: where the not-yet-packed events of each persistence id sit in the log
//! segments. Held in memory, rebuilt on open by scanning the unpacked segments (bounded by the
//! segment size), shared between the writer and readers.

use std::collections::HashMap;

/// A hash map with a fast, randomly seeded hasher (foldhash) for the writer's per-event maps:
/// std's SipHash was a tenth of the writer's time.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use tokio::sync::watch;

/// One unpacked event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TailRef {
    pub seq: u64,
    pub offset: u64,
    pub segment: u64,
    pub timestamp_micros: i64,
    pub bytes: u32,
    /// The segment stores log rows (format 2), see [`crate::meta::SegmentInfo::rows`].
    pub rows: bool,
}

/// Entity key → its unpacked events, ascending seq.
#[derive(Default, Debug)]
pub(crate) struct Tail {
    pub entries: FastMap<Vec<u8>, Vec<TailRef>>,
}

impl Tail {
    pub(crate) fn push(&mut self, entity_key: &[u8], r: TailRef) {
        self.extend(entity_key, std::slice::from_ref(&r));
    }

    /// Appends the refs of one append with one lookup.
    pub(crate) fn extend(&mut self, entity_key: &[u8], refs: &[TailRef]) {
        match self.entries.get_mut(entity_key) {
            Some(v) => v.extend_from_slice(refs),
            None => {
                self.entries.insert(entity_key.to_vec(), refs.to_vec());
            }
        }
    }

    /// Drops every ref of `segment` (after it has been packed).
    pub(crate) fn drop_segment(&mut self, segment: u64) {
        self.entries.retain(|_, refs| {
            refs.retain(|r| r.segment != segment);
            !refs.is_empty()
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.values().map(Vec::len).sum()
    }
}

/// State shared by the writer thread and all readers of one open journal.
#[derive(Debug)]
pub(crate) struct Shared {
    pub tail: RwLock<Tail>,
    /// Bumped after a pack commit and before its refs leave the tail; readers retry when it
    /// changes under them (see `read.rs`).
    pub pack_version: AtomicU64,
    /// Set on the first I/O error (G8).
    pub poisoned: AtomicBool,
    /// Highest committed offset (0: none).
    pub committed: watch::Sender<u64>,
    pub key_groups: u32,
}

impl Shared {
    pub(crate) fn new(tail: Tail, committed: u64, key_groups: u32) -> Self {
        Self {
            tail: RwLock::new(tail),
            pack_version: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            committed: watch::Sender::new(committed),
            key_groups,
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// A copy of the refs of one entity.
    pub(crate) fn tail_of(&self, entity_key: &[u8]) -> Vec<TailRef> {
        let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
        tail.entries.get(entity_key).cloned().unwrap_or_default()
    }
}
