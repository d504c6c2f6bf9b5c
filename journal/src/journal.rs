//! [`Journal`]: opening a journal file, and the write API (appends, snapshots, deletes) that
//! goes through the group-commit writer. Reads live on [`JournalReader`], which `Journal`
//! dereferences to.

use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use chrono::Utc;
use redb::ReadableDatabase;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, info_span};

use crate::codec;
use crate::config::{Durability, JournalBuilder};
use crate::error::{JournalError, Rejected, Result};
use crate::file::FileKind;
use crate::ids::{PersistenceId, Seq, KEY_GROUP_HASH};
use crate::keys;
use crate::meta::{Header, State, FORMAT_VERSION};
use crate::read::{Db, JournalReader};
use crate::record::{AppendAck, Manifest, NewEvent, SnapshotRecord};
use crate::store::Store;
use crate::tail::Shared;
use crate::writer::{encode_append, Request, Writer};

/// Which snapshots of a persistence id [`Journal::delete_snapshots`] deletes: those with
/// `min_seq <= seq <= max_seq`, except the newest `keep_newest` snapshots of the persistence id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotCriteria {
    /// Lowest seq deleted (inclusive). Default 0.
    pub min_seq: Seq,
    /// Highest seq deleted (inclusive). Default `u64::MAX`.
    pub max_seq: Seq,
    /// How many of the newest snapshots are kept whatever their seq. Default 0.
    pub keep_newest: usize,
}

impl Default for SnapshotCriteria {
    fn default() -> Self {
        Self {
            min_seq: Seq(0),
            max_seq: Seq(u64::MAX),
            keep_newest: 0,
        }
    }
}

impl SnapshotCriteria {
    /// Keep only the newest `n` snapshots.
    pub fn keep_newest(n: usize) -> Self {
        Self {
            keep_newest: n,
            ..Self::default()
        }
    }

    /// Delete every snapshot at or below `seq`.
    pub fn up_to(seq: Seq) -> Self {
        Self {
            max_seq: seq,
            ..Self::default()
        }
    }
}

/// An open journal: one redb file holding every entity's events and snapshots, with one writer
/// thread that group-commits all appends. Cheap to clone; the writer stops when the last clone
/// is dropped (after finishing what was queued). Read methods come from [`JournalReader`].
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
    reader: JournalReader,
}

struct Inner {
    tx: Option<mpsc::Sender<Request>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    max_event_bytes: usize,
    max_snapshot_bytes: usize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain and exit; joining releases the file.
        self.tx.take();
        let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Deref for Journal {
    type Target = JournalReader;
    fn deref(&self) -> &JournalReader {
        &self.reader
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.reader.path())
            .finish()
    }
}

/// Maps an error of opening the redb file, naming the path.
pub(crate) fn open_error(path: &Path, e: redb::DatabaseError) -> JournalError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => JournalError::Locked {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::RepairAborted => JournalError::NeedsRecovery {
            path: path.to_path_buf(),
        },
        redb::DatabaseError::UpgradeRequired(v) => JournalError::NotAJournal {
            path: path.to_path_buf(),
            detail: format!("redb file format {v} is not supported by this build"),
        },
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(d)) => {
            JournalError::corrupted(path.display().to_string(), d)
        }
        other => JournalError::Io(format!("{}: {other}", path.display())),
    }
}

/// Runs `f`, turning a panic inside redb on hostile bytes into a typed error (G7).
pub(crate) fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("panic");
            Err(JournalError::corrupted(
                path.display().to_string(),
                format!("storage engine failed on these bytes: {msg}"),
            ))
        }
    }
}

impl Journal {
    /// A builder with the documented defaults.
    pub fn builder() -> JournalBuilder {
        JournalBuilder::default()
    }

