//! Extreme configuration values of the region and its entities, from an adversarial review:
//! each works as documented (a clamp) instead of panicking inside the region or an entity.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stateline_actors::{
    Effect, EventSourced, RegionConfig, ShardConfig, ShardRegion, SnapshotPolicy,
};
use stateline_journal::{Journal, PersistenceId, Seq, MAX_KEY_GROUPS};
use support::*;

fn journal(key_groups: u32) -> Journal {
    Journal::builder()
        .key_groups(key_groups)
        .open_with_backend(redb::backends::InMemoryBackend::new(), "mem")
        .unwrap()
}

fn stored(j: &Journal, ty: &str, id: &str) -> usize {
    let pid = PersistenceId::parse(ty, id).unwrap();
    j.reader()
        .events(&pid, Seq(1), Seq(u64::MAX), u64::MAX)
        .unwrap()
        .count()
}

/// `handoff_timeout: Duration::MAX` ("wait as long as it takes") once overflowed the deadline
/// in the middle of a rescale, after the moving key groups had been taken from their owner:
/// the rescale failed as `Stopped` and commands for those key groups stayed buffered forever.
#[actix_rt::test]
async fn a_handoff_timeout_of_duration_max_waits_instead_of_failing() {
    let j = journal(16);
    let config = RegionConfig {
        shards: 1,
        handoff_timeout: Duration::MAX,
        ..RegionConfig::default()
    };
    let region = ShardRegion::<Account>::start(j.clone(), config).unwrap();
    let deposit = AccountCommand::Deposit { amount: 1 };
    region.send("a", deposit.clone()).await.unwrap().unwrap();
    let report = tokio::time::timeout(Duration::from_secs(30), region.rescale(2))
        .await
        .expect("the rescale finishes")
        .unwrap();
    assert_eq!((report.from, report.to), (1, 2));
    for e in 0..32 {
        let id = format!("k{e}");
        let sent = region.send(&id, deposit.clone());
        tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .unwrap_or_else(|_| panic!("{id}: no reply"))
            .unwrap()
            .unwrap();
        assert_eq!(stored(&j, "account", &id), 1, "{id}");
    }
    assert_eq!(region.stats().await.unwrap().buffered_commands, 0);
}

#[derive(Default, Serialize, Deserialize)]
struct Rare {
    n: u64,
}

impl EventSourced for Rare {
    const TYPE_NAME: &'static str = "rare";
    type Command = ();
    type Event = ();
    type Reply = u64;

    fn handle(&self, _: ()) -> Effect<Self> {
        Effect::persist(vec![()]).then_reply(|s: &Self| s.n)
    }

    fn apply(&mut self, _: &()) {
        self.n += 1;
    }

    /// Periodic snapshots "never" (every u64::MAX events), one when stopping.
    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy {
            every_events: Some(u64::MAX),
            on_stop_min_events: 1,
            ..SnapshotPolicy::default()
        }
    }
}

/// `every_events: Some(u64::MAX)` once overflowed `snapshot_seq + every_events` in every
/// incarnation that recovered from a snapshot: the entity actor panicked after each commit
/// (every command answered, but the actor died and recovered again for the next).
#[actix_rt::test]
async fn a_snapshot_interval_of_u64_max_after_a_stop_snapshot() {
    let j = journal(16);
    let config = RegionConfig {
        shards: 1,
        shard: ShardConfig {
            passivate_after: Duration::from_millis(30),
            sweep_interval: Duration::from_millis(10),
            ..ShardConfig::default()
        },
        ..RegionConfig::default()
    };
    let region = ShardRegion::<Rare>::start(j.clone(), config).unwrap();
    assert_eq!(region.send("a", ()).await.unwrap(), 1);
    assert_eq!(region.send("a", ()).await.unwrap(), 2);
    let pid = PersistenceId::parse("rare", "a").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while j.reader().snapshot_seqs(&pid).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no snapshot on passivation");
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
    // The next incarnation starts from the snapshot at seq 2.
    assert_eq!(region.send("a", ()).await.unwrap(), 3);
    let replies: Vec<_> = (0..50).map(|_| region.enqueue("a", ()).unwrap()).collect();
    for (i, rx) in replies.into_iter().enumerate() {
        let reply = tokio::time::timeout(Duration::from_secs(10), rx).await;
        assert_eq!(reply.unwrap().unwrap().unwrap(), 4 + i as u64);
    }
    assert_eq!(stored(&j, "rare", "a"), 53);
    // The entity did not die after its commits: the shard counted every event it persisted
    // (an actor that panicked after committing skipped its report).
    // Reports reach the shard after the replies, so wait for the last one.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = region.stats().await.unwrap();
        let persisted: u64 = stats.shards.iter().map(|s| s.stats.events_persisted).sum();
        if persisted == 53 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the shard counted {persisted} of 53 events"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Journal builder values past what the journal and a region can hold are clamped as
/// documented: a queue capacity beyond the queue's semaphore once panicked on open, and a
/// key-group count in the billions made a region allocate a table entry for each.
#[actix_rt::test]
async fn huge_builder_values_are_clamped() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::builder()
        .queue_capacity(usize::MAX)
        .key_groups(u32::MAX)
        .open(dir.path().join("j.redb"))
        .unwrap();
    assert_eq!(j.key_groups(), MAX_KEY_GROUPS);
    let config = RegionConfig {
        shards: 2,
        ..RegionConfig::default()
    };
    let region = ShardRegion::<Account>::start(j.clone(), config).unwrap();
    let deposit = AccountCommand::Deposit { amount: 5 };
    region.send("a", deposit).await.unwrap().unwrap();
    region.rescale(3).await.unwrap();
    assert_eq!(stored(&j, "account", "a"), 1);
}
