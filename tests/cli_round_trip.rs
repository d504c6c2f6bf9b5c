//! `stateline export` → `import` → `export` reproduces the same events, seqs, event ids,
//! timestamps, payload bytes, deleted prefixes and snapshots; `import` refuses a journal with
//! data, reports bad input by line, and accepts hand-written JSON payloads.
#![allow(clippy::unwrap_used)]

mod cli_support;

use cli_support::*;
use serde_json::{json, Value};

/// An export without its header line (which names the source journal and the time).
fn body(export: &str) -> Vec<&str> {
    export.lines().skip(1).collect()
}

#[test]
fn export_import_export_is_identical() {
    let f = bank();
    let first = stateline(["export", f.path.to_str().unwrap()]).ok().stdout;
    let copy = f.dir.path().join("copy.redb");
    let copy_db = copy.to_str().unwrap();
    let r = stateline_with_stdin(["import", copy_db, "--json"], first.as_bytes())
        .ok()
        .json();
    assert_eq!(r["events"], stored_events());
    assert_eq!(r["snapshots"], u64::from(ACCOUNTS) * 3);
    assert_eq!(r["persistence_ids"], u64::from(ACCOUNTS) + 1);

    let second = stateline(["export", copy_db]).ok().stdout;
    assert_eq!(body(&first).len(), body(&second).len());
    for (a, b) in body(&first).iter().zip(body(&second)) {
        assert_eq!(a, &b);
    }
    let header: Value = serde_json::from_str(second.lines().next().unwrap()).unwrap();
    assert_eq!(
        header["key_groups"], 64,
        "the copy keeps the key-group count"
    );

    // The copy is a sound journal with the same entities (sizes and offsets may differ).
    stateline(["verify", copy_db]).ok();
    let summary = |db: &str| -> Vec<Value> {
        let v = stateline(["ls", db, "--json"]).ok().json();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                json!([
                    e["entity_type"],
                    e["entity_id"],
                    e["key_group"],
                    e["events"],
                    e["highest_seq"],
                    e["deleted_to"],
                    e["snapshot_seq"],
                    e["snapshots"]
                ])
            })
            .collect()
    };
    assert_eq!(summary(f.path.to_str().unwrap()), summary(copy_db));

    // Into an existing but empty journal, from a file.
    let empty = f.dir.path().join("empty.redb");
    drop(open_new(&empty));
    let export_file = f.dir.path().join("bank.jsonl");
    std::fs::write(&export_file, &first).unwrap();
    let empty_db = empty.to_str().unwrap();
    stateline(["import", empty_db, "--input", export_file.to_str().unwrap()]).ok();
    assert_eq!(
        body(&stateline(["export", empty_db]).ok().stdout),
        body(&first)
    );
}

#[test]
fn a_filtered_export_round_trips_too() {
    let f = bank();
    let first = stateline(["export", f.path.to_str().unwrap(), "--key-groups", "0..32"])
        .ok()
        .stdout;
    let copy = f.dir.path().join("half.redb");
    stateline_with_stdin(["import", copy.to_str().unwrap()], first.as_bytes()).ok();
    let second = stateline(["export", copy.to_str().unwrap()]).ok().stdout;
    assert_eq!(body(&first), body(&second));
}

