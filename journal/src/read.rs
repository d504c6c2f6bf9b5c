//! [`JournalReader`]: reads of one persistence id (streamed), snapshots, the list of persistence
//! ids, and the global changelog. Reads run in redb read transactions and never block the
//! writer; a read-only handle can inspect a journal another process is writing.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use redb::{ReadOnlyTable, ReadTransaction, ReadableDatabase};
use tokio::sync::watch;

use crate::codec;
use crate::error::{JournalError, Result};
use crate::file::FileKind;
use crate::ids::{KeyGroup, Offset, PersistenceId, Seq};
use crate::journal::{guard, open_error, read_header};
use crate::keys;
use crate::meta::{EntityRow, Header, State};
use crate::record::{EventRecord, SnapshotRecord};
use crate::scan::{catch_up, rebuild_tail};
use crate::store::Store;
use crate::tail::{Shared, TailRef};
use crate::writer::decode_row;

mod changelog;
mod events;
pub use changelog::ChangelogIter;
pub use events::EventIter;

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
    /// Bytes the stored events take where they are: their chunk rows once packed (the
    /// compact encoding, about 50 bytes an event less than in the log), their stored
    /// envelopes while in the log.
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
        FileKind::require_redb(path)?;
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
                if guard(&self.meta.path, || self.read_txn()).is_err() {
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
    /// (the applier publishes it only after the commit's events are in the tail). Without it,
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
    /// A transaction can also see commits whose events are not in the tail yet (the applier
    /// updates memory after the writer commits, a few commits behind at most): when the row's highest seq (which a snapshot
    /// or delete in the same commit raises) is beyond everything the view holds, the view is
    /// taken again after a moment, so that the stream does not end short of it. After
    /// [`VIEW_ATTEMPTS`] (or at once for a reader without the writer) the view stands as it
    /// is, and a stream that ends short reports it.
    fn entity_view(&self, ek: &[u8]) -> Result<(ReadTransaction, EntityRow, Vec<TailRef>)> {
        let mut attempt = 1;
        loop {
            let (rtx, row, tail, _) = self.entity_view_with(ek, Shared::tail_of)?;
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

    /// [`Self::entity_view`] with what `tail` takes from the tail index (given the last offset
    /// the transaction sees).
    fn entity_view_with<T>(
        &self,
        ek: &[u8],
        tail: impl Fn(&Shared, &[u8], u64) -> T,
    ) -> Result<(ReadTransaction, EntityRow, T, u64)> {
        loop {
            let v1 = self.shared.pack_version.load(Ordering::SeqCst);
            let (rtx, end) = self.txn_and_end()?;
            let row = self.row(&rtx, ek)?.unwrap_or_default();
            let tail = tail(&self.shared, ek, end);
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
                let (rtx, end) = self.txn_and_end()?;
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
                        .filter_map(|(k, v)| {
                            // Only what this transaction sees (see `txn_and_end`).
                            let seen = v.refs_until(end);
                            (!seen.is_empty()).then(|| (k.to_vec(), seen))
                        })
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

/// Views of one entity taken before one that lags the writer's memory stands (100 µs apart).
const VIEW_ATTEMPTS: u32 = 200;

/// How often a read-only handle looks for new commits in [`JournalReader::wait_for_offset`].
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(20);

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
