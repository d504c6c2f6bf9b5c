//! The whole system under `kill -9` (G1–G3, G6): the bank demo (`examples/bank.rs`, built by
//! `cargo test`) runs with `--ack-log` on one journal and is killed with SIGKILL at random
//! moments — about 10% of them during open and recovery, others during load and rescales —
//! and restarted. After every kill: `verify` passes; every acknowledged operation id is in the
//! journal exactly once, on its account, with its amount; no operation id appears twice; every
//! account's seqs are contiguous. 12 cycles by default, 60 with `STATELINE_SOAK=1`; the seed is
//! printed and can be fixed with `STATELINE_KILL_SEED`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use stateline_journal::{Journal, JournalError, JournalReader, PersistenceId, Seq};

/// The bank's events, as it writes them.
#[derive(Deserialize)]
enum Event {
    Deposited { op_id: uuid::Uuid, amount: i64 },
    Withdrawn { op_id: uuid::Uuid, amount: i64 },
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

/// Checks the journal against the ack log; returns (acked operations, events).
fn check(db: &Path, ack_log: &Path, cycle: u32) -> (usize, usize) {
    if !db.exists() {
        // Killed before the journal was created (creation is atomic: no file, no half file).
        let log = std::fs::read_to_string(ack_log).unwrap_or_default();
        assert!(
            log.trim().is_empty(),
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
    let mut events = 0;
    for a in 0..ACCOUNTS {
        let id = format!("acc-{a:05}");
        let pid = PersistenceId::parse("account", &id).expect("valid id");
        let records = reader
            .events(&pid, Seq(1), Seq(u64::MAX), u64::MAX)
            .expect("events");
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
            let prev = ops.insert(op, (id.clone(), delta));
            assert!(
                prev.is_none(),
                "cycle {cycle}: operation {op} applied twice"
            );
        }
    }
    let log = std::fs::read_to_string(ack_log).unwrap_or_default();
    let mut acked = 0;
    for line in log.lines() {
        let mut parts = line.split_whitespace();
        let (Some(op), Some(account), Some(delta)) = (parts.next(), parts.next(), parts.next())
        else {
            // The kill can cut the last line short; nothing before it.
            continue;
        };
        let (Ok(op), Ok(delta)) = (op.parse::<uuid::Uuid>(), delta.parse::<i64>()) else {
            continue;
        };
        acked += 1;
        match ops.get(&op) {
            Some((a, d)) => assert!(
                a == account && *d == delta,
                "cycle {cycle}: acked {op} {account} {delta}, journal has {a} {d}"
            ),
            None => panic!("cycle {cycle}: acknowledged operation {op} lost"),
        }
    }
    (acked, events)
}

#[test]
fn the_bank_survives_kill_9_with_every_acknowledged_operation_exactly_once() {
    let soak = std::env::var("STATELINE_SOAK").is_ok_and(|v| v == "1");
    let cycles = if soak { 60 } else { 12 };
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
    let bank = bank_binary();
    let started = Instant::now();
    let mut kills_during_start = 0;
    for cycle in 0..cycles {
        let mut child = Command::new(&bank)
            .args([
                "--db",
                &db.to_string_lossy(),
                "--ack-log",
                &ack_log.to_string_lossy(),
            ])
            .args([
                "--accounts",
                &ACCOUNTS.to_string(),
                "--ops",
                "20000",
                "--senders",
                "32",
            ])
            .args([
                "--shards",
                "2",
                "--rescale",
                "3,1,4",
                "--seed",
                &cycle.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the bank");
        let r = xorshift(&mut rng);
        let delay = if r % 10 == 0 {
            kills_during_start += 1;
            Duration::from_millis(r % 40)
        } else {
            Duration::from_millis(100 + r % 3000)
        };
        let deadline = Instant::now() + delay;
        let mut finished = None;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().expect("poll the bank") {
                finished = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match finished {
            // A run that finished before its kill must have passed its own checks.
            Some(status) => {
                let out = child.wait_with_output().expect("bank output");
                assert!(
                    status.success(),
                    "cycle {cycle}: the bank failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => {
                child.kill().expect("SIGKILL");
                child.wait().expect("reap");
            }
        }
        let how = if finished.is_some() {
            "finished"
        } else {
            "killed"
        };
        let (acked, events) = check(&db, &ack_log, cycle);
        println!("cycle {cycle}: {how} within {delay:?}; {acked} acknowledged, {events} events");
    }
    println!(
        "{cycles} cycles ({kills_during_start} during start) in {:.1?}",
        started.elapsed()
    );
}
