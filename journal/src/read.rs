//! [`JournalReader`]: reads of one persistence id (streamed), snapshots, the list of persistence
//! ids, and the global changelog. Reads run in redb read transactions and never block the
//! writer; a read-only handle can inspect a journal another process is writing.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase};
use tokio::sync::watch;

use crate::codec;
use crate::error::{JournalError, Result};
use crate::ids::{KeyGroup, Offset, PersistenceId, Seq};
use crate::journal::{guard, open_error, probe_file, read_header, FileKind};
use crate::keys;
use crate::log;
use crate::meta::{ChunkRef, EntityRow, GenerationRow, Header, State};
use crate::record::{EventRecord, EventRef, Manifest, SnapshotRecord};
use crate::scan::{catch_up, rebuild_tail};
use crate::store::Store;
use crate::tail::{Shared, TailRef};
use crate::writer::decode_row;

/// The redb handle behind a reader.
#[derive(Clone)]
pub(crate) enum Db {
    Write(Arc<Store<redb::Database>>),
    ReadOnly(Arc<Store<redb::ReadOnlyDatabase>>),
}

impl Db {
    fn begin_read(&self) -> Result<ReadTransaction> {
        Ok(match self {
            Db::Write(d) => d.begin_read()?,
            Db::ReadOnly(d) => d.begin_read()?,
        })
    }
}

/// Facts about a journal, from its header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalInfo {
    /// On-disk format version.
    pub format_version: u32,
    /// Unique id of this journal, assigned at creation.
    pub journal_id: uuid::Uuid,
    /// When the journal was created.
    pub created_at: DateTime<Utc>,
    /// Number of key groups.
    pub key_groups: u32,
    /// Name of the key-group hash.
    pub hash: String,
}

/// What the journal holds for one persistence id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntitySummary {
    /// The persistence id.
    pub persistence_id: PersistenceId,
    /// Its key group.
    pub key_group: KeyGroup,
    /// Highest seq ever appended (never decreases).
    pub highest_seq: Seq,
    /// Events with seq at or below this are deleted.
    pub deleted_to: Seq,
    /// Stored events (`highest_seq - deleted_to`).
    pub events: u64,
    /// Bytes of the stored events (envelopes included).
    pub bytes: u64,
    /// Seq of the newest snapshot, if any.
    pub snapshot_seq: Option<Seq>,
    /// Number of stored snapshots.
    pub snapshots: u32,
    /// Time of the newest stored event, if known.
    pub last_write: Option<DateTime<Utc>>,
}

/// Read access to a journal. Obtained from [`crate::Journal`] (which dereferences to it) or
/// opened read-only with [`JournalReader::open_read_only`]. Cheap to clone.
#[derive(Clone)]
pub struct JournalReader {
    db: Db,
    shared: Arc<Shared>,
    meta: Arc<ReaderMeta>,
}

/// What never changes for an open journal; shared by every clone of a reader.
struct ReaderMeta {
    header: Header,
    path: PathBuf,
}

impl std::fmt::Debug for JournalReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalReader")
            .field("path", &self.meta.path)
            .finish()
    }
}

