//! [`ChangelogIter`]: every stored event in global offset order, from the packed generations'
//! chunk rows and the unpacked log segments of one read transaction.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use redb::{ReadOnlyTable, ReadTransaction};

use super::{read_state, JournalReader, ReaderMeta};
use crate::codec;
use crate::error::{JournalError, Result};
use crate::ids::{Offset, PersistenceId};
use crate::journal::guard;
use crate::keys;
use crate::log;
use crate::meta::GenerationRow;
use crate::record::EventRecord;
use crate::writer::decode_row;

impl JournalReader {
    /// Every stored event with offset ≥ `from`, in global offset order, as committed when
    /// the iterator is created. For a live tail, wait with [`Self::wait_for_offset`] and call
    /// again from the next offset.
    ///
    /// # Errors
    /// Opening fails with [`JournalError::Io`]/[`JournalError::Corrupted`]; items may be
    /// [`JournalError::Corrupted`], after which the iterator ends.
    pub fn changelog(&self, from: Offset) -> Result<ChangelogIter> {
        guard(&self.meta.path, || {
            // The changelog reads the log of its own transaction, never the tail index: a
            // read-only handle need not catch its tail up (a follower would decode each event
            // twice).
            let rtx = self.db.begin_read()?;
            let meta = rtx.open_table(keys::META)?;
            let state = read_state(&meta)?;
            let gens = rtx.open_table(keys::GENERATIONS)?;
            let entities = rtx.open_table(keys::ENTITIES)?;
            Ok(ChangelogIter {
                meta: self.meta.clone(),
                key_groups: self.meta.header.key_groups,
                pos: from.0.max(1),
                end: state.next_offset,
                segments: state.segments.clone(),
                gens,
                entities,
                chunks: None,
                rtx,
                deleted: HashMap::new(),
                buffer: VecDeque::new(),
                last: 0,
                done: false,
            })
        })
    }
}

/// Streams the global changelog; see [`JournalReader::changelog`].
pub struct ChangelogIter {
    meta: Arc<ReaderMeta>,
    key_groups: u32,
    pos: u64,
    end: u64,
    segments: Vec<crate::meta::SegmentInfo>,
    gens: ReadOnlyTable<u64, &'static [u8]>,
    entities: ReadOnlyTable<&'static [u8], &'static [u8]>,
    chunks: Option<ReadOnlyTable<&'static [u8], &'static [u8]>>,
    rtx: ReadTransaction,
    deleted: HashMap<Vec<u8>, u64>,
    buffer: VecDeque<EventRecord>,
    /// Offset of the last event returned.
    last: u64,
    done: bool,
}

impl ChangelogIter {
    /// The offset the next call continues from (one past the last event returned, or past the
    /// end of what was committed when the iterator was made).
    pub fn position(&self) -> Offset {
        Offset(self.buffer.front().map_or(self.pos, |r| r.offset.0))
    }

    fn deleted_to(&mut self, pid: &PersistenceId) -> Result<u64> {
        let ek = keys::entity_key(pid, self.key_groups);
        if let Some(d) = self.deleted.get(&ek) {
            return Ok(*d);
        }
        let d = match self.entities.get(ek.as_slice())? {
            Some(v) => decode_row(&ek, v.value())?.deleted_to,
            None => 0,
        };
        self.deleted.insert(ek, d);
        Ok(d)
    }

