//! Verification of a whole journal: every stored record decodes and is where its index says,
//! seqs are contiguous per persistence id, snapshots are not ahead of their journal, and no
//! chunk row is orphaned. Problems are collected with their location, never panicked on.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use redb::ReadableDatabase;

use crate::codec;
use crate::error::{JournalError, Result};
use crate::file::FileKind;
use crate::ids::Seq;
use crate::journal::{guard, open_error};
use crate::keys;
use crate::meta::{EntityRow, GenerationRow};
use crate::read::{read_state, JournalReader};

/// One inconsistency found by [`JournalReader::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where: table and key, or persistence id and seq.
    pub location: String,
    /// What is wrong.
    pub detail: String,
}

/// The outcome of [`JournalReader::verify`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Persistence ids checked.
    pub entities: u64,
    /// Events read and checked.
    pub events: u64,
    /// Snapshots read and checked.
    pub snapshots: u64,
    /// Chunk rows checked for orphans.
    pub chunks: u64,
    /// Everything found wrong; empty means the journal is consistent.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// Whether no problem was found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, location: impl Into<String>, detail: impl ToString) {
        self.problems.push(Problem {
            location: location.into(),
            detail: detail.to_string(),
        });
    }
}

impl JournalReader {
    /// Checks the whole journal. `progress(done, total)` is called per persistence id.
    /// Corruption is reported in the returned report; only a failure to read at all is an
    /// error.
    ///
    /// # Errors
    /// [`JournalError::Io`] or [`JournalError::Corrupted`] if the journal's metadata cannot be
    /// read.
    pub fn verify(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        guard(self.path(), || self.verify_inner(progress))
    }

    fn verify_inner(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let rtx = self.read_txn()?;
        let meta = rtx.open_table(keys::META)?;
        let state = read_state(&meta)?;
        for seg in &state.segments {
            let name = keys::segment_table_name(seg.number);
            if let Err(e) = rtx.open_table(keys::segment_table(&name)) {
                if seg.events > 0 {
                    report.problem(name, format!("log segment in state but unreadable: {e}"));
                }
            }
        }
        let gens = rtx.open_table(keys::GENERATIONS)?;
        for item in gens.range::<u64>(..)? {
            let (k, v) = item?;
            match codec::decode_meta::<GenerationRow>(v.value()) {
                Ok(g) if g.first_offset != k.value() || g.end_offset < g.first_offset => {
                    report.problem(format!("generations/{}", k.value()), "offsets inconsistent")
                }
                Ok(_) => {}
                Err(e) => report.problem(format!("generations/{}", k.value()), e),
            }
        }
        // Every entity: its events stream contiguously and decode; snapshots are sane.
        let entities = rtx.open_table(keys::ENTITIES)?;
        let mut rows: HashMap<Vec<u8>, EntityRow> = HashMap::new();
        for item in entities.range::<&[u8]>(..)? {
            let (k, v) = item?;
            let key = k.value().to_vec();
            match codec::decode_keyed::<EntityRow>(&key, v.value())
                .and_then(|row| row.check_seqs().map(|()| row))
            {
                Ok(row) => {
                    rows.insert(key, row);
                }
                Err(e) => report.problem(format!("entities/{key:?}"), e),
            }
        }
        let listed = match self.entities(None) {
            Ok(l) => l,
            Err(e) => {
                report.problem("entities", e);
                Vec::new()
            }
        };
        let total = listed.len() as u64;
        let snapshots = rtx.open_table(keys::SNAPSHOTS)?;
        for (i, summary) in listed.iter().enumerate() {
            let pid = &summary.persistence_id;
            report.entities += 1;
            let mut expect = summary.deleted_to.0 + 1;
            match self.events(pid, Seq(1), Seq(u64::MAX), u64::MAX) {
                Ok(iter) => {
                    for rec in iter {
                        match rec {
                            Ok(rec) => {
                                report.events += 1;
                                if rec.seq.0 != expect {
                                    report.problem(
                                        format!("{pid} seq {expect}"),
                                        format!("found seq {} (gap or duplicate)", rec.seq),
                                    );
                                }
                                expect = rec.seq.0 + 1;
                            }
                            Err(e) => {
                                report.problem(format!("{pid}"), e);
                                break;
                            }
                        }
                    }
                }
                Err(e) => report.problem(format!("{pid}"), e),
            }
            if expect != summary.highest_seq.0 + 1 {
                report.problem(
                    format!("{pid}"),
                    format!(
                        "events end at seq {}, highest seq is {}",
                        expect - 1,
                        summary.highest_seq
                    ),
                );
            }
            let ek = keys::entity_key(pid, self.key_groups());
            let lo = keys::snapshot_key(&ek, Seq(0));
            let hi = keys::snapshot_key(&ek, Seq(u64::MAX));
            for item in snapshots.range(lo.as_slice()..=hi.as_slice())? {
                let (k, v) = item?;
                report.snapshots += 1;
                let seq = keys::snapshot_key_seq(k.value())?;
                let loc = format!("{pid} snapshot {seq}");
                match codec::decode_snapshot(v.value()) {
                    Ok(s) if s.persistence_id != *pid || s.seq != seq => report.problem(
                        loc,
                        format!("record says {} seq {}", s.persistence_id, s.seq),
                    ),
                    Ok(_) if seq > summary.highest_seq => report.problem(
                        loc,
                        format!("ahead of the journal (highest seq {})", summary.highest_seq),
                    ),
                    Ok(_) => {}
                    Err(e) => report.problem(loc, e),
                }
            }
            progress(i as u64 + 1, total);
        }
        // Chunk rows must be referenced by their entity's row.
        let referenced: HashSet<Vec<u8>> = rows
            .iter()
            .flat_map(|(ek, row)| {
                row.chunks
                    .iter()
                    .map(move |c| keys::chunk_key(c.generation, ek, c.first_seq))
            })
            .collect();
        // During a merge, chunks of its sources that were already merged are unreferenced
        // until the merge completes and deletes them.
        let merging: Vec<u64> = state
            .merge
            .as_ref()
            .map(|m| m.sources.clone())
            .unwrap_or_default();
        let chunks = rtx.open_table(keys::CHUNKS)?;
        for item in chunks.range::<&[u8]>(..)? {
            let (k, _) = item?;
            report.chunks += 1;
            let gen = k.value().get(..8).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_be_bytes(a)
            });
            if gen.is_some_and(|g| merging.contains(&g)) {
                continue;
            }
            if !referenced.contains(k.value()) {
                report.problem(
                    format!("chunks/{:?}", k.value()),
                    "chunk not referenced by its entity",
                );
            }
        }
        Ok(report)
    }
}

