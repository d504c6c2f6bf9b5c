//! Encoding of stored records (rmp-serde envelopes behind a CRC-32 checksum) and of chunk rows
//! (length-prefixed frames). Every decode path returns a typed [`CodecError`]; bytes never panic
//! (G7).

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::CodecError;
use crate::ids::{EntityId, EntityType, Offset, PersistenceId, Seq};
use crate::record::{EventRecord, Manifest, SnapshotRecord};

/// The event envelope as stored: a positional MessagePack array (compact; fields are only ever
/// appended, and a newer format version is refused on open).
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
struct EventEnvelope<'a> {
    entity_type: &'a str,
    entity_id: &'a str,
    seq: u64,
    offset: u64,
    #[serde(with = "serde_bytes")]
    event_id: &'a [u8],
    timestamp_micros: i64,
    manifest: &'a str,
    version: u32,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

#[derive(Serialize, Deserialize)]
struct SnapshotEnvelope<'a> {
    entity_type: &'a str,
    entity_id: &'a str,
    seq: u64,
    timestamp_micros: i64,
    manifest: &'a str,
    version: u32,
    #[serde(with = "serde_bytes")]
    payload: &'a [u8],
}

const CRC_LEN: usize = 4;

mod compact;
#[cfg(feature = "fuzzing")]
pub(crate) use compact::compact_chunk_sealed;
pub(crate) use compact::{is_compact, ChunkEvent, CompactEvents, CompactWriter};

/// The CRC-32 (IEEE) of the concatenation of `parts`. `crc32fast::Hasher::new` detects the
/// CPU's features on every call, which costs as much as checksumming a small event; a clone of
/// one made once does not.
fn crc32(parts: &[&[u8]]) -> u32 {
    static PROTOTYPE: std::sync::OnceLock<crc32fast::Hasher> = std::sync::OnceLock::new();
    let mut h = PROTOTYPE.get_or_init(crc32fast::Hasher::new).clone();
    for part in parts {
        h.update(part);
    }
    h.finalize()
}

fn seal(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(CRC_LEN + body.len());
    out.extend_from_slice(&crc32(&[&body]).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn unseal(bytes: &[u8]) -> Result<&[u8], CodecError> {
    unseal_keyed(&[], bytes)
}

/// Checks the checksum over `key ‖ body` (an empty key for plain sealed values) and returns
/// the body.
fn unseal_keyed<'a>(key: &[u8], bytes: &'a [u8]) -> Result<&'a [u8], CodecError> {
    if bytes.len() < CRC_LEN {
        return Err(CodecError::Truncated {
            needed: CRC_LEN,
            found: bytes.len(),
        });
    }
    let (crc, body) = bytes.split_at(CRC_LEN);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32(&[key, body]);
    if stored != computed {
        return Err(CodecError::Checksum { stored, computed });
    }
    Ok(body)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    rmp_serde::to_vec(value).map_err(|e| CodecError::Encode(e.to_string()))
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    rmp_serde::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))
}

fn micros(ts: DateTime<Utc>) -> i64 {
    ts.timestamp_micros()
}

fn from_micros(us: i64) -> Result<DateTime<Utc>, CodecError> {
    DateTime::<Utc>::from_timestamp_micros(us)
        .ok_or_else(|| CodecError::Invalid(format!("timestamp {us} out of range")))
}

/// Converts stored timestamps as [`from_micros`] does, remembering the last day's date:
/// consecutive events of a replay mostly share it, and the calendar arithmetic was a few
/// percent of a replay.
/// Starts at day 0, whose date (chrono's default) is 1970-01-01.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Dates {
    day: i64,
    date: NaiveDate,
}

impl Dates {
    /// `us` microseconds since the epoch as a UTC time.
    pub(crate) fn at(&mut self, us: i64) -> Result<DateTime<Utc>, CodecError> {
        let secs = us.div_euclid(1_000_000);
        let nanos = (us.rem_euclid(1_000_000) * 1_000) as u32;
        let day = secs.div_euclid(86_400);
        let second = secs.rem_euclid(86_400) as u32;
        if day != self.day {
            // Days from the common era's first day: 719,163 of them precede 1970-01-01.
            let date = i32::try_from(day + 719_163)
                .ok()
                .and_then(NaiveDate::from_num_days_from_ce_opt);
            let Some(date) = date else {
                return from_micros(us);
            };
            *self = Self { day, date };
        }
        match NaiveTime::from_num_seconds_from_midnight_opt(second, nanos) {
            Some(time) => Ok(NaiveDateTime::new(self.date, time).and_utc()),
            None => from_micros(us),
        }
    }
}

fn pid_of(entity_type: &str, entity_id: &str) -> Result<PersistenceId, CodecError> {
    let t = EntityType::new(entity_type).map_err(|e| CodecError::Invalid(e.to_string()))?;
    let i = EntityId::new(entity_id).map_err(|e| CodecError::Invalid(e.to_string()))?;
    Ok(PersistenceId::new(t, i))
}

