//! Background work of the writer: packing sealed log segments into per-entity chunk rows, a
//! step per commit, and merging packed generations (opt-in). Both are append-ordered bulk
//! writes in the writer's transactions; see FORMAT.md for their crash argument.

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{ReadableTable, Table};
use tracing::debug;

use super::{encode_row, load_row, Effects, Writer};
use crate::codec::{self, ChunkEvent, CompactWriter, FRAME_HEADER_BYTES};
use crate::error::{JournalError, Result};
use crate::keys;
use crate::log;
use crate::meta::{ChunkRef, GenerationRow, MergeState};
use crate::tail::TailRef;

impl Writer {
    /// Packs up to `budget` events of the oldest sealed segment into chunk rows; when the
    /// segment is done, drops its log table and records its generation.
    pub(super) fn pack_step(
        &mut self,
        txn: &redb::WriteTransaction,
        entities: &mut Table<&[u8], &[u8]>,
        chunks: &mut Table<&[u8], &[u8]>,
        mut budget: usize,
        fx: &mut Effects,
    ) -> Result<()> {
        if !self.pack_pending() {
            return Ok(());
        }
        let seg = self.state.segments[0].clone();
        let plan = match self.plan.take() {
            Some(p) => p,
            None => self.build_plan(seg.number)?,
        };
        let mut plan = plan;
        let name = keys::segment_table_name(seg.number);
        {
            let log = txn.open_table(keys::segment_table(&name))?;
            // Every event to pack was committed by an earlier transaction, so the cache has
            // it unless it was over budget. The tail is read one entity at a time: the applier
            // (whose write lock new readers would queue behind) is not held up for a step.
            let shared = self.shared.clone();
            // At the end of this generation's key range (a merge target, newer, may follow it).
            let next_gen = (seg.number + 1).to_be_bytes();
            let mut cursor = chunks.upper_bound_mut(Bound::Excluded(&next_gen[..]))?;
            // One chunk buffer for the whole step, reused per entity.
            let mut writer = CompactWriter::default();
            while budget > 0 {
                let Some((ek, refs)) = plan.pop_first() else {
                    break;
                };
                let mut row = load_row(&ek, entities)?;
                // A sealed segment's refs and cached bytes change only when it is dropped,
                // after its packing is complete.
                let tail = shared.tail.read().unwrap_or_else(|p| p.into_inner());
                let cached = tail.entries.get(ek.as_slice());
                let left = refs
                    .iter()
                    .filter(|r| r.seq > row.deleted_to)
                    .map(|r| FRAME_HEADER_BYTES + r.bytes as usize)
                    .sum();
                let key_len = keys::chunk_key_len(&ek);
                let mut chunk = ChunkBuilder {
                    cuts: ChunkCuts {
                        fill: self.pack_fill.as_mut(),
                        max_bytes: self.max_chunk_bytes,
                        key_len,
                        left,
                        frames: 0,
                    },
                    writer: &mut writer,
                    generation: seg.number,
                    current: None,
                    last: (0, 0),
                };
                let mut made: Vec<ChunkRef> = Vec::new();
                let mut emit = |c: &ChunkRef, bytes: &[u8]| -> Result<()> {
                    let key = keys::chunk_key(seg.number, &ek, c.first_seq);
                    cursor.insert_before(key.as_slice(), bytes)?;
                    made.push(*c);
                    Ok(())
                };
                for r in &refs {
                    row.highest_seq = row.highest_seq.max(r.seq);
                    row.last_write_micros = row.last_write_micros.max(r.timestamp_micros);
                    if r.seq <= row.deleted_to {
                        continue;
                    }
                    let found;
                    let loc = || format!("{name}/{}", r.offset);
                    // Cached bytes were sealed by this writer or checked when the tail was
                    // rebuilt; bytes read back from the log are checked here, before their
                    // checksum is dropped.
                    let (v, trusted): (&[u8], bool) = match cached.and_then(|c| c.cached(r)) {
                        Some(b) => (b, true),
                        None => {
                            found = log::get(&log, seg.number, seg.rows, r.offset)?.ok_or_else(
                                || JournalError::corrupted(loc(), "event missing from log"),
                            )?;
                            (found.bytes(), false)
                        }
                    };
                    let e = codec::chunk_event(v, trusted, &ek)
                        .map_err(|e| JournalError::corrupted(loc(), e))?;
                    if (e.seq, e.offset) != (r.seq, r.offset) {
                        let detail = format!("record is seq {} at offset {}", e.seq, e.offset);
                        return Err(JournalError::corrupted(loc(), detail));
                    }
                    chunk.push(&e, FRAME_HEADER_BYTES + v.len(), &mut emit)?;
                    self.state.pack_events += 1;
                }
                chunk.finish(&mut emit)?;
                drop(tail);
                row.chunks.extend(made);
                entities.insert(ek.as_slice(), encode_row(&ek, &row)?.as_slice())?;
                budget = budget.saturating_sub(refs.len());
                fx.packed += refs.len();
                let mut next = ek;
                next.push(0);
                self.state.pack_cursor = Some(next);
            }
            cursor.close()?;
        }
        if plan.is_empty() {
            txn.delete_table(keys::segment_table(&name))?;
            let end_offset = self
                .state
                .segments
                .get(1)
                .map_or(self.state.next_offset, |s| s.first_offset);
            let gen = GenerationRow {
                generation: seg.number,
                first_offset: seg.first_offset,
                end_offset,
                events: self.state.pack_events,
            };
            self.gen_index.insert(seg.number, seg.first_offset);
            let mut gens = txn.open_table(keys::GENERATIONS)?;
            let bytes = codec::encode_meta(&gen).map_err(|e| JournalError::Io(e.to_string()))?;
            gens.insert(seg.first_offset, bytes.as_slice())?;
            self.state.segments.remove(0);
            self.state.pack_cursor = None;
            self.state.pack_events = 0;
            fx.packed_segment = Some(seg.number);
        } else {
            self.plan = Some(plan);
        }
        Ok(())
    }