impl JournalReader {
    /// [`JournalReader::open_read_only`] after checking every page checksum of the file, when
    /// no other process has it open (the check needs exclusive access; a running writer
    /// checked the file when it opened it). A read-only open alone trusts a cleanly closed
    /// file, so damage to it could read back as other data; this is what inspection tools
    /// should use. Returns the reader and whether the page check ran.
    ///
    /// # Errors
    /// As [`JournalReader::open_read_only`]; [`JournalError::Corrupted`] when the check fails.
    pub fn open_read_only_checked(path: impl AsRef<Path>) -> Result<(JournalReader, bool)> {
        let path = path.as_ref();
        let checked = match check_file_integrity(path) {
            Ok(true) => true,
            Ok(false) => {
                return Err(JournalError::corrupted(
                    path.display().to_string(),
                    "page checksums do not match (redb repaired what it could; run verify)",
                ))
            }
            Err(JournalError::Locked { .. }) => false,
            Err(e) => return Err(e),
        };
        Ok((JournalReader::open_read_only(path)?, checked))
    }
}

/// Checks every page checksum of a journal file with redb's integrity check. Needs exclusive
/// access: a journal open in another process gives [`JournalError::Locked`]. Returns whether
/// the file was intact (redb repairs what it can on the way).
///
/// # Errors
/// [`JournalError::NotAJournal`], [`JournalError::Locked`], [`JournalError::Corrupted`],
/// [`JournalError::Io`].
pub fn check_file_integrity(path: impl AsRef<Path>) -> Result<bool> {
    let path = path.as_ref();
    FileKind::require_redb(path)?;
    guard(path, || {
        let mut db = redb::Builder::new()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        Ok(db.check_integrity()?)
    })
}

/// Sizes reported by [`compact_file`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactReport {
    /// File size before, in bytes.
    pub before: u64,
    /// File size after, in bytes.
    pub after: u64,
}

/// Reclaims free space of a journal file (redb compaction). Needs exclusive access.
///
/// # Errors
/// [`JournalError::Locked`] if the journal is open elsewhere; others as
/// [`check_file_integrity`].
pub fn compact_file(path: impl AsRef<Path>) -> Result<CompactReport> {
    let path = path.as_ref();
    FileKind::require_redb(path)?;
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| JournalError::Io(e.to_string()))
    };
    let before = size(path)?;
    guard(path, || {
        let mut db = redb::Builder::new()
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open(path)
            .map_err(|e| open_error(path, e))?;
        {
            let rtx = db.begin_read()?;
            if rtx.open_table(keys::META).is_err() {
                return Err(JournalError::NotAJournal {
                    path: path.to_path_buf(),
                    detail: "a redb file without stateline metadata".into(),
                });
            }
        }
        while db.compact()? {}
        Ok(())
    })?;
    Ok(CompactReport {
        before,
        after: size(path)?,
    })
}