#[test]
fn import_refuses_a_journal_with_data_and_bad_lines() {
    let f = bank();
    let db = f.path.to_str().unwrap();
    let export = stateline(["export", db]).ok().stdout;
    let r = stateline_with_stdin(["import", db], export.as_bytes()).fails(1);
    assert!(r.stderr.contains("not empty"), "{}", r.stderr);

    let target = f.dir.path().join("t.redb");
    let t = target.to_str().unwrap();
    let bad = format!(
        "{}\n{{\"kind\":\"event\",\"seq\":\"x\"}}\n",
        export.lines().next().unwrap()
    );
    let r = stateline_with_stdin(["import", t], bad.as_bytes()).fails(1);
    assert!(r.stderr.contains("<stdin>:2"), "{}", r.stderr);

    // A gap in seqs is refused by the journal, naming the input line.
    let target = f.dir.path().join("gap.redb");
    let mut lines: Vec<&str> = export.lines().collect();
    let third_event = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"kind\":\"event\""))
        .nth(2)
        .unwrap()
        .0;
    lines.remove(third_event);
    let r = stateline_with_stdin(
        ["import", target.to_str().unwrap()],
        lines.join("\n").as_bytes(),
    )
    .fails(1);
    assert!(r.stderr.contains("<stdin>:"), "{}", r.stderr);
    assert!(r.stderr.contains("seq"), "{}", r.stderr);

    let fresh = f.dir.path().join("fresh.redb");
    let r = stateline_with_stdin(["import", fresh.to_str().unwrap()], b"garbage\n").fails(1);
    assert!(r.stderr.contains("<stdin>:1"), "{}", r.stderr);
    assert!(!fresh.exists(), "a bad first line creates nothing");

    let r = stateline(["import", t, "--input", "/nonexistent/export.jsonl"]).fails(1);
    assert!(
        r.stderr.contains("/nonexistent/export.jsonl"),
        "{}",
        r.stderr
    );
}

