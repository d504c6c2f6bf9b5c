//! Hostile journal files: open them and read everything (entities, events, snapshots, recovery
//! views, the changelog, verify). Any typed error is fine; a panic that reaches the caller, a
//! panic on the journal's writer thread, or a hang (libFuzzer's `-timeout`) is a bug. Panics
//! inside the storage engine that the journal turns into typed errors on the calling thread are
//! by design (G7) and not failures.
//!
//! What an input describes (a whole file, row edits or byte patches of a small valid journal,
//! which open) is documented in `stateline_fuzz::journal_input`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stateline_fuzz::journal_input::{open_and_read, seed_journal};
use stateline_fuzz::{record_panics, take_panics};

/// The file for read-only opens (removed after each input): in memory where the machine has
/// `/dev/shm`.
fn scratch_file() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        dir.join(format!("stateline-fuzz-{}.redb", std::process::id()))
    })
}

fuzz_target!(
    init: {
        record_panics();
        assert!(seed_journal().is_some(), "fuzz/seeds/small_journal.rle decodes");
    },
    |data: &[u8]| {
        let Some((&control, rest)) = data.split_first() else {
            return;
        };
        let outcome = std::panic::catch_unwind(|| open_and_read(control, rest, scratch_file()));
        let _ = std::fs::remove_file(scratch_file());
        let panics = take_panics();
        let this = std::thread::current().id();
        let stray = panics.iter().any(|p| p.thread != this);
        if outcome.is_err() || stray {
            for p in &panics {
                let name = p.name.as_deref().unwrap_or("unnamed");
                eprintln!("panic on thread {name} ({:?}): {}", p.thread, p.message);
            }
            eprintln!(
                "{}",
                if outcome.is_err() {
                    "a panic reached the caller"
                } else {
                    "a panic on another thread (the journal's writer)"
                }
            );
            std::process::abort();
        }
    }
);
