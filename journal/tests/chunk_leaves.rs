//! Chunk rows cut to fill redb's leaves (`JournalBuilder::fill_chunk_leaves`): every event
//! still reads back once and in order (per entity, from any seq, and in the changelog), also
//! across reopens that switch the option, after deletes and through generation merges; the
//! layout does waste less of the chunk table's pages, without cutting frames too large to fill
//! a leaf one by one; and reading a run of one generation's chunks with one range scan reports
//! a row the entity does not reference, or one it does that is missing, as corruption.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use stateline_journal::*;

const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("stateline.chunks");
const GENERATIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("stateline.generations");

/// Events per segment: small, so that a test packs several generations.
const SEGMENT: u64 = 2_000;

fn pid(i: usize) -> PersistenceId {
    PersistenceId::parse("account", &format!("acc-{i:04}")).unwrap()
}

/// A deterministic payload of `len` bytes for event `seq` of entity `i`.
fn payload(i: usize, seq: u64, len: usize) -> Vec<u8> {
    let mut p = format!("{i}:{seq}:").into_bytes();
    let mut x = (i as u64) << 32 ^ seq;
    while p.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        p.push(b'a' + (x >> 59) as u8);
    }
    p.truncate(len.max(1));
    p
}

fn open(path: &Path, fill: bool, merge: bool) -> Journal {
    open_with(path, fill, merge, 64 << 20)
}

fn open_with(path: &Path, fill: bool, merge: bool, cache_bytes: usize) -> Journal {
    Journal::builder()
        .pack_cache_bytes(cache_bytes)
        .segment_events(SEGMENT)
        .pack_step_events(300)
        .fill_chunk_leaves(fill)
        .merge_generations(merge)
        .durability(Durability::None)
        .open(path)
        .unwrap()
}

/// What each entity must hold: its highest seq, and its live events `seq → payload`.
type Model = BTreeMap<usize, (u64, BTreeMap<u64, Vec<u8>>)>;

/// Appends `events` events, interleaved over entities of very different sizes per segment:
/// a few events, about a leaf's worth, several leaves' worth, and one with events larger than
/// a leaf.
async fn write(j: &Journal, model: &mut Model, events: u64, round: u64) {
    for n in 0..events {
        // Entity 0 gets a big event now and then; 1..=4 are hot; the rest share what is left.
        let i = match n % 10 {
            0 if n % 50 == 0 => 0,
            0..=3 => 1 + (n as usize / 10 + round as usize) % 4,
            _ => 5 + (n as usize * 7 + round as usize) % 30,
        };
        let len = if i == 0 {
            6_000
        } else {
            80 + (n as usize * 13) % 220
        };
        let (highest, m) = model.entry(i).or_default();
        *highest += 1;
        let bytes = payload(i, *highest, len);
        let ev = NewEvent::new(Manifest::new("Put", 1), bytes.clone());
        j.append(&pid(i), Seq(*highest), vec![ev]).await.unwrap();
        m.insert(*highest, bytes);
    }
}

fn check(j: &JournalReader, model: &Model) {
    for (&i, (highest, m)) in model {
        assert_eq!(j.highest_seq(&pid(i)).unwrap(), Seq(*highest), "entity {i}");
        let want: Vec<(u64, &[u8])> = m.iter().map(|(s, p)| (*s, p.as_slice())).collect();
        let got: Vec<(u64, Vec<u8>)> = j
            .events(&pid(i), Seq(1), Seq(u64::MAX), u64::MAX)
            .unwrap()
            .map(|r| r.map(|e| (e.seq.0, e.payload)))
            .collect::<Result<_>>()
            .unwrap();
        let got: Vec<(u64, &[u8])> = got.iter().map(|(s, p)| (*s, p.as_slice())).collect();
        assert_eq!(got, want, "events of entity {i}");
        // From the middle, visited in place, with a count.
        if let Some(&(mid, _)) = want.get(want.len() / 2) {
            let mut visited = Vec::new();
            j.events(&pid(i), Seq(mid), Seq(u64::MAX), 5)
                .unwrap()
                .for_each_ref(|e| {
                    visited.push((e.seq.0, e.payload.to_vec()));
                    Ok::<(), JournalError>(())
                })
                .unwrap();
            let expect: Vec<(u64, Vec<u8>)> = want
                .iter()
                .filter(|(s, _)| *s >= mid)
                .take(5)
                .map(|(s, p)| (*s, p.to_vec()))
                .collect();
            assert_eq!(visited, expect, "entity {i} from seq {mid}");
        }
    }
    // The changelog has every live event once, in offset order.
    let mut seen: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    let mut last = 0;
    for r in j.changelog(Offset(1)).unwrap() {
        let e = r.unwrap();
        assert!(e.offset.0 > last, "changelog out of offset order");
        last = e.offset.0;
        let id = e.persistence_id.entity_id().to_string();
        let i: usize = id["acc-".len()..].parse().unwrap();
        seen.entry(i).or_default().push(e.seq.0);
    }
    for (&i, (_, m)) in model {
        let want: Vec<u64> = m.keys().copied().collect();
        assert_eq!(
            seen.remove(&i).unwrap_or_default(),
            want,
            "changelog of entity {i}"
        );
    }
}