    pub(super) fn merge_pending(&self) -> bool {
        self.state.merge.is_some()
    }

    /// Picks generations to merge: the oldest run of [`MERGE_FANIN`] consecutive generations
    /// of the same size tier (offset span in powers of the fan-in times the segment size), so
    /// an entity's history lives in a number of chunks logarithmic in its age.
    fn plan_merge(&mut self, txn: &redb::WriteTransaction) -> Result<()> {
        let gens_table = txn.open_table(keys::GENERATIONS)?;
        let mut gens = Vec::new();
        for item in gens_table.range::<u64>(..)? {
            let (k, v) = item?;
            let g = codec::decode_meta::<GenerationRow>(v.value())
                .map_err(|e| JournalError::corrupted(format!("generations/{}", k.value()), e))?;
            gens.push(g);
        }
        let seg = self.segment_events.max(1);
        let tier = |g: &GenerationRow| {
            let mut span = g.end_offset.saturating_sub(g.first_offset) / seg;
            let mut t = 0;
            while span >= MERGE_FANIN as u64 {
                span /= MERGE_FANIN as u64;
                t += 1;
            }
            t
        };
        let run = gens.windows(MERGE_FANIN).find(|w| {
            w.iter().all(|g| tier(g) == tier(&w[0]))
                && w.windows(2).all(|p| p[0].end_offset == p[1].first_offset)
        });
        if let Some(w) = run {
            let target = self.state.next_segment;
            self.state.next_segment += 1;
            self.state.merge = Some(MergeState {
                sources: w.iter().map(|g| g.generation).collect(),
                target,
                first_offset: w[0].first_offset,
                end_offset: w[MERGE_FANIN - 1].end_offset,
                cursor: None,
                events: 0,
            });
            self.merge_plan = None;
        }
        Ok(())
    }

    /// The entities with chunks in the merge's sources still to merge, from the chunk keys.
    fn build_merge_plan(
        &self,
        chunks: &Table<&[u8], &[u8]>,
        m: &MergeState,
    ) -> Result<std::collections::BTreeSet<Vec<u8>>> {
        let mut plan = std::collections::BTreeSet::new();
        for g in &m.sources {
            let lo = g.to_be_bytes();
            let hi = (g + 1).to_be_bytes();
            for item in chunks.range(&lo[..]..&hi[..])? {
                let (k, _) = item?;
                let k = k.value();
                if k.len() < 8 + 9 {
                    return Err(JournalError::corrupted("chunks", "chunk key too short"));
                }
                let ek = &k[8..k.len() - 9];
                if m.cursor.as_deref().is_some_and(|c| ek < c) {
                    continue;
                }
                plan.insert(ek.to_vec());
            }
        }
        Ok(plan)
    }