/// Seqs beyond the journal's largest seq (`Seq::MAX` = 2^63 − 1) in an export are bad input
/// naming the line (exit 1), not an overflow: an event seq and an entity's deleted prefix.
#[test]
fn import_refuses_seqs_beyond_the_largest_seq() {
    let dir = tempfile::tempdir().unwrap();
    let event = |seq: u64| {
        format!(
            r#"{{"kind":"event","entity_type":"note","entity_id":"n1","seq":{seq},"event_id":"0190f7c3-0000-7000-8000-000000000001","timestamp":"2025-01-31T12:00:00Z","manifest":{{"type_name":"note","version":1}},"payload":1}}"#
        )
    };
    let entity = |deleted_to: u64| {
        format!(
            r#"{{"kind":"entity","entity_type":"note","entity_id":"n1","highest_seq":{deleted_to},"deleted_to":{deleted_to}}}"#
        )
    };
    let max = i64::MAX as u64;
    for (i, (input, what)) in [
        (
            format!("{}\n{}\n", entity(0), event(u64::MAX)),
            "seq 18446744073709551615",
        ),
        (
            format!("{}\n{}\n", entity(0), event(max + 1)),
            "seq 9223372036854775808",
        ),
        (format!("{}\n{}\n", entity(0), event(0)), "seq 0"),
        (
            format!("{}\n", entity(u64::MAX)),
            "deleted_to 18446744073709551615",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let db = dir.path().join(format!("bad{i}.redb"));
        let r = stateline_with_stdin(["import", db.to_str().unwrap()], input.as_bytes()).fails(1);
        assert!(r.stderr.contains(what), "{what}: {}", r.stderr);
        assert!(r.stderr.contains("<stdin>:"), "{}", r.stderr);
    }
    // A header asking for more key groups than a journal takes is bad input too.
    for k in [0u64, 65_537, u64::from(u32::MAX)] {
        let db = dir.path().join(format!("kg{k}.redb"));
        let header = format!(r#"{{"kind":"header","export_version":1,"key_groups":{k}}}"#);
        let r = stateline_with_stdin(["import", db.to_str().unwrap()], header.as_bytes()).fails(1);
        assert!(r.stderr.contains("key_groups"), "{k}: {}", r.stderr);
        assert!(!db.exists(), "a refused header creates nothing");
    }
    // The largest seq itself imports and reads back.
    let db = dir.path().join("top.redb");
    let input = format!("{}\n{}\n", entity(max - 1), event(max));
    stateline_with_stdin(["import", db.to_str().unwrap()], input.as_bytes()).ok();
    let evs = stateline(["events", db.to_str().unwrap(), "note", "n1", "--json"])
        .ok()
        .json_lines();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["seq"], max);
}

/// An untyped `diff` lists the events between two points; when some of them were deleted it
/// refuses (as `replay` does) instead of listing the rest as if they were the whole difference.
#[test]
fn untyped_diff_refuses_points_across_a_deleted_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.redb");
    let event = |seq: u64| {
        format!(
            r#"{{"kind":"event","entity_type":"ledger","entity_id":"main","seq":{seq},"event_id":"0190f7c3-0000-7000-8000-00000000000{seq}","timestamp":"2025-01-31T12:00:00Z","manifest":{{"type_name":"entry","version":1}},"payload":{seq}}}"#
        )
    };
    let input = format!(
        "{}\n{}\n{}\n",
        r#"{"kind":"entity","entity_type":"ledger","entity_id":"main","highest_seq":5,"deleted_to":3}"#,
        event(4),
        event(5)
    );
    let d = db.to_str().unwrap();
    stateline_with_stdin(["import", d], input.as_bytes()).ok();
    for (a, b) in [("1", "3"), ("0", "5"), ("5", "2")] {
        let r = stateline(["diff", d, "ledger", "main", a, b]).fails(1);
        assert!(r.stderr.contains("were deleted"), "{a} {b}: {}", r.stderr);
    }
    let r = stateline(["diff", d, "ledger", "main", "3", "5", "--json"]).ok();
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let seqs: Vec<_> = out["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].clone())
        .collect();
    assert_eq!(seqs, vec![4, 5]);
    stateline(["diff", d, "ledger", "main", "2", "2"]).ok();
}

#[test]
fn hand_written_json_payloads_are_encoded() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hand.redb");
    let input = r#"{"kind":"entity","entity_type":"note","entity_id":"n1","highest_seq":2}
{"kind":"event","entity_type":"note","entity_id":"n1","seq":1,"event_id":"0190f7c3-0000-7000-8000-000000000001","timestamp":"2025-01-31T12:00:00Z","manifest":{"type_name":"note","version":1},"payload":{"Added":{"text":"hello","n":1}}}
{"kind":"event","entity_type":"note","entity_id":"n1","seq":2,"event_id":"0190f7c3-0000-7000-8000-000000000002","timestamp":"2025-01-31T12:00:01Z","manifest":{"type_name":"note","version":1},"payload":[1,2.5,null,true]}
{"kind":"snapshot","entity_type":"note","entity_id":"n1","seq":2,"timestamp":"2025-01-31T12:00:02Z","manifest":{"type_name":"note","version":1},"payload":{"count":2}}
"#;
    stateline_with_stdin(["import", db.to_str().unwrap()], input.as_bytes()).ok();
    let evs = stateline(["events", db.to_str().unwrap(), "note", "n1", "--json"])
        .ok()
        .json_lines();
    assert_eq!(
        evs[0]["payload"],
        json!({"Added": {"text": "hello", "n": 1}})
    );
    assert_eq!(evs[0]["event_id"], "0190f7c3-0000-7000-8000-000000000001");
    assert_eq!(evs[0]["timestamp"], "2025-01-31T12:00:00Z");
    assert_eq!(evs[1]["payload"], json!([1, 2.5, null, true]));
    let v = stateline(["replay", db.to_str().unwrap(), "note", "n1", "--json"])
        .ok()
        .json();
    assert_eq!(v["snapshot"]["payload"], json!({"count": 2}));
}

#[test]
fn a_journal_after_retention_round_trips() {
    let f = bank();
    let db = f.path.to_str().unwrap();
    stateline([
        "retain",
        db,
        "--keep-snapshots",
        "1",
        "--delete-covered-events",
    ])
    .ok();
    let first = stateline(["export", db]).ok().stdout;
    let entity: Value = serde_json::from_str(first.lines().nth(1).unwrap()).unwrap();
    assert_eq!(entity["events"], 0, "{entity}");
    let copy = f.dir.path().join("retained.redb");
    stateline_with_stdin(["import", copy.to_str().unwrap()], first.as_bytes()).ok();
    let second = stateline(["export", copy.to_str().unwrap()]).ok().stdout;
    assert_eq!(body(&first), body(&second));
    let v = stateline([
        "replay",
        copy.to_str().unwrap(),
        "account",
        "acc-07",
        "--json",
    ])
    .ok()
    .json();
    assert_eq!(
        v["snapshot"]["payload"],
        json!({"balance": balance(7, EVENTS)})
    );
}