/// Encodes one event record into its stored form (appends encode through
/// [`encode_event_unsealed`] before their offset is known).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn encode_event(rec: &EventRecord) -> Result<Vec<u8>, CodecError> {
    Ok(encode_event_unsealed(
        &rec.persistence_id,
        rec.seq.0,
        &rec.event_id,
        Some(micros(rec.timestamp)),
        &rec.manifest,
        &rec.payload,
    )
    .seal(rec.offset.0, 0)
    .0)
}

/// A stored event encoded before the writer assigns its offset (and, unless preset, its
/// timestamp): those are written as fixed-width `u64`s (zero until [`Self::seal`]), the
/// checksum not yet computed. Callers encode their events this way on their own threads; the
/// writer thread only writes offset, timestamp and checksum.
#[derive(Debug)]
pub(crate) struct UnsealedEvent {
    bytes: Vec<u8>,
    offset_at: usize,
    timestamp: Stamp,
}

/// An unsealed event's timestamp.
#[derive(Debug)]
enum Stamp {
    /// Kept from another journal (imports), already written.
    Preset(i64),
    /// Left to the writer: a `u64` at this position.
    At(usize),
}

impl UnsealedEvent {
    /// The stored event with `offset` and, unless it was preset, the timestamp `now_micros`
    /// written in, and the checksum computed; with the timestamp it carries.
    pub(crate) fn seal(mut self, offset: u64, now_micros: i64) -> (Vec<u8>, i64) {
        self.bytes[self.offset_at..self.offset_at + 8].copy_from_slice(&offset.to_be_bytes());
        let timestamp = match self.timestamp {
            Stamp::Preset(us) => us,
            Stamp::At(at) => {
                // A clock before 1970 is written as the epoch (the u64 form serde also writes
                // for every later time).
                let now = now_micros.max(0);
                let written = u64::try_from(now).unwrap_or(0);
                self.bytes[at..at + 8].copy_from_slice(&written.to_be_bytes());
                now
            }
        };
        let crc = crc32(&[&self.bytes[CRC_LEN..]]).to_le_bytes();
        self.bytes[..CRC_LEN].copy_from_slice(&crc);
        (self.bytes, timestamp)
    }
}

/// Encodes the envelope `[entity_type, entity_id, seq, offset, event_id, timestamp_µs,
/// manifest, version, payload]` with rmp's writers (the same MessagePack serde writes for
/// [`EventEnvelope`], except that the offset, and a timestamp left to the writer (`None`),
/// always take the 9-byte `u64` form).
pub(crate) fn encode_event_unsealed(
    pid: &PersistenceId,
    seq: u64,
    event_id: &Uuid,
    timestamp_micros: Option<i64>,
    manifest: &Manifest,
    payload: &[u8],
) -> UnsealedEvent {
    use rmp::encode::{self as w, RmpWrite};
    let (t, i) = (pid.entity_type().as_str(), pid.entity_id().as_str());
    let name = manifest.type_name.as_str();
    let mut buf = rmp::encode::ByteBuf::with_capacity(
        CRC_LEN + 64 + t.len() + i.len() + name.len() + payload.len(),
    );
    // Writing to a ByteBuf cannot fail: its error type is uninhabited.
    let Ok(()) = buf.write_bytes(&[0; CRC_LEN]);
    write_envelope_head(&mut buf, pid);
    let Ok(_) = w::write_uint(&mut buf, seq);
    let offset_at = buf.as_slice().len() + 1;
    let Ok(()) = w::write_u64(&mut buf, 0);
    let Ok(()) = w::write_bin(&mut buf, event_id.as_bytes());
    let timestamp = match timestamp_micros {
        Some(us) => {
            let Ok(_) = w::write_sint(&mut buf, us);
            Stamp::Preset(us)
        }
        None => {
            let at = buf.as_slice().len() + 1;
            let Ok(()) = w::write_u64(&mut buf, 0);
            Stamp::At(at)
        }
    };
    let Ok(()) = w::write_str(&mut buf, name);
    let Ok(_) = w::write_uint(&mut buf, u64::from(manifest.version));
    let Ok(()) = w::write_bin(&mut buf, payload);
    let out = buf.into_vec();
    UnsealedEvent {
        bytes: out,
        offset_at,
        timestamp,
    }
}

/// Decodes one stored event.
pub(crate) fn decode_event(bytes: &[u8]) -> Result<EventRecord, CodecError> {
    decode_event_as(bytes, None)
}

/// Decodes one stored event expected to belong to `known`: when it does, the record shares
/// `known` instead of allocating a persistence id per event (replay's hot path).
pub(crate) fn decode_event_as(
    bytes: &[u8],
    known: Option<&PersistenceId>,
) -> Result<EventRecord, CodecError> {
    let body = unseal(bytes)?;
    let env = match parse_event_envelope(body) {
        Some(env) => env,
        None => decode(body)?,
    };
    check_seq_and_offset(env.seq, env.offset)?;
    let event_id = Uuid::from_slice(env.event_id)
        .map_err(|_| CodecError::Invalid("event id is not 16 bytes".into()))?;
    let persistence_id = match known {
        Some(k)
            if k.entity_type().as_str() == env.entity_type
                && k.entity_id().as_str() == env.entity_id =>
        {
            k.clone()
        }
        _ => pid_of(env.entity_type, env.entity_id)?,
    };
    Ok(EventRecord {
        persistence_id,
        seq: Seq(env.seq),
        offset: Offset(env.offset),
        event_id,
        timestamp: from_micros(env.timestamp_micros)?,
        manifest: Manifest::new(env.manifest, env.version),
        payload: env.payload.to_vec(),
    })
}