impl JournalReader {
    pub(crate) fn new(db: Db, shared: Arc<Shared>, header: Header, path: PathBuf) -> Self {
        Self {
            db,
            shared,
            meta: Arc::new(ReaderMeta { header, path }),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Opens a journal for reading only, without taking the writer's lock: a journal that a
    /// running application has open (with the default durability) can be inspected. Reads
    /// follow the writer's later commits: each read transaction first brings this reader's
    /// tail index up to the commit it sees (the log written since, read from the file; packed
    /// segments dropped), so every read is of one commit, whichever process made it.
    ///
    /// # Errors
    /// [`JournalError::NotAJournal`] for a missing, empty or foreign file;
    /// [`JournalError::UnsupportedFormat`]; [`JournalError::Locked`] if a writer holds it
    /// exclusively; [`JournalError::Corrupted`]; [`JournalError::Io`] (also when the file needs
    /// the recovery that only a writable open performs).
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<JournalReader> {
        let path = path.as_ref();
        match probe_file(path)? {
            FileKind::Redb => {}
            FileKind::Missing => {
                return Err(JournalError::NotAJournal {
                    path: path.to_path_buf(),
                    detail: "no such file".into(),
                })
            }
            FileKind::Empty => {
                return Err(JournalError::NotAJournal {
                    path: path.to_path_buf(),
                    detail: "empty file".into(),
                })
            }
        }
        guard(path, || {
            let mut b = redb::Builder::new();
            b.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
            b.set_cache_size(64 << 20);
            let db = b.open_read_only(path).map_err(|e| open_error(path, e))?;
            let db = Db::ReadOnly(Arc::new(Store::new(db)));
            let rtx = db.begin_read()?;
            let meta = match rtx.open_table(keys::META) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => {
                    return Err(JournalError::NotAJournal {
                        path: path.to_path_buf(),
                        detail: "a redb file without stateline metadata".into(),
                    })
                }
                Err(e) => return Err(e.into()),
            };
            let header = read_header(&meta, path)?;
            drop(meta);
            drop(rtx);
            let (tail, _, committed) = match &db {
                // Readers without a writer read the tail from the log (no event cache).
                Db::ReadOnly(d) => rebuild_tail(&***d, header.key_groups, 0)?,
                Db::Write(d) => rebuild_tail(&***d, header.key_groups, 0)?,
            };
            let shared = Arc::new(Shared::new(tail, committed, header.key_groups));
            Ok(JournalReader::new(db, shared, header, path.to_path_buf()))
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.meta.path
    }

    /// Number of key groups of this journal.
    pub fn key_groups(&self) -> u32 {
        self.meta.header.key_groups
    }

    /// The key group of a persistence id in this journal.
    pub fn key_group_of(&self, pid: &PersistenceId) -> KeyGroup {
        pid.key_group(self.meta.header.key_groups)
    }

    /// Header facts: format version, id, creation time, key groups, hash.
    pub fn info(&self) -> JournalInfo {
        JournalInfo {
            format_version: self.meta.header.format_version,
            journal_id: uuid::Uuid::from_bytes(self.meta.header.journal_id),
            created_at: DateTime::<Utc>::from_timestamp_micros(self.meta.header.created_at_micros)
                .unwrap_or_default(),
            key_groups: self.meta.header.key_groups,
            hash: self.meta.header.hash.clone(),
        }
    }

    /// Highest committed offset (0 if nothing was ever appended) as known to this handle.
    pub fn committed_offset(&self) -> Offset {
        Offset(*self.shared.committed.borrow())
    }

    /// A receiver that changes whenever appends commit (the highest committed offset): the
    /// live tail of the changelog. Only a writable [`crate::Journal`] publishes commits as they
    /// happen; a read-only handle's changes when one of its reads (or
    /// [`Self::wait_for_offset`]) finds new commits.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    /// Waits until an event with offset ≥ `offset` is committed, or the journal closes. A
    /// read-only handle has no writer to tell it: it looks every 20 ms, and returns
    /// early if a look fails (the next read reports why).
    pub async fn wait_for_offset(&self, offset: Offset) {
        if let Db::ReadOnly(_) = self.db {
            while *self.shared.committed.borrow() < offset.0 {
                if self.read_txn().is_err() {
                    return;
                }
                if *self.shared.committed.borrow() >= offset.0 {
                    return;
                }
                tokio::time::sleep(FOLLOW_POLL).await;
            }
            return;
        }
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|c| *c >= offset.0).await;
    }

    pub(crate) fn read_txn(&self) -> Result<ReadTransaction> {
        Ok(self.txn_and_end()?.0)
    }

    /// A read transaction and the last offset whose tail ref a view in it may use. With the
    /// writer in this process, that is the committed offset read before the transaction began
    /// (the writer publishes it only after the commit's events are in the tail). Without it,
    /// the tail first catches up with what the transaction sees, so a reader opened on a live
    /// journal follows its later commits.
    fn txn_and_end(&self) -> Result<(ReadTransaction, u64)> {
        match &self.db {
            Db::Write(d) => {
                let committed = *self.shared.committed.borrow();
                Ok((d.begin_read()?, committed))
            }
            Db::ReadOnly(d) => {
                let rtx = d.begin_read()?;
                let end = catch_up(&self.shared, &rtx, self.meta.header.key_groups)?;
                Ok((rtx, end))
            }
        }
    }

    fn row(&self, rtx: &ReadTransaction, ek: &[u8]) -> Result<Option<EntityRow>> {
        let t = rtx.open_table(keys::ENTITIES)?;
        match t.get(ek)? {
            Some(v) => Ok(Some(decode_row(ek, v.value())?)),
            None => Ok(None),
        }
    }

    /// A consistent view of one entity: its row in a read transaction plus its tail refs,
    /// retried if a pack completed in between (so no event falls between the two). Only refs
    /// committed before the transaction began are kept (the committed offset is read first and
    /// is published before any append is acknowledged), so every event of the view is in the
    /// transaction and a stream never ends short of the view's highest seq because a pack
    /// dropped bytes the view counted on.
    ///
    /// A transaction can also see a commit whose events are not in the tail yet (the writer
    /// updates memory right after committing): when the row's highest seq (which a snapshot
    /// or delete in the same commit raises) is beyond everything the view holds, the view is
    /// taken again after a moment, so that the stream does not end short of it. After
    /// [`VIEW_ATTEMPTS`] (or at once for a reader without the writer) the view stands as it
    /// is, and a stream that ends short reports it.
    fn entity_view(&self, ek: &[u8]) -> Result<(ReadTransaction, EntityRow, Vec<TailRef>)> {
        let mut attempt = 1;
        loop {
            let (rtx, row, mut tail, end) = self.entity_view_with(ek, Shared::tail_of)?;
            tail.retain(|r| r.offset <= end);
            let held = tail
                .last()
                .map(|r| r.seq)
                .into_iter()
                .chain(row.chunks.last().map(|c| c.last_seq))
                .fold(row.deleted_to, u64::max);
            // A reader in another process has no writer to catch up with.
            let live = matches!(self.db, Db::Write(_));
            if row.highest_seq <= held || !live || attempt >= VIEW_ATTEMPTS {
                return Ok((rtx, row, tail));
            }
            drop(rtx);
            attempt += 1;
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// [`Self::entity_view`] with what `tail` takes from the tail index.
    fn entity_view_with<T>(
        &self,
        ek: &[u8],
        tail: impl Fn(&Shared, &[u8]) -> T,
    ) -> Result<(ReadTransaction, EntityRow, T, u64)> {
        loop {
            let v1 = self.shared.pack_version.load(Ordering::SeqCst);
            let (rtx, end) = self.txn_and_end()?;
            let row = self.row(&rtx, ek)?.unwrap_or_default();
            let tail = tail(&self.shared, ek);
            if self.shared.pack_version.load(Ordering::SeqCst) == v1 {
                return Ok((rtx, row, tail, end));
            }
        }
    }

    /// Highest seq ever appended to `pid` (0 if none). Never decreases, also after deletes.
    ///
    /// # Errors
    /// [`JournalError::Corrupted`] or [`JournalError::Io`].
    pub fn highest_seq(&self, pid: &PersistenceId) -> Result<Seq> {
        let ek = keys::entity_key(pid, self.meta.header.key_groups);
        guard(&self.meta.path, || {
            let (_rtx, row, tail, _) = self.entity_view_with(&ek, Shared::tail_highest)?;
            Ok(Seq(tail.unwrap_or(0).max(row.highest_seq)))
        })
    }

    /// Streams the events of `pid` with `from <= seq <= to`, at most `max` of them, in seq
    /// order, chunk by chunk (never the whole history in memory). Deleted events are skipped.
    ///
    /// # Errors
    /// Opening the stream fails with [`JournalError::Io`]; each item may be
    /// [`JournalError::Corrupted`] (naming the location), after which the stream ends.
    pub fn events(&self, pid: &PersistenceId, from: Seq, to: Seq, max: u64) -> Result<EventIter> {
        let ek = keys::entity_key(pid, self.meta.header.key_groups);
        guard(&self.meta.path, || {
            let (rtx, row, tail) = self.entity_view(&ek)?;
            self.event_iter(rtx, &row, tail, pid, ek.clone(), from, to, max)
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn event_iter(
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

    /// Everything the recovery of `pid` needs, read in one transaction (one consistent view,
    /// one transaction to open): its highest seq, its snapshot seqs, and then its snapshots and
    /// events.
    ///
    /// # Errors
    /// [`JournalError::Corrupted`] or [`JournalError::Io`].
    pub fn recovery_view(&self, pid: &PersistenceId) -> Result<RecoveryView> {
        let ek = keys::entity_key(pid, self.meta.header.key_groups);
        guard(&self.meta.path, || {
            let (rtx, row, tail) = self.entity_view(&ek)?;
            let highest = Seq(tail.last().map_or(0, |r| r.seq).max(row.highest_seq));
            let mut snapshot_seqs = Vec::new();
            if row.snapshots > 0 {
                let t = rtx.open_table(keys::SNAPSHOTS)?;
                let lo = keys::snapshot_key(&ek, Seq(0));
                let hi = keys::snapshot_key(&ek, Seq(u64::MAX));
                for item in t.range(lo.as_slice()..=hi.as_slice())? {
                    let (k, _) = item?;
                    snapshot_seqs.push(keys::snapshot_key_seq(k.value())?);
                }
            }
            Ok(RecoveryView {
                reader: self.clone(),
                rtx,
                row,
                tail,
                pid: pid.clone(),
                ek,
                highest,
                snapshot_seqs,
            })
        })
    }

    /// All events of `pid`, collected (convenience for small histories and tests).
    ///
    /// # Errors
    /// As [`Self::events`].
    pub fn all_events(&self, pid: &PersistenceId) -> Result<Vec<EventRecord>> {
        self.events(pid, Seq(1), Seq(u64::MAX), u64::MAX)?.collect()
    }

    /// Seqs of the stored snapshots of `pid`, ascending.
    ///
    /// # Errors
    /// [`JournalError::Corrupted`] or [`JournalError::Io`].
    pub fn snapshot_seqs(&self, pid: &PersistenceId) -> Result<Vec<Seq>> {
        let ek = keys::entity_key(pid, self.meta.header.key_groups);
        guard(&self.meta.path, || {
            let rtx = self.read_txn()?;
            let t = rtx.open_table(keys::SNAPSHOTS)?;
            let lo = keys::snapshot_key(&ek, Seq(0));
            let hi = keys::snapshot_key(&ek, Seq(u64::MAX));
            let mut out = Vec::new();
            for item in t.range(lo.as_slice()..=hi.as_slice())? {
                let (k, _) = item?;
                out.push(keys::snapshot_key_seq(k.value())?);
            }
            Ok(out)
        })
    }

    /// The snapshot of `pid` at exactly `seq`, if stored.
    ///
    /// # Errors
    /// [`JournalError::Corrupted`] if it does not decode; [`JournalError::Io`].
    pub fn snapshot_at(&self, pid: &PersistenceId, seq: Seq) -> Result<Option<SnapshotRecord>> {
        let ek = keys::entity_key(pid, self.meta.header.key_groups);
        guard(&self.meta.path, || {
            let rtx = self.read_txn()?;
            let t = rtx.open_table(keys::SNAPSHOTS)?;
            let key = keys::snapshot_key(&ek, seq);
            match t.get(key.as_slice())? {
                None => Ok(None),
                Some(v) => decode_snapshot_for(pid, seq, v.value()).map(Some),
            }
        })
    }

    /// The newest snapshot of `pid` at or below `max_seq`.
    ///
    /// # Errors
    /// [`JournalError::Corrupted`] if it does not decode (use [`Self::snapshot_seqs`] and
    /// [`Self::snapshot_at`] to fall back to older ones); [`JournalError::Io`].
    pub fn load_snapshot(
        &self,
        pid: &PersistenceId,
        max_seq: Seq,
    ) -> Result<Option<SnapshotRecord>> {
        let ek = keys::entity_key(pid, self.meta.header.key_groups);
        guard(&self.meta.path, || {
            let rtx = self.read_txn()?;
            let row = self.row(&rtx, &ek)?.unwrap_or_default();
            let t = rtx.open_table(keys::SNAPSHOTS)?;
            let lo = keys::snapshot_key(&ek, Seq(0));
            let hi = keys::snapshot_key(&ek, max_seq);
            let newest = match t.range(lo.as_slice()..=hi.as_slice())?.next_back() {
                None => None,
                Some(item) => {
                    let (k, v) = item?;
                    let seq = keys::snapshot_key_seq(k.value())?;
                    Some(decode_snapshot_for(pid, seq, v.value())?)
                }
            };
            // The entity row knows its newest snapshot: a damaged key must not make an older
            // snapshot (or none) pass for the newest.
            let found = newest.as_ref().map_or(0, |s| s.seq.0);
            if row.snapshot_seq <= max_seq.0 && row.snapshot_seq > found {
                return Err(JournalError::corrupted(
                    format!("{pid} snapshot {}", row.snapshot_seq),
                    format!("newest snapshot missing (found {found})"),
                ));
            }
            Ok(newest)
        })
    }

    /// The persistence ids stored in key groups `key_groups` (all when `None`), in key order,
    /// with what the journal holds for each. Fully deleted entities without snapshots are left
    /// out.
    ///
    /// # Errors
    /// [`JournalError::Corrupted`] or [`JournalError::Io`].
    pub fn entities(&self, key_groups: Option<Range<u32>>) -> Result<Vec<EntitySummary>> {
        guard(&self.meta.path, || {
            let kg = key_groups.clone().unwrap_or(0..u32::MAX);
            let lo = keys::key_group_start(kg.start);
            let hi = keys::key_group_start(kg.end);
            // Same retry rule as `entity_view`, for every entity at once.
            let (rows, tail) = loop {
                let v1 = self.shared.pack_version.load(Ordering::SeqCst);
                let rtx = self.read_txn()?;
                let t = rtx.open_table(keys::ENTITIES)?;
                let mut rows: std::collections::BTreeMap<Vec<u8>, EntityRow> = Default::default();
                for item in t.range(lo.as_slice()..hi.as_slice())? {
                    let (k, v) = item?;
                    rows.insert(k.value().to_vec(), decode_row(k.value(), v.value())?);
                }
                let tail: HashMap<Vec<u8>, Vec<TailRef>> = {
                    let tail = self.shared.tail.read().unwrap_or_else(|p| p.into_inner());
                    tail.entries
                        .iter()
                        .filter(|(k, _)| {
                            k.as_slice() >= lo.as_slice() && k.as_slice() < hi.as_slice()
                        })
                        .map(|(k, v)| (k.to_vec(), v.refs.clone()))
                        .collect()
                };
                if self.shared.pack_version.load(Ordering::SeqCst) == v1 {
                    break (rows, tail);
                }
            };
            let mut all = rows;
            for k in tail.keys() {
                all.entry(k.clone()).or_default();
            }
            let mut out = Vec::with_capacity(all.len());
            for (ek, row) in all {
                let (key_group, pid) = keys::parse_entity_key(&ek)?;
                if key_group != pid.key_group(self.meta.header.key_groups) {
                    return Err(JournalError::corrupted(
                        format!("entities/{pid}"),
                        format!("stored under key group {key_group}, hashes elsewhere"),
                    ));
                }
                let refs = tail.get(&ek).map(Vec::as_slice).unwrap_or(&[]);
                let covered = row.chunks.last().map_or(0, |c| c.last_seq);
                let highest = refs.last().map_or(0, |r| r.seq).max(row.highest_seq);
                let live_refs = refs
                    .iter()
                    .filter(|r| r.seq > covered && r.seq > row.deleted_to);
                let tail_bytes: u64 = live_refs.clone().map(|r| u64::from(r.bytes)).sum();
                let tail_last = live_refs.map(|r| r.timestamp_micros).max();
                let bytes = row.chunks.iter().map(|c| u64::from(c.bytes)).sum::<u64>() + tail_bytes;
                let last = tail_last.unwrap_or(row.last_write_micros);
                let events = highest.saturating_sub(row.deleted_to);
                if events == 0 && row.snapshots == 0 {
                    continue;
                }
                out.push(EntitySummary {
                    persistence_id: pid,
                    key_group,
                    highest_seq: Seq(highest),
                    deleted_to: Seq(row.deleted_to),
                    events,
                    bytes,
                    snapshot_seq: (row.snapshot_seq > 0).then_some(Seq(row.snapshot_seq)),
                    snapshots: row.snapshots,
                    last_write: (last != 0)
                        .then(|| DateTime::<Utc>::from_timestamp_micros(last))
                        .flatten(),
                });
            }
            Ok(out)
        })
    }

    /// Every stored event with offset ≥ `from`, in global offset order, as committed when
    /// the iterator is created. For a live tail, wait with [`Self::wait_for_offset`] and call
    /// again from the next offset.
    ///
    /// # Errors
    /// Opening fails with [`JournalError::Io`]/[`JournalError::Corrupted`]; items may be
    /// [`JournalError::Corrupted`], after which the iterator ends.
    pub fn changelog(&self, from: Offset) -> Result<ChangelogIter> {
        guard(&self.meta.path, || {
            let rtx = self.read_txn()?;
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

/// One persistence id as of one read transaction; see [`JournalReader::recovery_view`].
pub struct RecoveryView {
    reader: JournalReader,
    rtx: ReadTransaction,
    row: EntityRow,
    tail: Vec<TailRef>,
    pid: PersistenceId,
    ek: Vec<u8>,
    highest: Seq,
    snapshot_seqs: Vec<Seq>,
}

impl RecoveryView {
    /// Highest seq ever appended (0 if none).
    pub fn highest_seq(&self) -> Seq {
        self.highest
    }

    /// Seqs of the stored snapshots, ascending.
    pub fn snapshot_seqs(&self) -> &[Seq] {
        &self.snapshot_seqs
    }

    /// The snapshot at exactly `seq`, if stored.
    ///
    /// # Errors
    /// [`JournalError::Corrupted`] if it does not decode; [`JournalError::Io`].
    pub fn snapshot_at(&self, seq: Seq) -> Result<Option<SnapshotRecord>> {
        guard(self.reader.path(), || {
            let t = self.rtx.open_table(keys::SNAPSHOTS)?;
            let key = keys::snapshot_key(&self.ek, seq);
            match t.get(key.as_slice())? {
                None => Ok(None),
                Some(v) => decode_snapshot_for(&self.pid, seq, v.value()).map(Some),
            }
        })
    }

    /// Streams the events with seq ≥ `from` in this view.
    ///
    /// # Errors
    /// As [`JournalReader::events`].
    pub fn events_from(self, from: Seq) -> Result<EventIter> {
        let RecoveryView {
            reader,
            rtx,
            row,
            tail,
            pid,
            ek,
            ..
        } = self;
        let path = reader.path().to_path_buf();
        guard(&path, || {
            reader.event_iter(rtx, &row, tail, &pid, ek, from, Seq(u64::MAX), u64::MAX)
        })
    }
}

fn decode_snapshot_for(pid: &PersistenceId, seq: Seq, bytes: &[u8]) -> Result<SnapshotRecord> {
    let rec = codec::decode_snapshot(bytes)
        .map_err(|e| JournalError::corrupted(format!("snapshot {pid} seq {seq}"), e))?;
    if rec.persistence_id != *pid || rec.seq != seq {
        return Err(JournalError::corrupted(
            format!("snapshot {pid} seq {seq}"),
            format!("record says {} seq {}", rec.persistence_id, rec.seq),
        ));
    }
    Ok(rec)
}

pub(crate) fn read_state(meta: &ReadOnlyTable<&'static str, &'static [u8]>) -> Result<State> {
    match meta.get(keys::META_STATE)? {
        Some(v) => codec::decode_meta::<State>(v.value())
            .map_err(|e| JournalError::corrupted("meta/state", e)),
        None => Err(JournalError::corrupted("meta/state", "missing")),
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

/// Views of one entity taken before one that lags the writer's memory stands (100 µs apart).
const VIEW_ATTEMPTS: u32 = 200;

/// How often a read-only handle looks for new commits in [`JournalReader::wait_for_offset`].
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Tail events decoded together: their refs, and the cached bytes copied under one lock.
#[derive(Default)]
struct TailBatch {
    refs: Vec<TailRef>,
    bytes: Vec<u8>,
    spans: Vec<Option<std::ops::Range<usize>>>,
}

/// Tail events per batch, and the bytes that end one early.
const TAIL_BATCH_EVENTS: usize = 256;
const TAIL_BATCH_BYTES: usize = 256 * 1024;

/// What every event of a stream is checked against, and the manifest consecutive events share.
struct Checker {
    pid: PersistenceId,
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
        let fields = codec::event_fields(bytes, &self.pid, cached, &mut self.dates)
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
        if self.manifest.version != f.version || self.manifest.type_name != f.manifest {
            self.manifest = Manifest::new(f.manifest, f.version);
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
    /// Hands the events of the next chunk, or of up to 256 tail events, to `sink` (which
    /// returns `false` to stop). `Ok(false)` once the stream has nothing left.
    fn fill_with(&mut self, sink: &mut dyn FnMut(EventRef<'_>) -> bool) -> Result<bool> {
        if let Some(c) = self.chunks.pop_front() {
            let key = keys::chunk_key(c.generation, &self.ek, c.first_seq);
            let Some(table) = self.chunk_table.as_ref() else {
                return Err(self.check.corrupted(c.first_seq, "chunk table missing"));
            };
            let Some(v) = table.get(key.as_slice())? else {
                return Err(self.check.corrupted(
                    c.first_seq,
                    format!("chunk of generation {} missing", c.generation),
                ));
            };
            let what = || format!("chunk {}", c.generation);
            for frame in codec::Frames::new(v.value()) {
                let frame = frame.map_err(|e| {
                    self.check
                        .corrupted(c.first_seq, format!("chunk {}: {e}", c.generation))
                })?;
                if !self
                    .check
                    .emit(frame, false, None, c.first_seq, &what, sink)?
                {
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
                self.fill_with(&mut |ev| {
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
                self.fill_with(&mut |ev| {
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
                    for frame in codec::Frames::new(v.value()) {
                        let rec = frame.and_then(codec::decode_event).map_err(|e| {
                            JournalError::corrupted(format!("chunk {:?}", k.value()), e)
                        })?;
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

#[cfg(test)]
mod tests {
    use redb::ReadableTable;

    use super::*;
    use crate::{FaultyStorage, Journal, Manifest, NewEvent};

    /// Found with the `journal_file` fuzz target's harness: an entity row (validly sealed)
    /// whose chunk reference claims `u32::MAX` events made replay reserve room for all of them
    /// before reading the chunk, ~580 GB, an allocation failure that aborts the process
    /// instead of a typed outcome. The frames themselves say how many events a chunk holds; the
    /// reservation is now bounded by the chunk's length.
    #[test]
    fn chunk_claiming_billions_of_events_does_not_abort_replay() {
        let storage = FaultyStorage::new();
        let pid = PersistenceId::parse("account", "a").unwrap();
        let open = || {
            Journal::builder()
                .key_groups(4)
                .segment_events(2)
                .open_with_backend(storage.clone(), "mem")
                .unwrap()
        };
        {
            let journal = open();
            for seq in 1..=3 {
                let ev = NewEvent::new(Manifest::new("E", 1), vec![seq as u8]);
                journal.append_blocking(&pid, Seq(seq), vec![ev]).unwrap();
            }
            journal.flush_blocking(true).unwrap();
        }
        {
            let db = redb::Database::builder()
                .create_with_backend(storage.clone())
                .unwrap();
            let ek = keys::entity_key(&pid, 4);
            let wtx = db.begin_write().unwrap();
            {
                let mut t = wtx.open_table(keys::ENTITIES).unwrap();
                let mut row =
                    decode_row(&ek, t.get(ek.as_slice()).unwrap().unwrap().value()).unwrap();
                assert!(!row.chunks.is_empty(), "the events were packed");
                row.chunks[0].events = u32::MAX;
                let bytes = codec::encode_keyed(&ek, &row).unwrap();
                t.insert(ek.as_slice(), bytes.as_slice()).unwrap();
            }
            wtx.commit().unwrap();
        }
        let journal = open();
        let events = journal.all_events(&pid).unwrap();
        assert_eq!(
            events.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}
