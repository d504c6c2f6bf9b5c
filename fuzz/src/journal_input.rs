//! The input of the `journal_file` target: which journal file a fuzz input describes, and
//! reading everything in it through the public API. Shared by the target and by
//! `journal/tests/fuzz_corpus_replays.rs` (included there with `#[path]`), so it uses only
//! crates that both have.
//!
//! An input is a control byte and the rest:
//! - bits 0–1, what the rest is:
//!   - 0: the whole file;
//!   - 1: row edits applied through redb to a small valid journal (so that the fuzzer reaches
//!     the journal's own reading of rows, past redb's page checksums), each
//!     `op table index len bytes[len]`:
//!     - `op & 3`: 0 replace the row's value by `bytes`, 1 delete the row, 2 insert a row (key
//!       and value from `bytes`), 3 xor `bytes` into the value after its CRC;
//!     - `op & 4`: then reseal the value (recompute its CRC, keyed for entity rows);
//!     - `table % 6`: meta, entities, chunks, snapshots, generations, a log segment
//!       (`table / 6` picks which); `index`: which row (modulo the number of rows);
//!   - 2 or 3: byte patches of the small valid journal's file, each `offset (u24 LE, modulo the
//!     file length) len bytes[len]`, overwriting; `len` 0 truncates the file at `offset`.
//! - bit 2: open without the page check on open (`verify_on_open(false)`).
//! - bit 3: open read-only from a file instead of writable in memory.
//!
//! The small valid journal is `fuzz/seeds/small_journal.rle` (written by
//! `cargo run --example make_seeds`; run-length encoded, as its 136 KiB are mostly runs of
//! `0x00` and `0xff`), built into the binary so that an input means the same file everywhere.

use std::path::Path;

use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageBackend, TableDefinition,
    TableHandle,
};
use stateline_journal::{
    FaultyStorage, Journal, JournalError, JournalReader, Offset, PersistenceId, Seq,
};

