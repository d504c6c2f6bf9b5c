//! [`EventIter`]: one persistence id's events in seq order, from its chunk rows (in the
//! view's read transaction) and then its tail (cached bytes copied a batch at a time, the rest
//! read from the log), each checked against the view.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::Arc;

use redb::{ReadOnlyTable, ReadTransaction};

use super::{JournalReader, ReaderMeta};
use crate::codec;
use crate::error::{JournalError, Result};
use crate::ids::{Offset, PersistenceId, Seq};
use crate::journal::guard;
use crate::keys;
use crate::log;
use crate::meta::{ChunkRef, EntityRow};
use crate::record::{EventRecord, EventRef, Manifest};
use crate::tail::{Shared, TailRef};

impl JournalReader {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn event_iter(
        &self,
        rtx: ReadTransaction,
        row: &EntityRow,
        tail: Vec<TailRef>,
        pid: &PersistenceId,
        ek: Vec<u8>,
        from: Seq,
        to: Seq,
        max: u64,
    ) -> Result<EventIter> {
        let from = from.0.max(row.deleted_to + 1).max(1);
        let highest = tail.last().map_or(0, |r| r.seq).max(row.highest_seq);
        let covered = row.chunks.last().map_or(0, |c| c.last_seq);
        let chunks: VecDeque<ChunkRef> = row
            .chunks
            .iter()
            .filter(|c| c.last_seq >= from && c.first_seq <= to.0)
            .copied()
            .collect();
        let tail: VecDeque<TailRef> = tail
            .into_iter()
            .filter(|r| r.seq > covered && r.seq >= from && r.seq <= to.0)
            .collect();
        let chunk_table = if chunks.is_empty() {
            None
        } else {
            Some(rtx.open_table(keys::CHUNKS)?)
        };
        Ok(EventIter {
            rtx,
            meta: self.meta.clone(),
            ek,
            chunk_table,
            logs: HashMap::new(),
            chunks,
            tail,
            shared: self.shared.clone(),
            batch: TailBatch::default(),
            buffer: VecDeque::new(),
            remaining: max,
            end: to.0.min(highest),
            truncated: false,
            done: false,
            check: Checker {
                head: codec::envelope_head(pid),
                pid: pid.clone(),
                from,
                to: to.0,
                // The first event must be `from` itself (when it exists), and the stream must
                // reach `min(to, highest)`: a missing chunk or row cannot pass for a short
                // history.
                expect: Some(from),
                manifest: Manifest::new(String::new(), 0),
                dates: codec::Dates::default(),
            },
        })
    }
}

/// Streams one persistence id's events; see [`JournalReader::events`]. Iterate it for owned
/// [`EventRecord`]s, or visit the events in place with [`Self::for_each_ref`].
pub struct EventIter {
    rtx: ReadTransaction,
    meta: Arc<ReaderMeta>,
    ek: Vec<u8>,
    chunk_table: Option<ReadOnlyTable<&'static [u8], &'static [u8]>>,
    logs: HashMap<u64, ReadOnlyTable<u64, &'static [u8]>>,
    chunks: VecDeque<ChunkRef>,
    tail: VecDeque<TailRef>,
    /// Where the cached bytes of tail events are copied from.
    shared: Arc<Shared>,
    batch: TailBatch,
    buffer: VecDeque<EventRecord>,
    remaining: u64,
    /// Last seq the stream must reach (unless cut by the read snapshot).
    end: u64,
    /// Tail events newer than this read transaction were left out.
    truncated: bool,
    done: bool,
    check: Checker,
}

/// Tail events decoded together: their refs, and the cached bytes copied under one lock.
#[derive(Default)]
struct TailBatch {
    refs: Vec<TailRef>,
    bytes: Vec<u8>,
    spans: Vec<Option<std::ops::Range<usize>>>,
}

