//! The bound on running actors (`ShardConfig::max_running_entities`): past it, idle running
//! actors hibernate at once instead of after `hibernate_after`, so a burst over many entities
//! costs the memory of the bound's actors. Hibernated entities keep their state (G4: no
//! replay on waking) and commands churning through the bound are applied exactly once and in
//! order (G6), also after a restart from the journal (G1).
#![allow(clippy::unwrap_used)]

mod support;

use std::cell::Cell;
use std::time::Duration;

use stateline_actors::{Shard, ShardConfig, ShardRef, ShardStats};
use support::*;

/// Only the bound hibernates: idle hibernation is a minute away.
fn bounded(max_running: usize) -> ShardConfig {
    ShardConfig {
        max_running_entities: max_running,
        hibernate_after: Duration::from_secs(60),
        sweep_interval: Duration::from_millis(2),
        ..ShardConfig::default()
    }
}

fn running(s: &ShardStats) -> usize {
    s.live_entities - s.hibernated_entities
}

#[actix_rt::test]
async fn a_burst_over_many_entities_keeps_at_most_the_bound_running() {
    let shard: ShardRef<Tally> = Shard::start(mem_journal(), bounded(10)).unwrap();
    for i in 0..200u64 {
        assert_eq!(
            shard
                .send(&format!("t{i}"), TallyCmd::Add(i))
                .await
                .unwrap(),
            i
        );
    }
    eventually("at most 10 actors running", async || {
        running(&shard.stats().await.unwrap()) <= 10
    })
    .await;
    let stats = shard.stats().await.unwrap();
    assert_eq!(stats.live_entities, 200, "hibernated entities stay live");
    assert_eq!(stats.passivations, 0);
    assert!(stats.hibernations >= 190, "{stats:?}");
    let applied = APPLIED.with(Cell::get);
    assert_eq!(applied, 200);
    for i in 0..200u64 {
        assert_eq!(
            shard
                .send(&format!("t{i}"), TallyCmd::Add(1))
                .await
                .unwrap(),
            i + 1
        );
    }
    // Every wake continued from the kept state: 200 new events applied, nothing replayed.
    assert_eq!(APPLIED.with(Cell::get), applied + 200);
    eventually("still at most 10 running", async || {
        running(&shard.stats().await.unwrap()) <= 10
    })
    .await;
    shard.stop().await;
}

#[actix_rt::test]
async fn without_the_bound_idle_actors_keep_running_until_hibernate_after() {
    let shard: ShardRef<Tally> = Shard::start(mem_journal(), bounded(usize::MAX)).unwrap();
    for i in 0..50u64 {
        shard
            .send(&format!("t{i}"), TallyCmd::Add(1))
            .await
            .unwrap();
    }
    // Many sweeps (every 2 ms) pass; none may hibernate anything.
    actix_rt::time::sleep(Duration::from_millis(100)).await;
    let stats = shard.stats().await.unwrap();
    assert_eq!(stats.live_entities, 50);
    assert_eq!(stats.hibernations, 0, "{stats:?}");
    shard.stop().await;
}

#[actix_rt::test]
async fn commands_churning_through_the_bound_are_applied_once_in_order_and_survive_a_restart() {
    let journal = mem_journal();
    let shard: ShardRef<Account> = Shard::start(journal.clone(), bounded(4)).unwrap();
    let entities = 40u64;
    let mut expected = vec![0i64; entities as usize];
    let mut next_n = vec![1u64; entities as usize];
    let mut pending = Vec::new();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for k in 0..2_000i64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let e = (x % entities) as usize;
        let n = next_n[e];
        next_n[e] += 1;
        expected[e] += k;
        // Pipelined: commands queue behind busy entities while others hibernate and wake.
        pending.push(
            shard
                .enqueue(
                    &format!("c{e}"),
                    AccountCommand::Tagged {
                        sender: 7,
                        n,
                        amount: k,
                    },
                )
                .unwrap(),
        );
        if pending.len() >= 64 {
            for rx in pending.drain(..) {
                // A repeated or reordered command would be refused with `OutOfOrder`.
                rx.await.unwrap().unwrap().unwrap();
            }
        }
    }
    for rx in pending {
        rx.await.unwrap().unwrap().unwrap();
    }
    let stats = shard.stats().await.unwrap();
    assert_eq!(stats.events_persisted, 2_000);
    assert!(
        stats.hibernations > 100,
        "the bound never churned: {stats:?}"
    );
    for (e, want) in expected.iter().enumerate() {
        let got = shard
            .send(&format!("c{e}"), AccountCommand::Balance)
            .await
            .unwrap();
        assert_eq!(got, Ok(*want), "entity c{e}");
    }
    shard.stop().await;

    // The journal holds each command's event exactly once: a fresh shard recovers the same.
    let restarted: ShardRef<Account> = Shard::start(journal, ShardConfig::default()).unwrap();
    for (e, want) in expected.iter().enumerate() {
        let got = restarted
            .send(&format!("c{e}"), AccountCommand::Balance)
            .await
            .unwrap();
        assert_eq!(got, Ok(*want), "entity c{e} after restart");
    }
    restarted.stop().await;
}
