//! Crash recovery after `kill -9` (G1–G3), against a real process boundary.
//!
//! A child process (this test binary, re-executed with [`CHILD_ENV`] set so that
//! [`crash_child_workload`] runs the workload instead of returning) opens the journal with small
//! log segments (so segment rotation and packing into chunks happen while it is killed),
//! continues each of 50 persistence ids from `highest_seq + 1`, and appends batches of 1–3
//! events from 50 concurrent tokio tasks. After every acknowledged append it writes one line per
//! event, `<entity id> <seq> <payload hash>`, to an ack log (one `write` per ack, unbuffered, so a
//! line is in the kernel before the next append starts and survives SIGKILL).
//!
//! The parent kills the child with SIGKILL at random moments (20 cycles; 100 with
//! `STATELINE_SOAK=1`; the seed is printed and can be fixed with `STATELINE_CRASH_SEED`), about
//! 10% of them within a few milliseconds of start so that they land in open/recovery. After every
//! kill it reopens the journal and checks:
//!
//! - G1: every acknowledged event is present, with the acknowledged payload;
//! - G2: every batch is present entirely or not at all;
//! - G3: seqs of every persistence id are exactly `1..=N`, `highest_seq` is `N`;
//! - nothing appears that was never sent: every payload is self-checking (hash suffix) and names
//!   its own persistence id, seq and batch;
//! - `entities(None)` agrees with the per-id reads;
//! - the changelog from offset 1 holds exactly the same records, with strictly increasing offsets
//!   and no duplicates;
//! - a read-only handle opened afterwards sees the same highest seqs.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stateline_journal::{
    Durability, Journal, JournalBuilder, JournalError, JournalReader, Manifest, NewEvent, Offset,
    PersistenceId, Seq,
};

/// Set (to the working directory) in the child's environment: makes the child test run.
const CHILD_ENV: &str = "STATELINE_CRASH_CHILD";
/// The child's random seed.
const CHILD_SEED_ENV: &str = "STATELINE_CRASH_CHILD_SEED";
/// The cycle number the child runs in (written into payloads).
const CHILD_CYCLE_ENV: &str = "STATELINE_CRASH_CHILD_CYCLE";
/// Name of the child test function, for `--exact`.
const CHILD_TEST: &str = "crash_child_workload";

const PIDS: usize = 50;
const ENTITY_TYPE: &str = "acct";
const SEGMENT_EVENTS: u64 = 500;
const PACK_STEP_EVENTS: usize = 100;
/// A child never runs longer than this, even if its parent died without killing it.
const CHILD_MAX_RUN: Duration = Duration::from_secs(60);
/// How long the parent waits for a child to reach a marker, or for a verification to finish.
const DEADLINE: Duration = Duration::from_secs(60);

fn builder() -> JournalBuilder {
    Journal::builder()
        .segment_events(SEGMENT_EVENTS)
        .pack_step_events(PACK_STEP_EVENTS)
        // Generation merges run too, so kills also land in the middle of them.
        .merge_generations(true)
        .durability(Durability::Immediate)
}

fn pid(i: usize) -> PersistenceId {
    PersistenceId::parse(ENTITY_TYPE, &format!("e{i}")).unwrap()
}

/// xorshift64: small, seeded, good enough to pick delays and sizes.
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
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// FNV-1a, 64 bits.
fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// What a payload says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PayloadInfo {
    pid: String,
    seq: u64,
    batch_first: u64,
    batch_len: u64,
    cycle: u64,
}

/// `"<pid> <seq> <batch first> <batch len> <cycle> <filler>#<fnv of everything before #>"`.
fn make_payload(info: &PayloadInfo, filler: usize) -> Vec<u8> {
    let body = format!(
        "{} {} {} {} {} {}",
        info.pid,
        info.seq,
        info.batch_first,
        info.batch_len,
        info.cycle,
        "x".repeat(filler)
    );
    format!("{body}#{:016x}", fnv(body.as_bytes())).into_bytes()
}