#[tokio::test]
async fn every_event_reads_back_once_and_in_order_whether_chunks_fill_leaves_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    let mut model = Model::new();
    // Each reopen switches the option: a file holds chunks cut both ways. The last round packs
    // without the event cache (every event read back from its log row).
    for (round, (fill, cache)) in [(true, 64 << 20), (false, 64 << 20), (true, 0)]
        .into_iter()
        .enumerate()
    {
        let j = open_with(&path, fill, false, cache);
        check(&j, &model);
        write(&j, &mut model, 3 * SEGMENT + 123, round as u64).await;
        j.flush(true).await.unwrap();
        check(&j, &model);
        // Deletes inside packed, filled chunks: reads start after them, packing skips them.
        let hot = pid(1 + round % 4);
        let (_, m) = model.get_mut(&(1 + round % 4)).unwrap();
        let to = m.keys().nth(m.len() / 3).copied().unwrap();
        j.delete_events_to(&hot, Seq(to)).await.unwrap();
        m.retain(|s, _| *s > to);
        write(&j, &mut model, SEGMENT, round as u64 + 7).await;
        j.flush(true).await.unwrap();
        check(&j, &model);
    }
}

#[tokio::test]
async fn generations_packed_with_filled_leaves_merge_into_whole_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    let mut model = Model::new();
    let j = open(&path, true, true);
    // Enough segments for a merge of four generations (and the start of a second tier).
    write(&j, &mut model, 9 * SEGMENT, 0).await;
    j.flush(true).await.unwrap();
    check(&j, &model);
    drop(j);
    {
        let db = redb::Database::open(&path).unwrap();
        let rtx = db.begin_read().unwrap();
        let gens = rtx.open_table(GENERATIONS).unwrap().len().unwrap();
        assert!(
            gens < 8,
            "eight or more packed segments, {gens} generations: nothing merged"
        );
        // Every packed generation has been merged here. Packed with filled leaves, the hot
        // entity 1 had a dozen or more leaf-sized chunks per generation; merged, it has a few
        // chunks of up to `max_chunk_bytes` per generation: merging does not fill.
        let t = rtx.open_table(CHUNKS).unwrap();
        let mut per_generation: BTreeMap<u64, usize> = BTreeMap::new();
        for row in t.iter().unwrap() {
            let key = row.unwrap().0.value().to_vec();
            if key.windows(8).any(|w| w == b"acc-0001") {
                let g = u64::from_be_bytes(key[..8].try_into().unwrap());
                *per_generation.entry(g).or_default() += 1;
            }
        }
        assert!(
            !per_generation.is_empty() && per_generation.values().all(|&n| n <= 4),
            "entity 1's chunks per generation: {per_generation:?}"
        );
    }
    let j = open(&path, true, true);
    check(&j, &model);
}

/// `(fragmented bytes, rows)` of the chunks table of a closed journal file.
fn chunk_table_stats(path: &Path) -> (u64, usize) {
    let db = redb::Database::open(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let t = rtx.open_table(CHUNKS).unwrap();
    (
        t.stats().unwrap().fragmented_bytes(),
        t.iter().unwrap().count(),
    )
}

/// Chunk table `(fragmented bytes, rows)` after 20 segments of 280 events over 10 entities
/// (28 per entity and segment) of `payload_len`-byte payloads, without and with filling.
async fn layouts(payload_len: usize) -> [(u64, usize); 2] {
    let mut out = [(0, 0); 2];
    for (slot, fill) in out.iter_mut().zip([false, true]) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.redb");
        let j = Journal::builder()
            .segment_events(280)
            .fill_chunk_leaves(fill)
            .durability(Durability::None)
            .open(&path)
            .unwrap();
        let mut seqs = [0u64; 10];
        for n in 0..280 * 20 {
            let i = n % 10;
            seqs[i] += 1;
            let bytes = payload(i, seqs[i], payload_len);
            let ev = NewEvent::new(Manifest::new("Put", 1), bytes);
            j.append(&pid(i), Seq(seqs[i]), vec![ev]).await.unwrap();
        }
        j.flush(true).await.unwrap();
        drop(j);
        *slot = chunk_table_stats(&path);
    }
    out
}