    /// Merges up to `budget` events of the merge under way (starting one when due); when the
    /// last entity is merged, swaps the sources' chunk and generation rows for the target's.
    pub(super) fn merge_step(
        &mut self,
        txn: &redb::WriteTransaction,
        entities: &mut Table<&[u8], &[u8]>,
        chunks: &mut Table<&[u8], &[u8]>,
        mut budget: usize,
    ) -> Result<()> {
        if self.state.merge.is_none() {
            if !self.merge_enabled {
                return Ok(());
            }
            // Look for a run only when the set of generations changed.
            if self.gen_index.len() < MERGE_FANIN || self.merge_checked == self.gen_index.len() {
                return Ok(());
            }
            self.merge_checked = self.gen_index.len();
            self.plan_merge(txn)?;
        }
        let Some(m) = self.state.merge.clone() else {
            return Ok(());
        };
        let mut plan = match self.merge_plan.take() {
            Some(p) => p,
            None => self.build_merge_plan(chunks, &m)?,
        };
        let mut written = 0u64;
        let mut writer = CompactWriter::default();
        while budget > 0 {
            let Some(ek) = plan.pop_first() else {
                break;
            };
            let mut row = load_row(&ek, entities)?;
            let (mine, rest): (Vec<ChunkRef>, Vec<ChunkRef>) = row
                .chunks
                .iter()
                .partition(|c| m.sources.contains(&c.generation));
            // The sources are read first: the target's rows go into the same table.
            let mut sources: Vec<(Vec<u8>, Vec<u8>, u32)> = Vec::with_capacity(mine.len());
            for c in &mine {
                let key = keys::chunk_key(c.generation, &ek, c.first_seq);
                let Some(v) = chunks.get(key.as_slice())? else {
                    return Err(JournalError::corrupted(
                        format!("chunk {key:?}"),
                        "referenced chunk missing during merge",
                    ));
                };
                let bytes = v.value().to_vec();
                drop(v);
                sources.push((key, bytes, c.events));
            }
            let mut merged: Vec<ChunkRef> = Vec::new();
            // Merged chunks are cut at `max_chunk_bytes` only, whether or not packing fills
            // leaves: merging exists to keep an entity's chunks few.
            let mut chunk = ChunkBuilder {
                cuts: ChunkCuts {
                    fill: None,
                    max_bytes: self.max_chunk_bytes,
                    key_len: 0,
                    left: 0,
                    frames: 0,
                },
                writer: &mut writer,
                generation: m.target,
                current: None,
                last: (0, 0),
            };
            let mut emit = |c: &ChunkRef, bytes: &[u8]| -> Result<()> {
                let k = keys::chunk_key(m.target, &ek, c.first_seq);
                chunks.insert(k.as_slice(), bytes)?;
                merged.push(*c);
                Ok(())
            };
            for (key, bytes, events) in &sources {
                let corrupted = |e| JournalError::corrupted(format!("chunk {key:?}"), e);
                for e in codec::ChunkEvents::new(bytes, &ek).map_err(corrupted)? {
                    let e = e.map_err(corrupted)?;
                    if e.seq <= row.deleted_to {
                        continue;
                    }
                    chunk.push(&e, 0, &mut emit)?;
                    written += 1;
                }
                budget = budget.saturating_sub(*events as usize);
            }
            chunk.finish(&mut emit)?;
            if !mine.is_empty() {
                let mut all = merged;
                all.extend(rest);
                all.sort_by_key(|c| c.first_seq);
                row.chunks = all;
                entities.insert(ek.as_slice(), encode_row(&ek, &row)?.as_slice())?;
            }
            budget = budget.saturating_sub(1);
            let mut next = ek;
            next.push(0);
            if let Some(ms) = self.state.merge.as_mut() {
                ms.cursor = Some(next);
            }
        }
        if let Some(ms) = self.state.merge.as_mut() {
            ms.events += written;
        }
        if !plan.is_empty() {
            self.merge_plan = Some(plan);
            return Ok(());
        }
        // Done: the sources' rows go, the target's generation row arrives, in one commit.
        let Some(m) = self.state.merge.take() else {
            return Ok(());
        };
        let mut gens = txn.open_table(keys::GENERATIONS)?;
        for g in &m.sources {
            let lo = g.to_be_bytes();
            let hi = (g + 1).to_be_bytes();
            chunks.retain_in(&lo[..]..&hi[..], |_, _| false)?;
            if let Some(first) = self.gen_index.remove(g) {
                gens.remove(first)?;
            }
        }
        let row = GenerationRow {
            generation: m.target,
            first_offset: m.first_offset,
            end_offset: m.end_offset,
            events: m.events,
        };
        let bytes = codec::encode_meta(&row).map_err(|e| JournalError::Io(e.to_string()))?;
        gens.insert(m.first_offset, bytes.as_slice())?;
        self.gen_index.insert(m.target, m.first_offset);
        self.merge_plan = None;
        debug!(sources = ?m.sources, target = m.target, events = m.events, "generations merged");
        Ok(())
    }

