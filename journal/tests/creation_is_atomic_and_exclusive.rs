//! Creating a journal over an existing empty file: it is written in place (the file keeps its
//! mode, inode and hard links), two creators at once get one journal between them and never
//! two writers (G1, G5), and every state a crash can leave behind is refused by read-only opens
//! and created again by the next writable open (FORMAT.md, "Creation").
#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier};

use stateline_journal::*;

/// The first bytes of a file a journal is being written into (FORMAT.md).
const CREATING_MAGIC: [u8; 9] = [b's', b't', b'l', b'n', 0x1A, 0x0A, 0xA9, 0x0D, 0x00];

fn pid(id: &str) -> PersistenceId {
    PersistenceId::parse("account", id).unwrap()
}

fn ev(tag: &str) -> NewEvent {
    NewEvent::new(Manifest::new("Tagged", 1), tag.as_bytes().to_vec())
}

fn payloads(r: &JournalReader, p: &PersistenceId) -> Vec<String> {
    r.events(p, Seq(1), Seq::MAX, u64::MAX)
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().payload).unwrap())
        .collect()
}

/// Opens `path` and takes its exclusive lock, as a creator in progress holds it.
fn lock_as_a_creator(path: &Path) -> std::fs::File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    f.try_lock().unwrap();
    f
}

/// The bytes of a freshly created journal file.
fn fresh_journal_bytes(dir: &Path) -> Vec<u8> {
    let path = dir.join("fresh.redb");
    drop(Journal::open(&path).unwrap());
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    bytes
}

#[test]
fn an_empty_file_becomes_the_journal_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("other-name.redb");
    std::fs::hard_link(&path, &link).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    {
        let j = Journal::open(&path).unwrap();
        j.append_blocking(&pid("a"), Seq(1), vec![ev("x")]).unwrap();
    }
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.ino(), inode, "the file was replaced");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode lost");
    assert_eq!(meta.nlink(), 2, "the hard link no longer shares the file");
    // The other name is the same journal, not a second, independent one.
    let r = JournalReader::open_read_only(&link).unwrap();
    assert_eq!(payloads(&r, &pid("a")), ["x"]);
    drop(r);
    let j = Journal::open(&link).unwrap();
    assert_eq!(j.highest_seq(&pid("a")).unwrap(), Seq(1));
    drop(j);
    // Nothing else was left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// Two creators race over one empty file, each through its own name (a hard link) or the same
/// one: exactly one gets the journal and the other `Locked`, and the winner's acknowledged
/// event is in the file afterwards. Before creation wrote in place, the loser could replace the
/// winner's journal with its own (both got a writer; the winner's acks were lost).
#[test]
fn two_creators_over_one_empty_file_get_one_journal() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..40 {
        let path = dir.path().join(format!("j{round}.redb"));
        std::fs::write(&path, b"").unwrap();
        let second = if round % 2 == 0 {
            let link = dir.path().join(format!("j{round}-link.redb"));
            std::fs::hard_link(&path, &link).unwrap();
            link
        } else {
            path.clone()
        };
        let barrier = Arc::new(Barrier::new(2));
        let all_done = Arc::new(Barrier::new(2));
        let creators: Vec<_> = [path.clone(), second]
            .into_iter()
            .enumerate()
            .map(|(who, at)| {
                let (barrier, all_done) = (barrier.clone(), all_done.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let opened = Journal::open(&at);
                    let result = match &opened {
                        Ok(j) => {
                            let p = pid(&format!("creator{who}"));
                            j.append_blocking(&p, Seq(1), vec![ev("acked")]).unwrap();
                            Ok(p)
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    // Both handles (or errors) exist at once: no writer is closed before the
                    // other creator is done.
                    all_done.wait();
                    drop(opened);
                    result
                })
            })
            .collect();
        let results: Vec<_> = creators.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(loser.contains("locked"), "round {round}: {loser}");
        let r = JournalReader::open_read_only(&path).unwrap();
        assert_eq!(payloads(&r, winners[0]), ["acked"], "round {round}");
        assert_eq!(r.entities(None).unwrap().len(), 1, "round {round}");
    }
}

/// A creator in progress holds the file's lock: another writable open is `Locked` and leaves
/// the file as it is; once the lock is gone, the journal is created.
#[test]
fn a_creation_in_progress_locks_out_other_creators() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    std::fs::write(&path, b"").unwrap();
    let holder = lock_as_a_creator(&path);
    let err = Journal::open(&path).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    drop(holder);
    drop(Journal::open(&path).unwrap());
    drop(JournalReader::open_read_only(&path).unwrap());
}

