//! Damaged and foreign files never panic, hang or read back wrong data (G7).
//!
//! A valid journal is built once (400 events of 20 persistence ids in batches of 1–3, snapshots
//! of a third of them, small log segments so that both packed chunk rows and an unpacked log
//! segment are on disk) and closed. Then, on copies of its bytes, each case applies one kind of
//! damage: a flipped byte every 389 bytes (97 with `STATELINE_SOAK=1`) through the whole file and
//! at random positions, random
//! bit flips over a range, truncations, each page zeroed, a page copied over another, trailing
//! garbage, an empty file, random text, the redb magic followed by garbage, a directory at the
//! path, a missing file with `create(false)`.
//!
//! Every case opens the damaged file four ways, each time on a fresh copy: writable with the
//! defaults ([`Journal::open`], which checks page checksums on open; or the builder with
//! `create(false)` where the case says so), read-only after the page check
//! ([`JournalReader::open_read_only_checked`]), and the two opens that trust a cleanly closed
//! file (`verify_on_open(false)`, plain [`JournalReader::open_read_only`]). When an open succeeds it reads everything: `entities(None)`, and
//! `highest_seq`, `all_events` and `load_snapshot` of every persistence id, and the changelog from
//! offset 1. Each outcome must be a typed error or data equal to the original's: an `Ok` that
//! differs is silent wrong data (a changelog may end with an error after a correct prefix).
//! Single-byte damage in unused space is legitimately harmless and reads back correctly.
//!
//! All cases run once (the first test to need them runs them; each case in its own thread with
//! a [`CASE_DEADLINE`], panics caught with `catch_unwind`); the tests below assert different
//! properties of the outcomes, so that one kind of failure does not hide another:
//! - [`damaged_files_never_panic_or_hang`]: no panic reaches the caller, none happens on the
//!   writer thread, no case hangs (panics inside the storage engine that the journal turns into
//!   typed errors are counted and reported, not failed);
//! - [`damaged_files_never_read_back_wrong_data`]: with the default, checked opens (the
//!   trusting opens are measured and reported);
//! - [`foreign_and_degenerate_files_are_refused`]: missing, empty, foreign files and directories
//!   are `NotAJournal` as documented.
//!
//! `STATELINE_CORRUPT_CASE=<substring>` runs only the matching cases and prints every outcome;
//! `STATELINE_CORRUPT_SEED` changes the random positions.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, TableHandle};
use stateline_journal::{
    EntitySummary, EventRecord, Journal, JournalError, JournalReader, Manifest, NewEvent, Offset,
    PersistenceId, Seq, SnapshotRecord,
};

/// A case running longer than this is a hang.
const CASE_DEADLINE: Duration = Duration::from_secs(20);
const PAGE: usize = 4096;
const PIDS: usize = 20;
const EVENTS: usize = 400;

/// xorshift64: small and seeded.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % (n.max(1) as u64)) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn pid(i: usize) -> PersistenceId {
    PersistenceId::parse("acct", &format!("e{i}")).unwrap()
}

// ---------------------------------------------------------------------------------------------
// The original journal and what it holds.

/// Everything a journal holds, as read through the public API.
#[derive(Debug, Clone, PartialEq)]
struct Contents {
    entities: Vec<EntitySummary>,
    highest: BTreeMap<PersistenceId, Seq>,
    events: BTreeMap<PersistenceId, Vec<EventRecord>>,
    snapshots: BTreeMap<PersistenceId, Option<SnapshotRecord>>,
    changelog: Vec<EventRecord>,
}

impl Contents {
    /// What a freshly created journal holds (an empty file opened with `create(true)`).
    fn empty(pids: &[PersistenceId]) -> Contents {
        Contents {
            entities: Vec::new(),
            highest: pids.iter().map(|p| (p.clone(), Seq(0))).collect(),
            events: pids.iter().map(|p| (p.clone(), Vec::new())).collect(),
            snapshots: pids.iter().map(|p| (p.clone(), None)).collect(),
            changelog: Vec::new(),
        }
    }

