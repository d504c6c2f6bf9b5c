//! Review findings in the actor runtime (shard, entity actor, region): each test pins down a
//! bug an adversarial review of G5/G6 found (each failed before its fix; the comments say what
//! was wrong), so that it stays fixed.
#![allow(clippy::unwrap_used)]

mod support;

use std::ops::Range;
use std::time::{Duration, Instant};

use redb::backends::InMemoryBackend;
use serde::{Deserialize, Serialize};
use stateline_actors::{
    layout, CommandError, Effect, EventSourced, RegionConfig, RegionError, Shard, ShardConfig,
    ShardRegion,
};
use stateline_journal::{
    EntityId, EntityType, Journal, KeyGroup, Manifest, NewEvent, PersistenceId, Seq,
};
use support::*;

fn journal() -> Journal {
    Journal::builder()
        .open_with_backend(InMemoryBackend::new(), "mem")
        .unwrap()
}

/// Waits for `rx` with a deadline; `None` if no reply came in time.
async fn reply_within<T>(rx: tokio::sync::oneshot::Receiver<T>, within: Duration) -> Option<T> {
    tokio::time::timeout(within, rx)
        .await
        .ok()
        .and_then(Result::ok)
}

/// An entity type recovered eagerly on the shard that receives its key groups.
#[derive(Default, Serialize, Deserialize)]
struct Eager {
    n: u64,
}

impl EventSourced for Eager {
    const TYPE_NAME: &'static str = "eager";
    const RECOVER_EAGERLY: bool = true;
    type Command = ();
    type Event = ();
    type Reply = u64;

    fn handle(&self, _: ()) -> Effect<Self> {
        Effect::reply(self.n)
    }

    fn apply(&mut self, _: &()) {
        self.n += 1;
    }
}

/// An entity type whose commands take a while, or panic.
#[derive(Default, Serialize, Deserialize)]
struct Worker {
    done: u64,
}

#[derive(Debug)]
enum WorkerCommand {
    /// Simulated slow work: holds the entity for about a millisecond.
    Work,
    /// A bug in user code.
    Panic,
    Ping,
}

impl EventSourced for Worker {
    const TYPE_NAME: &'static str = "worker";
    type Command = WorkerCommand;
    type Event = ();
    type Reply = u64;

    fn handle(&self, command: WorkerCommand) -> Effect<Self> {
        match command {
            WorkerCommand::Work => {
                std::thread::sleep(Duration::from_millis(1));
                Effect::reply(self.done)
            }
            WorkerCommand::Panic => panic!("user code panicked"),
            WorkerCommand::Ping => Effect::reply(self.done),
        }
    }

    fn apply(&mut self, _: &()) {
        self.done += 1;
    }
}

/// An id of `type_name` whose key group (of 1,024) lies in `range`.
fn id_in(type_name: &str, range: Range<u32>) -> String {
    (0..100_000)
        .map(|i| format!("x{i}"))
        .find(|id| range.contains(&KeyGroup::of(type_name, id, 1024).0))
        .unwrap()
}

