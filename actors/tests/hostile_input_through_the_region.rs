//! Hostile input through the region (G6, G7): an entity type whose event type changed
//! incompatibly fails recovery of the affected entity with a typed error naming its
//! persistence id and seq while other entities keep working; invalid entity ids are refused
//! at once and hand the command back; oversized events are rejected, persist nothing, and the
//! entity continues.
#![allow(clippy::unwrap_used)]

mod support;

use serde::{Deserialize, Serialize};
use stateline_actors::{
    CommandError, Effect, EventSourced, RecoveryError, RegionConfig, ShardRegion,
};
use stateline_journal::{Journal, PersistenceId, Seq, MAX_ENTITY_ID_LEN};
use support::*;

fn region<S: EventSourced>(journal: &Journal) -> ShardRegion<S> {
    let config = RegionConfig {
        shards: 2,
        ..RegionConfig::default()
    };
    ShardRegion::start(journal.clone(), config).unwrap()
}

/// The same entity type (`account`) after an incompatible change of its event type: events
/// the old code wrote no longer decode.
#[derive(Default, Serialize, Deserialize)]
struct AccountV2 {
    cents: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum V2Command {
    Credit(u64),
    Get,
}

#[derive(Serialize, Deserialize)]
struct Credited {
    cents: u64,
    memo: String,
}

impl EventSourced for AccountV2 {
    const TYPE_NAME: &'static str = "account";
    type Command = V2Command;
    type Event = Credited;
    type Reply = u64;

    fn handle(&self, command: V2Command) -> Effect<Self> {
        match command {
            V2Command::Credit(cents) => Effect::persist(vec![Credited {
                cents,
                memo: String::new(),
            }])
            .then_reply(|s: &Self| s.cents),
            V2Command::Get => Effect::reply(self.cents),
        }
    }

    fn apply(&mut self, event: &Credited) {
        self.cents += event.cents;
    }
}

#[actix_rt::test]
async fn an_incompatible_event_change_fails_only_the_affected_entity_with_its_pid_and_seq() {
    let journal = mem_journal();
    let old = region::<Account>(&journal);
    for _ in 0..3 {
        old.send("old-1", AccountCommand::Deposit { amount: 5 })
            .await
            .unwrap()
            .unwrap();
    }
    old.stop().await;
    drop(old);

    let new = region::<AccountV2>(&journal);
    for _ in 0..2 {
        // Every try is a fresh incarnation failing the same way; nothing is skipped.
        match new.send("old-1", V2Command::Get).await {
            Err(CommandError::Recovery(RecoveryError::Decode { pid, seq, .. })) => {
                assert_eq!(pid, PersistenceId::parse("account", "old-1").unwrap());
                assert_eq!(seq, Seq(1));
            }
            other => panic!("expected a decode error naming the event, got {other:?}"),
        }
    }
    let err = new.send("old-1", V2Command::Get).await.unwrap_err();
    assert!(err.to_string().contains("account|old-1"), "{err}");
    // Entities written by the new code are unaffected, also on the same shards.
    for i in 0..20 {
        assert_eq!(
            new.send(&format!("new-{i}"), V2Command::Credit(7))
                .await
                .unwrap(),
            7
        );
    }
    // And the broken entity's history is intact for an upcaster to fix later.
    let pid = PersistenceId::parse("account", "old-1").unwrap();
    assert_eq!(journal.highest_seq(&pid).unwrap(), Seq(3));
    new.stop().await;
}

#[actix_rt::test]
async fn invalid_ids_and_oversized_events_are_refused_and_nothing_else_changes() {
    let journal = mem_journal();
    let region = region::<Account>(&journal);
    region
        .send("ok", AccountCommand::Deposit { amount: 3 })
        .await
        .unwrap()
        .unwrap();
    let too_long = "x".repeat(MAX_ENTITY_ID_LEN + 1);
    for id in ["", "nul\0inside", too_long.as_str()] {
        let cmd = AccountCommand::Deposit { amount: 1 };
        match region.enqueue(id, cmd.clone()) {
            Err(CommandError::InvalidId { command, .. }) => assert_eq!(command, cmd),
            Err(e) => panic!("{id:?}: expected InvalidId, got {e}"),
            Ok(_) => panic!("{id:?} accepted"),
        }
        match region.send(id, cmd.clone()).await {
            Err(e) => assert_eq!(e.into_command(), Some(cmd)),
            Ok(_) => panic!("{id:?} accepted"),
        }
    }
    // An event over the journal's limit (1 MiB by default): rejected, the entity continues.
    match region
        .send("ok", AccountCommand::Memo { size: 2 << 20 })
        .await
    {
        Err(CommandError::Rejected(e)) => assert!(e.is_rejected(), "{e}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(
        region
            .send("ok", AccountCommand::Deposit { amount: 4 })
            .await
            .unwrap(),
        Ok(7)
    );
    let pid = PersistenceId::parse("account", "ok").unwrap();
    assert_eq!(journal.highest_seq(&pid).unwrap(), Seq(2));
    assert_eq!(journal.entities(None).unwrap().len(), 1);
    region.stop().await;
}
