//! Damaged and foreign files never panic, hang or read back wrong data (G7).
//!
//! A valid journal is built once (about 400 events of 20 persistence ids in batches of 1–3,
//! snapshots of a third of them, small log segments so that both packed chunk rows and an
//! unpacked log segment are on disk) and closed. Then, on copies of its bytes, each case
//! applies one kind of damage: flipped bytes stepping through the whole file and at random
//! positions, random bit flips over a range, truncations, a zeroed page, a page copied over
//! another, trailing garbage, an empty file, a non-redb file, a redb magic followed by garbage, a
//! directory at the path, a missing file with `create(false)`.
//!
//! Every case opens the damaged file twice, writable ([`Journal::open`] or the builder) and
//! read-only ([`JournalReader::open_read_only`]), each on its own copy; when an open succeeds it
//! reads everything: `entities(None)`, `highest_seq`, `all_events` and `load_snapshot` of every
//! persistence id, and the changelog from offset 1. The outcome must be a typed error or data
//! equal to the original's (an `Ok` that differs is silent wrong data; a changelog may stop with
//! an error after a correct prefix). A panic that reaches the caller, a panic on the writer
//! thread, or a case running longer than [`CASE_DEADLINE`] (a hang) fails the test; panics inside
//! the storage engine that the journal turns into a typed error are counted and reported.
//! Single-byte damage in unused space is legitimately harmless and reads back correct data.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
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

/// Everything the original journal holds, as read through the public API.
#[derive(Debug, Clone, PartialEq)]
struct Contents {
    entities: Vec<EntitySummary>,
    highest: BTreeMap<PersistenceId, Seq>,
    events: BTreeMap<PersistenceId, Vec<EventRecord>>,
    snapshots: BTreeMap<PersistenceId, Option<SnapshotRecord>>,
    changelog: Vec<EventRecord>,
}

impl Contents {
    /// What a freshly created journal holds (for an empty file opened with `create(true)`).
    fn empty(pids: &[PersistenceId]) -> Contents {
        Contents {
            entities: Vec::new(),
            highest: pids.iter().map(|p| (p.clone(), Seq(0))).collect(),
            events: pids.iter().map(|p| (p.clone(), Vec::new())).collect(),
            snapshots: pids.iter().map(|p| (p.clone(), None)).collect(),
            changelog: Vec::new(),
        }
    }
}

/// Builds the original journal; returns its bytes.
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
        let n = 1 + rng.below(3);
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
        // Snapshots along the way for every third id, some of them superseded later.
        if i % 3 == 0 && rng.below(4) == 0 {
            let len = 50 + rng.below(300);
            j.save_snapshot_blocking(&pid(i), ack.last_seq, Manifest::new("S", 1), rng.bytes(len))
                .unwrap();
        }
    }
    j.flush_blocking(true).unwrap();
    drop(j);
    fs::read(path).unwrap()
}

/// Asserts the fixture covers what the cases are meant to damage.
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
    assert!(contents.changelog.len() >= EVENTS);
    assert!(
        contents.snapshots.values().filter(|s| s.is_some()).count() >= 3,
        "fixture has too few snapshots"
    );
}

/// Outcome of one handle in one case.
#[derive(Debug)]
enum Outcome {
    /// Opened and read back exactly the expected data.
    Correct,
    /// A typed error, at open or at some read (every `Ok` read before it was correct).
    Typed(String),
}

fn variant(e: &JournalError) -> String {
    let d = format!("{e:?}");
    d.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("")
        .to_string()
}

