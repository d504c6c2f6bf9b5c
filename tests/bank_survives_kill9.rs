//! The whole system under `kill -9` (G1–G4, G6): the bank demo (`examples/bank.rs`, built by
//! `cargo test`) runs with `--ack-log` and `--sent-log` on one journal and is killed with
//! SIGKILL at random moments — about 10% of them during open and recovery, about 30% while a
//! rescale is running (right after the demo reports that it started one), the rest during the
//! load — and restarted. After every cycle: `verify` passes; every acknowledged operation id
//! is in the journal exactly once, on its account, with its amount; every operation in the
//! journal was sent, with that account and amount; every account's seqs are contiguous; and
//! every balance a region recovers (snapshot + events) equals the fold of its journal.
//! 20 cycles by default, 100 with `STATELINE_SOAK=1`; the seed is printed and can be fixed with
//! `STATELINE_KILL_SEED`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stateline::actors::{RegionConfig, ShardRegion};
use stateline::prelude::*;
use stateline_journal::{JournalError, JournalReader, PersistenceId, Seq};

/// The bank's entity, mirrored: same type name, state and event encoding as the demo's, so a
/// region here recovers the demo's accounts (through its snapshots too).
#[derive(Default, Serialize, Deserialize)]
struct Account {
    balance: i64,
}

/// The bank's events, as it writes them.
#[derive(Serialize, Deserialize)]
enum Event {
    Deposited { op_id: uuid::Uuid, amount: i64 },
    Withdrawn { op_id: uuid::Uuid, amount: i64 },
}

#[derive(Debug)]
struct GetBalance;

impl EventSourced for Account {
    const TYPE_NAME: &'static str = "account";
    type Command = GetBalance;
    type Event = Event;
    type Reply = i64;

    fn handle(&self, _: GetBalance) -> Effect<Self> {
        Effect::reply(self.balance)
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Deposited { amount, .. } => self.balance += amount,
            Event::Withdrawn { amount, .. } => self.balance -= amount,
        }
    }
}

