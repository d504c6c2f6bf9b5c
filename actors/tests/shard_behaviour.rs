//! The shard actor hosting real entity actors: commands reach entities exactly once and in
//! order across passivation; persist rejections leave the entity running; persist failures
//! stop it and the next command recovers a fresh incarnation (G5); idle and least-recently-used
//! entities are passivated; a full shard refuses commands and hands them back (G6).
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use stateline_actors::{CommandError, Shard, ShardConfig, ShardRef};
use stateline_journal::{
    FaultyStorage, Journal, JournalError, Manifest, NewEvent, PersistenceId, Seq,
};
use support::*;

fn journal() -> Journal {
    mem_journal()
}

#[actix_rt::test]
async fn commands_reach_their_entities() {
    let shard: ShardRef<Account> = Shard::start(journal(), ShardConfig::default()).unwrap();
    assert_eq!(
        shard
            .send("a", AccountCommand::Deposit { amount: 5 })
            .await
            .unwrap(),
        Ok(5)
    );
    assert_eq!(
        shard
            .send("b", AccountCommand::Deposit { amount: 7 })
            .await
            .unwrap(),
        Ok(7)
    );
    assert_eq!(
        shard
            .send("a", AccountCommand::Withdraw { amount: 2 })
            .await
            .unwrap(),
        Ok(3)
    );
    assert_eq!(
        shard
            .send("a", AccountCommand::Withdraw { amount: 9 })
            .await
            .unwrap(),
        Err(AccountError::InsufficientFunds {
            balance: 3,
            requested: 9
        })
    );
    let stats = shard.stats().await.unwrap();
    assert_eq!(
        (
            stats.live_entities,
            stats.messages_handled,
            stats.events_persisted
        ),
        (2, 4, 3)
    );
    assert!(stats.state_bytes > 0);
    let err = shard.send("", AccountCommand::Balance).await.unwrap_err();
    assert!(matches!(err.into_command(), Some(AccountCommand::Balance)));
}

#[actix_rt::test]
async fn a_rejected_persist_replies_with_the_error_and_the_entity_continues() {
    let j = Journal::builder()
        .max_event_bytes(100)
        .open_with_backend(redb::backends::InMemoryBackend::new(), "mem")
        .unwrap();
    let shard: ShardRef<Account> = Shard::start(j, ShardConfig::default()).unwrap();
    shard
        .send("a", AccountCommand::Deposit { amount: 5 })
        .await
        .unwrap()
        .unwrap();
    let err = shard
        .send("a", AccountCommand::Memo { size: 500 })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(JournalError::Rejected(_))),
        "{err}"
    );
    assert!(err.was_not_applied());
    // Same incarnation, same state.
    assert_eq!(
        shard
            .send("a", AccountCommand::Deposit { amount: 1 })
            .await
            .unwrap(),
        Ok(6)
    );
    assert_eq!(shard.stats().await.unwrap().live_entities, 1);
}