fn parse_payload(bytes: &[u8]) -> Result<PayloadInfo, String> {
    let s = std::str::from_utf8(bytes).map_err(|_| "payload is not UTF-8".to_string())?;
    let (body, hash) = s.rsplit_once('#').ok_or("payload has no hash")?;
    if format!("{:016x}", fnv(body.as_bytes())) != hash {
        return Err(format!("payload hash mismatch: {s:?}"));
    }
    let f: Vec<&str> = body.split(' ').collect();
    if f.len() != 6 {
        return Err(format!("payload has {} fields: {s:?}", f.len()));
    }
    let num = |i: usize| f[i].parse::<u64>().map_err(|e| format!("field {i}: {e}"));
    Ok(PayloadInfo {
        pid: f[0].to_string(),
        seq: num(1)?,
        batch_first: num(2)?,
        batch_len: num(3)?,
        cycle: num(4)?,
    })
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The child side: runs only when [`CHILD_ENV`] is set, appends until killed.
#[test]
fn crash_child_workload() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let seed = env_u64(CHILD_SEED_ENV).unwrap_or(1);
    let cycle = env_u64(CHILD_CYCLE_ENV).unwrap_or(0);
    let die = |what: String| -> ! {
        eprintln!("crash child: {what}");
        std::process::exit(3)
    };
    fs::write(dir.join("started"), b"").unwrap_or_else(|e| die(format!("marker: {e}")));
    let journal = builder()
        .open(dir.join("journal.redb"))
        .unwrap_or_else(|e| die(format!("open: {e}")));
    fs::write(dir.join("opened"), b"").unwrap_or_else(|e| die(format!("marker: {e}")));
    let log: Arc<Mutex<File>> = Arc::new(Mutex::new(
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("acks.log"))
            .unwrap_or_else(|e| die(format!("ack log: {e}"))),
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let stop_at = Instant::now() + CHILD_MAX_RUN;
        let mut tasks = Vec::new();
        for i in 0..PIDS {
            let journal = journal.clone();
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let pid = pid(i);
                let name = pid.to_string();
                let mut rng = Rng::new(seed ^ ((i as u64 + 1) << 32));
                let mut next = match journal.highest_seq(&pid) {
                    Ok(s) => s.0 + 1,
                    Err(e) => die(format!("highest_seq({pid}): {e}")),
                };
                while Instant::now() < stop_at {
                    let n = 1 + rng.below(3);
                    let mut events = Vec::new();
                    let mut lines = String::new();
                    for k in 0..n {
                        let info = PayloadInfo {
                            pid: name.clone(),
                            seq: next + k,
                            batch_first: next,
                            batch_len: n,
                            cycle,
                        };
                        let payload = make_payload(&info, rng.below(120) as usize);
                        lines.push_str(&format!(
                            "{} {} {:016x}\n",
                            pid.entity_id(),
                            next + k,
                            fnv(&payload)
                        ));
                        events.push(NewEvent::new(Manifest::new("E", 1), payload));
                    }
                    match journal.append(&pid, Seq(next), events).await {
                        Ok(ack)
                            if ack.first_seq == Seq(next) && ack.last_seq == Seq(next + n - 1) => {}
                        Ok(ack) => die(format!("{pid}: appended at {next} x{n}, ack {ack:?}")),
                        Err(e) => die(format!("{pid}: append at {next}: {e}")),
                    }
                    // One write per ack: after it returns the lines survive SIGKILL.
                    let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = f.write_all(lines.as_bytes()) {
                        die(format!("ack log write: {e}"));
                    }
                    drop(f);
                    next += n;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// Acknowledged events: `(pid index, seq) -> payload hash`.
type Acks = HashMap<(usize, u64), u64>;

/// Reads the ack log; a torn last line (no newline) is ignored. An event acknowledged twice
/// means an acknowledged event was lost and its seq reused: a G1/G3 violation.
fn read_acks(path: &Path) -> Acks {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut acks = Acks::new();
    for line in complete.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        assert_eq!(f.len(), 3, "bad ack line {line:?}");
        let i: usize = f[0].trim_start_matches('e').parse().unwrap();
        let seq: u64 = f[1].parse().unwrap();
        let hash = u64::from_str_radix(f[2], 16).unwrap();
        if let Some(prev) = acks.insert((i, seq), hash) {
            panic!("e{i} seq {seq} acknowledged twice (hashes {prev:016x} and {hash:016x})");
        }
    }
    acks
}

/// What one verification found.
#[derive(Debug, Default)]
struct Found {
    events: u64,
    acked: u64,
    unacked_survivors: u64,
    highest: Vec<u64>,
}

/// Opens the journal writably (this runs recovery and possibly packing in the background),
/// checks everything against the ack log, closes it, then checks a read-only handle.
fn verify(path: &Path, acks: &Acks, cycle: u64) -> Found {
    let journal = builder()
        .open(path)
        .unwrap_or_else(|e| panic!("cycle {cycle}: reopen failed: {e}"));
    let mut found = Found::default();
    let mut by_pid: Vec<Vec<stateline_journal::EventRecord>> = Vec::new();
    for i in 0..PIDS {
        let p = pid(i);
        let name = p.to_string();
        let events = journal
            .all_events(&p)
            .unwrap_or_else(|e| panic!("cycle {cycle}: all_events({p}): {e}"));
        let n = events.len() as u64;
        let highest = journal.highest_seq(&p).unwrap();
        assert_eq!(highest, Seq(n), "cycle {cycle}: {p}: highest_seq vs events");
        for (k, e) in events.iter().enumerate() {
            let seq = k as u64 + 1;
            assert_eq!(e.seq, Seq(seq), "cycle {cycle}: {p}: seqs not 1..=N (G3)");
            assert_eq!(
                e.persistence_id, p,
                "cycle {cycle}: {p} seq {seq}: wrong pid"
            );
            assert_eq!(
                e.manifest,
                Manifest::new("E", 1),
                "cycle {cycle}: {p} seq {seq}"
            );
            let info = parse_payload(&e.payload)
                .unwrap_or_else(|m| panic!("cycle {cycle}: {p} seq {seq}: never sent: {m}"));
            assert_eq!(
                info.pid, name,
                "cycle {cycle}: {p} seq {seq}: payload of another id"
            );
            assert_eq!(
                info.seq, seq,
                "cycle {cycle}: {p} seq {seq}: payload of another seq"
            );
            assert!(
                info.cycle <= cycle,
                "cycle {cycle}: {p} seq {seq}: from the future"
            );
            let first = info.batch_first;
            let last = first + info.batch_len - 1;
            assert!(
                first <= seq && seq <= last && first >= 1,
                "cycle {cycle}: {p} seq {seq}: bad batch {info:?}"
            );
            // G2: the whole batch is there, and its first event is of the same batch.
            assert!(
                last <= n,
                "cycle {cycle}: {p}: batch {first}..={last} torn, journal ends at {n} (G2)"
            );
            let head = parse_payload(&events[(first - 1) as usize].payload).unwrap();
            assert_eq!(
                (head.batch_first, head.batch_len, head.cycle),
                (info.batch_first, info.batch_len, info.cycle),
                "cycle {cycle}: {p} seq {seq}: batch mixed with another (G2)"
            );
            match acks.get(&(i, seq)) {
                Some(h) => {
                    assert_eq!(
                        *h,
                        fnv(&e.payload),
                        "cycle {cycle}: {p} seq {seq}: payload differs from the acknowledged one"
                    );
                    found.acked += 1;
                }
                None => found.unacked_survivors += 1,
            }
        }
        found.events += n;
        found.highest.push(n);
        by_pid.push(events);
    }
    // G1: nothing acknowledged is missing.
    for ((i, seq), _) in acks.iter() {
        assert!(
            *seq <= found.highest[*i],
            "cycle {cycle}: e{i} seq {seq} was acknowledged but is missing (journal ends at {}) (G1)",
            found.highest[*i]
        );
    }
    // The entity list agrees.
    let listed: BTreeMap<PersistenceId, (Seq, u64)> = journal
        .entities(None)
        .unwrap_or_else(|e| panic!("cycle {cycle}: entities: {e}"))
        .into_iter()
        .map(|s| (s.persistence_id, (s.highest_seq, s.events)))
        .collect();
    let expected: BTreeMap<PersistenceId, (Seq, u64)> = (0..PIDS)
        .filter(|i| found.highest[*i] > 0)
        .map(|i| (pid(i), (Seq(found.highest[i]), found.highest[i])))
        .collect();
    assert_eq!(listed, expected, "cycle {cycle}: entities(None)");
    // The changelog holds the same records, offsets strictly increasing.
    let index: HashMap<String, usize> = (0..PIDS).map(|i| (pid(i).to_string(), i)).collect();
    let mut seen = HashSet::new();
    let mut last = 0u64;
    let mut count = 0u64;
    for rec in journal.changelog(Offset(1)).unwrap() {
        let rec = rec.unwrap_or_else(|e| panic!("cycle {cycle}: changelog: {e}"));
        assert!(
            rec.offset.0 > last,
            "cycle {cycle}: changelog offset {} after {last}",
            rec.offset
        );
        last = rec.offset.0;
        let i = *index
            .get(&rec.persistence_id.to_string())
            .unwrap_or_else(|| {
                panic!(
                    "cycle {cycle}: changelog has unknown {}",
                    rec.persistence_id
                )
            });
        assert!(
            seen.insert((i, rec.seq.0)),
            "cycle {cycle}: changelog repeats {} seq {}",
            rec.persistence_id,
            rec.seq
        );
        let stored = by_pid[i].get((rec.seq.0 as usize).wrapping_sub(1));
        assert_eq!(
            Some(&rec),
            stored,
            "cycle {cycle}: changelog record differs from all_events"
        );
        count += 1;
    }
    assert_eq!(count, found.events, "cycle {cycle}: changelog length");
    assert!(
        last <= journal.committed_offset().0,
        "cycle {cycle}: changelog beyond committed offset"
    );
    drop(journal);
    let reader = JournalReader::open_read_only(path)
        .unwrap_or_else(|e| panic!("cycle {cycle}: read-only open after close: {e}"));
    for i in 0..PIDS {
        assert_eq!(
            reader.highest_seq(&pid(i)).unwrap(),
            Seq(found.highest[i]),
            "cycle {cycle}: read-only handle, e{i}"
        );
    }
    found
}

/// Waits until `marker` exists; fails if the child exits first or the deadline passes.
fn wait_for_marker(child: &mut Child, marker: &Path, out: &Path) {
    let deadline = Instant::now() + DEADLINE;
    while !marker.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "child exited ({status}) before {}:\n{}",
                marker.display(),
                fs::read_to_string(out).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "child did not reach {} in {DEADLINE:?}",
            marker.display()
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Runs [`verify`] on its own thread so that a hang fails the test instead of blocking it.
fn verify_with_deadline(path: &Path, acks: Acks, cycle: u64) -> Found {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| verify(&path, &acks, cycle));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(found)) => found,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("cycle {cycle}: verification did not finish in {DEADLINE:?} (hang)"),
    }
}

/// Starts the child workload on `dir`, its output going to `dir/child.out`.
fn spawn_child(dir: &Path, seed: u64, cycle: u64) -> Child {
    let log = File::create(dir.join("child.out")).unwrap();
    for m in ["started", "opened"] {
        let _ = fs::remove_file(dir.join(m));
    }
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(CHILD_SEED_ENV, seed.to_string())
        .env(CHILD_CYCLE_ENV, cycle.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits for the child to reach `marker` ("started": about to open the journal; "opened"),
/// waits `delay` more, and kills it with SIGKILL. Returns whether it was still opening.
fn kill_after(mut child: Child, dir: &Path, marker: &str, delay: Duration) -> bool {
    let out = dir.join("child.out");
    wait_for_marker(&mut child, &dir.join(marker), &out);
    std::thread::sleep(delay);
    if let Some(status) = child.try_wait().unwrap() {
        panic!(
            "child exited by itself ({status}):\n{}",
            fs::read_to_string(&out).unwrap_or_default()
        );
    }
    child.kill().unwrap(); // SIGKILL on unix
    child.wait().unwrap();
    !dir.join("opened").exists()
}

/// The parent side: kill, reopen, verify, repeat.
#[test]
fn crash_recovery_after_kill() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return; // never recurse from inside a child
    }
    let soak = std::env::var("STATELINE_SOAK").is_ok_and(|v| v == "1");
    let cycles: u64 = if soak { 100 } else { 20 };
    let seed = env_u64("STATELINE_CRASH_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    println!(
        "crash_recovery_after_kill: {cycles} cycles, seed {seed} \
         (STATELINE_CRASH_SEED={seed} reruns it)"
    );
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.redb");
    // The journal exists before the first kill: a kill while the file is being created is
    // `crash_during_creation_leaves_an_openable_journal`.
    drop(builder().open(&path).unwrap());
    let mut kills_in_open = 0;
    let mut last = Found::default();
    for cycle in 1..=cycles {
        // ~10% of kills within a few ms of start: during open/recovery.
        let early = rng.below(10) == 0;
        let delay = if early {
            Duration::from_micros(rng.below(3_000))
        } else {
            Duration::from_millis(5 + rng.below(600))
        };
        let child = spawn_child(dir.path(), rng.next(), cycle);
        let marker = if early { "started" } else { "opened" };
        let in_open = kill_after(child, dir.path(), marker, delay);
        kills_in_open += u64::from(in_open);
        let acks = read_acks(&dir.path().join("acks.log"));
        let found = verify_with_deadline(&path, acks, cycle);
        println!(
            "cycle {cycle:3}: killed after {delay:?}{} -> {} events, {} acked, \
             {} persisted but never acked",
            if in_open { " (in open)" } else { "" },
            found.events,
            found.acked,
            found.unacked_survivors
        );
        last = found;
    }
    println!(
        "crash_recovery_after_kill: {cycles} kills ({kills_in_open} during open), {} events \
         ({} acked) in {:?}, seed {seed}",
        last.events,
        last.acked,
        started.elapsed()
    );
    assert!(
        last.events > 2 * SEGMENT_EVENTS,
        "workload too small to exercise segment rotation and packing: {} events",
        last.events
    );
}

/// A kill while a new journal is being created must leave a path that opens: no file, the
/// empty file, an interrupted creation, or a journal (empty, or with what was acknowledged).
/// Half of the attempts create a missing file (temporary file, then a link), half write into
/// an empty file that was there (in place, under its lock; the file must stay the same inode).
/// Kills at 0–3 ms after the child starts opening, in 75 µs steps, for each way.
#[test]
fn crash_during_creation_leaves_an_openable_journal() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let mut refused = Vec::new();
    // What each kill left, per way of creating: counted to show the window is hit.
    let mut left: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let attempts = 80u64;
    for attempt in 0..attempts {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let in_place = attempt % 2 == 1;
        let inode = in_place.then(|| {
            File::create(&path).unwrap();
            inode_of(&path)
        });
        let child = spawn_child(dir.path(), attempt + 1, 1);
        kill_after(
            child,
            dir.path(),
            "started",
            Duration::from_micros(attempt / 2 * 75),
        );
        let len = fs::metadata(&path).map(|m| m.len());
        let state = match fs::read(&path) {
            Err(_) => "no file",
            Ok(b) if b.is_empty() => "empty file",
            Ok(b) if b.starts_with(b"stln") => "interrupted creation",
            Ok(_) => "journal",
        };
        let way = if in_place { "in place" } else { "missing file" };
        *left.entry((way, state)).or_default() += 1;
        // What a kill leaves is never anything a read-only open misreads.
        match JournalReader::open_read_only(&path) {
            Ok(_)
            | Err(JournalError::NotAJournal { .. })
            | Err(JournalError::NeedsRecovery { .. }) => {}
            Err(e) => refused.push(format!("read-only open after a kill: {e}")),
        }
        match builder().open(&path) {
            Ok(j) => {
                drop(j);
                if let Some(inode) = inode {
                    assert_eq!(
                        inode_of(&path),
                        inode,
                        "attempt {attempt}: the empty file was replaced"
                    );
                }
                let acks = read_acks(&dir.path().join("acks.log"));
                verify_with_deadline(&path, acks, attempt);
            }
            Err(e) => {
                let head: Vec<u8> = fs::read(&path)
                    .map(|b| b.into_iter().take(12).collect())
                    .unwrap_or_default();
                refused.push(format!(
                    "killed {}µs after start ({}): file of {len:?} bytes starting {head:?}: {e}",
                    attempt / 2 * 75,
                    way
                ));
            }
        }
    }
    println!("crash_during_creation: what the kills left: {left:?}");
    for r in &refused {
        println!("refused after a kill during creation: {r}");
    }
    assert!(
        refused.is_empty(),
        "{} of {attempts} kills during creation left a file that does not open (see above)",
        refused.len()
    );
}

/// The file's inode number (0 where there is none to read).
fn inode_of(path: &Path) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(path).map_or(0, |m| m.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        0
    }
}
