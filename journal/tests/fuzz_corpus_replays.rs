//! The fuzz corpora in `fuzz/corpus/` replay through the public API without a panic, so that
//! `cargo test` checks them on machines without cargo-fuzz (the fuzz targets themselves run in
//! CI's fuzz smoke):
//! - `journal_file`: each input opens its journal file (a whole file, row edits or byte
//!   patches of the small journal in `fuzz/seeds/`) and reads everything, exactly as the target
//!   does (the input decoding is the target's own module, included here); no panic may reach
//!   the caller or happen on the writer thread;
//! - `envelope`: each stored value is written in place of a row of every kind of the small
//!   journal (log event, chunk, snapshot, entity row, generation row, writer state), which is
//!   then opened and read;
//! - `payload`: the seeds decode with [`EventRecord::decode`] into the user types they were
//!   made from and round-trip; other inputs may fail, never panic.
//!
//! With `--features fuzzing` (`cargo test -p stateline-journal --features fuzzing --test
//! fuzz_corpus_replays`) the envelope inputs also go straight into the crate's decoders.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use stateline_journal::{EventRecord, Manifest, Offset, PersistenceId, Seq};

#[path = "../../fuzz/src/journal_input.rs"]
#[allow(dead_code)]
mod journal_input;

#[path = "../../fuzz/src/user_types.rs"]
#[allow(dead_code)]
mod user_types;

use journal_input::{open_and_read, seed_journal};
use user_types::{AccountEvent, AccountState, Envelope};

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// Panics seen while replaying: (thread, message).
static PANICS: Mutex<Vec<(std::thread::ThreadId, String)>> = Mutex::new(Vec::new());

/// Replays `inputs` of the journal_file target, each under `catch_unwind`, recording panics
/// instead of printing them; returns the failures (escaped or stray panics).
/// Tests that replay take turns: the panic hook is global.
static REPLAYING: Mutex<()> = Mutex::new(());

fn replay_journal_inputs(inputs: &[(String, Vec<u8>)], scratch: &Path) -> Vec<String> {
    let _turn = REPLAYING.lock().unwrap_or_else(|p| p.into_inner());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let t = std::thread::current().id();
        PANICS.lock().unwrap().push((t, info.to_string()));
    }));
    let mut failures = Vec::new();
    for (name, data) in inputs {
        let Some((&control, rest)) = data.split_first() else {
            continue;
        };
        let outcome = std::panic::catch_unwind(|| open_and_read(control, rest, scratch));
        let panics = std::mem::take(&mut *PANICS.lock().unwrap());
        let me = std::thread::current().id();
        for (t, msg) in &panics {
            if *t != me {
                failures.push(format!("{name}: panic on the writer thread: {msg}"));
            }
        }
        if outcome.is_err() {
            failures.push(format!("{name}: a panic reached the caller: {panics:?}"));
        }
    }
    std::panic::set_hook(previous);
    failures
}

fn scratch() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replay.redb");
    (dir, path)
}

#[test]
fn the_seed_journal_reads_back_whole() {
    // Edit mode with no edit: the small journal as built. If the format changes, regenerate it
    // (`cd fuzz && cargo run --example make_seeds`).
    let (_dir, path) = scratch();
    assert!(
        seed_journal().is_some(),
        "fuzz/seeds/small_journal.rle decodes"
    );
    for control in [1, 1 | 8] {
        let counts = open_and_read(control, &[], &path).expect("the seed journal opens");
        assert_eq!(counts.entities, 3, "{counts:?}");
        assert_eq!(counts.errors, 0, "{counts:?}");
        assert_eq!(
            counts.events, 8,
            "3 + 3 + 3 events, one deleted: {counts:?}"
        );
        assert_eq!(counts.changelog, 8, "{counts:?}");
        assert_eq!(counts.snapshots, 2, "{counts:?}");
    }
}

