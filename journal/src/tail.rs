//! The tail index: where the not-yet-packed events of each persistence id sit in the log
//! segments, and the event cache holding their stored bytes. Held in memory, rebuilt on open by
//! scanning the unpacked segments (bounded by the segment size), shared between the writer and
//! readers.

/// A hash map with a fast, randomly seeded hasher (foldhash) for the writer's per-event maps:
/// std's SipHash was a tenth of the writer's time. hashbrown's map, for raw entries: one lookup
/// per append without copying the key.
pub(crate) type FastMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::RandomState>;

/// An entity key as the writer's maps hold it: inline up to 40 bytes, so that a lookup
/// compares the key in the table's own slot instead of following a pointer to a cold heap
/// allocation (that comparison was a tenth of the writer's CPU). Longer keys spill to the heap.
pub(crate) type EntityKey = smallvec::SmallVec<[u8; 40]>;
use hashbrown::hash_map::RawEntryMut;
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
    /// Where the event's stored bytes start in its entity's cache buffer for `segment`, or
    /// [`NOT_CACHED`].
    pub cached: u32,
    /// The segment stores log rows (format 2), see [`crate::meta::SegmentInfo::rows`].
    pub rows: bool,
}

/// [`TailRef::cached`] of an event the cache does not hold (over budget, or a reader
/// without a cache).
pub(crate) const NOT_CACHED: u32 = u32::MAX;

/// One entity's unpacked events, ascending seq, and the event cache's copies of their stored
/// bytes: one buffer per segment, so that an entity's tail is a few contiguous reads and a
/// packed segment's bytes go as whole buffers.
#[derive(Debug, Default)]
pub(crate) struct EntityTail {
    pub refs: Vec<TailRef>,
    buffers: Vec<(u64, Vec<u8>)>,
}

impl EntityTail {
    /// The refs of events with offset at most `end` (what a read transaction that sees up to
    /// `end` may use).
    pub(crate) fn refs_until(&self, end: u64) -> Vec<TailRef> {
        self.refs
            .iter()
            .filter(|r| r.offset <= end)
            .copied()
            .collect()
    }

    /// The cached stored bytes of `r` (one of this entity's refs).
    pub(crate) fn cached(&self, r: &TailRef) -> Option<&[u8]> {
        if r.cached == NOT_CACHED {
            return None;
        }
        let (_, buf) = self.buffers.iter().find(|(s, _)| *s == r.segment)?;
        let start = r.cached as usize;
        buf.get(start..start + r.bytes as usize)
    }
}

/// Entity key → its unpacked events and their cached bytes, bounded by a byte budget (the
/// event cache; events past it are read from the log).
#[derive(Default, Debug)]
pub(crate) struct Tail {
    pub entries: FastMap<EntityKey, EntityTail>,
    budget: CacheBudget,
    /// Segments numbered below this are packed and hold no refs here.
    floor: u64,
}

/// The event cache's memory: every buffer's capacity (spare ones included) against a limit.
#[derive(Default, Debug)]
struct CacheBudget {
    used: usize,
    limit: usize,
    /// Emptied buffers of packed segments, reused for the next segments' events: fresh memory
    /// for every segment cost the writer page faults and a copy per doubling (~10% of its CPU
    /// when the allocator returned the freed pages to the system).
    spare: Vec<Vec<u8>>,
    /// Capacity of the spare buffers (part of `used`).
    spare_bytes: usize,
}

/// Largest buffer kept as a spare: any new buffer may get one, so a bigger one (a hot
/// entity's) would leave most of the budget empty under a small entity.
const SPARE_MAX: usize = 16 * 1024;