/// Reads everything through `r` and compares with `want`. `Err` is silent wrong data.
fn read_all(r: &JournalReader, want: &Contents) -> Result<Outcome, String> {
    let mut first_error: Option<String> = None;
    let mut note = |e: JournalError, what: &str| {
        if first_error.is_none() {
            first_error = Some(format!("{what}: {} ({e})", variant(&e)));
        }
    };
    let mut pids: Vec<PersistenceId> = want.events.keys().cloned().collect();
    match r.entities(None) {
        Ok(list) => {
            if list != want.entities {
                return Err(format!(
                    "entities(None) differs: got {} entries {:?}..., want {}",
                    list.len(),
                    list.first(),
                    want.entities.len()
                ));
            }
            for s in list {
                if !pids.contains(&s.persistence_id) {
                    pids.push(s.persistence_id);
                }
            }
        }
        Err(e) => note(e, "entities"),
    }
    for p in &pids {
        match r.highest_seq(p) {
            Ok(s) if Some(&s) == want.highest.get(p) => {}
            Ok(s) => {
                return Err(format!(
                    "highest_seq({p}) = {s}, want {:?}",
                    want.highest.get(p)
                ))
            }
            Err(e) => note(e, "highest_seq"),
        }
        match r.all_events(p) {
            Ok(evs) if Some(&evs) == want.events.get(p) => {}
            Ok(evs) => {
                return Err(format!(
                    "all_events({p}): {} events, want {:?}",
                    evs.len(),
                    want.events.get(p).map(Vec::len)
                ))
            }
            Err(e) => note(e, "all_events"),
        }
        match r.load_snapshot(p, Seq(u64::MAX)) {
            Ok(s) if Some(&s) == want.snapshots.get(p) => {}
            Ok(s) => {
                return Err(format!(
                    "load_snapshot({p}): got seq {:?}, want {:?}",
                    s.map(|s| s.seq),
                    want.snapshots.get(p).map(|s| s.as_ref().map(|s| s.seq))
                ))
            }
            Err(e) => note(e, "load_snapshot"),
        }
    }
    match r.changelog(Offset(1)) {
        Ok(iter) => {
            let mut n = 0;
            for item in iter {
                match item {
                    Ok(rec) => {
                        if want.changelog.get(n) != Some(&rec) {
                            return Err(format!(
                                "changelog item {n}: got {} seq {} offset {}, want {:?}",
                                rec.persistence_id,
                                rec.seq,
                                rec.offset,
                                want.changelog.get(n).map(|w| (w.seq, w.offset))
                            ));
                        }
                        n += 1;
                    }
                    Err(e) => {
                        note(e, "changelog item");
                        n = usize::MAX;
                        break;
                    }
                }
            }
            if n != usize::MAX && n != want.changelog.len() {
                return Err(format!(
                    "changelog ended after {n} of {} events without an error",
                    want.changelog.len()
                ));
            }
        }
        Err(e) => note(e, "changelog"),
    }
    Ok(match first_error {
        Some(e) => Outcome::Typed(e),
        None => Outcome::Correct,
    })
}

fn read_contents(r: &JournalReader, pids: &[PersistenceId]) -> Contents {
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

/// What is put at the journal's path.
#[derive(Clone)]
enum Setup {
    Bytes(Vec<u8>),
    Missing,
    Directory,
}

/// What a case may legitimately read back.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// The original data (or a typed error).
    Original,
    /// A freshly created, empty journal (or a typed error): only writable opens with `create`.
    FreshWhenWritable,
    /// Nothing there is a journal: any successful open is wrong.
    ErrorOnly,
}

struct Case {
    name: String,
    setup: Setup,
    expect: Expect,
    create: bool,
}

fn open_writable_and_read(path: &Path, create: bool, want: &Contents) -> Result<Outcome, String> {
    let j = match Journal::builder().create(create).open(path) {
        Ok(j) => j,
        Err(e) => return Ok(Outcome::Typed(format!("open: {} ({e})", variant(&e)))),
    };
    let r = read_all(&j, want);
    drop(j); // joins the writer thread: a hang here is caught by the deadline
    r
}

fn open_read_only_and_read(path: &Path, want: &Contents) -> Result<Outcome, String> {
    let r = match JournalReader::open_read_only(path) {
        Ok(r) => r,
        Err(e) => return Ok(Outcome::Typed(format!("open: {} ({e})", variant(&e)))),
    };
    read_all(&r, want)
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "non-string panic".into())
}

/// Panics seen by the hook: (thread name, message with location).
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

#[derive(Default)]
struct Tally {
    cases: usize,
    handles: usize,
    typed: usize,
    correct: usize,
    contained_panics: usize,
    by_error: BTreeMap<String, usize>,
    failures: Vec<String>,
}

impl Tally {
    fn record(
        &mut self,
        case: &str,
        handle: &str,
        r: std::thread::Result<Result<Outcome, String>>,
        expect: Expect,
    ) {
        self.handles += 1;
        match r {
            Err(p) => self.failures.push(format!(
                "{case} [{handle}]: panic reached the caller: {}",
                panic_message(&*p)
            )),
            Ok(Err(wrong)) => self
                .failures
                .push(format!("{case} [{handle}]: silent wrong data: {wrong}")),
            Ok(Ok(Outcome::Correct)) if expect == Expect::ErrorOnly => self.failures.push(format!(
                "{case} [{handle}]: opened something that is not a journal"
            )),
            Ok(Ok(Outcome::Correct)) => self.correct += 1,
            Ok(Ok(Outcome::Typed(e))) => {
                self.typed += 1;
                let v = e
                    .split(": ")
                    .nth(1)
                    .and_then(|s| s.split(' ').next())
                    .unwrap_or("?")
                    .to_string();
                *self.by_error.entry(v).or_default() += 1;
            }
        }
    }
}

