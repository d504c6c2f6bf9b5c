//! Region benchmarks (`cargo bench --bench region`), each ending with one line
//! `RESULT <scenario> key=value ...` on stdout:
//!
//! - `region_persist`: 10,000 entities, 1,024 commands in flight through the shard region, one
//!   ~100-byte event each; compared with journal-only appends (1,024 appenders, same events)
//!   measured in the same run: `ratio` = region / journal.
//! - `rescale`: 100,000 live entities under steady load; rescale 4 → 8 and 8 → 4.
//!   `handoff_ms` (worst of the two, until the new layout is in force), `max_pause_ms` and
//!   `p99_pause_ms` (latency of commands sent while a handoff ran, minus the median latency
//!   outside handoffs), `baseline_p50_ms`; `outside_p999_ms` and `outside_max_ms` are the
//!   latencies of commands outside handoffs (what the disk alone costs: an fsync stall there
//!   shows up in `max_pause_ms` too when it lands during a handoff).
//! - `recovery`: entities recovered per second from a snapshot plus 100 events each.
//! - `memory`: resident memory per live entity with 100,000 live entities of a small state,
//!   minus the same process before they started, with the default configuration and
//!   mimalloc's default options: `peak_bytes_per_entity` right after the burst that made them
//!   live (at most `max_running_entities` actors run per shard, the rest hibernated),
//!   `bytes_per_entity` once every entity is idle and hibernated (state kept in the shard,
//!   actor stopped). `memory_active` measures the same with hibernation and the bound off
//!   (`hibernate_after = Duration::MAX`, `max_running_entities = usize::MAX`): every live
//!   entity keeps its actix actor. Each runs in a process of its own.
//!
//! Everything runs with `MIMALLOC_ALLOW_THP=0` unless the variable is set (see
//! `benches/support/mod.rs`).
//!
//! Sizes (env, default): `STATELINE_BENCH_REGION_EVENTS` [300000], `STATELINE_BENCH_LIVE`
//! [100000], `STATELINE_BENCH_RECOVER` [10000], `STATELINE_BENCH_SCENARIOS`
//! [region_persist,rescale,recovery,memory,memory_active].
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

mod support;

/// glibc's allocator degrades badly under this workload's cross-thread frees (see README,
/// "Allocator"); both the region and its journal-only baseline run on mimalloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde::{Deserialize, Serialize};
use stateline::actors::{RegionConfig, ShardConfig, ShardRegion};
use stateline::prelude::*;
use stateline_journal::{Manifest, NewEvent};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn enabled(name: &str) -> bool {
    std::env::var("STATELINE_BENCH_SCENARIOS")
        .map(|v| v.split(',').any(|s| s == name))
        .unwrap_or(true)
}

#[derive(Default, Serialize, Deserialize)]
struct Sensor {
    readings: u64,
    last: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum SensorCommand {
    Record {
        value: u64,
        #[serde(with = "serde_bytes")]
        memo: Vec<u8>,
    },
    Touch,
}

#[derive(Serialize, Deserialize)]
struct Recorded {
    value: u64,
    #[serde(with = "serde_bytes")]
    memo: Vec<u8>,
}

impl EventSourced for Sensor {
    const TYPE_NAME: &'static str = "sensor";
    type Command = SensorCommand;
    type Event = Recorded;
    type Reply = u64;

    fn handle(&self, command: SensorCommand) -> Effect<Self> {
        match command {
            SensorCommand::Record { value, memo } => {
                Effect::persist(vec![Recorded { value, memo }]).then_reply(|s: &Self| s.readings)
            }
            SensorCommand::Touch => Effect::reply(self.readings),
        }
    }

    fn apply(&mut self, e: &Recorded) {
        self.readings += 1;
        self.last = e.value;
    }

    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy {
            every_events: Some(100),
            ..SnapshotPolicy::default()
        }
    }
}

/// ~100 bytes encoded.
fn memo() -> Vec<u8> {
    vec![0x5a; 80]
}