    fn read(r: &JournalReader, pids: &[PersistenceId]) -> Contents {
        Contents {
            entities: r.entities(None).unwrap(),
            highest: pids
                .iter()
                .map(|p| (p.clone(), r.highest_seq(p).unwrap()))
                .collect(),
            events: pids
                .iter()
                .map(|p| (p.clone(), r.all_events(p).unwrap()))
                .collect(),
            snapshots: pids
                .iter()
                .map(|p| (p.clone(), r.load_snapshot(p, Seq(u64::MAX)).unwrap()))
                .collect(),
            changelog: r
                .changelog(Offset(1))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap(),
        }
    }
}

/// Builds the original journal at `path` and closes it; returns its bytes.
fn build_original(path: &Path) -> Vec<u8> {
    let mut rng = Rng::new(0x5eed);
    let j = Journal::builder()
        .segment_events(64)
        .pack_step_events(16)
        .open(path)
        .unwrap();
    let mut next = [1u64; PIDS];
    let mut appended = 0;
    while appended < EVENTS {
        let i = rng.below(PIDS);
        let n = (1 + rng.below(3)).min(EVENTS - appended);
        let events: Vec<NewEvent> = (0..n)
            .map(|k| {
                let mut payload = format!("e{i} seq {} ", next[i] + k as u64).into_bytes();
                let extra = rng.below(200);
                payload.extend(rng.bytes(extra));
                NewEvent::new(Manifest::new("Deposited", 1 + rng.below(2) as u32), payload)
            })
            .collect();
        let ack = j.append_blocking(&pid(i), Seq(next[i]), events).unwrap();
        next[i] = ack.last_seq.0 + 1;
        appended += n;
        // Snapshots along the way for every third id, some superseded by later ones.
        if i.is_multiple_of(3) && rng.below(4) == 0 {
            let len = 50 + rng.below(300);
            j.save_snapshot_blocking(&pid(i), ack.last_seq, Manifest::new("S", 1), rng.bytes(len))
                .unwrap();
        }
    }
    j.flush_blocking(true).unwrap();
    drop(j);
    fs::read(path).unwrap()
}

/// Asserts the fixture has what the cases are meant to damage.
fn check_fixture(path: &Path, contents: &Contents) {
    let db = redb::Database::builder().open_read_only(path).unwrap();
    let rtx = db.begin_read().unwrap();
    let names: Vec<String> = rtx
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("stateline.log.")),
        "fixture has no unpacked log segment: {names:?}"
    );
    let chunks = rtx
        .open_table(redb::TableDefinition::<&[u8], &[u8]>::new(
            "stateline.chunks",
        ))
        .unwrap();
    assert!(
        redb::ReadableTableMetadata::len(&chunks).unwrap() > 0,
        "fixture has no chunk rows"
    );
    assert_eq!(contents.entities.len(), PIDS);
    assert_eq!(contents.changelog.len(), EVENTS);
    assert!(
        contents.snapshots.values().filter(|s| s.is_some()).count() >= 3,
        "fixture has too few snapshots"
    );
}

// ---------------------------------------------------------------------------------------------
// Reading a damaged journal.

/// Outcome of one open of one case.
#[derive(Debug, Clone)]
enum Outcome {
    /// Opened and read back exactly the expected data.
    Correct,
    /// A typed error at open or at some read (`variant`, where, message); every `Ok` read
    /// before and after it was correct.
    Typed(String, String),
    /// An `Ok` read that differs from the expected data.
    WrongData(String),
    /// A panic reached the caller.
    Panic(String),
}

fn variant(e: &JournalError) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

