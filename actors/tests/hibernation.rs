//! Hibernation (`ShardConfig::hibernate_after`): an idle entity's actor stops while its state
//! stays in the shard. Its next command continues from that state without reading the journal
//! (G4: the woken state equals the state a recovery would build); commands racing hibernation
//! are applied exactly once and in order (G6); hibernated entities still count as live, are
//! passivated with a snapshot when idle long enough or when their key group moves, and recover
//! on their new owner with the same state (G5: never live on two shards).
#![allow(clippy::unwrap_used)]

mod support;

use std::cell::Cell;
use std::time::Duration;

use stateline_actors::{RegionConfig, Shard, ShardConfig, ShardRef, ShardRegion};
use stateline_journal::{Journal, PersistenceId};
use support::*;

fn journal() -> Journal {
    mem_journal()
}

fn hibernating(after_ms: u64) -> ShardConfig {
    ShardConfig {
        hibernate_after: Duration::from_millis(after_ms),
        sweep_interval: Duration::from_millis(2),
        ..ShardConfig::default()
    }
}

#[actix_rt::test]
async fn idle_entities_hibernate_and_wake_on_their_state_without_replaying() {
    let shard: ShardRef<Tally> = Shard::start(journal(), hibernating(20)).unwrap();
    for i in 0..20u64 {
        for n in 1..=5 {
            shard
                .send(&format!("t{i}"), TallyCmd::Add(n))
                .await
                .unwrap();
        }
    }
    eventually("all 20 hibernated", async || {
        shard.stats().await.unwrap().hibernated_entities == 20
    })
    .await;
    let stats = shard.stats().await.unwrap();
    assert_eq!(stats.live_entities, 20, "hibernated entities are live");
    assert_eq!(stats.passivations, 0);
    let applied = APPLIED.with(Cell::get);
    assert_eq!(applied, 100);
    for i in 0..20u64 {
        assert_eq!(
            shard.send(&format!("t{i}"), TallyCmd::Get).await.unwrap(),
            15
        );
        assert_eq!(
            shard
                .send(&format!("t{i}"), TallyCmd::Add(1))
                .await
                .unwrap(),
            16
        );
    }
    // Woken on the kept state: only the 20 new events were applied, nothing replayed.
    assert_eq!(APPLIED.with(Cell::get), applied + 20);
    let stats = shard.stats().await.unwrap();
    assert!(stats.hibernations >= 20, "{stats:?}");
    assert_eq!(stats.live_entities, 20);
    shard.stop().await;
}

#[actix_rt::test]
async fn commands_racing_hibernation_are_applied_exactly_once_in_order() {
    let shard: ShardRef<Account> = Shard::start(journal(), hibernating(1)).unwrap();
    // Sent from a spawned task: the test's own body is polled before the shard on every turn
    // of the runtime, so its sends would never land while a hibernation is in flight.
    let sender = shard.clone();
    let expected = actix_rt::spawn(async move { send_racing(&sender).await })
        .await
        .unwrap();
    for (e, want) in expected.iter().enumerate() {
        assert_eq!(
            shard
                .send(&format!("r{e}"), AccountCommand::Balance)
                .await
                .unwrap(),
            Ok(*want)
        );
    }
    let stats = shard.stats().await.unwrap();
    assert_eq!(stats.events_persisted, 400);
    assert!(stats.hibernations > 0, "never hibernated: {stats:?}");
    shard.stop().await;
}

/// 400 numbered deposits over 4 entities, pausing now and then so that they hibernate;
/// returns each entity's expected balance.
async fn send_racing(shard: &ShardRef<Account>) -> [i64; 4] {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut expected = [0i64; 4];
    let mut pending = Vec::new();
    for n in 1..=400u64 {
        let e = (n % 4) as usize;
        let rx = shard
            .enqueue(
                &format!("r{e}"),
                AccountCommand::Tagged {
                    sender: 1,
                    n: n.div_ceil(4),
                    amount: n as i64,
                },
            )
            .unwrap();
        expected[e] += n as i64;
        pending.push(rx);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        if seed.is_multiple_of(5) {
            // Let the entities go idle long enough to hibernate (or be mid-hibernation).
            for rx in pending.drain(..) {
                rx.await.unwrap().unwrap().unwrap();
            }
            actix_rt::time::sleep(Duration::from_millis(seed % 6)).await;
        }
    }
    for rx in pending {
        // An out-of-order or repeated command would be refused with `OutOfOrder`.
        rx.await.unwrap().unwrap().unwrap();
    }
    expected
}