/// The envelope's fields as they sit in the stored bytes (type and id not yet checked as
/// UTF-8).
struct RawEnvelope<'a> {
    entity_type: &'a [u8],
    entity_id: &'a [u8],
    seq: u64,
    offset: u64,
    event_id: &'a [u8],
    timestamp_micros: i64,
    /// Not yet checked as UTF-8 either.
    manifest: &'a [u8],
    version: u32,
    payload: &'a [u8],
}

/// The event envelope's fields, borrowed from `body` and read by [`Headers`] instead of serde
/// (replay's hot path, about a third of the cost per event). `None` unless
/// `body` is exactly a 9-element array of the types this version writes; the serde decoder
/// then decides, so odd but valid encodings decode as before and bad bytes give the same
/// typed errors.
fn parse_raw_envelope(body: &[u8]) -> Option<RawEnvelope<'_>> {
    let mut r = Headers(body);
    if r.array_len()? != 9 {
        return None;
    }
    let entity_type = r.str_()?;
    let entity_id = r.str_()?;
    parse_envelope_rest(r, entity_type, entity_id)
}

/// The envelope's fields after the persistence id.
fn parse_envelope_rest<'a>(
    mut r: Headers<'a>,
    entity_type: &'a [u8],
    entity_id: &'a [u8],
) -> Option<RawEnvelope<'a>> {
    let env = RawEnvelope {
        entity_type,
        entity_id,
        seq: r.int()?,
        offset: r.int()?,
        event_id: r.bin()?,
        timestamp_micros: r.int()?,
        manifest: r.str_()?,
        version: r.int()?,
        payload: r.bin()?,
    };
    r.0.is_empty().then_some(env)
}

/// How this version's envelopes of `pid`'s events begin (the array header and the persistence
/// id): a reader that finds these bytes there knows whose event it holds without parsing them.
pub(crate) fn envelope_head(pid: &PersistenceId) -> Vec<u8> {
    let mut buf = rmp::encode::ByteBuf::new();
    write_envelope_head(&mut buf, pid);
    buf.into_vec()
}

/// Writes the envelope's array header and persistence id (what [`envelope_head`] returns).
fn write_envelope_head(buf: &mut rmp::encode::ByteBuf, pid: &PersistenceId) {
    use rmp::encode as w;
    // Writing to a ByteBuf cannot fail: its error type is uninhabited.
    let Ok(_) = w::write_array_len(buf, 9);
    let Ok(()) = w::write_str(buf, pid.entity_type().as_str());
    let Ok(()) = w::write_str(buf, pid.entity_id().as_str());
}

/// MessagePack values read in place from the front of a slice, for the envelope's fast path:
/// array, str and bin headers and integers of every width (converted like rmp's `read_int`,
/// `None` when out of the target's range). A handful of markers, written out here so that
/// replay's speed does not hang on whether the compiler inlines rmp's generic readers into
/// this module (when it stopped doing so, replay took 8% more instructions).
struct Headers<'a>(&'a [u8]);

impl<'a> Headers<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn marker(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    /// The next `N` bytes.
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8_(&mut self) -> Option<u8> {
        self.marker()
    }

    fn u16_(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    fn u32_(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }

    fn u64_(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }

    /// A length of `width` (1, 2 or 4) bytes.
    fn len(&mut self, width: u8) -> Option<usize> {
        match width {
            1 => Some(usize::from(self.u8_()?)),
            2 => Some(usize::from(self.u16_()?)),
            4 => usize::try_from(self.u32_()?).ok(),
            _ => None,
        }
    }

    fn array_len(&mut self) -> Option<usize> {
        match self.marker()? {
            m @ 0x90..=0x9f => Some(usize::from(m & 0x0f)),
            0xdc => self.len(2),
            0xdd => self.len(4),
            _ => None,
        }
    }

    fn str_(&mut self) -> Option<&'a [u8]> {
        let n = match self.marker()? {
            m @ 0xa0..=0xbf => usize::from(m & 0x1f),
            0xd9 => self.len(1)?,
            0xda => self.len(2)?,
            0xdb => self.len(4)?,
            _ => return None,
        };
        self.take(n)
    }

    fn bin(&mut self) -> Option<&'a [u8]> {
        let n = match self.marker()? {
            0xc4 => self.len(1)?,
            0xc5 => self.len(2)?,
            0xc6 => self.len(4)?,
            _ => return None,
        };
        self.take(n)
    }

    /// An integer of any width and sign, converted to `T` (`None` when out of its range).
    fn int<T: TryFrom<u64> + TryFrom<i64>>(&mut self) -> Option<T> {
        let m = self.marker()?;
        match m {
            0x00..=0x7f => T::try_from(u64::from(m)).ok(),
            0xe0..=0xff => T::try_from(i64::from(m as i8)).ok(),
            0xcc => T::try_from(u64::from(self.u8_()?)).ok(),
            0xcd => T::try_from(u64::from(self.u16_()?)).ok(),
            0xce => T::try_from(u64::from(self.u32_()?)).ok(),
            0xcf => T::try_from(self.u64_()?).ok(),
            0xd0 => T::try_from(i64::from(self.u8_()? as i8)).ok(),
            0xd1 => T::try_from(i64::from(self.u16_()? as i16)).ok(),
            0xd2 => T::try_from(i64::from(self.u32_()? as i32)).ok(),
            0xd3 => T::try_from(self.u64_()? as i64).ok(),
            _ => None,
        }
    }
}

