//! Property test: random appends (right and wrong expected seqs), snapshots, deletes, packing
//! and reopens against a simple in-memory model; after every step every read matches the model
//! (G3: seqs exactly 1..=N minus deleted, G5: a wrong expected seq is a conflict that writes
//! nothing). `PROPTEST_CASES` raises the case count (default 24; soak runs use more).
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use proptest::prelude::*;
use stateline_journal::*;

#[derive(Clone, Debug)]
enum Op {
    Append { who: usize, n: usize, skew: i8 },
    Snapshot { who: usize, back: u64 },
    DeleteTo { who: usize, back: u64 },
    KeepSnapshots { who: usize, keep: usize },
    DeleteEntity { who: usize },
    Pack,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..4usize, 1..4usize, prop_oneof![6 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)])
            .prop_map(|(who, n, skew)| Op::Append { who, n, skew }),
        2 => (0..4usize, 0..4u64).prop_map(|(who, back)| Op::Snapshot { who, back }),
        1 => (0..4usize, 0..6u64).prop_map(|(who, back)| Op::DeleteTo { who, back }),
        1 => (0..4usize, 0..3usize).prop_map(|(who, keep)| Op::KeepSnapshots { who, keep }),
        1 => (0..4usize).prop_map(|who| Op::DeleteEntity { who }),
        1 => Just(Op::Pack),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default, Debug)]
struct Model {
    events: BTreeMap<u64, Vec<u8>>,
    highest: u64,
    snapshots: BTreeMap<u64, Vec<u8>>,
}

fn pid(who: usize) -> PersistenceId {
    PersistenceId::parse("thing", &format!("t{who}")).unwrap()
}

/// Event-cache budgets the journal is reopened with in turn: everything cached, nothing (tail
/// reads and packing go to the log), and a few events' worth (both at once).
const CACHE_BYTES: [usize; 3] = [64 << 20, 0, 300];

fn open(path: &Path, cache_bytes: usize) -> Journal {
    Journal::builder()
        .pack_cache_bytes(cache_bytes)
        .segment_events(7)
        .pack_step_events(3)
        .max_chunk_bytes(64)
        .merge_generations(true)
        .key_groups(4)
        .open(path)
        .unwrap()
}

/// `(seq, payload)` of at most `max` events of `p` from `from`, visited in place.
fn visited_in_place(
    r: &JournalReader,
    p: &PersistenceId,
    from: u64,
    max: u64,
) -> Vec<(u64, Vec<u8>)> {
    let mut visited = Vec::new();
    r.events(p, Seq(from), Seq(u64::MAX), max)
        .unwrap()
        .for_each_ref(|e| {
            visited.push((e.seq.0, e.payload.to_vec()));
            Ok::<(), JournalError>(())
        })
        .unwrap();
    visited
}

fn check(j: &Journal, follower: &JournalReader, models: &HashMap<usize, Model>) {
    let mut live = 0;
    // A reader without the writer rebuilds the tail from the log and caches nothing; the
    // follower, opened read-only when the run began, catches up with every commit since.
    let cold = JournalReader::open_read_only(j.path()).unwrap();
    for who in 0..4 {
        let m = models.get(&who);
        let p = pid(who);
        let want: Vec<(u64, Vec<u8>)> = m
            .map(|m| m.events.iter().map(|(s, p)| (*s, p.clone())).collect())
            .unwrap_or_default();
        for r in [&j.reader(), &cold, follower] {
            let got: Vec<(u64, Vec<u8>)> = r
                .all_events(&p)
                .unwrap()
                .into_iter()
                .map(|e| (e.seq.0, e.payload))
                .collect();
            assert_eq!(got, want, "events of {p}");
            // Visited in place: the same events, also for a window and a count.
            let all = visited_in_place(r, &p, 1, u64::MAX);
            assert_eq!(all, want, "events of {p} visited in place");
            if let Some((first, _)) = want.first() {
                let (from, max) = (first + 1, 2);
                let want: Vec<_> = want
                    .iter()
                    .filter(|e| e.0 >= from)
                    .take(max)
                    .cloned()
                    .collect();
                let window = visited_in_place(r, &p, from, max as u64);
                assert_eq!(window, want, "window of {p} visited in place");
            }
        }
        live += want.len();
        assert_eq!(j.highest_seq(&p).unwrap().0, m.map_or(0, |m| m.highest));
        assert_eq!(
            follower.highest_seq(&p).unwrap().0,
            m.map_or(0, |m| m.highest),
            "highest seq of {p} for the follower"
        );
        let snap = j
            .load_snapshot(&p, Seq(u64::MAX))
            .unwrap()
            .map(|s| (s.seq.0, s.payload));
        let want_snap =
            m.and_then(|m| m.snapshots.iter().next_back().map(|(s, b)| (*s, b.clone())));
        assert_eq!(snap, want_snap, "newest snapshot of {p}");
    }
    let changelog: Vec<_> = j
        .changelog(Offset(1))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        changelog.len(),
        live,
        "changelog holds exactly the live events"
    );
    assert!(changelog.windows(2).all(|w| w[0].offset < w[1].offset));
    let followed: Vec<_> = follower
        .changelog(Offset(1))
        .unwrap()
        .map(|r| r.unwrap().offset)
        .collect();
    let offsets: Vec<_> = changelog.iter().map(|e| e.offset).collect();
    assert_eq!(followed, offsets, "the follower's changelog");
}

fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.redb");
    let mut reopens = 0;
    let mut j = open(&path, CACHE_BYTES[0]);
    // Kept across the writer's reopens too.
    let follower = JournalReader::open_read_only(&path).unwrap();
    let mut models: HashMap<usize, Model> = HashMap::new();
    let mut counter = 0u64;
    for op in ops {
        match op {
            Op::Append { who, n, skew } => {
                let m = models.entry(who).or_default();
                let expected = (m.highest + 1).saturating_add_signed(i64::from(skew));
                let payloads: Vec<Vec<u8>> = (0..n)
                    .map(|_| {
                        counter += 1;
                        counter.to_le_bytes().to_vec()
                    })
                    .collect();
                let events = payloads
                    .iter()
                    .map(|p| NewEvent::new(Manifest::new("E", 1), p.clone()))
                    .collect();
                let r = j.append_blocking(&pid(who), Seq(expected), events);
                if skew == 0 || expected == m.highest + 1 {
                    let ack = r.unwrap();
                    assert_eq!(ack.first_seq.0, m.highest + 1);
                    for p in payloads {
                        m.highest += 1;
                        m.events.insert(m.highest, p);
                    }
                } else {
                    assert!(matches!(r, Err(JournalError::Conflict { .. })), "{r:?}");
                }
            }
            Op::Snapshot { who, back } => {
                let m = models.entry(who).or_default();
                let seq = m.highest.saturating_sub(back);
                let bytes = format!("snap@{seq}").into_bytes();
                j.save_snapshot_blocking(&pid(who), Seq(seq), Manifest::new("S", 1), bytes.clone())
                    .unwrap();
                m.snapshots.insert(seq, bytes);
            }
            Op::DeleteTo { who, back } => {
                let m = models.entry(who).or_default();
                let to = m.highest.saturating_sub(back);
                j.delete_events_to_blocking(&pid(who), Seq(to)).unwrap();
                m.events.retain(|s, _| *s > to);
            }
            Op::KeepSnapshots { who, keep } => {
                let m = models.entry(who).or_default();
                let n = j
                    .delete_snapshots_blocking(&pid(who), SnapshotCriteria::keep_newest(keep))
                    .unwrap();
                let drop_n = m.snapshots.len().saturating_sub(keep);
                assert_eq!(n, drop_n);
                let keys: Vec<u64> = m.snapshots.keys().take(drop_n).copied().collect();
                for k in keys {
                    m.snapshots.remove(&k);
                }
            }
            Op::DeleteEntity { who } => {
                let m = models.entry(who).or_default();
                j.delete_entity_blocking(&pid(who)).unwrap();
                m.events.clear();
                m.snapshots.clear();
            }
            Op::Pack => j.flush_blocking(true).unwrap(),
            Op::Reopen => {
                drop(j);
                reopens += 1;
                j = open(&path, CACHE_BYTES[reopens % CACHE_BYTES.len()]);
            }
        }
        check(&j, &follower, &models);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        .. ProptestConfig::default()
    })]

    #[test]
    fn reads_always_match_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }
}
