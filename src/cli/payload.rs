//! Stored records as JSON without the user's types: MessagePack payloads decoded to JSON
//! values, and the JSON shapes of events, snapshots and entities that `events`, `changelog`
//! and `export` print and `import` reads.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use stateline_journal::{EntitySummary, EventRecord, Manifest, SnapshotRecord};

/// A manifest as JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestJson {
    /// Stable type name of the payload.
    pub type_name: String,
    /// Schema version of the payload.
    pub version: u32,
}

impl From<&Manifest> for ManifestJson {
    fn from(m: &Manifest) -> Self {
        Self {
            type_name: m.type_name.clone(),
            version: m.version,
        }
    }
}

impl From<ManifestJson> for Manifest {
    fn from(m: ManifestJson) -> Self {
        Manifest::new(m.type_name, m.version)
    }
}

/// One stored event. `payload` is the MessagePack payload as JSON (`null` with
/// `payload_error` set if it is not MessagePack); `payload_base64` carries the exact bytes
/// (export only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EventJson {
    pub entity_type: String,
    pub entity_id: String,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    pub event_id: uuid::Uuid,
    pub timestamp: DateTime<Utc>,
    pub manifest: ManifestJson,
    #[serde(default)]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl EventJson {
    /// The JSON of `rec`, with the exact payload bytes when `raw`.
    pub fn of(rec: &EventRecord, raw: bool) -> Self {
        let (payload, payload_error) = decode_or_error(&rec.payload);
        Self {
            entity_type: rec.persistence_id.entity_type().to_string(),
            entity_id: rec.persistence_id.entity_id().to_string(),
            seq: rec.seq.0,
            offset: Some(rec.offset.0),
            event_id: rec.event_id,
            timestamp: rec.timestamp,
            manifest: (&rec.manifest).into(),
            payload,
            payload_error,
            payload_base64: raw.then(|| base64_encode(&rec.payload)),
        }
    }

    /// One line for humans: offset, seq, time, (persistence id,) manifest, payload.
    pub fn human(&self, with_pid: bool) -> String {
        let pid = if with_pid {
            format!("{}|{}  ", self.entity_type, self.entity_id)
        } else {
            String::new()
        };
        let payload = match &self.payload_error {
            Some(e) => format!("<not MessagePack: {e}>"),
            None => self.payload.to_string(),
        };
        format!(
            "{:>10}  {:>6}  {}  {pid}{}@{}  {payload}",
            self.offset
                .map_or_else(|| "-".to_string(), |o| o.to_string()),
            self.seq,
            super::output::time(&self.timestamp),
            self.manifest.type_name,
            self.manifest.version,
        )
    }
}

/// One stored snapshot; fields as [`EventJson`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotJson {
    pub entity_type: String,
    pub entity_id: String,
    pub seq: u64,
    pub timestamp: DateTime<Utc>,
    pub manifest: ManifestJson,
    #[serde(default)]
    pub payload: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl SnapshotJson {
    /// The JSON of `rec`, with the exact payload bytes when `raw`.
    pub fn of(rec: &SnapshotRecord, raw: bool) -> Self {
        let (payload, payload_error) = decode_or_error(&rec.payload);
        Self {
            entity_type: rec.persistence_id.entity_type().to_string(),
            entity_id: rec.persistence_id.entity_id().to_string(),
            seq: rec.seq.0,
            timestamp: rec.timestamp,
            manifest: (&rec.manifest).into(),
            payload,
            payload_error,
            payload_base64: raw.then(|| base64_encode(&rec.payload)),
        }
    }
}

/// One persistence id, as `ls` lists it and `export` announces it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EntityJson {
    pub entity_type: String,
    pub entity_id: String,
    #[serde(default)]
    pub key_group: u32,
    #[serde(default)]
    pub events: u64,
    pub highest_seq: u64,
    #[serde(default)]
    pub deleted_to: u64,
    #[serde(default)]
    pub snapshot_seq: Option<u64>,
    #[serde(default)]
    pub snapshots: u32,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub last_write: Option<DateTime<Utc>>,
}

