//! Conformance suite for the journal and snapshot store, modeled on Akka's persistence TCK:
//! replay ranges and max counts, highest seq after deletes, delete-to semantics, atomic batches,
//! conflicts and rejections that leave neighbours intact, changelog order, snapshots (newest
//! at/below a seq, keep-N, criteria deletes), and format/config checks on open.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use stateline_journal::*;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    j: Journal,
}

fn fixture_with(b: JournalBuilder) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    let j = b.open(&path).unwrap();
    Fixture { _dir: dir, path, j }
}

fn fixture() -> Fixture {
    fixture_with(Journal::builder())
}

fn pid(id: &str) -> PersistenceId {
    PersistenceId::parse("account", id).unwrap()
}

fn ev(tag: &str) -> NewEvent {
    NewEvent::new(Manifest::new("Tagged", 1), tag.as_bytes().to_vec())
}

fn evs(n: usize, prefix: &str) -> Vec<NewEvent> {
    (0..n).map(|i| ev(&format!("{prefix}{i}"))).collect()
}

/// Appends `n` single-event commands to `p`, starting after its highest seq.
async fn write_n(j: &Journal, p: &PersistenceId, n: u64) {
    let h = j.highest_seq(p).unwrap().0;
    for i in 0..n {
        j.append(p, Seq(h + i + 1), vec![ev(&format!("e{}", h + i + 1))])
            .await
            .unwrap();
    }
}

fn seqs(j: &JournalReader, p: &PersistenceId, from: u64, to: u64, max: u64) -> Vec<u64> {
    j.events(p, Seq(from), Seq(to), max)
        .unwrap()
        .map(|r| r.unwrap().seq.0)
        .collect()
}

fn payloads(j: &JournalReader, p: &PersistenceId) -> Vec<String> {
    j.all_events(p)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.payload).unwrap())
        .collect()
}

// ---- journal: replay ----

#[tokio::test]
async fn replays_all_events_in_order() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 5).await;
    assert_eq!(seqs(&f.j, &a, 1, u64::MAX, u64::MAX), vec![1, 2, 3, 4, 5]);
    assert_eq!(payloads(&f.j, &a), vec!["e1", "e2", "e3", "e4", "e5"]);
}

#[tokio::test]
async fn replays_from_a_seq() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 5).await;
    assert_eq!(seqs(&f.j, &a, 3, u64::MAX, u64::MAX), vec![3, 4, 5]);
}

#[tokio::test]
async fn replays_up_to_a_seq() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 5).await;
    assert_eq!(seqs(&f.j, &a, 1, 3, u64::MAX), vec![1, 2, 3]);
    assert_eq!(seqs(&f.j, &a, 2, 3, u64::MAX), vec![2, 3]);
}

#[tokio::test]
async fn replays_at_most_max_events() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 5).await;
    assert_eq!(seqs(&f.j, &a, 1, u64::MAX, 3), vec![1, 2, 3]);
    assert_eq!(seqs(&f.j, &a, 2, 3, 0), Vec::<u64>::new());
    assert_eq!(seqs(&f.j, &a, 2, 5, 1), vec![2]);
}

#[tokio::test]
async fn replays_nothing_for_an_empty_range_or_unknown_id() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 3).await;
    assert!(seqs(&f.j, &a, 3, 2, u64::MAX).is_empty());
    assert!(seqs(&f.j, &a, 4, u64::MAX, u64::MAX).is_empty());
    assert!(seqs(&f.j, &pid("nobody"), 1, u64::MAX, u64::MAX).is_empty());
}

#[tokio::test]
async fn keeps_persistence_ids_apart() {
    let f = fixture();
    let (a, b) = (pid("a"), pid("b"));
    write_n(&f.j, &a, 3).await;
    write_n(&f.j, &b, 2).await;
    assert_eq!(seqs(&f.j, &a, 1, u64::MAX, u64::MAX), vec![1, 2, 3]);
    assert_eq!(seqs(&f.j, &b, 1, u64::MAX, u64::MAX), vec![1, 2]);
    // Same id, another entity type: another persistence id.
    let other = PersistenceId::parse("order", "a").unwrap();
    assert_eq!(f.j.highest_seq(&other).unwrap(), Seq(0));
}

#[tokio::test]
async fn stores_the_envelope_fields() {
    let f = fixture();
    let a = pid("a");
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    let ack =
        f.j.append(
            &a,
            Seq(1),
            vec![ev("x"), NewEvent::new(Manifest::new("Other", 3), vec![9])],
        )
        .await
        .unwrap();
    let got = f.j.all_events(&a).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].offset, ack.first_offset);
    assert_eq!(got[1].offset, ack.last_offset);
    assert_eq!(got[1].manifest, Manifest::new("Other", 3));
    assert_eq!(got[1].payload, vec![9]);
    assert_ne!(got[0].event_id, got[1].event_id);
    assert!(got[0].timestamp >= before);
    assert_eq!(got[0].persistence_id, a);
}

