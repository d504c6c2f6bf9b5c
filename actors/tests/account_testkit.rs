//! Testkit-based tests of the account entity: deposits, rejected withdrawals, queries,
//! recovery with and without snapshots, side effects, upcasting older events, and recovery
//! that fails loudly on an event it cannot decode.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};
use stateline_actors::testkit::EventSourcedTestKit;
use stateline_actors::{Effect, EventSourced, RecoveryError, SnapshotPolicy};
use stateline_journal::{CodecError, Manifest, NewEvent, PersistenceId, Seq};
use support::*;

#[test]
fn deposit_persists_an_event_and_replies_with_the_balance() {
    let mut kit = EventSourcedTestKit::<Account>::new("alice");
    let r = kit.run(AccountCommand::Deposit { amount: 50 });
    assert_eq!(r.events, vec![AccountEvent::Deposited { amount: 50 }]);
    assert_eq!(r.reply(), Ok(50));
    assert_eq!(kit.state().balance, 50);
    assert_eq!(kit.seq(), Seq(1));
}

#[test]
fn withdrawing_more_than_the_balance_is_rejected_and_persists_nothing() {
    let mut kit = EventSourcedTestKit::<Account>::new("bob");
    kit.given(vec![AccountEvent::Deposited { amount: 30 }]);
    let r = kit.run(AccountCommand::Withdraw { amount: 31 });
    assert!(r.rejected);
    assert!(r.events.is_empty());
    assert_eq!(
        r.reply(),
        Err(AccountError::InsufficientFunds {
            balance: 30,
            requested: 31
        })
    );
    assert_eq!(kit.persisted_events().len(), 1);
    let r = kit.run(AccountCommand::Withdraw { amount: 30 });
    assert_eq!(r.reply(), Ok(0));
}

#[test]
fn balance_queries_persist_nothing() {
    let mut kit = EventSourcedTestKit::<Account>::new("carol");
    kit.given(vec![
        AccountEvent::Deposited { amount: 10 },
        AccountEvent::Withdrawn { amount: 3 },
    ]);
    let r = kit.run(AccountCommand::Balance);
    assert!(r.events.is_empty());
    assert_eq!(r.reply(), Ok(7));
    assert_eq!(kit.seq(), Seq(2));
}

#[test]
fn restart_recovers_the_same_state_with_and_without_snapshots() {
    for policy in [
        SnapshotPolicy::never(),
        SnapshotPolicy::every(1),
        SnapshotPolicy::every(7),
    ] {
        let mut kit = EventSourcedTestKit::<Account>::with_policy("dave", policy);
        for i in 1..=30 {
            kit.run(AccountCommand::Deposit { amount: i });
            if i % 4 == 0 {
                kit.run(AccountCommand::Withdraw { amount: 1 });
            }
            if i % 9 == 0 {
                kit.restart();
            }
        }
        kit.restart();
        assert_eq!(kit.state().balance, (1..=30).sum::<i64>() - 7);
    }
}

#[test]
fn snapshots_follow_the_policy_and_keep_the_newest() {
    let policy = SnapshotPolicy {
        every_events: Some(5),
        keep: 2,
        delete_covered_events: true,
        ..SnapshotPolicy::default()
    };
    let mut kit = EventSourcedTestKit::<Account>::with_policy("erin", policy);
    for _ in 0..23 {
        kit.run(AccountCommand::Deposit { amount: 1 });
    }
    let pid = PersistenceId::parse("account", "erin").unwrap();
    assert_eq!(
        kit.journal().snapshot_seqs(&pid).unwrap(),
        vec![Seq(15), Seq(20)]
    );
    // Covered events are deleted; recovery uses the snapshot plus seqs 21..=23.
    let left: Vec<u64> = kit
        .journal()
        .all_events(&pid)
        .unwrap()
        .iter()
        .map(|e| e.seq.0)
        .collect();
    assert_eq!(left, vec![21, 22, 23]);
    kit.restart();
    assert_eq!(kit.state().balance, 23);
}

#[test]
fn a_stop_effect_replies_then_restarts_from_the_journal() {
    let mut kit = EventSourcedTestKit::<Account>::new("fay");
    kit.run(AccountCommand::Deposit { amount: 5 });
    let r = kit.run(AccountCommand::Close);
    assert!(r.stopped);
    assert_eq!(r.reply(), Ok(5));
    assert_eq!(kit.state().balance, 5);
}

/// An entity whose side effects count their runs.
#[derive(Default, Debug, PartialEq, Serialize, Deserialize)]
struct Notifier {
    sent: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Notify;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Notified;

static SIDE_EFFECTS: AtomicUsize = AtomicUsize::new(0);

impl EventSourced for Notifier {
    const TYPE_NAME: &'static str = "notifier";
    type Command = Notify;
    type Event = Notified;
    type Reply = u32;

    fn handle(&self, _: Notify) -> Effect<Self> {
        Effect::persist(vec![Notified])
            .then_reply(|s: &Self| s.sent)
            .and_then(|_| {
                SIDE_EFFECTS.fetch_add(1, Ordering::SeqCst);
            })
    }

