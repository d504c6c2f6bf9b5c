//! `stateline` on a journal held open by a running writer (this test process): read-only
//! commands succeed and see its commits, `changelog --follow` prints new commits as they land,
//! and writing commands exit 1 with a "locked" message until the writer closes.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
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

/// Waits for `child` to exit, failing the test (and killing it) after 20 s.
fn exit_of(child: &mut Child, what: &str) -> std::process::Output {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{what}: still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    std::process::Output {
        status: child.wait().unwrap(),
        stdout: Vec::new(),
        stderr: stderr.into_bytes(),
    }
}

/// `changelog --follow` from the journal's last event: waits for that one line to be printed
/// and returns the child with the read end of its stdout, to keep or to close.
fn follow_last(db: &std::path::Path) -> (Child, ChildStdout) {
    let from = highest_offset().0.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_stateline"))
        .args(["changelog", db.to_str().unwrap(), "--follow", "--json"])
        .args(["--from-offset", &from])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line);
        let _ = tx.send((read.map(|_| line), reader.into_inner()));
    });
    let (line, stdout) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the first line within 20 s");
    let first: Value = serde_json::from_str(&line.unwrap()).unwrap();
    assert_eq!(first["offset"], highest_offset().0);
    (child, stdout)
}

/// `stateline changelog db --follow | head -1` on a journal nobody writes to: once the reader
/// of its output goes away, the follower exits quietly (0) without waiting for a commit that
/// may never come. Before, it learnt of the closed pipe only at its next write, so it ran on.
#[cfg(unix)]
#[test]
fn changelog_follow_exits_once_its_reader_goes_away_while_idle() {
    let f = bank();
    let (mut child, stdout) = follow_last(&f.path);
    drop(stdout);
    let out = exit_of(&mut child, "changelog --follow after its reader left");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

/// A followed journal that is removed, or replaced by another file, ends the follow with exit 1
/// and a line saying so: the old handle would read a file nobody writes to any more.
#[cfg(unix)]
#[test]
fn changelog_follow_fails_once_its_journal_is_removed_or_replaced() {
    let f = bank();
    let j = Journal::open(&f.path).unwrap();
    let (mut child, stdout) = follow_last(&f.path);
    // A commit just before the removal is still printed (from the old file) before the end.
    append(&j, 2, EVENTS + 1);
    std::fs::remove_file(&f.path).unwrap();
    let out = exit_of(&mut child, "changelog --follow of a removed journal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("removed while it was followed"), "{stderr}");
    let rest: Vec<Value> = BufReader::new(stdout)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert_eq!(rest[0]["seq"], EVENTS + 1);
    drop(j);

    let f = bank();
    let (mut child, _stdout) = follow_last(&f.path);
    let other = f.dir.path().join("other.redb");
    std::fs::copy(&f.path, &other).unwrap();
    std::fs::rename(&other, &f.path).unwrap();
    let out = exit_of(&mut child, "changelog --follow of a replaced journal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("replaced by another file"), "{stderr}");
}
