//! Writes the seed corpora under `fuzz/corpus/<target>/`: real rows of a small journal for
//! `envelope`, encoded user events and states for `payload`, and for `journal_file` a few row
//! edits and byte patches of that journal, which it writes to `fuzz/seeds/small_journal.rle`.
//! Run from `fuzz/`: `cargo run --example make_seeds` (then rebuild the targets).

use std::fs;
use std::path::Path;

use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use stateline_fuzz::journal_input::{rle_decode, rle_encode, storage_with};
use stateline_fuzz::{sample_events, sample_state, small_journal, Envelope};
use uuid::Uuid;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("stateline.meta");
const BYTES_TABLES: [&str; 3] = [
    "stateline.entities",
    "stateline.chunks",
    "stateline.snapshots",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new("corpus");
    let journal = small_journal()?;

    // envelope: each kind of stored value of the small journal, as stored (control byte 0) and
    // as a body to seal (control byte 1), and the keys.
    let dir = root.join("envelope");
    fs::create_dir_all(&dir)?;
    let db = redb::Database::builder().create_with_backend(storage_with(&journal)?)?;
    let rtx = db.begin_read()?;
    let write = |name: &str, control: u8, bytes: &[u8]| -> std::io::Result<()> {
        let mut v = vec![control];
        v.extend_from_slice(bytes);
        fs::write(dir.join(name), v)
    };
    let meta = rtx.open_table(META)?;
    for name in ["header", "state"] {
        if let Some(v) = meta.get(name)? {
            write(name, 0, v.value())?;
            write(&format!("{name}-body"), 1, &v.value()[4..])?;
        }
    }
    for table in BYTES_TABLES {
        let t = rtx.open_table(TableDefinition::<&[u8], &[u8]>::new(table))?;
        if let Some(row) = t.iter()?.next() {
            let (k, v) = row?;
            let short = table.trim_start_matches("stateline.");
            write(&format!("{short}-key"), 0, k.value())?;
            if table == "stateline.entities" {
                // The key in front, its length in the control byte.
                let mut kv = k.value().to_vec();
                kv.extend_from_slice(&v.value()[4..]);
                write("entity-row-body", (k.value().len() as u8) << 1 | 1, &kv)?;
            } else {
                write(short, 0, v.value())?;
            }
        };
    }
    let gens = rtx.open_table(TableDefinition::<u64, &[u8]>::new("stateline.generations"))?;
    if let Some(row) = gens.iter()?.next() {
        write("generation", 0, row?.1.value())?;
    }
    for handle in rtx.list_tables()? {
        if handle.name().starts_with("stateline.log.") {
            let t = rtx.open_table(TableDefinition::<u64, &[u8]>::new(handle.name()))?;
            if let Some(row) = t.iter()?.next() {
                let (_, v) = row?;
                write("event", 0, v.value())?;
                write("event-body", 1, &v.value()[4..])?;
                break;
            };
        }
    }
    drop((meta, gens, rtx, db));

    // payload: events, a state and an envelope, named (as the actor layer writes) and compact.
    let dir = root.join("payload");
    fs::create_dir_all(&dir)?;
    let events = sample_events();
    for (i, ev) in events.iter().enumerate().step_by(2) {
        fs::write(dir.join(format!("event-{i}")), rmp_serde::to_vec_named(ev)?)?;
    }
    fs::write(dir.join("event-compact"), rmp_serde::to_vec(&events[3])?)?;
    fs::write(dir.join("state"), rmp_serde::to_vec_named(&sample_state())?)?;
    let env = Envelope {
        id: Uuid::from_u128(1),
        reply_to: Some("shard-1".into()),
        body: events[1].clone(),
        trace: vec![("region".into(), 7)],
    };
    fs::write(dir.join("envelope"), rmp_serde::to_vec_named(&env)?)?;
    fs::write(dir.join("events"), rmp_serde::to_vec(&events)?)?;

    // journal_file: a few edits of the small journal's rows, and of its bytes (see the target
    // for the encodings). The journal itself is built by the target (it is 136 KiB).
    let dir = root.join("journal_file");
    fs::create_dir_all(&dir)?;
    let seeds: [(&str, &[u8]); 9] = [
        // The whole file: the redb magic and little else.
        (
            "file-magic",
            b"\x00redb\x1a\x0a\xa9\x0d\x0a\x00\x00\x00\x00",
        ),
        // No edit: the small journal as it is.
        ("edit-none", &[1]),
        // Replace the first entity row by a resealed row of the wrong shape.
        ("edit-entity-row", &[1, 0x04, 1, 0, 4, 0x93, 1, 2, 3]),
        // Reseal the first entity row as `[3, 0, [[0, 1, 3, u32::MAX, 100]], 2, 1, 0]`: a chunk
        // reference claiming u32::MAX events (replay once reserved memory for all of them and
        // aborted; see the regression test in journal/src/read.rs).
        (
            "edit-entity-row-huge-chunk-count",
            &[
                1, 0x04, 1, 0, 17, 0x96, 3, 0, 0x91, 0x95, 0, 1, 3, 0xce, 0xff, 0xff, 0xff, 0xff,
                100, 2, 1, 0,
            ],
        ),
        // Delete the second chunk row.
        ("edit-delete-chunk", &[1, 0x01, 2, 1, 0]),
        // Flip bytes of the state row and reseal it.
        ("edit-state", &[1, 0x07, 0, 1, 2, 0x10, 0x20]),
        // Flip a byte of a stored event in a log segment, opened read-only.
        ("edit-log-read-only", &[9, 0x03, 5, 0, 3, 0, 0, 1]),
        // Overwrite bytes in the second page, opened without the page check.
        ("patch-page", &[6, 0x10, 0x10, 0, 4, 0xde, 0xad, 0xbe, 0xef]),
        // Truncate the file in the middle.
        ("patch-truncate", &[2, 0, 0x80, 0, 0]),
    ];
    for (name, bytes) in seeds {
        fs::write(dir.join(name), bytes)?;
    }
    fs::create_dir_all("seeds")?;
    let rle = rle_encode(&journal);
    assert_eq!(rle_decode(&rle).as_deref(), Some(&journal[..]));
    fs::write("seeds/small_journal.rle", rle)?;
    println!("seeds written; the journal is {} bytes", journal.len());
    Ok(())
}