/// [`parse_raw_envelope`] with the persistence id checked as UTF-8.
fn parse_event_envelope(body: &[u8]) -> Option<EventEnvelope<'_>> {
    let raw = parse_raw_envelope(body)?;
    Some(EventEnvelope {
        entity_type: std::str::from_utf8(raw.entity_type).ok()?,
        entity_id: std::str::from_utf8(raw.entity_id).ok()?,
        seq: raw.seq,
        offset: raw.offset,
        event_id: raw.event_id,
        timestamp_micros: raw.timestamp_micros,
        manifest: std::str::from_utf8(raw.manifest).ok()?,
        version: raw.version,
        payload: raw.payload,
    })
}

/// A stored event of a known persistence id, its fields borrowed from the stored bytes
/// (replay's hot path: nothing is allocated).
#[derive(Debug)]
pub(crate) struct EventFields<'a> {
    pub seq: u64,
    pub offset: u64,
    pub event_id: Uuid,
    pub timestamp: DateTime<Utc>,
    /// The manifest's type name, `None` when it is the reader's current one (not checked as
    /// UTF-8 again).
    pub manifest: Option<&'a str>,
    pub version: u32,
    pub payload: &'a [u8],
}

/// Decodes a stored event read for `known` in place, checking its checksum unless the bytes
/// are `trusted` (made by this process's writer, or checked when read from disk). `Ok(None)`
/// when the bytes hold another persistence id or are valid in a shape this version does not
/// write: [`decode_event_as`] then tells which (and gives the same errors). `head` is
/// [`envelope_head`] of `known`: bytes that begin with it are `known`'s without reading the
/// id. `dates` converts the timestamp; `manifest` is the type name the reader holds now.
pub(crate) fn event_fields<'a>(
    bytes: &'a [u8],
    known: &PersistenceId,
    head: &[u8],
    trusted: bool,
    dates: &mut Dates,
    manifest: &str,
) -> Result<Option<EventFields<'a>>, CodecError> {
    let body = if trusted && bytes.len() >= CRC_LEN {
        &bytes[CRC_LEN..]
    } else {
        unseal(bytes)?
    };
    let env = match body.strip_prefix(head) {
        Some(rest) => parse_envelope_rest(Headers(rest), &[], &[]),
        // Another entity's, or its id encoded otherwise: read and compare it.
        None => parse_raw_envelope(body).filter(|env| {
            env.entity_type == known.entity_type().as_str().as_bytes()
                && env.entity_id == known.entity_id().as_str().as_bytes()
        }),
    };
    let Some(env) = env else {
        return Ok(None);
    };
    let name = if env.manifest == manifest.as_bytes() {
        None
    } else {
        match std::str::from_utf8(env.manifest) {
            Ok(m) => Some(m),
            Err(_) => return Ok(None),
        }
    };
    check_seq_and_offset(env.seq, env.offset)?;
    let event_id = Uuid::from_slice(env.event_id)
        .map_err(|_| CodecError::Invalid("event id is not 16 bytes".into()))?;
    Ok(Some(EventFields {
        seq: env.seq,
        offset: env.offset,
        event_id,
        timestamp: dates.at(env.timestamp_micros)?,
        manifest: name,
        version: env.version,
        payload: env.payload,
    }))
}

/// The fields of a stored event as a compact chunk keeps them (the persistence id left out),
/// checking its checksum unless the bytes are `trusted` (sealed by this process's writer, or
/// checked when read from disk before).
///
/// # Errors
/// [`CodecError`] when the checksum does not match or the envelope does not decode.
pub(crate) fn chunk_event<'a>(
    bytes: &'a [u8],
    trusted: bool,
    entity_key: &[u8],
) -> Result<ChunkEvent<'a>, CodecError> {
    let body = if trusted && bytes.len() >= CRC_LEN {
        &bytes[CRC_LEN..]
    } else {
        unseal(bytes)?
    };
    let env = match parse_event_envelope(body) {
        Some(env) => env,
        None => decode(body)?,
    };
    check_seq_and_offset(env.seq, env.offset)?;
    // The compact encoding keeps no persistence id: a frame of another entity must not
    // become one of this entity's events.
    if !names_entity(entity_key, env.entity_type, env.entity_id) {
        return Err(CodecError::Invalid(format!(
            "event of {}|{}, not of this entity",
            env.entity_type, env.entity_id
        )));
    }
    let event_id = env
        .event_id
        .try_into()
        .map_err(|_| CodecError::Invalid("event id is not 16 bytes".into()))?;
    Ok(ChunkEvent {
        seq: env.seq,
        offset: env.offset,
        event_id,
        timestamp_micros: env.timestamp_micros,
        manifest: env.manifest,
        version: env.version,
        payload: env.payload,
    })
}