/// Hands the frames of chunk `c`, its row's `bytes`, to `sink`; `Ok(false)` when the sink
/// asked to stop.
fn emit_chunk(
    check: &mut Checker,
    c: &ChunkRef,
    bytes: &[u8],
    sink: &mut dyn FnMut(EventRef<'_>) -> bool,
) -> Result<bool> {
    let what = || format!("chunk {}", c.generation);
    if codec::is_compact(bytes) {
        let corrupted =
            |check: &Checker, e| check.corrupted(c.first_seq, format!("{}: {e}", what()));
        let events = codec::CompactEvents::new(bytes).map_err(|e| corrupted(check, e))?;
        for e in events {
            let e = e.map_err(|e| corrupted(check, e))?;
            if !check.emit_compact(&e, &what, sink)? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    for frame in codec::Frames::new(bytes) {
        let frame = frame
            .map_err(|e| check.corrupted(c.first_seq, format!("chunk {}: {e}", c.generation)))?;
        if !check.emit(frame, false, None, c.first_seq, &what, sink)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn missing_chunk(check: &Checker, c: &ChunkRef) -> JournalError {
    let detail = format!("chunk of generation {} missing", c.generation);
    check.corrupted(c.first_seq, detail)
}

/// Most bytes of chunk frames one range scan reads (for [`EventIter::for_each_ref`]).
const CHUNK_RUN_BYTES: usize = 256 * 1024;

/// Tail events per batch, and the bytes that end one early.
const TAIL_BATCH_EVENTS: usize = 256;
const TAIL_BATCH_BYTES: usize = 256 * 1024;

/// What every event of a stream is checked against, and the manifest consecutive events share.
struct Checker {
    pid: PersistenceId,
    /// How `pid`'s envelopes begin ([`codec::envelope_head`]).
    head: Vec<u8>,
    from: u64,
    to: u64,
    expect: Option<u64>,
    manifest: Manifest,
    dates: codec::Dates,
}

impl Checker {
    fn corrupted(&self, seq: u64, detail: impl ToString) -> JournalError {
        JournalError::corrupted(format!("{} seq {seq}", self.pid), detail)
    }

    /// Whether an event with `seq` belongs in the stream: `false` outside `from..=to`; an
    /// error for a gap or a duplicate.
    fn in_order(&mut self, seq: u64) -> Result<bool> {
        if seq < self.from || seq > self.to {
            return Ok(false);
        }
        if let Some(e) = self.expect {
            if seq != e {
                let detail = format!("expected seq {e}, found {seq} (gap or duplicate)");
                return Err(self.corrupted(e, detail));
            }
        }
        self.expect = Some(seq + 1);
        Ok(true)
    }

    /// Decodes one stored event of the stream in place and hands it to `sink` if it is in
    /// range; `want` is the `(seq, offset)` the index says it has. `Ok(false)` when the sink
    /// asked to stop. `at` (the seq to name) and `what` (where the bytes are) locate errors.
    /// The checksum is checked unless the bytes come from the event cache (`cached`): those
    /// were sealed by the writer, or checked when the tail was rebuilt from disk.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        bytes: &[u8],
        cached: bool,
        want: Option<(u64, u64)>,
        at: u64,
        what: &dyn Fn() -> String,
        sink: &mut dyn FnMut(EventRef<'_>) -> bool,
    ) -> Result<bool> {
        let fields = codec::event_fields(
            bytes,
            &self.pid,
            &self.head,
            cached,
            &mut self.dates,
            &self.manifest.type_name,
        )
        .map_err(|e| self.corrupted(at, format!("{}: {e}", what())))?;
        let Some(f) = fields else {
            // Another persistence id, or a shape only serde reads: the owned decoder decides.
            let rec = codec::decode_event_as(bytes, Some(&self.pid))
                .map_err(|e| self.corrupted(at, format!("{}: {e}", what())))?;
            if rec.persistence_id != self.pid {
                let detail = format!("record is {} seq {}", rec.persistence_id, rec.seq);
                return Err(self.corrupted(want.map_or(rec.seq.0, |w| w.0), detail));
            }
            self.check_index(want, rec.seq.0, rec.offset.0, what)?;
            if !self.in_order(rec.seq.0)? {
                return Ok(true);
            }
            return Ok(sink(rec.borrowed()));
        };
        self.check_index(want, f.seq, f.offset, what)?;
        if !self.in_order(f.seq)? {
            return Ok(true);
        }
        match f.manifest {
            Some(name) => self.manifest = Manifest::new(name, f.version),
            None if self.manifest.version != f.version => self.manifest.version = f.version,
            None => {}
        }
        Ok(sink(EventRef {
            persistence_id: &self.pid,
            seq: Seq(f.seq),
            offset: Offset(f.offset),
            event_id: f.event_id,
            timestamp: f.timestamp,
            manifest: &self.manifest,
            payload: f.payload,
        }))
    }

    /// [`Self::emit`] for an event of a compact chunk (whose checksum was checked): its
    /// persistence id is the chunk's.
    fn emit_compact(
        &mut self,
        e: &codec::ChunkEvent<'_>,
        what: &dyn Fn() -> String,
        sink: &mut dyn FnMut(EventRef<'_>) -> bool,
    ) -> Result<bool> {
        if !self.in_order(e.seq)? {
            return Ok(true);
        }
        let timestamp = (self.dates.at(e.timestamp_micros))
            .map_err(|err| self.corrupted(e.seq, format!("{}: {err}", what())))?;
        if self.manifest.type_name != e.manifest {
            self.manifest = Manifest::new(e.manifest, e.version);
        } else if self.manifest.version != e.version {
            self.manifest.version = e.version;
        }
        Ok(sink(EventRef {
            persistence_id: &self.pid,
            seq: Seq(e.seq),
            offset: Offset(e.offset),
            event_id: uuid::Uuid::from_bytes(e.event_id),
            timestamp,
            manifest: &self.manifest,
            payload: e.payload,
        }))
    }

    fn check_index(
        &self,
        want: Option<(u64, u64)>,
        seq: u64,
        offset: u64,
        what: &dyn Fn() -> String,
    ) -> Result<()> {
        let Some((want_seq, want_offset)) = want else {
            return Ok(());
        };
        if seq != want_seq {
            let detail = format!("record is {} seq {seq}", self.pid);
            return Err(self.corrupted(want_seq, detail));
        }
        if offset != want_offset {
            return Err(self.corrupted(seq, format!("{} holds offset {offset}", what())));
        }
        Ok(())
    }
}

impl EventIter {
    /// Hands the events of the next chunk (with `runs`, of the next run of chunks of one
    /// generation), or of up to 256 tail events, to `sink` (which returns `false` to stop, for
    /// good). `Ok(false)` once the stream has nothing left.
    fn fill_with(
        &mut self,
        runs: bool,
        sink: &mut dyn FnMut(EventRef<'_>) -> bool,
    ) -> Result<bool> {
        if let Some(c) = self.chunks.pop_front() {
            let Some(table) = self.chunk_table.as_ref() else {
                return Err(self.check.corrupted(c.first_seq, "chunk table missing"));
            };
            // An entity's chunks of one generation are neighbours in the table: a run of them
            // (up to `CHUNK_RUN_BYTES`) is read with one range scan instead of a lookup each.
            let frames =
                |c: &ChunkRef| c.bytes as usize + codec::FRAME_HEADER_BYTES * c.events as usize;
            let mut bytes = frames(&c);
            let mut run = 1;
            while let Some(n) = self.chunks.get(run - 1).filter(|_| runs) {
                if n.generation != c.generation || bytes + frames(n) > CHUNK_RUN_BYTES {
                    break;
                }
                bytes += frames(n);
                run += 1;
            }
            let key = keys::chunk_key(c.generation, &self.ek, c.first_seq);
            if run == 1 {
                let Some(v) = table.get(key.as_slice())? else {
                    return Err(missing_chunk(&self.check, &c));
                };
                emit_chunk(&mut self.check, &c, v.value(), sink)?;
                return Ok(true);
            }
            let refs: Vec<ChunkRef> = std::iter::once(c)
                .chain(self.chunks.drain(..run - 1))
                .collect();
            let end = refs.last().map_or(c.first_seq, |l| l.first_seq);
            let end = keys::chunk_key(c.generation, &self.ek, end);
            let mut rows = table.range(key.as_slice()..=end.as_slice())?;
            for c in &refs {
                let want = keys::chunk_key(c.generation, &self.ek, c.first_seq);
                // Rows of the run's key range are exactly the referenced chunks: a row between
                // them is no chunk of this entity's (as the changelog, which reads every row of
                // a generation, would find too).
                let Some(item) = rows.next() else {
                    return Err(missing_chunk(&self.check, c));
                };
                let (k, v) = item?;
                match k.value().cmp(want.as_slice()) {
                    std::cmp::Ordering::Equal => {}
                    std::cmp::Ordering::Greater => return Err(missing_chunk(&self.check, c)),
                    std::cmp::Ordering::Less => {
                        let detail = format!(
                            "a chunk row of generation {} before seq {} is not in the entity row",
                            c.generation, c.first_seq
                        );
                        return Err(self.check.corrupted(c.first_seq, detail));
                    }
                }
                if !emit_chunk(&mut self.check, c, v.value(), sink)? {
                    break;
                }
            }
            return Ok(true);
        }
        // Tail events: decode them from the cached bytes, or look them up in their log
        // segments. Every one is in this read transaction (`entity_view`); one missing from
        // it (a read-only reader whose tail another process packed away) ends the stream, which
        // stays a prefix.
        let mut batch = std::mem::take(&mut self.batch);
        batch.refs.clear();
        batch.bytes.clear();
        batch.spans.clear();
        let mut size = 0;
        batch.refs.reserve(self.tail.len().min(TAIL_BATCH_EVENTS));
        while batch.refs.len() < TAIL_BATCH_EVENTS && size < TAIL_BATCH_BYTES {
            let Some(r) = self.tail.pop_front() else {
                break;
            };
            size += r.bytes as usize;
            batch.refs.push(r);
        }
        self.shared
            .copy_cached(&self.ek, &batch.refs, &mut batch.bytes, &mut batch.spans);
        let result = self.emit_tail(&batch, sink);
        let n = match &result {
            Ok(done) => *done,
            Err(_) => batch.refs.len(),
        };
        // Events the sink stopped before go back to the front, in order.
        for r in batch.refs.drain(n..).rev() {
            self.tail.push_front(r);
        }
        self.batch = batch;
        result?;
        Ok(n > 0 || !self.tail.is_empty())
    }

    /// Hands the events of `batch` to `sink`: from the copied cache bytes, or looked up in
    /// their log segments. Returns how many were used (all, unless the sink stopped or the
    /// read snapshot ended the stream).
    fn emit_tail(
        &mut self,
        batch: &TailBatch,
        sink: &mut dyn FnMut(EventRef<'_>) -> bool,
    ) -> Result<usize> {
        for (i, (r, span)) in batch.refs.iter().zip(&batch.spans).enumerate() {
            let want = Some((r.seq, r.offset));
            let what = || format!("log offset {}", r.offset);
            let more = match span {
                Some(span) => {
                    let bytes = &batch.bytes[span.clone()];
                    self.check.emit(bytes, true, want, r.seq, &what, sink)?
                }
                None => {
                    if !self.logs.contains_key(&r.segment) {
                        let name = keys::segment_table_name(r.segment);
                        match self.rtx.open_table(keys::segment_table(&name)) {
                            Ok(t) => {
                                self.logs.insert(r.segment, t);
                            }
                            // Appended after this read began: the stream ends at the snapshot.
                            Err(redb::TableError::TableDoesNotExist(_)) => {
                                self.tail.clear();
                                self.truncated = true;
                                return Ok(batch.refs.len());
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                    let Some(table) = self.logs.get(&r.segment) else {
                        return Ok(batch.refs.len());
                    };
                    let Some(found) = log::get(table, r.segment, r.rows, r.offset)? else {
                        // Committed after this read transaction began.
                        self.tail.clear();
                        self.truncated = true;
                        return Ok(batch.refs.len());
                    };
                    self.check
                        .emit(found.bytes(), false, want, r.seq, &what, sink)?
                }
            };
            if !more {
                return Ok(i + 1);
            }
        }
        Ok(batch.refs.len())
    }

    /// The stream has nothing left: an error if it ended before the seq it must reach.
    fn end_error(&mut self) -> Option<JournalError> {
        self.done = true;
        let next = self.check.expect.unwrap_or(self.check.from);
        (!self.truncated && next <= self.end).then(|| {
            JournalError::corrupted(
                format!("{} seq {next}", self.check.pid),
                format!(
                    "events end before seq {} (missing chunk or log record)",
                    self.end
                ),
            )
        })
    }

    /// Calls `f` for every remaining event, borrowed in place: nothing is allocated per event,
    /// which makes recovery faster than iterating owned [`EventRecord`]s. Stops at the first
    /// error, of the journal (converted into `E`) or of `f`.
    ///
    /// # Errors
    /// What `f` returns; [`JournalError::Corrupted`] or [`JournalError::Io`] as for the items
    /// of the iterator.
    pub fn for_each_ref<E: From<JournalError>>(
        mut self,
        mut f: impl FnMut(EventRef<'_>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        // Records an earlier `next` decoded ahead.
        while let Some(rec) = self.buffer.pop_front() {
            if self.remaining == 0 {
                return Ok(());
            }
            self.remaining -= 1;
            f(rec.borrowed())?;
        }
        let meta = self.meta.clone();
        let mut failed = None;
        let mut panicked = None;
        loop {
            if self.done || self.remaining == 0 {
                return Ok(());
            }
            let mut left = self.remaining;
            // The journal's own work runs under `guard` (a panic inside redb on damaged bytes
            // is a typed error); a panic in `f` is the caller's and goes on unwinding.
            let filled = guard(&meta.path, || {
                self.fill_with(true, &mut |ev| {
                    left -= 1;
                    match catch_unwind(AssertUnwindSafe(|| f(ev))) {
                        // Stop at the count, before decoding one event more.
                        Ok(Ok(())) => left > 0,
                        Ok(Err(e)) => {
                            failed = Some(e);
                            false
                        }
                        Err(payload) => {
                            panicked = Some(payload);
                            false
                        }
                    }
                })
            });
            self.remaining = left;
            if let Some(payload) = panicked {
                resume_unwind(payload);
            }
            if let Some(e) = failed {
                return Err(e);
            }
            match filled {
                Ok(true) => {}
                Ok(false) => return self.end_error().map_or(Ok(()), |e| Err(e.into())),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl Iterator for EventIter {
    type Item = Result<EventRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done || self.remaining == 0 {
                return None;
            }
            if let Some(rec) = self.buffer.pop_front() {
                self.remaining -= 1;
                return Some(Ok(rec));
            }
            let meta = self.meta.clone();
            let mut buffer = std::mem::take(&mut self.buffer);
            let filled = guard(&meta.path, || {
                // One chunk at a time: what is decoded ahead stays one chunk's worth.
                self.fill_with(false, &mut |ev| {
                    buffer.push_back(ev.to_record());
                    true
                })
            });
            self.buffer = buffer;
            match filled {
                Ok(true) => continue,
                Ok(false) => return self.end_error().map(Err),
                Err(e) => {
                    // Events decoded before the error are not returned after it.
                    self.buffer.clear();
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
