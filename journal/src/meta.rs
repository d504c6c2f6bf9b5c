//! Rows that describe the journal rather than hold events: the header written at creation, the
//! writer state, per-entity rows and packed-generation rows. All are sealed rmp values.

use serde::{Deserialize, Serialize};

use crate::error::CodecError;

/// On-disk format version this build writes. Older versions keep opening (G9); newer ones are
/// refused with [`crate::JournalError::UnsupportedFormat`]. Version 2 groups the events of a
/// commit into log rows (see `FORMAT.md`); version 3 packs chunk rows in the compact encoding
/// (an older journal's chunks of frames keep being read). An older journal opened for writing
/// is marked with this version before anything new is written.
pub const FORMAT_VERSION: u32 = 3;

/// Written once when the journal is created, checked on every open.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub format_version: u32,
    pub journal_id: [u8; 16],
    pub created_at_micros: i64,
    pub key_groups: u32,
    pub hash: String,
}

/// The writer's durable state, rewritten in every write transaction (one small row).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct State {
    /// Offset the next appended event gets.
    pub next_offset: u64,
    /// Unpacked log segments, oldest first. The last one receives appends.
    pub segments: Vec<SegmentInfo>,
    /// Number of the next segment to open.
    pub next_segment: u64,
    /// Entity key up to which (exclusive) the oldest segment has been packed, if a pack is
    /// under way.
    pub pack_cursor: Option<Vec<u8>>,
    /// Events written to chunk rows of the generation being packed so far.
    #[serde(default)]
    pub pack_events: u64,
    /// A merge of old generations under way, if any.
    #[serde(default)]
    pub merge: Option<MergeState>,
}

/// Consecutive packed generations being merged into one (fewer chunks per entity). Their chunk
/// rows and generation rows stay until the last entity is merged; then one transaction swaps
/// them for the target's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct MergeState {
    /// The generations merged, oldest first (contiguous offsets).
    pub sources: Vec<u64>,
    /// The generation their chunks move to.
    pub target: u64,
    pub first_offset: u64,
    pub end_offset: u64,
    /// Entity key up to which (exclusive) entities have been merged.
    pub cursor: Option<Vec<u8>>,
    /// Events written to the target's chunk rows so far.
    pub events: u64,
}

/// An unpacked log segment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    /// Segment number; also the generation its chunks get when packed.
    pub number: u64,
    /// Offset of its first event.
    pub first_offset: u64,
    /// Number of events appended to it.
    pub events: u64,
    /// Its events are grouped into log rows keyed by their first offset (format 2); `false`
    /// (format 1): one row per event, keyed by its offset.
    #[serde(default)]
    pub rows: bool,
}

/// A chunk row of one entity: events `first_seq..=last_seq` packed in `generation`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChunkRef {
    pub generation: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub events: u32,
    /// Bytes the chunk row's value takes: its events as they are stored in it (compact
    /// encoding, header included; frames in chunks of formats 1 and 2).
    pub bytes: u32,
}

/// Per-persistence-id row, written when its events are packed and on deletes and snapshots.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct EntityRow {
    /// Highest seq ever appended (never decreases, also after deletes).
    pub highest_seq: u64,
    /// Events with seq ≤ this are deleted.
    pub deleted_to: u64,
    /// Packed chunks, ascending seq.
    pub chunks: Vec<ChunkRef>,
    /// Newest snapshot seq, 0 if none.
    pub snapshot_seq: u64,
    /// Number of stored snapshots.
    pub snapshots: u32,
    /// Time of the last append that has been packed (µs since the epoch, UTC).
    pub last_write_micros: i64,
}

impl EntityRow {
    /// Checks that every seq in the row is at most [`crate::Seq::MAX`] (what this build
    /// writes), so that no reader or writer computing the next seq from a damaged row
    /// overflows.
    pub(crate) fn check_seqs(&self) -> Result<(), CodecError> {
        let seqs = [self.highest_seq, self.deleted_to, self.snapshot_seq];
        let chunk_seqs = self.chunks.iter().flat_map(|c| [c.first_seq, c.last_seq]);
        seqs.into_iter()
            .chain(chunk_seqs)
            .try_for_each(crate::codec::check_seq_at_most_max)
    }
}

/// A packed generation: the offsets its chunks hold.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GenerationRow {
    pub generation: u64,
    pub first_offset: u64,
    /// Exclusive.
    pub end_offset: u64,
    /// Events stored in the generation's chunk rows (lowered when deletes remove chunks), so
    /// a reader can tell that it found all of them.
    #[serde(default)]
    pub events: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::ids::Seq;
    use crate::writer::decode_row;

    /// An entity row holding a seq beyond `Seq::MAX` (damaged or forged) is corruption, not a
    /// row the writer counts on from (its next seq would overflow); every field is checked.
    #[test]
    fn entity_rows_with_seqs_beyond_seq_max_are_corrupted() {
        let key = b"\0\0\0\x01account\0a".as_slice();
        let chunk = ChunkRef {
            generation: 1,
            first_seq: 1,
            last_seq: 2,
            events: 2,
            bytes: 10,
        };
        let good = EntityRow {
            highest_seq: Seq::MAX.0,
            deleted_to: 3,
            chunks: vec![chunk],
            snapshot_seq: 3,
            snapshots: 1,
            last_write_micros: 0,
        };
        let bad = Seq::MAX.0 + 1;
        let mut rows = vec![(good.clone(), true)];
        for field in 0..5 {
            let mut row = good.clone();
            match field {
                0 => row.highest_seq = bad,
                1 => row.deleted_to = bad,
                2 => row.snapshot_seq = bad,
                3 => row.chunks[0].first_seq = bad,
                _ => row.chunks[0].last_seq = u64::MAX,
            }
            rows.push((row, false));
        }
        for (row, ok) in rows {
            let bytes = codec::encode_keyed(key, &row).expect("encodes");
            let decoded = decode_row(key, &bytes);
            match (ok, decoded) {
                (true, Ok(r)) => assert_eq!(r, row),
                (false, Err(crate::JournalError::Corrupted { .. })) => {}
                (_, other) => panic!("{row:?}: {other:?}"),
            }
        }
    }
}
