//! `stateline` on files that are not good journals: a corrupted copy (flipped bytes in a record,
//! flipped bytes in the middle of the file, a truncated file), a file that is not a journal, a
//! missing file, a redb file without journal tables, and a journal of a newer format. Every
//! command exits with the documented code (1, 2 or 3) and one line on stderr naming the file —
//! never a panic or a backtrace.
#![allow(clippy::unwrap_used)]

mod cli_support;

use std::path::Path;

use cli_support::*;
use stateline::journal::FORMAT_VERSION;

/// Every command, as arguments after the journal path is known.
fn every_command(db: &str) -> Vec<Vec<String>> {
    let v = |args: &[&str]| args.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        v(&["info", db]),
        v(&["ls", db]),
        v(&["stats", db]),
        v(&["events", db, "account", "acc-03"]),
        v(&["changelog", db]),
        v(&["replay", db, "account", "acc-03"]),
        v(&["diff", db, "account", "acc-03", "1", "5"]),
        v(&["verify", db]),
        v(&["export", db]),
        v(&["retain", db, "--keep-snapshots", "1", "--dry-run"]),
        v(&["retain", db, "--keep-snapshots", "1"]),
        v(&["compact", db]),
    ]
}

fn flip(path: &Path, at: usize, len: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let end = (at + len).min(bytes.len());
    for b in &mut bytes[at..end] {
        *b ^= 0xff;
    }
    std::fs::write(path, bytes).unwrap();
}

/// Flips every copy of `pattern` in the file (a record's bytes: its checksum no longer matches).
fn corrupt_pattern(path: &Path, pattern: &[u8]) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let mut hits = 0;
    let mut i = 0;
    while i + pattern.len() <= bytes.len() {
        if &bytes[i..i + pattern.len()] == pattern {
            bytes[i + pattern.len() / 2] ^= 0x55;
            hits += 1;
            i += pattern.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(path, bytes).unwrap();
    hits
}

#[test]
fn a_file_that_is_not_a_journal_exits_1_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, not a database\n".repeat(100)).unwrap();
    let db = text.to_str().unwrap();
    for args in every_command(db) {
        let r = stateline(&args).fails(1);
        assert!(r.stderr.contains(db), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr.contains("not a stateline journal"),
            "{args:?}: {}",
            r.stderr
        );
    }
    let r = stateline_with_stdin(["import", db], b"").fails(1);
    assert!(r.stderr.contains("empty input"), "{}", r.stderr);
    let export = stateline(["export", bank().path.to_str().unwrap()])
        .ok()
        .stdout;
    let r = stateline_with_stdin(["import", db], export.as_bytes()).fails(1);
    assert!(r.stderr.contains("not a stateline journal"), "{}", r.stderr);
    assert_eq!(
        std::fs::read_to_string(&text).unwrap(),
        "hello, not a database\n".repeat(100)
    );

    // A redb file without journal tables, and a missing file.
    let plain = dir.path().join("plain.redb");
    drop(redb::Database::create(&plain).unwrap());
    let r = stateline(["info", plain.to_str().unwrap()]).fails(1);
    assert!(r.stderr.contains("not a stateline journal"), "{}", r.stderr);
    let missing = dir.path().join("missing.redb");
    for args in every_command(missing.to_str().unwrap()) {
        let r = stateline(&args).fails(1);
        assert!(r.stderr.contains("missing.redb"), "{args:?}: {}", r.stderr);
    }
    assert!(
        !missing.exists(),
        "a read or maintenance command created the file"
    );
    let d = stateline(["info", dir.path().to_str().unwrap()]).fails(1);
    assert!(d.stderr.contains("directory"), "{}", d.stderr);
}