#[test]
fn visiting_in_place_yields_what_the_iterator_yields_and_stops_at_an_error() {
    // Packed chunks, an unpacked tail, and manifests that change along the history.
    let f = fixture_with(Journal::builder().segment_events(8).pack_step_events(2));
    let a = pid("a");
    for i in 0..30u32 {
        let e = NewEvent::new(
            Manifest::new(format!("T{}", i / 7), i % 2),
            vec![i as u8; 3],
        );
        f.j.append_blocking(&a, Seq(u64::from(i) + 1), vec![e])
            .unwrap();
    }
    f.j.flush_blocking(true).unwrap();
    for (from, to, max) in [
        (1, u64::MAX, u64::MAX),
        (5, 21, u64::MAX),
        (9, 30, 4),
        (31, 40, 9),
    ] {
        let owned: Vec<EventRecord> =
            f.j.events(&a, Seq(from), Seq(to), max)
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
        let mut visited = Vec::new();
        f.j.events(&a, Seq(from), Seq(to), max)
            .unwrap()
            .for_each_ref(|e| {
                visited.push(e.to_record());
                Ok::<(), JournalError>(())
            })
            .unwrap();
        assert_eq!(visited, owned, "{from}..={to} max {max}");
        for e in &owned {
            // What was appended: a manifest's name and version each change along the way.
            let i = (e.seq.0 - 1) as u32;
            assert_eq!(
                e.manifest,
                Manifest::new(format!("T{}", i / 7), i % 2),
                "{}",
                e.seq
            );
            assert_eq!(e.payload, vec![i as u8; 3]);
        }
    }
    // Mixed: a few items iterated, the rest visited.
    let mut it = f.j.events(&a, Seq(1), Seq(u64::MAX), u64::MAX).unwrap();
    let first: Vec<u64> = it.by_ref().take(3).map(|r| r.unwrap().seq.0).collect();
    let mut rest = Vec::new();
    it.for_each_ref(|e| {
        rest.push(e.seq.0);
        Ok::<(), JournalError>(())
    })
    .unwrap();
    assert_eq!(first, vec![1, 2, 3]);
    assert_eq!(rest, (4..=30).collect::<Vec<_>>());
    // The visitor's error ends the visit.
    #[derive(Debug)]
    enum Stop {
        At(u64),
        Journal(JournalError),
    }
    impl From<JournalError> for Stop {
        fn from(e: JournalError) -> Self {
            Stop::Journal(e)
        }
    }
    let mut seen = 0;
    let r =
        f.j.events(&a, Seq(1), Seq(u64::MAX), u64::MAX)
            .unwrap()
            .for_each_ref(|e| {
                seen += 1;
                if e.seq.0 == 12 {
                    return Err(Stop::At(12));
                }
                Ok(())
            });
    match r {
        Err(Stop::At(12)) => {}
        Err(Stop::Journal(e)) => panic!("journal error {e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(seen, 12);
}

/// Packs one entity's 6 events into two chunks (seqs 1-3 in generation 0, 4-6 in generation 1)
/// and damages the second chunk's last byte (through redb, so the file itself stays sound):
/// only the journal's checksum can tell.
fn a_damaged_chunk_from_the_fourth_event() -> (Fixture, PersistenceId) {
    let f = fixture_with(Journal::builder().segment_events(3));
    let a = pid("a");
    f.j.append_blocking(&a, Seq(1), evs(3, "e")).unwrap();
    f.j.append_blocking(&a, Seq(4), evs(3, "e")).unwrap();
    // A third segment's append seals the second, which the flush then packs.
    f.j.append_blocking(&pid("b"), Seq(1), evs(1, "b")).unwrap();
    f.j.flush_blocking(true).unwrap();
    let Fixture { _dir, path, j } = f;
    drop(j);
    {
        const CHUNKS: redb::TableDefinition<&[u8], &[u8]> =
            redb::TableDefinition::new("stateline.chunks");
        let db = redb::Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(CHUNKS).unwrap();
            let (key, mut row) = {
                let it = redb::ReadableTable::range::<&[u8]>(&t, ..).unwrap();
                let mut rows = it.map(|r| r.unwrap());
                let (k, v) = rows
                    .find(|(k, _)| k.value().starts_with(&1u64.to_be_bytes()))
                    .expect("a chunk of generation 1");
                (k.value().to_vec(), v.value().to_vec())
            };
            *row.last_mut().unwrap() ^= 0x5a;
            t.insert(key.as_slice(), row.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let j = Journal::open(&path).unwrap();
    (Fixture { _dir, path, j }, a)
}

#[test]
fn visiting_in_place_stops_at_the_count_and_after_an_iterator_error() {
    let (f, a) = a_damaged_chunk_from_the_fourth_event();
    // The count is reached before the damaged event is decoded.
    let mut seen = Vec::new();
    f.j.events(&a, Seq(1), Seq(u64::MAX), 3)
        .unwrap()
        .for_each_ref(|e| {
            seen.push(e.seq.0);
            Ok::<(), JournalError>(())
        })
        .unwrap();
    assert_eq!(seen, vec![1, 2, 3]);
    // Without a count the damage is a typed error, after the events before it.
    let mut seen = Vec::new();
    let r =
        f.j.events(&a, Seq(1), Seq(u64::MAX), u64::MAX)
            .unwrap()
            .for_each_ref(|e| {
                seen.push(e.seq.0);
                Ok::<(), JournalError>(())
            });
    assert!(matches!(r, Err(JournalError::Corrupted { .. })), "{r:?}");
    assert_eq!(seen, vec![1, 2, 3]);
    // Once the iterator has reported the error, nothing more is visited.
    let mut it = f.j.events(&a, Seq(1), Seq(u64::MAX), u64::MAX).unwrap();
    let before: Vec<u64> = it.by_ref().take(3).map(|e| e.unwrap().seq.0).collect();
    assert_eq!(before, vec![1, 2, 3]);
    assert!(matches!(
        it.next(),
        Some(Err(JournalError::Corrupted { .. }))
    ));
    let mut seen = Vec::new();
    it.for_each_ref(|e| {
        seen.push(e.seq.0);
        Ok::<(), JournalError>(())
    })
    .unwrap();
    assert!(seen.is_empty(), "{seen:?}");
}

#[test]
fn a_panic_in_the_visitor_is_the_callers_not_a_journal_error() {
    let f = fixture();
    let a = pid("a");
    f.j.append_blocking(&a, Seq(1), evs(2, "e")).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        f.j.events(&a, Seq(1), Seq(u64::MAX), u64::MAX)
            .unwrap()
            .for_each_ref(|_| -> Result<(), JournalError> { panic!("a bug in the visitor") })
    }));
    let payload = r.expect_err("the panic goes on unwinding");
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"a bug in the visitor")
    );
    // The journal is unaffected.
    assert_eq!(f.j.all_events(&a).unwrap().len(), 2);
}

#[test]
fn a_missing_log_row_is_damage_not_a_shorter_history() {
    let f = fixture_with(Journal::builder().segment_events(1_000_000));
    let a = pid("a");
    // Three commits of 200 events of ~60 bytes: a few log rows each.
    for c in 0..3u64 {
        f.j.append_blocking(&a, Seq(c * 200 + 1), evs(200, "payload-of-some-length-"))
            .unwrap();
    }
    let Fixture { _dir, path, j } = f;
    drop(j);
    with_first_log_table(&path, |t| {
        let keys: Vec<u64> = redb::ReadableTable::range::<u64>(t, ..)
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect();
        assert!(keys.len() >= 6, "{keys:?}");
        t.remove(keys[keys.len() / 2]).unwrap();
    });
    let err = Journal::open(&path).unwrap_err();
    assert!(matches!(err, JournalError::Corrupted { .. }), "{err}");
    let err = JournalReader::open_read_only(&path).unwrap_err();
    assert!(matches!(err, JournalError::Corrupted { .. }), "{err}");
}

#[test]
fn timestamps_follow_the_commit_order() {
    // The writer stamps each transaction's events, so timestamps never go down along the
    // changelog, whichever caller encoded its events first.
    let f = fixture();
    std::thread::scope(|s| {
        for t in 0..8 {
            let j = f.j.clone();
            s.spawn(move || {
                let p = pid(&format!("t{t}"));
                for i in 0..50u64 {
                    j.append_blocking(&p, Seq(i + 1), vec![ev("x")]).unwrap();
                }
            });
        }
    });
    let stamps: Vec<_> =
        f.j.changelog(Offset(1))
            .unwrap()
            .map(|r| r.unwrap().timestamp)
            .collect();
    assert_eq!(stamps.len(), 400);
    assert!(
        stamps.windows(2).all(|w| w[0] <= w[1]),
        "timestamps go down"
    );
}

// ---- journal: highest seq and deletes ----

#[tokio::test]
async fn highest_seq_follows_appends() {
    let f = fixture();
    let a = pid("a");
    assert_eq!(f.j.highest_seq(&a).unwrap(), Seq(0));
    write_n(&f.j, &a, 4).await;
    assert_eq!(f.j.highest_seq(&a).unwrap(), Seq(4));
}

#[tokio::test]
async fn highest_seq_survives_deleting_all_events() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 4).await;
    assert_eq!(f.j.delete_events_to(&a, Seq(4)).await.unwrap(), Seq(4));
    assert_eq!(f.j.highest_seq(&a).unwrap(), Seq(4));
    assert!(f.j.all_events(&a).unwrap().is_empty());
}

