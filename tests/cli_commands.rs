//! Every `stateline` command on a good bank journal: `--json` output parsed (not grepped) and
//! checked against what was written, human output present, exit code 0; `--help` with an
//! example on every command; usage errors exit 1 with one line.
#![allow(clippy::unwrap_used)]

mod cli_support;

use cli_support::*;
use serde_json::{json, Value};

fn db(f: &Fixture) -> &str {
    f.path.to_str().unwrap()
}

/// The JSON of an event's payload as `events` prints it (maps with sorted keys, UUIDs as text).
fn payload(a: u32, round: u64) -> Value {
    match event(a, round) {
        Event::Deposited { op_id, amount } => {
            json!({"Deposited": {"op_id": op_id.to_string(), "amount": amount}})
        }
        Event::Withdrawn { op_id, amount } => {
            json!({"Withdrawn": {"op_id": op_id.to_string(), "amount": amount}})
        }
    }
}

#[test]
fn info_counts_what_is_stored() {
    let f = bank();
    let v = stateline(["info", db(&f), "--json"]).ok().json();
    assert_eq!(v["format_version"], stateline::journal::FORMAT_VERSION);
    assert_eq!(v["key_groups"], 64);
    assert_eq!(v["entity_types"], 2);
    assert_eq!(v["persistence_ids"], u64::from(ACCOUNTS) + 1);
    assert_eq!(v["events"], stored_events());
    assert_eq!(
        v["snapshots"],
        u64::from(ACCOUNTS) * EVENTS / SNAPSHOT_EVERY
    );
    assert_eq!(v["highest_offset"], highest_offset().0);
    assert!(v["file_bytes"].as_u64().unwrap() > 0);
    assert!(v["journal_id"].as_str().unwrap().len() == 36);
    let human = stateline(["info", db(&f)]).ok().stdout;
    assert!(
        human.contains("key groups:") && human.contains("64"),
        "{human}"
    );
    // The global flag works before the command too.
    assert_eq!(stateline(["--json", "info", db(&f)]).ok().json(), v);
}

#[test]
fn ls_filters_sorts_and_limits() {
    let f = bank();
    let all = stateline(["ls", db(&f), "--json"]).ok().json();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), ACCOUNTS as usize + 1);
    let acc0 = all.iter().find(|e| e["entity_id"] == "acc-00").unwrap();
    assert_eq!(acc0["events"], EVENTS - DELETED_TO);
    assert_eq!(acc0["deleted_to"], DELETED_TO);
    assert_eq!(acc0["highest_seq"], EVENTS);
    assert_eq!(acc0["snapshot_seq"], EVENTS);
    assert_eq!(acc0["snapshots"], 3);
    assert!(acc0["last_write"].is_string());
    let ledger = all.iter().find(|e| e["entity_type"] == "ledger").unwrap();
    assert_eq!(ledger["snapshot_seq"], Value::Null);

    let accounts = stateline(["ls", db(&f), "--type", "account", "--json"])
        .ok()
        .json();
    assert_eq!(accounts.as_array().unwrap().len(), ACCOUNTS as usize);

    let low = stateline(["ls", db(&f), "--key-groups", "0..32", "--json"])
        .ok()
        .json();
    let low = low.as_array().unwrap();
    assert!(low.iter().all(|e| e["key_group"].as_u64().unwrap() < 32));
    let high = stateline(["ls", db(&f), "--key-groups", "32..=63", "--json"])
        .ok()
        .json();
    assert_eq!(low.len() + high.as_array().unwrap().len(), all.len());

    let by_bytes = stateline(["ls", db(&f), "--sort", "bytes", "--limit", "5", "--json"])
        .ok()
        .json();
    let sizes: Vec<u64> = by_bytes
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes.len(), 5);
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
    let by_events = stateline(["ls", db(&f), "--sort", "events", "--json"])
        .ok()
        .json();
    let last = by_events.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["entity_type"], "ledger");

    let human = stateline(["ls", db(&f), "--sort", "last-write"])
        .ok()
        .stdout;
    assert!(human.starts_with("TYPE"), "{human}");
    assert_eq!(human.lines().count(), all.len() + 1);
}

