//! Reading the unpacked log segments into the tail index: the whole tail when a journal opens
//! ([`rebuild_tail`]), and, for a reader without the writer in its process (the CLI on a live
//! journal), what the writer committed since the reader last looked ([`catch_up`]).

use redb::{ReadTransaction, ReadableDatabase};
use tracing::debug;

use crate::codec;
use crate::error::{JournalError, Result};
use crate::keys;
use crate::log;
use crate::meta::State;
use crate::read::read_state;
use crate::tail::{EntityKey, FastMap, Shared, Tail, TailRef, NOT_CACHED};

/// Rebuilds the tail index from the unpacked segments on open, checking each record and the
/// contiguity of offsets and seqs within the tail, and caches the events' bytes up to
/// `cache_bytes`. The state is read in the same read transaction as the segments (a writer in
/// another process may commit meanwhile). Returns the tail, the highest seq of every entity in
/// it, and the highest committed offset.
pub(crate) fn rebuild_tail(
    db: &impl ReadableDatabase,
    key_groups: u32,
    cache_bytes: usize,
) -> Result<(Tail, FastMap<EntityKey, u64>, u64)> {
    let rtx = db.begin_read()?;
    let state = read_state(&rtx.open_table(keys::META)?)?;
    let mut tail = Tail::new(cache_bytes);
    let mut highest: FastMap<EntityKey, u64> = FastMap::default();
    scan_segments(
        &rtx,
        &state,
        key_groups,
        1,
        None,
        &mut highest,
        &mut |ek, r, v| {
            tail.extend(ek, [(r, v)]);
        },
    )?;
    tail.set_floor(first_unpacked(&state));
    debug!(
        tail_events = tail.len(),
        cache_bytes = tail.cache_bytes(),
        "tail index rebuilt"
    );
    Ok((tail, highest, state.next_offset.saturating_sub(1)))
}

/// Brings the tail of a reader without the writer up to the commit `rtx` sees: adds the events
/// committed after the reader's committed offset and drops those of segments packed since
/// (bumping the pack version first, so views being taken retry; a view taken earlier reads
/// them from its own, older transaction). Returns the last offset `rtx` sees, which bounds the
/// tail refs a view in `rtx` may use (another thread may have caught up further).
pub(crate) fn catch_up(shared: &Shared, rtx: &ReadTransaction, key_groups: u32) -> Result<u64> {
    let state = read_state(&rtx.open_table(keys::META)?)?;
    let end = state.next_offset.saturating_sub(1);
    let floor = first_unpacked(&state);
    let behind = |tail: &Tail| end > *shared.committed.borrow() || floor > tail.floor();
    if !behind(&shared.tail.read().unwrap_or_else(|p| p.into_inner())) {
        return Ok(end);
    }
    let mut tail = shared.tail.write().unwrap_or_else(|p| p.into_inner());
    // Packed segments first: an entity's last ref left is then in a segment still unpacked,
    // and every event after it has an offset the scan below covers (seqs stay checkable).
    if floor > tail.floor() {
        shared
            .pack_version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tail.drop_segments_below(floor);
    }
    let known = *shared.committed.borrow();
    if end > known {
        // Into a list first: a scan that fails half way (damage, I/O) adds nothing (the drop
        // above stands: those segments are packed), so the next read scans the same events
        // again instead of tripping over half of them.
        let mut found: Vec<(EntityKey, TailRef)> = Vec::new();
        let mut highest = FastMap::default();
        scan_segments(
            rtx,
            &state,
            key_groups,
            known + 1,
            Some(&tail),
            &mut highest,
            &mut |ek, r, _| found.push((EntityKey::from_slice(ek), r)),
        )?;
        for (ek, r) in found {
            tail.push_uncached(&ek, r);
        }
        shared.committed.send_replace(end);
    }
    Ok(end)
}

/// Where a scan puts each event it found: its entity key, its ref and its stored bytes.
type Sink<'a> = dyn FnMut(&[u8], TailRef, &[u8]) + 'a;

/// Number of the oldest segment not yet packed (every older one is packed).
fn first_unpacked(state: &State) -> u64 {
    state
        .segments
        .first()
        .map_or(state.next_segment, |s| s.number)
}

/// Gives `sink` the events with offset ≥ `from` of the unpacked segments (entity key, ref,
/// stored bytes), in offset order. `highest` holds the last seq of each entity seen so far,
/// before that the last ref `base` holds, so that seqs are checked to follow each other.
fn scan_segments(
    rtx: &ReadTransaction,
    state: &State,
    key_groups: u32,
    from: u64,
    base: Option<&Tail>,
    highest: &mut FastMap<EntityKey, u64>,
    sink: &mut Sink<'_>,
) -> Result<()> {
    for seg in &state.segments {
        let seg_end = seg.first_offset + seg.events;
        if seg_end <= from {
            continue;
        }
        let name = keys::segment_table_name(seg.number);
        let table = match rtx.open_table(keys::segment_table(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) if seg.events == 0 => continue,
            Err(e) => return Err(e.into()),
        };
        let mut expected = seg.first_offset.max(from);
        // A whole segment is read from its table's start, so that a row keyed below the
        // segment's first offset is found as damage.
        let start = if from <= seg.first_offset { 0 } else { from };
        log::for_each(
            &table,
            seg.number,
            seg.rows,
            start..u64::MAX,
            |offset, v| {
                let loc = || format!("{name}/{offset}");
                // Offsets of a segment are dense from its first: a missing row is damage.
                if offset != expected {
                    return Err(JournalError::corrupted(
                        loc(),
                        format!("log has no event at offset {expected}"),
                    ));
                }
                expected += 1;
                let rec = codec::decode_event(v).map_err(|e| JournalError::corrupted(loc(), e))?;
                if rec.offset.0 != offset {
                    return Err(JournalError::corrupted(
                        loc(),
                        format!("record says offset {}", rec.offset),
                    ));
                }
                let ek = keys::entity_key(&rec.persistence_id, key_groups);
                let prev = highest.get(ek.as_slice()).copied().or_else(|| {
                    let e = base?.entries.get(ek.as_slice())?;
                    e.refs.last().map(|r| r.seq)
                });
                if let Some(prev) = prev {
                    if rec.seq.0 != prev + 1 {
                        return Err(JournalError::corrupted(
                            loc(),
                            format!("{}: seq {} follows {prev}", rec.persistence_id, rec.seq),
                        ));
                    }
                }
                highest.insert(EntityKey::from_slice(&ek), rec.seq.0);
                let r = TailRef {
                    seq: rec.seq.0,
                    offset,
                    segment: seg.number,
                    timestamp_micros: rec.timestamp.timestamp_micros(),
                    bytes: v.len() as u32,
                    cached: NOT_CACHED,
                    rows: seg.rows,
                };
                sink(&ek, r, v);
                Ok(true)
            },
        )?;
        if expected != seg_end {
            return Err(JournalError::corrupted(
                name,
                format!(
                    "log holds {} events, the journal state {}",
                    expected - seg.first_offset,
                    seg.events
                ),
            ));
        }
    }
    Ok(())
}
