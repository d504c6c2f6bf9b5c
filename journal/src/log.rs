//! Log segments: where appended events sit until they are packed.
//!
//! A segment is one redb table keyed by a `u64` offset. Format 1 stored one event per row,
//! keyed by its offset. Format 2 stores the events of one group commit in **log rows** of
//! frames (`len u32 LE ‖ stored event`, as in chunk rows), keyed by the offset of the row's
//! first event; the events of a row have consecutive offsets. redb's cost per row dominates
//! its cost per byte (see `FORMAT.md`), so a commit of hundreds of events writes a few rows
//! instead of hundreds. Which layout a segment has is recorded in its state entry
//! ([`crate::meta::SegmentInfo::rows`]); segments of format 1 keep being read as they are
//! until they are packed.

use std::ops::Range;

use redb::{AccessGuard, ReadableTable};

use crate::codec;
use crate::error::{JournalError, Result};

/// A log row closes once adding the next event would take it past this many bytes (an event
/// larger than this gets a row of its own). A redb leaf holding one row of this size (16 bytes
/// of leaf header, key and offset besides) fills one 8 KiB page: a row of 32 KiB took a 64 KiB
/// page. Measured with `cargo bench --bench journal` (persist, events/s in one sequence of
/// runs): rows of 4,032 bytes 258k, 8,128 265k, 16,320 250k, 32,704 249k.
pub(crate) const ROW_BYTES: usize = (8 << 10) - 64;

/// One stored event found in a log segment.
pub(crate) struct Found<'a> {
    guard: AccessGuard<'a, &'static [u8]>,
    range: Range<usize>,
}

impl Found<'_> {
    /// The stored event's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.guard.value()[self.range.clone()]
    }
}

/// Where a frame sits in its row.
fn frame_range(row: &[u8], frame: &[u8]) -> Range<usize> {
    let start = frame.as_ptr() as usize - row.as_ptr() as usize;
    start..start + frame.len()
}

fn row_corrupted(segment: u64, row: u64, e: impl ToString) -> JournalError {
    let name = crate::keys::segment_table_name(segment);
    JournalError::corrupted(format!("{name}/{row}"), e)
}

/// The stored event at `offset` in the table of log segment `segment`, or `None` when the
/// segment has no such event (for instance it was committed after the read began).
///
/// # Errors
/// [`JournalError::Corrupted`] when a row's frames do not parse; I/O errors from redb.
pub(crate) fn get<'a, T>(
    table: &'a T,
    segment: u64,
    rows: bool,
    offset: u64,
) -> Result<Option<Found<'a>>>
where
    T: ReadableTable<u64, &'static [u8]>,
{
    if !rows {
        return Ok(table.get(offset)?.map(|guard| {
            let len = guard.value().len();
            Found {
                guard,
                range: 0..len,
            }
        }));
    }
    let Some(item) = table.range(..=offset)?.next_back() else {
        return Ok(None);
    };
    let (k, guard) = item?;
    let first = k.value();
    let mut found = None;
    {
        let row = guard.value();
        for (i, frame) in codec::Frames::new(row).enumerate() {
            let frame = frame.map_err(|e| row_corrupted(segment, first, e))?;
            if first + i as u64 == offset {
                found = Some(frame_range(row, frame));
                break;
            }
        }
    }
    Ok(found.map(|range| Found { guard, range }))
}