/// Reads everything through `r` and compares it with `want`.
fn read_all(r: &JournalReader, want: &Contents) -> Outcome {
    let mut first_error: Option<(String, String)> = None;
    let mut note = |e: JournalError, what: &str| {
        if first_error.is_none() {
            first_error = Some((variant(&e), format!("{what}: {e}")));
        }
    };
    let mut pids: Vec<PersistenceId> = want.events.keys().cloned().collect();
    match r.entities(None) {
        Ok(list) if list == want.entities => {
            for s in list {
                if !pids.contains(&s.persistence_id) {
                    pids.push(s.persistence_id);
                }
            }
        }
        Ok(list) => {
            let diff = list
                .iter()
                .zip(&want.entities)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("first difference: got {a:?}, want {b:?}"))
                .unwrap_or_default();
            return Outcome::WrongData(format!(
                "entities(None): {} entries, want {}; {diff}",
                list.len(),
                want.entities.len()
            ));
        }
        Err(e) => note(e, "entities"),
    }
    for p in &pids {
        let want_highest = want.highest.get(p).copied().unwrap_or_default();
        match r.highest_seq(p) {
            Ok(s) if s == want_highest => {}
            Ok(s) => {
                return Outcome::WrongData(format!("highest_seq({p}) = {s}, want {want_highest}"))
            }
            Err(e) => note(e, "highest_seq"),
        }
        let want_events = want.events.get(p).cloned().unwrap_or_default();
        match r.all_events(p) {
            Ok(evs) if evs == want_events => {}
            Ok(evs) => {
                return Outcome::WrongData(format!(
                    "all_events({p}): {} events (seqs {:?}), want {}",
                    evs.len(),
                    evs.iter().map(|e| e.seq.0).collect::<Vec<_>>(),
                    want_events.len()
                ))
            }
            Err(e) => note(e, "all_events"),
        }
        let want_snapshot = want.snapshots.get(p).cloned().unwrap_or_default();
        match r.load_snapshot(p, Seq(u64::MAX)) {
            Ok(s) if s == want_snapshot => {}
            Ok(s) => {
                return Outcome::WrongData(format!(
                    "load_snapshot({p}): seq {:?}, want {:?}",
                    s.map(|s| s.seq),
                    want_snapshot.map(|s| s.seq)
                ))
            }
            Err(e) => note(e, "load_snapshot"),
        }
    }
    match r.changelog(Offset(1)) {
        Ok(iter) => {
            let mut n = 0;
            let mut ended_with_error = false;
            for item in iter {
                match item {
                    Ok(rec) if want.changelog.get(n) == Some(&rec) => n += 1,
                    Ok(rec) => {
                        return Outcome::WrongData(format!(
                            "changelog item {n}: got {} seq {} offset {}, want {:?}",
                            rec.persistence_id,
                            rec.seq,
                            rec.offset,
                            want.changelog.get(n).map(|w| format!(
                                "{} seq {} offset {}",
                                w.persistence_id, w.seq, w.offset
                            ))
                        ))
                    }
                    Err(e) => {
                        note(e, "changelog item");
                        ended_with_error = true;
                        break;
                    }
                }
            }
            if !ended_with_error && n != want.changelog.len() {
                return Outcome::WrongData(format!(
                    "changelog ended after {n} of {} events without an error",
                    want.changelog.len()
                ));
            }
        }
        Err(e) => note(e, "changelog"),
    }
    match first_error {
        Some((v, e)) => Outcome::Typed(v, e),
        None => Outcome::Correct,
    }
}

fn soak() -> bool {
    std::env::var("STATELINE_SOAK").is_ok_and(|v| v == "1")
}

/// How a case's file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Handle {
    /// `Journal::open` with the defaults (which check every page checksum on open), or the
    /// builder with `create(false)` when the case asks.
    Writable,
    /// `JournalReader::open_read_only_checked`: the page check, then a read-only open.
    ReadOnlyChecked,
    /// The builder with `verify_on_open(false)`: trusts a cleanly closed file.
    WritableUnverified,
    /// `JournalReader::open_read_only` alone: trusts a cleanly closed file.
    ReadOnly,
}

const HANDLES: [Handle; 4] = [
    Handle::Writable,
    Handle::ReadOnlyChecked,
    Handle::WritableUnverified,
    Handle::ReadOnly,
];