/// `crc32(key ‖ body) LE ‖ body`: a sealed value (empty key) or a keyed sealed value, as
/// `journal/FORMAT.md` describes.
pub fn seal_keyed(key: &[u8], body: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(body);
    let mut out = h.finalize().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A sealed value: `crc32(body) LE ‖ body`.
pub fn seal(body: &[u8]) -> Vec<u8> {
    seal_keyed(&[], body)
}

/// Persistence ids of the small journal (read even when the entity list is damaged).
pub fn small_journal_pids() -> Vec<PersistenceId> {
    ["alice", "bob", "carol"]
        .iter()
        .filter_map(|id| PersistenceId::parse("account", id).ok())
        .collect()
}

/// Options for journals opened by the targets: few key groups, a small cache, tiny segments.
pub fn builder() -> stateline_journal::JournalBuilder {
    Journal::builder()
        .key_groups(4)
        .cache_bytes(1 << 20)
        .pack_cache_bytes(1 << 20)
        .segment_events(4)
}

/// Everything in `storage`, as a file would hold it.
///
/// # Errors
/// [`JournalError::Io`] if the storage cannot be read.
pub fn storage_bytes(storage: &FaultyStorage) -> Result<Vec<u8>, JournalError> {
    let io = |e: std::io::Error| JournalError::Io(e.to_string());
    let len = storage.len().map_err(io)?;
    let mut out = vec![0; len as usize];
    storage.read(0, &mut out).map_err(io)?;
    Ok(out)
}

/// Storage holding `bytes`.
///
/// # Errors
/// [`JournalError::Io`] if the storage cannot be written.
pub fn storage_with(bytes: &[u8]) -> Result<FaultyStorage, JournalError> {
    let io = |e: std::io::Error| JournalError::Io(e.to_string());
    let storage = FaultyStorage::new();
    storage.set_len(bytes.len() as u64).map_err(io)?;
    storage.write(0, bytes).map_err(io)?;
    Ok(storage)
}

/// What reading a journal found: counts only (a hostile journal's contents are meaningless).
#[derive(Debug, Default)]
pub struct ReadCounts {
    pub entities: usize,
    pub events: usize,
    pub snapshots: usize,
    pub changelog: usize,
    pub errors: usize,
}

/// Most items taken from one iterator: a hostile journal may claim any number of events, and
/// a real journal of that size is not what the fuzzer is after.
const MAX_ITEMS: usize = 10_000;

/// Reads everything through the public API: the entity list, and per entity its highest seq,
/// events, recovery view and snapshots; the changelog; then a full verify. Errors are counted,
/// never panicked on.
pub fn read_everything(r: &JournalReader) -> ReadCounts {
    let mut c = ReadCounts::default();
    let _ = r.info();
    let _ = r.committed_offset();
    let note = |ok: bool, c: &mut ReadCounts| {
        if !ok {
            c.errors += 1;
        }
    };
    let entities = match r.entities(None) {
        Ok(e) => e,
        Err(_) => {
            c.errors += 1;
            Vec::new()
        }
    };
    let mut pids: Vec<PersistenceId> = entities.iter().map(|e| e.persistence_id.clone()).collect();
    for pid in small_journal_pids() {
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    c.entities = entities.len();
    for pid in pids.iter().take(64) {
        note(r.highest_seq(pid).is_ok(), &mut c);
        match r.events(pid, Seq(1), Seq(u64::MAX), u64::MAX) {
            Ok(it) => {
                for ev in it.take(MAX_ITEMS) {
                    match ev {
                        Ok(_) => c.events += 1,
                        Err(_) => c.errors += 1,
                    }
                }
            }
            Err(_) => c.errors += 1,
        }
        match r.snapshot_seqs(pid) {
            Ok(seqs) => {
                for s in seqs.iter().take(16) {
                    match r.snapshot_at(pid, *s) {
                        Ok(Some(_)) => c.snapshots += 1,
                        Ok(None) => {}
                        Err(_) => c.errors += 1,
                    }
                }
            }
            Err(_) => c.errors += 1,
        }
        note(r.load_snapshot(pid, Seq(u64::MAX)).is_ok(), &mut c);
        match r.recovery_view(pid) {
            Ok(view) => {
                let _ = view.highest_seq();
                if let Some(s) = view.snapshot_seqs().last().copied() {
                    note(view.snapshot_at(s).is_ok(), &mut c);
                }
                match view.events_from(Seq(1)) {
                    Ok(it) => {
                        for ev in it.take(MAX_ITEMS) {
                            note(ev.is_ok(), &mut c);
                        }
                    }
                    Err(_) => c.errors += 1,
                }
            }
            Err(_) => c.errors += 1,
        }
    }
    match r.changelog(Offset(1)) {
        Ok(it) => {
            for ev in it.take(MAX_ITEMS) {
                match ev {
                    Ok(_) => c.changelog += 1,
                    Err(_) => c.errors += 1,
                }
            }
        }
        Err(_) => c.errors += 1,
    }
    note(r.verify(&mut |_, _| {}).is_ok(), &mut c);
    c
}

/// The small valid journal that edits and patches start from.
pub fn seed_journal() -> Option<Vec<u8>> {
    rle_decode(include_bytes!("../seeds/small_journal.rle"))
}

/// Run-length encoding: `0 len (u16 LE) bytes[len]` literals and `1 byte count (u32 LE)`
/// runs.
pub fn rle_encode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut literal: Vec<u8> = Vec::new();
    let flush = |literal: &mut Vec<u8>, out: &mut Vec<u8>| {
        for piece in literal.chunks(usize::from(u16::MAX)) {
            out.push(0);
            out.extend_from_slice(&(piece.len() as u16).to_le_bytes());
            out.extend_from_slice(piece);
        }
        literal.clear();
    };
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..].iter().take_while(|b| **b == bytes[i]).count();
        if run >= 8 {
            flush(&mut literal, &mut out);
            out.push(1);
            out.push(bytes[i]);
            out.extend_from_slice(&(run as u32).to_le_bytes());
        } else {
            literal.extend_from_slice(&bytes[i..i + run]);
        }
        i += run;
    }
    flush(&mut literal, &mut out);
    out
}

