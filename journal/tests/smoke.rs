//! Smoke test: append, read back across packing, reopen.
use stateline_journal::*;

fn ev(i: u64) -> NewEvent {
    NewEvent::new(Manifest::new("E", 1), i.to_le_bytes().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_pack_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    let j = Journal::builder()
        .segment_events(100)
        .pack_step_events(30)
        .open(&path)
        .unwrap();
    let pids: Vec<_> = (0..7)
        .map(|i| PersistenceId::parse("t", &format!("e{i}")).unwrap())
        .collect();
    for round in 0..60u64 {
        for p in &pids {
            j.append(p, Seq(round + 1), vec![ev(round)]).await.unwrap();
        }
    }
    j.flush(true).await.unwrap();
    for p in &pids {
        let evs = j.all_events(p).unwrap();
        assert_eq!(evs.len(), 60);
        for (i, e) in evs.iter().enumerate() {
            assert_eq!(e.seq, Seq(i as u64 + 1));
        }
    }
    let cl: Vec<_> = j
        .changelog(Offset(1))
        .unwrap()
        .collect::<Result<_>>()
        .unwrap();
    assert_eq!(cl.len(), 420);
    assert!(cl.windows(2).all(|w| w[0].offset.0 + 1 == w[1].offset.0));
    drop(j);
    let j = Journal::open(&path).unwrap();
    assert_eq!(j.highest_seq(&pids[3]).unwrap(), Seq(60));
    assert_eq!(j.all_events(&pids[3]).unwrap().len(), 60);
    let err = j.append(&pids[3], Seq(60), vec![ev(0)]).await.unwrap_err();
    assert!(matches!(err, JournalError::Conflict { .. }), "{err}");
}
