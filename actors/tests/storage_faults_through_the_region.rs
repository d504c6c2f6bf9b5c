//! Seeded simulation of storage faults under the whole actor stack (G1–G3, G5, G6, G8): a
//! region of shard actors and entities runs on a journal whose storage, after a seeded number
//! of writes and syncs, either starts failing every write (`FaultyStorage`: the journal is
//! poisoned) or loses power (`PowerLossStorage`: what survives is the synced bytes plus any
//! subset of the unsynced writes). Four senders push per-sender-numbered deposits to random
//! accounts, sometimes while the region rescales, idle entities hibernate within a millisecond
//! or a tight bound on running actors hibernates them as others start. Every command must end — acknowledged, or
//! failed with an error (persist failed, the entity stops, later commands fail fast) — never
//! hang. Then the storage comes back and the journal reopens; the test checks: `verify` is
//! clean; every acknowledged command is stored exactly once; every stored command was sent,
//! with its amount, and none that failed for sure (refused or poisoned) is stored; per account
//! and sender the stored numbers are 1..=m in order; the changelog is contiguous and the only
//! unacknowledged events in it come after every acknowledged one (a prefix of committed
//! transactions plus at most the one in flight); a new region recovers every balance as the
//! fold of its journal and the next incarnation persists again.
//!
//! 24 seeds per fault kind by default, 300 with `STATELINE_SOAK=1`; `STATELINE_FAULT_SEED=N`
//! runs one seed. A failing seed is printed: add it to `REGRESSION_SEEDS` with its cause.
#![allow(clippy::unwrap_used)]

mod support;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use stateline_actors::{CommandError, RegionConfig, ShardConfig, ShardRegion};
use stateline_journal::{
    FaultyStorage, Journal, JournalError, Offset, PersistenceId, PowerLossStorage, Seq,
};
use support::*;

/// Seeds that failed once, run first (with the fault kind). None so far.
const REGRESSION_SEEDS: &[(u64, Fault)] = &[];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Every write and sync fails from the k-th on; the process keeps running.
    Error,
    /// The power goes at the k-th write or sync; the disk comes back as after a power cut.
    PowerLoss,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    /// Certainly not stored: refused before reaching storage.
    NotStored,
    /// Failed in or after the commit: stored or not.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
struct Sent {
    account: usize,
    sender: u32,
    n: u64,
    amount: i64,
    outcome: Outcome,
}

fn next(rng: &mut u64) -> u64 {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    *rng
}

fn account(a: usize) -> String {
    format!("acc-{a}")
}

fn classify(e: &CommandError<AccountCommand>) -> Outcome {
    match e {
        CommandError::Overloaded { .. }
        | CommandError::ShardStopped { .. }
        | CommandError::InvalidId { .. }
        | CommandError::Rejected(_)
        | CommandError::PersistFailed(JournalError::Poisoned) => Outcome::NotStored,
        _ => Outcome::Unknown,
    }
}

enum Storage {
    Error(FaultyStorage),
    PowerLoss(PowerLossStorage),
}

