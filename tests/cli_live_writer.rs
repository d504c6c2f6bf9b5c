//! `stateline` on a journal held open by a running writer (this test process): read-only
//! commands succeed and see its commits, `changelog --follow` prints new commits as they land,
//! and writing commands exit 1 with a "locked" message until the writer closes.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cli_support::*;
use serde_json::Value;
use stateline::{Durability, Journal, Manifest, Seq};
use stateline_journal::NewEvent;

fn append(j: &Journal, a: u32, seq: u64) {
    let ev = NewEvent::encode(Manifest::new("account", 1), &event(a, seq - 1)).unwrap();
    j.append_blocking(&pid(a), Seq(seq), vec![ev]).unwrap();
}

#[test]
fn read_only_commands_work_and_writing_commands_are_locked_out() {
    let f = bank();
    let db = f.path.to_str().unwrap();
    let j = Journal::open(&f.path).unwrap();
    append(&j, 1, EVENTS + 1);

    for args in [
        vec!["info", db],
        vec!["ls", db],
        vec!["stats", db],
        vec!["changelog", db],
        vec!["replay", db, "account", "acc-01"],
        vec!["diff", db, "account", "acc-01", "1", "31"],
        vec!["export", db],
        vec!["retain", db, "--keep-snapshots", "1", "--dry-run"],
    ] {
        stateline(&args).ok();
    }
    let evs = stateline(["events", db, "account", "acc-01", "--json"])
        .ok()
        .json_lines();
    assert_eq!(
        evs.len() as u64,
        EVENTS + 1,
        "the writer's new commit is visible"
    );
    let info = stateline(["info", db, "--json"]).ok().json();
    assert_eq!(info["highest_offset"], highest_offset().0 + 1);
    let v = stateline(["verify", db, "--json"]).ok().json();
    assert_eq!(v["ok"], true);
    assert!(
        v["integrity"].as_str().unwrap().starts_with("skipped"),
        "{v}"
    );
    assert_eq!(v["events"], stored_events() + 1);

    for args in [
        vec!["retain", db, "--keep-snapshots", "1"],
        vec!["retain", db, "--idle-for", "1h"],
        vec!["compact", db],
    ] {
        let r = stateline(&args).fails(1);
        assert!(r.stderr.contains("locked"), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(db), "{args:?}: {}", r.stderr);
    }
    let r = stateline_with_stdin(
        ["import", db],
        b"{\"kind\":\"header\",\"export_version\":1}\n",
    )
    .fails(1);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);

    // Nothing was changed by the refused commands; once the writer closes they work.
    append(&j, 1, EVENTS + 2);
    drop(j);
    let r = stateline(["retain", db, "--keep-snapshots", "1", "--json"])
        .ok()
        .json();
    assert_eq!(r["snapshots_deleted"], u64::from(ACCOUNTS) * 2);
}

/// Collects the JSON lines a child prints, through a channel (reads never block the test).
fn lines_of(child: &mut Child) -> mpsc::Receiver<Value> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_n(rx: &mpsc::Receiver<Value>, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) => out.push(v),
            Err(_) => panic!(
                "only {} of {n} lines before the deadline: {out:?}",
                out.len()
            ),
        }
    }
    out
}

#[test]
fn changelog_follow_prints_commits_as_they_land() {
    let f = bank();
    let j = Journal::open(&f.path).unwrap();
    let from = (highest_offset().0 + 1).to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stateline"))
        .args(["changelog", f.path.to_str().unwrap(), "--follow", "--json"])
        .args(["--from-offset", &from])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    for seq in EVENTS + 1..=EVENTS + 3 {
        append(&j, 2, seq);
    }
    let got = next_n(&rx, 3);
    let seqs: Vec<u64> = got.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![EVENTS + 1, EVENTS + 2, EVENTS + 3]);
    assert_eq!(got[0]["offset"], highest_offset().0 + 1);
    assert_eq!(got[0]["entity_id"], "acc-02");
    // More commits after the follower has caught up, by two entities.
    append(&j, 4, EVENTS + 1);
    append(&j, 2, EVENTS + 4);
    let got = next_n(&rx, 2);
    assert_eq!(got[0]["entity_id"], "acc-04");
    assert_eq!(got[1]["seq"], EVENTS + 4);
    assert!(
        child.try_wait().unwrap().is_none(),
        "--follow keeps running"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    drop(j);
}

#[test]
fn a_journal_opened_without_durability_is_exclusive() {
    let f = bank();
    let db = f.path.to_str().unwrap();
    let j = Journal::builder()
        .durability(Durability::None)
        .open(&f.path)
        .unwrap();
    let r = stateline(["info", db]).fails(1);
    assert!(r.stderr.contains("locked"), "{}", r.stderr);
    drop(j);
    stateline(["info", db]).ok();
}