#[actix_rt::test]
async fn hibernated_entities_are_passivated_when_idle_long_enough() {
    let config = ShardConfig {
        // Long enough that an entity whose last append and snapshot are slow (it refuses to
        // hibernate meanwhile) still hibernates before it is passivated.
        passivate_after: Duration::from_secs(1),
        ..hibernating(5)
    };
    let shard: ShardRef<Account> = Shard::start(journal(), config).unwrap();
    // All queued before any is awaited, so no entity is idle (and may hibernate or wake)
    // before its last command: on a slow machine one slow append between two sends counted
    // as idle time.
    let pending: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .flat_map(|id| std::iter::repeat_n(id, 20))
        .map(|id| {
            shard
                .enqueue(id, AccountCommand::Deposit { amount: 2 })
                .unwrap()
        })
        .collect();
    for rx in pending {
        rx.await.unwrap().unwrap().unwrap();
    }
    // `hibernations` only grows: on a slow machine "a" may be passivated before "c" has
    // hibernated, so the number hibernated at once need never reach 3.
    eventually("hibernated", async || {
        shard.stats().await.unwrap().hibernations == 3
    })
    .await;
    eventually("passivated", async || {
        shard.stats().await.unwrap().live_entities == 0
    })
    .await;
    let stats = shard.stats().await.unwrap();
    assert_eq!(stats.hibernated_entities, 0);
    assert_eq!(stats.passivations, 3);
    // Each was hibernated once and passivated from there, never woken in between.
    assert_eq!(stats.hibernations, 3);
    assert_eq!(
        shard
            .send("b", AccountCommand::Deposit { amount: 1 })
            .await
            .unwrap(),
        Ok(41)
    );
    shard.stop().await;
}

#[actix_rt::test]
async fn the_active_limit_counts_hibernated_entities() {
    let config = ShardConfig {
        max_active_entities: 10,
        ..hibernating(1)
    };
    let shard: ShardRef<Account> = Shard::start(journal(), config).unwrap();
    for round in 1..=3i64 {
        for i in 0..40 {
            let r = shard
                .send(&format!("e{i}"), AccountCommand::Deposit { amount: 1 })
                .await;
            assert_eq!(r.unwrap(), Ok(round));
        }
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("at most 10 live entities", async || {
        shard.stats().await.unwrap().live_entities <= 10
    })
    .await;
    shard.stop().await;
}

#[actix_rt::test]
async fn hibernated_entities_move_with_their_key_groups_and_keep_their_state() {
    let journal = journal();
    let config = RegionConfig {
        shards: 2,
        shard: hibernating(5),
        ..RegionConfig::default()
    };
    let region = ShardRegion::<Tally>::start(journal.clone(), config).unwrap();
    let ids: Vec<String> = (0..200).map(|i| format!("m{i}")).collect();
    // 20 events each: no periodic snapshot yet (every 100), above the on-stop threshold (16).
    for round in 1..=20 {
        for id in &ids {
            region.send(id, TallyCmd::Add(round)).await.unwrap();
        }
    }
    eventually("all hibernated", async || {
        let s = region.stats().await.unwrap();
        s.shards
            .iter()
            .map(|s| s.stats.hibernated_entities)
            .sum::<usize>()
            == ids.len()
    })
    .await;
    region.rescale(4).await.unwrap();
    // Half of the key groups moved: their hibernated entities were woken and passivated by
    // the handoff, which wrote the policy's on-stop snapshot.
    let snapshotted = ids
        .iter()
        .filter(|id| {
            let pid = PersistenceId::parse("tally", id).unwrap();
            journal.snapshot_seqs(&pid).unwrap().last().map(|s| s.0) == Some(20)
        })
        .count();
    assert!(snapshotted >= 50, "{snapshotted} handoff snapshots");
    region.rescale(1).await.unwrap();
    let stats = region.stats().await.unwrap();
    let live: usize = stats.shards.iter().map(|s| s.stats.live_entities).sum();
    assert!(live <= ids.len(), "an entity is live twice: {live}");
    for id in &ids {
        assert_eq!(region.send(id, TallyCmd::Get).await.unwrap(), 210, "{id}");
    }
    region.stop().await;
}

#[actix_rt::test]
async fn passivating_a_hibernated_entity_snapshots_exactly_when_its_policy_asks() {
    let journal = journal();
    let config = ShardConfig {
        // As above: long enough to hibernate first on a slow machine.
        passivate_after: Duration::from_secs(1),
        ..hibernating(5)
    };
    let shard: ShardRef<Tally> = Shard::start(journal.clone(), config).unwrap();
    // Below the on-stop threshold (16 events): passivation drops the kept state, no snapshot.
    // Above it: the entity is woken and passivated through its actor, which snapshots.
    // Queued before awaited, so neither is idle (and passivated early) between its commands.
    let mut pending = Vec::new();
    for (id, events) in [("few", 5u64), ("many", 20)] {
        for n in 1..=events {
            pending.push(shard.enqueue(id, TallyCmd::Add(n)).unwrap());
        }
    }
    for rx in pending {
        rx.await.unwrap().unwrap();
    }
    eventually("both passivated", async || {
        shard.stats().await.unwrap().passivations == 2
    })
    .await;
    let stats = shard.stats().await.unwrap();
    assert_eq!(stats.live_entities, 0, "{stats:?}");
    assert_eq!(stats.hibernated_entities, 0, "{stats:?}");
    assert!(stats.hibernations >= 2, "they hibernated first: {stats:?}");
    let pid = |id: &str| PersistenceId::parse("tally", id).unwrap();
    assert!(journal.snapshot_seqs(&pid("few")).unwrap().is_empty());
    assert_eq!(
        journal.snapshot_seqs(&pid("many")).unwrap(),
        vec![stateline_journal::Seq(20)]
    );
    // Both recover the same state from the journal.
    assert_eq!(shard.send("few", TallyCmd::Get).await.unwrap(), 15);
    assert_eq!(shard.send("many", TallyCmd::Get).await.unwrap(), 210);
    shard.stop().await;
}