#[test]
fn stats_show_types_key_groups_and_snapshot_ages() {
    let f = bank();
    let v = stateline(["stats", db(&f), "--json", "--top", "3", "--buckets", "8"])
        .ok()
        .json();
    let types = v["types"].as_array().unwrap();
    assert_eq!(types[0]["entity_type"], "account");
    assert_eq!(types[0]["entities"], ACCOUNTS);
    assert_eq!(
        types[0]["events"],
        u64::from(ACCOUNTS) * EVENTS - DELETED_TO
    );
    assert_eq!(types[1]["entity_type"], "ledger");
    assert_eq!(types[1]["events"], LEDGER_EVENTS);
    let kg = &v["key_groups"];
    assert_eq!(kg["count"], 64);
    let hist = kg["histogram"].as_array().unwrap();
    assert_eq!(hist.len(), 8);
    assert_eq!(hist[0]["from"], 0);
    assert_eq!(hist[7]["to"], 64);
    let in_hist: u64 = hist.iter().map(|h| h["entities"].as_u64().unwrap()).sum();
    assert_eq!(in_hist, u64::from(ACCOUNTS) + 1);
    let groups: u64 = kg["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["entities"].as_u64().unwrap())
        .sum();
    assert_eq!(groups, in_hist);
    assert_eq!(v["largest"].as_array().unwrap().len(), 3);
    let ages = &v["snapshot_ages"];
    assert_eq!(ages["without_snapshot"], 1);
    assert_eq!(ages["max"], LEDGER_EVENTS);
    assert_eq!(ages["most_behind"][0]["entity_type"], "ledger");
    assert_eq!(ages["histogram"][0]["entities"], ACCOUNTS);
    let human = stateline(["stats", db(&f)]).ok().stdout;
    assert!(
        human.contains("Key groups") && human.contains('#'),
        "{human}"
    );
}

#[test]
fn events_are_decoded_to_json_in_seq_order() {
    let f = bank();
    let lines = stateline(["events", db(&f), "account", "acc-01", "--json"])
        .ok()
        .json_lines();
    assert_eq!(lines.len() as u64, EVENTS);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["seq"], i as u64 + 1);
        assert_eq!(l["entity_type"], "account");
        assert_eq!(l["manifest"], json!({"type_name": "account", "version": 1}));
        assert_eq!(l["payload"], payload(1, i as u64));
        assert!(l["offset"].as_u64().unwrap() >= 1);
    }
    let offsets: Vec<u64> = lines
        .iter()
        .map(|l| l["offset"].as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));

    let range = stateline([
        "events",
        db(&f),
        "account",
        "acc-01",
        "--from",
        "5",
        "--to",
        "7",
        "--json",
    ])
    .ok()
    .json_lines();
    let seqs: Vec<u64> = range.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![5, 6, 7]);

    let trimmed = stateline(["events", db(&f), "account", "acc-00", "--json"])
        .ok()
        .json_lines();
    assert_eq!(trimmed.len() as u64, EVENTS - DELETED_TO);
    assert_eq!(trimmed[0]["seq"], DELETED_TO + 1);

    let human = stateline(["events", db(&f), "account", "acc-01", "--limit", "2"])
        .ok()
        .stdout;
    assert_eq!(human.lines().count(), 3, "{human}");
    assert!(human.contains("Deposited"), "{human}");

    let missing = stateline(["events", db(&f), "account", "nobody"]).fails(1);
    assert!(
        missing.stderr.contains("no persistence id account|nobody"),
        "{}",
        missing.stderr
    );
}

