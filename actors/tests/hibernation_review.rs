//! Review of hibernation (`ShardConfig::hibernate_after`) under races: requests that reach a
//! shard while an entity's hibernation is in flight (after the shard sent `Hibernate`, before
//! the entity answered). Commands, passivation requests, stops, panics and rescales racing it
//! are applied exactly once and in order (G6), a woken state equals the recovered one (G4), no
//! entity is live on two shards (G5), and a shard's stop passivates every entity and completes.
//!
//! The senders here are spawned tasks, not the test's own future: a test's future is polled
//! before the shard's and the entities' tasks on each turn of the runtime, so a request sent
//! from it never lands between the shard's sweep and the entity's answer. A spawned task woken
//! together with the shard's sweep timer does (and found the bug pinned down first below).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stateline_actors::{
    Effect, EventSourced, RegionConfig, Shard, ShardConfig, ShardRef, ShardRegion, SnapshotPolicy,
};
use support::*;

fn rng(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Hibernates after 1 ms idle, swept every millisecond.
fn hibernating() -> ShardConfig {
    ShardConfig {
        hibernate_after: Duration::from_millis(1),
        sweep_interval: Duration::from_millis(1),
        ..ShardConfig::default()
    }
}

/// Also passivates after 4 ms idle, keeps at most 3 entities live (LRU eviction of
/// hibernated entities) and at most 2 actors running (the bound hibernates the others).
fn churning() -> ShardConfig {
    ShardConfig {
        passivate_after: Duration::from_millis(4),
        max_active_entities: 3,
        max_running_entities: 2,
        ..hibernating()
    }
}

/// A reply within 20 s, or the test fails (a command accepted and never answered).
async fn reply<T>(rx: tokio::sync::oneshot::Receiver<T>, what: &str) -> Option<T> {
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .unwrap_or_else(|_| panic!("never answered: {what}"))
        .ok()
}

/// `ShardRef::passivate` passivates an idle entity. Cause of the bug: `PassivateNow` skipped
/// slots with `passivating` set, and `passivating` also means "a hibernation is in flight",
/// so a request for an idle entity that the sweep had just asked to hibernate was dropped and
/// the entity stayed hibernated, state and all, until `passivate_after` (120 s by default).
/// The shard now remembers the request (`passivate_asked`) and passivates once the
/// hibernation answers.
#[actix_rt::test]
async fn passivate_now_racing_a_hibernation_is_honoured() {
    let shard: ShardRef<Account> = Shard::start(mem_journal(), hibernating()).unwrap();
    let sender = shard.clone();
    actix_rt::spawn(async move {
        let shard = sender;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 1..=300u64 {
            shard
                .send("p", AccountCommand::Deposit { amount: 1 })
                .await
                .unwrap()
                .unwrap();
            // Jitter, not synchronisation: wakes this task together with a sweep now and then.
            actix_rt::time::sleep(Duration::from_micros(rng(&mut seed) % 4000)).await;
            shard.passivate("p");
            eventually(&format!("passivation {round}"), async || {
                shard.stats().await.unwrap().passivations == round
            })
            .await;
        }
    })
    .await
    .unwrap();
    let stats = shard.stats().await.unwrap();
    assert!(stats.hibernations > 0, "never hibernated: {stats:?}");
    shard.stop().await;
}

/// Counts per sender, in order: an entity refuses a repeated or skipped sequence number.
#[derive(Default, Serialize, Deserialize)]
struct Ordered {
    last: BTreeMap<u32, u64>,
    applied: u64,
}

#[derive(Debug)]
enum OrderedCmd {
    Add { sender: u32, n: u64 },
    Stop,
    Panic,
    Get,
}

impl EventSourced for Ordered {
    const TYPE_NAME: &'static str = "ordered";
    type Command = OrderedCmd;
    type Event = (u32, u64);
    type Reply = Result<u64, String>;

    fn handle(&self, command: OrderedCmd) -> Effect<Self> {
        match command {
            OrderedCmd::Add { sender, n } => {
                let want = self.last.get(&sender).map_or(1, |l| l + 1);
                if n != want {
                    return Effect::reply(Err(format!("sender {sender}: want {want}, got {n}")));
                }
                Effect::persist(vec![(sender, n)]).then_reply(|s: &Self| Ok(s.applied))
            }
            OrderedCmd::Stop => Effect::stop(Ok(self.applied)),
            OrderedCmd::Panic => panic!("a bug in user code"),
            OrderedCmd::Get => Effect::reply(Ok(self.applied)),
        }
    }

    fn apply(&mut self, (sender, n): &(u32, u64)) {
        self.last.insert(*sender, *n);
        self.applied += 1;
    }

    /// Snapshots (and retention) every 3 events: hibernation is often refused while one is
    /// written, and passivation snapshots whatever arrived since.
    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy {
            keep: 1,
            delete_covered_events: true,
            on_stop_min_events: 1,
            ..SnapshotPolicy::every(3)
        }
    }
}