impl CacheBudget {
    fn room(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    fn take_spare(&mut self) -> Vec<u8> {
        let b = self.spare.pop().unwrap_or_default();
        self.spare_bytes -= b.capacity();
        b
    }

    /// Keeps an emptied buffer for reuse, or frees it when it is too big to share.
    fn give_spare(&mut self, mut b: Vec<u8>) {
        if b.capacity() == 0 {
            return;
        }
        if b.capacity() > SPARE_MAX {
            self.used -= b.capacity();
            return;
        }
        b.clear();
        self.spare_bytes += b.capacity();
        self.spare.push(b);
    }

    /// Frees every spare buffer.
    fn release_spares(&mut self) {
        self.used -= self.spare_bytes;
        self.spare_bytes = 0;
        self.spare = Vec::new();
    }

    /// Frees spare buffers until `more` bytes fit; `false` (freeing none) if they cannot.
    fn make_room(&mut self, more: usize) -> bool {
        if self.room() + self.spare_bytes < more {
            return false;
        }
        while self.room() < more {
            let b = self.take_spare();
            self.used -= b.capacity();
        }
        true
    }
}

impl Tail {
    /// An empty tail whose cache holds up to `cache_limit` bytes.
    pub(crate) fn new(cache_limit: usize) -> Self {
        Self {
            entries: FastMap::default(),
            budget: CacheBudget {
                limit: cache_limit,
                ..CacheBudget::default()
            },
            floor: 0,
        }
    }

    /// Adds the events of one append (ascending seq) with their stored bytes, with one lookup;
    /// each is cached while the budget allows.
    pub(crate) fn extend<'b>(
        &mut self,
        entity_key: &[u8],
        events: impl IntoIterator<Item = (TailRef, &'b [u8])>,
    ) {
        let entry = entry_mut(&mut self.entries, entity_key);
        for (mut r, bytes) in events {
            r.cached = cache_into(entry, r.segment, bytes, &mut self.budget).unwrap_or(NOT_CACHED);
            entry.refs.push(r);
        }
    }

    /// Adds one event (after the entity's last) whose bytes are not cached: what a reader
    /// without the writer learns when it catches up.
    pub(crate) fn push_uncached(&mut self, entity_key: &[u8], r: TailRef) {
        let entry = entry_mut(&mut self.entries, entity_key);
        entry.refs.push(TailRef {
            cached: NOT_CACHED,
            ..r
        });
    }

    /// Drops every ref of `segment`; its cached bytes' buffers become spare (after it has been
    /// packed). Spares the previous pack left unused are freed first, so an idle journal keeps
    /// at most one segment's worth.
    pub(crate) fn drop_segment(&mut self, segment: u64) {
        self.budget.release_spares();
        self.drop_segments(|s| s == segment);
        self.floor = self.floor.max(segment + 1);
    }

    /// Drops every ref of the segments numbered below `floor` (all packed).
    pub(crate) fn drop_segments_below(&mut self, floor: u64) {
        self.drop_segments(|s| s < floor);
        self.floor = self.floor.max(floor);
    }

    fn drop_segments(&mut self, dropped: impl Fn(u64) -> bool) {
        let budget = &mut self.budget;
        self.entries.retain(|_, e| {
            e.refs.retain(|r| !dropped(r.segment));
            e.buffers.retain_mut(|(s, b)| {
                let keep = !dropped(*s);
                if !keep {
                    budget.give_spare(std::mem::take(b));
                }
                keep
            });
            !e.refs.is_empty()
        });
    }

    /// Takes out every ref with offset `from` or above (the events of a transaction that was
    /// put in the tail before its commit, and then failed), with their cached bytes.
    pub(crate) fn unwind_from(&mut self, from: u64) {
        let budget = &mut self.budget;
        self.entries.retain(|_, e| {
            while let Some(r) = e.refs.last().copied().filter(|r| r.offset >= from) {
                e.refs.pop();
                if r.cached != NOT_CACHED {
                    // Its bytes were the last ones added to the segment's buffer.
                    if let Some((_, b)) = e.buffers.iter_mut().find(|(s, _)| *s == r.segment) {
                        b.truncate(r.cached as usize);
                    }
                }
            }
            e.buffers.retain_mut(|(_, b)| {
                let keep = !b.is_empty();
                if !keep {
                    budget.give_spare(std::mem::take(b));
                }
                keep
            });
            !e.refs.is_empty()
        });
    }

