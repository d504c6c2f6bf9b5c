//! The CLI as a library with a registered entity type (`Cli::new().register::<Account>()`):
//! `replay` rebuilds the typed state (from the newest usable snapshot, as recovery does),
//! `diff` compares two typed states, and `verify` checks that every event decodes as its type.
#![allow(clippy::unwrap_used)]

mod cli_support;

use cli_support::*;
use serde_json::{json, Value};
use stateline::cli::{Cli, EXIT_CORRUPTED, EXIT_ERROR, EXIT_OK};
use stateline::{Manifest, PersistenceId, Seq};
use stateline_journal::NewEvent;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

fn typed(args: &[&str]) -> Out {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let argv = std::iter::once("bank-cli").chain(args.iter().copied());
    let code = Cli::new()
        .register::<Account>()
        .run_with(argv, &mut stdout, &mut stderr);
    Out {
        code,
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn ok(args: &[&str]) -> Value {
    let o = typed(args);
    assert_eq!(o.code, EXIT_OK, "{}", o.stderr);
    o.json()
}

#[test]
fn replay_rebuilds_the_typed_state() {
    let f = bank();
    let db = f.path.to_str().unwrap();
    let v = ok(&[
        "replay", db, "account", "acc-01", "--to-seq", "25", "--json",
    ]);
    assert_eq!(v["typed"], true);
    assert_eq!(v["state"], json!({"balance": balance(1, 25)}));
    assert_eq!(v["snapshot_seq"], 20);
    assert_eq!(v["events_applied"], 5);

    let v = ok(&["replay", db, "account", "acc-01", "--to-seq", "0", "--json"]);
    assert_eq!(v["state"], json!({"balance": 0}));
    assert_eq!(v["snapshot_seq"], Value::Null);

    let v = ok(&["replay", db, "account", "acc-01", "--to-seq", "7", "--json"]);
    assert_eq!(v["state"], json!({"balance": balance(1, 7)}));
    assert_eq!(v["events_applied"], 7);

    // acc-00's first 10 events are deleted: its snapshot at 10 is the floor.
    let v = ok(&[
        "replay", db, "account", "acc-00", "--to-seq", "15", "--json",
    ]);
    assert_eq!(v["state"], json!({"balance": balance(0, 15)}));
    assert_eq!(v["snapshot_seq"], 10);
    let o = typed(&["replay", db, "account", "acc-00", "--to-seq", "5"]);
    assert_eq!(o.code, EXIT_ERROR);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);

    let human = typed(&["replay", db, "account", "acc-02"]);
    assert_eq!(human.code, 0);
    assert!(
        human
            .stdout
            .contains(&format!("\"balance\": {}", balance(2, EVENTS))),
        "{}",
        human.stdout
    );
    // Unregistered types in the same binary fall back to the untyped view.
    let v = ok(&["replay", db, "ledger", "main", "--json"]);
    assert_eq!(v["typed"], false);
    assert_eq!(v["events"].as_array().unwrap().len() as u64, LEDGER_EVENTS);
}

#[test]
fn a_snapshot_that_does_not_decode_is_skipped() {
    let f = bank();
    let j = open_new(&f.path);
    // A newer snapshot version the code cannot read, and garbage at the current version.
    j.save_snapshot_blocking(&pid(3), Seq(30), Manifest::new("account", 2), vec![0x80])
        .unwrap();
    j.save_snapshot_blocking(&pid(3), Seq(20), Manifest::new("account", 1), vec![0xc1])
        .unwrap();
    drop(j);
    let db = f.path.to_str().unwrap();
    let v = ok(&["replay", db, "account", "acc-03", "--json"]);
    assert_eq!(v["state"], json!({"balance": balance(3, EVENTS)}));
    assert_eq!(v["snapshot_seq"], 10);
    assert_eq!(v["events_applied"], 20);
    assert_eq!(v["notes"].as_array().unwrap().len(), 2, "{v}");
}

#[test]
fn diff_compares_two_typed_states() {
    let f = bank();
    let db = f.path.to_str().unwrap();
    let v = ok(&["diff", db, "account", "acc-04", "10", "20", "--json"]);
    assert_eq!(v["typed"], true);
    assert_eq!(
        v["changes"],
        json!([{"op": "changed", "path": "/balance", "from": balance(4, 10), "to": balance(4, 20)}])
    );
    let same = ok(&["diff", db, "account", "acc-04", "12", "12", "--json"]);
    assert_eq!(same["changes"], json!([]));
    let human = typed(&["diff", db, "account", "acc-04", "0", "3"]);
    assert!(
        human
            .stdout
            .contains(&format!("~ /balance: 0 → {}", balance(4, 3))),
        "{}",
        human.stdout
    );
}

#[test]
fn verify_checks_every_event_decodes_as_its_type() {
    let f = bank();
    let db = f.path.to_str().unwrap();
    let v = ok(&["verify", db, "--json"]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["typed"], json!(["account"]));

    // Valid MessagePack that is not an account event, and bytes that are not MessagePack.
    let j = open_new(&f.path);
    let odd = PersistenceId::parse("account", "odd").unwrap();
    let not_an_event =
        NewEvent::encode(Manifest::new("account", 1), &json!({"Closed": 1})).unwrap();
    j.append_blocking(&odd, Seq(1), vec![not_an_event]).unwrap();
    let junk = PersistenceId::parse("ledger", "junk").unwrap();
    let junk_event = NewEvent::new(Manifest::new("ledger", 1), vec![0xc1, 0x00]);
    j.append_blocking(&junk, Seq(1), vec![junk_event]).unwrap();
    drop(j);

    let o = typed(&["verify", db, "--json"]);
    assert_eq!(o.code, EXIT_CORRUPTED, "{}", o.stderr);
    let problems = o.json()["problems"].clone();
    let locations: Vec<&str> = problems
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["location"].as_str().unwrap())
        .collect();
    assert_eq!(
        locations,
        vec!["account|odd seq 1", "ledger|junk seq 1"],
        "{problems}"
    );

    // The stock binary (no types) only sees the payload that is not MessagePack.
    let r = stateline(["verify", db, "--json"]).fails(2);
    let stock = r.json();
    assert_eq!(stock["problems"].as_array().unwrap().len(), 1, "{stock}");
    assert_eq!(stock["problems"][0]["location"], "ledger|junk seq 1");

    // Typed replay of the odd event fails as corruption, naming it.
    let o = typed(&["replay", db, "account", "odd"]);
    assert_eq!(o.code, EXIT_CORRUPTED);
    assert!(o.stderr.contains("account|odd seq 1"), "{}", o.stderr);
}

#[test]
fn help_and_usage_errors_in_process() {
    let o = typed(&["--help"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("Examples:"));
    let o = typed(&["replay"]);
    assert_eq!(o.code, EXIT_ERROR);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(format!("{:?}", Cli::new().register::<Account>()).contains("account"));
}