async fn run_seed(seed: u64, fault: Fault) {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let accounts = 3 + (next(&mut rng) % 10) as usize;
    let budget = next(&mut rng) % 400;
    let rescale = next(&mut rng).is_multiple_of(2);
    let (storage, journal) = match fault {
        Fault::Error => {
            let s = FaultyStorage::new();
            let j = Journal::builder()
                .open_with_backend(s.clone(), "mem")
                .unwrap();
            s.fail_after(budget);
            (Storage::Error(s), j)
        }
        Fault::PowerLoss => {
            let s = PowerLossStorage::new();
            let j = Journal::builder()
                .open_with_backend(s.clone(), "mem")
                .unwrap();
            s.lose_power_after(budget);
            (Storage::PowerLoss(s), j)
        }
    };
    let config = RegionConfig {
        shards: 2,
        handoff_timeout: Duration::from_secs(10),
        shard: ShardConfig {
            hibernate_after: Duration::from_millis(if seed.is_multiple_of(3) { 1 } else { 2_000 }),
            // A third of the seeds churn through a tight bound on running actors.
            max_running_entities: if seed % 3 == 1 { 8 } else { 10_000 },
            sweep_interval: Duration::from_millis(2),
            ..ShardConfig::default()
        },
        ..RegionConfig::default()
    };
    let region = ShardRegion::<Account>::start(journal, config).unwrap();
    let log: Rc<RefCell<Vec<Sent>>> = Rc::default();
    let mut senders = Vec::new();
    for sender in 1..=4u32 {
        let (region, log) = (region.clone(), log.clone());
        let mut rng = rng ^ u64::from(sender).wrapping_mul(0xD6E8_FEB8_6659_FD93);
        senders.push(actix_rt::spawn(async move {
            let mut numbers: HashMap<usize, u64> = HashMap::new();
            for _ in 0..60 {
                let a = (next(&mut rng) % accounts as u64) as usize;
                let n = numbers.get(&a).map_or(1, |n| n + 1);
                let amount = 1 + (next(&mut rng) % 100) as i64;
                let cmd = AccountCommand::Tagged { sender, n, amount };
                let outcome = match region.send(&account(a), cmd).await {
                    Ok(Ok(_)) => Outcome::Acked,
                    Ok(Err(e)) => panic!("account refused command {sender}/{n}: {e:?}"),
                    Err(e) => classify(&e),
                };
                log.borrow_mut().push(Sent {
                    account: a,
                    sender,
                    n,
                    amount,
                    outcome,
                });
                if outcome != Outcome::Acked {
                    // Its outcome may be unknown: numbering on would be refused as a gap.
                    break;
                }
                numbers.insert(a, n);
            }
        }));
    }
    if rescale {
        for shards in [3, 1] {
            actix_rt::time::sleep(Duration::from_millis(next(&mut rng) % 20)).await;
            // A handoff on failing storage still completes (snapshot failures only warn).
            region.rescale(shards).await.unwrap();
        }
    }
    for s in senders {
        s.await.unwrap();
    }
    // The fault hits now if it has not yet: what the shutdown writes (passivation snapshots,
    // redb's close) must not make up for what was not committed.
    match &storage {
        Storage::Error(s) => s.fail_now(true),
        Storage::PowerLoss(s) => s.lose_power_after(0),
    }
    region.stop().await;
    drop(region);

    let journal = match &storage {
        Storage::Error(s) => {
            s.fail_now(false);
            Journal::builder().open_with_backend(s.clone(), "mem")
        }
        Storage::PowerLoss(s) => Journal::builder().open_with_backend(s.reboot(seed), "mem"),
    }
    .unwrap_or_else(|e| panic!("the journal does not reopen: {e}"));
    let report = journal.reader().verify(&mut |_, _| {}).unwrap();
    assert!(report.is_ok(), "verify: {:?}", report.problems);

    let sent: HashMap<(usize, u32, u64), Sent> = log
        .borrow()
        .iter()
        .map(|s| ((s.account, s.sender, s.n), *s))
        .collect();
    let mut stored: HashMap<(usize, u32, u64), Offset> = HashMap::new();
    let mut balances = vec![0i64; accounts];
    for (a, balance) in balances.iter_mut().enumerate() {
        let pid = PersistenceId::parse("account", &account(a)).unwrap();
        let mut last: HashMap<u32, u64> = HashMap::new();
        for (i, rec) in journal.all_events(&pid).unwrap().into_iter().enumerate() {
            assert_eq!(rec.seq, Seq(i as u64 + 1), "{pid}: seqs not contiguous");
            let AccountEvent::TaggedDeposit { sender, n, amount } = rec.decode().unwrap() else {
                panic!("{pid}: unexpected event");
            };
            let prev = last.insert(sender, n).unwrap_or(0);
            assert_eq!(
                n,
                prev + 1,
                "{pid}: sender {sender} out of order or repeated"
            );
            let s = sent
                .get(&(a, sender, n))
                .unwrap_or_else(|| panic!("{pid}: {sender}/{n} stored but never sent"));
            assert_eq!(
                s.amount, amount,
                "{pid}: {sender}/{n} stored with another amount"
            );
            assert_ne!(
                s.outcome,
                Outcome::NotStored,
                "{pid}: {sender}/{n} failed for sure but is stored"
            );
            stored.insert((a, sender, n), rec.offset);
            *balance += amount;
        }
    }
    let mut max_acked = Offset(0);
    for s in log.borrow().iter().filter(|s| s.outcome == Outcome::Acked) {
        let offset = stored
            .get(&(s.account, s.sender, s.n))
            .unwrap_or_else(|| panic!("acknowledged {s:?} lost"));
        max_acked = max_acked.max(*offset);
    }
    let mut expected = 1;
    for rec in journal.changelog(Offset(1)).unwrap() {
        let rec = rec.unwrap();
        assert_eq!(rec.offset, Offset(expected), "changelog not contiguous");
        expected += 1;
    }
    for ((a, sender, n), offset) in &stored {
        if sent[&(*a, *sender, *n)].outcome == Outcome::Unknown {
            assert!(
                *offset > max_acked,
                "an unacknowledged event ({a} {sender}/{n} at {offset:?}) precedes the last acknowledged one ({max_acked:?})"
            );
        }
    }

    let count = |o: Outcome| log.borrow().iter().filter(|s| s.outcome == o).count();
    let unknown_stored = stored
        .keys()
        .filter(|k| sent[*k].outcome == Outcome::Unknown)
        .count();
    println!(
        "  {accounts} accounts, fault after {budget} writes/syncs, rescale {rescale}: {} acked, {} failed for sure, {} unknown ({unknown_stored} of them stored), {} events",
        count(Outcome::Acked),
        count(Outcome::NotStored),
        count(Outcome::Unknown),
        expected - 1
    );
    // The next incarnations, on healthy storage: balances are the folds; persisting works.
    let region = ShardRegion::<Account>::start(
        journal,
        RegionConfig {
            shards: 2,
            ..RegionConfig::default()
        },
    )
    .unwrap();
    for (a, want) in balances.iter().enumerate() {
        assert_eq!(
            region
                .send(&account(a), AccountCommand::Balance)
                .await
                .unwrap(),
            Ok(*want)
        );
        assert_eq!(
            region
                .send(&account(a), AccountCommand::Deposit { amount: 1 })
                .await
                .unwrap(),
            Ok(want + 1)
        );
    }
    region.stop().await;
}

#[actix_rt::test]
async fn storage_faults_leave_a_prefix_and_the_region_surfaces_them() {
    let soak = std::env::var("STATELINE_SOAK").is_ok_and(|v| v == "1");
    let per_kind = if soak { 300 } else { 24 };
    let mut runs: Vec<(u64, Fault)> = REGRESSION_SEEDS.to_vec();
    match std::env::var("STATELINE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(seed) => runs.extend([(seed, Fault::Error), (seed, Fault::PowerLoss)]),
        None => {
            for seed in 0..per_kind {
                runs.extend([(seed, Fault::Error), (seed, Fault::PowerLoss)]);
            }
        }
    }
    for (seed, fault) in runs {
        println!("storage fault simulation: seed {seed}, {fault:?} (STATELINE_FAULT_SEED={seed})");
        actix_rt::time::timeout(Duration::from_secs(60), run_seed(seed, fault))
            .await
            .unwrap_or_else(|_| panic!("seed {seed} {fault:?}: hung"));
    }
}