fn bank_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test> → target/<profile>/examples/bank
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bank = dir
        .join("examples")
        .join(format!("bank{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bank.exists(),
        "{} is missing: `cargo test` builds the examples; run it through cargo",
        bank.display()
    );
    bank
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

const ACCOUNTS: u32 = 300;

/// The complete lines of a log the demo appends to (a kill can leave the last one short and
/// without its newline; the demo writes each line in one write, so no complete line is cut).
fn log_lines(path: &Path) -> Vec<(uuid::Uuid, String, i64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .map(|line| {
            let mut parts = line.split_whitespace();
            let (Some(op), Some(account), Some(delta), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                panic!("malformed log line {line:?}");
            };
            (
                op.parse().expect("op id"),
                account.to_string(),
                delta.parse().expect("amount"),
            )
        })
        .collect()
}

/// The balances a region recovers from the journal (newest snapshot + events after it).
fn recovered_balances(db: &Path) -> Vec<i64> {
    actix_rt::System::new().block_on(async {
        let journal = Journal::open(db).expect("journal opens");
        let config = RegionConfig {
            shards: 2,
            ..RegionConfig::default()
        };
        let region = ShardRegion::<Account>::start(journal, config).expect("region");
        let mut out = Vec::new();
        for a in 0..ACCOUNTS {
            let balance = region
                .send(&format!("acc-{a:05}"), GetBalance)
                .await
                .unwrap_or_else(|e| panic!("acc-{a:05} does not recover: {e}"));
            out.push(balance);
        }
        region.stop().await;
        out
    })
}

/// Checks the journal against the logs; returns (acknowledged operations, events).
fn check(db: &Path, ack_log: &Path, sent_log: &Path, cycle: u32) -> (usize, usize) {
    if !db.exists() {
        // Killed before the journal was created (creation is atomic: no file, no half file).
        assert!(
            log_lines(ack_log).is_empty(),
            "cycle {cycle}: acks without a journal"
        );
        return (0, 0);
    }
    // As the application's restart would: a writable open recovers a file the kill left
    // unclean (a read-only open refuses it with `NeedsRecovery`).
    match JournalReader::open_read_only(db) {
        Ok(_) | Err(JournalError::NeedsRecovery { .. }) => {}
        Err(e) => panic!("cycle {cycle}: journal does not open read-only: {e}"),
    }
    drop(Journal::open(db).unwrap_or_else(|e| panic!("cycle {cycle}: journal does not open: {e}")));
    let reader = JournalReader::open_read_only(db)
        .unwrap_or_else(|e| panic!("cycle {cycle}: journal does not open after recovery: {e}"));
    let report = reader.verify(&mut |_, _| {}).expect("verify runs");
    assert!(
        report.is_ok(),
        "cycle {cycle}: verify found {:?}",
        report.problems
    );
    let mut ops: HashMap<uuid::Uuid, (String, i64)> = HashMap::new();
    let mut folds = Vec::new();
    let mut events = 0;
    for a in 0..ACCOUNTS {
        let id = format!("acc-{a:05}");
        let pid = PersistenceId::parse("account", &id).expect("valid id");
        let records = reader
            .events(&pid, Seq(1), Seq(u64::MAX), u64::MAX)
            .expect("events");
        let mut fold = 0;
        for (i, rec) in records.enumerate() {
            let rec = rec.unwrap_or_else(|e| panic!("cycle {cycle}: {id}: {e}"));
            assert_eq!(
                rec.seq,
                Seq(i as u64 + 1),
                "cycle {cycle}: {id} seqs not contiguous"
            );
            events += 1;
            let (op, delta) = match rec.decode::<Event>().expect("a bank event") {
                Event::Deposited { op_id, amount } => (op_id, amount),
                Event::Withdrawn { op_id, amount } => (op_id, -amount),
            };
            fold += delta;
            let prev = ops.insert(op, (id.clone(), delta));
            assert!(
                prev.is_none(),
                "cycle {cycle}: operation {op} applied twice"
            );
        }
        folds.push(fold);
    }
    drop(reader);
    let sent: HashMap<uuid::Uuid, (String, i64)> = log_lines(sent_log)
        .into_iter()
        .map(|(op, a, d)| (op, (a, d)))
        .collect();
    for (op, (account, delta)) in &ops {
        assert_eq!(
            sent.get(op),
            Some(&(account.clone(), *delta)),
            "cycle {cycle}: the journal has {op} {account} {delta}, which was never sent"
        );
    }
    let acked = log_lines(ack_log);
    for (op, account, delta) in &acked {
        match ops.get(op) {
            Some((a, d)) => assert!(
                a == account && d == delta,
                "cycle {cycle}: acked {op} {account} {delta}, journal has {a} {d}"
            ),
            None => panic!("cycle {cycle}: acknowledged operation {op} lost"),
        }
    }
    let recovered = recovered_balances(db);
    for (a, (got, want)) in recovered.iter().zip(&folds).enumerate() {
        assert_eq!(
            got, want,
            "cycle {cycle}: acc-{a:05} recovers to {got}, its journal folds to {want}"
        );
    }
    (acked.len(), events)
}

#[test]
fn the_bank_survives_kill_9_with_every_acknowledged_operation_exactly_once() {
    let soak = std::env::var("STATELINE_SOAK").is_ok_and(|v| v == "1");
    let cycles = if soak { 100 } else { 20 };
    let seed = std::env::var("STATELINE_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
                | 1
        });
    println!("bank kill -9 loop: {cycles} cycles, seed {seed} (STATELINE_KILL_SEED)");
    let mut rng = seed;
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("bank.redb");
    let ack_log = dir.path().join("acks.log");
    let sent_log = dir.path().join("sent.log");
    let bank = bank_binary();
    let started = Instant::now();
    let mut kills: HashMap<&str, u32> = HashMap::new();
    for cycle in 0..cycles {
        let mut child = Command::new(&bank)
            .args(["--db", &db.to_string_lossy()])
            .args(["--ack-log", &ack_log.to_string_lossy()])
            .args(["--sent-log", &sent_log.to_string_lossy()])
            .args(["--accounts", &ACCOUNTS.to_string()])
            .args(["--ops", "20000", "--senders", "32"])
            .args(["--shards", "2", "--rescale", "3,1,4"])
            .args(["--seed", &cycle.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the bank");
        // The demo reports each rescale's start on stderr; forward its lines.
        let (lines_tx, lines) = mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("stderr");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let r = xorshift(&mut rng);
        let (phase, delay) = match r % 10 {
            0 => ("open/recovery", Duration::from_millis(r % 40)),
            1..=3 => ("rescale", Duration::from_millis((r >> 8) % 30)),
            _ => ("load", Duration::from_millis(100 + (r >> 8) % 3000)),
        };
        let mut stderr_lines = Vec::new();
        let mut deadline = Instant::now() + delay;
        if phase == "rescale" {
            // Wait for the n-th rescale to start (or the run to end), then the short delay.
            let nth = 1 + (r >> 20) % 3;
            let give_up = Instant::now() + Duration::from_secs(60);
            let mut seen = 0;
            while seen < nth && Instant::now() < give_up {
                match lines.recv_timeout(Duration::from_millis(5)) {
                    Ok(line) => {
                        seen += u64::from(line.starts_with("rescale to"));
                        stderr_lines.push(line);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if child.try_wait().expect("poll the bank").is_some() {
                            break;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            deadline = Instant::now() + delay;
        }
        let mut finished = None;
        loop {
            if let Some(status) = child.try_wait().expect("poll the bank") {
                finished = Some(status);
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if finished.is_none() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
        reader.join().expect("stderr reader");
        stderr_lines.extend(lines.try_iter());
        // A run that finished before its kill must have passed its own checks.
        if let Some(status) = finished {
            assert!(
                status.success(),
                "cycle {cycle}: the bank failed: {}",
                stderr_lines.join("\n")
            );
        }
        let how = if finished.is_some() {
            "finished"
        } else {
            phase
        };
        *kills.entry(how).or_default() += 1;
        let (acked, events) = check(&db, &ack_log, &sent_log, cycle);
        println!("cycle {cycle}: {how} after {delay:?}; {acked} acknowledged, {events} events");
    }
    println!("{cycles} cycles in {:.1?}: {kills:?}", started.elapsed());
}
