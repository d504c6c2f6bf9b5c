//! Overload (G6 backpressure): with the journal's disk stalled, commands back up to the shards'
//! configured bounds and every further one is refused at once with the command handed back;
//! the queued amount stays bounded; once the disk answers again, every accepted command is
//! applied exactly once.

mod support;

use std::time::{Duration, Instant};

use stateline_actors::{CommandError, RegionConfig, ShardConfig, ShardRegion};
use stateline_journal::{FaultyStorage, Journal};
use support::*;

#[actix_rt::test]
async fn a_stalled_journal_fills_the_bounds_then_refuses_then_recovers_exactly_once() {
    let storage = FaultyStorage::new();
    let journal = Journal::builder()
        .open_with_backend(storage.clone(), "stalled")
        .unwrap();
    let bound = 100;
    let region = ShardRegion::<Account>::start(
        journal,
        RegionConfig {
            shards: 2,
            shard: ShardConfig {
                max_queued_commands: bound,
                ..ShardConfig::default()
            },
            ..RegionConfig::default()
        },
    )
    .unwrap();
    for i in 0..50 {
        region
            .send(&format!("a{i}"), AccountCommand::Deposit { amount: 1 })
            .await
            .unwrap()
            .unwrap();
    }
    storage.stall(true);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for n in 0..5_000 {
        match region.enqueue(
            &format!("a{}", n % 50),
            AccountCommand::Deposit { amount: 1 },
        ) {
            Ok(rx) => accepted.push(rx),
            Err(CommandError::Overloaded { command, .. }) => {
                assert_eq!(command, AccountCommand::Deposit { amount: 1 });
                refused += 1;
            }
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }
    // Bounded: at most `bound` per shard were taken, everything else came back.
    assert!(accepted.len() <= 2 * bound, "{} accepted", accepted.len());
    assert_eq!(accepted.len() + refused, 5_000);
    let stats = region.stats().await.unwrap();
    let queued: usize = stats.shards.iter().map(|s| s.stats.queued_commands).sum();
    assert!(queued <= 2 * bound, "{queued} queued");
    // Nothing completes while the disk is stalled.
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    let balance = tokio::time::timeout(
        Duration::from_millis(50),
        region.send("a0", AccountCommand::Balance),
    )
    .await;
    assert!(balance.is_err() || matches!(balance, Ok(Err(CommandError::Overloaded { .. }))));

    storage.stall(false);
    let n_accepted = accepted.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    for rx in accepted {
        let left = deadline.saturating_duration_since(Instant::now());
        let reply = tokio::time::timeout(left, rx)
            .await
            .expect("applied after the stall");
        assert!(matches!(reply, Ok(Ok(Ok(_)))), "{reply:?}");
    }
    let mut total = 0;
    for i in 0..50 {
        total += region
            .send(&format!("a{i}"), AccountCommand::Balance)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(
        total,
        50 + n_accepted,
        "every accepted command applied exactly once"
    );
    region.stop().await;
}
