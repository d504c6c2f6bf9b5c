//! Review of the bound on running actors (`ShardConfig::max_running_entities`, commits a6c4611
//! and 6fc0de3). Each test pins down one finding and fails until it is fixed:
//!
//! - a command lost (reply channel dropped, not handed back: G6) and its entity wedged when
//!   the bound hibernates an entity that the LRU eviction (or the sweep) then also passivates;
//! - work quadratic in the number of entities where the bound's bookkeeping meets many stops
//!   or many busy actors: a shard stop (and a handoff drain, and a passivation sweep) over
//!   many hibernated entities, a burst of new entities while more than the bound are busy, and
//!   a sweep that hibernates many actors at once (with the default bound).
//!
//! The timing tests compare against the same workload with the bound off, measured in the same
//! run, with a wide margin: the defects cost seconds where the baseline costs milliseconds.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stateline_actors::{Effect, EventSourced, Shard, ShardConfig, ShardRef, SnapshotPolicy};
use stateline_journal::{FaultyStorage, Journal};
use support::*;

/// Entities per timing test: enough that quadratic work costs seconds in a debug build.
const MANY: usize = 4_000;

/// A fixed budget plus a multiple of the unbounded baseline: linear work fits easily.
fn linear_budget(baseline: Duration) -> Duration {
    Duration::from_secs(1) + baseline * 10
}

/// An entity whose one write command stalls the storage once its event is durable, so the
/// periodic snapshot that event triggers (every event) stays in flight: the entity refuses
/// to hibernate until the storage answers again.
#[derive(Default, Serialize, Deserialize)]
struct Stalling {
    events: u64,
}

#[derive(Debug)]
enum StallCmd {
    Get,
    AddThenStall(FaultyStorage),
}

impl EventSourced for Stalling {
    const TYPE_NAME: &'static str = "stalling";
    type Command = StallCmd;
    type Event = ();
    type Reply = u64;

    fn handle(&self, command: StallCmd) -> Effect<Self> {
        match command {
            StallCmd::Get => Effect::reply(self.events),
            // Side effects run after the append is durable and before the snapshot is asked.
            StallCmd::AddThenStall(storage) => Effect::persist(vec![()])
                .then_reply(|s: &Self| s.events)
                .and_then(move |_| storage.stall(true)),
        }
    }

    fn apply(&mut self, (): &()) {
        self.events += 1;
    }

    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::every(1)
    }
}

/// G6. `v1` (oldest) is hibernated by the bound, `v2` (second oldest) runs idle because its
/// hibernation is refused (snapshot in flight), 198 more are hibernated: the shard is at
/// `max_active_entities` (200, so the LRU evicts 2 at once). A command for a new entity `x`
/// evicts `[v1, v2]`: passivating `v1` wakes it, and waking makes running room by asking `v2`
/// to hibernate; then `v2` is passivated too, with its hibernation in flight (`begin_stop`
/// does not look at `passivating`). A command for `v2` queues. `v2` refuses the hibernation
/// and passivates; the refusal clears `passivating`, so the queued command is sent to the
/// actor that has just stopped: it is dropped (the caller sees the reply channel close, the
/// command is not handed back), and `busy` stays set, so every later command hangs.
#[actix_rt::test]
async fn a_command_for_an_entity_evicted_while_the_bound_hibernates_it_is_answered() {
    let storage = FaultyStorage::new();
    let journal = Journal::builder()
        .open_with_backend(storage.clone(), "stall")
        .unwrap();
    let shard: ShardRef<Stalling> = Shard::start(
        journal,
        ShardConfig {
            max_running_entities: 1,
            max_active_entities: 200,
            hibernate_after: Duration::MAX,
            ..ShardConfig::default()
        },
    )
    .unwrap();
    assert_eq!(shard.send("v1", StallCmd::Get).await.unwrap(), 0);
    let stall = StallCmd::AddThenStall(storage.clone());
    assert_eq!(shard.send("v2", stall).await.unwrap(), 1);
    for i in 3..=200 {
        assert_eq!(
            shard.send(&format!("e{i}"), StallCmd::Get).await.unwrap(),
            0
        );
    }
    let stats = shard.stats().await.unwrap();
    assert_eq!(
        (stats.live_entities, stats.hibernated_entities),
        (200, 198),
        "setup: {stats:?}"
    );
    let x = shard.enqueue("x", StallCmd::Get).unwrap();
    let v2 = shard.enqueue("v2", StallCmd::Get).unwrap();
    let v2 = tokio::time::timeout(Duration::from_secs(5), v2).await;
    let x = tokio::time::timeout(Duration::from_secs(5), x).await;
    let again = tokio::time::timeout(Duration::from_secs(5), shard.send("v2", StallCmd::Get)).await;
    let stats = shard.stats().await.unwrap();
    storage.stall(false);
    assert!(matches!(x, Ok(Ok(Ok(0)))), "x: {x:?}");
    assert!(
        matches!(v2, Ok(Ok(Ok(1)))),
        "the command queued for v2 was lost: {v2:?}"
    );
    assert!(matches!(again, Ok(Ok(1))), "v2 wedged: {again:?} {stats:?}");
    tokio::time::timeout(Duration::from_secs(10), shard.stop())
        .await
        .unwrap();
}

fn no_idle_hibernation(max_running: usize) -> ShardConfig {
    ShardConfig {
        max_running_entities: max_running,
        hibernate_after: Duration::from_secs(60),
        ..ShardConfig::default()
    }
}