/// Runs one case on two copies (writable, read-only) in a thread with a deadline.
fn run_case(
    root: &Path,
    index: usize,
    case: &Case,
    original: &Arc<Contents>,
    fresh: &Arc<Contents>,
    tally: &mut Tally,
) {
    tally.cases += 1;
    let dir = root.join(format!("case-{index}"));
    fs::create_dir_all(&dir).unwrap();
    let wpath = dir.join("w.redb");
    let rpath = dir.join("r.redb");
    for p in [&wpath, &rpath] {
        match &case.setup {
            Setup::Bytes(b) => fs::write(p, b).unwrap(),
            Setup::Missing => {}
            Setup::Directory => fs::create_dir(p).unwrap(),
        }
    }
    let want_w = if case.expect == Expect::FreshWhenWritable {
        fresh.clone()
    } else {
        original.clone()
    };
    let want_r = original.clone();
    let create = case.create;
    let (tx, rx) = mpsc::channel();
    let (wp, rp) = (wpath.clone(), rpath.clone());
    std::thread::Builder::new()
        .name(format!("case-{index}"))
        .spawn(move || {
            let w = catch_unwind(AssertUnwindSafe(|| {
                open_writable_and_read(&wp, create, &want_w)
            }));
            let r = catch_unwind(AssertUnwindSafe(|| open_read_only_and_read(&rp, &want_r)));
            let _ = tx.send((w, r));
        })
        .unwrap();
    match rx.recv_timeout(CASE_DEADLINE) {
        Ok((w, r)) => {
            tally.record(&case.name, "writable", w, case.expect);
            tally.record(&case.name, "read-only", r, case.expect);
            let _ = fs::remove_dir_all(&dir);
        }
        Err(_) => {
            tally.handles += 2;
            tally.failures.push(format!(
                "{}: no outcome within {CASE_DEADLINE:?} (hang)",
                case.name
            ));
        }
    }
    // Panics since the last case: on the writer thread they are failures (nobody catches them);
    // on the case thread they either reached the caller (already a failure) or were turned into
    // typed errors by the journal (counted).
    let panics: Vec<(String, String)> = std::mem::take(&mut *PANICS.lock().unwrap());
    for (thread, msg) in panics {
        if thread.starts_with("case-") {
            tally.contained_panics += 1;
        } else {
            tally
                .failures
                .push(format!("{}: panic on thread {thread}: {msg}", case.name));
        }
    }
}