fn open_and_read(handle: Handle, path: &Path, create: bool, want: &Contents) -> Outcome {
    let opened = |e: JournalError| Outcome::Typed(variant(&e), format!("open: {e}"));
    match handle {
        Handle::ReadOnly => match JournalReader::open_read_only(path) {
            Ok(r) => read_all(&r, want),
            Err(e) => opened(e),
        },
        Handle::ReadOnlyChecked => match JournalReader::open_read_only_checked(path) {
            Ok((r, _)) => read_all(&r, want),
            Err(e) => opened(e),
        },
        Handle::Writable | Handle::WritableUnverified => {
            let mut builder = Journal::builder().create(create);
            if handle == Handle::WritableUnverified {
                builder = builder.verify_on_open(false);
            }
            match builder.open(path) {
                Ok(j) => {
                    let outcome = read_all(&j, want);
                    drop(j); // joins the writer thread: a hang here is caught by the deadline
                    outcome
                }
                Err(e) => opened(e),
            }
        }
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

// ---------------------------------------------------------------------------------------------
// Cases.

/// What is put at the journal's path.
#[derive(Clone)]
enum Setup {
    Bytes(Vec<u8>),
    Missing,
    Directory,
}

/// What a case may legitimately read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// The original data, or a typed error.
    Original,
    /// Writable opens (which create) may find a fresh empty journal; read-only: `NotAJournal`.
    EmptyFile,
    /// Not a journal: every open fails with `NotAJournal` (documented for missing, empty and
    /// foreign files and directories).
    NotAJournal,
    /// Not a journal: every open fails with a typed error.
    AnyError,
}

struct Case {
    name: String,
    setup: Setup,
    expect: Expect,
    create: bool,
}

fn cases(orig: &[u8], rng: &mut Rng) -> Vec<Case> {
    let len = orig.len();
    let mut out = Vec::new();
    let damaged = |name: String, b: Vec<u8>| Case {
        name,
        setup: Setup::Bytes(b),
        expect: Expect::Original,
        create: true,
    };
    // A flipped byte every 97 bytes, across the whole file.
    let step = if soak() { 97 } else { 389 };
    for pos in (0..len).step_by(step) {
        let mut b = orig.to_vec();
        b[pos] ^= 0xFF;
        out.push(damaged(format!("flip byte {pos}"), b));
    }
    // Random positions, random masks.
    for _ in 0..if soak() { 300 } else { 120 } {
        let pos = rng.below(len);
        let mask = 1 + rng.below(255) as u8;
        let mut b = orig.to_vec();
        b[pos] ^= mask;
        out.push(damaged(format!("xor byte {pos} with {mask:#04x}"), b));
    }
    // Random bit flips over a range.
    for _ in 0..60 {
        let span = 1 + rng.below(4 * PAGE);
        let start = rng.below(len - span);
        let flips = 1 + rng.below(32);
        let mut b = orig.to_vec();
        for _ in 0..flips {
            b[start + rng.below(span)] ^= 1 << rng.below(8);
        }
        out.push(damaged(
            format!("{flips} bit flips in {start}..{}", start + span),
            b,
        ));
    }
    // Truncations.
    let mut cuts = vec![0, 1, PAGE - 1, PAGE, len / 2, len - 1];
    cuts.extend((0..20).map(|_| rng.below(len)));
    for cut in cuts {
        let mut c = damaged(format!("truncated to {cut} of {len}"), orig[..cut].to_vec());
        if cut == 0 {
            c.expect = Expect::EmptyFile;
        }
        out.push(c);
    }
    // Each page zeroed.
    let pages = len / PAGE;
    for p in 0..pages {
        let mut b = orig.to_vec();
        b[p * PAGE..(p + 1) * PAGE].fill(0);
        out.push(damaged(format!("page {p} zeroed"), b));
    }
    // A page copied over another: each page over its successor, and random pairs.
    let mut pairs: Vec<(usize, usize)> = (0..pages.saturating_sub(1)).map(|p| (p, p + 1)).collect();
    pairs.extend((0..40).map(|_| (rng.below(pages), rng.below(pages))));
    for (src, dst) in pairs.into_iter().filter(|(s, d)| s != d) {
        let mut b = orig.to_vec();
        b.copy_within(src * PAGE..(src + 1) * PAGE, dst * PAGE);
        out.push(damaged(format!("page {src} copied over page {dst}"), b));
    }
    // Trailing garbage.
    for n in [1, 17, PAGE, 10_000] {
        let mut b = orig.to_vec();
        b.extend(rng.bytes(n));
        out.push(damaged(format!("{n} random bytes appended"), b));
    }
    let mut b = orig.to_vec();
    b.extend(vec![0u8; 3 * PAGE]);
    out.push(damaged("3 zero pages appended".into(), b));
    // Foreign and degenerate files.
    let other = |name: &str, setup: Setup, expect: Expect, create: bool| Case {
        name: name.into(),
        setup,
        expect,
        create,
    };
    out.push(other(
        "empty file",
        Setup::Bytes(Vec::new()),
        Expect::EmptyFile,
        true,
    ));
    out.push(other(
        "empty file, create(false)",
        Setup::Bytes(Vec::new()),
        Expect::NotAJournal,
        false,
    ));
    let text: String = (0..5000)
        .map(|_| (b' ' + rng.below(95) as u8) as char)
        .collect();
    out.push(other(
        "random text",
        Setup::Bytes(text.into_bytes()),
        Expect::NotAJournal,
        true,
    ));
    for n in [16, PAGE, 5 * PAGE] {
        let mut b = orig[..9].to_vec(); // the redb magic number
        b.extend(rng.bytes(n));
        out.push(other(
            &format!("redb magic + {n} random bytes"),
            Setup::Bytes(b),
            Expect::AnyError,
            true,
        ));
    }
    out.push(other(
        "random bytes, original length",
        Setup::Bytes(rng.bytes(len)),
        Expect::NotAJournal,
        true,
    ));
    out.push(other(
        "directory at the path",
        Setup::Directory,
        Expect::NotAJournal,
        true,
    ));
    out.push(other(
        "missing file, create(false)",
        Setup::Missing,
        Expect::NotAJournal,
        false,
    ));
    out
}

// ---------------------------------------------------------------------------------------------
// Running the cases once.

/// Panics seen by the hook while cases run: (thread name, message with location).
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

fn take_panics() -> Vec<(String, String)> {
    std::mem::take(&mut *PANICS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Records every panic (thread name, message) in [`PANICS`] instead of printing it, until
/// dropped; then the previous hook is back.
struct RecordPanics {
    previous: Option<PanicHook>,
}

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

impl RecordPanics {
    fn install(with_backtrace: bool) -> RecordPanics {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_string();
            let mut msg = info.to_string();
            if with_backtrace {
                msg = format!("{msg}\n{}", std::backtrace::Backtrace::force_capture());
            }
            PANICS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((thread, msg));
        }));
        RecordPanics {
            previous: Some(previous),
        }
    }
}