/// G5: a shard that was given key groups queues their stored entities for eager recovery (a
/// few per mailbox turn). If a later rescale releases some of those key groups before the
/// queue is worked off, the release used to drain only the entities live at that moment, and
/// `WarmStep` then started the rest on the old owner although the key groups belonged to
/// another shard, which recovered them too: one entity live on two shards at once. A release
/// now drops queued recoveries of its key groups.
#[actix_rt::test]
async fn release_cancels_pending_eager_recoveries_of_its_key_groups() {
    let journal = journal();
    let entity_type = EntityType::new("eager").unwrap();
    let event = NewEvent::encode(Manifest::new("eager", 1), &()).unwrap();
    let mut appends = Vec::new();
    for i in 0..6000 {
        let journal = journal.clone();
        let pid = PersistenceId::new(entity_type.clone(), EntityId::new(format!("e{i}")).unwrap());
        let event = event.clone();
        appends.push(actix_rt::spawn(async move {
            journal.append(&pid, Seq(1), vec![event]).await.unwrap();
        }));
    }
    for a in appends {
        a.await.unwrap();
    }
    let region = ShardRegion::<Eager>::start(
        journal.clone(),
        RegionConfig {
            shards: 1,
            ..RegionConfig::default()
        },
    )
    .unwrap();
    // The new shard recovers ~3,000 entities in the background...
    region.rescale(2).await.unwrap();
    // ...while a third of its key groups move on to a third shard.
    region.rescale(3).await.unwrap();
    let stored = |range: Range<u32>| journal.entities(Some(range)).unwrap().len();
    // Eager recovery applies to handed-off key groups only, so shards do not end with every
    // stored entity live; what must hold at every moment is that no shard hosts entities of key
    // groups it does not own. Watch until the live counts stop changing.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = usize::MAX;
    let mut stable = 0;
    while stable < 20 {
        let stats = region.stats().await.unwrap();
        let mut total = 0;
        for s in &stats.shards {
            let own = stored(s.key_groups.clone());
            assert!(
                s.stats.live_entities <= own,
                "shard owning {:?} hosts {} live entities but only {own} are stored in its key \
                 groups: entities of key groups it released are live there too",
                s.key_groups,
                s.stats.live_entities
            );
            total += s.stats.live_entities;
        }
        stable = if total == last { stable + 1 } else { 0 };
        last = total;
        assert!(Instant::now() < deadline, "live entities never settled");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
    region.stop().await;
}

/// G6: a rescale whose caller stops waiting (a `timeout` or `select!` dropping its future)
/// must not strand commands: before the fix, the wave's key groups stayed in `moving` forever
/// and commands for them were accepted, buffered and never answered. `rescale` now runs to
/// completion in a task of its own.
#[actix_rt::test]
async fn cancelled_rescale_does_not_strand_commands() {
    let region = ShardRegion::<Account>::start(
        journal(),
        RegionConfig {
            shards: 1,
            ..RegionConfig::default()
        },
    )
    .unwrap();
    // Cancelled at its first await that is not ready (the caller stops waiting). Whether
    // the rescale had got far by then depends on scheduling; either way nothing may strand.
    let _cancelled = tokio::time::timeout(Duration::ZERO, region.rescale(2)).await;
    let mut pending = Vec::new();
    for i in 0..2000 {
        pending.push(
            region
                .enqueue(&format!("a{i}"), AccountCommand::Deposit { amount: 1 })
                .unwrap(),
        );
    }
    // What is checked is that nothing strands, not speed: generous for a loaded machine, and
    // below the 30 s handoff timeout, whose flush would hide a hung drain.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut unanswered = 0;
    for rx in pending {
        if tokio::time::timeout_at(deadline, rx).await.is_err() {
            unanswered += 1;
        }
    }
    let buffered = region.stats().await.unwrap().buffered_commands;
    assert_eq!(
        (unanswered, buffered),
        (0, 0),
        "accepted commands never answered / left in the handoff buffer after a cancelled \
         rescale (shards now: {})",
        region.shard_count()
    );
    region.stop().await;
}

/// `RegionConfig::handoff_timeout` promises "calling `rescale` again continues" after a timed-out
/// rescale. When every fresh shard had already received key groups before the timeout, the
/// shard count equalled the target and the retry was a no-op (`from == shards`), leaving the
/// layout half moved for good. The no-op test now compares ownership.
#[actix_rt::test]
async fn rescale_after_a_handoff_timeout_completes_the_layout() {
    let region = ShardRegion::<Worker>::start(
        journal(),
        RegionConfig {
            shards: 2,
            handoff_timeout: Duration::from_millis(300),
            ..RegionConfig::default()
        },
    )
    .unwrap();
    // 2 → 4 moves 256..512 (shard 0 → a fresh shard) and 768..1024 (shard 1 → another fresh
    // one), 16 key groups per wave taken alternately: the first wave is 256..264 + 768..776.
    // An entity busy for about a second in a key group of a later wave times that wave out.
    let busy = id_in("worker", 300..500);
    let mut work = Vec::new();
    for _ in 0..1000 {
        work.push(region.enqueue(&busy, WorkerCommand::Work).unwrap());
    }
    let err = region.rescale(4).await.unwrap_err();
    assert!(matches!(err, RegionError::HandoffTimeout { .. }), "{err}");
    for rx in work {
        assert!(reply_within(rx, Duration::from_secs(20)).await.is_some());
    }
    region.rescale(4).await.unwrap();
    let mut ranges: Vec<Range<u32>> = region
        .stats()
        .await
        .unwrap()
        .shards
        .into_iter()
        .map(|s| s.key_groups)
        .collect();
    ranges.sort_by_key(|r| r.start);
    assert_eq!(
        ranges,
        layout(1024, 4),
        "the retried rescale did not continue"
    );
    region.stop().await;
}

/// G6 / stop: a panic in user code (`handle` here; `apply` after a durable persist is worse)
/// kills the entity actor's task without a `Processed` report. Its slot used to stay busy
/// forever: every later command for that entity was accepted and never answered, and `stop()`
/// never completed. The actor's drop now reports `Gone` and the shard frees the slot.
#[actix_rt::test]
async fn a_panicking_handler_does_not_wedge_its_entity_or_the_shard() {
    let shard = Shard::<Worker>::start(journal(), ShardConfig::default()).unwrap();
    let rx = shard.enqueue("p", WorkerCommand::Panic).unwrap();
    let first = reply_within(rx, Duration::from_secs(5)).await;
    assert!(first.is_none(), "the panicking command has no reply");
    let rx = shard.enqueue("p", WorkerCommand::Ping).unwrap();
    let next = reply_within(rx, Duration::from_secs(5)).await;
    assert!(
        next.is_some(),
        "a command after the panic is accepted but never answered"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(5), shard.stop()).await;
    assert!(stopped.is_ok(), "shard stop hangs after an entity panicked");
}

/// G6: a command accepted by a shard whose `Shutdown` is ahead of it in the mailbox used to be
/// dropped with the shard's mailbox: the caller got `EntityStopped` ("may have been applied")
/// instead of `ShardStopped` with the command handed back. A stopped shard now stays to answer
/// later commands until its last handle is gone.
#[actix_rt::test]
async fn a_command_racing_shard_stop_is_handed_back() {
    let shard = Shard::<Account>::start(journal(), ShardConfig::default()).unwrap();
    shard.stats().await.unwrap();
    let send = async {
        // Polled after `stop` has queued its `Shutdown`.
        shard.send("a", AccountCommand::Deposit { amount: 1 }).await
    };
    let ((), result) = tokio::join!(shard.stop(), send);
    match result {
        Err(CommandError::ShardStopped { .. }) | Ok(_) => {}
        Err(e) => panic!("expected the command back or applied, got: {e}"),
    }
}