#[tokio::test]
async fn delete_to_hides_only_the_covered_events() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 5).await;
    f.j.delete_events_to(&a, Seq(3)).await.unwrap();
    assert_eq!(seqs(&f.j, &a, 1, u64::MAX, u64::MAX), vec![4, 5]);
    assert_eq!(seqs(&f.j, &a, 2, 4, u64::MAX), vec![4]);
    // Deleting less than already deleted changes nothing.
    assert_eq!(f.j.delete_events_to(&a, Seq(1)).await.unwrap(), Seq(3));
    assert_eq!(seqs(&f.j, &a, 1, u64::MAX, u64::MAX), vec![4, 5]);
}

#[tokio::test]
async fn delete_to_beyond_highest_is_capped() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 2).await;
    assert_eq!(f.j.delete_events_to(&a, Seq(100)).await.unwrap(), Seq(2));
    // The next seq is still 3: seqs are never reused, none are skipped.
    f.j.append(&a, Seq(3), vec![ev("after")]).await.unwrap();
    assert_eq!(seqs(&f.j, &a, 1, u64::MAX, u64::MAX), vec![3]);
}

#[tokio::test]
async fn delete_entity_removes_everything_but_keeps_seqs_unique() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 3).await;
    f.j.save_snapshot(&a, Seq(2), Manifest::new("S", 1), vec![1])
        .await
        .unwrap();
    f.j.delete_entity(&a).await.unwrap();
    assert!(f.j.all_events(&a).unwrap().is_empty());
    assert!(f.j.load_snapshot(&a, Seq(u64::MAX)).unwrap().is_none());
    assert_eq!(f.j.highest_seq(&a).unwrap(), Seq(3));
    assert!(f.j.entities(None).unwrap().is_empty());
    let err = f.j.append(&a, Seq(1), vec![ev("x")]).await.unwrap_err();
    assert!(
        matches!(err, JournalError::Conflict { actual: Seq(3), .. }),
        "{err}"
    );
    f.j.append(&a, Seq(4), vec![ev("x")]).await.unwrap();
    assert_eq!(seqs(&f.j, &a, 1, u64::MAX, u64::MAX), vec![4]);
}

// ---- journal: atomicity, conflicts, rejections ----

#[tokio::test]
async fn a_batch_is_stored_atomically_with_contiguous_seqs() {
    let f = fixture();
    let a = pid("a");
    let ack = f.j.append(&a, Seq(1), evs(10, "b")).await.unwrap();
    assert_eq!((ack.first_seq, ack.last_seq), (Seq(1), Seq(10)));
    assert_eq!(ack.last_offset.0 - ack.first_offset.0, 9);
    assert_eq!(
        seqs(&f.j, &a, 1, u64::MAX, u64::MAX),
        (1..=10).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_seq_conflict_writes_nothing() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 2).await;
    for wrong in [1, 2, 4, 100] {
        let err = f.j.append(&a, Seq(wrong), evs(3, "c")).await.unwrap_err();
        match err {
            JournalError::Conflict {
                pid,
                expected,
                actual,
            } => {
                assert_eq!(pid, a, "the conflict names the persistence id");
                assert_eq!(expected, Seq(wrong));
                assert_eq!(actual, Seq(2));
            }
            other => panic!("expected a conflict, got {other}"),
        }
    }
    assert_eq!(payloads(&f.j, &a), vec!["e1", "e2"]);
}

#[tokio::test]
async fn a_rejected_event_leaves_its_batch_and_neighbours_intact() {
    let f = fixture_with(Journal::builder().max_event_bytes(64));
    let (a, b) = (pid("a"), pid("b"));
    let big = NewEvent::new(Manifest::new("Big", 1), vec![0; 65]);
    let (ra, rb, rbig) = tokio::join!(
        f.j.append(&a, Seq(1), vec![ev("a1")]),
        f.j.append(&b, Seq(1), vec![ev("b1")]),
        f.j.append(&a, Seq(2), vec![ev("a2"), big]),
    );
    ra.unwrap();
    rb.unwrap();
    let err = rbig.unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Rejected(Rejected::EventTooLarge {
                size: 65,
                limit: 64
            })
        ),
        "{err}"
    );
    assert!(err.is_rejected());
    assert_eq!(payloads(&f.j, &a), vec!["a1"]);
    assert_eq!(payloads(&f.j, &b), vec!["b1"]);
    // The journal continues: the next append for `a` is seq 2.
    f.j.append(&a, Seq(2), vec![ev("a2")]).await.unwrap();
}

#[tokio::test]
async fn empty_appends_and_bad_manifests_are_rejected() {
    let f = fixture();
    let a = pid("a");
    let err = f.j.append(&a, Seq(1), vec![]).await.unwrap_err();
    assert!(
        matches!(err, JournalError::Rejected(Rejected::EmptyAppend)),
        "{err}"
    );
    let bad = NewEvent::new(Manifest::new("", 1), vec![]);
    let err = f.j.append(&a, Seq(1), vec![bad]).await.unwrap_err();
    assert!(
        matches!(err, JournalError::Rejected(Rejected::InvalidManifest(_))),
        "{err}"
    );
    assert_eq!(f.j.highest_seq(&a).unwrap(), Seq(0));
}

fn out_of_range<T: std::fmt::Debug>(r: Result<T>) -> Seq {
    match r {
        Err(JournalError::Rejected(Rejected::SeqOutOfRange { seq })) => seq,
        other => panic!("expected SeqOutOfRange, got {other:?}"),
    }
}