    fn fill(&mut self) -> Result<bool> {
        if self.pos >= self.end {
            return Ok(false);
        }
        let first_unpacked = self.segments.first().map_or(self.end, |s| s.first_offset);
        let mut batch = Vec::new();
        if self.pos < first_unpacked {
            // A packed generation: load all its chunks, order by offset. Generations cover
            // offsets 1.. contiguously up to the first unpacked segment; a gap, a record
            // outside its generation or a missing record is damage, never skipped.
            let gen = match self.gens.range(..=self.pos)?.next_back() {
                Some(item) => {
                    let (k, v) = item?;
                    let g = codec::decode_meta::<GenerationRow>(v.value())
                        .map_err(|e| JournalError::corrupted("generations", e))?;
                    if g.first_offset != k.value() {
                        return Err(JournalError::corrupted(
                            format!("generations/{}", k.value()),
                            format!("row says first offset {}", g.first_offset),
                        ));
                    }
                    g
                }
                None => {
                    return Err(JournalError::corrupted(
                        format!("changelog offset {}", self.pos),
                        "no generation holds this offset",
                    ))
                }
            };
            if gen.end_offset <= self.pos {
                return Err(JournalError::corrupted(
                    format!("changelog offset {}", self.pos),
                    format!(
                        "generation {} ends at {}; no generation holds this offset",
                        gen.generation, gen.end_offset
                    ),
                ));
            }
            if self.chunks.is_none() {
                self.chunks = Some(self.rtx.open_table(keys::CHUNKS)?);
            }
            let lo = gen.generation.to_be_bytes();
            let hi = (gen.generation + 1).to_be_bytes();
            let mut recs = Vec::new();
            let mut stored = 0u64;
            if let Some(chunks) = self.chunks.as_ref() {
                for item in chunks.range(&lo[..]..&hi[..])? {
                    let (k, v) = item?;
                    let corrupted =
                        |e| JournalError::corrupted(format!("chunk {:?}", k.value()), e);
                    let records = chunk_records(k.value(), v.value()).map_err(corrupted)?;
                    for rec in records {
                        let rec = rec.map_err(corrupted)?;
                        if rec.offset.0 < gen.first_offset || rec.offset.0 >= gen.end_offset {
                            return Err(JournalError::corrupted(
                                format!("chunk {:?}", k.value()),
                                format!(
                                    "offset {} outside generation {} ({}..{})",
                                    rec.offset, gen.generation, gen.first_offset, gen.end_offset
                                ),
                            ));
                        }
                        stored += 1;
                        if rec.offset.0 >= self.pos {
                            recs.push(rec);
                        }
                    }
                }
            }
            if stored != gen.events {
                return Err(JournalError::corrupted(
                    format!("generation {}", gen.generation),
                    format!("{stored} events found in its chunks, {} stored", gen.events),
                ));
            }
            recs.sort_by_key(|r| r.offset);
            batch = recs;
            self.pos = gen.end_offset.max(gen.first_offset);
        } else {
            let seg_index = self
                .segments
                .iter()
                .rposition(|s| s.first_offset <= self.pos)
                .unwrap_or(0);
            let seg = self.segments[seg_index].clone();
            let seg_end = self
                .segments
                .get(seg_index + 1)
                .map_or(self.end, |s| s.first_offset);
            let name = keys::segment_table_name(seg.number);
            match self.rtx.open_table(keys::segment_table(&name)) {
                Ok(t) => {
                    // Offsets of a segment are dense up to the next one's first (or the
                    // committed end): a missing row is damage, not a shorter changelog.
                    let mut expected = self.pos;
                    log::for_each(&t, seg.number, seg.rows, self.pos..seg_end, |offset, v| {
                        if offset != expected {
                            return Err(JournalError::corrupted(
                                format!("{name}/{expected}"),
                                format!("log has no event at offset {expected} (next: {offset})"),
                            ));
                        }
                        expected += 1;
                        let rec = codec::decode_event(v)
                            .map_err(|e| JournalError::corrupted(format!("{name}/{offset}"), e))?;
                        if rec.offset.0 != offset {
                            return Err(JournalError::corrupted(
                                format!("{name}/{offset}"),
                                format!("record says offset {}", rec.offset),
                            ));
                        }
                        batch.push(rec);
                        Ok(batch.len() < 1024)
                    })?;
                    if batch.len() < 1024 && expected < seg_end {
                        return Err(JournalError::corrupted(
                            format!("{name}/{expected}"),
                            format!("log ends at offset {expected}, before {seg_end}"),
                        ));
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) if self.pos >= seg_end => {}
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    return Err(JournalError::corrupted(
                        name,
                        format!("log segment missing (offsets {}..{seg_end})", self.pos),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
            self.pos = match batch.last() {
                Some(r) if batch.len() == 1024 => r.offset.0 + 1,
                _ => seg_end,
            };
        }
        for rec in batch {
            if rec.seq.0 > self.deleted_to(&rec.persistence_id)? {
                self.buffer.push_back(rec);
            }
        }
        Ok(true)
    }
}

impl Iterator for ChangelogIter {
    type Item = Result<EventRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(rec) = self.buffer.pop_front() {
                // Offsets are unique and ascending; anything else is damage, not data.
                if rec.offset.0 <= self.last {
                    self.done = true;
                    return Some(Err(JournalError::corrupted(
                        format!("changelog offset {}", rec.offset),
                        format!("follows offset {} (duplicate or out of order)", self.last),
                    )));
                }
                self.last = rec.offset.0;
                return Some(Ok(rec));
            }
            let meta = self.meta.clone();
            match guard(&meta.path, || self.fill()) {
                Ok(true) => continue,
                Ok(false) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// The records of chunk row `key → value`, of either encoding (a compact chunk's persistence id
/// is its key's).
fn chunk_records<'a>(
    key: &[u8],
    value: &'a [u8],
) -> std::result::Result<
    Box<dyn Iterator<Item = std::result::Result<EventRecord, String>> + 'a>,
    String,
> {
    if !codec::is_compact(value) {
        let frames = codec::Frames::new(value)
            .map(|f| f.and_then(codec::decode_event).map_err(|e| e.to_string()));
        return Ok(Box::new(frames));
    }
    let ek = keys::chunk_key_entity(key).ok_or("chunk key too short")?;
    let pid = keys::parse_entity_key(ek).map_err(|e| e.to_string())?.1;
    let events = codec::CompactEvents::new(value).map_err(|e| e.to_string())?;
    Ok(Box::new(events.map(move |e| {
        e.and_then(|e| codec::chunk_record(&pid, &e))
            .map_err(|e| e.to_string())
    })))
}
