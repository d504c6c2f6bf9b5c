//! What the fuzz targets share: realistic user event and state types ([`user_types`]), the
//! input of the `journal_file` target ([`journal_input`]), building the small valid journal
//! that it starts from, and recording panics.

use std::sync::Mutex;

use stateline_journal::{FaultyStorage, JournalError, Manifest, NewEvent, Seq};

pub mod journal_input;
pub mod user_types;

use journal_input::{builder, small_journal_pids, storage_bytes};
pub use journal_input::{seal, seal_keyed};
pub use user_types::{sample_events, sample_state, AccountEvent, AccountState, Envelope, Leg};

/// Builds a small valid journal: three accounts with a few events each, packed chunk rows and
/// an unpacked log segment, snapshots, and a deleted prefix. Its bytes vary from run to run
/// (ids, times, when packing ran), so the targets use the copy in `fuzz/seeds/`.
///
/// # Errors
/// Any journal error while building it.
pub fn small_journal() -> Result<Vec<u8>, JournalError> {
    let storage = FaultyStorage::new();
    {
        let journal = builder().open_with_backend(storage.clone(), "seed")?;
        let events = sample_events();
        for (n, pid) in small_journal_pids().iter().enumerate() {
            let mut seq = 1;
            for ev in events.iter().skip(n).take(3) {
                let new = NewEvent::encode(Manifest::new("AccountEvent", 1), ev)
                    .map_err(|e| JournalError::Io(e.to_string()))?;
                journal.append_blocking(pid, Seq(seq), vec![new])?;
                seq += 1;
            }
            if n != 1 {
                let state = rmp_serde::to_vec_named(&sample_state())
                    .map_err(|e| JournalError::Io(e.to_string()))?;
                journal.save_snapshot_blocking(
                    pid,
                    Seq(2),
                    Manifest::new("AccountState", 1),
                    state,
                )?;
            }
            if n == 2 {
                journal.delete_events_to_blocking(pid, Seq(1))?;
            }
            if n == 0 {
                journal.flush_blocking(true)?;
            }
        }
    }
    storage_bytes(&storage)
}

/// A panic seen by the hook.
pub struct Panic {
    /// The thread it happened on.
    pub thread: std::thread::ThreadId,
    /// That thread's name, if it has one.
    pub name: Option<String>,
    /// The message with its location.
    pub message: String,
}

/// Panics seen by the hook. Installed by the journal_file target, whose journal turns panics
/// of the storage engine on hostile bytes into typed errors (G7) on the calling thread: those
/// are fine; a panic on any other thread (the journal's writer) or one that reaches the caller
/// is a bug.
pub static PANICS: Mutex<Vec<Panic>> = Mutex::new(Vec::new());

/// Records panics in [`PANICS`] instead of aborting at once (libFuzzer's default hook).
pub fn record_panics() {
    std::panic::set_hook(Box::new(|info| {
        let current = std::thread::current();
        let panic = Panic {
            thread: current.id(),
            name: current.name().map(str::to_string),
            message: info.to_string(),
        };
        PANICS.lock().unwrap_or_else(|p| p.into_inner()).push(panic);
    }));
}

/// Takes the recorded panics.
pub fn take_panics() -> Vec<Panic> {
    std::mem::take(&mut *PANICS.lock().unwrap_or_else(|p| p.into_inner()))
}
