//! The tail read path (cached bytes copied in batches, refs up to a view's end) racing the
//! writer, from an adversarial review: appends, tiny segments (constant sealing and packing), a tiny event cache (events
//! cached and not cached interleaved), deletes, entity deletes, snapshots, merges, and read-only
//! readers catching up. Every returned event is checked: seqs contiguous from the requested
//! seq (or the delete floor), in range, payload and offset equal to what was appended.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use stateline_journal::*;

fn pid(id: &str) -> PersistenceId {
    PersistenceId::parse("acct", id).unwrap()
}

/// Deterministic payload of varying length (0..~600 bytes) so that the cache budget cuts
/// between events of one entity (big ones not cached, small ones after them cached).
fn payload(k: usize, seq: u64) -> Vec<u8> {
    let len = ((seq.wrapping_mul(7919) ^ (k as u64 * 104_729)) % 600) as usize;
    // Every third entity has big events (2-4 KB): tail batches end by bytes, not count.
    let len = if k % 3 == 2 { len * 4 + 1600 } else { len };
    let mut v = format!("{k}:{seq}:").into_bytes();
    v.extend(std::iter::repeat_n(b'a' + (seq % 26) as u8, len));
    v
}

/// Per entity: what the appender asked for and what was acknowledged.
#[derive(Default)]
struct Model {
    acked_highest: AtomicU64,
    req_highest: AtomicU64,
    acked_del: AtomicU64,
    req_del: AtomicU64,
    /// offset of each acked seq (index = seq), 0 = unknown yet
    offsets: Mutex<Vec<u64>>,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy)]
struct Opts {
    entities: usize,
    appenders: usize,
    rounds: u64,
    readers: usize,
    deletes: bool,
    read_only: bool,
    builder: fn() -> JournalBuilder,
}

#[derive(Default, Debug)]
struct Stats {
    streams: u64,
    events: u64,
}