    /// Segments numbered below this are packed (none of their refs is here).
    pub(crate) fn floor(&self) -> u64 {
        self.floor
    }

    /// Records that the segments numbered below `floor` are packed (when the tail is built).
    pub(crate) fn set_floor(&mut self, floor: u64) {
        self.floor = floor;
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.values().map(|e| e.refs.len()).sum()
    }

    /// Bytes the event cache holds (buffer capacities, spare buffers included).
    pub(crate) fn cache_bytes(&self) -> usize {
        self.budget.used
    }
}

/// The entity's tail, made empty if it has none (one lookup either way).
fn entry_mut<'t>(
    entries: &'t mut FastMap<EntityKey, EntityTail>,
    entity_key: &[u8],
) -> &'t mut EntityTail {
    match entries.raw_entry_mut().from_key(entity_key) {
        RawEntryMut::Occupied(o) => o.into_mut(),
        RawEntryMut::Vacant(v) => {
            v.insert(EntityKey::from_slice(entity_key), EntityTail::default())
                .1
        }
    }
}

/// Copies `bytes` to the end of the entity's buffer for `segment` (a spare one when it has
/// none yet) if the budget allows the growth; returns where the bytes start.
fn cache_into(
    entry: &mut EntityTail,
    segment: u64,
    bytes: &[u8],
    budget: &mut CacheBudget,
) -> Option<u32> {
    let (i, new) = match entry.buffers.iter().position(|(s, _)| *s == segment) {
        Some(i) => (i, false),
        None => {
            entry.buffers.push((segment, budget.take_spare()));
            (entry.buffers.len() - 1, true)
        }
    };
    let buf = &mut entry.buffers[i].1;
    let (len, before) = (buf.len(), buf.capacity());
    let need = len + bytes.len();
    let fits = u32::try_from(len).is_ok_and(|s| s != NOT_CACHED)
        && (need <= before || budget.make_room(need - before));
    if !fits {
        if new {
            // Nothing was cached in it: back to the spares (or freed, if it never had memory).
            let (_, b) = entry.buffers.swap_remove(i);
            budget.give_spare(b);
        }
        return None;
    }
    if need > before {
        // Amortized doubling (no minimum: an entity with one small event costs that event);
        // near the budget, all that is left at once, so a buffer is not reallocated per event.
        let target = need.max(before * 2).min(before + budget.room());
        buf.reserve_exact(target - len);
        budget.used += buf.capacity() - before;
    }
    buf.extend_from_slice(bytes);
    Some(len as u32)
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

    /// Seq of the newest unpacked event of one entity with offset at most `end`.
    pub(crate) fn tail_highest(&self, entity_key: &[u8], end: u64) -> Option<u64> {
        let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
        let refs = &tail.entries.get(entity_key)?.refs;
        refs.iter().rev().find(|r| r.offset <= end).map(|r| r.seq)
    }

    /// The unpacked events of one entity with offset at most `end` (their refs; readers copy
    /// the cached bytes of a few at a time with [`Self::copy_cached`]).
    pub(crate) fn tail_of(&self, entity_key: &[u8], end: u64) -> Vec<TailRef> {
        let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
        tail.entries
            .get(entity_key)
            .map_or_else(Vec::new, |e| e.refs_until(end))
    }

    /// Copies the cached stored bytes of `refs` (events of the entity `entity_key`) to the end
    /// of `buf`, under one read lock: `spans[i]` is where event `i` landed, or `None` when the
    /// cache does not hold it (any more). Copying beats sharing: a reference to each event's
    /// bytes would write a count the writer thread's cache line holds, twice per event.
    pub(crate) fn copy_cached(
        &self,
        entity_key: &[u8],
        refs: &[TailRef],
        buf: &mut Vec<u8>,
        spans: &mut Vec<Option<std::ops::Range<usize>>>,
    ) {
        // One allocation for the events cached when the view was taken (a fresh stream's
        // buffer starts empty).
        buf.reserve(
            refs.iter()
                .filter(|r| r.cached != NOT_CACHED)
                .map(|r| r.bytes as usize)
                .sum(),
        );
        spans.reserve(refs.len());
        let tail = self.tail.read().unwrap_or_else(|p| p.into_inner());
        let entry = tail.entries.get(entity_key);
        // The refs as the tail holds them now (the read's copies may predate a pack): both
        // ascend by seq, so after the first is found each next one is usually the next ref.
        let mut at = 0;
        for r in refs {
            let bytes = entry.and_then(|e| {
                let now = match e.refs.get(at) {
                    Some(x) if x.seq == r.seq => at,
                    _ => e.refs.binary_search_by_key(&r.seq, |x| x.seq).ok()?,
                };
                at = now + 1;
                let held = &e.refs[now];
                e.cached(held).filter(|_| held.offset == r.offset)
            });
            spans.push(bytes.map(|b| {
                let start = buf.len();
                buf.extend_from_slice(b);
                start..buf.len()
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Tail, TailRef, NOT_CACHED};

    fn r(seq: u64, segment: u64, bytes: u32) -> TailRef {
        TailRef {
            seq,
            offset: seq,
            segment,
            timestamp_micros: 0,
            bytes,
            cached: NOT_CACHED,
            rows: true,
        }
    }

    fn cached(t: &Tail, key: &[u8], seq: u64) -> Option<Vec<u8>> {
        let e = t.entries.get(key)?;
        let r = e.refs.iter().find(|r| r.seq == seq)?;
        e.cached(r).map(<[u8]>::to_vec)
    }

    /// A transaction put in the tail before its commit and then failed leaves no trace: its
    /// refs and cached bytes go, everything before it stays as it was.
    #[test]
    fn unwinding_takes_out_a_failed_transaction_only() {
        let mut t = Tail::new(1 << 20);
        let at = |seq: u64, offset: u64| TailRef {
            offset,
            ..r(seq, 1, 2)
        };
        t.extend(b"a", [(at(1, 1), &b"a1"[..]), (at(2, 2), &b"a2"[..])]);
        t.extend(b"b", [(at(1, 3), &b"b1"[..])]);
        // The failed transaction: offsets 4.., one entity new.
        t.extend(b"a", [(at(3, 4), &b"a3"[..])]);
        t.extend(b"b", [(at(2, 5), &b"b2"[..])]);
        t.extend(b"c", [(at(1, 6), &b"c1"[..])]);
        t.unwind_from(4);
        let seqs = |k: &[u8]| -> Vec<u64> {
            t.entries
                .get(k)
                .map_or_else(Vec::new, |e| e.refs.iter().map(|r| r.seq).collect())
        };
        assert_eq!(seqs(b"a"), [1, 2]);
        assert_eq!(seqs(b"b"), [1]);
        assert!(!t.entries.contains_key(&b"c"[..]));
        assert_eq!(cached(&t, b"a", 2).as_deref(), Some(&b"a2"[..]));
        assert_eq!(cached(&t, b"b", 1).as_deref(), Some(&b"b1"[..]));
        // The buffers end where the kept events end: the next append lands right after them.
        t.extend(b"a", [(at(3, 7), &b"A3"[..])]);
        assert_eq!(cached(&t, b"a", 3).as_deref(), Some(&b"A3"[..]));
        assert_eq!(cached(&t, b"a", 1).as_deref(), Some(&b"a1"[..]));
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn spare_buffers_are_small_bounded_and_kept_for_one_pack() {
        let big = vec![1u8; super::SPARE_MAX + 1];
        let mut t = Tail::new(1 << 20);
        t.extend(b"hot", [(r(1, 0, big.len() as u32), &big[..])]);
        t.extend(b"a", [(r(1, 0, 100), &[2u8; 100][..])]);
        assert_eq!(t.cache_bytes(), big.len() + 100);
        // The hot entity's buffer is freed, the small one kept.
        t.drop_segment(0);
        assert_eq!((t.budget.spare.len(), t.cache_bytes()), (1, 100));
        // An event that cannot fit even with the spares freed frees none of them.
        let huge = vec![3u8; (1 << 20) + 1];
        t.extend(b"b", [(r(1, 1, huge.len() as u32), &huge[..])]);
        assert_eq!(
            (cached(&t, b"b", 1).is_some(), t.budget.spare.len()),
            (false, 1)
        );
        // The next pack frees the spares the last one left unused.
        t.extend(b"a", [(r(2, 2, 1), &[4u8; 1][..])]);
        assert_eq!((t.budget.spare.len(), t.cache_bytes()), (0, 100));
        t.drop_segment(1);
        t.drop_segment(2);
        assert_eq!((t.budget.spare.len(), t.cache_bytes()), (1, 100));
        t.drop_segment(3);
        assert_eq!((t.budget.spare.len(), t.cache_bytes()), (0, 0));
    }

    #[test]
    fn the_event_cache_keeps_bytes_per_entity_and_segment_within_its_budget() {
        let mut t = Tail::new(16 + 2);
        t.extend(
            b"a",
            [(r(1, 0, 4), &[1u8; 4][..]), (r(2, 0, 4), &[2u8; 4][..])],
        );
        t.extend(b"b", [(r(1, 0, 3), &[3u8; 3][..])]);
        assert_eq!(t.cache_bytes(), 8 + 3, "exact, then doubled capacities");
        assert_eq!(cached(&t, b"a", 2), Some(vec![2; 4]));
        assert_eq!(cached(&t, b"b", 1), Some(vec![3; 3]));
        // Doubling a's buffer to 16 does not fit; it takes all that is left (15).
        t.extend(b"a", [(r(3, 0, 5), &[4u8; 5][..])]);
        assert_eq!(
            (t.cache_bytes(), cached(&t, b"a", 3)),
            (18, Some(vec![4; 5]))
        );
        // Within its capacity it still fits; a buffer for another segment does not (and no
        // empty buffer is left behind).
        t.extend(
            b"a",
            [(r(4, 0, 2), &[5u8; 2][..]), (r(5, 1, 4), &[5u8; 4][..])],
        );
        assert_eq!((t.len(), cached(&t, b"a", 4)), (6, Some(vec![5; 2])));
        assert_eq!(cached(&t, b"a", 5), None);
        assert_eq!(t.entries[&b"a"[..]].buffers.len(), 1);
        // Packed: the segment's buffers become spare, still counted.
        t.drop_segment(0);
        assert_eq!((t.len(), t.cache_bytes(), t.budget.spare.len()), (1, 18, 2));
        assert!(!t.entries.contains_key(&b"b"[..]));
        // A new buffer reuses a spare one; growing it gives the other spare back.
        t.extend(b"c", [(r(1, 1, 18), &[6u8; 18][..])]);
        assert_eq!(cached(&t, b"c", 1), Some(vec![6; 18]));
        assert_eq!((t.cache_bytes(), t.budget.spare.len()), (18, 0));
        // Nothing left: not cached, and no empty buffer stays behind.
        t.extend(b"a", [(r(6, 1, 2), &[7u8; 2][..])]);
        assert_eq!((cached(&t, b"a", 6), cached(&t, b"a", 5)), (None, None));
        assert!(t.entries[&b"a"[..]].buffers.is_empty());
        assert_eq!(t.cache_bytes(), 18);
        // No budget: nothing cached.
        let mut t = Tail::new(0);
        t.extend(b"a", [(r(1, 0, 1), &[9u8; 1][..])]);
        assert_eq!((t.len(), cached(&t, b"a", 1)), (1, None));
    }
}
