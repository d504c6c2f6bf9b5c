//! Bank accounts on one shard actor over an embedded journal: concurrent senders deposit and
//! withdraw, then the shard is stopped, the journal closed and reopened, and every balance is
//! checked against the sum of its acknowledged operations — before and after the restart.
//! Exits non-zero if any check fails.
//!
//! `cargo run --release --example accounts -- --accounts 1000 --ops 50000`

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::{Deserialize, Serialize};
use stateline::prelude::*;

#[derive(Parser, Debug)]
#[command(about = "Accounts on a stateline shard: persist, restart, verify")]
struct Args {
    /// Journal file (an existing one is recovered and continued).
    #[arg(long, default_value = "accounts.redb")]
    db: PathBuf,
    /// Number of accounts.
    #[arg(long, default_value_t = 1_000)]
    accounts: u32,
    /// Number of deposit/withdraw operations.
    #[arg(long, default_value_t = 50_000)]
    ops: u64,
    /// Concurrent senders.
    #[arg(long, default_value_t = 64)]
    senders: u64,
    /// Seed of the operation mix.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op {
    Deposit(i64),
    Withdraw(i64),
    Balance,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Event {
    Deposited(i64),
    Withdrawn(i64),
}

impl EventSourced for Account {
    const TYPE_NAME: &'static str = "account";
    type Command = Op;
    type Event = Event;
    /// The new balance, or `None` when a withdrawal was refused.
    type Reply = Option<i64>;

    fn handle(&self, op: Op) -> Effect<Self> {
        match op {
            Op::Deposit(n) => {
                Effect::persist(vec![Event::Deposited(n)]).then_reply(|s: &Self| Some(s.balance))
            }
            Op::Withdraw(n) if n > self.balance => Effect::reject(None),
            Op::Withdraw(n) => {
                Effect::persist(vec![Event::Withdrawn(n)]).then_reply(|s: &Self| Some(s.balance))
            }
            Op::Balance => Effect::reply(Some(self.balance)),
        }
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Deposited(n) => self.balance += n,
            Event::Withdrawn(n) => self.balance -= n,
        }
    }
}

/// splitmix64: a tiny deterministic generator for the operation mix.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

async fn balances(shard: &ShardRef<Account>, accounts: u32) -> anyhow::Result<HashMap<u32, i64>> {
    let mut out = HashMap::new();
    for a in 0..accounts {
        let b = shard.send(&format!("acc-{a}"), Op::Balance).await?;
        out.insert(a, b.unwrap_or_default());
    }
    Ok(out)
}

fn check(label: &str, got: &HashMap<u32, i64>, want: &HashMap<u32, i64>) -> bool {
    let wrong: Vec<_> = want.iter().filter(|(a, b)| got.get(a) != Some(b)).collect();
    if wrong.is_empty() {
        println!(
            "check {label}: all {} balances match their acknowledged operations",
            want.len()
        );
        true
    } else {
        println!(
            "check {label}: FAILED for {} accounts, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        false
    }
}

#[actix_rt::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let journal = Journal::open(&args.db)?;
    let shard = Shard::<Account>::start(journal.clone(), ShardConfig::default())?;
    let mut expected = balances(&shard, args.accounts).await?;
    let recovered: i64 = expected.values().sum();
    println!(
        "journal {}: {} accounts recovered, total {recovered}",
        args.db.display(),
        args.accounts
    );

    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..args.senders {
        let shard = shard.clone();
        let (accounts, ops, senders, seed) = (args.accounts, args.ops, args.senders, args.seed);
        tasks.push(actix_rt::spawn(async move {
            let mut acked: Vec<(u32, i64)> = Vec::new();
            let mut latencies = Vec::new();
            let mut i = s;
            while i < ops {
                let r = mix(seed ^ i.wrapping_mul(0x1000_0001));
                let account = (r % u64::from(accounts)) as u32;
                let amount = (r >> 32) as i64 % 100 + 1;
                let op = if r & 0x10 == 0 {
                    Op::Withdraw(amount)
                } else {
                    Op::Deposit(amount)
                };
                let t = Instant::now();
                match shard.send(&format!("acc-{account}"), op.clone()).await {
                    Ok(Some(_)) => acked.push((
                        account,
                        if matches!(op, Op::Deposit(_)) {
                            amount
                        } else {
                            -amount
                        },
                    )),
                    Ok(None) => {}
                    Err(e) => eprintln!("operation on acc-{account} failed: {e}"),
                }
                latencies.push(t.elapsed());
                i += senders;
            }
            (acked, latencies)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::new();
    let mut acked_ops = 0;
    for t in tasks {
        let (acked, lat) = t.await?;
        acked_ops += acked.len();
        for (a, delta) in acked {
            *expected.entry(a).or_default() += delta;
        }
        latencies.extend(lat);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{} operations ({} acknowledged changes) in {:.2}s: {:.0} ops/s, latency p50 {:?} p99 {:?} p99.9 {:?}",
        args.ops,
        acked_ops,
        elapsed.as_secs_f64(),
        args.ops as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );
    let mut ok = check(
        "before restart",
        &balances(&shard, args.accounts).await?,
        &expected,
    );

    // Restart: stop the shard, close the journal, reopen, recover every account.
    shard.stop().await;
    drop(shard);
    drop(journal);
    let t = Instant::now();
    let journal = Journal::open(&args.db)?;
    let shard = Shard::<Account>::start(journal.clone(), ShardConfig::default())?;
    let after = balances(&shard, args.accounts).await?;
    println!(
        "restart: reopened and recovered {} accounts in {:?}",
        args.accounts,
        t.elapsed()
    );
    ok &= check("after restart", &after, &expected);
    shard.stop().await;
    if !ok {
        std::process::exit(1);
    }
    Ok(())
}