    /// The entities of `segment` still to pack, in key order, from the tail index.
    fn build_plan(&self, segment: u64) -> Result<BTreeMap<Vec<u8>, Vec<TailRef>>> {
        // The segment's last events may have been committed by a transaction the applier
        // has not brought into the tail yet.
        self.applier.wait_applied()?;
        let tail = self.shared.tail.read().unwrap_or_else(|p| p.into_inner());
        let cursor = self.state.pack_cursor.as_deref();
        let mut plan = BTreeMap::new();
        for (ek, entry) in &tail.entries {
            if cursor.is_some_and(|c| ek.as_slice() < c) {
                continue;
            }
            let mine: Vec<TailRef> = entry
                .refs
                .iter()
                .filter(|r| r.segment == segment)
                .copied()
                .collect();
            if !mine.is_empty() {
                plan.insert(ek.to_vec(), mine);
            }
        }
        Ok(plan)
    }
}

/// Generations merged at once.
pub(super) const MERGE_FANIN: usize = 4;

// redb's leaf layout (redb 4.6, `RawLeafBuilder::required_bytes`): a leaf takes 4 header
// bytes plus, per entry with a variable-width key and value, two `u32` ends and the bytes
// themselves, and a leaf of more than one entry must fit one 4 KiB page. A leaf of one larger
// entry takes the next power-of-two number of pages.
const LEAF_PAGE_BYTES: usize = 4096;
const LEAF_HEADER_BYTES: usize = 4;
const LEAF_ENTRY_BYTES: usize = 8;

/// A chunk does not start in a leaf with less room than this when the rest of its entity does
/// not fit there either (the leaf stays that much short, instead of the entity getting one
/// more, tiny, chunk).
const MIN_PIECE_BYTES: usize = 512;

/// A chunk is cut where the leaf is full only if it holds at least two frames and the leaf is
/// then at least this full (in eighths of a page); otherwise it grows into a row of its own, as
/// without filling. So frames too large for two to share a leaf are never one per chunk.
const MIN_FILL_EIGHTHS: usize = 6;

/// How full the chunks table's leaf at packing's insertion point is, as redb counts it.
///
/// Chunk rows are appended in key order through a cursor, whose inserts redb packs greedily
/// into 4 KiB leaves; a row that does not fit starts a new leaf. An entity's events of one
/// segment (about 4.8 KB in the persist benchmark) would make a row too large to share a leaf,
/// each in an 8 KiB page of its own. Cutting chunks where the leaf is full fills the pages
/// instead. The model is a layout hint, not a fact: it starts empty on open, does not see rows
/// written elsewhere (deletes, merges), nor redb's rebalancing of the last two leaves of a
/// flush when the last is under a third full; a wrong guess costs space, never correctness.
#[derive(Debug, Default)]
pub(super) struct LeafFill {
    /// Bytes of the entries in the current leaf (without the leaf's header).
    used: usize,
}

impl LeafFill {
    /// Bytes a value can have to fit the current leaf after a key of `key_len` bytes.
    fn room(&self, key_len: usize) -> usize {
        LEAF_PAGE_BYTES.saturating_sub(LEAF_HEADER_BYTES + self.used + LEAF_ENTRY_BYTES + key_len)
    }

