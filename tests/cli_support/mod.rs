//! Shared fixtures of the `stateline` CLI end-to-end tests: a bank journal built with the
//! library (accounts with op-id events as in `examples/bank.rs`, snapshots, packed chunks, a
//! deleted prefix, a second entity type), and helpers that run the binary and parse its output.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use stateline::prelude::*;
use stateline::{Manifest, Offset};
use stateline_journal::NewEvent;
use uuid::Uuid;

/// The bank example's account.
#[derive(Default, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    pub balance: i64,
}

/// The bank example's events: every change carries its operation id.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Event {
    Deposited { op_id: Uuid, amount: i64 },
    Withdrawn { op_id: Uuid, amount: i64 },
}

impl EventSourced for Account {
    const TYPE_NAME: &'static str = "account";
    type Command = ();
    type Event = Event;
    type Reply = ();

    fn handle(&self, _: ()) -> Effect<Self> {
        Effect::reply(())
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Deposited { amount, .. } => self.balance += amount,
            Event::Withdrawn { amount, .. } => self.balance -= amount,
        }
    }
}

/// Accounts in the fixture.
pub const ACCOUNTS: u32 = 12;
/// Events per account.
pub const EVENTS: u64 = 30;
/// A snapshot every this many events.
pub const SNAPSHOT_EVERY: u64 = 10;
/// Events of `ledger|main`.
pub const LEDGER_EVENTS: u64 = 5;
/// `acc-00`'s events up to this seq are deleted.
pub const DELETED_TO: u64 = 10;

pub fn account_id(a: u32) -> String {
    format!("acc-{a:02}")
}

pub fn pid(a: u32) -> PersistenceId {
    PersistenceId::parse("account", &account_id(a)).unwrap()
}

/// The event `round` (0-based) of account `a`, deterministic.
pub fn event(a: u32, round: u64) -> Event {
    let op_id = Uuid::from_u128((u128::from(a) << 32) | u128::from(round));
    if round % 4 == 3 {
        Event::Withdrawn { op_id, amount: 5 }
    } else {
        Event::Deposited {
            op_id,
            amount: i64::from(a + 1) * 10 + round as i64,
        }
    }
}

/// The balance of account `a` after its first `seq` events.
pub fn balance(a: u32, seq: u64) -> i64 {
    let mut s = Account::default();
    for r in 0..seq {
        s.apply(&event(a, r));
    }
    s.balance
}

/// A journal in a temporary directory.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

/// Opens a new journal with small segments (so that packed chunks exist).
pub fn open_new(path: &Path) -> Journal {
    Journal::builder()
        .key_groups(64)
        .segment_events(64)
        .pack_step_events(64)
        .open(path)
        .unwrap()
}

/// Writes the bank: accounts interleaved round by round, a snapshot every 10 events, `acc-00`'s
/// first 10 events deleted, and a `ledger|main` entity of another type.
pub fn fill(j: &Journal) {
    for round in 0..EVENTS {
        for a in 0..ACCOUNTS {
            let ev = NewEvent::encode(Manifest::new("account", 1), &event(a, round)).unwrap();
            j.append_blocking(&pid(a), Seq(round + 1), vec![ev])
                .unwrap();
            let seq = round + 1;
            if seq % SNAPSHOT_EVERY == 0 {
                let state = Account {
                    balance: balance(a, seq),
                };
                let bytes = rmp_serde::to_vec_named(&state).unwrap();
                j.save_snapshot_blocking(&pid(a), Seq(seq), Manifest::new("account", 1), bytes)
                    .unwrap();
            }
        }
    }
    let ledger = PersistenceId::parse("ledger", "main").unwrap();
    let entries: Vec<NewEvent> = (0..LEDGER_EVENTS)
        .map(|i| {
            let entry = BTreeMap::from([("entry", i)]);
            NewEvent::encode(Manifest::new("ledger", 1), &entry).unwrap()
        })
        .collect();
    j.append_blocking(&ledger, Seq(1), entries).unwrap();
    j.delete_events_to_blocking(&pid(0), Seq(DELETED_TO))
        .unwrap();
    j.flush_blocking(true).unwrap();
}

/// The bank journal, closed: a fresh copy of one built once per test binary.
pub fn bank() -> Fixture {
    static TEMPLATE: OnceLock<Fixture> = OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("template.redb");
        let j = open_new(&path);
        fill(&j);
        drop(j);
        Fixture { dir, path }
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bank.redb");
    std::fs::copy(&template.path, &path).unwrap();
    Fixture { dir, path }
}

/// Total events stored in the bank fixture.
pub fn stored_events() -> u64 {
    u64::from(ACCOUNTS) * EVENTS - DELETED_TO + LEDGER_EVENTS
}

/// Total offsets ever assigned in the bank fixture.
pub fn highest_offset() -> Offset {
    Offset(u64::from(ACCOUNTS) * EVENTS + LEDGER_EVENTS)
}

/// The outcome of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn of(out: Output) -> Self {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    }

    /// Stdout as one JSON document.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", self.stdout))
    }

    /// Stdout as JSON Lines.
    pub fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Asserts success.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stderr: {}\nstdout: {}",
            self.stderr, self.stdout
        );
        self
    }

    /// Asserts a failure with `code` and exactly one line on stderr, no panic.
    pub fn fails(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "stderr: {}\nstdout: {}",
            self.stderr, self.stdout
        );
        self.one_error_line();
        self
    }

    /// Asserts at most one line on stderr, starting with `error: `, and no panic.
    pub fn one_error_line(&self) {
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        assert!(!self.stderr.contains("RUST_BACKTRACE"), "{}", self.stderr);
        if self.code != 0 {
            assert_eq!(self.stderr.lines().count(), 1, "stderr: {:?}", self.stderr);
            assert!(self.stderr.starts_with("error: "), "{}", self.stderr);
        }
    }
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_stateline"));
    c.env("RUST_BACKTRACE", "1");
    c
}

/// Runs `stateline args...`.
pub fn stateline<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Run::of(bin().args(args).stdin(Stdio::null()).output().unwrap())
}

/// Runs `stateline args...` with `input` on stdin.
pub fn stateline_with_stdin<I, S>(args: I, input: &[u8]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    Run::of(out)
}
