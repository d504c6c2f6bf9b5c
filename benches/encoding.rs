//! Compact (positional arrays) vs named (maps) rmp-serde encoding of a typical event: size,
//! encode and decode speed, and whether a payload written before a field was added still
//! decodes. stateline encodes user events and snapshots with named fields (see
//! `journal/FORMAT.md`); this benchmark is the measurement behind that choice.
//!
//! `cargo bench --bench encoding` prints `RESULT encoding ...` lines.

use std::hint::black_box;
use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone)]
struct Deposited {
    op_id: String,
    account: String,
    amount: i64,
    balance_after: i64,
}

/// The same event after a release added a field.
#[derive(Serialize, Deserialize)]
struct DepositedV2 {
    op_id: String,
    account: String,
    amount: i64,
    balance_after: i64,
    #[serde(default)]
    channel: Option<String>,
}

/// The same event with its fields declared in another order.
#[derive(Deserialize)]
struct Reordered {
    balance_after: i64,
    amount: i64,
    #[allow(dead_code)]
    account: String,
    #[allow(dead_code)]
    op_id: String,
}

fn time<F: FnMut()>(n: u32, mut f: F) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let ev = Deposited {
        op_id: "0192f3c4-7a1b-7cde-8f00-123456789abc".into(),
        account: "acc-4711".into(),
        amount: 250,
        balance_after: 10_250,
    };
    let n = std::env::var("STATELINE_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000u32);
    for (name, named) in [("compact", false), ("named", true)] {
        let encode = |e: &Deposited| {
            if named {
                rmp_serde::to_vec_named(e)
            } else {
                rmp_serde::to_vec(e)
            }
            .expect("encodes")
        };
        let bytes = encode(&ev);
        let enc_ns = time(n, || {
            black_box(encode(black_box(&ev)));
        });
        let dec_ns = time(n, || {
            black_box(rmp_serde::from_slice::<Deposited>(black_box(&bytes)).expect("decodes"));
        });
        // Backward: old bytes read by new code (a field was added with a default).
        let evolves = rmp_serde::from_slice::<DepositedV2>(&bytes).is_ok();
        // Forward: new bytes read by old code (a rolled-back deploy), and a reordered type.
        let v2 = DepositedV2 {
            op_id: ev.op_id.clone(),
            account: ev.account.clone(),
            amount: ev.amount,
            balance_after: ev.balance_after,
            channel: Some("web".into()),
        };
        let v2_bytes = if named {
            rmp_serde::to_vec_named(&v2)
        } else {
            rmp_serde::to_vec(&v2)
        }
        .expect("encodes");
        let forward = rmp_serde::from_slice::<Deposited>(&v2_bytes).is_ok();
        let reordered = rmp_serde::from_slice::<Reordered>(&bytes)
            .map(|r| r.amount == ev.amount && r.balance_after == ev.balance_after)
            .unwrap_or(false);
        eprintln!(
            "{name}: {} bytes, encode {enc_ns:.0} ns, decode {dec_ns:.0} ns, added field: {evolves}, newer read by older: {forward}, reordered fields correct: {reordered}",
            bytes.len()
        );
        println!(
            "RESULT encoding format={name} bytes={} encode_ns={enc_ns:.0} decode_ns={dec_ns:.0} added_field_decodes={evolves} newer_decodes_in_older={forward} reordered_correct={reordered}",
            bytes.len()
        );
    }
}