    /// Counts a row appended at the insertion point (in a new leaf when it does not fit).
    fn push(&mut self, key_len: usize, value_len: usize) {
        if value_len > self.room(key_len) {
            self.used = 0;
        }
        self.used += LEAF_ENTRY_BYTES + key_len + value_len;
    }
}

/// One entity's compact chunk rows of one generation, built event by event and cut where
/// [`ChunkCuts`] says; each finished row goes to `emit(chunk ref, row bytes)`.
struct ChunkBuilder<'a, 'f> {
    cuts: ChunkCuts<'f>,
    writer: &'a mut CompactWriter,
    generation: u64,
    current: Option<ChunkRef>,
    /// Seq and offset of the entity's last event pushed (0, 0 before the first): both must
    /// rise, or the compact chunk could not be decoded.
    last: (u64, u64),
}

impl ChunkBuilder<'_, '_> {
    /// Adds `e` (`source_len`: the bytes it took where it came from, for the estimate of what
    /// is left).
    fn push(
        &mut self,
        e: &ChunkEvent<'_>,
        source_len: usize,
        emit: &mut dyn FnMut(&ChunkRef, &[u8]) -> Result<()>,
    ) -> Result<()> {
        if e.seq <= self.last.0 || e.offset <= self.last.1 {
            let (seq, offset) = self.last;
            return Err(JournalError::corrupted(
                format!("generation {} seq {}", self.generation, e.seq),
                format!(
                    "event at offset {} after seq {seq} at offset {offset} (out of order)",
                    e.offset
                ),
            ));
        }
        self.last = (e.seq, e.offset);
        let before = self.writer.len();
        let mut added = self.writer.push(e);
        let mut before_len = before;
        if self.cuts.cut_before(before, added) {
            self.writer.undo();
            self.finish(emit)?;
            // Encoded again as a chunk's first event.
            added = self.writer.push(e);
            before_len = 0;
        }
        self.cuts.add(before_len, added);
        self.cuts.left = self
            .cuts
            .left
            .saturating_sub(source_len.saturating_sub(added));
        let c = self.current.get_or_insert(ChunkRef {
            generation: self.generation,
            first_seq: e.seq,
            last_seq: e.seq,
            events: 0,
            bytes: 0,
        });
        c.last_seq = e.seq;
        c.events += 1;
        c.bytes = c
            .bytes
            .saturating_add(u32::try_from(added).unwrap_or(u32::MAX));
        Ok(())
    }

    /// Ends the chunk under way, if any.
    fn finish(&mut self, emit: &mut dyn FnMut(&ChunkRef, &[u8]) -> Result<()>) -> Result<()> {
        if let Some(c) = self.current.take() {
            let bytes = self.writer.finish();
            emit(&c, bytes)?;
            self.cuts.written(bytes.len());
        }
        Ok(())
    }
}

/// Where one entity's chunk rows end while its frames are copied: before `max_bytes` would be
/// exceeded, and, when filling leaves (`fill`), where the current leaf is full.
struct ChunkCuts<'a> {
    fill: Option<&'a mut LeafFill>,
    max_bytes: usize,
    /// Length of the entity's chunk keys.
    key_len: usize,
    /// Bytes (frames) of the entity not yet copied.
    left: usize,
    /// Frames in the chunk under way.
    frames: usize,
}

