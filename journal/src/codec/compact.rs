//! Compact chunks (format 3): one entity's events of one generation, each stored as what
//! differs from the event before it. A chunk of frames repeats the persistence id, the manifest,
//! full-width offsets and timestamps and a checksum in every event (~80 bytes around a
//! 100-byte payload); a compact chunk stores them once or as small deltas, behind one checksum.
//!
//! Layout: [`COMPACT_MAGIC`] ‖ `crc32 (IEEE, LE u32)` of the rest ‖ events, each a sequence of
//! MessagePack values: `seq − previous seq` (uint ≥ 1), `offset − previous offset` (uint ≥ 1),
//! `timestamp − previous timestamp` (int, µs, wrapping), `event id` (bin of 16 bytes), the
//! manifest (`nil` when it is the previous event's, else `type name` (str) then `version`
//! (uint)), `payload` (bin). The first event's "previous" values are 0 and it states its
//! manifest.

use super::{check_seq_and_offset, crc32, Headers, CRC_LEN};
use crate::error::CodecError;

/// How a compact chunk begins: a frame of length 0, which no chunk of frames holds (a stored
/// event is never empty), so readers tell the two encodings apart by their first bytes.
pub(crate) const COMPACT_MAGIC: [u8; 4] = [0; 4];

/// Bytes of a compact chunk before its first event.
const HEAD_BYTES: usize = COMPACT_MAGIC.len() + CRC_LEN;

/// `body` behind a compact chunk's header, with its checksum (for fuzzing and tests).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn compact_chunk_sealed(body: &[u8]) -> Vec<u8> {
    let mut chunk = COMPACT_MAGIC.to_vec();
    chunk.extend_from_slice(&crc32(&[body]).to_le_bytes());
    chunk.extend_from_slice(body);
    chunk
}

/// One event as a chunk holds it, its fields borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkEvent<'a> {
    pub seq: u64,
    pub offset: u64,
    pub event_id: [u8; 16],
    pub timestamp_micros: i64,
    pub manifest: &'a str,
    pub version: u32,
    pub payload: &'a [u8],
}

/// Whether `chunk` is a compact chunk (else a chunk of frames).
pub(crate) fn is_compact(chunk: &[u8]) -> bool {
    chunk.starts_with(&COMPACT_MAGIC)
}

/// What the next event is encoded against.
#[derive(Debug, Default, Clone)]
struct Prev {
    seq: u64,
    offset: u64,
    timestamp_micros: i64,
    /// `None` before the first event.
    manifest: Option<(String, u32)>,
}

/// What [`CompactWriter::undo`] restores: the buffer's length and the previous event's
/// fields, and its manifest only if the push replaced it (no copy of the name per event).
#[derive(Debug)]
struct Undo {
    len: usize,
    seq: u64,
    offset: u64,
    timestamp_micros: i64,
    manifest: Option<Option<(String, u32)>>,
}

/// Builds one compact chunk at a time in a buffer it reuses.
#[derive(Debug, Default)]
pub(crate) struct CompactWriter {
    buf: Vec<u8>,
    prev: Prev,
    events: usize,
    /// State before the last [`Self::push`], for [`Self::undo`].
    undo: Option<Undo>,
}

impl CompactWriter {
    /// Bytes of the chunk under way (0 while it holds no event).
    pub(crate) fn len(&self) -> usize {
        if self.events == 0 {
            0
        } else {
            self.buf.len()
        }
    }

