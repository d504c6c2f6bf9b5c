//! Hostile bytes into every decoder of the journal's own stored values: event and snapshot
//! envelopes, the header, writer state, generation and entity rows, chunk frames, entity and
//! snapshot keys. None may panic; whatever decodes must re-encode to the same value.
//!
//! The first byte is a control byte: bit 0 seals the rest (prepends the CRC the journal
//! checks) so that the fuzzer explores the MessagePack bodies behind the checksum rather than
//! the checksum; bits 1–7 give the length of the key that an entity row is sealed under (taken
//! from the front of the rest).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stateline_fuzz::{seal, seal_keyed};
use stateline_journal::fuzzing;
use stateline_journal::{EventRecord, PersistenceId, SnapshotRecord};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let sealed = control & 1 == 1;
    let value = if sealed { seal(rest) } else { rest.to_vec() };

    events(&value);
    snapshots(&value);
    meta_rows(&value);
    chunks(rest);
    keys(rest);

    // An entity row under a key taken from the input.
    let key_len = usize::from(control >> 1).min(rest.len());
    let (key, body) = rest.split_at(key_len);
    let row = if sealed {
        seal_keyed(key, body)
    } else {
        body.to_vec()
    };
    if let Ok(again) = fuzzing::decode_entity_row(key, &row) {
        let twice = fuzzing::decode_entity_row(key, &again).expect("re-encoded row decodes");
        assert_eq!(twice, again, "entity row round trip");
    }
});

fn events(value: &[u8]) {
    let known = PersistenceId::parse("account", "alice").expect("valid id");
    let plain = fuzzing::decode_event(value);
    let as_known = fuzzing::decode_event_as(value, &known);
    // Sharing a known persistence id is an optimisation: it must not change the outcome.
    assert_eq!(plain.is_ok(), as_known.is_ok(), "decode_event_as disagrees");
    if let (Ok(a), Ok(b)) = (&plain, &as_known) {
        assert_eq!(a, b, "decode_event_as gives another record");
    }
    if let Ok(rec) = plain {
        event_round_trip(&rec);
    }
}

fn event_round_trip(rec: &EventRecord) {
    let bytes = fuzzing::encode_event(rec).expect("a decoded event re-encodes");
    let back = fuzzing::decode_event(&bytes).expect("a re-encoded event decodes");
    assert_eq!(&back, rec, "event round trip");
}

fn snapshots(value: &[u8]) {
    if let Ok(rec) = fuzzing::decode_snapshot(value) {
        snapshot_round_trip(&rec);
    }
}

fn snapshot_round_trip(rec: &SnapshotRecord) {
    let bytes = fuzzing::encode_snapshot(rec).expect("a decoded snapshot re-encodes");
    let back = fuzzing::decode_snapshot(&bytes).expect("a re-encoded snapshot decodes");
    assert_eq!(&back, rec, "snapshot round trip");
}

type RowDecoder = fn(&[u8]) -> Result<Vec<u8>, stateline_journal::CodecError>;

fn meta_rows(value: &[u8]) {
    let _ = fuzzing::header_format_version(value);
    let decoders: [(&str, RowDecoder); 3] = [
        ("header", fuzzing::decode_header),
        ("state", fuzzing::decode_state),
        ("generation row", fuzzing::decode_generation_row),
    ];
    for (name, decode) in decoders {
        if let Ok(again) = decode(value) {
            let twice = decode(&again).unwrap_or_else(|e| panic!("re-encoded {name}: {e}"));
            assert_eq!(twice, again, "{name} round trip");
        }
    }
}

fn chunks(chunk: &[u8]) {
    // As a compact chunk's body: what decodes encodes again to bytes that decode the same.
    if let Ok(again) = fuzzing::compact_chunk_reencoded(&fuzzing::compact_chunk_sealed(chunk)) {
        assert_eq!(
            fuzzing::compact_chunk_reencoded(&again).ok().as_ref(),
            Some(&again),
            "compact chunk round trip"
        );
    }
    let mut frames = Vec::new();
    let mut failed = false;
    for frame in fuzzing::chunk_frames(chunk) {
        match frame {
            Ok(f) => {
                let _ = fuzzing::decode_event(f);
                frames.push(f);
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    // The frames read re-frame to the bytes they came from; a chunk that did not fail was
    // read whole.
    let again = fuzzing::chunk_of(frames.iter().copied());
    assert!(chunk.starts_with(&again), "frames re-frame to a prefix");
    if !failed {
        assert_eq!(
            again.len(),
            chunk.len(),
            "a chunk read without error is read whole"
        );
    }
}

fn keys(key: &[u8]) {
    if let Ok((kg, pid)) = fuzzing::parse_entity_key(key) {
        let mut again = kg.0.to_be_bytes().to_vec();
        again.extend_from_slice(pid.entity_type().as_str().as_bytes());
        again.push(0);
        again.extend_from_slice(pid.entity_id().as_str().as_bytes());
        assert_eq!(again, key, "entity key round trip");
    }
    if let Ok(seq) = fuzzing::snapshot_key_seq(key) {
        assert_eq!(
            seq.0.to_be_bytes()[..],
            key[key.len() - 8..],
            "snapshot key seq"
        );
    }
}