/// Inverse of [`rle_encode`]; `None` for bytes it did not write.
pub fn rle_decode(mut rle: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = rle.split_first() {
        match (tag, rest) {
            (0, [a, b, rest @ ..]) => {
                let n = usize::from(u16::from_le_bytes([*a, *b]));
                out.extend_from_slice(rest.get(..n)?);
                rle = &rest[n..];
            }
            (1, [byte, a, b, c, d, rest @ ..]) => {
                let n = u32::from_le_bytes([*a, *b, *c, *d]) as usize;
                out.resize(out.len() + n, *byte);
                rle = rest;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Opens the journal that `control` and `rest` describe (see the module docs) and reads
/// everything; `scratch` is the file used for read-only opens. `None` when the input describes
/// nothing to open (an edit redb refused) or the journal did not open: a typed error, fine.
pub fn open_and_read(control: u8, rest: &[u8], scratch: &Path) -> Option<ReadCounts> {
    let bytes = match control & 3 {
        0 => rest.to_vec(),
        // An edit redb refused (a key too large, say): nothing to test.
        1 => edited(&seed_journal()?, rest).ok()?,
        _ => patched(&seed_journal()?, rest),
    };
    let verify = control & 4 == 0;
    if control & 8 == 0 {
        let journal = builder()
            .create(false)
            .verify_on_open(verify)
            .open_with_backend(storage_with(&bytes).ok()?, "fuzz")
            .ok()?;
        Some(read_everything(&journal))
    } else {
        std::fs::write(scratch, &bytes).ok()?;
        let reader = if verify {
            JournalReader::open_read_only_checked(scratch).map(|(r, _)| r)
        } else {
            JournalReader::open_read_only(scratch)
        };
        Some(read_everything(&reader.ok()?))
    }
}

/// `journal` with `patches` applied.
pub fn patched(journal: &[u8], mut patches: &[u8]) -> Vec<u8> {
    let mut file = journal.to_vec();
    while let [a, b, c, len, tail @ ..] = patches {
        let n = usize::from(*len).min(tail.len());
        let (bytes, next) = tail.split_at(n);
        patches = next;
        if file.is_empty() {
            break;
        }
        let at = u32::from_le_bytes([*a, *b, *c, 0]) as usize % file.len();
        if n == 0 {
            file.truncate(at);
        } else {
            let end = (at + n).min(file.len());
            file[at..end].copy_from_slice(&bytes[..end - at]);
        }
    }
    file
}

const TABLES: [&str; 5] = [
    "stateline.meta",
    "stateline.entities",
    "stateline.chunks",
    "stateline.snapshots",
    "stateline.generations",
];

/// The bytes of `journal` after applying `edits` through redb.
pub fn edited(journal: &[u8], mut edits: &[u8]) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let storage = storage_with(journal)?;
    {
        let db = redb::Database::builder().create_with_backend(storage.clone())?;
        let logs: Vec<String> = {
            let rtx = db.begin_read()?;
            let names = rtx
                .list_tables()?
                .map(|h| h.name().to_string())
                .filter(|n| n.starts_with("stateline.log."))
                .collect();
            names
        };
        let wtx = db.begin_write()?;
        while let [op, table, index, len, tail @ ..] = edits {
            let n = usize::from(*len).min(tail.len());
            let (bytes, next) = tail.split_at(n);
            edits = next;
            let edit = Edit {
                kind: op & 3,
                reseal: op & 4 != 0,
                index: usize::from(*index),
                bytes,
            };
            match table % 6 {
                0 => {
                    let mut t = wtx.open_table(TableDefinition::<&str, &[u8]>::new(TABLES[0]))?;
                    edit_str_table(&mut t, &edit)?;
                }
                i @ 1..=3 => {
                    let def = TableDefinition::<&[u8], &[u8]>::new(TABLES[usize::from(i)]);
                    let mut t = wtx.open_table(def)?;
                    edit_bytes_table(&mut t, &edit, i == 1)?;
                }
                4 => {
                    let mut t = wtx.open_table(TableDefinition::<u64, &[u8]>::new(TABLES[4]))?;
                    edit_u64_table(&mut t, &edit)?;
                }
                _ => {
                    if logs.is_empty() {
                        continue;
                    }
                    let name = &logs[usize::from(table / 6) % logs.len()];
                    let mut t = wtx.open_table(TableDefinition::<u64, &[u8]>::new(name))?;
                    edit_u64_table(&mut t, &edit)?;
                }
            }
        }
        wtx.commit()?;
    }
    Ok(storage_bytes(&storage)?)
}

struct Edit<'a> {
    kind: u8,
    reseal: bool,
    index: usize,
    bytes: &'a [u8],
}

impl Edit<'_> {
    /// The new value of a row whose value was `old`, under `key` (for keyed seals).
    fn apply(&self, key: &[u8], old: &[u8]) -> Vec<u8> {
        let mut v = match self.kind {
            0 | 2 if self.reseal => return seal_keyed(key, self.bytes),
            0 | 2 => self.bytes.to_vec(),
            _ => {
                let mut v = old.to_vec();
                for (i, b) in self.bytes.iter().enumerate() {
                    if let Some(x) = v.get_mut(4 + i) {
                        *x ^= b;
                    }
                }
                v
            }
        };
        if self.reseal && v.len() >= 4 {
            v = seal_keyed(key, &v[4..]);
        }
        v
    }

    /// Key and value bytes of an inserted row.
    fn split_insert(&self) -> (&[u8], &[u8]) {
        self.bytes.split_at(self.bytes.len() / 2)
    }
}

type DynResult = Result<(), Box<dyn std::error::Error>>;

fn edit_bytes_table(t: &mut redb::Table<&[u8], &[u8]>, e: &Edit<'_>, keyed: bool) -> DynResult {
    if e.kind == 2 {
        let (k, v) = e.split_insert();
        let seal_key = if keyed { k } else { &[][..] };
        let value = if e.reseal {
            seal_keyed(seal_key, v)
        } else {
            v.to_vec()
        };
        t.insert(k, value.as_slice())?;
        return Ok(());
    }
    let rows = t.len()? as usize;
    if rows == 0 {
        return Ok(());
    }
    let (k, v) = match t.iter()?.nth(e.index % rows) {
        Some(row) => {
            let (k, v) = row?;
            (k.value().to_vec(), v.value().to_vec())
        }
        None => return Ok(()),
    };
    if e.kind == 1 {
        t.remove(k.as_slice())?;
    } else {
        let seal_key = if keyed { k.as_slice() } else { &[][..] };
        t.insert(k.as_slice(), e.apply(seal_key, &v).as_slice())?;
    }
    Ok(())
}

fn edit_str_table(t: &mut redb::Table<&str, &[u8]>, e: &Edit<'_>) -> DynResult {
    if e.kind == 2 {
        let (k, v) = e.split_insert();
        let value = if e.reseal {
            seal_keyed(&[], v)
        } else {
            v.to_vec()
        };
        t.insert(String::from_utf8_lossy(k).as_ref(), value.as_slice())?;
        return Ok(());
    }
    let rows = t.len()? as usize;
    if rows == 0 {
        return Ok(());
    }
    let (k, v) = match t.iter()?.nth(e.index % rows) {
        Some(row) => {
            let (k, v) = row?;
            (k.value().to_string(), v.value().to_vec())
        }
        None => return Ok(()),
    };
    if e.kind == 1 {
        t.remove(k.as_str())?;
    } else {
        t.insert(k.as_str(), e.apply(&[], &v).as_slice())?;
    }
    Ok(())
}

fn edit_u64_table(t: &mut redb::Table<u64, &[u8]>, e: &Edit<'_>) -> DynResult {
    if e.kind == 2 {
        let (k, v) = e.split_insert();
        let mut key = [0u8; 8];
        for (d, s) in key.iter_mut().zip(k) {
            *d = *s;
        }
        let value = if e.reseal {
            seal_keyed(&[], v)
        } else {
            v.to_vec()
        };
        t.insert(u64::from_be_bytes(key), value.as_slice())?;
        return Ok(());
    }
    let rows = t.len()? as usize;
    if rows == 0 {
        return Ok(());
    }
    let (k, v) = match t.iter()?.nth(e.index % rows) {
        Some(row) => {
            let (k, v) = row?;
            (k.value(), v.value().to_vec())
        }
        None => return Ok(()),
    };
    if e.kind == 1 {
        t.remove(k)?;
    } else {
        t.insert(k, e.apply(&[], &v).as_slice())?;
    }
    Ok(())
}
