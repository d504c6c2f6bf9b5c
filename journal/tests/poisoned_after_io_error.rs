//! G8: after an I/O error the journal is poisoned: the failing append reports an I/O error,
//! every later write fails fast with `Poisoned` until the journal is reopened, and reopening
//! finds every acknowledged event (G1) with contiguous seqs (G3).
#![allow(clippy::unwrap_used)]

use stateline_journal::*;

fn ev(i: u64) -> NewEvent {
    NewEvent::new(Manifest::new("E", 1), i.to_le_bytes().to_vec())
}

#[test]
fn an_io_error_poisons_until_reopen() {
    let storage = FaultyStorage::new();
    let pid = PersistenceId::parse("account", "a").unwrap();
    let j = Journal::builder()
        .open_with_backend(storage.clone(), "mem")
        .unwrap();
    for s in 1..=5 {
        j.append_blocking(&pid, Seq(s), vec![ev(s)]).unwrap();
    }
    storage.fail_now(true);
    let err = j.append_blocking(&pid, Seq(6), vec![ev(6)]).unwrap_err();
    assert!(matches!(err, JournalError::Io(_)), "{err}");
    assert!(!err.is_rejected());
    // Storage is healthy again, but the handle stays poisoned.
    storage.fail_now(false);
    for _ in 0..3 {
        let err = j.append_blocking(&pid, Seq(6), vec![ev(6)]).unwrap_err();
        assert!(matches!(err, JournalError::Poisoned), "{err}");
    }
    let err = j
        .save_snapshot_blocking(&pid, Seq(5), Manifest::new("S", 1), vec![])
        .unwrap_err();
    assert!(matches!(err, JournalError::Poisoned), "{err}");
    drop(j);

    let j = Journal::builder()
        .open_with_backend(storage, "mem")
        .unwrap();
    let seqs: Vec<u64> = j
        .all_events(&pid)
        .unwrap()
        .iter()
        .map(|e| e.seq.0)
        .collect();
    // Acknowledged 1..=5 survive; the failed append is all-or-nothing.
    assert!(
        seqs == (1..=5).collect::<Vec<_>>() || seqs == (1..=6).collect::<Vec<_>>(),
        "{seqs:?}"
    );
    let next = j.highest_seq(&pid).unwrap().0 + 1;
    j.append_blocking(&pid, Seq(next), vec![ev(next)]).unwrap();
}

/// Storage that stops accepting writes after k writes/syncs, for every k up to where a run of
/// appends completes: reopening finds exactly the acknowledged appends, plus at most the one in
/// flight, as a prefix (G1, G2, G3). `STATELINE_SOAK=1` tries more interleavings.
#[test]
fn a_fault_after_any_write_leaves_a_prefix_of_committed_appends() {
    let soak = std::env::var("STATELINE_SOAK").is_ok_and(|v| v == "1");
    let appends = if soak { 60 } else { 20 };
    let pid = PersistenceId::parse("account", "a").unwrap();
    let mut k = 0u64;
    loop {
        let storage = FaultyStorage::new();
        let j = Journal::builder()
            .open_with_backend(storage.clone(), "mem")
            .unwrap();
        storage.fail_after(k);
        let mut acked = 0u64;
        for s in 1..=appends {
            match j.append_blocking(&pid, Seq(2 * s - 1), vec![ev(s), ev(s + 1000)]) {
                Ok(_) => acked = s,
                Err(JournalError::Io(_)) => break,
                Err(e) => panic!("k={k}: unexpected {e}"),
            }
        }
        drop(j);
        storage.fail_now(false);
        let j = Journal::builder()
            .open_with_backend(storage, "mem")
            .unwrap();
        let events = j.all_events(&pid).unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq.0).collect();
        let n = seqs.len() as u64;
        assert!(
            n.is_multiple_of(2),
            "k={k}: a two-event append was torn: {seqs:?}"
        );
        assert!(
            n / 2 == acked || n / 2 == acked + 1,
            "k={k}: acked {acked}, found {seqs:?}"
        );
        assert_eq!(seqs, (1..=n).collect::<Vec<_>>(), "k={k}: not a prefix");
        if acked == appends {
            break;
        }
        k += 1;
        assert!(k < 10_000, "faults never stopped mattering");
    }
}