/// Seqs end at `Seq::MAX`: an event there is stored and read back (also packed and after a
/// reopen); an append that would pass it, a batch crossing it and an import floor above it are
/// typed refusals that write nothing and leave the journal writable (they once panicked the
/// writer thread, which poisoned the journal, or overflowed a reader's next-seq arithmetic).
#[test]
fn seqs_end_at_seq_max_with_typed_refusals() {
    let f = fixture_with(small_segments());
    let (top, full, other) = (pid("top"), pid("full"), pid("other"));

    f.j.import_floor_blocking(&top, Seq(Seq::MAX.0 - 1))
        .unwrap();
    let ack =
        f.j.append_blocking(&top, Seq::MAX, vec![ev("last")])
            .unwrap();
    assert_eq!((ack.first_seq, ack.last_seq), (Seq::MAX, Seq::MAX));
    assert_eq!(payloads(&f.j, &top), vec!["last"]);
    let next = Seq(Seq::MAX.0 + 1);
    assert_eq!(
        out_of_range(f.j.append_blocking(&top, next, vec![ev("x")])),
        next
    );
    let crossing = f.j.append_blocking(&top, Seq::MAX, evs(2, "c"));
    assert_eq!(out_of_range(crossing), next);
    let far = f.j.append_blocking(&top, Seq(u64::MAX), evs(3, "f"));
    assert_eq!(out_of_range(far), Seq(u64::MAX));

    f.j.import_floor_blocking(&full, Seq::MAX).unwrap();
    assert!(f.j.all_events(&full).unwrap().is_empty());
    assert_eq!(f.j.highest_seq(&full).unwrap(), Seq::MAX);
    assert_eq!(
        out_of_range(f.j.append_blocking(&full, next, vec![ev("x")])),
        next
    );
    let beyond = pid("beyond");
    assert_eq!(
        out_of_range(f.j.import_floor_blocking(&beyond, Seq(u64::MAX))),
        Seq(u64::MAX)
    );
    assert_eq!(f.j.highest_seq(&beyond).unwrap(), Seq(0));

    // Nothing was poisoned: other entities append, and packing moves the last event into a
    // chunk that reads back the same, also after a reopen.
    for s in 1..=40 {
        f.j.append_blocking(&other, Seq(s), vec![ev("o")]).unwrap();
    }
    f.j.flush_blocking(true).unwrap();
    assert_eq!(seqs(&f.j, &top, 1, u64::MAX, u64::MAX), vec![Seq::MAX.0]);
    assert_eq!(seqs(&f.j, &top, Seq::MAX.0, u64::MAX, 1), vec![Seq::MAX.0]);
    let path = f.path.clone();
    drop(f.j);
    let j = small_segments().open(&path).unwrap();
    assert_eq!(payloads(&j, &top), vec!["last"]);
    assert_eq!(j.highest_seq(&full).unwrap(), Seq::MAX);
    assert_eq!(seqs(&j, &other, 1, u64::MAX, u64::MAX).len(), 40);
    let report = j.verify(&mut |_, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 41);
}

#[tokio::test]
async fn invalid_ids_are_refused_before_reaching_the_journal() {
    assert!(matches!(
        PersistenceId::parse("account", ""),
        Err(InvalidId::Empty { .. })
    ));
    assert!(matches!(
        PersistenceId::parse("account", "a\0b"),
        Err(InvalidId::ContainsNul { .. })
    ));
    let long = "x".repeat(MAX_ENTITY_ID_LEN + 1);
    assert!(matches!(
        PersistenceId::parse("account", &long),
        Err(InvalidId::TooLong { .. })
    ));
}