#[test]
fn journal_file_corpus_never_panics() {
    let (_dir, path) = scratch();
    let inputs = corpus("journal_file");
    assert!(!inputs.is_empty());
    let failures = replay_journal_inputs(&inputs, &path);
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn envelope_corpus_in_every_row_kind_never_panics() {
    // (table selector of the journal_file edit encoding, row index): the writer state, the
    // first entity row, chunk, snapshot, generation row and log event.
    const ROWS: [(u8, u8); 6] = [(0, 1), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0)];
    let (_dir, path) = scratch();
    let mut inputs = Vec::new();
    for (name, data) in corpus("envelope") {
        let Some((&control, value)) = data.split_first() else {
            continue;
        };
        let Ok(len) = u8::try_from(value.len()) else {
            continue;
        };
        // The envelope target's bit 0 seals the value: here, reseal the replaced row.
        let op = if control & 1 == 1 { 0x04 } else { 0x00 };
        for (table, index) in ROWS {
            let mut input = vec![1, op, table, index, len];
            input.extend_from_slice(value);
            inputs.push((format!("{name} as row {table}/{index}"), input));
        }
    }
    assert!(inputs.len() >= 6 * 10, "the envelope corpus has its seeds");
    let failures = replay_journal_inputs(&inputs, &path);
    assert!(failures.is_empty(), "{failures:#?}");
}

fn record(payload: Vec<u8>) -> EventRecord {
    EventRecord {
        persistence_id: PersistenceId::parse("account", "alice").unwrap(),
        seq: Seq(1),
        offset: Offset(1),
        event_id: uuid::Uuid::nil(),
        timestamp: chrono::DateTime::UNIX_EPOCH,
        manifest: Manifest::new("AccountEvent", 1),
        payload,
    }
}

fn round_trips<T>(rec: &EventRecord) -> Option<T>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let value = rec.decode::<T>().ok()?;
    let named = rmp_serde::to_vec_named(&value).unwrap();
    assert_eq!(record(named).decode::<T>().unwrap(), value);
    Some(value)
}

#[test]
fn payload_corpus_decodes_and_round_trips() {
    let inputs = corpus("payload");
    for (_, data) in &inputs {
        let rec = record(data.clone());
        round_trips::<AccountEvent>(&rec);
        round_trips::<AccountState>(&rec);
        round_trips::<Envelope<AccountEvent>>(&rec);
        round_trips::<Vec<Option<AccountEvent>>>(&rec);
    }
    // The seeds were made from these types: they must still decode as them.
    let seed = |name: &str| {
        let (_, data) = inputs.iter().find(|(n, _)| n == name).unwrap();
        record(data.clone())
    };
    assert!(round_trips::<AccountEvent>(&seed("event-0")).is_some());
    assert!(round_trips::<AccountEvent>(&seed("event-compact")).is_some());
    assert!(round_trips::<AccountState>(&seed("state")).is_some());
    assert!(round_trips::<Envelope<AccountEvent>>(&seed("envelope")).is_some());
    assert!(round_trips::<Vec<Option<AccountEvent>>>(&seed("events")).is_some());
}

#[cfg(feature = "fuzzing")]
#[test]
fn envelope_corpus_through_the_decoders() {
    use stateline_journal::fuzzing;
    for (_, data) in corpus("envelope") {
        let Some((_, rest)) = data.split_first() else {
            continue;
        };
        for value in [rest.to_vec(), journal_input::seal(rest)] {
            if let Ok(rec) = fuzzing::decode_event(&value) {
                let again = fuzzing::encode_event(&rec).unwrap();
                assert_eq!(fuzzing::decode_event(&again).unwrap(), rec);
            }
            if let Ok(rec) = fuzzing::decode_snapshot(&value) {
                let again = fuzzing::encode_snapshot(&rec).unwrap();
                assert_eq!(fuzzing::decode_snapshot(&again).unwrap(), rec);
            }
            let _ = fuzzing::decode_header(&value);
            let _ = fuzzing::header_format_version(&value);
            let _ = fuzzing::decode_state(&value);
            let _ = fuzzing::decode_generation_row(&value);
            let _ = fuzzing::chunk_frames(&value).count();
            let _ = fuzzing::compact_chunk_reencoded(&value);
            let _ = fuzzing::parse_entity_key(rest);
            let _ = fuzzing::snapshot_key_seq(rest);
        }
    }
}