fn id(i: u64) -> String {
    format!("s{i:06}")
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The entity appender `t` (of 1,024) writes its `n`-th event to: appenders own disjoint sets
/// of entities (`e % 1024 == t`) and cycle through them.
fn owned(t: u64, n: u64, entities: u64) -> u64 {
    let per = entities.div_ceil(1024);
    let k = (n / 1024) % per;
    let e = t + 1024 * k;
    if e < entities {
        e
    } else {
        t
    }
}

/// Journal-only baseline: 1,024 appenders, one event per append.
async fn journal_only(dir: &std::path::Path, events: u64, entities: u64) -> f64 {
    let journal = Journal::open(dir.join("journal-only.redb")).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..1024u64 {
        let j = journal.clone();
        tasks.push(actix_rt::spawn(async move {
            let mut seqs = std::collections::HashMap::new();
            let mut n = t;
            while n < events {
                let e = owned(t, n, entities);
                let pid = PersistenceId::parse("sensor", &id(e)).unwrap();
                let seq = seqs.entry(e).or_insert(0u64);
                *seq += 1;
                let ev = NewEvent::encode(
                    Manifest::new("sensor", 1),
                    &Recorded {
                        value: n,
                        memo: memo(),
                    },
                )
                .unwrap();
                j.append(&pid, Seq(*seq), vec![ev]).await.unwrap();
                n += 1024;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    events as f64 / started.elapsed().as_secs_f64()
}

async fn region_persist(dir: &std::path::Path) {
    let events: u64 = env_or("STATELINE_BENCH_REGION_EVENTS", 300_000);
    let entities = 10_000u64;
    eprintln!("== region_persist: {events} events, {entities} entities, 1,024 in flight");
    // `STATELINE_BENCH_NO_BASELINE=1` skips the journal-only run (for profiling the region).
    let baseline = if env_or("STATELINE_BENCH_NO_BASELINE", 0u8) == 1 {
        f64::NAN
    } else {
        journal_only(dir, events, entities).await
    };
    eprintln!("journal only: {baseline:.0} events/s");
    let journal = Journal::builder()
        .pack_cache_bytes(env_or("STATELINE_BENCH_PACK_CACHE", 64usize << 20))
        .open(dir.join("region.redb"))
        .unwrap();
    let region = ShardRegion::<Sensor>::start(journal, RegionConfig::default()).unwrap();
    let hist = Rc::new(RefCell::new(histogram()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..1024u64 {
        let (region, hist) = (region.clone(), hist.clone());
        tasks.push(actix_rt::spawn(async move {
            let mut n = t;
            while n < events {
                let t0 = Instant::now();
                region
                    .send(
                        &id(owned(t, n, entities)),
                        SensorCommand::Record {
                            value: n,
                            memo: memo(),
                        },
                    )
                    .await
                    .unwrap();
                hist.borrow_mut()
                    .record(t0.elapsed().as_micros() as u64)
                    .unwrap();
                n += 1024;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    let h = hist.borrow().clone();
    println!(
        "RESULT region_persist events={events} events_per_sec={rate:.0} p50_ms={:.2} p99_ms={:.2} journal_events_per_sec={baseline:.0} ratio={:.2}",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        rate / baseline
    );
    region.stop().await;
}

async fn rescale(dir: &std::path::Path) {
    let live: u64 = env_or("STATELINE_BENCH_LIVE", 100_000);
    eprintln!("== rescale: {live} live entities, steady load, 4 -> 8 -> 4");
    let journal = Journal::open(dir.join("rescale.redb")).unwrap();
    let config = RegionConfig {
        shards: 4,
        shard: ShardConfig {
            max_active_entities: live as usize * 2,
            ..ShardConfig::default()
        },
        ..RegionConfig::default()
    };
    let region = ShardRegion::<Sensor>::start(journal, config).unwrap();
    // Make every entity live (one persisted event each).
    let mut window = VecDeque::new();
    for i in 0..live {
        window.push_back(
            region
                .enqueue(
                    &id(i),
                    SensorCommand::Record {
                        value: i,
                        memo: memo(),
                    },
                )
                .unwrap(),
        );
        if window.len() >= 2048 {
            window.pop_front().unwrap().await.unwrap().unwrap();
        }
    }
    for rx in window {
        rx.await.unwrap().unwrap();
    }
    eprintln!("{live} entities live");
    // Steady load: 256 senders, each one command at a time, to random entities.
    let samples = Rc::new(RefCell::new(Vec::<(Instant, u64)>::new()));
    let stop = Rc::new(RefCell::new(false));
    let mut tasks = Vec::new();
    for t in 0..256u64 {
        let (region, samples, stop) = (region.clone(), samples.clone(), stop.clone());
        tasks.push(actix_rt::spawn(async move {
            let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while !*stop.borrow() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t0 = Instant::now();
                region
                    .send(
                        &id(x % live),
                        SensorCommand::Record {
                            value: x,
                            memo: memo(),
                        },
                    )
                    .await
                    .unwrap();
                samples
                    .borrow_mut()
                    .push((t0, t0.elapsed().as_micros() as u64));
            }
        }));
    }
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let mut windows = Vec::new();
    let mut handoff_ms: f64 = 0.0;
    for target in [8, 4] {
        let t0 = Instant::now();
        let report = region.rescale(target).await.unwrap();
        let t1 = Instant::now();
        eprintln!("rescale -> {target}: {report:?}");
        handoff_ms = handoff_ms.max(report.handoff.as_secs_f64() * 1000.0);
        windows.push((t0, t1));
        actix_rt::time::sleep(Duration::from_millis(1500)).await;
    }
    *stop.borrow_mut() = true;
    for t in tasks {
        t.await.unwrap();
    }
    let samples = std::mem::take(&mut *samples.borrow_mut());
    let inside = |t: &Instant| windows.iter().any(|(a, b)| t >= a && t <= b);
    let mut outside = histogram();
    let mut during = histogram();
    for (t, us) in samples.iter() {
        if inside(t) {
            during.record(*us).unwrap();
        } else {
            outside.record(*us).unwrap();
        }
    }
    let base = outside.value_at_quantile(0.5);
    println!(
        "RESULT rescale live_entities={live} handoff_ms={handoff_ms:.0} max_pause_ms={:.1} p99_pause_ms={:.1} baseline_p50_ms={:.2} outside_p999_ms={:.1} outside_max_ms={:.1} commands={}",
        ms(during.max().saturating_sub(base)),
        ms(during.value_at_quantile(0.99).saturating_sub(base)),
        ms(base),
        ms(outside.value_at_quantile(0.999)),
        ms(outside.max()),
        samples.len()
    );
    region.stop().await;
}

async fn recovery(dir: &std::path::Path) {
    let n: u64 = env_or("STATELINE_BENCH_RECOVER", 10_000);
    eprintln!("== recovery: {n} entities, snapshot + 100 events each");
    let path = dir.join("recovery.redb");
    {
        let journal = Journal::open(&path).unwrap();
        let state = rmp_serde::to_vec_named(&Sensor {
            readings: 10,
            last: 0,
        })
        .unwrap();
        let mut tasks = Vec::new();
        for t in 0..64u64 {
            let j = journal.clone();
            let state = state.clone();
            tasks.push(actix_rt::spawn(async move {
                let mut e = t;
                while e < n {
                    let pid = PersistenceId::parse("sensor", &id(e)).unwrap();
                    let first: Vec<NewEvent> = (0..10)
                        .map(|v| {
                            NewEvent::encode(
                                Manifest::new("sensor", 1),
                                &Recorded {
                                    value: v,
                                    memo: memo(),
                                },
                            )
                            .unwrap()
                        })
                        .collect();
                    j.append(&pid, Seq(1), first).await.unwrap();
                    j.save_snapshot(&pid, Seq(10), Manifest::new("sensor", 1), state.clone())
                        .await
                        .unwrap();
                    let rest: Vec<NewEvent> = (0..100)
                        .map(|v| {
                            NewEvent::encode(
                                Manifest::new("sensor", 1),
                                &Recorded {
                                    value: v,
                                    memo: memo(),
                                },
                            )
                            .unwrap()
                        })
                        .collect();
                    j.append(&pid, Seq(11), rest).await.unwrap();
                    e += 64;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        journal.flush(true).await.unwrap();
    }
    let journal = Journal::open(&path).unwrap();
    let region = ShardRegion::<Sensor>::start(journal, RegionConfig::default()).unwrap();
    let started = Instant::now();
    let mut window = VecDeque::new();
    for i in 0..n {
        window.push_back(region.enqueue(&id(i), SensorCommand::Touch).unwrap());
        if window.len() >= 1024 {
            let r = window.pop_front().unwrap().await.unwrap().unwrap();
            assert_eq!(r, 110);
        }
    }
    for rx in window {
        assert_eq!(rx.await.unwrap().unwrap(), 110);
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!("RESULT recovery entities={n} events_per_entity=100 entities_per_sec={rate:.0}");
    region.stop().await;
}

async fn memory(dir: &std::path::Path, active: bool) {
    let live: u64 = env_or("STATELINE_BENCH_LIVE", 100_000);
    let scenario = std::env::var("STATELINE_BENCH_MEMORY_SCENARIO").unwrap_or_default();
    eprintln!("== {scenario}: {live} live entities");
    let journal = Journal::open(dir.join("memory.redb")).unwrap();
    let mut shard = ShardConfig {
        max_active_entities: live as usize * 2,
        ..ShardConfig::default()
    };
    if active {
        shard.hibernate_after = Duration::MAX;
        shard.max_running_entities = usize::MAX;
    }
    let hibernate_ms = if active {
        "never".to_string()
    } else {
        shard.hibernate_after.as_millis().to_string()
    };
    let max_running = if active {
        "unbounded".to_string()
    } else {
        shard.max_running_entities.to_string()
    };
    let config = RegionConfig {
        shard,
        ..RegionConfig::default()
    };
    let region = ShardRegion::<Sensor>::start(journal, config).unwrap();
    // Warm the allocator and the journal with entities that are then passivated.
    region.send("warm", SensorCommand::Touch).await.unwrap();
    actix_rt::time::sleep(Duration::from_millis(200)).await;
    let before = rss_bytes();
    let started = Instant::now();
    let mut window = VecDeque::new();
    for i in 0..live {
        window.push_back(region.enqueue(&id(i), SensorCommand::Touch).unwrap());
        if window.len() >= 2048 {
            window.pop_front().unwrap().await.unwrap().unwrap();
        }
    }
    for rx in window {
        rx.await.unwrap().unwrap();
    }
    let loaded = started.elapsed();
    let peak = rss_bytes();
    let mut stats = region.stats().await.unwrap();
    if !active {
        // Steady state: every entity idle long enough to hibernate.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let hibernated: usize = stats
                .shards
                .iter()
                .map(|s| s.stats.hibernated_entities)
                .sum();
            let alive: usize = stats.shards.iter().map(|s| s.stats.live_entities).sum();
            if hibernated == alive || Instant::now() > deadline {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
            stats = region.stats().await.unwrap();
        }
    }
    let alive: usize = stats.shards.iter().map(|s| s.stats.live_entities).sum();
    let hibernated: usize = stats
        .shards
        .iter()
        .map(|s| s.stats.hibernated_entities)
        .sum();
    let after = rss_bytes();
    let per = (after.saturating_sub(before)) as f64 / alive.max(1) as f64;
    let peak_per = (peak.saturating_sub(before)) as f64 / alive.max(1) as f64;
    println!(
        "RESULT {scenario} live_entities={alive} hibernated={hibernated} hibernate_after_ms={hibernate_ms} max_running_per_shard={max_running} shards={} mimalloc_purge_delay_ms={} mimalloc_allow_thp={} load_s={:.2} rss_before_mb={:.1} rss_peak_mb={:.1} rss_after_mb={:.1} peak_bytes_per_entity={peak_per:.0} bytes_per_entity={per:.0}",
        stats.shards.len(),
        std::env::var("MIMALLOC_PURGE_DELAY").unwrap_or_else(|_| "default".into()),
        std::env::var("MIMALLOC_ALLOW_THP").unwrap_or_else(|_| "default".into()),
        loaded.as_secs_f64(),
        before as f64 / 1e6,
        peak as f64 / 1e6,
        after as f64 / 1e6
    );
    region.stop().await;
}

fn main() {
    support::with_allocator_settings();
    // The memory scenarios measure resident memory, so each runs in a process of its own
    // (freed memory of other scenarios, or of the other memory scenario, would hide growth).
    if let Ok(mode) = std::env::var("STATELINE_BENCH_MEMORY_SCENARIO") {
        let dir = tempfile::tempdir().expect("temp dir");
        actix_rt::System::new().block_on(memory(dir.path(), mode == "memory_active"));
        return;
    }
    let others: Vec<&str> = ["region_persist", "rescale", "recovery"]
        .into_iter()
        .filter(|s| enabled(s))
        .collect();
    if !others.is_empty() {
        run_scenarios(&others);
    }
    let exe = std::env::current_exe().expect("own executable");
    for scenario in ["memory", "memory_active"] {
        if !enabled(scenario) {
            continue;
        }
        let status = std::process::Command::new(&exe)
            .args(std::env::args().skip(1))
            .env("STATELINE_BENCH_MEMORY_SCENARIO", scenario)
            .status()
            .expect("memory scenario process");
        assert!(status.success(), "{scenario} scenario failed");
    }
}

fn run_scenarios(scenarios: &[&str]) {
    let enabled = |name: &str| scenarios.contains(&name);
    let dir = tempfile::tempdir().expect("temp dir");
    actix_rt::System::new().block_on(async {
        if enabled("region_persist") {
            region_persist(dir.path()).await;
        }
        if enabled("rescale") {
            rescale(dir.path()).await;
        }
        if enabled("recovery") {
            recovery(dir.path()).await;
        }
    });
}
