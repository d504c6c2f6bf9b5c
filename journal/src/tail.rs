//! The tail index: where the not-yet-packed events of each persistence id sit in the log
//! segments, and the event cache holding their stored bytes. Held in memory, rebuilt on open by
//! scanning the unpacked segments (bounded by the segment size), shared between the writer and
//! readers.

use std::collections::VecDeque;
use std::sync::Arc;

/// A hash map with a fast, randomly seeded hasher (foldhash) for the writer's per-event maps:
/// std's SipHash was a tenth of the writer's time. hashbrown's map, for `entry_ref`: one lookup
/// per append without copying the key.
pub(crate) type FastMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;
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

/// Entity key → its unpacked events, ascending seq; and the stored bytes of unpacked events.
#[derive(Default, Debug)]
pub(crate) struct Tail {
    pub entries: FastMap<Vec<u8>, Vec<TailRef>>,
    /// Stored bytes of committed, unpacked events, so that packing copies them and readers
    /// decode them without a log lookup each.
    pub cache: EventCache,
}

impl Tail {
    pub(crate) fn push(&mut self, entity_key: &[u8], r: TailRef) {
        self.extend(entity_key, std::slice::from_ref(&r));
    }

    /// Appends the refs of one append with one lookup.
    pub(crate) fn extend(&mut self, entity_key: &[u8], refs: &[TailRef]) {
        self.entries
            .entry_ref(entity_key)
            .or_default()
            .extend_from_slice(refs);
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

    /// Seq of the newest unpacked event of one entity.
    pub(crate) fn tail_highest(&self, entity_key: &[u8]) -> Option<u64> {
        let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
        tail.entries.get(entity_key)?.last().map(|r| r.seq)
    }

    /// The unpacked events of one entity (their refs; readers copy the cached bytes of a few
    /// at a time with [`Self::copy_cached`]).
    pub(crate) fn tail_of(&self, entity_key: &[u8]) -> Vec<TailRef> {
        let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
        tail.entries.get(entity_key).cloned().unwrap_or_default()
    }

    /// Copies the cached stored bytes of `refs` to the end of `buf`, under one read lock:
    /// `spans[i]` is where event `i` landed, or `None` when the cache does not hold it.
    /// Copying is cheaper than sharing here: taking a reference to each buffer writes its
    /// count, a cache line the writer thread owns, twice per event.
    pub(crate) fn copy_cached(
        &self,
        refs: &[TailRef],
        buf: &mut Vec<u8>,
        spans: &mut Vec<Option<std::ops::Range<usize>>>,
    ) {
        let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
        for r in refs {
            spans.push(tail.cache.get(r.offset).map(|b| {
                let start = buf.len();
                buf.extend_from_slice(b);
                start..buf.len()
            }));
        }
    }
}

/// Memory an event in the cache costs besides its bytes: its slot and the shared buffer's
/// counts.
pub(crate) const ENTRY_OVERHEAD: usize = 48;

fn cost(bytes: &Arc<Vec<u8>>) -> usize {
    bytes.capacity() + ENTRY_OVERHEAD
}

/// Stored bytes of committed events by offset. Offsets are dense and increasing, so a deque
/// indexed by `offset - base` is the whole index; the byte budget caps memory (events past it
/// are read from the log).
#[derive(Debug, Default)]
pub(crate) struct EventCache {
    base: u64,
    slots: VecDeque<Option<Arc<Vec<u8>>>>,
    bytes: usize,
    limit: usize,
}

impl EventCache {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Keeps the stored bytes of the event at `offset`, unless over budget. The budget counts
    /// each event's buffer (its capacity) plus [`ENTRY_OVERHEAD`].
    pub(crate) fn put(&mut self, offset: u64, bytes: Arc<Vec<u8>>) {
        if self.bytes + cost(&bytes) > self.limit {
            return;
        }
        if self.slots.is_empty() {
            self.base = offset;
        }
        let Some(index) = offset.checked_sub(self.base) else {
            return;
        };
        let index = index as usize;
        if index > self.slots.len() + (1 << 20) {
            // A gap this large means the cache was skipped for a while: start over.
            self.slots.clear();
            self.bytes = 0;
            self.base = offset;
            return self.put(offset, bytes);
        }
        while self.slots.len() < index {
            self.slots.push_back(None);
        }
        self.bytes += cost(&bytes);
        if index == self.slots.len() {
            self.slots.push_back(Some(bytes));
        } else if let Some(old) = self.slots[index].replace(bytes) {
            self.bytes -= cost(&old);
        }
    }

    pub(crate) fn get(&self, offset: u64) -> Option<&Arc<Vec<u8>>> {
        let index = usize::try_from(offset.checked_sub(self.base)?).ok()?;
        self.slots.get(index)?.as_ref()
    }

    /// Drops every event below `end` (a packed segment's).
    pub(crate) fn forget_below(&mut self, end: u64) {
        while self.base < end {
            match self.slots.pop_front() {
                Some(slot) => {
                    if let Some(b) = slot {
                        self.bytes -= cost(&b);
                    }
                    self.base += 1;
                }
                None => {
                    self.base = end;
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EventCache;
    use std::sync::Arc;

    fn b(v: u8, n: usize) -> Arc<Vec<u8>> {
        Arc::new(vec![v; n])
    }

    #[test]
    fn the_event_cache_is_indexed_by_offset_and_bounded() {
        let mut c = EventCache::new(10 + 2 * super::ENTRY_OVERHEAD);
        c.put(5, b(1, 4));
        c.put(6, b(2, 4));
        c.put(7, b(3, 4)); // over the budget: not kept
        assert_eq!(c.get(7), None);
        assert_eq!(c.get(6).map(|b| b.to_vec()), Some(vec![2; 4]));
        assert_eq!(c.get(5).map(|b| b.to_vec()), Some(vec![1; 4]));
        c.forget_below(6);
        assert_eq!((c.bytes, c.get(5)), (4 + super::ENTRY_OVERHEAD, None));
        c.put(8, b(4, 2));
        assert_eq!(c.get(8).map(|b| b.to_vec()), Some(vec![4; 2]));
        assert_eq!(c.get(7), None);
        c.forget_below(9);
        assert_eq!((c.bytes, c.get(8)), (0, None));
        c.put(20, b(9, 1));
        assert_eq!(c.get(20).map(|b| b.to_vec()), Some(vec![9]));
        assert_eq!(c.get(3), None);
        // A huge gap starts over.
        c.put(20 + (2 << 20), b(7, 1));
        assert_eq!((c.get(20), c.bytes), (None, 1 + super::ENTRY_OVERHEAD));
    }
}
