//! The journal's decoders of stored bytes, opened to the fuzz targets in `fuzz/` (feature
//! `fuzzing`; not part of the supported API). Each function is a thin wrapper over the
//! crate-private decoder that reads that kind of value from disk, and, like it, must return an
//! error for any bytes instead of panicking (G7): that is what the fuzzer checks.
//!
//! The metadata rows (header, writer state, generation rows, entity rows) are crate-private
//! types, so their decoders return the row's canonical re-encoding instead of the row: decoding
//! that again must succeed and give the same bytes, a round-trip check the targets assert.

use crate::codec;
use crate::error::{CodecError, JournalError};
use crate::ids::{KeyGroup, PersistenceId, Seq};
use crate::keys;
use crate::meta::{GenerationRow, Header, State};
use crate::record::{EventRecord, SnapshotRecord};
use crate::writer::decode_row;

/// A stored event envelope, as read from a log segment or a chunk frame.
///
/// # Errors
/// As the journal's decoder: a [`CodecError`] for bytes that are not a sealed event.
pub fn decode_event(bytes: &[u8]) -> Result<EventRecord, CodecError> {
    codec::decode_event(bytes)
}

/// A stored event envelope expected to belong to `known` (replay's path, which reuses `known`
/// when the envelope names it).
///
/// # Errors
/// As [`decode_event`].
pub fn decode_event_as(bytes: &[u8], known: &PersistenceId) -> Result<EventRecord, CodecError> {
    codec::decode_event_as(bytes, Some(known))
}

/// The stored form of `rec` (to check that decoded events re-encode to an equal record).
///
/// # Errors
/// [`CodecError::Encode`].
pub fn encode_event(rec: &EventRecord) -> Result<Vec<u8>, CodecError> {
    codec::encode_event(rec)
}

/// A stored snapshot envelope.
///
/// # Errors
/// A [`CodecError`] for bytes that are not a sealed snapshot.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotRecord, CodecError> {
    codec::decode_snapshot(bytes)
}

/// The stored form of `rec`.
///
/// # Errors
/// [`CodecError::Encode`].
pub fn encode_snapshot(rec: &SnapshotRecord) -> Result<Vec<u8>, CodecError> {
    codec::encode_snapshot(rec)
}

/// The journal header (`meta/header`), decoded and re-encoded.
///
/// # Errors
/// A [`CodecError`] for bytes that are not a sealed header.
pub fn decode_header(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    codec::encode_meta(&codec::decode_meta::<Header>(bytes)?)
}

/// The format version that opening reads from a header that does not decode (G9).
pub fn header_format_version(bytes: &[u8]) -> Option<u32> {
    codec::leading_u32(bytes)
}

/// The writer state (`meta/state`), decoded and re-encoded.
///
/// # Errors
/// A [`CodecError`] for bytes that are not a sealed state row.
pub fn decode_state(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    codec::encode_meta(&codec::decode_meta::<State>(bytes)?)
}

/// A packed-generation row, decoded and re-encoded.
///
/// # Errors
/// A [`CodecError`] for bytes that are not a sealed generation row.
pub fn decode_generation_row(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    codec::encode_meta(&codec::decode_meta::<GenerationRow>(bytes)?)
}

/// An entity row stored under entity key `key` (sealed with its key), decoded as readers and
/// the writer do and re-encoded under the same key.
///
/// # Errors
/// [`JournalError::Corrupted`] for bytes that are not a row sealed under `key`.
pub fn decode_entity_row(key: &[u8], bytes: &[u8]) -> Result<Vec<u8>, JournalError> {
    let row = decode_row(key, bytes)?;
    codec::encode_keyed(key, &row).map_err(|e| JournalError::Io(e.to_string()))
}

/// The frames of a chunk row, each a stored event or the error that ends the chunk.
pub fn chunk_frames(chunk: &[u8]) -> impl Iterator<Item = Result<&[u8], CodecError>> {
    codec::Frames::new(chunk)
}

/// A chunk row holding `stored_events` as frames.
pub fn chunk_of<'a>(stored_events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut chunk = Vec::new();
    for e in stored_events {
        codec::push_frame(&mut chunk, e);
    }
    chunk
}

/// The events of a compact chunk row (format 3) encoded again by the writer's encoder, one
/// chunk for all of them: reading the result gives the same events. A chunk of no events
/// (which the writer never writes) gives the header alone, which reads as no events.
///
/// # Errors
/// [`CodecError`] for bytes that are not a compact chunk whose events all decode.
pub fn compact_chunk_reencoded(chunk: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut w = codec::CompactWriter::default();
    for e in codec::CompactEvents::new(chunk)? {
        w.push(&e?);
    }
    if w.len() == 0 {
        return Ok(codec::compact_chunk_sealed(&[]));
    }
    Ok(w.finish().to_vec())
}

/// A compact chunk row holding `body` behind its header and a valid checksum (so that fuzzing
/// reaches the event decoder).
pub fn compact_chunk_sealed(body: &[u8]) -> Vec<u8> {
    codec::compact_chunk_sealed(body)
}

/// An entity key: its key group and persistence id.
///
/// # Errors
/// [`JournalError::Corrupted`] for bytes that are not an entity key.
pub fn parse_entity_key(key: &[u8]) -> Result<(KeyGroup, PersistenceId), JournalError> {
    keys::parse_entity_key(key)
}

/// The seq of a snapshot key.
///
/// # Errors
/// [`JournalError::Corrupted`] for a key too short to hold one.
pub fn snapshot_key_seq(key: &[u8]) -> Result<Seq, JournalError> {
    keys::snapshot_key_seq(key)
}