/// Calls `f(offset, stored event)` for the events with offsets in `offsets`, in offset order,
/// until `f` returns `false`.
///
/// # Errors
/// [`JournalError::Corrupted`] when a row's frames do not parse; what `f` returns; I/O errors.
pub(crate) fn for_each<T>(
    table: &T,
    segment: u64,
    rows: bool,
    offsets: Range<u64>,
    mut f: impl FnMut(u64, &[u8]) -> Result<bool>,
) -> Result<()>
where
    T: ReadableTable<u64, &'static [u8]>,
{
    if offsets.is_empty() {
        return Ok(());
    }
    if !rows {
        for item in table.range(offsets)? {
            let (k, v) = item?;
            if !f(k.value(), v.value())? {
                break;
            }
        }
        return Ok(());
    }
    // The row holding the first offset may start before it.
    let start = match table.range(..=offsets.start)?.next_back() {
        Some(item) => item?.0.value(),
        None => offsets.start,
    };
    for item in table.range(start..offsets.end)? {
        let (k, v) = item?;
        let first = k.value();
        for (i, frame) in codec::Frames::new(v.value()).enumerate() {
            let frame = frame.map_err(|e| row_corrupted(segment, first, e))?;
            let offset = first + i as u64;
            if offset < offsets.start {
                continue;
            }
            if offset >= offsets.end || !f(offset, frame)? {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Groups the stored events of one commit, `(offset, bytes)` with consecutive offsets, into
/// log rows `(first offset, frames)` of at most [`ROW_BYTES`].
pub(crate) fn build_rows(events: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
    let mut left: usize = events.iter().map(|(_, b)| b.len() + 4).sum();
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut expected = None;
    for (offset, bytes) in events {
        let frame = bytes.len() + 4;
        let fits = |row: &Vec<u8>| row.len() + frame <= ROW_BYTES;
        if !(expected == Some(*offset) && out.last().is_some_and(|(_, row)| fits(row))) {
            out.push((*offset, Vec::with_capacity(left.min(ROW_BYTES).max(frame))));
        }
        if let Some((_, row)) = out.last_mut() {
            codec::push_frame(row, bytes);
        }
        left -= frame;
        expected = Some(offset + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn event(offset: u64, len: usize) -> (u64, Vec<u8>) {
        (offset, vec![offset as u8; len])
    }

    fn table_with(events: &[(u64, Vec<u8>)], rows: bool) -> (tempfile::TempDir, redb::Database) {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            if rows {
                for (k, v) in build_rows(events) {
                    t.insert(k, v.as_slice()).unwrap();
                }
            } else {
                for (k, v) in events {
                    t.insert(*k, v.as_slice()).unwrap();
                }
            }
        }
        txn.commit().unwrap();
        (dir, db)
    }

    #[test]
    fn rows_are_bounded_and_every_event_is_found_where_it_was_put() {
        use redb::ReadableDatabase;
        // One commit: events of 1,000 bytes, one larger than a row, small ones after it.
        let mut events: Vec<(u64, Vec<u8>)> = (1..=80).map(|o| event(o, 1000)).collect();
        events.push(event(81, ROW_BYTES + 10));
        events.extend((82..=90).map(|o| event(o, 10)));
        let rows = build_rows(&events);
        assert!(rows.len() >= 4, "{} rows", rows.len());
        assert!(rows
            .iter()
            .all(|(_, r)| r.len() <= ROW_BYTES || r.len() == ROW_BYTES + 14));
        for rows_layout in [true, false] {
            let (_dir, db) = table_with(&events, rows_layout);
            let rtx = db.begin_read().unwrap();
            let t = rtx.open_table(T).unwrap();
            for (o, bytes) in &events {
                let f = get(&t, 0, rows_layout, *o).unwrap().expect("event found");
                assert_eq!(f.bytes(), bytes.as_slice(), "offset {o}");
            }
            assert!(get(&t, 0, rows_layout, 91).unwrap().is_none());
            assert!(get(&t, 0, rows_layout, 0).unwrap().is_none());
            // Any window, in order, starting mid-row.
            for (from, to) in [(1, 91), (5, 6), (33, 85), (81, 82), (90, 200), (91, 95)] {
                let mut seen = Vec::new();
                for_each(&t, 0, rows_layout, from..to, |o, b| {
                    assert_eq!(b, events[(o - 1) as usize].1.as_slice());
                    seen.push(o);
                    Ok(true)
                })
                .unwrap();
                let want: Vec<u64> = (from..to.min(91)).collect();
                assert_eq!(seen, want, "window {from}..{to}");
            }
            // `f` can stop the walk.
            let mut n = 0;
            for_each(&t, 0, rows_layout, 1..91, |_, _| {
                n += 1;
                Ok(n < 3)
            })
            .unwrap();
            assert_eq!(n, 3);
        }
    }

    #[test]
    fn a_damaged_row_is_a_typed_error() {
        use redb::ReadableDatabase;
        let events: Vec<(u64, Vec<u8>)> = (1..=4).map(|o| event(o, 10)).collect();
        let (_dir, db) = table_with(&events, true);
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            // A frame length that runs past the row.
            let mut row = build_rows(&events).remove(0).1;
            row[14] = 0xff;
            t.insert(1, row.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let rtx = db.begin_read().unwrap();
        let t = rtx.open_table(T).unwrap();
        assert!(matches!(
            get(&t, 0, true, 4),
            Err(JournalError::Corrupted { .. })
        ));
        let r = for_each(&t, 0, true, 1..5, |_, _| Ok(true));
        assert!(matches!(r, Err(JournalError::Corrupted { .. })));
    }

    /// The G9 fixture (`tests/older_formats_keep_opening.rs`) really holds what those tests rely
    /// on: packed generations and a format-1 segment with events in it.
    #[test]
    fn the_format_1_fixture_has_an_unpacked_segment_of_one_row_per_event() {
        use redb::ReadableDatabase;
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1.redb");
        let db = redb::ReadOnlyDatabase::open(&path).unwrap();
        let rtx = db.begin_read().unwrap();
        let meta = rtx.open_table(crate::keys::META).unwrap();
        let state = crate::read::read_state(&meta).unwrap();
        let last = state.segments.last().expect("an unpacked segment");
        assert!(!last.rows);
        assert!(last.events > 40, "{} events", last.events);
        let name = crate::keys::segment_table_name(last.number);
        let t = rtx.open_table(crate::keys::segment_table(&name)).unwrap();
        let rows = t.range::<u64>(..).unwrap().count() as u64;
        assert_eq!(rows, last.events, "one row per event");
        let gens = rtx.open_table(crate::keys::GENERATIONS).unwrap();
        assert_eq!(gens.range::<u64>(..).unwrap().count(), 6);
    }
}