#[test]
fn changelog_is_in_global_order_without_deleted_events() {
    let f = bank();
    let lines = stateline(["changelog", db(&f), "--json"]).ok().json_lines();
    assert_eq!(lines.len() as u64, stored_events());
    let offsets: Vec<u64> = lines
        .iter()
        .map(|l| l["offset"].as_u64().unwrap())
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(*offsets.last().unwrap(), highest_offset().0);
    assert!(!lines
        .iter()
        .any(|l| l["entity_id"] == "acc-00" && l["seq"].as_u64().unwrap() <= DELETED_TO));
    // Round-robin appends: offset 2 is acc-01's first event.
    let second = lines.iter().find(|l| l["offset"] == 2).unwrap();
    assert_eq!(second["entity_id"], "acc-01");
    assert_eq!(second["payload"], payload(1, 0));

    let from = highest_offset().0 - 9;
    let tail = stateline([
        "changelog",
        db(&f),
        "--from-offset",
        &from.to_string(),
        "--json",
    ])
    .ok()
    .json_lines();
    assert_eq!(tail.len(), 10);
    assert_eq!(tail[0]["offset"], from);

    let human = stateline(["changelog", db(&f), "--from-offset", &from.to_string()])
        .ok()
        .stdout;
    assert_eq!(human.lines().count(), 11, "{human}");
    assert!(human.contains("ledger|main"), "{human}");
}