/// Reads one stream and checks it against the model. Returns events read.
#[allow(clippy::too_many_arguments)]
fn check_stream(
    r: &JournalReader,
    models: &[Model],
    k: usize,
    mode: u64,
    from: u64,
    to: u64,
    max: u64,
) -> std::result::Result<u64, String> {
    let m = &models[k];
    let p = pid(&format!("e{k}"));
    let h0 = m.acked_highest.load(Ordering::SeqCst);
    let d0 = m.acked_del.load(Ordering::SeqCst);
    let mut got: Vec<(u64, u64, Vec<u8>)> = Vec::new();
    let mut view_highest = None;
    match mode {
        0 => {
            for e in r
                .events(&p, Seq(from), Seq(to), max)
                .map_err(|e| e.to_string())?
            {
                let e = e.map_err(|e| format!("item error after {} events: {e}", got.len()))?;
                if e.persistence_id != p {
                    return Err(format!("event of {} in stream of {p}", e.persistence_id));
                }
                got.push((e.seq.0, e.offset.0, e.payload));
            }
        }
        1 => {
            r.events(&p, Seq(from), Seq(to), max)
                .map_err(|e| e.to_string())?
                .for_each_ref(|e| {
                    got.push((e.seq.0, e.offset.0, e.payload.to_vec()));
                    Ok::<(), JournalError>(())
                })
                .map_err(|e| format!("for_each_ref error after {} events: {e}", got.len()))?;
        }
        _ => {
            let v = r.recovery_view(&p).map_err(|e| e.to_string())?;
            view_highest = Some(v.highest_seq().0);
            let mut it = v.events_from(Seq(from)).map_err(|e| e.to_string())?;
            // Mix: take a few with next(), then the rest in place.
            let first: Vec<_> = it.by_ref().take(3).collect();
            for e in first {
                let e = e.map_err(|e| format!("item error: {e}"))?;
                got.push((e.seq.0, e.offset.0, e.payload));
            }
            it.for_each_ref(|e| {
                got.push((e.seq.0, e.offset.0, e.payload.to_vec()));
                Ok::<(), JournalError>(())
            })
            .map_err(|e| format!("for_each_ref error after {} events: {e}", got.len()))?;
        }
    }
    let (to, max) = if mode == 2 {
        (u64::MAX, u64::MAX)
    } else {
        (to, max)
    };
    let h1 = m.req_highest.load(Ordering::SeqCst);
    let d1 = m.req_del.load(Ordering::SeqCst);
    let ctx = || {
        format!("e{k} mode {mode} from {from} to {to} max {max} h0 {h0} h1 {h1} d0 {d0} d1 {d1} got {:?}", got.iter().map(|g| g.0).collect::<Vec<_>>())
    };
    if got.len() as u64 > max {
        return Err(format!("more than max: {}", ctx()));
    }
    for w in got.windows(2) {
        if w[1].0 != w[0].0 + 1 {
            return Err(format!(
                "not contiguous {} then {}: {}",
                w[0].0,
                w[1].0,
                ctx()
            ));
        }
    }
    {
        let offs = m.offsets.lock().unwrap();
        for (s, o, pl) in &got {
            if *s < from || *s > to {
                return Err(format!("seq {s} out of range: {}", ctx()));
            }
            if *s > h1 {
                return Err(format!("seq {s} above anything requested: {}", ctx()));
            }
            if *pl != payload(k, *s) {
                return Err(format!(
                    "payload of seq {s} wrong ({:?}): {}",
                    String::from_utf8_lossy(&pl[..pl.len().min(20)]),
                    ctx()
                ));
            }
            if let Some(&known) = offs.get(*s as usize) {
                if known != 0 && known != *o {
                    return Err(format!(
                        "seq {s} offset {o}, appended at {known}: {}",
                        ctx()
                    ));
                }
            }
        }
    }
    let lo = from.max(d0 + 1).max(1);
    let hi_first = from.max(d1 + 1).max(1);
    if let Some((s, _, _)) = got.first() {
        if *s < lo || *s > hi_first {
            return Err(format!(
                "first seq {s} not in [{lo}, {hi_first}]: {}",
                ctx()
            ));
        }
    }
    if (got.len() as u64) < max {
        let must_reach = to.min(h0);
        if must_reach >= hi_first {
            let last = got.last().map_or(0, |g| g.0);
            if last < must_reach {
                return Err(format!(
                    "ends short of acked seq {must_reach} (last {last}): {}",
                    ctx()
                ));
            }
        }
    }
    if let Some(vh) = view_highest {
        let last = got.last().map_or(0, |g| g.0);
        if vh > d1 && from <= vh && last != vh {
            return Err(format!(
                "recovery view highest {vh} but stream ended at {last}: {}",
                ctx()
            ));
        }
    }
    Ok(got.len() as u64)
}

