//! The group-commit writer: one thread drains every queued request into one redb write
//! transaction, appends events in offset order to the current log segment, and packs sealed
//! segments into per-entity chunk rows in bounded steps inside the same transactions. Each
//! committed transaction then goes to the applier thread ([`apply`]), which puts its events in
//! the tail index and only then sends its replies, while this thread goes on to the next
//! transaction. See `FORMAT.md` for the crash argument.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableTable, Table};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error};
use uuid::Uuid;

use crate::codec;
use crate::config::{Durability, JournalBuilder};
use crate::error::{JournalError, Rejected, Result};
use crate::ids::{Offset, PersistenceId, Seq};
use crate::journal::SnapshotCriteria;
use crate::keys;
use crate::log;
use crate::meta::{ChunkRef, EntityRow, GenerationRow, SegmentInfo, State};
use crate::record::{AppendAck, Manifest, NewEvent, SnapshotRecord};
use crate::store::Store;
use crate::tail::{EntityKey, FastMap, Shared, TailRef, NOT_CACHED};
use hashbrown::hash_map::RawEntryMut;

pub(crate) mod apply;
mod pack;
pub(crate) use pack::load_generations;

type Reply<T> = oneshot::Sender<Result<T>>;

/// The encoded events of one append: most appends hold one, which then needs no allocation
/// of its own (nor a free on the writer thread).
pub(crate) type AppendEvents = smallvec::SmallVec<[codec::UnsealedEvent; 1]>;

/// The tail refs of one append's events.
type TailRefs = smallvec::SmallVec<[TailRef; 1]>;

/// A request to the writer thread.
pub(crate) enum Request {
    Append {
        /// The persistence id's entity key (the id itself is parsed back from it for a
        /// conflict, the one reply that names it).
        entity_key: EntityKey,
        expected_seq: Seq,
        events: AppendEvents,
        reply: Reply<AppendAck>,
    },
    SaveSnapshot {
        pid: PersistenceId,
        seq: Seq,
        manifest: Manifest,
        payload: Vec<u8>,
        timestamp: DateTime<Utc>,
        /// Keep only this many newest snapshots afterwards.
        keep: Option<usize>,
        reply: Reply<()>,
    },
    DeleteEventsTo {
        pid: PersistenceId,
        to_seq: Seq,
        reply: Reply<Seq>,
    },
    DeleteSnapshots {
        pid: PersistenceId,
        criteria: SnapshotCriteria,
        reply: Reply<usize>,
    },
    DeleteEntity {
        pid: PersistenceId,
        reply: Reply<()>,
    },
    Flush {
        pack: bool,
        reply: Reply<()>,
    },
    ImportFloor {
        pid: PersistenceId,
        deleted_to: Seq,
        reply: Reply<()>,
    },
}

/// Encodes the events of an append of `pid` at `expected_seq` on the calling thread, with seqs
/// `expected_seq + i` and their ids (kept for imports with their timestamps, assigned now
/// otherwise), so that the writer thread only writes offsets, timestamps (one per transaction,
/// unless preset) and checksums.
pub(crate) fn encode_append(
    pid: &PersistenceId,
    expected_seq: Seq,
    events: Vec<NewEvent>,
) -> AppendEvents {
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let (event_id, preset_micros) = match e.preset {
                Some((id, ts)) => (id, Some(ts.timestamp_micros())),
                None => (Uuid::now_v7(), None),
            };
            codec::encode_event_unsealed(
                pid,
                expected_seq.0.saturating_add(i as u64),
                &event_id,
                preset_micros,
                &e.manifest,
                &e.payload,
            )
        })
        .collect()
}

impl Request {
    fn weight(&self) -> usize {
        match self {
            Request::Append { events, .. } => events.len(),
            _ => 1,
        }
    }
}

/// A reply computed inside a transaction, sent once the transaction's fate is known.
enum Done {
    Ack(Reply<AppendAck>, Result<AppendAck>),
    Unit(Reply<()>, Result<()>),
    Seq(Reply<Seq>, Result<Seq>),
    Count(Reply<usize>, Result<usize>),
}

