//! The stateline demo: a bank on an embedded journal. 10,000 accounts receive 200,000
//! deposits and withdrawals from concurrent senders through a shard region that is rescaled
//! 4 → 8 → 2 → 6 shard actors mid-stream; then the region stops, the journal is reopened and
//! every account recovers. Every balance must equal the sum of its acknowledged operations,
//! before and after the restart; the demo exits non-zero if any check fails.
//!
//! On an existing journal (also one left by a crash) it recovers and continues from the
//! recovered balances. With `--ack-log FILE` it appends `<op_id> <account> <signed amount>`
//! for every acknowledged change (flushed per line); every event carries its operation id, so
//! a journal can be audited against the log. Refused withdrawals change nothing and are not
//! logged. `--sent-log FILE` logs every operation the same way before it is sent, so an audit
//! can also find operations in the journal that were never sent.
//!
//! `cargo run --release --example bank -- --accounts 10000 --ops 200000 --rescale 8,2,6`

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;

/// See the README's "Allocator" section: glibc's malloc degrades under cross-thread frees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde::{Deserialize, Serialize};
use stateline::actors::{RegionConfig, ShardRegion};
use stateline::prelude::*;
use uuid::Uuid;

#[derive(Parser, Debug)]
#[command(about = "A bank on stateline: load, rescale, restart, verify")]
struct Args {
    /// Journal file; an existing journal is recovered and continued.
    #[arg(long, default_value = "bank.redb")]
    db: PathBuf,
    /// Number of accounts.
    #[arg(long, default_value_t = 10_000)]
    accounts: u32,
    /// Number of deposit/withdraw operations.
    #[arg(long, default_value_t = 200_000)]
    ops: u64,
    /// Shard actors at start.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// Shard counts to rescale to, evenly spread over the run (empty: no rescale).
    #[arg(long, value_delimiter = ',', default_value = "8,2,6")]
    rescale: Vec<usize>,
    /// Seed of the operation mix.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 256)]
    senders: u64,
    /// Append `<op_id> <account> <signed amount>` per acknowledged change to this file.
    #[arg(long)]
    ack_log: Option<PathBuf>,
    /// Append `<op_id> <account> <signed amount>` per operation to this file before sending
    /// it (flushed per line): a journal can then be checked for operations never sent.
    #[arg(long)]
    sent_log: Option<PathBuf>,
}

#[derive(Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Command {
    Deposit { op_id: Uuid, amount: i64 },
    Withdraw { op_id: Uuid, amount: i64 },
    Balance,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Event {
    Deposited { op_id: Uuid, amount: i64 },
    Withdrawn { op_id: Uuid, amount: i64 },
}

impl EventSourced for Account {
    const TYPE_NAME: &'static str = "account";
    type Command = Command;
    type Event = Event;
    /// The balance after the operation; `Err` with the balance when a withdrawal is refused.
    type Reply = Result<i64, i64>;

    fn handle(&self, command: Command) -> Effect<Self> {
        match command {
            Command::Deposit { op_id, amount } => {
                Effect::persist(vec![Event::Deposited { op_id, amount }])
                    .then_reply(|s: &Self| Ok(s.balance))
            }
            Command::Withdraw { amount, .. } if amount > self.balance => {
                Effect::reject(Err(self.balance))
            }
            Command::Withdraw { op_id, amount } => {
                Effect::persist(vec![Event::Withdrawn { op_id, amount }])
                    .then_reply(|s: &Self| Ok(s.balance))
            }
            Command::Balance => Effect::reply(Ok(self.balance)),
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Deposited { amount, .. } => self.balance += amount,
            Event::Withdrawn { amount, .. } => self.balance -= amount,
        }
    }
}

/// splitmix64, for a reproducible operation mix.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn account_id(a: u32) -> String {
    format!("acc-{a:05}")
}

/// Appends `<op_id> <account> <signed amount>` in one write, so that a kill leaves at most a
/// short last line without its newline, never a line with a cut number.
fn log_line(
    log: &RefCell<std::fs::File>,
    op_id: Uuid,
    account: u32,
    delta: i64,
) -> std::io::Result<()> {
    let line = format!("{op_id} {} {delta}\n", account_id(account));
    let mut f = log.borrow_mut();
    f.write_all(line.as_bytes())?;
    f.flush()
}

async fn balances(region: &ShardRegion<Account>, accounts: u32) -> anyhow::Result<Vec<i64>> {
    let mut pending = Vec::with_capacity(accounts as usize);
    for a in 0..accounts {
        pending.push(region.enqueue(&account_id(a), Command::Balance)?);
    }
    let mut out = Vec::with_capacity(accounts as usize);
    for rx in pending {
        let reply = rx.await.map_err(|_| anyhow::anyhow!("entity stopped"))??;
        out.push(reply.unwrap_or_else(|b| b));
    }
    Ok(out)
}