#[test]
fn untyped_replay_shows_the_snapshot_and_the_events_after_it() {
    let f = bank();
    let v = stateline([
        "replay",
        db(&f),
        "account",
        "acc-01",
        "--to-seq",
        "25",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(v["typed"], false);
    assert_eq!(v["seq"], 25);
    assert_eq!(v["highest_seq"], EVENTS);
    assert_eq!(v["snapshot"]["seq"], 20);
    assert_eq!(v["snapshot"]["payload"], json!({"balance": balance(1, 20)}));
    let seqs: Vec<u64> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![21, 22, 23, 24, 25]);

    let early = stateline([
        "replay",
        db(&f),
        "account",
        "acc-01",
        "--to-seq",
        "3",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(early["snapshot"], Value::Null);
    assert_eq!(early["events"].as_array().unwrap().len(), 3);

    let latest = stateline(["replay", db(&f), "account", "acc-02", "--json"])
        .ok()
        .json();
    assert_eq!(latest["seq"], EVENTS);
    assert_eq!(
        latest["snapshot"]["payload"],
        json!({"balance": balance(2, EVENTS)})
    );
    assert_eq!(latest["events"].as_array().unwrap().len(), 0);

    // --at: the time of acc-02's 12th event replays to seq 12.
    let evs = stateline(["events", db(&f), "account", "acc-02", "--json"])
        .ok()
        .json_lines();
    let at = evs[11]["timestamp"].as_str().unwrap().to_string();
    let v = stateline(["replay", db(&f), "account", "acc-02", "--at", &at, "--json"])
        .ok()
        .json();
    assert_eq!(v["seq"], 12);
    assert_eq!(v["snapshot"]["seq"], 10);
    let before = stateline([
        "replay",
        db(&f),
        "account",
        "acc-02",
        "--at",
        "2000-01-01",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(before["seq"], 0);

    // Deleted events and no snapshot below the point: refused with one line.
    let e = stateline(["replay", db(&f), "account", "acc-00", "--to-seq", "5"]).fails(1);
    assert!(e.stderr.contains("deleted"), "{}", e.stderr);
    // But from the snapshot at the deletion point it works.
    let v = stateline([
        "replay",
        db(&f),
        "account",
        "acc-00",
        "--to-seq",
        "15",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(v["snapshot"]["seq"], 10);
    stateline(["replay", db(&f), "account", "acc-01", "--to-seq", "99"]).fails(1);
    stateline([
        "replay",
        db(&f),
        "account",
        "acc-01",
        "--to-seq",
        "3",
        "--at",
        "2000-01-01",
    ])
    .fails(1);

    let human = stateline(["replay", db(&f), "account", "acc-01", "--to-seq", "25"])
        .ok()
        .stdout;
    assert!(human.contains("snapshot at seq 20"), "{human}");
    assert!(
        human.contains(&format!("\"balance\": {}", balance(1, 20))),
        "{human}"
    );
}

#[test]
fn untyped_diff_lists_the_events_between_two_points() {
    let f = bank();
    let v = stateline(["diff", db(&f), "account", "acc-03", "4", "8", "--json"])
        .ok()
        .json();
    assert_eq!(v["typed"], false);
    assert_eq!(v["from_seq"], 4);
    assert_eq!(v["to_seq"], 8);
    let seqs: Vec<u64> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![5, 6, 7, 8]);
    let human = stateline(["diff", db(&f), "account", "acc-03", "4", "8"])
        .ok()
        .stdout;
    assert!(human.contains("not registered"), "{human}");
}

#[test]
fn verify_passes_on_a_good_journal() {
    let f = bank();
    let v = stateline(["verify", db(&f), "--json"]).ok().json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["integrity"], "ok");
    assert_eq!(v["entities"], u64::from(ACCOUNTS) + 1);
    assert_eq!(v["events"], stored_events());
    assert_eq!(v["snapshots"], u64::from(ACCOUNTS) * 3);
    assert!(
        v["chunks"].as_u64().unwrap() > 0,
        "fixture should have packed chunks: {v}"
    );
    assert_eq!(v["payloads"], stored_events() + u64::from(ACCOUNTS) * 3);
    assert_eq!(v["problems"], json!([]));
    let human = stateline(["verify", db(&f)]).ok().stdout;
    assert!(human.contains("OK"), "{human}");
    let skipped = stateline(["verify", db(&f), "--skip-pages", "--json"])
        .ok()
        .json();
    assert_eq!(skipped["integrity"], "skipped (--skip-pages)");
}

/// A journal that was not closed cleanly (a copy taken while a writer had it open): verify's
/// page check recovers it, as the application's next open would; with --skip-pages, verify
/// exits 1 saying to run it without --skip-pages (before, it pointed back at `verify`).
#[test]
fn verify_recovers_a_journal_not_closed_cleanly_unless_told_to_skip_pages() {
    let f = bank();
    let unclean = f.dir.path().join("unclean.redb");
    {
        let j = stateline::Journal::open(&f.path).unwrap();
        std::fs::copy(&f.path, &unclean).unwrap();
        drop(j);
    }
    let u = unclean.to_str().unwrap();
    let r = stateline(["verify", u, "--skip-pages"]).fails(1);
    r.one_error_line();
    assert!(
        r.stderr.contains("not closed cleanly") && r.stderr.contains("without --skip-pages"),
        "{}",
        r.stderr
    );
    let v = stateline(["verify", u, "--json"]).ok().json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["integrity"], "ok");
    assert_eq!(v["events"], stored_events());
}

#[test]
fn export_writes_entities_events_and_snapshots() {
    let f = bank();
    let lines = stateline(["export", db(&f)]).ok().json_lines();
    assert_eq!(lines[0]["kind"], "header");
    assert_eq!(lines[0]["key_groups"], 64);
    let kinds = |k: &str| lines.iter().filter(|l| l["kind"] == k).count() as u64;
    assert_eq!(kinds("entity"), u64::from(ACCOUNTS) + 1);
    assert_eq!(kinds("event"), stored_events());
    assert_eq!(kinds("snapshot"), u64::from(ACCOUNTS) * 3);
    let acc0 = lines
        .iter()
        .find(|l| l["kind"] == "entity" && l["entity_id"] == "acc-00")
        .unwrap();
    assert_eq!(acc0["deleted_to"], DELETED_TO);
    assert!(lines
        .iter()
        .filter(|l| l["kind"] == "event")
        .all(|l| l["payload_base64"].is_string() && l.get("offset").is_none()));

    let ledger = stateline(["export", db(&f), "--type", "ledger"])
        .ok()
        .json_lines();
    assert_eq!(ledger.len() as u64, 1 + 1 + LEDGER_EVENTS);
    assert_eq!(ledger[2]["payload"], json!({"entry": 0}));
}

#[test]
fn retain_dry_run_changes_nothing_then_applies() {
    let f = bank();
    let before = stateline(["ls", db(&f), "--json"]).ok().json();
    let args = [
        "retain",
        db(&f),
        "--keep-snapshots",
        "1",
        "--delete-covered-events",
        "--json",
    ];
    let dry = stateline(args.iter().copied().chain(["--dry-run"]))
        .ok()
        .json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["snapshots_deleted"], u64::from(ACCOUNTS) * 2);
    assert_eq!(
        dry["events_deleted"],
        u64::from(ACCOUNTS) * EVENTS - DELETED_TO
    );
    assert_eq!(dry["entities_deleted"], 0);
    assert_eq!(stateline(["ls", db(&f), "--json"]).ok().json(), before);

    let done = stateline(args).ok().json();
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["snapshots_deleted"], dry["snapshots_deleted"]);
    assert_eq!(done["events_deleted"], dry["events_deleted"]);
    assert_eq!(done["actions"], dry["actions"]);
    let after = stateline(["ls", db(&f), "--type", "account", "--json"])
        .ok()
        .json();
    for e in after.as_array().unwrap() {
        assert_eq!(e["events"], 0, "{e}");
        assert_eq!(e["snapshots"], 1, "{e}");
        assert_eq!(e["deleted_to"], EVENTS, "{e}");
    }
    // The state survives in the snapshot.
    let v = stateline(["replay", db(&f), "account", "acc-05", "--json"])
        .ok()
        .json();
    assert_eq!(
        v["snapshot"]["payload"],
        json!({"balance": balance(5, EVENTS)})
    );

    // TTL: everything was written more than a millisecond ago.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let ttl = stateline(["retain", db(&f), "--idle-for", "1ms", "--json"])
        .ok()
        .json();
    assert_eq!(ttl["entities_deleted"], u64::from(ACCOUNTS) + 1);
    assert_eq!(stateline(["ls", db(&f), "--json"]).ok().json(), json!([]));
    stateline(["verify", db(&f)]).ok();

    let human = stateline(["retain", db(&f), "--keep-snapshots", "1", "--dry-run"])
        .ok()
        .stdout;
    assert!(human.contains("would delete 0 entities"), "{human}");
    let e = stateline(["retain", db(&f)]).fails(1);
    assert!(e.stderr.contains("nothing to do"), "{}", e.stderr);
    stateline(["retain", db(&f), "--keep-snapshots", "0"]).fails(1);
}

#[test]
fn compact_reports_sizes() {
    let f = bank();
    stateline([
        "retain",
        db(&f),
        "--keep-snapshots",
        "1",
        "--delete-covered-events",
    ])
    .ok();
    let v = stateline(["compact", db(&f), "--json"]).ok().json();
    let (before, after) = (v["before"].as_u64().unwrap(), v["after"].as_u64().unwrap());
    assert!(after > 0 && after <= before, "{v}");
    assert_eq!(v["reclaimed"], before - after);
    assert_eq!(after, std::fs::metadata(&f.path).unwrap().len());
    let human = stateline(["compact", db(&f)]).ok().stdout;
    assert!(human.contains("reclaimed"), "{human}");
    stateline(["verify", db(&f)]).ok();
}

#[test]
fn every_command_has_help_with_an_example() {
    let commands = [
        "info",
        "ls",
        "stats",
        "events",
        "changelog",
        "replay",
        "diff",
        "verify",
        "export",
        "import",
        "retain",
        "compact",
    ];
    for c in commands {
        let r = stateline([c, "--help"]).ok();
        assert!(r.stdout.contains("Examples:"), "{c}: {}", r.stdout);
        assert!(
            r.stdout.contains(&format!("stateline {c} ")),
            "{c}: {}",
            r.stdout
        );
        assert!(r.stderr.is_empty());
    }
    let top = stateline(["--help"]).ok().stdout;
    for c in commands {
        assert!(top.contains(c), "{top}");
    }
    assert!(top.contains("Exit codes"), "{top}");
    assert!(stateline(["--version"])
        .ok()
        .stdout
        .starts_with("stateline "));
}

#[test]
fn usage_errors_exit_1_with_one_line() {
    let f = bank();
    stateline::<[&str; 0], &str>([]).fails(1);
    stateline(["frobnicate"]).fails(1);
    stateline(["info"]).fails(1);
    stateline(["ls", db(&f), "--sort", "size"]).fails(1);
    let e = stateline(["ls", db(&f), "--key-groups", "9..3"]).fails(1);
    assert!(e.stderr.contains("key-group range"), "{}", e.stderr);
    stateline(["replay", db(&f), "account", "acc-01", "--at", "yesterday"]).fails(1);
    stateline(["retain", db(&f), "--idle-for", "soon"]).fails(1);
    stateline(["events", db(&f), "", "x"]).fails(1);
    stateline(["changelog", db(&f), "--from-offset", "-3"]).fails(1);
}