impl Drop for RecordPanics {
    fn drop(&mut self) {
        if let Some(previous) = self.previous.take() {
            std::panic::set_hook(previous);
        }
    }
}

struct CaseResult {
    name: String,
    expect: Expect,
    /// One outcome per handle; empty if the case hung.
    outcomes: Vec<(Handle, Outcome)>,
    hung: bool,
    /// Panics on threads other than the case thread (the journal's writer thread).
    stray_panics: Vec<String>,
    /// Panics on the case thread that the journal turned into typed errors.
    contained_panics: usize,
}

struct Run {
    results: Vec<CaseResult>,
}

fn run_case(
    root: &Path,
    index: usize,
    case: &Case,
    original: &Arc<Contents>,
    fresh: &Arc<Contents>,
) -> CaseResult {
    let dir = root.join(format!("case-{index}"));
    fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for h in HANDLES {
        let p = dir.join(format!("{h:?}.redb"));
        match &case.setup {
            Setup::Bytes(b) => fs::write(&p, b).unwrap(),
            Setup::Missing => {}
            Setup::Directory => fs::create_dir(&p).unwrap(),
        }
        paths.push((h, p));
    }
    let (original, fresh) = (original.clone(), fresh.clone());
    let (create, expect) = (case.create, case.expect);
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("case-{index}"))
        .spawn(move || {
            let mut outcomes = Vec::new();
            for (h, p) in paths {
                let want = match (expect, h) {
                    (Expect::EmptyFile, Handle::Writable | Handle::WritableUnverified) => &fresh,
                    _ => &original,
                };
                let outcome = catch_unwind(AssertUnwindSafe(|| open_and_read(h, &p, create, want)))
                    .unwrap_or_else(|p| Outcome::Panic(panic_message(&*p)));
                outcomes.push((h, outcome));
            }
            let _ = tx.send(outcomes);
        })
        .unwrap();
    let (outcomes, hung) = match rx.recv_timeout(CASE_DEADLINE) {
        Ok(o) => {
            let _ = fs::remove_dir_all(&dir);
            (o, false)
        }
        Err(_) => (Vec::new(), true),
    };
    let case_thread = format!("case-{index}");
    let mut stray_panics = Vec::new();
    let mut on_case_thread = 0usize;
    for (thread, msg) in take_panics() {
        if std::env::var_os("STATELINE_CORRUPT_CASE").is_some() {
            println!("panic on thread {thread}: {msg}");
        }
        if thread == case_thread {
            on_case_thread += 1;
        } else {
            stray_panics.push(format!("thread {thread}: {msg}"));
        }
    }
    let escaped = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Panic(_)))
        .count();
    CaseResult {
        name: case.name.clone(),
        expect: case.expect,
        outcomes,
        hung,
        stray_panics,
        contained_panics: on_case_thread.saturating_sub(escaped),
    }
}