#[tokio::test]
async fn filled_leaves_waste_less_of_the_chunk_table() {
    // ~190 bytes per event in a compact chunk: about 5.3 KB per entity and segment, just too
    // large to share a 4 KiB leaf as one row, so each row takes an 8 KiB page of its own.
    let [(waste_one_row, rows_one), (waste_filled, rows_filled)] = layouts(160).await;
    assert!(rows_one >= 10 * 19 && rows_one % 10 == 0, "{rows_one} rows");
    // Cut where leaves fill: two or three pieces per entity and generation, not one per frame.
    assert!(
        rows_filled > rows_one && rows_filled <= 3 * rows_one,
        "{rows_filled} rows filled against {rows_one}"
    );
    assert!(
        waste_filled * 4 < waste_one_row,
        "fragmented bytes {waste_filled} filled against {waste_one_row} one row each"
    );
}

#[tokio::test]
async fn frames_too_large_to_fill_a_leaf_are_not_cut_one_by_one() {
    // Events of ~2.1 KB and ~3.1 KB (two cannot share a leaf; one fills one well enough) and
    // of ~6 KB (larger than a leaf): filling leaves would only cut every frame into a chunk of
    // its own, so chunks grow as without it.
    for payload_len in [2_000, 3_000, 6_000] {
        let [(_, rows_one), (_, rows_filled)] = layouts(payload_len).await;
        assert_eq!(rows_filled, rows_one, "{payload_len}-byte payloads");
    }
}

/// A journal whose entity 1 has several chunks in generation 0, after `edit` changed its chunk
/// table (given the keys of entity 1's first two chunks there) behind the journal's back.
async fn entity_1_damaged(
    edit: impl FnOnce(&mut redb::Table<&[u8], &[u8]>, [Vec<u8>; 2]),
) -> (tempfile::TempDir, Journal, Model) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    let mut model = Model::new();
    let j = open(&path, true, false);
    write(&j, &mut model, 2 * SEGMENT + 10, 0).await;
    j.flush(true).await.unwrap();
    check(&j, &model);
    drop(j);
    let db = redb::Database::open(&path).unwrap();
    let keys = {
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(CHUNKS).unwrap();
        let id = b"acc-0001";
        let mut rows = t
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value().to_vec())
            .filter(|k| k.starts_with(&0u64.to_be_bytes()) && k.windows(id.len()).any(|w| w == id));
        let first = rows.next().unwrap();
        [first, rows.next().expect("two chunks in generation 0")]
    };
    let wtx = db.begin_write().unwrap();
    edit(&mut wtx.open_table(CHUNKS).unwrap(), keys);
    wtx.commit().unwrap();
    drop(db);
    let j = open(&path, true, false);
    // Other entities read on.
    assert_eq!(j.all_events(&pid(2)).unwrap().len(), model[&2].1.len());
    (dir, j, model)
}

fn assert_corrupted(err: JournalError, says: &str) {
    assert!(matches!(err, JournalError::Corrupted { .. }), "{err:?}");
    assert!(err.to_string().contains(says), "{err}");
}

#[tokio::test]
async fn a_chunk_missing_from_a_run_is_a_typed_error() {
    let (_dir, j, _) = entity_1_damaged(|t, [_, second]| {
        t.remove(second.as_slice()).unwrap();
    })
    .await;
    let events = || j.events(&pid(1), Seq(1), Seq(u64::MAX), u64::MAX).unwrap();
    let owned = events().collect::<Result<Vec<_>>>().unwrap_err();
    assert_corrupted(owned, "chunk of generation 0 missing");
    let in_place = events().for_each_ref(|_| Ok::<(), JournalError>(()));
    assert_corrupted(in_place.unwrap_err(), "chunk of generation 0 missing");
}

#[tokio::test]
async fn a_stray_row_inside_a_run_is_a_typed_error() {
    // A row keyed between entity 1's first two chunks of generation 0 (first seq + 1), which
    // its entity row does not reference: no chunk of the entity's, so the run is damaged.
    let (_dir, j, _) = entity_1_damaged(|t, [first, second]| {
        let mut stray = first;
        let at = stray.len() - 8;
        let seq = u64::from_be_bytes(stray[at..].try_into().unwrap()) + 1;
        stray[at..].copy_from_slice(&seq.to_be_bytes());
        assert!(
            stray < second,
            "entity 1's first chunk holds one event only"
        );
        t.insert(stray.as_slice(), &b"not a chunk"[..]).unwrap();
    })
    .await;
    let in_place = j
        .events(&pid(1), Seq(1), Seq(u64::MAX), u64::MAX)
        .unwrap()
        .for_each_ref(|_| Ok::<(), JournalError>(()));
    assert_corrupted(in_place.unwrap_err(), "is not in the entity row");
}
