//! Hostile payload bytes decoded as an application's events and states would be: rmp-serde into
//! realistic user types (enums with named fields, uuids, nested vecs, `serde_bytes`, i128, maps,
//! a generic envelope), through [`EventRecord::decode`] as the actor layer reads events, and
//! into `rmpv::Value` as the CLI shows payloads. Nothing may panic (or overflow the stack), and
//! whatever decodes must survive a round trip: re-encoded with named fields (how the actor
//! layer writes) and positionally, it decodes to an equal value.
#![no_main]

use std::fmt::Debug;

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use stateline_fuzz::{AccountEvent, AccountState, Envelope};
use stateline_journal::{EventRecord, Manifest, Offset, PersistenceId, Seq};
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let rec = EventRecord {
        persistence_id: PersistenceId::parse("account", "alice").expect("valid id"),
        seq: Seq(1),
        offset: Offset(1),
        event_id: Uuid::nil(),
        timestamp: DateTime::UNIX_EPOCH,
        manifest: Manifest::new("AccountEvent", 1),
        payload: data.to_vec(),
    };
    typed::<AccountEvent>(&rec);
    typed::<AccountState>(&rec);
    typed::<Envelope<AccountEvent>>(&rec);
    typed::<Vec<Option<AccountEvent>>>(&rec);
    dynamic(data);
});

/// Decodes `rec`'s payload as a `T` and checks the round trip.
fn typed<T>(rec: &EventRecord)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let direct = rmp_serde::from_slice::<T>(&rec.payload);
    let via_record = rec.decode::<T>();
    assert_eq!(
        direct.is_ok(),
        via_record.is_ok(),
        "EventRecord::decode disagrees"
    );
    let Ok(value) = direct else {
        return;
    };
    assert_eq!(via_record.ok().as_ref(), Some(&value));
    let named = rmp_serde::to_vec_named(&value).expect("a decoded value encodes (named)");
    let back: T = rmp_serde::from_slice(&named).expect("named encoding decodes");
    assert_eq!(back, value, "named round trip");
    let compact = rmp_serde::to_vec(&value).expect("a decoded value encodes (compact)");
    let back: T = rmp_serde::from_slice(&compact).expect("compact encoding decodes");
    assert_eq!(back, value, "compact round trip");
}

/// Decodes as a dynamic MessagePack value, natively and through serde. Values are compared by
/// their encoding (NaN is not equal to itself).
fn dynamic(data: &[u8]) {
    let mut rd = data;
    if let Ok(v) = rmpv::decode::read_value(&mut rd) {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &v).expect("a decoded value encodes");
        let again = rmpv::decode::read_value(&mut bytes.as_slice()).expect("re-encoded decodes");
        let mut twice = Vec::new();
        rmpv::encode::write_value(&mut twice, &again).expect("encodes again");
        assert_eq!(twice, bytes, "rmpv round trip");
    }
    if let Ok(v) = rmp_serde::from_slice::<rmpv::Value>(data) {
        let bytes = rmp_serde::to_vec(&v).expect("a decoded value encodes");
        let again: rmpv::Value = rmp_serde::from_slice(&bytes).expect("re-encoded decodes");
        let twice = rmp_serde::to_vec(&again).expect("encodes again");
        assert_eq!(twice, bytes, "rmpv via serde round trip");
    }
}