fn cases(orig: &[u8], rng: &mut Rng) -> Vec<Case> {
    let len = orig.len();
    let mut out = Vec::new();
    let bytes_case = |name: String, b: Vec<u8>| Case {
        name,
        setup: Setup::Bytes(b),
        expect: Expect::Original,
        create: true,
    };
    // Every 97th byte flipped, across the whole file.
    for pos in (0..len).step_by(97) {
        let mut b = orig.to_vec();
        b[pos] ^= 0xFF;
        out.push(bytes_case(format!("flip byte {pos}"), b));
    }
    // Random positions, random masks.
    for _ in 0..300 {
        let pos = rng.below(len);
        let mask = 1 + rng.below(255) as u8;
        let mut b = orig.to_vec();
        b[pos] ^= mask;
        out.push(bytes_case(format!("xor byte {pos} with {mask:#04x}"), b));
    }
    // Random bit flips over a range.
    for _ in 0..60 {
        let span = 1 + rng.below(4 * PAGE);
        let start = rng.below(len - span.min(len - 1));
        let flips = 1 + rng.below(32);
        let mut b = orig.to_vec();
        for _ in 0..flips {
            let pos = start + rng.below(span);
            if pos < len {
                b[pos] ^= 1 << rng.below(8);
            }
        }
        out.push(bytes_case(
            format!("{flips} bit flips in {start}..{}", start + span),
            b,
        ));
    }
    // Truncations.
    let mut cuts = vec![0, 1, PAGE - 1, PAGE, len / 2, len - 1];
    cuts.extend((0..20).map(|_| rng.below(len)));
    for cut in cuts {
        let mut c = bytes_case(format!("truncated to {cut} of {len}"), orig[..cut].to_vec());
        if cut == 0 {
            c.expect = Expect::FreshWhenWritable;
        }
        out.push(c);
    }
    // Each page zeroed.
    let pages = len / PAGE;
    for p in 0..pages {
        let mut b = orig.to_vec();
        b[p * PAGE..(p + 1) * PAGE].fill(0);
        out.push(bytes_case(format!("page {p} zeroed"), b));
    }
    // A page copied over another: neighbours, and random pairs.
    let mut pairs: Vec<(usize, usize)> = (0..pages.saturating_sub(1)).map(|p| (p, p + 1)).collect();
    pairs.extend((0..40).map(|_| (rng.below(pages), rng.below(pages))));
    for (src, dst) in pairs.into_iter().filter(|(s, d)| s != d) {
        let mut b = orig.to_vec();
        b.copy_within(src * PAGE..(src + 1) * PAGE, dst * PAGE);
        out.push(bytes_case(format!("page {src} copied over page {dst}"), b));
    }
    // Trailing garbage.
    for n in [1, 17, PAGE, 10_000] {
        let mut b = orig.to_vec();
        b.extend(rng.bytes(n));
        out.push(bytes_case(format!("{n} random bytes appended"), b));
    }
    let mut b = orig.to_vec();
    b.extend(vec![0u8; 3 * PAGE]);
    out.push(bytes_case("3 zero pages appended".into(), b));
    // Foreign and degenerate files.
    out.push(Case {
        name: "empty file".into(),
        setup: Setup::Bytes(Vec::new()),
        expect: Expect::FreshWhenWritable,
        create: true,
    });
    out.push(Case {
        name: "empty file, create(false)".into(),
        setup: Setup::Bytes(Vec::new()),
        expect: Expect::ErrorOnly,
        create: false,
    });
    let text: String = (0..5000)
        .map(|_| (b' ' + rng.below(95) as u8) as char)
        .collect();
    out.push(Case {
        name: "random text".into(),
        setup: Setup::Bytes(text.into_bytes()),
        expect: Expect::ErrorOnly,
        create: true,
    });
    for n in [16, PAGE, 5 * PAGE] {
        let mut b = orig[..9].to_vec(); // the redb magic number
        b.extend(rng.bytes(n));
        out.push(Case {
            name: format!("redb magic + {n} random bytes"),
            setup: Setup::Bytes(b),
            expect: Expect::ErrorOnly,
            create: true,
        });
    }
    out.push(Case {
        name: "random file of original length".into(),
        setup: Setup::Bytes(rng.bytes(len)),
        expect: Expect::ErrorOnly,
        create: true,
    });
    out.push(Case {
        name: "directory at the path".into(),
        setup: Setup::Directory,
        expect: Expect::ErrorOnly,
        create: true,
    });
    out.push(Case {
        name: "missing file, create(false)".into(),
        setup: Setup::Missing,
        expect: Expect::ErrorOnly,
        create: false,
    });
    out
}

#[test]
fn corrupt_inputs_give_typed_errors_or_correct_data() {
    let started = Instant::now();
    let root = tempfile::tempdir().unwrap();
    let original_path = root.path().join("original.redb");
    let orig = build_original(&original_path);
    let pids: Vec<PersistenceId> = (0..PIDS).map(pid).collect();
    let contents = {
        let copy = root.path().join("reference.redb");
        fs::write(&copy, &orig).unwrap();
        let r = JournalReader::open_read_only(&copy).unwrap();
        read_contents(&r, &pids)
    };
    check_fixture(&original_path, &contents);
    let original = Arc::new(contents);
    let fresh = Arc::new(Contents::empty(&pids));

    let seed = std::env::var("STATELINE_CORRUPT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xC0FF_EE);
    let mut rng = Rng::new(seed);
    let all = cases(&orig, &mut rng);
    println!(
        "corrupt_inputs: {} cases on a {} byte journal ({} events, seed {seed})",
        all.len(),
        orig.len(),
        original.changelog.len()
    );

    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        PANICS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((thread, info.to_string()));
    }));
    let mut tally = Tally::default();
    let mut slowest = (Duration::ZERO, String::new());
    for (i, case) in all.iter().enumerate() {
        let t = Instant::now();
        run_case(root.path(), i, case, &original, &fresh, &mut tally);
        if t.elapsed() > slowest.0 {
            slowest = (t.elapsed(), case.name.clone());
        }
    }
    std::panic::set_hook(previous_hook);

    println!(
        "corrupt_inputs: {} cases, {} opens: {} typed errors, {} correct results, \
         {} engine panics contained as typed errors, {} failures; slowest case {:?} ({}); {:?}",
        tally.cases,
        tally.handles,
        tally.typed,
        tally.correct,
        tally.contained_panics,
        tally.failures.len(),
        slowest.0,
        slowest.1,
        started.elapsed()
    );
    println!("typed errors by variant: {:?}", tally.by_error);
    for f in tally.failures.iter().take(50) {
        println!("FAILURE {f}");
    }
    assert!(
        tally.failures.is_empty(),
        "{} failures (see above)",
        tally.failures.len()
    );
}
