//! G9: journals written by earlier builds keep opening, reading and taking appends.
//! - Format 1 (one log row per event, chunks of frames): `tests/fixtures/format-v1.redb`,
//!   written by the build before format 2.
//! - Format 2 (log rows, chunks of frames): `tests/fixtures/format-v2.redb`, written by the
//!   build before format 3.
//!
//! Opened for writing, either becomes format 3: its old segment is packed like any other, new
//! chunks are compact, and merges read old chunks into compact ones. Both fixtures were written
//! by the same program (`format-v1.rs.txt`, `format-v2.rs.txt`): 12 entities `acct|a{i}` with
//! `20 + 3i` events each (payload: the string `e{i}-{seq}`), appended interleaved in segments
//! of 64 events, so 6 segments are packed and the last events sit in an unpacked log
//! segment; then a snapshot of `a0` at seq 10, `delete_events_to(a1, 5)` and
//! `delete_entity(a2)`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use stateline_journal::*;

const ENTITIES: usize = 12;
const FIXTURE_EVENTS: u64 = 438;

fn pid(i: usize) -> PersistenceId {
    PersistenceId::parse("acct", &format!("a{i}")).unwrap()
}

fn payload(i: usize, seq: u64) -> Vec<u8> {
    rmp_serde::to_vec_named(&format!("e{i}-{seq}")).unwrap()
}

/// A copy of the fixture of format `version` in a fresh directory (opening for writing changes
/// the file).
fn copy_of_fixture(version: u32) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.redb");
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/format-v{version}.redb"));
    std::fs::copy(src, &path).unwrap();
    (dir, path)
}

/// Every entity's events are exactly those written (`highest[i]` of them), minus the deletes.
fn check_events(r: &JournalReader, highest: &[u64]) {
    for (i, &h) in highest.iter().enumerate() {
        let p = pid(i);
        assert_eq!(r.highest_seq(&p).unwrap(), Seq(h), "{p}");
        let from = match i {
            1 => 6,
            2 => h + 1,
            _ => 1,
        };
        let got: Vec<(u64, Vec<u8>)> = r
            .all_events(&p)
            .unwrap()
            .into_iter()
            .map(|e| (e.seq.0, e.payload))
            .collect();
        let want: Vec<(u64, Vec<u8>)> = (from..=h).map(|s| (s, payload(i, s))).collect();
        assert_eq!(got, want, "{p}");
    }
    let snap = r
        .load_snapshot(&pid(0), Seq(u64::MAX))
        .unwrap()
        .expect("a0's snapshot");
    assert_eq!(snap.seq, Seq(10));
    assert_eq!(snap.payload, rmp_serde::to_vec(&"snap-a0-10").unwrap());
}

/// The changelog holds every live event once, in offset order, up to `last_offset`.
fn check_changelog(r: &JournalReader, highest: &[u64], last_offset: u64) {
    let mut next = [1u64; ENTITIES];
    next[1] = 6;
    next[2] = u64::MAX;
    let mut prev = 0;
    for e in r.changelog(Offset(1)).unwrap() {
        let e = e.unwrap();
        assert!(e.offset.0 > prev, "offsets ascend");
        prev = e.offset.0;
        let i: usize = e.persistence_id.entity_id().as_str()[1..].parse().unwrap();
        assert_eq!(e.seq.0, next[i], "{} in changelog order", e.persistence_id);
        assert_eq!(e.payload, payload(i, e.seq.0));
        next[i] += 1;
    }
    assert!(prev <= last_offset);
    for (i, &h) in highest.iter().enumerate() {
        if i != 2 {
            assert_eq!(next[i], h + 1, "changelog has all of {}", pid(i));
        }
    }
}

fn fixture_highest() -> Vec<u64> {
    (0..ENTITIES).map(|i| 20 + 3 * i as u64).collect()
}

fn reads_the_same_read_only(version: u32) {
    let (_dir, path) = copy_of_fixture(version);
    let r = JournalReader::open_read_only(&path).unwrap();
    assert_eq!(r.info().format_version, version);
    assert_eq!(r.committed_offset(), Offset(FIXTURE_EVENTS));
    check_events(&r, &fixture_highest());
    check_changelog(&r, &fixture_highest(), FIXTURE_EVENTS);
    // Read-only opens change nothing.
    drop(r);
    assert_eq!(
        JournalReader::open_read_only(&path)
            .unwrap()
            .info()
            .format_version,
        version
    );
}