    /// Opens or creates the journal at `path` with the defaults.
    ///
    /// # Errors
    /// As [`JournalBuilder::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<Journal> {
        JournalBuilder::default().open(path)
    }

    pub(crate) fn open_with(cfg: JournalBuilder, path: &Path) -> Result<Journal> {
        let span = info_span!("journal.open", path = %path.display());
        let _g = span.enter();
        let started = std::time::Instant::now();
        let mut kind = FileKind::probe(path)?;
        let created = kind != FileKind::Redb;
        // Until a journal is there: another creator may link or write one meanwhile, or remove
        // the file; three looks are plenty for any real race.
        for _ in 0..3 {
            if !cfg.create || kind == FileKind::Redb {
                break;
            }
            crate::file::create(path, kind, &cfg)?;
            kind = FileKind::probe(path)?;
        }
        kind.must_be_redb(path)?;
        let mut b = redb::Builder::new();
        b.set_cache_size(cfg.cache_bytes);
        b.set_check_integrity_on_open(cfg.verify_on_open);
        b.set_concurrency_mode(match cfg.durability {
            Durability::Immediate => redb::ConcurrencyMode::SingleWriter,
            Durability::None => redb::ConcurrencyMode::ExclusiveWriter,
        });
        // Just after a creation in place, another open's probe may hold the file's shared lock
        // for a moment, which an exclusive open takes for another writer: try again briefly.
        let mut tries = 0;
        let db = loop {
            match guard(path, || b.open(path).map_err(|e| open_error(path, e))) {
                Err(JournalError::Locked { .. }) if created && tries < crate::file::LOCK_TRIES => {
                    tries += 1;
                    std::thread::sleep(crate::file::LOCK_PAUSE);
                }
                other => break other?,
            }
        };
        Self::start(db, cfg, path, started)
    }

    pub(crate) fn open_backend(
        cfg: JournalBuilder,
        backend: impl redb::StorageBackend,
        label: &Path,
    ) -> Result<Journal> {
        let span = info_span!("journal.open", path = %label.display());
        let _g = span.enter();
        let started = std::time::Instant::now();
        let mut b = redb::Builder::new();
        b.set_cache_size(cfg.cache_bytes);
        b.set_check_integrity_on_open(cfg.verify_on_open);
        b.set_concurrency_mode(redb::ConcurrencyMode::ExclusiveWriter);
        let db = guard(label, || {
            b.create_with_backend(backend)
                .map_err(|e| open_error(label, e))
        })?;
        Self::start(db, cfg, label, started)
    }

    fn start(
        db: redb::Database,
        cfg: JournalBuilder,
        path: &Path,
        started: std::time::Instant,
    ) -> Result<Journal> {
        let db = Arc::new(Store::new(db));
        let (header, state) = guard(path, || init_or_check(&db, path, &cfg))?;
        let (tail, highest, committed) = guard(path, || {
            crate::scan::rebuild_tail(&**db, header.key_groups, cfg.pack_cache_bytes)
        })?;
        let gen_index = guard(path, || crate::writer::load_generations(&**db))?;
        let shared = Arc::new(Shared::new(tail, committed, header.key_groups));
        let (tx, rx) = mpsc::channel(cfg.queue_capacity);
        let writer = Writer::new(
            db.clone(),
            shared.clone(),
            rx,
            state,
            highest,
            gen_index,
            &cfg,
            path.to_path_buf(),
        )?;
        let handle = std::thread::Builder::new()
            .name("stateline-journal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::Io(format!("cannot start writer thread: {e}")))?;
        info!(
            key_groups = header.key_groups,
            committed_offset = committed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "journal opened"
        );
        let reader = JournalReader::new(Db::Write(db), shared, header, path.to_path_buf());
        Ok(Journal {
            inner: Arc::new(Inner {
                tx: Some(tx),
                writer: Mutex::new(Some(handle)),
                max_event_bytes: cfg.max_event_bytes,
                max_snapshot_bytes: cfg.max_snapshot_bytes,
            }),
            reader,
        })
    }

    /// A read handle sharing this journal's file and tail index.
    pub fn reader(&self) -> JournalReader {
        self.reader.clone()
    }

    fn sender(&self) -> Result<&mpsc::Sender<Request>> {
        if self.reader.shared().is_poisoned() {
            return Err(JournalError::Poisoned);
        }
        self.inner.tx.as_ref().ok_or(JournalError::Closed)
    }

    fn check_events(&self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Err(Rejected::EmptyAppend.into());
        }
        for e in events {
            e.manifest.validate()?;
            if e.payload.len() > self.inner.max_event_bytes {
                return Err(Rejected::EventTooLarge {
                    size: e.payload.len(),
                    limit: self.inner.max_event_bytes,
                }
                .into());
            }
        }
        Ok(())
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .send(make(reply))
            .await
            .map_err(|_| JournalError::Closed)?;
        self.await_reply(rx.await)
    }

    fn call_blocking<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.sender()?
            .blocking_send(make(reply))
            .map_err(|_| JournalError::Closed)?;
        self.await_reply(rx.blocking_recv())
    }

    fn await_reply<T>(
        &self,
        r: std::result::Result<Result<T>, oneshot::error::RecvError>,
    ) -> Result<T> {
        match r {
            Ok(r) => r,
            Err(_) if self.reader.shared().is_poisoned() => Err(JournalError::Poisoned),
            Err(_) => Err(JournalError::Closed),
        }
    }

    /// Appends `events` to `pid` atomically (G2), as seqs `expected_seq..`. Resolves once the
    /// group commit holding them is durable (with [`Durability::Immediate`]).
    ///
    /// # Errors
    /// [`JournalError::Conflict`] if the journal's next seq is not `expected_seq` (G5);
    /// [`JournalError::Rejected`] for an empty batch, a too-large event, a bad manifest or seqs
    /// past [`Seq::MAX`] (nothing written); [`JournalError::Io`] if the commit failed (outcome
    /// unknown; the journal is poisoned), [`JournalError::Poisoned`] or [`JournalError::Closed`]
    /// afterwards.
    pub async fn append(
        &self,
        pid: &PersistenceId,
        expected_seq: Seq,
        events: Vec<NewEvent>,
    ) -> Result<AppendAck> {
        let request = self.append_request(pid, expected_seq, events)?;
        self.call(request).await
    }

    /// [`Self::append`] for code outside an async runtime (must not be called on one).
    ///
    /// # Errors
    /// As [`Self::append`].
    pub fn append_blocking(
        &self,
        pid: &PersistenceId,
        expected_seq: Seq,
        events: Vec<NewEvent>,
    ) -> Result<AppendAck> {
        let request = self.append_request(pid, expected_seq, events)?;
        self.call_blocking(request)
    }

    /// Checks and encodes an append on the calling thread (the writer thread then only writes
    /// offsets and checksums).
    fn append_request(
        &self,
        pid: &PersistenceId,
        expected_seq: Seq,
        events: Vec<NewEvent>,
    ) -> Result<impl FnOnce(oneshot::Sender<Result<AppendAck>>) -> Request> {
        self.check_events(&events)?;
        let last = expected_seq.0.saturating_add(events.len() as u64 - 1);
        if last > Seq::MAX.0 {
            return Err(Rejected::SeqOutOfRange { seq: Seq(last) }.into());
        }
        let entity_key = keys::entity_key_inline(pid, self.key_groups());
        let events = encode_append(pid, expected_seq, events);
        Ok(move |reply| Request::Append {
            entity_key,
            expected_seq,
            events,
            reply,
        })
    }

    fn check_snapshot(&self, manifest: &Manifest, payload: &[u8]) -> Result<()> {
        manifest.validate()?;
        if payload.len() > self.inner.max_snapshot_bytes {
            return Err(Rejected::SnapshotTooLarge {
                size: payload.len(),
                limit: self.inner.max_snapshot_bytes,
            }
            .into());
        }
        Ok(())
    }

    /// Saves a snapshot of `pid`'s state after event `seq` (replacing one at the same seq).
    ///
    /// # Errors
    /// [`Rejected::SnapshotTooLarge`], [`Rejected::SnapshotAhead`] if `seq` is above the highest
    /// persisted seq; I/O errors as [`Self::append`].
    pub async fn save_snapshot(
        &self,
        pid: &PersistenceId,
        seq: Seq,
        manifest: Manifest,
        payload: Vec<u8>,
    ) -> Result<()> {
        self.check_snapshot(&manifest, &payload)?;
        let pid = pid.clone();
        let timestamp = Utc::now();
        self.call(|reply| Request::SaveSnapshot {
            pid,
            seq,
            manifest,
            payload,
            timestamp,
            keep: None,
            reply,
        })
        .await
    }

    /// [`Self::save_snapshot`], then keeps only the newest `keep_newest` snapshots of `pid`,
    /// in the same write (one request instead of two: what entities do after each snapshot).
    ///
    /// # Errors
    /// As [`Self::save_snapshot`].
    pub async fn save_snapshot_retaining(
        &self,
        pid: &PersistenceId,
        seq: Seq,
        manifest: Manifest,
        payload: Vec<u8>,
        keep_newest: usize,
    ) -> Result<()> {
        self.check_snapshot(&manifest, &payload)?;
        let pid = pid.clone();
        let timestamp = Utc::now();
        self.call(|reply| Request::SaveSnapshot {
            pid,
            seq,
            manifest,
            payload,
            timestamp,
            keep: Some(keep_newest.max(1)),
            reply,
        })
        .await
    }

    /// [`Self::save_snapshot`] outside an async runtime.
    ///
    /// # Errors
    /// As [`Self::save_snapshot`].
    pub fn save_snapshot_blocking(
        &self,
        pid: &PersistenceId,
        seq: Seq,
        manifest: Manifest,
        payload: Vec<u8>,
    ) -> Result<()> {
        self.check_snapshot(&manifest, &payload)?;
        let pid = pid.clone();
        let timestamp = Utc::now();
        self.call_blocking(|reply| Request::SaveSnapshot {
            pid,
            seq,
            manifest,
            payload,
            timestamp,
            keep: None,
            reply,
        })
    }

    /// Deletes `pid`'s events with seq ≤ `to_seq` (retention). `highest_seq` never decreases;
    /// later appends continue after it. Returns the seq up to which events are now deleted
    /// (capped at the highest seq).
    ///
    /// # Errors
    /// I/O errors as [`Self::append`].
    pub async fn delete_events_to(&self, pid: &PersistenceId, to_seq: Seq) -> Result<Seq> {
        let pid = pid.clone();
        self.call(|reply| Request::DeleteEventsTo { pid, to_seq, reply })
            .await
    }

    /// [`Self::delete_events_to`] outside an async runtime.
    ///
    /// # Errors
    /// As [`Self::delete_events_to`].
    pub fn delete_events_to_blocking(&self, pid: &PersistenceId, to_seq: Seq) -> Result<Seq> {
        let pid = pid.clone();
        self.call_blocking(|reply| Request::DeleteEventsTo { pid, to_seq, reply })
    }

    /// Deletes the snapshots of `pid` matching `criteria`; returns how many were deleted.
    ///
    /// # Errors
    /// I/O errors as [`Self::append`].
    pub async fn delete_snapshots(
        &self,
        pid: &PersistenceId,
        criteria: SnapshotCriteria,
    ) -> Result<usize> {
        let pid = pid.clone();
        self.call(|reply| Request::DeleteSnapshots {
            pid,
            criteria,
            reply,
        })
        .await
    }

    /// [`Self::delete_snapshots`] outside an async runtime.
    ///
    /// # Errors
    /// As [`Self::delete_snapshots`].
    pub fn delete_snapshots_blocking(
        &self,
        pid: &PersistenceId,
        criteria: SnapshotCriteria,
    ) -> Result<usize> {
        let pid = pid.clone();
        self.call_blocking(|reply| Request::DeleteSnapshots {
            pid,
            criteria,
            reply,
        })
    }

    /// Deletes a persistence id entirely: all its events and snapshots (the primitive of TTL
    /// cleanup). Its seqs are never reused: a later append must continue after the old highest.
    ///
    /// # Errors
    /// I/O errors as [`Self::append`].
    pub async fn delete_entity(&self, pid: &PersistenceId) -> Result<()> {
        let pid = pid.clone();
        self.call(|reply| Request::DeleteEntity { pid, reply })
            .await
    }

    /// [`Self::delete_entity`] outside an async runtime.
    ///
    /// # Errors
    /// As [`Self::delete_entity`].
    pub fn delete_entity_blocking(&self, pid: &PersistenceId) -> Result<()> {
        let pid = pid.clone();
        self.call_blocking(|reply| Request::DeleteEntity { pid, reply })
    }

    /// Imports a snapshot record as it was (keeping its timestamp); used by `stateline import`.
    ///
    /// # Errors
    /// As [`Self::save_snapshot`].
    pub fn import_snapshot_blocking(&self, rec: SnapshotRecord) -> Result<()> {
        self.check_snapshot(&rec.manifest, &rec.payload)?;
        self.call_blocking(|reply| Request::SaveSnapshot {
            pid: rec.persistence_id,
            seq: rec.seq,
            manifest: rec.manifest,
            payload: rec.payload,
            timestamp: rec.timestamp,
            keep: None,
            reply,
        })
    }

    /// Starts a persistence id that has no events yet at seq `deleted_to + 1`, as if its first
    /// `deleted_to` events had been deleted (importing an export taken after retention).
    ///
    /// # Errors
    /// [`JournalError::Conflict`] if the persistence id already has events;
    /// [`Rejected::SeqOutOfRange`] if `deleted_to` is above [`Seq::MAX`]; I/O errors as
    /// [`Self::append`].
    pub fn import_floor_blocking(&self, pid: &PersistenceId, deleted_to: Seq) -> Result<()> {
        if deleted_to > Seq::MAX {
            return Err(Rejected::SeqOutOfRange { seq: deleted_to }.into());
        }
        let pid = pid.clone();
        self.call_blocking(|reply| Request::ImportFloor {
            pid,
            deleted_to,
            reply,
        })
    }

    /// Resolves once everything queued before it is committed, and, when `pack` is true, once
    /// background work has caught up: sealed segments packed and due generation merges done
    /// (useful before measuring or handing a file over).
    ///
    /// # Errors
    /// I/O errors as [`Self::append`].
    pub async fn flush(&self, pack: bool) -> Result<()> {
        self.call(|reply| Request::Flush { pack, reply }).await
    }

    /// [`Self::flush`] outside an async runtime.
    ///
    /// # Errors
    /// As [`Self::flush`].
    pub fn flush_blocking(&self, pack: bool) -> Result<()> {
        self.call_blocking(|reply| Request::Flush { pack, reply })
    }
}