/// Every state a crash during creation in place can leave: the creating magic alone, with any
/// prefix of the journal's bytes after it, or with all of them. Read-only opens, checks and
/// compaction refuse it as an interrupted creation and leave it; a writable open creates the
/// journal again in the same file, which then works.
#[test]
fn an_interrupted_creation_is_refused_read_only_and_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = fresh_journal_bytes(dir.path());
    assert!(fresh.len() > 4096, "{}", fresh.len());
    // Cuts below 9: the creating magic itself cut short (its write was torn), through its 0x1A.
    let mut cuts = vec![5, 8, 9, 10, 512, 4096, fresh.len() / 2, fresh.len()];
    cuts.dedup();
    for cut in cuts {
        let path = dir.path().join(format!("cut{cut}.redb"));
        let mut bytes = fresh[..cut].to_vec();
        let marked = cut.min(9);
        bytes[..marked].copy_from_slice(&CREATING_MAGIC[..marked]);
        std::fs::write(&path, &bytes).unwrap();
        for err in [
            JournalReader::open_read_only(&path).unwrap_err(),
            Journal::builder().create(false).open(&path).unwrap_err(),
            check_file_integrity(&path).unwrap_err(),
            compact_file(&path).unwrap_err(),
        ] {
            assert!(
                matches!(&err, JournalError::NotAJournal { detail, .. } if detail.contains("interrupted")),
                "cut {cut}: {err}"
            );
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "cut {cut}: changed");
        let inode = std::fs::metadata(&path).unwrap().ino();
        {
            let j = Journal::open(&path).unwrap();
            j.append_blocking(&pid("a"), Seq(1), vec![ev("x")]).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        let r = JournalReader::open_read_only(&path).unwrap();
        assert_eq!(payloads(&r, &pid("a")), ["x"], "cut {cut}");
        drop(r);
        assert!(check_file_integrity(&path).unwrap(), "cut {cut}");
    }
}

/// A file that is neither empty nor a journal nor an interrupted creation is never written,
/// even when its first bytes are almost the creating magic.
#[test]
fn a_file_that_only_resembles_an_interrupted_creation_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    let mut almost = CREATING_MAGIC.to_vec();
    almost[8] = 0x0A;
    almost.extend_from_slice(&[0u8; 100]);
    // A short text file that begins as the creating magic does (but stops before its 0x1A).
    for bytes in [almost, b"stln".to_vec()] {
        std::fs::write(&path, &bytes).unwrap();
        let err = Journal::open(&path).unwrap_err();
        assert!(
            matches!(&err, JournalError::NotAJournal { detail, .. } if detail.contains("not a redb file")),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}

/// While a creation is under way (its creator holds the file's exclusive lock and has written
/// the creating magic), every other open, read-only ones included, is `Locked`, not told the
/// creation was interrupted, and the file is left to its creator.
#[test]
fn a_creation_under_way_is_locked_not_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    let mut bytes = CREATING_MAGIC.to_vec();
    bytes.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&path, &bytes).unwrap();
    let creator = lock_as_a_creator(&path);
    for err in [
        JournalReader::open_read_only(&path).unwrap_err(),
        Journal::open(&path).unwrap_err(),
        check_file_integrity(&path).unwrap_err(),
    ] {
        assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    }
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    drop(creator);
    let err = JournalReader::open_read_only(&path).unwrap_err();
    assert!(
        matches!(&err, JournalError::NotAJournal { detail, .. } if detail.contains("interrupted")),
        "{err}"
    );
}

/// A temporary creation file that a creator killed mid-creation left (older than an hour) is
/// removed by the next creation in its directory; a recent one (another creator's, at work) and
/// files that only resemble one stay.
#[test]
fn a_stale_temporary_creation_file_is_removed_by_the_next_creation() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, age_secs: u64| {
        let p = dir.path().join(name);
        let f = std::fs::File::create(&p).unwrap();
        f.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs))
            .unwrap();
        p
    };
    let stale = file(".stateline-creating-0123456789abcdef0123456789abcdef", 7200);
    let recent = file(".stateline-creating-fedcba9876543210fedcba9876543210", 10);
    let other = file(".stateline-creating-notours", 7200);
    drop(Journal::open(dir.path().join("j.redb")).unwrap());
    assert!(!stale.exists(), "the stale temporary file stayed");
    assert!(recent.exists() && other.exists());
}