/// The writer makes each commit visible in memory (tail, cache, committed offset) before it
/// answers: an acknowledged append is visible to every read that starts after the
/// acknowledgement, also while segments seal and pack under concurrent appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_append_is_visible_to_the_next_read() {
    let f = fixture_with(
        Journal::builder()
            .segment_events(40)
            .pack_step_events(7)
            .max_chunk_bytes(300),
    );
    let mut tasks = Vec::new();
    for t in 0..16 {
        let j = f.j.clone();
        tasks.push(tokio::spawn(async move {
            let p = pid(&format!("v{t}"));
            let r = j.reader();
            for s in 1..=60u64 {
                let ack = j
                    .append(&p, Seq(s), vec![ev(&format!("{t}:{s}"))])
                    .await
                    .unwrap();
                assert_eq!(j.highest_seq(&p).unwrap(), Seq(s));
                assert!(r.committed_offset() >= ack.last_offset);
                let last: Vec<_> = r
                    .events(&p, Seq(s), Seq(s), 1)
                    .unwrap()
                    .map(|e| e.unwrap().payload)
                    .collect();
                assert_eq!(last, vec![format!("{t}:{s}").into_bytes()], "{p} seq {s}");
                if s % 20 == 0 {
                    assert_eq!(
                        seqs(&r, &p, 1, u64::MAX, u64::MAX),
                        (1..=s).collect::<Vec<_>>()
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    f.j.flush(true).await.unwrap();
    for t in 0..16 {
        assert_eq!(
            seqs(&f.j, &pid(&format!("v{t}")), 1, u64::MAX, u64::MAX).len(),
            60
        );
    }
}

/// Reads after any acknowledged commit see it, also a commit without appends (a delete, a
/// snapshot, a pack), after views taken with nothing committed in between.
#[tokio::test]
async fn reads_after_any_acknowledged_commit_see_it() {
    let f = fixture_with(small_segments());
    let (a, b) = (pid("a"), pid("b"));
    write_n(&f.j, &a, 20).await;
    write_n(&f.j, &b, 3).await;
    let r = f.j.reader();
    // Views taken with nothing committed in between (sharing one transaction).
    for _ in 0..3 {
        assert_eq!(
            seqs(&r, &a, 1, u64::MAX, u64::MAX),
            (1..=20).collect::<Vec<_>>()
        );
        assert_eq!(seqs(&r, &b, 1, u64::MAX, u64::MAX), vec![1, 2, 3]);
    }
    f.j.delete_events_to(&a, Seq(5)).await.unwrap();
    assert_eq!(
        seqs(&r, &a, 1, u64::MAX, u64::MAX),
        (6..=20).collect::<Vec<_>>()
    );
    f.j.save_snapshot(&b, Seq(2), Manifest::new("S", 1), vec![2])
        .await
        .unwrap();
    assert_eq!(r.recovery_view(&b).unwrap().snapshot_seqs(), &[Seq(2)]);
    f.j.flush(true).await.unwrap();
    assert_eq!(
        seqs(&r, &a, 1, u64::MAX, u64::MAX),
        (6..=20).collect::<Vec<_>>()
    );
    f.j.delete_entity(&b).await.unwrap();
    assert_eq!(seqs(&r, &b, 1, u64::MAX, u64::MAX), Vec::<u64>::new());
    assert!(r.recovery_view(&b).unwrap().snapshot_seqs().is_empty());
    write_n(&f.j, &a, 1).await;
    assert_eq!(seqs(&r, &a, 21, u64::MAX, u64::MAX), vec![21]);
}

/// A snapshot (or delete) committed together with an append of the same entity raises the
/// entity row's highest seq in the same commit that appends the event; a read that sees that
/// commit before the writer has put the event in its tail index must not end short of it
/// (`Corrupted`). `STATELINE_SOAK=1` runs longer.
#[test]
fn reads_never_end_short_while_snapshots_commit_with_appends() {
    let f = fixture();
    let p = pid("raced");
    let rounds: u64 = if std::env::var_os("STATELINE_SOAK").is_some() {
        20_000
    } else {
        2_000
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (r, p, stop) = (f.j.reader(), p.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let view = r.recovery_view(&p).unwrap();
                let highest = view.highest_seq().0;
                let mut n = 0u64;
                for e in view.events_from(Seq(1)).unwrap() {
                    e.unwrap();
                    n += 1;
                }
                assert_eq!(
                    n, highest,
                    "a view returns every event up to its highest seq"
                );
                reads += 1;
            }
            reads
        })
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        for s in 1..=rounds {
            // The snapshot at the previous seq and the next append go into one commit, mostly.
            let (append, snapshot) = tokio::join!(
                f.j.append(&p, Seq(s), vec![ev(&format!("e{s}"))]),
                f.j.save_snapshot(&p, Seq(s - 1), Manifest::new("S", 1), vec![1])
            );
            append.unwrap();
            // Seq 0 is refused; every later one lands.
            if s > 1 {
                snapshot.unwrap();
            }
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_are_group_committed() {
    let f = fixture();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let j = f.j.clone();
        tasks.push(tokio::spawn(async move {
            let p = pid(&format!("p{t}"));
            for s in 1..=20 {
                j.append(&p, Seq(s), vec![ev(&format!("{t}:{s}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all: Vec<_> =
        f.j.changelog(Offset(1))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
    assert_eq!(all.len(), 64 * 20);
    for t in 0..64 {
        assert_eq!(
            seqs(&f.j, &pid(&format!("p{t}")), 1, u64::MAX, u64::MAX).len(),
            20
        );
    }
}

// ---- journal: packing, reopen, listing, changelog ----

fn small_segments() -> JournalBuilder {
    Journal::builder()
        .segment_events(16)
        .pack_step_events(5)
        .max_chunk_bytes(200)
}

#[tokio::test]
async fn replay_is_the_same_before_and_after_packing_and_reopen() {
    let f = fixture_with(small_segments());
    let ids: Vec<_> = (0..5).map(|i| pid(&format!("k{i}"))).collect();
    for _ in 0..30 {
        for p in &ids {
            write_n(&f.j, p, 1).await;
        }
    }
    let before: Vec<_> = ids.iter().map(|p| f.j.all_events(p).unwrap()).collect();
    f.j.flush(true).await.unwrap();
    let packed: Vec<_> = ids.iter().map(|p| f.j.all_events(p).unwrap()).collect();
    assert_eq!(before, packed);
    let path = f.path.clone();
    drop(f.j);
    let j = small_segments().open(&path).unwrap();
    let reopened: Vec<_> = ids.iter().map(|p| j.all_events(p).unwrap()).collect();
    assert_eq!(before, reopened);
    assert_eq!(seqs(&j, &ids[2], 7, 19, 5), vec![7, 8, 9, 10, 11]);
}

/// Tail reads copy cached bytes a batch at a time: a tail longer than one batch, cached only in
/// part, reads whole (iterated, visited in place, in windows), and a pack that drops the cache
/// between two batches leaves the rest to the log in the read snapshot.
#[test]
fn a_long_tail_reads_across_batches_a_partial_cache_and_a_pack() {
    let fill = |cache_bytes: usize| {
        let f = fixture_with(
            Journal::builder()
                .segment_events(700)
                .pack_step_events(1_000_000)
                .pack_cache_bytes(cache_bytes),
        );
        for s in 1..=700u64 {
            f.j.append_blocking(&pid("long"), Seq(s), vec![ev(&format!("e{s}"))])
                .unwrap();
        }
        f
    };
    let p = pid("long");
    let all: Vec<u64> = (1..=700).collect();
    // About 250 events' worth: the first batches mix cached and logged events.
    let f = fill(30_000);
    let r = f.j.reader();
    assert_eq!(seqs(&r, &p, 1, u64::MAX, u64::MAX), all);
    assert_eq!(
        seqs(&r, &p, 250, 520, u64::MAX),
        (250..=520).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&r, &p, 200, u64::MAX, 300),
        (200..500).collect::<Vec<_>>()
    );
    let mut visited = Vec::new();
    r.events(&p, Seq(1), Seq(u64::MAX), 513)
        .unwrap()
        .for_each_ref(|e| {
            assert_eq!(e.payload, format!("e{}", e.seq).as_bytes());
            visited.push(e.seq.0);
            Ok::<(), JournalError>(())
        })
        .unwrap();
    assert_eq!(visited, (1..=513).collect::<Vec<_>>());

    // Everything cached: read one batch, pack the segment (its cache entries go), read on.
    let f = fill(64 << 20);
    let r = f.j.reader();
    let mut it = r.events(&p, Seq(1), Seq(u64::MAX), u64::MAX).unwrap();
    let mut read: Vec<u64> = it.by_ref().take(10).map(|e| e.unwrap().seq.0).collect();
    f.j.append_blocking(&p, Seq(701), vec![ev("e701")]).unwrap();
    f.j.flush_blocking(true).unwrap();
    read.extend(it.map(|e| e.unwrap().seq.0));
    assert_eq!(read, all, "the read snapshot had 700 events");
    assert_eq!(seqs(&r, &p, 1, u64::MAX, u64::MAX).len(), 701);
}

#[tokio::test]
async fn old_generations_merge_without_changing_what_reads_return() {
    let merging = || {
        Journal::builder()
            .segment_events(16)
            .pack_step_events(5)
            .merge_generations(true)
    };
    let f = fixture_with(merging());
    let ids: Vec<_> = (0..5).map(|i| pid(&format!("m{i}"))).collect();
    let mut before_pack = Vec::new();
    for round in 0..40 {
        for p in &ids {
            write_n(&f.j, p, 1).await;
        }
        if round == 20 {
            // Deletes while generations exist (and possibly while they merge).
            f.j.delete_events_to(&ids[0], Seq(5)).await.unwrap();
        }
    }
    for p in &ids {
        before_pack.push(f.j.all_events(p).unwrap());
    }
    let changelog: Vec<_> =
        f.j.changelog(Offset(1))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
    f.j.flush(true).await.unwrap();
    let report = f.j.verify(&mut |_, _| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    // 200 events in segments of 16: 12 generations; merged four at a time into 3.
    assert!(
        report.chunks <= 5 * 6,
        "{} chunk rows: generations were not merged",
        report.chunks
    );
    for (p, want) in ids.iter().zip(&before_pack) {
        assert_eq!(&f.j.all_events(p).unwrap(), want);
    }
    let after: Vec<_> =
        f.j.changelog(Offset(1))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
    assert_eq!(after, changelog);
    let path = f.path.clone();
    drop(f.j);
    let j = merging().open(&path).unwrap();
    for (p, want) in ids.iter().zip(&before_pack) {
        assert_eq!(&j.all_events(p).unwrap(), want);
    }
    assert!(j.verify(&mut |_, _| {}).unwrap().is_ok());
}

#[tokio::test]
async fn deletes_apply_to_packed_and_unpacked_events() {
    let f = fixture_with(small_segments());
    let a = pid("a");
    write_n(&f.j, &a, 40).await;
    f.j.flush(true).await.unwrap();
    f.j.delete_events_to(&a, Seq(25)).await.unwrap();
    write_n(&f.j, &a, 40).await;
    assert_eq!(
        seqs(&f.j, &a, 1, u64::MAX, u64::MAX),
        (26..=80).collect::<Vec<_>>()
    );
    f.j.flush(true).await.unwrap();
    assert_eq!(
        seqs(&f.j, &a, 1, u64::MAX, u64::MAX),
        (26..=80).collect::<Vec<_>>()
    );
    assert_eq!(f.j.highest_seq(&a).unwrap(), Seq(80));
}

#[tokio::test]
async fn the_changelog_is_in_offset_order_from_any_offset() {
    let f = fixture_with(small_segments());
    let (a, b) = (pid("a"), pid("b"));
    for _ in 0..25 {
        write_n(&f.j, &a, 1).await;
        write_n(&f.j, &b, 1).await;
    }
    f.j.flush(true).await.unwrap();
    let all: Vec<_> =
        f.j.changelog(Offset(1))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
    assert_eq!(all.len(), 50);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, e)| e.offset.0 == i as u64 + 1));
    let from: Vec<_> =
        f.j.changelog(Offset(31))
            .unwrap()
            .map(|r| r.unwrap().offset.0)
            .collect();
    assert_eq!(from, (31..=50).collect::<Vec<_>>());
    f.j.delete_events_to(&a, Seq(10)).await.unwrap();
    let after: Vec<_> =
        f.j.changelog(Offset(1))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
    assert_eq!(after.len(), 40);
    assert!(after.iter().all(|e| e.persistence_id != a || e.seq.0 > 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_tail_wakes_on_commit() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 1).await;
    let next = Offset(f.j.committed_offset().0 + 1);
    let reader = f.j.reader();
    let waiter = tokio::spawn(async move {
        reader.wait_for_offset(next).await;
        reader
            .changelog(next)
            .unwrap()
            .map(|r| r.unwrap().seq)
            .collect::<Vec<_>>()
    });
    write_n(&f.j, &a, 1).await;
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, vec![Seq(2)]);
}

#[tokio::test]
async fn lists_persistence_ids_by_key_group_range() {
    let f = fixture_with(small_segments().key_groups(8));
    let ids: Vec<_> = (0..40).map(|i| pid(&format!("n{i}"))).collect();
    for p in &ids {
        write_n(&f.j, p, 2).await;
    }
    let all = f.j.entities(None).unwrap();
    assert_eq!(all.len(), 40);
    assert!(all.iter().all(|e| e.events == 2 && e.highest_seq == Seq(2)));
    let low = f.j.entities(Some(0..4)).unwrap();
    let high = f.j.entities(Some(4..8)).unwrap();
    assert_eq!(low.len() + high.len(), 40);
    assert!(low.iter().all(|e| e.key_group.0 < 4));
    assert!(high.iter().all(|e| e.key_group.0 >= 4));
    for e in &low {
        assert_eq!(e.key_group, e.persistence_id.key_group(8));
    }
}

// ---- snapshots ----

#[tokio::test]
async fn loads_the_newest_snapshot() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 10).await;
    for s in [3, 6, 9] {
        f.j.save_snapshot(&a, Seq(s), Manifest::new("S", 1), vec![s as u8])
            .await
            .unwrap();
    }
    let snap = f.j.load_snapshot(&a, Seq(u64::MAX)).unwrap().unwrap();
    assert_eq!((snap.seq, snap.payload.clone()), (Seq(9), vec![9]));
    assert_eq!(snap.manifest, Manifest::new("S", 1));
    assert_eq!(f.j.snapshot_seqs(&a).unwrap(), vec![Seq(3), Seq(6), Seq(9)]);
}

#[tokio::test]
async fn loads_the_newest_snapshot_at_or_below_a_seq() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 10).await;
    for s in [3, 6, 9] {
        f.j.save_snapshot(&a, Seq(s), Manifest::new("S", 1), vec![s as u8])
            .await
            .unwrap();
    }
    assert_eq!(f.j.load_snapshot(&a, Seq(8)).unwrap().unwrap().seq, Seq(6));
    assert_eq!(f.j.load_snapshot(&a, Seq(6)).unwrap().unwrap().seq, Seq(6));
    assert!(f.j.load_snapshot(&a, Seq(2)).unwrap().is_none());
    assert!(f
        .j
        .load_snapshot(&pid("b"), Seq(u64::MAX))
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_snapshot_ahead_of_the_journal_is_rejected() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 2).await;
    let err =
        f.j.save_snapshot(&a, Seq(3), Manifest::new("S", 1), vec![])
            .await
            .unwrap_err();
    assert!(
        matches!(err, JournalError::Rejected(Rejected::SnapshotAhead { .. })),
        "{err}"
    );
    assert!(f.j.load_snapshot(&a, Seq(u64::MAX)).unwrap().is_none());
}

#[tokio::test]
async fn a_too_large_snapshot_is_rejected() {
    let f = fixture_with(Journal::builder().max_snapshot_bytes(10));
    let a = pid("a");
    write_n(&f.j, &a, 1).await;
    let err =
        f.j.save_snapshot(&a, Seq(1), Manifest::new("S", 1), vec![0; 11])
            .await
            .unwrap_err();
    assert!(
        matches!(
            err,
            JournalError::Rejected(Rejected::SnapshotTooLarge {
                size: 11,
                limit: 10
            })
        ),
        "{err}"
    );
}

#[tokio::test]
async fn keeps_the_newest_n_snapshots() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 10).await;
    for s in 1..=10 {
        f.j.save_snapshot(&a, Seq(s), Manifest::new("S", 1), vec![])
            .await
            .unwrap();
    }
    assert_eq!(
        f.j.delete_snapshots(&a, SnapshotCriteria::keep_newest(3))
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        f.j.snapshot_seqs(&a).unwrap(),
        vec![Seq(8), Seq(9), Seq(10)]
    );
    let e = &f.j.entities(None).unwrap()[0];
    assert_eq!((e.snapshots, e.snapshot_seq), (3, Some(Seq(10))));
}

#[tokio::test]
async fn deletes_snapshots_by_criteria() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 10).await;
    for s in [2, 4, 6, 8, 10] {
        f.j.save_snapshot(&a, Seq(s), Manifest::new("S", 1), vec![])
            .await
            .unwrap();
    }
    assert_eq!(
        f.j.delete_snapshots(&a, SnapshotCriteria::up_to(Seq(4)))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        f.j.snapshot_seqs(&a).unwrap(),
        vec![Seq(6), Seq(8), Seq(10)]
    );
    let crit = SnapshotCriteria {
        min_seq: Seq(7),
        max_seq: Seq(10),
        keep_newest: 1,
    };
    assert_eq!(f.j.delete_snapshots(&a, crit).await.unwrap(), 1);
    assert_eq!(f.j.snapshot_seqs(&a).unwrap(), vec![Seq(6), Seq(10)]);
}

#[tokio::test]
async fn a_snapshot_at_the_same_seq_is_replaced() {
    let f = fixture();
    let a = pid("a");
    write_n(&f.j, &a, 3).await;
    f.j.save_snapshot(&a, Seq(3), Manifest::new("S", 1), vec![1])
        .await
        .unwrap();
    f.j.save_snapshot(&a, Seq(3), Manifest::new("S", 2), vec![2])
        .await
        .unwrap();
    let s = f.j.snapshot_at(&a, Seq(3)).unwrap().unwrap();
    assert_eq!((s.payload, s.manifest.version), (vec![2], 2));
    assert_eq!(f.j.snapshot_seqs(&a).unwrap().len(), 1);
}

#[tokio::test]
async fn snapshots_survive_packing_and_reopen() {
    let f = fixture_with(small_segments());
    let a = pid("a");
    write_n(&f.j, &a, 50).await;
    f.j.save_snapshot(&a, Seq(40), Manifest::new("S", 1), b"state".to_vec())
        .await
        .unwrap();
    f.j.flush(true).await.unwrap();
    let path = f.path.clone();
    drop(f.j);
    let j = Journal::open(&path).unwrap();
    let s = j.load_snapshot(&a, Seq(u64::MAX)).unwrap().unwrap();
    assert_eq!((s.seq, s.payload), (Seq(40), b"state".to_vec()));
    assert_eq!(
        seqs(&j, &a, 41, u64::MAX, u64::MAX),
        (41..=50).collect::<Vec<_>>()
    );
}

// ---- open: metadata, format, configuration ----

#[test]
fn a_new_journal_records_its_metadata() {
    let f = fixture_with(Journal::builder().key_groups(64));
    let info = f.j.info();
    assert_eq!(info.format_version, FORMAT_VERSION);
    assert_eq!(info.key_groups, 64);
    assert_eq!(info.hash, KEY_GROUP_HASH);
    assert!(info.created_at <= chrono::Utc::now());
    let id = info.journal_id;
    let path = f.path.clone();
    drop(f.j);
    // Reopening without a key-group count adopts the stored one.
    let j = Journal::open(&path).unwrap();
    assert_eq!((j.info().journal_id, j.key_groups()), (id, 64));
}

#[test]
fn another_key_group_count_is_refused() {
    let f = fixture_with(Journal::builder().key_groups(64));
    let path = f.path.clone();
    drop(f.j);
    let err = Journal::builder().key_groups(128).open(&path).unwrap_err();
    assert!(matches!(err, JournalError::ConfigMismatch { .. }), "{err}");
    Journal::builder().key_groups(64).open(&path).unwrap();
}

/// Rewrites the header as a newer format would: version bumped and one more field.
fn write_newer_header(path: &Path) {
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("stateline.meta");
    let db = redb::Database::create(path).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(META).unwrap();
        let body = rmp_serde::to_vec(&(FORMAT_VERSION + 1, "future", 7u8)).unwrap();
        let mut sealed = crc32fast::hash(&body).to_le_bytes().to_vec();
        sealed.extend_from_slice(&body);
        t.insert("header", sealed.as_slice()).unwrap();
    }
    w.commit().unwrap();
}

#[test]
fn a_newer_format_is_refused() {
    let f = fixture();
    let path = f.path.clone();
    drop(f.j);
    write_newer_header(&path);
    let err = Journal::open(&path).unwrap_err();
    assert!(
        matches!(err, JournalError::UnsupportedFormat { found, supported } if found == FORMAT_VERSION + 1 && supported == FORMAT_VERSION),
        "{err}"
    );
    let err = JournalReader::open_read_only(&path).unwrap_err();
    assert!(
        matches!(err, JournalError::UnsupportedFormat { .. }),
        "{err}"
    );
}

#[test]
fn a_second_writer_is_locked_out_but_readers_are_not() {
    let f = fixture();
    let err = Journal::open(&f.path).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    f.j.append_blocking(&pid("a"), Seq(1), vec![ev("x")])
        .unwrap();
    let r = JournalReader::open_read_only(&f.path).unwrap();
    assert_eq!(r.all_events(&pid("a")).unwrap().len(), 1);
}

/// A reader without the writer (the CLI on a live journal) follows the writer's later commits:
/// events appended after it opened, also when a snapshot committed with them raised the
/// entity's highest seq (a stream used to end there with `Corrupted`), new entities, and
/// segments packed meanwhile.
#[test]
fn a_read_only_reader_follows_later_commits() {
    let f = fixture_with(small_segments());
    let (a, b) = (pid("a"), pid("b"));
    f.j.append_blocking(&a, Seq(1), evs(3, "x")).unwrap();
    let r = JournalReader::open_read_only(&f.path).unwrap();
    let all = |p: &PersistenceId| seqs(&r, p, 1, u64::MAX, u64::MAX);
    assert_eq!(all(&a), vec![1, 2, 3]);

    f.j.append_blocking(&a, Seq(4), evs(2, "y")).unwrap();
    f.j.save_snapshot_blocking(&a, Seq(5), Manifest::new("S", 1), vec![5])
        .unwrap();
    assert_eq!(all(&a), vec![1, 2, 3, 4, 5]);
    assert_eq!(r.highest_seq(&a).unwrap(), Seq(5));
    assert_eq!(r.committed_offset(), Offset(5));

    f.j.append_blocking(&b, Seq(1), evs(1, "z")).unwrap();
    let listed: Vec<_> = r
        .entities(None)
        .unwrap()
        .into_iter()
        .map(|e| (e.persistence_id, e.highest_seq))
        .collect();
    assert_eq!(listed, vec![(a.clone(), Seq(5)), (b.clone(), Seq(1))]);

    // Enough events that the segments the reader saw seal and are packed.
    for s in 2..=60 {
        f.j.append_blocking(&b, Seq(s), vec![ev(&format!("b{s}"))])
            .unwrap();
    }
    f.j.flush_blocking(true).unwrap();
    assert_eq!(all(&a), vec![1, 2, 3, 4, 5]);
    assert_eq!(all(&b), (1..=60).collect::<Vec<_>>());
    assert_eq!(payloads(&r, &a), payloads(&f.j, &a));
    assert_eq!(payloads(&r, &b), payloads(&f.j, &b));
    let changelog: Vec<u64> = r
        .changelog(Offset(1))
        .unwrap()
        .map(|e| e.unwrap().offset.0)
        .collect();
    assert_eq!(changelog, (1..=65).collect::<Vec<_>>());

    // Waiting for a commit: the read-only handle looks for it itself.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let waiter = {
        let r = r.clone();
        std::thread::spawn(move || rt.block_on(r.wait_for_offset(Offset(66))))
    };
    f.j.append_blocking(&b, Seq(61), vec![ev("b61")]).unwrap();
    waiter.join().unwrap();
    assert_eq!(r.committed_offset(), Offset(66));
}

/// Runs `f` on the first log segment's table in a write transaction of its own, committed
/// after. The journal must be closed; read-only handles may stay open.
fn with_first_log_table<T>(
    path: &Path,
    f: impl FnOnce(&mut redb::Table<'_, u64, &'static [u8]>) -> T,
) -> T {
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::SingleWriter);
    let db = b.open(path).unwrap();
    let w = db.begin_write().unwrap();
    let out = {
        let name = redb::TableHandle::name(
            &w.list_tables()
                .unwrap()
                .find(|t| redb::TableHandle::name(t).starts_with("stateline.log."))
                .unwrap(),
        )
        .to_string();
        let mut t = w
            .open_table(redb::TableDefinition::<u64, &[u8]>::new(&name))
            .unwrap();
        f(&mut t)
    };
    w.commit().unwrap();
    out
}

/// Overwrites the value of the last log row of the first segment with `f(old)`; returns the
/// old value.
fn rewrite_last_log_row(path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    with_first_log_table(path, |t| {
        let (key, old) = {
            let (k, v) = redb::ReadableTable::last(&*t).unwrap().unwrap();
            (k.value(), v.value().to_vec())
        };
        let mut new = old.clone();
        f(&mut new);
        t.insert(key, new.as_slice()).unwrap();
        old
    })
}

/// A catch-up that fails on damaged log bytes reports `Corrupted` and changes nothing: once the
/// bytes are whole again, the same handle reads every event (it used to trip over the half of
/// the catch-up it had kept, for good).
#[test]
fn a_failed_catch_up_leaves_the_reader_as_it_was() {
    let f = fixture();
    let a = pid("a");
    f.j.append_blocking(&a, Seq(1), vec![ev("one")]).unwrap();
    let r = JournalReader::open_read_only(&f.path).unwrap();
    assert_eq!(seqs(&r, &a, 1, u64::MAX, u64::MAX), vec![1]);
    f.j.append_blocking(&a, Seq(2), evs(4, "more")).unwrap();
    let Fixture { _dir, path, j } = f;
    drop(j);
    // The last byte of the row is the last event's payload: its checksum no longer holds.
    let whole = rewrite_last_log_row(&path, |row| *row.last_mut().unwrap() ^= 0xff);
    let err = r.all_events(&a).unwrap_err();
    assert!(matches!(err, JournalError::Corrupted { .. }), "{err}");
    assert!(r.snapshot_seqs(&a).is_err(), "every read catches up first");
    assert_eq!(r.committed_offset(), Offset(1));
    rewrite_last_log_row(&path, |row| *row = whole.clone());
    assert_eq!(seqs(&r, &a, 1, u64::MAX, u64::MAX), vec![1, 2, 3, 4, 5]);
    assert_eq!(r.committed_offset(), Offset(5));
}

/// Readers without the writer, on two threads sharing one handle, while the writer appends,
/// snapshots and packs small segments: every view returns each event up to its highest seq
/// (no stream ends short across a catch-up or a pack), and what a thread sees never goes
/// back. `STATELINE_SOAK=1` runs longer.
#[test]
fn read_only_readers_keep_up_with_appends_snapshots_and_packs() {
    let f = fixture_with(small_segments());
    let ids: Vec<_> = (0..4).map(|i| pid(&format!("f{i}"))).collect();
    f.j.append_blocking(&ids[0], Seq(1), vec![ev("first")])
        .unwrap();
    let r = JournalReader::open_read_only(&f.path).unwrap();
    let rounds: u64 = if std::env::var_os("STATELINE_SOAK").is_some() {
        3_000
    } else {
        300
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (r, ids, stop) = (r.clone(), ids.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = vec![0u64; ids.len()];
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (k, p) in ids.iter().enumerate() {
                        let view = r.recovery_view(p).unwrap();
                        let highest = view.highest_seq().0;
                        let got: Vec<u64> = view
                            .events_from(Seq(1))
                            .unwrap()
                            .map(|e| e.unwrap().seq.0)
                            .collect();
                        assert_eq!(got, (1..=highest).collect::<Vec<_>>(), "{p}");
                        assert!(highest >= seen[k], "{p}: {highest} after {}", seen[k]);
                        seen[k] = highest;
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    for round in 0..rounds {
        for (k, p) in ids.iter().enumerate() {
            let next = if k == 0 { round + 2 } else { round + 1 };
            f.j.append_blocking(p, Seq(next), vec![ev(&format!("{k}:{next}"))])
                .unwrap();
            if round % 7 == k as u64 {
                f.j.save_snapshot_blocking(p, Seq(next), Manifest::new("S", 1), vec![1])
                    .unwrap();
            }
        }
    }
    f.j.flush_blocking(true).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in readers {
        assert!(t.join().unwrap() > 0);
    }
    for p in &ids {
        assert_eq!(payloads(&r, p), payloads(&f.j, p), "{p}");
    }
}

#[test]
fn foreign_files_are_not_journals() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, not a database").unwrap();
    assert!(matches!(
        Journal::open(&text),
        Err(JournalError::NotAJournal { .. })
    ));
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<u64, u64>::new("x"))
            .unwrap();
        w.commit().unwrap();
    }
    assert!(matches!(
        Journal::open(&other),
        Err(JournalError::NotAJournal { .. })
    ));
    assert!(matches!(
        Journal::open(dir.path()),
        Err(JournalError::NotAJournal { .. })
    ));
    let missing = dir.path().join("missing.redb");
    let err = Journal::builder().create(false).open(&missing).unwrap_err();
    assert!(matches!(err, JournalError::NotAJournal { .. }), "{err}");
}

/// A device, FIFO or socket has length 0 but is not an empty file: opening one (writable,
/// read-only, to check or to compact) is `NotAJournal` and leaves it as it was. Before this was checked, a
/// writable open replaced it with a new journal; run as root on `/dev/null`, that replaced the
/// machine's `/dev/null`.
#[cfg(unix)]
#[test]
fn special_files_are_refused_and_left_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("journal.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let fifo = dir.path().join("journal.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    let is_socket: fn(&std::fs::FileType) -> bool = |t| t.is_socket();
    let is_fifo: fn(&std::fs::FileType) -> bool = |t| t.is_fifo();
    for (path, still) in [(&socket, is_socket), (&fifo, is_fifo)] {
        for err in [
            Journal::open(path).unwrap_err(),
            JournalReader::open_read_only(path).unwrap_err(),
            check_file_integrity(path).unwrap_err(),
            compact_file(path).unwrap_err(),
        ] {
            assert!(
                matches!(&err, JournalError::NotAJournal { detail, .. } if detail.contains("regular file")),
                "{}: {err}",
                path.display()
            );
        }
        let t = std::fs::symlink_metadata(path).unwrap().file_type();
        assert!(still(&t), "{} was replaced: {t:?}", path.display());
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
}

/// A journal name may use the file system's whole 255 bytes: creating it does not build a
/// longer temporary name from it.
#[test]
fn a_journal_name_of_255_bytes_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{}.redb", "L".repeat(250)));
    {
        let j = Journal::open(&path).unwrap();
        j.append_blocking(&pid("a"), Seq(1), vec![ev("x")]).unwrap();
    }
    let r = JournalReader::open_read_only(&path).unwrap();
    assert_eq!(payloads(&r, &pid("a")), ["x"]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// An empty file reached through a symbolic link becomes the journal where the file is, and so
/// does a missing one: the link stays a link, and the journal reopens through it and by its own
/// path.
#[cfg(unix)]
#[test]
fn a_journal_is_created_behind_a_symlink_to_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let file = volume.join("journal.redb");
    std::fs::write(&file, b"").unwrap();
    let link = dir.path().join("journal.redb");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    {
        let j = Journal::open(&link).unwrap();
        j.append_blocking(&pid("a"), Seq(1), vec![ev("x")]).unwrap();
    }
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::metadata(&file).unwrap().len() > 0);
    let r = JournalReader::open_read_only(&file).unwrap();
    assert_eq!(payloads(&r, &pid("a")), ["x"]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    assert_eq!(std::fs::read_dir(&volume).unwrap().count(), 1);

    // A link to a file not there yet (a relative one): the journal is created where it points.
    let later = dir.path().join("later.redb");
    std::os::unix::fs::symlink("volume/later.redb", &later).unwrap();
    drop(Journal::open(&later).unwrap());
    assert!(std::fs::symlink_metadata(&later)
        .unwrap()
        .file_type()
        .is_symlink());
    drop(JournalReader::open_read_only(volume.join("later.redb")).unwrap());
    assert_eq!(std::fs::read_dir(&volume).unwrap().count(), 2);
}