impl ChunkCuts<'_> {
    /// Whether the chunk under way (`buf_len` bytes so far, 0 when none) must end before a
    /// frame of `frame_len` bytes.
    fn cut_before(&self, buf_len: usize, frame_len: usize) -> bool {
        if buf_len == 0 {
            return false;
        }
        if buf_len + frame_len > self.max_bytes {
            return true;
        }
        let Some(fill) = self.fill.as_deref() else {
            return false;
        };
        let room = fill.room(self.key_len);
        // A chunk already past its leaf is a row of its own (it grows as without filling);
        // otherwise it ends where the leaf is full, if it holds two frames and the leaf is
        // then full enough.
        let leaf_after = LEAF_HEADER_BYTES + fill.used + LEAF_ENTRY_BYTES + self.key_len + buf_len;
        self.frames >= 2
            && buf_len <= room
            && buf_len + frame_len > room
            && leaf_after * 8 >= LEAF_PAGE_BYTES * MIN_FILL_EIGHTHS
    }

    /// Counts a frame of `frame_len` bytes added to the chunk under way (`buf_len` bytes
    /// before it; 0 starts a chunk).
    fn add(&mut self, buf_len: usize, frame_len: usize) {
        let left = self.left.min(self.max_bytes);
        self.left = self.left.saturating_sub(frame_len);
        self.frames = if buf_len == 0 { 1 } else { self.frames + 1 };
        let Some(fill) = self.fill.as_deref_mut() else {
            return;
        };
        let room = fill.room(self.key_len);
        // A new chunk stays in this leaf if its first event fits, and either the chunk fits
        // too or the piece that does is worth a chunk; otherwise it starts a leaf.
        if buf_len == 0 && (frame_len > room || (left > room && room < MIN_PIECE_BYTES)) {
            fill.used = 0;
        }
    }

    /// Counts a chunk row of `value_len` bytes written at the insertion point.
    fn written(&mut self, value_len: usize) {
        if let Some(fill) = self.fill.as_deref_mut() {
            fill.push(self.key_len, value_len);
        }
    }
}

/// Generation → first offset, from the generations table.
pub(crate) fn load_generations(db: &impl redb::ReadableDatabase) -> Result<BTreeMap<u64, u64>> {
    let rtx = db.begin_read()?;
    let gens = rtx.open_table(keys::GENERATIONS)?;
    let mut out = BTreeMap::new();
    for item in gens.range::<u64>(..)? {
        let (k, v) = item?;
        let row = codec::decode_meta::<GenerationRow>(v.value())
            .map_err(|e| JournalError::corrupted(format!("generations/{}", k.value()), e))?;
        out.insert(row.generation, k.value());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, offset: u64) -> ChunkEvent<'static> {
        ChunkEvent {
            seq,
            offset,
            event_id: [1; 16],
            timestamp_micros: 5,
            manifest: "Deposited",
            version: 1,
            payload: b"xyz",
        }
    }

    fn builder(writer: &mut CompactWriter) -> ChunkBuilder<'_, '_> {
        ChunkBuilder {
            cuts: ChunkCuts {
                fill: None,
                max_bytes: 1 << 20,
                key_len: 0,
                left: 0,
                frames: 0,
            },
            writer,
            generation: 3,
            current: None,
            last: (0, 0),
        }
    }

    /// A compact chunk stores deltas that must be positive: events whose seq or offset does
    /// not rise (a damaged older chunk whose frames pass their checksums) are refused before
    /// anything is written, instead of making a chunk no reader can decode.
    #[test]
    fn events_out_of_order_are_refused() {
        let mut emitted = Vec::new();
        let mut emit = |c: &ChunkRef, bytes: &[u8]| -> Result<()> {
            emitted.push((*c, bytes.to_vec()));
            Ok(())
        };
        let mut writer = CompactWriter::default();
        let mut b = builder(&mut writer);
        b.push(&event(1, 4), 0, &mut emit).unwrap();
        b.push(&event(2, 9), 0, &mut emit).unwrap();
        for (seq, offset) in [(2, 10), (1, 12), (3, 9), (3, 2), (0, 20)] {
            let err = b.push(&event(seq, offset), 0, &mut emit).unwrap_err();
            assert!(matches!(err, JournalError::Corrupted { .. }), "{err:?}");
        }
        b.push(&event(3, 10), 0, &mut emit).unwrap();
        b.finish(&mut emit).unwrap();
        for (seq, offset) in [(0, 1), (1, 0)] {
            let mut writer = CompactWriter::default();
            let mut b = builder(&mut writer);
            assert!(b.push(&event(seq, offset), 0, &mut emit).is_err());
        }
        let [(c, bytes)] = emitted.as_slice() else {
            panic!("one chunk expected: {emitted:?}");
        };
        assert_eq!((c.first_seq, c.last_seq, c.events), (1, 3, 3));
        assert_eq!(c.bytes as usize, bytes.len(), "bytes is the row's length");
        let seqs: Vec<u64> = codec::CompactEvents::new(bytes)
            .unwrap()
            .map(|e| e.unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }
}