impl From<&EntitySummary> for EntityJson {
    fn from(s: &EntitySummary) -> Self {
        Self {
            entity_type: s.persistence_id.entity_type().to_string(),
            entity_id: s.persistence_id.entity_id().to_string(),
            key_group: s.key_group.0,
            events: s.events,
            highest_seq: s.highest_seq.0,
            deleted_to: s.deleted_to.0,
            snapshot_seq: s.snapshot_seq.map(|s| s.0),
            snapshots: s.snapshots,
            bytes: s.bytes,
            last_write: s.last_write,
        }
    }
}

/// Decodes a MessagePack payload to JSON; `Err` with the reason if it is not exactly one
/// MessagePack value.
pub(crate) fn to_json(bytes: &[u8]) -> Result<Value, String> {
    // rmpv reads the reserved marker 0xc1 as nil; rmp-serde refuses it, as the spec says.
    rmp_serde::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| e.to_string())?;
    let mut rd = bytes;
    let v = rmpv::decode::read_value(&mut rd).map_err(|e| e.to_string())?;
    if !rd.is_empty() {
        return Err(format!("{} trailing bytes after the value", rd.len()));
    }
    Ok(value(v))
}

fn decode_or_error(bytes: &[u8]) -> (Value, Option<String>) {
    match to_json(bytes) {
        Ok(v) => (v, None),
        Err(e) => (Value::Null, Some(e)),
    }
}

/// MessagePack → JSON. Binary values become strings: 16 bytes as a UUID (how rmp-serde stores
/// a `Uuid`), anything else as lowercase hex. Map keys that are not strings become their JSON
/// text; NaN and infinities become `null`; extension values `{"ext": type, "hex": data}`.
fn value(v: rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Value::Number(u.into()),
            (None, Some(s)) => Value::Number(s.into()),
            (None, None) => Value::Null,
        },
        M::F32(f) => Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
        M::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        M::String(s) => match s.as_str() {
            Some(s) => Value::String(s.to_string()),
            None => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        },
        M::Binary(b) => Value::String(binary(&b)),
        M::Array(a) => Value::Array(a.into_iter().map(value).collect()),
        M::Map(m) => {
            let mut out = Map::with_capacity(m.len());
            for (k, v) in m {
                let key = match k {
                    M::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    other => value(other).to_string(),
                };
                out.insert(key, value(v));
            }
            Value::Object(out)
        }
        M::Ext(t, data) => {
            let mut out = Map::new();
            out.insert("ext".into(), Value::Number(t.into()));
            out.insert("hex".into(), Value::String(hex(&data)));
            Value::Object(out)
        }
    }
}

fn binary(b: &[u8]) -> String {
    match <[u8; 16]>::try_from(b) {
        Ok(id) => uuid::Uuid::from_bytes(id).to_string(),
        Err(_) => hex(b),
    }
}

fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for byte in b {
        let _ = write!(s, "{byte:02x}");
    }
    s
}

/// Standard base64 with padding.
pub(crate) fn base64_encode(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes standard base64.
pub(crate) fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    enum Ev {
        Deposited { op_id: uuid::Uuid, amount: i64 },
    }

    #[test]
    fn named_payloads_read_as_json() {
        let id = uuid::Uuid::from_u128(7);
        let bytes = rmp_serde::to_vec_named(&Ev::Deposited {
            op_id: id,
            amount: -5,
        })
        .expect("encode");
        let v = to_json(&bytes).expect("decode");
        assert_eq!(
            v,
            serde_json::json!({"Deposited": {"op_id": id.to_string(), "amount": -5}})
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(to_json(&[0xc1]).is_err());
        assert!(to_json(&[0x92, 0x01]).is_err());
        assert!(to_json(&[0x01, 0x02]).is_err());
        assert!(to_json(&[]).is_err());
        assert_eq!(
            to_json(&[0xc4, 0x02, 0xab, 0xcd]).expect("bin"),
            Value::String("abcd".into())
        );
        assert_eq!(
            to_json(&[0xd4, 0x01, 0x05]).expect("ext"),
            serde_json::json!({"ext": 1, "hex": "05"})
        );
        assert_eq!(
            to_json(&[0x81, 0x07, 0xc0]).expect("int key"),
            serde_json::json!({"7": null})
        );
    }

    #[test]
    fn base64_round_trips() {
        let b = vec![0u8, 1, 2, 250, 255];
        assert_eq!(base64_decode(&base64_encode(&b)).expect("decode"), b);
        assert!(base64_decode("!!").is_err());
    }
}