/// G6 and G4 on one shard while entities hibernate, wake, are refused hibernation (snapshot in
/// flight), are passivated by the sweep, by the LRU limit and on request, stop themselves and
/// panic: every command is answered, in per-sender order, exactly once; the counters return to
/// zero; a fresh shard recovers the same states from the journal.
#[actix_rt::test]
async fn commands_stops_panics_and_passivations_racing_hibernation_apply_exactly_once() {
    let journal = mem_journal();
    let shard: ShardRef<Ordered> = Shard::start(journal.clone(), churning()).unwrap();
    let entities = 6usize;
    let mut tasks = Vec::new();
    for sender in 0..4u32 {
        let shard = shard.clone();
        tasks.push(actix_rt::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(sender + 7);
            let mut next = vec![1u64; entities];
            let mut pending = Vec::new();
            for _ in 0..600 {
                let e = (rng(&mut seed) % entities as u64) as usize;
                let cmd = match rng(&mut seed) % 40 {
                    0 => OrderedCmd::Stop,
                    1 if sender == 0 => OrderedCmd::Panic,
                    2 => OrderedCmd::Get,
                    _ => {
                        next[e] += 1;
                        OrderedCmd::Add {
                            sender,
                            n: next[e] - 1,
                        }
                    }
                };
                let panics = matches!(cmd, OrderedCmd::Panic);
                pending.push((shard.enqueue(&format!("o{e}"), cmd).unwrap(), panics));
                match rng(&mut seed) % 8 {
                    0 => {
                        for (rx, panics) in pending.drain(..) {
                            let r = reply(rx, "command").await;
                            // A panicking command's reply channel closes; nothing else may fail.
                            assert!(panics || matches!(r, Some(Ok(Ok(_)))), "{r:?}");
                        }
                        let idle = Duration::from_micros(rng(&mut seed) % 6000);
                        actix_rt::time::sleep(idle).await;
                    }
                    1 => shard.passivate(&format!("o{}", rng(&mut seed) % entities as u64)),
                    _ => {}
                }
            }
            for (rx, panics) in pending {
                let r = reply(rx, "command").await;
                assert!(panics || matches!(r, Some(Ok(Ok(_)))), "{r:?}");
            }
            next.iter().map(|n| n - 1).sum::<u64>()
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let mut applied = 0;
    for e in 0..entities {
        applied += shard
            .send(&format!("o{e}"), OrderedCmd::Get)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(applied, sent, "every command exactly once");
    let stats = shard.stats().await.unwrap();
    assert!(stats.hibernations > 0, "never hibernated: {stats:?}");
    eventually("every entity passivated, nothing queued", async || {
        let s = shard.stats().await.unwrap();
        (s.live_entities, s.hibernated_entities, s.queued_commands) == (0, 0, 0)
    })
    .await;
    tokio::time::timeout(Duration::from_secs(10), shard.stop())
        .await
        .unwrap();
    let fresh: ShardRef<Ordered> = Shard::start(journal, ShardConfig::default()).unwrap();
    let mut recovered = 0;
    for e in 0..entities {
        recovered += fresh
            .send(&format!("o{e}"), OrderedCmd::Get)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(recovered, sent, "recovered states equal the live ones");
    fresh.stop().await;
}

/// A stop that reaches the shard while entities hibernate (or are hibernated) passivates every
/// one of them and completes.
#[actix_rt::test]
async fn stop_racing_hibernation_passivates_every_entity_and_completes() {
    let mut seed = 0x51ed_270b_a3c4_9f17u64;
    for _ in 0..60 {
        let shard: ShardRef<Account> = Shard::start(mem_journal(), hibernating()).unwrap();
        let sender = shard.clone();
        let idle = Duration::from_micros(rng(&mut seed) % 4000);
        actix_rt::spawn(async move {
            let mut pending = Vec::new();
            for id in ["a", "b", "c"] {
                for _ in 0..5 {
                    let cmd = AccountCommand::Deposit { amount: 1 };
                    pending.push(sender.enqueue(id, cmd).unwrap());
                }
            }
            for rx in pending {
                reply(rx, "deposit").await.unwrap().unwrap().unwrap();
            }
            actix_rt::time::sleep(idle).await;
            tokio::time::timeout(Duration::from_secs(10), sender.stop())
                .await
                .expect("stop completes");
        })
        .await
        .unwrap();
        let stats = shard.stats().await.unwrap();
        assert_eq!(
            (stats.live_entities, stats.passivations),
            (0, 3),
            "{stats:?}"
        );
    }
}

/// G5 and G6 across rescales while entities hibernate, wake and are mid-hibernation when their
/// key groups move: every command applies exactly once and in per-sender order, and afterwards
/// every entity is live on one shard only (a hibernated state left behind on an old owner would
/// count twice, and fail its next append with a seq conflict if its key groups came back).
#[actix_rt::test]
async fn rescales_racing_hibernation_lose_nothing() {
    let region = ShardRegion::<Account>::start(
        mem_journal(),
        RegionConfig {
            shards: 2,
            handoff_wave_key_groups: 64,
            shard: hibernating(),
            ..RegionConfig::default()
        },
    )
    .unwrap();
    let entities = 200u64;
    let mut tasks = Vec::new();
    for sender in 0..4u32 {
        let region = region.clone();
        tasks.push(actix_rt::spawn(async move {
            let mut seed = 0x1234_5678_9abc_def1 ^ u64::from(sender + 1);
            let mut next = vec![1u64; entities as usize];
            let mut sums = vec![0i64; entities as usize];
            let mut pending = Vec::new();
            for _ in 0..1000 {
                let e = (rng(&mut seed) % entities) as usize;
                let amount = (rng(&mut seed) % 10 + 1) as i64;
                let cmd = AccountCommand::Tagged {
                    sender,
                    n: next[e],
                    amount,
                };
                pending.push(region.enqueue(&format!("e{e}"), cmd).unwrap());
                next[e] += 1;
                sums[e] += amount;
                if rng(&mut seed).is_multiple_of(8) {
                    for rx in pending.drain(..) {
                        let r = reply(rx, "tagged deposit").await;
                        assert!(matches!(r, Some(Ok(Ok(_)))), "{r:?}");
                    }
                    let idle = Duration::from_micros(rng(&mut seed) % 4000);
                    actix_rt::time::sleep(idle).await;
                }
            }
            for rx in pending {
                let r = reply(rx, "tagged deposit").await;
                assert!(matches!(r, Some(Ok(Ok(_)))), "{r:?}");
            }
            sums
        }));
    }
    let rescaler = {
        let region = region.clone();
        actix_rt::spawn(async move {
            for n in [3usize, 1, 4, 2, 3, 1, 4, 2, 1, 3, 2, 4] {
                region.rescale(n).await.unwrap();
                actix_rt::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut totals = vec![0i64; entities as usize];
    for t in tasks {
        for (total, sum) in totals.iter_mut().zip(t.await.unwrap()) {
            *total += sum;
        }
    }
    rescaler.await.unwrap();
    for (e, want) in totals.iter().enumerate() {
        let balance = region
            .send(&format!("e{e}"), AccountCommand::Balance)
            .await
            .unwrap();
        assert_eq!(balance, Ok(*want), "e{e}");
    }
    // Nothing is passivated for idleness here: every entity is live exactly once, on its owner.
    let stats = region.stats().await.unwrap();
    let live: usize = stats.shards.iter().map(|s| s.stats.live_entities).sum();
    assert_eq!(live, entities as usize, "{:?}", stats.shards);
    tokio::time::timeout(Duration::from_secs(10), region.stop())
        .await
        .unwrap();
}