/// `MANY` entities touched one after another, then the shard stopped: how long the stop took.
async fn stop_after_touching_many(max_running: usize) -> Duration {
    let shard: ShardRef<Account> =
        Shard::start(mem_journal(), no_idle_hibernation(max_running)).unwrap();
    for i in 0..MANY {
        let reply = shard.send(&format!("a{i}"), AccountCommand::Balance).await;
        assert_eq!(reply.unwrap(), Ok(0));
    }
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), shard.stop())
        .await
        .unwrap();
    let stats = shard.stats().await.unwrap();
    assert_eq!(stats.live_entities, 0, "{stats:?}");
    t.elapsed()
}

/// A stop drains every slot: each hibernated entity is woken to be passivated, and each wake
/// calls `make_running_room`. The woken ones are passivating but still count as running, so
/// `running() >= max_running_entities` stays true, nothing is idle, and every call walks the
/// whole `running_order` twice (which holds every woken, still-passivating actor): O(N²) in
/// one handler for N hibernated entities. A handoff drain (`release`) and a sweep that
/// passivates many hibernated entities take the same path.
#[actix_rt::test]
async fn stopping_a_shard_with_many_hibernated_entities_takes_linear_time() {
    let baseline = stop_after_touching_many(usize::MAX).await;
    let bounded = stop_after_touching_many(1).await;
    assert!(
        bounded <= linear_budget(baseline),
        "stop over {MANY} hibernated entities took {bounded:?} (all running: {baseline:?})"
    );
}

/// With the storage stalled, `MANY` commands to `MANY` new entities: how long until the shard
/// has taken them all (every entity stays busy). Then every one is applied exactly once.
async fn burst_while_busy(max_running: usize) -> Duration {
    let storage = FaultyStorage::new();
    let journal = Journal::builder()
        .open_with_backend(storage.clone(), "stalled")
        .unwrap();
    let shard: ShardRef<Account> = Shard::start(journal, no_idle_hibernation(max_running)).unwrap();
    assert_eq!(
        shard.send("first", AccountCommand::Balance).await.unwrap(),
        Ok(0)
    );
    storage.stall(true);
    let t = Instant::now();
    let mut pending = Vec::new();
    for i in 0..MANY {
        let cmd = AccountCommand::Deposit { amount: 1 };
        pending.push(shard.enqueue(&format!("b{i}"), cmd).unwrap());
    }
    let stats = tokio::time::timeout(Duration::from_secs(60), shard.stats())
        .await
        .unwrap()
        .unwrap();
    let took = t.elapsed();
    assert_eq!(stats.queued_commands, MANY, "{stats:?}");
    storage.stall(false);
    for rx in pending {
        let reply = tokio::time::timeout(Duration::from_secs(30), rx).await;
        assert!(matches!(reply, Ok(Ok(Ok(Ok(1))))), "{reply:?}");
    }
    shard.stop().await;
    took
}

/// Busy actors are never hibernated, so while more than the bound are busy (a burst over many
/// entities faster than the journal commits) every start runs `make_running_room` through its
/// whole budget, twice the length of `running_order`, finding nothing to hibernate: O(N²) for
/// N busy entities, on the shard's thread.
#[actix_rt::test]
async fn starting_entities_while_more_than_the_bound_are_busy_takes_linear_time() {
    let baseline = burst_while_busy(usize::MAX).await;
    let bounded = burst_while_busy(1).await;
    assert!(
        bounded <= linear_budget(baseline),
        "taking {MANY} commands for new entities with all busy took {bounded:?} \
         (no bound: {baseline:?})"
    );
}

/// Entities hibernated by one sweep.
const SWEPT: usize = 6_000;

/// `SWEPT` entities touched in one burst, then hibernated together by one idle sweep: the
/// longest the shard kept a stats request waiting meanwhile (how long its thread stalled).
async fn sweep_hibernating_many(max_running: usize) -> Duration {
    let shard: ShardRef<Account> = Shard::start(
        mem_journal(),
        ShardConfig {
            max_running_entities: max_running,
            hibernate_after: Duration::from_millis(1),
            sweep_interval: Duration::from_millis(250),
            ..ShardConfig::default()
        },
    )
    .unwrap();
    let pending: Vec<_> = (0..SWEPT)
        .map(|i| {
            shard
                .enqueue(&format!("h{i}"), AccountCommand::Balance)
                .unwrap()
        })
        .collect();
    for rx in pending {
        assert_eq!(rx.await.unwrap().unwrap(), Ok(0));
    }
    let mut stall = Duration::ZERO;
    eventually("every entity hibernated", async || {
        let t = Instant::now();
        let hibernated = shard.stats().await.unwrap().hibernated_entities;
        stall = stall.max(t.elapsed());
        hibernated == SWEPT
    })
    .await;
    shard.stop().await;
    stall
}

/// With the default bound (10,000, not reached here) `running_order` tracks every actor. A
/// sweep hibernating them all puts them in `hibernating`, so `running()` drops to 0 while
/// their entries stay (their actors still run); each `Hibernated` answer then runs
/// `compact_running_order`, whose threshold (`2 * running() + 64`) is exceeded, and `retain`
/// walks the whole order to drop one entry: O(N²) for N hibernations in one sweep.
#[actix_rt::test]
async fn a_sweep_hibernating_many_actors_at_once_takes_linear_time() {
    let baseline = sweep_hibernating_many(usize::MAX).await;
    let bounded = sweep_hibernating_many(ShardConfig::default().max_running_entities).await;
    assert!(
        bounded <= linear_budget(baseline),
        "hibernating {SWEPT} actors in one sweep stalled the shard for {bounded:?} \
         (no bound: {baseline:?})"
    );
}