fn run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| {
        let started = Instant::now();
        let root = tempfile::tempdir().unwrap();
        let original_path = root.path().join("original.redb");
        let orig = build_original(&original_path);
        let pids: Vec<PersistenceId> = (0..PIDS).map(pid).collect();
        let contents = {
            let copy = root.path().join("reference.redb");
            fs::write(&copy, &orig).unwrap();
            Contents::read(&JournalReader::open_read_only(&copy).unwrap(), &pids)
        };
        check_fixture(&original_path, &contents);
        let original = Arc::new(contents);
        let fresh = Arc::new(Contents::empty(&pids));
        let seed = std::env::var("STATELINE_CORRUPT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x00C0_FFEE);
        let only = std::env::var("STATELINE_CORRUPT_CASE").ok();
        let all: Vec<Case> = cases(&orig, &mut Rng::new(seed))
            .into_iter()
            .filter(|c| only.as_ref().is_none_or(|o| c.name.contains(o.as_str())))
            .collect();
        println!(
            "corrupt_inputs: {} cases on a {} byte journal ({} events, {} pages), seed {seed}",
            all.len(),
            orig.len(),
            original.changelog.len(),
            orig.len() / PAGE
        );
        let verbose = only.is_some();
        let hook = RecordPanics::install(verbose);
        let mut results = Vec::new();
        for (i, case) in all.iter().enumerate() {
            let r = run_case(root.path(), i, case, &original, &fresh);
            if verbose {
                println!("{}: hung={} {:?}", r.name, r.hung, r.outcomes);
            }
            results.push(r);
        }
        drop(hook);
        let run = Run { results };
        run.summary(started.elapsed());
        run
    })
}

impl Run {
    fn summary(&self, elapsed: Duration) {
        let mut by_handle: BTreeMap<Handle, BTreeMap<String, usize>> = BTreeMap::new();
        for r in &self.results {
            for (h, o) in &r.outcomes {
                let key = match o {
                    Outcome::Correct => "correct".to_string(),
                    Outcome::Typed(v, _) => format!("typed {v}"),
                    Outcome::WrongData(_) => "WRONG DATA".to_string(),
                    Outcome::Panic(_) => "PANIC".to_string(),
                };
                *by_handle.entry(*h).or_default().entry(key).or_default() += 1;
            }
        }
        let opens: usize = self.results.iter().map(|r| r.outcomes.len()).sum();
        let typed = self.count(|_, o| matches!(o, Outcome::Typed(..)));
        let correct = self.count(|_, o| matches!(o, Outcome::Correct));
        println!(
            "corrupt_inputs: {} cases, {opens} opens: {typed} typed errors, {correct} correct \
             results; {} hangs; {} engine panics contained as typed errors; {elapsed:?}",
            self.results.len(),
            self.results.iter().filter(|r| r.hung).count(),
            self.results
                .iter()
                .map(|r| r.contained_panics)
                .sum::<usize>(),
        );
        for (h, counts) in by_handle {
            println!("  {h:?}: {counts:?}");
        }
        let mut examples: BTreeMap<&str, &str> = BTreeMap::new();
        for (_, o) in self.results.iter().flat_map(|r| r.outcomes.iter()) {
            if let Outcome::Typed(v, detail) = o {
                examples.entry(v.as_str()).or_insert(detail.as_str());
            }
        }
        for (v, detail) in examples {
            println!("  e.g. {v}: {detail}");
        }
    }