    fn apply(&mut self, _: &Notified) {
        self.sent += 1;
    }
}

#[test]
fn side_effects_run_once_after_persisting_and_never_during_replay() {
    let mut kit = EventSourcedTestKit::<Notifier>::new("n");
    let before = SIDE_EFFECTS.load(Ordering::SeqCst);
    for _ in 0..3 {
        kit.run(Notify);
    }
    assert_eq!(SIDE_EFFECTS.load(Ordering::SeqCst) - before, 3);
    kit.restart();
    kit.restart();
    assert_eq!(SIDE_EFFECTS.load(Ordering::SeqCst) - before, 3);
    assert_eq!(kit.state().sent, 3);
}

/// Version 2 of an event type, with an upcaster from version 1 (which had no currency).
#[derive(Default, Debug, PartialEq, Serialize, Deserialize)]
struct Wallet {
    cents: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Add(i64);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct AddedV2 {
    cents: i64,
    currency: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedV1 {
    units: i64,
}

impl EventSourced for Wallet {
    const TYPE_NAME: &'static str = "wallet";
    const EVENT_VERSION: u32 = 2;
    type Command = Add;
    type Event = AddedV2;
    type Reply = i64;

    fn handle(&self, Add(c): Add) -> Effect<Self> {
        Effect::persist(vec![AddedV2 {
            cents: c,
            currency: "EUR".into(),
        }])
        .then_reply(|s: &Self| s.cents)
    }

    fn apply(&mut self, e: &AddedV2) {
        self.cents += e.cents;
    }

    fn upcast(manifest: &Manifest, payload: &[u8]) -> Result<AddedV2, CodecError> {
        match manifest.version {
            1 => {
                let old: AddedV1 = rmp_serde::from_slice(payload)
                    .map_err(|e| CodecError::Decode(e.to_string()))?;
                Ok(AddedV2 {
                    cents: old.units * 100,
                    currency: "EUR".into(),
                })
            }
            2 => rmp_serde::from_slice(payload).map_err(|e| CodecError::Decode(e.to_string())),
            v => Err(CodecError::Invalid(format!("unknown version {v}"))),
        }
    }
}

#[test]
fn older_event_versions_are_upcast_during_recovery() {
    let mut kit = EventSourcedTestKit::<Wallet>::new("w");
    let pid = PersistenceId::parse("wallet", "w").unwrap();
    let old = NewEvent::encode(Manifest::new("wallet", 1), &AddedV1 { units: 3 }).unwrap();
    kit.journal()
        .append_blocking(&pid, Seq(1), vec![old])
        .unwrap();
    kit.try_restart().unwrap();
    assert_eq!(kit.state().cents, 300);
    assert_eq!(kit.run(Add(5)).reply(), 305);
    kit.restart();
}

#[test]
fn an_undecodable_event_fails_recovery_naming_the_pid_and_seq() {
    let mut kit = EventSourcedTestKit::<Account>::with_policy("gil", SnapshotPolicy::never());
    kit.run(AccountCommand::Deposit { amount: 1 });
    let pid = PersistenceId::parse("account", "gil").unwrap();
    let garbage = NewEvent::new(Manifest::new("account", 1), vec![0xc1, 0xff, 0x00]);
    kit.journal()
        .append_blocking(&pid, Seq(2), vec![garbage])
        .unwrap();
    let err = kit.try_restart().err().unwrap();
    match &err {
        RecoveryError::Decode { pid: p, seq, .. } => {
            assert_eq!((p, *seq), (&pid, Seq(2)));
        }
        other => panic!("expected a decode error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("account|gil") && msg.contains("seq 2"),
        "{msg}"
    );
}

#[test]
fn an_undecodable_snapshot_falls_back_to_an_older_one_or_full_replay() {
    let mut kit = EventSourcedTestKit::<Account>::with_policy("hal", SnapshotPolicy::never());
    for _ in 0..6 {
        kit.run(AccountCommand::Deposit { amount: 2 });
    }
    let pid = PersistenceId::parse("account", "hal").unwrap();
    let j = kit.journal().clone();
    let good = rmp_serde::to_vec_named(&Account {
        balance: 4,
        operations: 2,
        ..Account::default()
    })
    .unwrap();
    j.save_snapshot_blocking(&pid, Seq(2), Manifest::new("account", 1), good)
        .unwrap();
    j.save_snapshot_blocking(&pid, Seq(5), Manifest::new("account", 1), vec![0xc1])
        .unwrap();
    kit.restart();
    assert_eq!(kit.state().balance, 12);
    // Without the good snapshot, full replay still works while the events exist.
    j.delete_snapshots_blocking(&pid, stateline_journal::SnapshotCriteria::up_to(Seq(2)))
        .unwrap();
    kit.restart();
    // Once the covered events are gone, an unusable snapshot is a loud failure.
    j.delete_events_to_blocking(&pid, Seq(5)).unwrap();
    assert!(matches!(
        kit.try_restart(),
        Err(RecoveryError::Incomplete { .. })
    ));
}