    /// Appends `e` (its seq and offset above the last event's: callers check, since a chunk
    /// out of order does not decode); returns the bytes it added to the chunk, the header's
    /// included for the first event.
    pub(crate) fn push(&mut self, e: &ChunkEvent<'_>) -> usize {
        use rmp::encode as w;
        let header = if self.events == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(&COMPACT_MAGIC);
            self.buf.extend_from_slice(&[0; CRC_LEN]);
            HEAD_BYTES
        } else {
            0
        };
        let before = self.buf.len();
        let mut undo = Undo {
            len: before,
            seq: self.prev.seq,
            offset: self.prev.offset,
            timestamp_micros: self.prev.timestamp_micros,
            manifest: None,
        };
        let mut out = rmp::encode::ByteBuf::from_vec(std::mem::take(&mut self.buf));
        // Writing to a ByteBuf cannot fail: its error type is uninhabited.
        let Ok(_) = w::write_uint(&mut out, e.seq.wrapping_sub(self.prev.seq));
        let Ok(_) = w::write_uint(&mut out, e.offset.wrapping_sub(self.prev.offset));
        let delta = e.timestamp_micros.wrapping_sub(self.prev.timestamp_micros);
        let Ok(_) = w::write_sint(&mut out, delta);
        let Ok(()) = w::write_bin(&mut out, &e.event_id);
        let same = self
            .prev
            .manifest
            .as_ref()
            .is_some_and(|(name, v)| name == e.manifest && *v == e.version);
        if same {
            let Ok(()) = w::write_nil(&mut out);
        } else {
            let Ok(()) = w::write_str(&mut out, e.manifest);
            let Ok(_) = w::write_uint(&mut out, u64::from(e.version));
            let old = self
                .prev
                .manifest
                .replace((e.manifest.to_owned(), e.version));
            undo.manifest = Some(old);
        }
        self.undo = Some(undo);
        let Ok(()) = w::write_bin(&mut out, e.payload);
        self.buf = out.into_vec();
        self.prev.seq = e.seq;
        self.prev.offset = e.offset;
        self.prev.timestamp_micros = e.timestamp_micros;
        self.events += 1;
        header + self.buf.len() - before
    }

    /// Takes back the last [`Self::push`] (once).
    pub(crate) fn undo(&mut self) {
        if let Some(u) = self.undo.take() {
            self.buf.truncate(u.len);
            self.prev.seq = u.seq;
            self.prev.offset = u.offset;
            self.prev.timestamp_micros = u.timestamp_micros;
            if let Some(m) = u.manifest {
                self.prev.manifest = m;
            }
            self.events -= 1;
        }
    }

    /// The finished chunk, checksum written; the next push starts a new chunk.
    pub(crate) fn finish(&mut self) -> &[u8] {
        if self.events == 0 {
            return &[];
        }
        let crc = crc32(&[&self.buf[HEAD_BYTES..]]).to_le_bytes();
        self.buf[COMPACT_MAGIC.len()..HEAD_BYTES].copy_from_slice(&crc);
        self.events = 0;
        self.prev = Prev::default();
        self.undo = None;
        &self.buf
    }
}

/// The events of a compact chunk, checked against its checksum first.
pub(crate) struct CompactEvents<'a> {
    rest: Headers<'a>,
    prev: Prev,
    manifest: Option<(&'a str, u32)>,
    failed: bool,
}

impl<'a> CompactEvents<'a> {
    /// Reads `chunk` (which [`is_compact`]).
    ///
    /// # Errors
    /// [`CodecError`] when it is too short or its checksum does not match.
    pub(crate) fn new(chunk: &'a [u8]) -> Result<Self, CodecError> {
        if chunk.len() < HEAD_BYTES || !is_compact(chunk) {
            return Err(CodecError::Truncated {
                needed: HEAD_BYTES,
                found: chunk.len(),
            });
        }
        let stored = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        let body = &chunk[HEAD_BYTES..];
        let actual = crc32(&[body]);
        if stored != actual {
            return Err(CodecError::Checksum {
                stored,
                computed: actual,
            });
        }
        Ok(Self {
            rest: Headers(body),
            prev: Prev::default(),
            manifest: None,
            failed: false,
        })
    }

    fn read_one(&mut self) -> Option<ChunkEvent<'a>> {
        let r = &mut self.rest;
        let seq_delta: u64 = r.int()?;
        let seq = self.prev.seq.checked_add(seq_delta)?;
        let offset_delta: u64 = r.int()?;
        let offset = self.prev.offset.checked_add(offset_delta)?;
        let timestamp_micros = self.prev.timestamp_micros.wrapping_add(r.int::<i64>()?);
        let event_id: [u8; 16] = r.bin()?.try_into().ok()?;
        if r.0.first() == Some(&0xc0) {
            r.take(1)?;
        } else {
            let name = std::str::from_utf8(r.str_()?).ok()?;
            let version: u32 = r.int()?;
            self.manifest = Some((name, version));
        }
        let (manifest, version) = self.manifest?;
        let payload = r.bin()?;
        if seq_delta == 0 || offset_delta == 0 {
            return None;
        }
        self.prev.seq = seq;
        self.prev.offset = offset;
        self.prev.timestamp_micros = timestamp_micros;
        Some(ChunkEvent {
            seq,
            offset,
            event_id,
            timestamp_micros,
            manifest,
            version,
            payload,
        })
    }
}

