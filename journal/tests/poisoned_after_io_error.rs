//! G8: after an I/O error the journal is poisoned: the failing append reports an I/O error,
//! every later write fails fast with `Poisoned` until the journal is reopened, and reopening
//! finds every acknowledged event (G1) with contiguous seqs (G3).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::backends::InMemoryBackend;
use redb::StorageBackend;
use stateline_journal::*;

/// Storage that fails every write and sync while `fail` is set.
#[derive(Debug, Clone)]
struct Faulty {
    inner: Arc<InMemoryBackend>,
    fail: Arc<AtomicBool>,
}

impl Faulty {
    fn check(&self) -> Result<(), std::io::Error> {
        if self.fail.load(Ordering::SeqCst) {
            Err(std::io::Error::other("injected fault"))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for Faulty {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
}

fn ev(i: u64) -> NewEvent {
    NewEvent::new(Manifest::new("E", 1), i.to_le_bytes().to_vec())
}

#[test]
fn an_io_error_poisons_until_reopen() {
    let storage = Faulty {
        inner: Arc::new(InMemoryBackend::new()),
        fail: Arc::new(AtomicBool::new(false)),
    };
    let pid = PersistenceId::parse("account", "a").unwrap();
    let j = Journal::builder()
        .open_with_backend(storage.clone(), "mem")
        .unwrap();
    for s in 1..=5 {
        j.append_blocking(&pid, Seq(s), vec![ev(s)]).unwrap();
    }
    storage.fail.store(true, Ordering::SeqCst);
    let err = j.append_blocking(&pid, Seq(6), vec![ev(6)]).unwrap_err();
    assert!(matches!(err, JournalError::Io(_)), "{err}");
    assert!(!err.is_rejected());
    // Storage is healthy again, but the handle stays poisoned.
    storage.fail.store(false, Ordering::SeqCst);
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
