//! Entities shared by the actor tests: a bank account and a running total.
#![allow(dead_code, clippy::unwrap_used)]

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stateline_actors::{Effect, EventSourced, SnapshotPolicy};
use stateline_journal::Journal;

/// A journal in memory (the default builder).
pub fn mem_journal() -> Journal {
    Journal::builder()
        .open_with_backend(redb::backends::InMemoryBackend::new(), "mem")
        .unwrap()
}

/// Polls `cond` until it holds; fails the test after 20 s.
pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        actix_rt::time::sleep(Duration::from_millis(5)).await;
    }
}

#[derive(Default, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
    pub operations: u64,
    /// Per-sender last applied sequence number: lets tests check order and exactly-once.
    pub last_from: std::collections::BTreeMap<u32, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountCommand {
    Deposit {
        amount: i64,
    },
    Withdraw {
        amount: i64,
    },
    /// A deposit tagged with its sender and the sender's sequence number.
    Tagged {
        sender: u32,
        n: u64,
        amount: i64,
    },
    /// Persist an event whose payload is `size` bytes (to provoke rejections).
    Memo {
        size: usize,
    },
    Balance,
    Close,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
    TaggedDeposit { sender: u32, n: u64, amount: i64 },
    Memo { text: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountError {
    InsufficientFunds {
        balance: i64,
        requested: i64,
    },
    InvalidAmount,
    OutOfOrder {
        sender: u32,
        expected: u64,
        got: u64,
    },
}

pub type AccountReply = Result<i64, AccountError>;

impl EventSourced for Account {
    const TYPE_NAME: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Reply = AccountReply;

    fn handle(&self, command: AccountCommand) -> Effect<Self> {
        match command {
            AccountCommand::Deposit { amount } if amount <= 0 => {
                Effect::reject(Err(AccountError::InvalidAmount))
            }
            AccountCommand::Deposit { amount } => {
                Effect::persist(vec![AccountEvent::Deposited { amount }])
                    .then_reply(|s: &Self| Ok(s.balance))
            }
            AccountCommand::Withdraw { amount } if amount > self.balance => {
                Effect::reject(Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: amount,
                }))
            }
            AccountCommand::Withdraw { amount } => {
                Effect::persist(vec![AccountEvent::Withdrawn { amount }])
                    .then_reply(|s: &Self| Ok(s.balance))
            }
            AccountCommand::Tagged { sender, n, amount } => {
                let expected = self.last_from.get(&sender).map_or(1, |l| l + 1);
                if n != expected {
                    return Effect::reject(Err(AccountError::OutOfOrder {
                        sender,
                        expected,
                        got: n,
                    }));
                }
                Effect::persist(vec![AccountEvent::TaggedDeposit { sender, n, amount }])
                    .then_reply(|s: &Self| Ok(s.balance))
            }
            AccountCommand::Memo { size } => Effect::persist(vec![AccountEvent::Memo {
                text: "m".repeat(size),
            }])
            .then_reply(|s: &Self| Ok(s.balance)),
            AccountCommand::Balance => Effect::reply(Ok(self.balance)),
            AccountCommand::Close => Effect::stop(Ok(self.balance)),
        }
    }

    fn apply(&mut self, event: &AccountEvent) {
        self.operations += 1;
        match event {
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrawn { amount } => self.balance -= amount,
            AccountEvent::TaggedDeposit { sender, n, amount } => {
                self.balance += amount;
                self.last_from.insert(*sender, *n);
            }
            AccountEvent::Memo { .. } => {}
        }
    }

    fn snapshot_policy() -> SnapshotPolicy {
        SnapshotPolicy::every(10)
    }
}

thread_local! {
    /// Counts every `apply` on this thread (a test's own shard runs on its thread), live or
    /// during recovery: a wake that read the journal would replay.
    pub static APPLIED: Cell<u64> = const { Cell::new(0) };
}

/// A running total: persists every `Add`; each `apply`, live or replayed, counts in
/// [`APPLIED`].
#[derive(Default, Serialize, Deserialize)]
pub struct Tally {
    pub total: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum TallyCmd {
    Add(u64),
    Get,
}

#[derive(Serialize, Deserialize)]
pub struct Added(pub u64);

impl EventSourced for Tally {
    const TYPE_NAME: &'static str = "tally";
    type Command = TallyCmd;
    type Event = Added;
    type Reply = u64;

    fn handle(&self, command: TallyCmd) -> Effect<Self> {
        match command {
            TallyCmd::Add(n) => Effect::persist(vec![Added(n)]).then_reply(|s: &Self| s.total),
            TallyCmd::Get => Effect::reply(self.total),
        }
    }

    fn apply(&mut self, event: &Added) {
        APPLIED.with(|a| a.set(a.get() + 1));
        self.total += event.0;
    }
}