#[test]
fn a_format_1_journal_reads_the_same_read_only() {
    reads_the_same_read_only(1);
}

#[test]
fn a_format_2_journal_reads_the_same_read_only() {
    reads_the_same_read_only(2);
}

/// `(compact chunk rows, chunk rows of frames)` of a closed journal file.
fn chunk_encodings(path: &std::path::Path) -> (usize, usize) {
    const CHUNKS: redb::TableDefinition<&[u8], &[u8]> =
        redb::TableDefinition::new("stateline.chunks");
    use redb::{ReadableDatabase, ReadableTable};
    let db = redb::ReadOnlyDatabase::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let t = rtx.open_table(CHUNKS).unwrap();
    let compact = t
        .iter()
        .unwrap()
        .filter(|r| r.as_ref().unwrap().1.value().starts_with(&[0; 4]))
        .count();
    let all = t.iter().unwrap().count();
    (compact, all - compact)
}

/// Opens the fixture of format `version` for writing (merging generations or not), appends
/// enough to pack several segments, and checks everything reads the same before and after.
fn takes_appends_and_becomes_format_3(version: u32, merge: bool) {
    let (_dir, path) = copy_of_fixture(version);
    assert_eq!(
        chunk_encodings(&path).0,
        0,
        "the fixture has no compact chunks"
    );
    let mut highest = fixture_highest();
    {
        let j = Journal::builder()
            .segment_events(64)
            .pack_step_events(16)
            .merge_generations(merge)
            .open(&path)
            .unwrap();
        assert_eq!(j.info().format_version, FORMAT_VERSION);
        assert_eq!(FORMAT_VERSION, 3);
        // Before any append: the old tail reads as before.
        check_events(&j.reader(), &highest);
        // Appends in batches of 1..=3 to every entity but the deleted one, enough to fill and
        // pack several segments after the old one.
        for round in 0..20u64 {
            for (i, h) in highest.iter_mut().enumerate() {
                if i == 2 {
                    continue;
                }
                let n = (round + i as u64) % 3 + 1;
                let evs = (*h + 1..=*h + n)
                    .map(|s| NewEvent::new(Manifest::new("Ev", 1), payload(i, s)))
                    .collect();
                j.append_blocking(&pid(i), Seq(*h + 1), evs).unwrap();
                *h += n;
            }
            if round == 3 {
                // Mid-way: old packed chunks, the old segment (maybe half packed), new
                // compact chunks and new log rows all read together.
                check_events(&j.reader(), &highest);
            }
        }
        check_events(&j.reader(), &highest);
        j.flush_blocking(true).unwrap();
        check_events(&j.reader(), &highest);
    }
    let appended: u64 = highest.iter().sum::<u64>() - fixture_highest().iter().sum::<u64>();
    let last = FIXTURE_EVENTS + appended;
    // New packs are compact; without merging, the old chunks of frames stay as they are, and
    // merging rewrites them all (the old generations are the oldest tier).
    let (compact, frames) = chunk_encodings(&path);
    assert!(compact > 0, "{compact} compact chunks");
    if merge {
        assert_eq!(frames, 0, "chunks of frames left after merging");
    } else {
        assert!(frames > 0, "{frames} chunks of frames");
    }
    // Reopened: the tail of log rows is rebuilt; everything reads the same.
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.info().format_version, 3);
    assert_eq!(j.reader().committed_offset(), Offset(last));
    check_events(&j.reader(), &highest);
    check_changelog(&j.reader(), &highest, last);
    drop(j);
    let r = JournalReader::open_read_only(&path).unwrap();
    check_events(&r, &highest);
    let report = r.verify(&mut |_, _| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn a_format_1_journal_takes_appends_packs_its_old_segment_and_becomes_format_3() {
    takes_appends_and_becomes_format_3(1, false);
}

#[test]
fn a_format_2_journal_takes_appends_packs_its_old_segment_and_becomes_format_3() {
    takes_appends_and_becomes_format_3(2, false);
}

#[test]
fn old_chunks_of_frames_merge_into_compact_chunks() {
    for version in [1, 2] {
        takes_appends_and_becomes_format_3(version, true);
    }
}