fn check(label: &str, got: &[i64], want: &[i64]) -> bool {
    let wrong: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
    if wrong.is_empty() {
        println!(
            "check {label}: OK, {} balances equal their acknowledged operations",
            want.len()
        );
        true
    } else {
        let first = wrong[0];
        println!(
            "check {label}: FAILED for {} accounts (e.g. {}: {} instead of {})",
            wrong.len(),
            account_id(first as u32),
            got[first],
            want[first]
        );
        false
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn start(args: &Args) -> anyhow::Result<ShardRegion<Account>> {
    let journal = Journal::open(&args.db)?;
    let config = RegionConfig {
        shards: args.shards,
        ..RegionConfig::default()
    };
    Ok(ShardRegion::start(journal, config)?)
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.accounts > 0, "--accounts must be at least 1");
    let opened = Instant::now();
    let region = start(&args)?;
    let initial = balances(&region, args.accounts).await?;
    println!(
        "journal {}: {} accounts recovered in {:.2?} (total balance {})",
        args.db.display(),
        args.accounts,
        opened.elapsed(),
        initial.iter().sum::<i64>()
    );
    let append_log = |path: &Option<PathBuf>| -> anyhow::Result<_> {
        Ok(match path {
            Some(p) => Some(Rc::new(RefCell::new(
                OpenOptions::new().create(true).append(true).open(p)?,
            ))),
            None => None,
        })
    };
    let ack_log = append_log(&args.ack_log)?;
    let sent_log = append_log(&args.sent_log)?;

    let acked = Rc::new(RefCell::new(Vec::<(u32, i64)>::new()));
    let latencies = Rc::new(RefCell::new(Vec::<(Instant, Duration)>::with_capacity(
        args.ops as usize,
    )));
    let failures = Rc::new(RefCell::new(0u64));
    let issued = Rc::new(std::sync::atomic::AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.senders {
        let (region, acked, latencies, failures, issued, ack_log, sent_log) = (
            region.clone(),
            acked.clone(),
            latencies.clone(),
            failures.clone(),
            issued.clone(),
            ack_log.clone(),
            sent_log.clone(),
        );
        let (accounts, ops, seed) = (args.accounts, args.ops, args.seed);
        tasks.push(actix_rt::spawn(async move {
            loop {
                let i = issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= ops {
                    break;
                }
                let r = mix(seed ^ mix(i));
                let account = (r % u64::from(accounts)) as u32;
                let amount = ((r >> 32) % 100 + 1) as i64;
                let op_id = Uuid::now_v7();
                let (cmd, delta) = if (r >> 16).is_multiple_of(3) {
                    (Command::Withdraw { op_id, amount }, -amount)
                } else {
                    (Command::Deposit { op_id, amount }, amount)
                };
                if let Some(log) = &sent_log {
                    if log_line(log, op_id, account, delta).is_err() {
                        *failures.borrow_mut() += 1;
                    }
                }
                let t = Instant::now();
                match region.send(&account_id(account), cmd).await {
                    Ok(Ok(_)) => {
                        acked.borrow_mut().push((account, delta));
                        if let Some(log) = &ack_log {
                            if log_line(log, op_id, account, delta).is_err() {
                                *failures.borrow_mut() += 1;
                            }
                        }
                    }
                    Ok(Err(_)) => {}
                    Err(e) => {
                        eprintln!("operation {op_id} on {} failed: {e}", account_id(account));
                        *failures.borrow_mut() += 1;
                    }
                }
                latencies.borrow_mut().push((t, t.elapsed()));
            }
        }));
    }
    let mut rescales = Vec::new();
    let steps = args.rescale.len() as u64 + 1;
    for (i, &target) in args.rescale.iter().enumerate() {
        let at = args.ops * (i as u64 + 1) / steps;
        while latencies.borrow().len() < at as usize {
            actix_rt::time::sleep(Duration::from_millis(1)).await;
        }
        let t = Instant::now();
        eprintln!("rescale to {target} shard actors started");
        let report = region.rescale(target).await?;
        rescales.push((t, report));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed();
    let lat = std::mem::take(&mut *latencies.borrow_mut());
    let mut sorted: Vec<Duration> = lat.iter().map(|(_, d)| *d).collect();
    sorted.sort();
    println!(
        "{} operations from {} senders in {:.2}s: {:.0} ops/s; latency p50 {:.2?} p99 {:.2?} p99.9 {:.2?} max {:.2?}",
        args.ops,
        args.senders,
        elapsed.as_secs_f64(),
        args.ops as f64 / elapsed.as_secs_f64(),
        percentile(&sorted, 0.50),
        percentile(&sorted, 0.99),
        percentile(&sorted, 0.999),
        sorted.last().copied().unwrap_or_default()
    );
    for (t, r) in &rescales {
        // The pause a caller saw: the worst latency of a command issued during the handoff.
        let end = *t + r.handoff;
        let worst = lat
            .iter()
            .filter(|(s, _)| *s >= *t && *s <= end)
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default();
        println!(
            "rescale {} -> {}: handoff {:.2?}, {} key groups and {} entities moved, {} commands buffered, worst command latency during it {:.2?}",
            r.from, r.to, r.handoff, r.moved_key_groups, r.entities_handed_off, r.buffered_commands, worst
        );
    }
    let mut expected = initial.clone();
    for (a, delta) in acked.borrow().iter() {
        expected[*a as usize] += delta;
    }
    let mut ok = *failures.borrow() == 0;
    if !ok {
        println!(
            "check operations: FAILED, {} operations errored",
            failures.borrow()
        );
    }
    ok &= check(
        "before restart",
        &balances(&region, args.accounts).await?,
        &expected,
    );

    region.stop().await;
    drop(region);
    let t = Instant::now();
    let region = start(&args)?;
    let after = balances(&region, args.accounts).await?;
    println!(
        "restart: journal reopened and {} accounts recovered in {:.2?}",
        args.accounts,
        t.elapsed()
    );
    ok &= check("after restart", &after, &expected);
    let stats = region.stats().await?;
    let stored: u64 = stats.key_groups.iter().map(|k| k.entities).sum();
    println!(
        "region: {} shard actors, {} accounts stored over {} key groups",
        stats.shards.len(),
        stored,
        stats.key_groups.len()
    );
    region.stop().await;
    if !ok {
        std::process::exit(1);
    }
    println!("all checks passed");
    Ok(())
}