impl Done {
    fn send(self) {
        // A caller that stopped waiting is not an error of the journal.
        match self {
            Done::Ack(r, v) => drop(r.send(v)),
            Done::Unit(r, v) => drop(r.send(v)),
            Done::Seq(r, v) => drop(r.send(v)),
            Done::Count(r, v) => drop(r.send(v)),
        }
    }

    /// The transaction failed: writes are of unknown outcome, refusals stay refusals.
    fn fail(self, msg: &str) {
        let io = || JournalError::Io(msg.to_string());
        match self {
            Done::Ack(r, Ok(_)) => drop(r.send(Err(io()))),
            Done::Unit(r, Ok(_)) => drop(r.send(Err(io()))),
            Done::Seq(r, Ok(_)) => drop(r.send(Err(io()))),
            Done::Count(r, Ok(_)) => drop(r.send(Err(io()))),
            other => other.send(),
        }
    }
}

/// The reply `err` to `req`, as a [`Done`] (a refusal: it stays one whatever happens).
fn refusal(req: Request, err: JournalError) -> Done {
    match req {
        Request::Append { reply, .. } => Done::Ack(reply, Err(err)),
        Request::SaveSnapshot { reply, .. }
        | Request::DeleteEntity { reply, .. }
        | Request::Flush { reply, .. }
        | Request::ImportFloor { reply, .. } => Done::Unit(reply, Err(err)),
        Request::DeleteEventsTo { reply, .. } => Done::Seq(reply, Err(err)),
        Request::DeleteSnapshots { reply, .. } => Done::Count(reply, Err(err)),
    }
}

fn encode_row(ek: &[u8], row: &EntityRow) -> Result<Vec<u8>> {
    codec::encode_keyed(ek, row).map_err(|e| JournalError::Io(e.to_string()))
}

/// The entity's stored row (a default one if it has none).
fn load_row(ek: &[u8], entities: &Table<&[u8], &[u8]>) -> Result<EntityRow> {
    match entities.get(ek)? {
        Some(v) => decode_row(ek, v.value()),
        None => Ok(EntityRow::default()),
    }
}

pub(crate) fn decode_row(ek: &[u8], bytes: &[u8]) -> Result<EntityRow> {
    codec::decode_keyed::<EntityRow>(ek, bytes)
        .and_then(|row| row.check_seqs().map(|()| row))
        .map_err(|e| {
            JournalError::corrupted(format!("entities/{}", String::from_utf8_lossy(ek)), e)
        })
}

/// What a committed transaction changes in memory.
#[derive(Default)]
struct Effects {
    /// Timestamp of the events this transaction appends (µs since the epoch, UTC; a clock
    /// before 1970 counts as the epoch).
    now_micros: i64,
    tail: Vec<(EntityKey, TailRefs)>,
    /// Stored bytes of the events appended, for the shared event cache.
    appended_bytes: Vec<(u64, Vec<u8>)>,
    /// A segment whose last entity was packed.
    packed_segment: Option<u64>,
    appended: usize,
    packed: usize,
}

