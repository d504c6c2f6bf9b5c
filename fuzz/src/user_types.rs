//! Event and state types as an application would define them (enums with named fields, uuids,
//! nested vectors, `serde_bytes`, maps, a generic envelope), with samples that use every
//! variant. Shared by the payload target, the seed generator and
//! `journal/tests/fuzz_corpus_replays.rs` (included there with `#[path]`).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An event of a bank account, as an application would define it: an enum with named fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum AccountEvent {
    /// The account was opened.
    Opened {
        owner: String,
        account: Uuid,
        currency: String,
        overdraft: Option<i64>,
    },
    /// Money came in.
    Deposited {
        amount: u64,
        memo: Option<String>,
        at_micros: i64,
    },
    /// Money went out.
    Withdrawn { amount: u64, fee: u32 },
    /// Money moved to other accounts.
    Transferred { to: Uuid, legs: Vec<Leg> },
    /// Tags and an attachment were set.
    Tagged {
        tags: Vec<String>,
        #[serde(with = "serde_bytes")]
        attachment: Vec<u8>,
    },
    /// A newtype variant.
    Renamed(String),
    /// A unit variant.
    Closed,
}

/// One leg of a transfer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Leg {
    pub account: Uuid,
    pub amount: i64,
    pub note: Option<String>,
}

/// The state of an account, as an application would snapshot it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct AccountState {
    pub owner: String,
    pub balance: i128,
    pub holders: Vec<Uuid>,
    /// Nested vectors: amounts per day per month.
    pub history: Vec<Vec<u64>>,
    pub limits: std::collections::BTreeMap<String, u32>,
    pub attachments: Vec<serde_bytes::ByteBuf>,
    pub last: Option<AccountEvent>,
    pub flags: (bool, u8, char),
}

/// A command envelope with a generic body, as a message layer would use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Envelope<T> {
    pub id: Uuid,
    pub reply_to: Option<String>,
    pub body: T,
    pub trace: Vec<(String, u64)>,
}

/// Events that exercise every variant.
pub fn sample_events() -> Vec<AccountEvent> {
    let a = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let b = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);
    vec![
        AccountEvent::Opened {
            owner: "alice".into(),
            account: a,
            currency: "EUR".into(),
            overdraft: Some(-500),
        },
        AccountEvent::Deposited {
            amount: 1200,
            memo: Some("salary".into()),
            at_micros: 1_700_000_000_000_000,
        },
        AccountEvent::Withdrawn { amount: 7, fee: 1 },
        AccountEvent::Transferred {
            to: b,
            legs: vec![
                Leg {
                    account: b,
                    amount: 100,
                    note: None,
                },
                Leg {
                    account: a,
                    amount: -100,
                    note: Some("rent".into()),
                },
            ],
        },
        AccountEvent::Tagged {
            tags: vec!["vip".into(), "€".into()],
            attachment: vec![0, 1, 2, 0xff],
        },
        AccountEvent::Renamed("alice b.".into()),
        AccountEvent::Closed,
    ]
}

/// A state that uses every field.
pub fn sample_state() -> AccountState {
    AccountState {
        owner: "alice".into(),
        balance: -(1 << 70),
        holders: vec![Uuid::from_u128(7), Uuid::from_u128(u128::MAX)],
        history: vec![vec![1, 2, 3], vec![], vec![u64::MAX]],
        limits: [("atm".to_string(), 500), ("online".to_string(), 0)]
            .into_iter()
            .collect(),
        attachments: vec![serde_bytes::ByteBuf::from(vec![9; 5])],
        last: Some(AccountEvent::Closed),
        flags: (true, 3, 'λ'),
    }
}