/// A socket (like a device or FIFO) has length 0 but is not an empty file: every command,
/// `import` included, exits 1 naming it and leaves it in place (an older build's `import`
/// replaced such a path with a new journal, `/dev/null` included when run as root).
#[cfg(unix)]
#[test]
fn a_special_file_is_not_a_journal_and_stays_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("journal.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let db = socket.to_str().unwrap();
    let export = stateline(["export", bank().path.to_str().unwrap()])
        .ok()
        .stdout;
    let mut runs: Vec<Run> = every_command(db).iter().map(stateline).collect();
    runs.push(stateline_with_stdin(["import", db], export.as_bytes()));
    for r in runs {
        let r = r.fails(1);
        assert!(r.stderr.contains(db), "{}", r.stderr);
        assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    }
    let t = std::fs::symlink_metadata(&socket).unwrap().file_type();
    assert!(t.is_socket(), "the socket was replaced: {t:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn write_newer_header(path: &Path) {
    const META: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("stateline.meta");
    let db = redb::Database::create(path).unwrap();
    let w = db.begin_write().unwrap();
    {
        let mut t = w.open_table(META).unwrap();
        let body = rmp_serde::to_vec(&(FORMAT_VERSION + 1, "future", 7u8)).unwrap();
        let mut sealed = crc32fast::hash(&body).to_le_bytes().to_vec();
        sealed.extend_from_slice(&body);
        t.insert("header", sealed.as_slice()).unwrap();
    }
    w.commit().unwrap();
}

#[test]
fn a_newer_format_exits_3() {
    let f = bank();
    write_newer_header(&f.path);
    let db = f.path.to_str().unwrap();
    for args in every_command(db) {
        let r = stateline(&args).fails(3);
        assert!(r.stderr.contains(db), "{args:?}: {}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("format version {}", FORMAT_VERSION + 1)),
            "{args:?}: {}",
            r.stderr
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("copy.redb");
    std::fs::copy(&f.path, &target).unwrap();
    let r = stateline_with_stdin(
        ["import", target.to_str().unwrap()],
        b"{\"kind\":\"header\",\"export_version\":1}\n",
    )
    .fails(3);
    assert!(r.stderr.contains("newer"), "{}", r.stderr);
}

#[test]
fn a_corrupted_record_fails_verification_with_its_location() {
    let f = bank();
    // The op id of acc-03's 7th event appears in exactly that event's payload.
    let op_id = match event(3, 6) {
        Event::Deposited { op_id, .. } | Event::Withdrawn { op_id, .. } => op_id,
    };
    assert!(corrupt_pattern(&f.path, op_id.as_bytes()) >= 1);
    let db = f.path.to_str().unwrap();
    let r = stateline(["verify", db, "--json"]).fails(2);
    let v = r.json();
    assert_eq!(v["ok"], false);
    let problems = v["problems"].as_array().unwrap();
    assert!(!problems.is_empty());
    assert!(
        problems.iter().any(|p| {
            let loc = p["location"].as_str().unwrap();
            loc.contains("account|acc-03") || loc.contains("chunk") || loc.contains("stateline.")
        }),
        "{problems:?}"
    );
    assert!(r.stderr.contains("verification failed"), "{}", r.stderr);
    let r = stateline(["verify", db]).fails(2);
    assert!(r.stdout.contains("problem"), "{}", r.stdout);
    let r = stateline(["events", db, "account", "acc-03"]);
    assert_eq!(r.code, 2, "{r:?}");
    r.one_error_line();
    // Whatever else fails, it fails cleanly.
    for args in every_command(db) {
        let r = stateline(&args);
        assert!([0, 1, 2].contains(&r.code), "{args:?}: {r:?}");
        r.one_error_line();
    }
}

#[test]
fn flipped_bytes_in_the_middle_never_panic() {
    for fraction in [0.25, 0.5, 0.75] {
        let f = bank();
        let len = std::fs::metadata(&f.path).unwrap().len() as usize;
        flip(&f.path, (len as f64 * fraction) as usize, 512);
        let db = f.path.to_str().unwrap();
        for args in every_command(db) {
            let r = stateline(&args);
            assert!([0, 1, 2].contains(&r.code), "{fraction} {args:?}: {r:?}");
            r.one_error_line();
            if r.code != 0 {
                assert!(r.stderr.contains(db), "{args:?}: {}", r.stderr);
            }
        }
    }
}

#[test]
fn a_truncated_file_fails_verification() {
    for keep in [0.5, 0.9] {
        let f = bank();
        let bytes = std::fs::read(&f.path).unwrap();
        std::fs::write(&f.path, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
        let db = f.path.to_str().unwrap();
        let r = stateline(["verify", db, "--json"]).fails(2);
        assert_eq!(r.json()["ok"], false);
        assert!(r.stderr.contains("verification failed"), "{}", r.stderr);
        // Commands that read only what survived may succeed; the rest fail cleanly.
        for args in every_command(db) {
            let r = stateline(&args);
            assert!([0, 1, 2].contains(&r.code), "{keep} {args:?}: {r:?}");
            r.one_error_line();
            if r.code != 0 {
                assert!(r.stderr.contains(db), "{args:?}: {}", r.stderr);
            }
        }
        let r = stateline(["export", db]);
        if keep < 0.6 {
            assert_eq!(r.code, 2, "{r:?}");
        }
    }
}