/// Creates the header of a new journal or checks the one found (G9, key groups, hash).
pub(crate) fn init_or_check(
    db: &redb::Database,
    path: &Path,
    cfg: &JournalBuilder,
) -> Result<(Header, State)> {
    {
        let rtx = db.begin_read()?;
        let has_tables = rtx.list_tables()?.next().is_some();
        match rtx.open_table(keys::META) {
            Ok(t) => {
                let header = read_header(&t, path)?;
                check_header(&header, cfg)?;
                let state = match t.get(keys::META_STATE)? {
                    Some(v) => codec::decode_meta::<State>(v.value())
                        .map_err(|e| JournalError::corrupted("meta/state", e))?,
                    None => return Err(JournalError::corrupted("meta/state", "missing")),
                };
                drop(t);
                drop(rtx);
                let header = upgrade_header(db, header)?;
                return Ok((header, state));
            }
            Err(redb::TableError::TableDoesNotExist(_)) if !has_tables => {}
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Err(JournalError::NotAJournal {
                    path: path.to_path_buf(),
                    detail: "a redb file without stateline metadata".into(),
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    if !cfg.create {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            detail: "an empty redb file".into(),
        });
    }
    let header = Header {
        format_version: FORMAT_VERSION,
        journal_id: *uuid::Uuid::new_v4().as_bytes(),
        created_at_micros: Utc::now().timestamp_micros(),
        key_groups: cfg
            .key_groups
            .unwrap_or(crate::config::DEFAULT_KEY_GROUPS)
            .min(crate::config::MAX_KEY_GROUPS),
        hash: KEY_GROUP_HASH.to_string(),
    };
    let state = State {
        next_offset: 1,
        ..State::default()
    };
    let wtx = db.begin_write()?;
    {
        let mut meta = wtx.open_table(keys::META)?;
        meta.insert(
            keys::META_HEADER,
            codec::encode_meta(&header)
                .map_err(|e| JournalError::Io(e.to_string()))?
                .as_slice(),
        )?;
        meta.insert(
            keys::META_STATE,
            codec::encode_meta(&state)
                .map_err(|e| JournalError::Io(e.to_string()))?
                .as_slice(),
        )?;
        wtx.open_table(keys::ENTITIES)?;
        wtx.open_table(keys::CHUNKS)?;
        wtx.open_table(keys::SNAPSHOTS)?;
        wtx.open_table(keys::GENERATIONS)?;
    }
    wtx.commit()?;
    info!(key_groups = header.key_groups, "journal created");
    Ok((header, state))
}

/// Marks an older journal opened for writing with this build's format version, in a commit of
/// its own before the writer writes anything in the new format: from then on a build that
/// knows only the old format refuses the file (G9) instead of misreading new rows. Everything
/// an older format stored keeps being read as it is.
fn upgrade_header(db: &redb::Database, header: Header) -> Result<Header> {
    if header.format_version >= FORMAT_VERSION {
        return Ok(header);
    }
    let upgraded = Header {
        format_version: FORMAT_VERSION,
        ..header
    };
    let wtx = db.begin_write()?;
    {
        let mut meta = wtx.open_table(keys::META)?;
        let bytes = codec::encode_meta(&upgraded).map_err(|e| JournalError::Io(e.to_string()))?;
        meta.insert(keys::META_HEADER, bytes.as_slice())?;
    }
    wtx.commit()?;
    info!(
        from = header.format_version,
        to = FORMAT_VERSION,
        "journal format upgraded"
    );
    Ok(upgraded)
}

pub(crate) fn read_header(
    t: &impl redb::ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
) -> Result<Header> {
    let Some(v) = t.get(keys::META_HEADER)? else {
        return Err(JournalError::NotAJournal {
            path: path.to_path_buf(),
            detail: "journal header missing".into(),
        });
    };
    // The format version is the first field; read it even if the rest changed shape (G9).
    let header = codec::decode_meta::<Header>(v.value());
    match header {
        Ok(h) if h.format_version > FORMAT_VERSION => Err(JournalError::UnsupportedFormat {
            found: h.format_version,
            supported: FORMAT_VERSION,
        }),
        Ok(h) => Ok(h),
        Err(e) => match codec::leading_u32(v.value()) {
            Some(found) if found > FORMAT_VERSION => Err(JournalError::UnsupportedFormat {
                found,
                supported: FORMAT_VERSION,
            }),
            _ => Err(JournalError::corrupted("meta/header", e)),
        },
    }
}

fn check_header(h: &Header, cfg: &JournalBuilder) -> Result<()> {
    if h.hash != KEY_GROUP_HASH {
        return Err(JournalError::ConfigMismatch {
            stored: format!("hash {:?}", h.hash),
            requested: format!("hash {KEY_GROUP_HASH:?}"),
        });
    }
    // A count above the cap asks for what creation gives it: the cap.
    let creates = |k: u32| k.min(crate::config::MAX_KEY_GROUPS);
    match cfg.key_groups {
        Some(k) if k != h.key_groups && creates(k) != h.key_groups => {
            Err(JournalError::ConfigMismatch {
                stored: format!("{} key groups", h.key_groups),
                requested: format!("{k} key groups"),
            })
        }
        _ => Ok(()),
    }?;
    Ok(())
}