fn run(opts: Opts, seed: u64) -> Stats {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.redb");
    let j = (opts.builder)().open(&path).unwrap();
    let models: Arc<Vec<Model>> = Arc::new((0..opts.entities).map(|_| Model::default()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let failure: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let ro = if opts.read_only {
        Some(JournalReader::open_read_only(&path).unwrap())
    } else {
        None
    };
    let mut readers = Vec::new();
    for t in 0..opts.readers {
        let r: JournalReader = match &ro {
            Some(ro) => ro.clone(),
            None => j.reader(),
        };
        let (models, stop, failure) = (models.clone(), stop.clone(), failure.clone());
        let n = opts.entities;
        readers.push(std::thread::spawn(move || {
            let mut rng = Rng((seed ^ 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(t as u64 + 1)) | 1);
            let mut st = Stats::default();
            while !stop.load(Ordering::Relaxed) {
                let k = rng.below(n as u64) as usize;
                let h = models[k].acked_highest.load(Ordering::SeqCst);
                let from = match rng.below(4) {
                    0 => 1,
                    1 => 0,
                    2 => rng.below(h + 3),
                    _ => {
                        // Near the end of a long tail: a batch boundary away from the top.
                        let back = 250 + rng.below(12);
                        h.saturating_sub(back)
                    }
                };
                let to = match rng.below(3) {
                    0 => u64::MAX,
                    _ => {
                        let w = rng.below(600);
                        from + w
                    }
                };
                let max = match rng.below(4) {
                    0 => u64::MAX,
                    1 => 254 + rng.below(5),
                    _ => rng.below(520),
                };
                let mode = rng.below(3);
                match check_stream(&r, &models, k, mode, from, to, max) {
                    Ok(n) => {
                        st.streams += 1;
                        st.events += n;
                    }
                    Err(e) => {
                        let mut f = failure.lock().unwrap();
                        if f.is_none() {
                            *f = Some(format!("reader {t}: {e}"));
                        }
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            st
        }));
    }
    let mut appenders = Vec::new();
    for a in 0..opts.appenders {
        let (j, models, stop, failure) = (j.clone(), models.clone(), stop.clone(), failure.clone());
        let o = opts;
        appenders.push(std::thread::spawn(move || {
            let mut rng = Rng(seed.wrapping_add(a as u64 * 31 + 7) | 1);
            let mine: Vec<usize> = (0..o.entities).filter(|k| k % o.appenders == a).collect();
            for _round in 0..o.rounds {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = mine[rng.below(mine.len() as u64) as usize];
                let m = &models[k];
                let p = pid(&format!("e{k}"));
                let h = m.acked_highest.load(Ordering::SeqCst);
                let op = rng.below(100);
                let res: std::result::Result<(), String> = if o.deletes && op < 3 {
                    let to = rng.below(h + 2);
                    let target = to.min(h).max(m.req_del.load(Ordering::SeqCst));
                    m.req_del.store(target, Ordering::SeqCst);
                    match j.delete_events_to_blocking(&p, Seq(to)) {
                        Ok(d) => {
                            if d.0 != target {
                                Err(format!("delete_events_to returned {d} expected {target}"))
                            } else {
                                m.acked_del.store(d.0, Ordering::SeqCst);
                                Ok(())
                            }
                        }
                        Err(e) => Err(e.to_string()),
                    }
                } else if o.deletes && op < 4 {
                    m.req_del.store(h, Ordering::SeqCst);
                    j.delete_entity_blocking(&p)
                        .map(|()| m.acked_del.store(h, Ordering::SeqCst))
                        .map_err(|e| e.to_string())
                } else if op < 8 && h > 0 {
                    let s = 1 + rng.below(h);
                    j.save_snapshot_blocking(&p, Seq(s), Manifest::new("S", 1), vec![1])
                        .map_err(|e| e.to_string())
                } else {
                    let big = rng.below(10) == 0;
                    let n = 1 + rng.below(if big { 40 } else { 4 });
                    let events: Vec<NewEvent> = (1..=n)
                        .map(|i| NewEvent::new(Manifest::new("E", 1), payload(k, h + i)))
                        .collect();
                    m.req_highest.store(h + n, Ordering::SeqCst);
                    match j.append_blocking(&p, Seq(h + 1), events) {
                        Ok(ack) => {
                            let mut offs = m.offsets.lock().unwrap();
                            if offs.len() <= (h + n) as usize {
                                offs.resize((h + n) as usize + 1, 0);
                            }
                            for i in 0..n {
                                offs[(h + 1 + i) as usize] = ack.first_offset.0 + i;
                            }
                            drop(offs);
                            m.acked_highest.store(h + n, Ordering::SeqCst);
                            Ok(())
                        }
                        Err(e) => Err(e.to_string()),
                    }
                };
                if let Err(e) = res {
                    let mut f = failure.lock().unwrap();
                    if f.is_none() {
                        *f = Some(format!("appender {a}: {e}"));
                    }
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }));
    }
    for a in appenders {
        a.join().unwrap();
    }
    // Let the readers also race the final packs.
    let _ = j.flush_blocking(true);
    std::thread::sleep(std::time::Duration::from_millis(50));
    stop.store(true, Ordering::Relaxed);
    let mut total = Stats::default();
    for r in readers {
        let s = r.join().unwrap();
        total.streams += s.streams;
        total.events += s.events;
    }
    if let Some(f) = failure.lock().unwrap().take() {
        panic!("seed {seed}: {f}");
    }
    // Final full check of every entity, writer's reader and a fresh read-only reader.
    // A second, read-only reader of the file; a writer with the default durability lets one
    // in (the read-only scenarios need it), others may hold the file exclusively (`Locked`).
    let fresh = match JournalReader::open_read_only(&path) {
        Ok(r) => Some(r),
        Err(JournalError::Locked { .. }) if !opts.read_only => None,
        Err(e) => panic!("seed {seed}: a read-only reader beside the writer: {e}"),
    };
    for k in 0..opts.entities {
        check_stream(&j.reader(), &models, k, 0, 1, u64::MAX, u64::MAX)
            .unwrap_or_else(|e| panic!("seed {seed} final: {e}"));
        if let Some(fresh) = &fresh {
            check_stream(fresh, &models, k, 0, 1, u64::MAX, u64::MAX)
                .unwrap_or_else(|e| panic!("seed {seed} final read-only: {e}"));
        }
    }
    total
}

/// Runs of each scenario: `default`, eight times as many with `STATELINE_SOAK=1`,
/// or `STATELINE_TAIL_RACE_RUNS`.
fn iters(default: u64) -> u64 {
    let soak = std::env::var("STATELINE_SOAK").is_ok_and(|v| v == "1");
    std::env::var("STATELINE_TAIL_RACE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if soak { default * 8 } else { default })
}

fn tiny() -> JournalBuilder {
    Journal::builder()
        .key_groups(8)
        .durability(Durability::None)
        .segment_events(12)
        .pack_step_events(2)
        .max_chunk_bytes(900)
        .pack_cache_bytes(3_000)
}

fn tiny_merging() -> JournalBuilder {
    tiny().merge_generations(true)
}

fn tiny_no_cache() -> JournalBuilder {
    tiny().pack_cache_bytes(0)
}

fn tiny_big_cache() -> JournalBuilder {
    tiny().pack_cache_bytes(64 << 20).segment_events(300)
}

fn durable_tiny() -> JournalBuilder {
    tiny().durability(Durability::Immediate)
}

fn long_tails() -> JournalBuilder {
    Journal::builder()
        .key_groups(8)
        .durability(Durability::None)
        .segment_events(900)
        .pack_step_events(3)
        .pack_cache_bytes(150_000)
}

fn long_tails_ro() -> JournalBuilder {
    long_tails().durability(Durability::Immediate)
}

fn report(name: &str, runs: u64, s: &Stats) {
    eprintln!(
        "{name}: {runs} runs, {} streams checked, {} events checked",
        s.streams, s.events
    );
}

fn many(name: &str, opts: Opts) {
    let runs = iters(1);
    let mut all = Stats::default();
    for i in 0..runs {
        let s = run(opts, 0xC0FFEE + i * 977);
        all.streams += s.streams;
        all.events += s.events;
    }
    report(name, runs, &all);
}

#[test]
fn tail_reads_race_appends_packs_and_a_tiny_cache() {
    many(
        "tiny cache",
        Opts {
            entities: 6,
            appenders: 2,
            rounds: 1500,
            readers: 2,
            deletes: false,
            read_only: false,
            builder: tiny,
        },
    );
}

#[test]
fn tail_reads_race_deletes_and_entity_deletes() {
    many(
        "deletes",
        Opts {
            entities: 6,
            appenders: 2,
            rounds: 1500,
            readers: 2,
            deletes: true,
            read_only: false,
            builder: tiny,
        },
    );
}

#[test]
fn tail_reads_race_merges() {
    many(
        "merges",
        Opts {
            entities: 5,
            appenders: 2,
            rounds: 1500,
            readers: 2,
            deletes: true,
            read_only: false,
            builder: tiny_merging,
        },
    );
}

#[test]
fn tail_reads_without_cache_and_with_a_big_one() {
    many(
        "no cache",
        Opts {
            entities: 4,
            appenders: 1,
            rounds: 1200,
            readers: 2,
            deletes: true,
            read_only: false,
            builder: tiny_no_cache,
        },
    );
    many(
        "big cache long tails",
        Opts {
            entities: 3,
            appenders: 1,
            rounds: 1500,
            readers: 2,
            deletes: true,
            read_only: false,
            builder: tiny_big_cache,
        },
    );
}

#[test]
fn read_only_readers_race_packs() {
    many(
        "read-only",
        Opts {
            entities: 5,
            appenders: 2,
            rounds: 600,
            readers: 2,
            deletes: true,
            read_only: true,
            builder: durable_tiny,
        },
    );
}

/// Tails of several hundred events per entity (two segments of 900), partly cached, with big
/// events that end batches by bytes: reads from and up to batch boundaries.
#[test]
fn long_partly_cached_tails_across_batch_boundaries() {
    many(
        "long tails",
        Opts {
            entities: 3,
            appenders: 1,
            rounds: 2500,
            readers: 2,
            deletes: true,
            read_only: false,
            builder: long_tails,
        },
    );
    many(
        "long tails read-only",
        Opts {
            entities: 3,
            appenders: 1,
            rounds: 800,
            readers: 2,
            deletes: true,
            read_only: true,
            builder: long_tails_ro,
        },
    );
}

fn mem_journal() -> (tempfile::TempDir, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::builder()
        .durability(Durability::None)
        .open(dir.path().join("j.redb"))
        .unwrap();
    (dir, j)
}

/// Odd but well-typed ranges from callers: empty or reversed key-group ranges, changelog from
/// the far end, a seq window that is empty.
#[test]
fn odd_ranges_are_not_errors() {
    let (_d, j) = mem_journal();
    let p = pid("x");
    for s in 1..=5 {
        j.append_blocking(
            &p,
            Seq(s),
            vec![NewEvent::new(Manifest::new("E", 1), vec![s as u8])],
        )
        .unwrap();
    }
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = j.entities(Some(10..2));
    let empty = j.entities(Some(3..3));
    let far = j
        .changelog(Offset(u64::MAX))
        .map(|it| it.collect::<Vec<_>>());
    let window: Vec<_> = j.events(&p, Seq(4), Seq(2), 10).unwrap().collect();
    let zero_max: Vec<_> = j.events(&p, Seq(1), Seq(u64::MAX), 0).unwrap().collect();
    let beyond: Vec<_> = j
        .events(&p, Seq(u64::MAX), Seq(u64::MAX), u64::MAX)
        .unwrap()
        .collect();
    assert!(empty.unwrap().is_empty());
    assert!(far.unwrap().is_empty());
    assert!(window.is_empty() && zero_max.is_empty() && beyond.is_empty());
    assert!(reversed.unwrap().is_empty(), "a reversed key-group range");
    // The same journal still lists and reads the entity.
    assert_eq!(j.entities(None).unwrap().len(), 1);
    assert_eq!(j.all_events(&p).unwrap().len(), 5);
}

fn append_one(j: &Journal, p: &PersistenceId, seq: Seq, payload: Vec<u8>) {
    j.append_blocking(p, seq, vec![NewEvent::new(Manifest::new("E", 1), payload)])
        .unwrap();
}

/// A view taken while its events are cached, read after their segments were packed, their
/// cache buffers given back and reused by later segments' events (of this entity and others):
/// exactly the view, with the right bytes, from the view's transaction.
#[test]
fn a_view_read_after_its_cache_buffers_were_reused() {
    let dir = tempfile::tempdir().unwrap();
    let j = tiny()
        .pack_cache_bytes(1 << 20)
        .open(dir.path().join("j.redb"))
        .unwrap();
    let runs = iters(1) * 30;
    for run in 0..runs {
        let k = run as usize % 3;
        let p = pid(&format!("e{k}"));
        let other = pid(&format!("o{k}"));
        let h = j.highest_seq(&p).unwrap().0;
        for s in h + 1..=h + 30 {
            append_one(&j, &p, Seq(s), payload(k, s));
        }
        let views: Vec<_> = (0..4).map(|_| j.recovery_view(&p).unwrap()).collect();
        // Pack everything the views hold, and fill the reused buffers with other bytes.
        for s in h + 31..=h + 60 {
            append_one(&j, &p, Seq(s), payload(k, s));
            let ho = j.highest_seq(&other).unwrap().0;
            append_one(&j, &other, Seq(ho + 1), payload(k + 1, s));
        }
        j.flush_blocking(true).unwrap();
        for (i, v) in views.into_iter().enumerate() {
            assert_eq!(v.highest_seq().0, h + 30);
            let from = [1, h + 1, h + 17, h + 30][i];
            let got: Vec<(u64, Vec<u8>)> = v
                .events_from(Seq(from))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.seq.0, e.payload)
                })
                .collect();
            let want: Vec<(u64, Vec<u8>)> = (from..=h + 30).map(|s| (s, payload(k, s))).collect();
            assert_eq!(got.len(), want.len(), "run {run} view {i}");
            assert!(got == want, "run {run} view {i}: bytes differ");
        }
    }
    eprintln!("reused buffers: {runs} runs x 4 views");
}
