//! The records callers write and read: events with their envelope fields, and snapshots.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::Rejected;
use crate::ids::{Offset, PersistenceId, Seq};

/// Longest accepted manifest type name, in bytes.
pub const MAX_MANIFEST_LEN: usize = 255;

/// What a payload is: the type name and schema version of the encoded value, so that readers
/// can pick a decoder (and an upcaster for older versions).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Manifest {
    /// Stable type name of the encoded value.
    pub type_name: String,
    /// Schema version of the encoded value; starts at 1 by convention.
    pub version: u32,
}

impl Manifest {
    /// A manifest for `type_name` at `version`.
    pub fn new(type_name: impl Into<String>, version: u32) -> Self {
        Self {
            type_name: type_name.into(),
            version,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Rejected> {
        if self.type_name.is_empty() || self.type_name.len() > MAX_MANIFEST_LEN {
            return Err(Rejected::InvalidManifest(format!(
                "type name must be 1..={MAX_MANIFEST_LEN} bytes, got {}",
                self.type_name.len()
            )));
        }
        Ok(())
    }
}

/// An event to append: its manifest and its already-encoded payload (rmp-serde by convention).
/// The journal assigns seq, offset, event id and timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// What the payload is.
    pub manifest: Manifest,
    /// The encoded event.
    pub payload: Vec<u8>,
    /// Event id and timestamp to keep (imports); assigned at append when `None`.
    pub(crate) preset: Option<(Uuid, DateTime<Utc>)>,
}

impl NewEvent {
    /// An event from an encoded payload.
    pub fn new(manifest: Manifest, payload: Vec<u8>) -> Self {
        Self {
            manifest,
            payload,
            preset: None,
        }
    }

    /// An event that keeps the id and timestamp it had in another journal (import).
    pub fn imported(
        manifest: Manifest,
        payload: Vec<u8>,
        event_id: Uuid,
        timestamp: DateTime<Utc>,
    ) -> Self {
        Self {
            manifest,
            payload,
            preset: Some((event_id, timestamp)),
        }
    }

    /// Encodes `value` with rmp-serde (named fields, see `FORMAT.md`) into an event.
    ///
    /// # Errors
    /// [`crate::CodecError::Encode`] if the value does not serialize.
    pub fn encode<T: serde::Serialize + ?Sized>(
        manifest: Manifest,
        value: &T,
    ) -> Result<Self, crate::CodecError> {
        let payload =
            rmp_serde::to_vec_named(value).map_err(|e| crate::CodecError::Encode(e.to_string()))?;
        Ok(Self::new(manifest, payload))
    }
}

/// A stored event, as read back from the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Whose event.
    pub persistence_id: PersistenceId,
    /// Its seq within the persistence id.
    pub seq: Seq,
    /// Its position in the global changelog.
    pub offset: Offset,
    /// A unique id assigned at append (UUID v7, time-ordered).
    pub event_id: Uuid,
    /// When it was appended (UTC, microsecond precision).
    pub timestamp: DateTime<Utc>,
    /// What the payload is.
    pub manifest: Manifest,
    /// The encoded event.
    pub payload: Vec<u8>,
}

impl EventRecord {
    /// Decodes the payload with rmp-serde.
    ///
    /// # Errors
    /// [`crate::CodecError::Decode`] if the bytes are not a `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::CodecError> {
        rmp_serde::from_slice(&self.payload).map_err(|e| crate::CodecError::Decode(e.to_string()))
    }
}

/// A stored event borrowed in place while a stream is visited with
/// [`crate::EventIter::for_each_ref`]: the same fields as [`EventRecord`], without allocating
/// per event (the manifest is shared by consecutive events that have the same one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// Whose event.
    pub persistence_id: &'a PersistenceId,
    /// Its seq within the persistence id.
    pub seq: Seq,
    /// Its position in the global changelog.
    pub offset: Offset,
    /// A unique id assigned at append (UUID v7, time-ordered).
    pub event_id: Uuid,
    /// When it was appended (UTC, microsecond precision).
    pub timestamp: DateTime<Utc>,
    /// What the payload is.
    pub manifest: &'a Manifest,
    /// The encoded event.
    pub payload: &'a [u8],
}

impl EventRef<'_> {
    /// An owned copy.
    pub fn to_record(&self) -> EventRecord {
        EventRecord {
            persistence_id: self.persistence_id.clone(),
            seq: self.seq,
            offset: self.offset,
            event_id: self.event_id,
            timestamp: self.timestamp,
            manifest: self.manifest.clone(),
            payload: self.payload.to_vec(),
        }
    }

    /// Decodes the payload with rmp-serde.
    ///
    /// # Errors
    /// [`crate::CodecError::Decode`] if the bytes are not a `T`.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, crate::CodecError> {
        rmp_serde::from_slice(self.payload).map_err(|e| crate::CodecError::Decode(e.to_string()))
    }
}

impl EventRecord {
    /// This record, borrowed.
    pub fn borrowed(&self) -> EventRef<'_> {
        EventRef {
            persistence_id: &self.persistence_id,
            seq: self.seq,
            offset: self.offset,
            event_id: self.event_id,
            timestamp: self.timestamp,
            manifest: &self.manifest,
            payload: &self.payload,
        }
    }
}

/// A stored snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Whose snapshot.
    pub persistence_id: PersistenceId,
    /// The seq of the last event the snapshot includes.
    pub seq: Seq,
    /// When it was saved.
    pub timestamp: DateTime<Utc>,
    /// What the bytes are.
    pub manifest: Manifest,
    /// The encoded state.
    pub payload: Vec<u8>,
}

/// Acknowledgement of a durable append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendAck {
    /// Seq of the first event appended.
    pub first_seq: Seq,
    /// Seq of the last event appended (the new highest seq).
    pub last_seq: Seq,
    /// Offset of the first event appended.
    pub first_offset: Offset,
    /// Offset of the last event appended.
    pub last_offset: Offset,
}