/// The owned record of `pid`'s event `e` (from a compact chunk).
pub(crate) fn chunk_record(
    pid: &PersistenceId,
    e: &ChunkEvent<'_>,
) -> Result<EventRecord, CodecError> {
    Ok(EventRecord {
        persistence_id: pid.clone(),
        seq: Seq(e.seq),
        offset: Offset(e.offset),
        event_id: Uuid::from_bytes(e.event_id),
        timestamp: from_micros(e.timestamp_micros)?,
        manifest: Manifest::new(e.manifest, e.version),
        payload: e.payload.to_vec(),
    })
}

/// The events of a chunk row of either encoding (frames of stored events, or compact), their
/// checksums checked.
pub(crate) enum ChunkEvents<'a> {
    /// Frames, each checked to be of the entity whose key this is.
    Frames(Frames<'a>, &'a [u8]),
    Compact(CompactEvents<'a>),
}

/// Whether `entity_key` (key group, type, `0`, id) is the key of `entity_type|entity_id`.
fn names_entity(entity_key: &[u8], entity_type: &str, entity_id: &str) -> bool {
    let (t, i) = (entity_type.as_bytes(), entity_id.as_bytes());
    entity_key.get(4..).is_some_and(|rest| {
        rest.len() == t.len() + 1 + i.len()
            && rest.starts_with(t)
            && rest[t.len()] == 0
            && rest.ends_with(i)
    })
}

impl<'a> ChunkEvents<'a> {
    /// # Errors
    /// [`CodecError`] when a compact chunk's checksum does not match.
    pub(crate) fn new(chunk: &'a [u8], entity_key: &'a [u8]) -> Result<Self, CodecError> {
        if is_compact(chunk) {
            CompactEvents::new(chunk).map(Self::Compact)
        } else {
            Ok(Self::Frames(Frames::new(chunk), entity_key))
        }
    }
}

impl<'a> Iterator for ChunkEvents<'a> {
    type Item = Result<ChunkEvent<'a>, CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Frames(f, ek) => Some(f.next()?.and_then(|frame| chunk_event(frame, false, ek))),
            Self::Compact(c) => c.next(),
        }
    }
}

/// Encodes one snapshot record into its stored form.
pub(crate) fn encode_snapshot(rec: &SnapshotRecord) -> Result<Vec<u8>, CodecError> {
    let env = SnapshotEnvelope {
        entity_type: rec.persistence_id.entity_type().as_str(),
        entity_id: rec.persistence_id.entity_id().as_str(),
        seq: rec.seq.0,
        timestamp_micros: micros(rec.timestamp),
        manifest: &rec.manifest.type_name,
        version: rec.manifest.version,
        payload: &rec.payload,
    };
    Ok(seal(encode(&env)?))
}

/// A stored event's seq is in `1..=Seq::MAX` and its offset starts at 1.
fn check_seq_and_offset(seq: u64, offset: u64) -> Result<(), CodecError> {
    if seq == 0 || offset == 0 {
        return Err(CodecError::Invalid("seq and offset start at 1".into()));
    }
    check_seq_at_most_max(seq)
}

/// A stored seq is at most [`Seq::MAX`] (what this build writes).
pub(crate) fn check_seq_at_most_max(seq: u64) -> Result<(), CodecError> {
    if seq > Seq::MAX.0 {
        return Err(CodecError::Invalid(format!(
            "seq {seq} is beyond the largest seq {}",
            Seq::MAX
        )));
    }
    Ok(())
}

/// Decodes one stored snapshot.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<SnapshotRecord, CodecError> {
    let body = unseal(bytes)?;
    let env: SnapshotEnvelope<'_> = decode(body)?;
    check_seq_at_most_max(env.seq)?;
    Ok(SnapshotRecord {
        persistence_id: pid_of(env.entity_type, env.entity_id)?,
        seq: Seq(env.seq),
        timestamp: from_micros(env.timestamp_micros)?,
        manifest: Manifest::new(env.manifest, env.version),
        payload: env.payload.to_vec(),
    })
}

/// Encodes a sealed metadata value (journal header, state, entity rows).
pub(crate) fn encode_meta<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(seal(encode(value)?))
}