impl<'a> Iterator for CompactEvents<'a> {
    type Item = Result<ChunkEvent<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.0.is_empty() {
            return None;
        }
        let e = self
            .read_one()
            .ok_or_else(|| CodecError::Invalid("compact chunk: an event does not decode".into()));
        let e = e.and_then(|e| check_seq_and_offset(e.seq, e.offset).map(|()| e));
        self.failed = e.is_err();
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(
        seq: u64,
        offset: u64,
        ts: i64,
        manifest: &'static str,
        payload: &'static [u8],
    ) -> ChunkEvent<'static> {
        ChunkEvent {
            seq,
            offset,
            event_id: [seq as u8; 16],
            timestamp_micros: ts,
            manifest,
            version: 1,
            payload,
        }
    }

    #[test]
    fn events_round_trip_and_a_manifest_is_stored_once() {
        let events = [
            ev(7, 100, 1_700_000_000_000_000, "Deposited", b"a"),
            ev(8, 10_100, 1_700_000_000_000_050, "Deposited", b"bb"),
            ev(9, 10_101, 1_699_000_000_000_000, "Withdrawn", b""),
            ev(10, u64::from(u32::MAX) * 4, -5, "Withdrawn", &[0xc0; 300]),
        ];
        let mut w = CompactWriter::default();
        let mut sizes = Vec::new();
        for e in &events {
            sizes.push(w.push(e));
        }
        // The second event: deltas of 1 and 2 bytes, the id, nil for the manifest, the payload.
        assert_eq!(sizes[1], 1 + 3 + 1 + 18 + 1 + 4);
        let chunk = w.finish().to_vec();
        assert!(is_compact(&chunk));
        // The first push counts the header.
        assert_eq!(chunk.len(), sizes.iter().sum::<usize>());
        assert!(sizes[0] > HEAD_BYTES);
        let back: Vec<ChunkEvent<'_>> = CompactEvents::new(&chunk)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, events);
        // The writer starts over after finishing.
        assert_eq!(w.len(), 0);
        w.push(&events[3]);
        let one = w.finish().to_vec();
        let back: Vec<_> = CompactEvents::new(&one)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, vec![events[3]]);
    }

    #[test]
    fn undo_takes_back_the_last_event() {
        let mut w = CompactWriter::default();
        w.push(&ev(1, 1, 5, "A", b"x"));
        let len = w.len();
        w.push(&ev(2, 2, 6, "B", b"y"));
        w.undo();
        assert_eq!(w.len(), len);
        w.push(&ev(2, 3, 6, "A", b"z"));
        let chunk = w.finish().to_vec();
        let back: Vec<_> = CompactEvents::new(&chunk)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(back, vec![ev(1, 1, 5, "A", b"x"), ev(2, 3, 6, "A", b"z")]);
    }

    #[test]
    fn damage_is_a_typed_error() {
        let mut w = CompactWriter::default();
        w.push(&ev(1, 1, 5, "A", b"xyz"));
        w.push(&ev(2, 2, 6, "A", b"xyz"));
        let chunk = w.finish().to_vec();
        for i in 0..chunk.len() {
            let mut bad = chunk.clone();
            bad[i] ^= 0x40;
            let r: Result<Vec<_>, _> = CompactEvents::new(&bad).and_then(|e| e.collect());
            assert!(r.is_err(), "flip at {i}");
        }
        for n in 0..chunk.len() {
            let r: Result<Vec<_>, _> = CompactEvents::new(&chunk[..n]).and_then(|e| e.collect());
            assert!(r.is_err(), "truncated to {n}");
        }
        // Seqs and offsets must ascend, and a first event must state its manifest: with a
        // valid checksum these still fail.
        for body in [
            vec![0x01, 0x01, 0x00, 0xc4, 16]
                .into_iter()
                .chain([0; 16])
                .chain([0xc0, 0xc4, 0])
                .collect::<Vec<u8>>(),
            vec![0x00, 0x01, 0x00, 0xc4, 16]
                .into_iter()
                .chain([0; 16])
                .chain([0xa1, b'A', 1, 0xc4, 0])
                .collect(),
            vec![0x01, 0x00, 0x00, 0xc4, 16]
                .into_iter()
                .chain([0; 16])
                .chain([0xa1, b'A', 1, 0xc4, 0])
                .collect(),
        ] {
            let chunk = compact_chunk_sealed(&body);
            let r: Result<Vec<_>, _> = CompactEvents::new(&chunk).and_then(|e| e.collect());
            assert!(r.is_err(), "{body:?}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let chunk = compact_chunk_sealed(&body);
            if let Ok(events) = CompactEvents::new(&chunk) {
                for e in events { let _ = e; }
            }
        }
    }
}