#[actix_rt::test]
async fn a_seq_conflict_stops_the_entity_and_the_next_incarnation_recovers() {
    let j = journal();
    let shard: ShardRef<Account> = Shard::start(j.clone(), ShardConfig::default()).unwrap();
    shard
        .send("a", AccountCommand::Deposit { amount: 5 })
        .await
        .unwrap()
        .unwrap();
    // Another writer appends behind the entity's back (a stale incarnation elsewhere).
    let pid = PersistenceId::parse("account", "a").unwrap();
    let foreign = NewEvent::encode(
        Manifest::new("account", 1),
        &AccountEvent::Deposited { amount: 100 },
    )
    .unwrap();
    j.append(&pid, Seq(2), vec![foreign]).await.unwrap();
    let err = shard
        .send("a", AccountCommand::Deposit { amount: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::PersistFailed(JournalError::Conflict { .. })
        ),
        "{err}"
    );
    // G5: nothing was overwritten; the next command recovers seq 1..=2 and continues.
    assert_eq!(
        shard
            .send("a", AccountCommand::Deposit { amount: 1 })
            .await
            .unwrap(),
        Ok(106)
    );
    let seqs: Vec<u64> = j
        .all_events(&pid)
        .unwrap()
        .iter()
        .map(|e| e.seq.0)
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[actix_rt::test]
async fn an_io_failure_fails_the_command_and_stops_the_entity() {
    let storage = FaultyStorage::new();
    let j = Journal::builder()
        .open_with_backend(storage.clone(), "faulty")
        .unwrap();
    let shard: ShardRef<Account> = Shard::start(j, ShardConfig::default()).unwrap();
    shard
        .send("a", AccountCommand::Deposit { amount: 5 })
        .await
        .unwrap()
        .unwrap();
    storage.fail_now(true);
    let err = shard
        .send("a", AccountCommand::Deposit { amount: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::PersistFailed(JournalError::Io(_))),
        "{err}"
    );
    eventually("the entity stopped", async || {
        shard.stats().await.unwrap().live_entities == 0
    })
    .await;
    // The journal stays poisoned (G8): later persists fail fast instead of hanging.
    let err = shard
        .send("a", AccountCommand::Deposit { amount: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::PersistFailed(JournalError::Poisoned)),
        "{err}"
    );
    // Queries still work on a fresh incarnation: the state is recovered, not lost.
    assert_eq!(
        shard.send("a", AccountCommand::Balance).await.unwrap(),
        Ok(5)
    );
}

#[actix_rt::test]
async fn commands_racing_passivation_are_applied_exactly_once_in_order() {
    let shard: ShardRef<Account> = Shard::start(journal(), ShardConfig::default()).unwrap();
    let mut pending = Vec::new();
    let mut expected = 0;
    for n in 1..=300u64 {
        let rx = shard
            .enqueue(
                "x",
                AccountCommand::Tagged {
                    sender: 1,
                    n,
                    amount: n as i64,
                },
            )
            .unwrap();
        expected += n as i64;
        pending.push(rx);
        if n % 7 == 0 {
            shard.passivate("x");
        }
        if n % 50 == 0 {
            // Let some passivations complete so that later commands hit new incarnations.
            for rx in pending.drain(..) {
                rx.await.unwrap().unwrap().unwrap();
            }
            shard.passivate("x");
        }
    }
    for rx in pending {
        rx.await.unwrap().unwrap().unwrap();
    }
    assert_eq!(
        shard.send("x", AccountCommand::Balance).await.unwrap(),
        Ok(expected)
    );
    let stats = shard.stats().await.unwrap();
    assert!(stats.passivations >= 6, "{stats:?}");
    assert_eq!(stats.events_persisted, 300);
}

#[actix_rt::test]
async fn idle_entities_are_passivated_and_come_back() {
    let config = ShardConfig {
        passivate_after: Duration::from_millis(50),
        sweep_interval: Duration::from_millis(10),
        ..ShardConfig::default()
    };
    let shard: ShardRef<Account> = Shard::start(journal(), config).unwrap();
    for id in ["a", "b", "c"] {
        shard
            .send(id, AccountCommand::Deposit { amount: 3 })
            .await
            .unwrap()
            .unwrap();
    }
    eventually("idle entities passivated", async || {
        shard.stats().await.unwrap().live_entities == 0
    })
    .await;
    assert_eq!(
        shard
            .send("b", AccountCommand::Deposit { amount: 1 })
            .await
            .unwrap(),
        Ok(4)
    );
}

#[actix_rt::test]
async fn the_active_entity_limit_evicts_the_least_recently_used() {
    let config = ShardConfig {
        max_active_entities: 10,
        ..ShardConfig::default()
    };
    let shard: ShardRef<Account> = Shard::start(journal(), config).unwrap();
    for round in 1..=3i64 {
        for i in 0..50 {
            let r = shard
                .send(&format!("e{i}"), AccountCommand::Deposit { amount: 1 })
                .await;
            assert_eq!(r.unwrap(), Ok(round));
        }
    }
    eventually("at most 10 live entities", async || {
        shard.stats().await.unwrap().live_entities <= 10
    })
    .await;
}

#[actix_rt::test]
async fn a_full_shard_refuses_and_hands_commands_back() {
    let config = ShardConfig {
        max_queued_commands: 8,
        ..ShardConfig::default()
    };
    let shard: ShardRef<Account> = Shard::start(journal(), config).unwrap();
    let mut accepted = Vec::new();
    let mut refused = 0;
    for n in 0..100 {
        match shard.enqueue(
            &format!("e{}", n % 3),
            AccountCommand::Deposit { amount: 1 },
        ) {
            Ok(rx) => accepted.push(rx),
            Err(CommandError::Overloaded { command, .. }) => {
                assert_eq!(command, AccountCommand::Deposit { amount: 1 });
                refused += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        refused > 0 && accepted.len() <= 8,
        "{refused} refused, {} accepted",
        accepted.len()
    );
    let n = accepted.len() as i64;
    for rx in accepted {
        rx.await.unwrap().unwrap().unwrap();
    }
    let mut total = 0;
    for i in 0..3 {
        total += shard
            .send(&format!("e{i}"), AccountCommand::Balance)
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(total, n, "every accepted command applied exactly once");
}

#[actix_rt::test]
async fn commands_arriving_during_recovery_wait_and_apply_exactly_once_in_order() {
    let j = journal();
    // A long history makes recovery take a while.
    let pid = PersistenceId::parse("account", "slow").unwrap();
    let ev = NewEvent::encode(
        Manifest::new("account", 1),
        &AccountEvent::Deposited { amount: 1 },
    )
    .unwrap();
    for s in 0..50u64 {
        let batch = vec![ev.clone(); 100];
        j.append(&pid, Seq(s * 100 + 1), batch).await.unwrap();
    }
    let shard: ShardRef<Account> = Shard::start(j, ShardConfig::default()).unwrap();
    // All sent before the entity has recovered: they wait in order.
    let pending: Vec<_> = (1..=200u64)
        .map(|n| {
            shard
                .enqueue(
                    "slow",
                    AccountCommand::Tagged {
                        sender: 9,
                        n,
                        amount: 1,
                    },
                )
                .unwrap()
        })
        .collect();
    for (i, rx) in pending.into_iter().enumerate() {
        assert_eq!(rx.await.unwrap().unwrap(), Ok(5_000 + i as i64 + 1));
    }
    assert_eq!(
        shard.send("slow", AccountCommand::Balance).await.unwrap(),
        Ok(5_200)
    );
}