/// Encodes a value sealed together with its key: the checksum covers `key ‖ body`, so a row
/// whose key was damaged (and now sits under another key) fails to decode instead of passing
/// for another entity's row.
pub(crate) fn encode_keyed<T: Serialize>(key: &[u8], value: &T) -> Result<Vec<u8>, CodecError> {
    let body = encode(value)?;
    let mut out = Vec::with_capacity(CRC_LEN + body.len());
    out.extend_from_slice(&crc32(&[key, &body]).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a value written by [`encode_keyed`] under `key`.
pub(crate) fn decode_keyed<T: for<'a> Deserialize<'a>>(
    key: &[u8],
    bytes: &[u8],
) -> Result<T, CodecError> {
    decode(unseal_keyed(key, bytes)?)
}

/// Decodes a sealed metadata value.
pub(crate) fn decode_meta<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, CodecError> {
    decode(unseal(bytes)?)
}

/// The first element of a sealed MessagePack array, when it is an unsigned integer that fits
/// `u32`: how the format version of a header is read even if the rest changed shape (G9).
pub(crate) fn leading_u32(bytes: &[u8]) -> Option<u32> {
    let mut body = unseal(bytes).ok()?;
    let len = rmp::decode::read_array_len(&mut body).ok()?;
    if len == 0 {
        return None;
    }
    rmp::decode::read_int::<u32, _>(&mut body).ok()
}

/// Bytes a frame adds to a chunk or log row besides its stored event (the `u32` length).
pub(crate) const FRAME_HEADER_BYTES: usize = 4;

/// Appends one stored event (already sealed) to a chunk as a `u32 LE length` frame.
pub(crate) fn push_frame(chunk: &mut Vec<u8>, stored_event: &[u8]) {
    chunk.extend_from_slice(&(stored_event.len() as u32).to_le_bytes());
    chunk.extend_from_slice(stored_event);
}

/// Iterates the frames of a chunk row.
pub(crate) struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    pub(crate) fn new(chunk: &'a [u8]) -> Self {
        Self { rest: chunk }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], CodecError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < 4 {
            let found = self.rest.len();
            self.rest = &[];
            return Some(Err(CodecError::Truncated { needed: 4, found }));
        }
        let (len, rest) = self.rest.split_at(4);
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if rest.len() < len {
            self.rest = &[];
            return Some(Err(CodecError::Truncated {
                needed: len,
                found: rest.len(),
            }));
        }
        let (frame, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Ok(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::Headers;

    /// A frame (chunks of formats 1 and 2) read as one entity's event must name that entity:
    /// the compact encoding it may be merged into keeps no persistence id.
    #[test]
    fn a_frame_of_another_entity_is_no_event_of_this_one() {
        use crate::ids::PersistenceId;
        use crate::keys::entity_key;
        use crate::record::Manifest;
        let pid = PersistenceId::parse("Account", "a").unwrap();
        let event = |seq: u64, offset: u64| {
            let id = uuid::Uuid::now_v7();
            let e = super::encode_event_unsealed(
                &pid,
                seq,
                &id,
                Some(7),
                &Manifest::new("Deposited", 1),
                b"x",
            );
            e.seal(offset, 9).0
        };
        let mut chunk = Vec::new();
        for (seq, offset) in [(1, 3), (2, 8)] {
            let frame = event(seq, offset);
            chunk.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            chunk.extend_from_slice(&frame);
        }
        let mine = entity_key(&pid, 16);
        let seqs: Vec<u64> = super::ChunkEvents::new(&chunk, &mine)
            .unwrap()
            .map(|e| e.unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2]);
        for other in ["b", "", "aa"] {
            let other = entity_key(
                &PersistenceId::parse("Account", other).unwrap_or(pid.clone()),
                16,
            );
            if other == mine {
                continue;
            }
            let first = super::ChunkEvents::new(&chunk, &other)
                .unwrap()
                .next()
                .unwrap();
            assert!(first.is_err(), "read as {other:?}: {first:?}");
        }
        let frame = event(1, 3);
        assert!(super::chunk_event(&frame, false, &mine).is_ok());
        assert!(super::chunk_event(&frame, true, &mine[..mine.len() - 1]).is_err());
        assert!(super::chunk_event(&frame, false, &[]).is_err());
    }

    /// Every integer width and sign, and every str/bin/array header size, read as rmp reads
    /// them (`None` where rmp errs: out of range, wrong type, truncated).
    #[test]
    fn envelope_headers_read_as_rmp_does() {
        use rmp::encode as w;
        let mut ints: Vec<i128> = vec![0, 1, 31, 32, 127, 128, 255, 256, 65_535, 65_536];
        ints.extend([u64::from(u32::MAX), u64::from(u32::MAX) + 1, u64::MAX].map(i128::from));
        ints.extend([-1, -32, -33, -128, -129, -32_768, -32_769].map(i128::from));
        ints.extend([i128::from(i32::MIN), i128::from(i64::MIN)]);
        for v in ints {
            // Written every way the envelope's writers can: compact, and at full width.
            let mut encodings = Vec::new();
            if let Ok(u) = u64::try_from(v) {
                let mut b = Vec::new();
                w::write_uint(&mut b, u).unwrap();
                encodings.push(b);
                let mut b = Vec::new();
                w::write_u64(&mut b, u).unwrap();
                encodings.push(b);
            }
            if let Ok(i) = i64::try_from(v) {
                let mut b = Vec::new();
                w::write_sint(&mut b, i).unwrap();
                encodings.push(b);
                let mut b = Vec::new();
                w::write_i64(&mut b, i).unwrap();
                encodings.push(b);
            }
            for b in encodings {
                let theirs_u64 = rmp::decode::read_int::<u64, _>(&mut b.as_slice()).ok();
                let theirs_i64 = rmp::decode::read_int::<i64, _>(&mut b.as_slice()).ok();
                let theirs_u32 = rmp::decode::read_int::<u32, _>(&mut b.as_slice()).ok();
                assert_eq!(Headers(&b).int::<u64>(), theirs_u64, "{v} as {b:02x?}");
                assert_eq!(Headers(&b).int::<i64>(), theirs_i64, "{v} as {b:02x?}");
                assert_eq!(Headers(&b).int::<u32>(), theirs_u32, "{v} as {b:02x?}");
                assert_eq!(Headers(&b[..b.len() - 1]).int::<i64>(), None, "truncated");
            }
        }
        for n in [0usize, 1, 15, 16, 31, 32, 255, 256, 65_535, 65_536] {
            let data = vec![7u8; n];
            let mut b = Vec::new();
            w::write_str(&mut b, std::str::from_utf8(&data).unwrap()).unwrap();
            assert_eq!(Headers(&b).str_(), Some(&data[..]), "str of {n}");
            assert_eq!(Headers(&b).bin(), None, "a str is no bin");
            assert_eq!(
                Headers(&b[..b.len() - 1]).str_(),
                None,
                "truncated str of {n}"
            );
            let mut b = Vec::new();
            w::write_bin(&mut b, &data).unwrap();
            assert_eq!(Headers(&b).bin(), Some(&data[..]), "bin of {n}");
            assert_eq!(Headers(&b).str_(), None, "a bin is no str");
            let mut b = Vec::new();
            w::write_array_len(&mut b, n as u32).unwrap();
            assert_eq!(Headers(&b).array_len(), Some(n), "array of {n}");
            assert_eq!(Headers(&b).int::<u64>(), None, "an array is no int");
        }
        assert_eq!(Headers(&[]).marker(), None);
        assert_eq!(Headers(&[0xc0]).int::<u64>(), None, "nil is no int");
    }

    #[test]
    fn remembered_dates_convert_as_chrono_does() {
        let mut dates = super::Dates::default();
        let day = 86_400_000_000i64;
        let mut samples = vec![0, 1, -1, day - 1, day, -day, -day - 1, i64::MAX, i64::MIN];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly within a few days of now (consecutive days repeat), some anywhere.
            samples.push(1_800_000_000_000_000 + (x % (3 * day as u64)) as i64);
            samples.push(x as i64 >> (x % 20));
        }
        for us in samples {
            let want = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us);
            assert_eq!(dates.at(us).ok(), want, "{us}");
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn sample() -> EventRecord {
        EventRecord {
            persistence_id: PersistenceId::parse("account", "7").expect("valid"),
            seq: Seq(3),
            offset: Offset(99),
            event_id: Uuid::now_v7(),
            timestamp: from_micros(1_700_000_000_123_456).expect("in range"),
            manifest: Manifest::new("Deposited", 2),
            payload: vec![1, 2, 3],
        }
    }

    /// A stored event or snapshot whose seq is beyond `Seq::MAX` (a damaged file, or an
    /// older build's import of a hand-made floor) is a typed decode error on every decode path, so that no reader
    /// computes a next seq that overflows; `Seq::MAX` itself decodes.
    #[test]
    fn seqs_beyond_seq_max_do_not_decode() {
        for (seq, ok) in [
            (Seq::MAX.0, true),
            (Seq::MAX.0 + 1, false),
            (u64::MAX, false),
        ] {
            let mut rec = sample();
            rec.seq = Seq(seq);
            let bytes = encode_event(&rec).expect("encodes");
            assert_eq!(decode_event(&bytes).is_ok(), ok, "seq {seq}");
            let pid = &rec.persistence_id;
            let head = envelope_head(pid);
            let fields = event_fields(&bytes, pid, &head, false, &mut Dates::default(), "");
            assert_eq!(fields.is_ok(), ok, "seq {seq}: {fields:?}");
            assert!(fields.map_or(true, |f| f.is_some()), "seq {seq}");
            let snap = SnapshotRecord {
                persistence_id: rec.persistence_id.clone(),
                seq: Seq(seq),
                timestamp: rec.timestamp,
                manifest: rec.manifest.clone(),
                payload: vec![1],
            };
            let bytes = encode_snapshot(&snap).expect("encodes");
            assert_eq!(decode_snapshot(&bytes).is_ok(), ok, "snapshot seq {seq}");
        }
    }

    /// The hand-written envelope encoder writes what serde writes for the same envelope
    /// (offsets at or above 2^32 take the 9-byte form in both), and seals it the same way.
    #[test]
    fn the_envelope_encoder_writes_what_serde_writes() {
        for (offset, payload_len, timestamp) in [
            (1u64 << 32, 3usize, 1_700_000_000_123_456i64),
            (u64::MAX, 300, -5),
            ((1 << 40) + 7, 70_000, 0),
        ] {
            let mut rec = sample();
            rec.offset = Offset(offset);
            rec.payload = vec![9; payload_len];
            rec.timestamp = from_micros(timestamp).expect("in range");
            let env = EventEnvelope {
                entity_type: rec.persistence_id.entity_type().as_str(),
                entity_id: rec.persistence_id.entity_id().as_str(),
                seq: rec.seq.0,
                offset,
                event_id: rec.event_id.as_bytes(),
                timestamp_micros: timestamp,
                manifest: &rec.manifest.type_name,
                version: rec.manifest.version,
                payload: &rec.payload,
            };
            let by_serde = seal(encode(&env).expect("encodes"));
            assert_eq!(encode_event(&rec).expect("encodes"), by_serde);
            assert_eq!(decode_event(&by_serde).expect("decodes"), rec);
        }
    }

    #[test]
    fn event_round_trips() {
        let rec = sample();
        let bytes = encode_event(&rec).expect("encodes");
        assert_eq!(decode_event(&bytes).expect("decodes"), rec);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = encode_event(&sample()).expect("encodes");
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode_event(&b).is_err(), "flip at {i} went unnoticed");
        }
        for n in 0..bytes.len() {
            assert!(decode_event(&bytes[..n]).is_err(), "truncation to {n}");
        }
    }

    #[test]
    fn frames_reject_truncation() {
        let mut chunk = Vec::new();
        push_frame(&mut chunk, b"hello");
        push_frame(&mut chunk, b"world!");
        let frames: Vec<_> = Frames::new(&chunk).collect::<Result<_, _>>().expect("ok");
        assert_eq!(frames, vec![&b"hello"[..], &b"world!"[..]]);
        for n in 1..chunk.len() {
            let r: Result<Vec<_>, _> = Frames::new(&chunk[..n]).collect();
            if n != 9 {
                assert!(r.is_err(), "truncation at {n}");
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_event(&bytes);
            let _ = decode_snapshot(&bytes);
            let _ = decode_meta::<(u64, String)>(&bytes);
            for f in Frames::new(&bytes) { let _ = f; }
        }

        /// The fast envelope parser reads every record this version writes exactly as serde
        /// does (ids up to the length limit, every integer width, payloads past bin8 and bin16).
        #[test]
        fn the_fast_envelope_parser_agrees_with_serde_on_written_records(
            id in "[a-z0-9]{1,300}",
            seq in 1u64..=Seq::MAX.0,
            offset in 1u64..,
            micros in -62_000_000_000_000_000i64..200_000_000_000_000_000,
            version in any::<u32>(),
            payload_len in prop_oneof![0usize..40, 250usize..300, 65_530usize..65_560],
        ) {
            let rec = EventRecord {
                persistence_id: PersistenceId::parse("account", &id).expect("valid"),
                seq: Seq(seq),
                offset: Offset(offset),
                event_id: Uuid::now_v7(),
                timestamp: from_micros(micros).unwrap_or_else(|_| sample().timestamp),
                manifest: Manifest::new("Deposited", version),
                payload: (0..payload_len).map(|i| i as u8).collect(),
            };
            let bytes = encode_event(&rec).expect("encodes");
            let body = unseal(&bytes).expect("sealed");
            let fast = parse_event_envelope(body).expect("the fast path reads what is written");
            let slow: EventEnvelope<'_> = decode(body).expect("serde reads it");
            prop_assert_eq!(fast, slow);
            prop_assert_eq!(decode_event(&bytes).expect("decodes"), rec);
        }

        /// Whatever bytes the fast parser accepts, serde reads the same way: arbitrary bytes,
        /// and written records with one byte changed or cut short.
        #[test]
        fn the_fast_envelope_parser_accepts_nothing_serde_reads_otherwise(
            noise in proptest::collection::vec(any::<u8>(), 0..256),
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
            cut in any::<bool>(),
        ) {
            let written = encode_event(&sample()).expect("encodes");
            let mut mutated = unseal(&written).expect("sealed").to_vec();
            let i = at.index(mutated.len());
            if cut {
                mutated.truncate(i);
            } else {
                mutated[i] = value;
            }
            for body in [&noise[..], &mutated[..]] {
                if let Some(fast) = parse_event_envelope(body) {
                    let slow: EventEnvelope<'_> = decode(body).expect("serde reads it too");
                    prop_assert_eq!(fast, slow);
                }
            }
        }

        #[test]
        fn sealed_arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            // Valid checksum, garbage MessagePack: exercises the decoder itself.
            let sealed = seal(body);
            let _ = decode_event(&sealed);
            let _ = decode_snapshot(&sealed);
        }
    }
}