/// The writer thread's state.
pub(crate) struct Writer {
    db: Arc<Store<Database>>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    state: State,
    highest: FastMap<EntityKey, u64>,
    plan: Option<BTreeMap<Vec<u8>, Vec<TailRef>>>,
    /// Generation → first offset (the key of its generation row).
    gen_index: BTreeMap<u64, u64>,
    /// Entities still to merge in the merge under way (rebuilt from chunk keys on open).
    merge_plan: Option<std::collections::BTreeSet<Vec<u8>>>,
    /// Number of generations when a merge was last looked for.
    merge_checked: usize,
    merge_enabled: bool,
    pack_waiters: Vec<Reply<()>>,
    durability: Durability,
    segment_events: u64,
    pack_step_events: usize,
    max_chunk_bytes: usize,
    /// The leaf packing appends chunk rows to, when it cuts them where the leaf is full
    /// (`fill_chunk_leaves`; see [`pack::LeafFill`]).
    pack_fill: Option<pack::LeafFill>,
    max_batch_events: usize,
    key_groups: u32,
    path: PathBuf,
    /// Applies committed transactions to the tail and sends their replies.
    applier: apply::Applier,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        db: Arc<Store<Database>>,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Request>,
        state: State,
        highest: FastMap<EntityKey, u64>,
        gen_index: BTreeMap<u64, u64>,
        cfg: &JournalBuilder,
        path: PathBuf,
    ) -> Result<Self> {
        let key_groups = shared.key_groups;
        #[cfg(test)]
        let gate = cfg.applier_gate.clone();
        #[cfg(not(test))]
        let gate = ();
        let applier = apply::Applier::start(shared.clone(), gate)?;
        Ok(Self {
            db,
            shared,
            rx,
            state,
            highest,
            plan: None,
            gen_index,
            merge_plan: None,
            merge_checked: 0,
            merge_enabled: cfg.merge_generations,
            pack_waiters: Vec::new(),
            durability: cfg.durability,
            segment_events: cfg.segment_events,
            pack_step_events: cfg.pack_step_events,
            max_chunk_bytes: cfg.max_chunk_bytes,
            pack_fill: cfg.fill_chunk_leaves.then(pack::LeafFill::default),
            max_batch_events: cfg.max_batch_events,
            key_groups,
            path,
            applier,
        })
    }

    fn pack_pending(&self) -> bool {
        self.state.segments.len() >= 2
    }

    /// The writer loop: runs until every `Journal` handle is dropped.
    pub(crate) fn run(mut self) {
        loop {
            let mut batch = Vec::new();
            let mut weight = 0;
            // Read once: a failing applier can poison the journal at any moment, and a
            // writer about to block must not keep `flush(pack: true)` callers waiting (no
            // request reaches a poisoned writer to wake it).
            let poisoned = self.shared.is_poisoned();
            if poisoned && !self.pack_waiters.is_empty() {
                let waiters = std::mem::take(&mut self.pack_waiters);
                self.applier.refused(Vec::new(), waiters);
            }
            if (self.pack_pending() || self.merge_pending()) && !poisoned {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match self.rx.blocking_recv() {
                    Some(r) => batch.push(r),
                    None => break,
                }
            }
            weight += batch.iter().map(Request::weight).sum::<usize>();
            while weight < self.max_batch_events {
                match self.rx.try_recv() {
                    Ok(r) => {
                        weight += r.weight();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
            if self.shared.is_poisoned() {
                // Through the applier, so that they come after the replies of earlier commits.
                let done = batch
                    .into_iter()
                    .map(|r| refusal(r, JournalError::Poisoned))
                    .collect();
                let waiters = std::mem::take(&mut self.pack_waiters);
                self.applier.refused(done, waiters);
                continue;
            }
            self.commit(batch);
        }
        debug!(path = %self.path.display(), "journal writer stopped");
    }

    fn commit(&mut self, batch: Vec<Request>) {
        let started = Instant::now();
        let requests = batch.len();
        let mut done = Vec::with_capacity(batch.len());
        let state_before = self.state.clone();
        // A panic inside redb (damaged bytes it trusted) is an I/O failure of this batch, not
        // the death of the writer thread.
        let result = match catch_unwind(AssertUnwindSafe(|| self.transact(batch, &mut done))) {
            Ok(r) => r,
            Err(_) => Err(JournalError::corrupted(
                self.path.display().to_string(),
                "storage engine failed while writing (damaged file?)",
            )),
        };
        match result {
            Ok(fx) => {
                let committed = (fx.appended > 0).then(|| self.state.next_offset.saturating_sub(1));
                let waiters = if !self.pack_pending() && !self.merge_pending() {
                    std::mem::take(&mut self.pack_waiters)
                } else {
                    Vec::new()
                };
                debug!(
                    requests,
                    events = fx.appended,
                    packed = fx.packed,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "group commit"
                );
                // The tail and the replies are the applier's, while this thread goes on.
                self.applier
                    .committed(fx.packed_segment, committed, done, waiters);
            }
            Err(e) => {
                // G8: the outcome is unknown; refuse everything until the journal is reopened.
                self.shared.poisoned.store(true, Ordering::SeqCst);
                self.state = state_before;
                let msg = e.to_string();
                error!(error = %msg, path = %self.path.display(), "journal write failed; poisoned");
                let waiters = std::mem::take(&mut self.pack_waiters);
                self.applier
                    .failed(self.state.next_offset, msg, done, waiters);
            }
        }
    }

    fn transact(&mut self, batch: Vec<Request>, done: &mut Vec<Done>) -> Result<Effects> {
        let mut txn = self.db.begin_write()?;
        if self.durability == Durability::None {
            txn.set_durability(redb::Durability::None)?;
        }
        let (appends, events) = batch
            .iter()
            .filter(|r| matches!(r, Request::Append { .. }))
            .fold((0, 0), |(a, e), r| (a + 1, e + r.weight()));
        let mut fx = Effects {
            now_micros: Utc::now().timestamp_micros().max(0),
            tail: Vec::with_capacity(appends),
            ..Effects::default()
        };
        let needs_segment = appends > 0;
        if needs_segment {
            self.rotate_if_full();
        }
        {
            let mut entities = txn.open_table(keys::ENTITIES)?;
            let mut snapshots = txn.open_table(keys::SNAPSHOTS)?;
            let mut chunks = txn.open_table(keys::CHUNKS)?;
            let mut inserts: Vec<(u64, Vec<u8>)> = Vec::with_capacity(events);
            let segment = self.state.segments.last().map(|s| s.number);
            for req in batch {
                match req {
                    Request::Append {
                        entity_key,
                        expected_seq,
                        events,
                        reply,
                    } => {
                        let r = self.append(
                            entity_key,
                            expected_seq,
                            events,
                            segment,
                            &entities,
                            &mut inserts,
                            &mut fx,
                        )?;
                        done.push(Done::Ack(reply, r));
                    }
                    Request::SaveSnapshot {
                        pid,
                        seq,
                        manifest,
                        payload,
                        timestamp,
                        keep,
                        reply,
                    } => {
                        let pid_for_keep = keep.map(|_| pid.clone());
                        let rec = SnapshotRecord {
                            persistence_id: pid,
                            seq,
                            timestamp,
                            manifest,
                            payload,
                        };
                        let r = self.save_snapshot(rec, &mut entities, &mut snapshots)?;
                        if let (Ok(()), Some(k), Some(pid)) = (&r, keep, pid_for_keep) {
                            let criteria = SnapshotCriteria::keep_newest(k);
                            self.delete_snapshots(&pid, criteria, &mut entities, &mut snapshots)?;
                        }
                        done.push(Done::Unit(reply, r));
                    }
                    Request::DeleteEventsTo { pid, to_seq, reply } => {
                        let r =
                            self.delete_events_to(&txn, &pid, to_seq, &mut entities, &mut chunks)?;
                        done.push(Done::Seq(reply, Ok(r)));
                    }
                    Request::DeleteSnapshots {
                        pid,
                        criteria,
                        reply,
                    } => {
                        let r =
                            self.delete_snapshots(&pid, criteria, &mut entities, &mut snapshots)?;
                        done.push(Done::Count(reply, Ok(r)));
                    }
                    Request::DeleteEntity { pid, reply } => {
                        self.delete_entity(&txn, &pid, &mut entities, &mut chunks, &mut snapshots)?;
                        done.push(Done::Unit(reply, Ok(())));
                    }
                    Request::ImportFloor {
                        pid,
                        deleted_to,
                        reply,
                    } => {
                        let r = self.import_floor(&pid, deleted_to, &mut entities)?;
                        done.push(Done::Unit(reply, r));
                    }
                    Request::Flush { pack, reply } => {
                        if pack && (self.pack_pending() || self.merge_pending()) {
                            self.pack_waiters.push(reply);
                        } else {
                            done.push(Done::Unit(reply, Ok(())));
                        }
                    }
                }
            }
            if !inserts.is_empty() {
                let seg = self.state.segments.last_mut().ok_or_else(|| {
                    JournalError::Io("internal: no open segment for an append".into())
                })?;
                seg.events += inserts.len() as u64;
                let name = keys::segment_table_name(seg.number);
                let mut log = txn.open_table(keys::segment_table(&name))?;
                let mut cursor = log.upper_bound_mut(Bound::<u64>::Unbounded)?;
                // Appends only go to segments of log rows (`rotate_if_full`).
                for (first, row) in log::build_rows(&inserts) {
                    cursor.insert_before(first, row.as_slice())?;
                }
                cursor.close()?;
                // Cached once committed (`apply`).
                fx.appended_bytes = inserts;
            }
            // Packing a little more than was appended keeps up with any rate while spreading
            // the work thinly over commits (short pauses).
            let budget = self.pack_step_events.max(fx.appended + fx.appended / 4 + 1);
            self.pack_step(&txn, &mut entities, &mut chunks, budget, &mut fx)?;
            if !self.pack_pending() {
                self.merge_step(&txn, &mut entities, &mut chunks, budget)?;
            }
            let mut meta = txn.open_table(keys::META)?;
            let state =
                codec::encode_meta(&self.state).map_err(|e| JournalError::Io(e.to_string()))?;
            meta.insert(keys::META_STATE, state.as_slice())?;
        }
        // The applier puts the events in the tail while redb writes and syncs; they become
        // visible when it publishes the committed offset after the commit (`commit`).
        self.applier.prepared(
            std::mem::take(&mut fx.tail),
            std::mem::take(&mut fx.appended_bytes),
        );
        txn.commit()?;
        Ok(fx)
    }

    fn rotate_if_full(&mut self) {
        // A format-1 segment (one row per event) left by an older build takes no more appends.
        let full = match self.state.segments.last() {
            None => true,
            Some(s) => s.events >= self.segment_events || !s.rows,
        };
        if full {
            let number = self.state.next_segment;
            self.state.next_segment += 1;
            self.state.segments.push(SegmentInfo {
                number,
                first_offset: self.state.next_offset,
                events: 0,
                rows: true,
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn append(
        &mut self,
        ek: EntityKey,
        expected_seq: Seq,
        events: AppendEvents,
        segment: Option<u64>,
        entities: &Table<&[u8], &[u8]>,
        inserts: &mut Vec<(u64, Vec<u8>)>,
        fx: &mut Effects,
    ) -> Result<Result<AppendAck>> {
        // One lookup: the slot is read here and advanced below.
        let highest = match self.highest.raw_entry_mut().from_key(ek.as_slice()) {
            RawEntryMut::Occupied(o) => o.into_mut(),
            RawEntryMut::Vacant(v) => {
                let h = load_row(&ek, entities)?.highest_seq;
                v.insert(ek.clone(), h).1
            }
        };
        let current = *highest;
        if expected_seq.0 != current + 1 {
            return Ok(Err(JournalError::Conflict {
                pid: keys::parse_entity_key(&ek)?.1,
                expected: expected_seq,
                actual: Seq(current),
            }));
        }
        let n = events.len() as u64;
        // `Journal::append` refuses this before it reaches the writer; checked here too
        // because an acknowledged seq past `Seq::MAX` could never be read back.
        // No overflow: `current` ≤ `Seq::MAX` (rows and records above it do not decode).
        if current + n > Seq::MAX.0 {
            return Ok(Err(Rejected::SeqOutOfRange {
                seq: Seq(current + n),
            }
            .into()));
        }
        let segment =
            segment.ok_or_else(|| JournalError::Io("internal: no open segment".into()))?;
        let first_offset = self.state.next_offset;
        let mut refs = TailRefs::with_capacity(events.len());
        // The events were encoded with seqs `expected_seq..`, which is `current + 1..`.
        for (i, e) in events.into_iter().enumerate() {
            let offset = first_offset + i as u64;
            let (bytes, timestamp_micros) = e.seal(offset, fx.now_micros);
            refs.push(TailRef {
                seq: current + 1 + i as u64,
                offset,
                segment,
                timestamp_micros,
                bytes: bytes.len() as u32,
                cached: NOT_CACHED,
                rows: true,
            });
            inserts.push((offset, bytes));
        }
        self.state.next_offset += n;
        *highest = current + n;
        fx.tail.push((ek, refs));
        fx.appended += n as usize;
        Ok(Ok(AppendAck {
            first_seq: Seq(current + 1),
            last_seq: Seq(current + n),
            first_offset: Offset(first_offset),
            last_offset: Offset(first_offset + n - 1),
        }))
    }

    /// The entity's row and its highest seq, reading the row once (the seq cache is filled from
    /// it on a miss, as `append` does).
    fn row_and_highest(
        &mut self,
        ek: &[u8],
        entities: &Table<&[u8], &[u8]>,
    ) -> Result<(EntityRow, u64)> {
        let row = load_row(ek, entities)?;
        let highest = match self.highest.get(ek) {
            Some(h) => *h,
            None => {
                self.highest
                    .insert(EntityKey::from_slice(ek), row.highest_seq);
                row.highest_seq
            }
        };
        Ok((row, highest))
    }

    fn save_snapshot(
        &mut self,
        rec: SnapshotRecord,
        entities: &mut Table<&[u8], &[u8]>,
        snapshots: &mut Table<&[u8], &[u8]>,
    ) -> Result<Result<()>> {
        let ek = keys::entity_key(&rec.persistence_id, self.key_groups);
        let (mut row, highest) = self.row_and_highest(&ek, entities)?;
        if rec.seq.0 > highest {
            return Ok(Err(Rejected::SnapshotAhead {
                seq: rec.seq,
                highest: Seq(highest),
            }
            .into()));
        }
        let bytes = match codec::encode_snapshot(&rec) {
            Ok(b) => b,
            Err(e) => return Ok(Err(Rejected::InvalidManifest(e.to_string()).into())),
        };
        row.highest_seq = row.highest_seq.max(highest);
        let existed = snapshots
            .insert(
                keys::snapshot_key(&ek, rec.seq).as_slice(),
                bytes.as_slice(),
            )?
            .is_some();
        if !existed {
            row.snapshots += 1;
        }
        row.snapshot_seq = row.snapshot_seq.max(rec.seq.0);
        entities.insert(ek.as_slice(), encode_row(&ek, &row)?.as_slice())?;
        Ok(Ok(()))
    }

    fn delete_events_to(
        &mut self,
        txn: &redb::WriteTransaction,
        pid: &PersistenceId,
        to_seq: Seq,
        entities: &mut Table<&[u8], &[u8]>,
        chunks: &mut Table<&[u8], &[u8]>,
    ) -> Result<Seq> {
        let ek = keys::entity_key(pid, self.key_groups);
        let (mut row, highest) = self.row_and_highest(&ek, entities)?;
        row.highest_seq = row.highest_seq.max(highest);
        let to = to_seq.0.min(highest);
        if to > row.deleted_to {
            row.deleted_to = to;
            for c in row.chunks.iter().filter(|c| c.last_seq <= to) {
                self.remove_chunk(txn, chunks, &ek, c)?;
            }
            row.chunks.retain(|c| c.last_seq > to);
            entities.insert(ek.as_slice(), encode_row(&ek, &row)?.as_slice())?;
        }
        Ok(Seq(row.deleted_to))
    }

    /// A fresh persistence id whose first `deleted_to` events were deleted before export.
    fn import_floor(
        &mut self,
        pid: &PersistenceId,
        deleted_to: Seq,
        entities: &mut Table<&[u8], &[u8]>,
    ) -> Result<Result<()>> {
        if deleted_to > Seq::MAX {
            // Refused by `Journal::import_floor_blocking` already; the writer's seqs stay in
            // range whatever reaches it.
            return Ok(Err(Rejected::SeqOutOfRange { seq: deleted_to }.into()));
        }
        let ek = keys::entity_key(pid, self.key_groups);
        let (mut row, highest) = self.row_and_highest(&ek, entities)?;
        if highest != 0 {
            return Ok(Err(JournalError::Conflict {
                pid: pid.clone(),
                expected: Seq(1),
                actual: Seq(highest),
            }));
        }
        row.highest_seq = deleted_to.0;
        row.deleted_to = deleted_to.0;
        entities.insert(ek.as_slice(), encode_row(&ek, &row)?.as_slice())?;
        self.highest
            .insert(EntityKey::from_slice(&ek), deleted_to.0);
        Ok(Ok(()))
    }

    /// Removes one chunk row and lowers its generation's event count.
    fn remove_chunk(
        &mut self,
        txn: &redb::WriteTransaction,
        chunks: &mut Table<&[u8], &[u8]>,
        ek: &[u8],
        c: &ChunkRef,
    ) -> Result<()> {
        chunks.remove(keys::chunk_key(c.generation, ek, c.first_seq).as_slice())?;
        let n = u64::from(c.events);
        if self
            .state
            .segments
            .first()
            .is_some_and(|s| s.number == c.generation)
        {
            // Still being packed: its row does not exist yet.
            self.state.pack_events = self.state.pack_events.saturating_sub(n);
            return Ok(());
        }
        if let Some(m) = self.state.merge.as_mut() {
            if m.target == c.generation {
                // The merge target's row is written when the merge completes.
                m.events = m.events.saturating_sub(n);
                return Ok(());
            }
        }
        let Some(first) = self.gen_index.get(&c.generation).copied() else {
            return Err(JournalError::corrupted(
                format!("generation {}", c.generation),
                "chunk of an unknown generation",
            ));
        };
        let mut gens = txn.open_table(keys::GENERATIONS)?;
        let row = match gens.get(first)? {
            Some(v) => codec::decode_meta::<GenerationRow>(v.value())
                .map_err(|e| JournalError::corrupted(format!("generations/{first}"), e))?,
            None => {
                return Err(JournalError::corrupted(
                    format!("generations/{first}"),
                    "missing",
                ))
            }
        };
        let row = GenerationRow {
            events: row.events.saturating_sub(n),
            ..row
        };
        let bytes = codec::encode_meta(&row).map_err(|e| JournalError::Io(e.to_string()))?;
        gens.insert(first, bytes.as_slice())?;
        Ok(())
    }

    fn snapshot_seqs(&self, ek: &[u8], snapshots: &Table<&[u8], &[u8]>) -> Result<Vec<Seq>> {
        let lo = keys::snapshot_key(ek, Seq(0));
        let hi = keys::snapshot_key(ek, Seq(u64::MAX));
        let mut seqs = Vec::new();
        for item in snapshots.range(lo.as_slice()..=hi.as_slice())? {
            let (k, _) = item?;
            seqs.push(keys::snapshot_key_seq(k.value())?);
        }
        Ok(seqs)
    }

    fn delete_snapshots(
        &mut self,
        pid: &PersistenceId,
        criteria: SnapshotCriteria,
        entities: &mut Table<&[u8], &[u8]>,
        snapshots: &mut Table<&[u8], &[u8]>,
    ) -> Result<usize> {
        let ek = keys::entity_key(pid, self.key_groups);
        let seqs = self.snapshot_seqs(&ek, snapshots)?;
        let protected = seqs.len().saturating_sub(criteria.keep_newest);
        let mut deleted = 0;
        let mut remaining = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if i < protected && *s >= criteria.min_seq && *s <= criteria.max_seq {
                snapshots.remove(keys::snapshot_key(&ek, *s).as_slice())?;
                deleted += 1;
            } else {
                remaining.push(*s);
            }
        }
        if deleted > 0 {
            let mut row = load_row(&ek, entities)?;
            row.snapshots = remaining.len() as u32;
            row.snapshot_seq = remaining.last().map_or(0, |s| s.0);
            entities.insert(ek.as_slice(), encode_row(&ek, &row)?.as_slice())?;
        }
        Ok(deleted)
    }

    fn delete_entity(
        &mut self,
        txn: &redb::WriteTransaction,
        pid: &PersistenceId,
        entities: &mut Table<&[u8], &[u8]>,
        chunks: &mut Table<&[u8], &[u8]>,
        snapshots: &mut Table<&[u8], &[u8]>,
    ) -> Result<()> {
        let ek = keys::entity_key(pid, self.key_groups);
        let (mut row, highest) = self.row_and_highest(&ek, entities)?;
        for c in &row.chunks {
            self.remove_chunk(txn, chunks, &ek, c)?;
        }
        for s in self.snapshot_seqs(&ek, snapshots)? {
            snapshots.remove(keys::snapshot_key(&ek, s).as_slice())?;
        }
        row.highest_seq = row.highest_seq.max(highest);
        row.deleted_to = row.highest_seq;
        row.chunks.clear();
        row.snapshots = 0;
        row.snapshot_seq = 0;
        entities.insert(ek.as_slice(), encode_row(&ek, &row)?.as_slice())?;
        Ok(())
    }
}