    fn count(&self, f: impl Fn(Handle, &Outcome) -> bool) -> usize {
        self.results
            .iter()
            .flat_map(|r| r.outcomes.iter())
            .filter(|(h, o)| f(*h, o))
            .count()
    }

    /// Failures found by `f` over every case, printed (grouped by what was read wrong, then
    /// the first 200); fails if there are any.
    fn assert_none(&self, what: &str, f: impl Fn(&CaseResult) -> Vec<String>) {
        let per_case: Vec<Vec<String>> = self.results.iter().map(&f).collect();
        let cases = per_case.iter().filter(|v| !v.is_empty()).count();
        let failures: Vec<String> = per_case.into_iter().flatten().collect();
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for line in &failures {
            let kind = line
                .split("]: ")
                .nth(1)
                .and_then(|rest| rest.split(['(', ':']).nth(1))
                .unwrap_or(line)
                .split(|c: char| c.is_ascii_digit())
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            *kinds.entry(kind).or_default() += 1;
        }
        if !failures.is_empty() {
            println!(
                "{what}: {} failures in {cases} cases, by kind: {kinds:?}",
                failures.len()
            );
        }
        for line in failures.iter().take(200) {
            println!("{what}: {line}");
        }
        if failures.len() > 200 {
            println!("{what}: ... and {} more", failures.len() - 200);
        }
        assert!(
            failures.is_empty(),
            "{what}: {} failures in {cases} of {} cases (see the lines above)",
            failures.len(),
            self.results.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The properties.

#[test]
fn damaged_files_never_panic_or_hang() {
    run().assert_none("panic or hang", |r| {
        let mut out: Vec<String> = r
            .outcomes
            .iter()
            .filter_map(|(h, o)| match o {
                Outcome::Panic(m) => {
                    Some(format!("{} [{h:?}]: panic reached the caller: {m}", r.name))
                }
                _ => None,
            })
            .collect();
        if r.hung {
            out.push(format!(
                "{}: no outcome within {CASE_DEADLINE:?} (hang)",
                r.name
            ));
        }
        out.extend(r.stray_panics.iter().map(|p| format!("{}: {p}", r.name)));
        out
    });
}

fn wrong_data(r: &CaseResult, handles: &[Handle]) -> Vec<String> {
    r.outcomes
        .iter()
        .filter(|(h, _)| handles.contains(h))
        .filter_map(|(h, o)| match o {
            Outcome::WrongData(m) => Some(format!("{} [{h:?}]: silent wrong data: {m}", r.name)),
            _ => None,
        })
        .collect()
}

/// The default opens (writable with its page check, and the checked read-only open) never
/// return wrong data. The unverified opens trust a cleanly closed file: damage to a B-tree key
/// can hide a row from a point lookup (a `highest_seq` of 0 for an entity with history), which
/// only a page check or a full scan (`verify`) can notice. They are measured, not asserted.
#[test]
fn damaged_files_never_read_back_wrong_data() {
    let r = run();
    let unverified: usize = r
        .results
        .iter()
        .map(|c| wrong_data(c, &[Handle::WritableUnverified, Handle::ReadOnly]).len())
        .sum();
    println!("unverified opens (verify_on_open(false), open_read_only): {unverified} wrong reads");
    r.assert_none("wrong data", |c| {
        wrong_data(c, &[Handle::Writable, Handle::ReadOnlyChecked])
    });
}

#[test]
fn foreign_and_degenerate_files_are_refused() {
    run().assert_none("not refused", |r| {
        r.outcomes
            .iter()
            .filter_map(|(h, o)| {
                let ok = match (r.expect, h, o) {
                    (Expect::Original, _, _) => true,
                    (Expect::EmptyFile, Handle::Writable | Handle::WritableUnverified, o) => {
                        matches!(o, Outcome::Correct)
                    }
                    (Expect::EmptyFile | Expect::NotAJournal, _, Outcome::Typed(v, _)) => {
                        v == "NotAJournal"
                    }
                    (Expect::AnyError, _, Outcome::Typed(..)) => true,
                    _ => false,
                };
                (!ok).then(|| format!("{} [{h:?}]: expected {:?}, got {o:?}", r.name, r.expect))
            })
            .collect()
    });
}
