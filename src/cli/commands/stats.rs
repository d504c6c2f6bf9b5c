//! `stateline stats`: totals per entity type, the distribution of entities and bytes over key
//! groups, the largest entities and snapshot ages — what snapshot tuning and rescaling need.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::Serialize;
use stateline_journal::EntitySummary;

use crate::cli::args::StatsArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::output::{bytes, count};
use crate::cli::payload::EntityJson;
use crate::cli::table::{Align, Table};
use crate::cli::Ctx;

use super::open_read;

#[derive(Serialize, Default)]
struct TypeTotals {
    entity_type: String,
    entities: u64,
    events: u64,
    bytes: u64,
    snapshots: u64,
}

#[derive(Serialize, Default)]
struct Spread {
    min: u64,
    max: u64,
    mean: f64,
}

#[derive(Serialize)]
struct Bucket {
    /// First key group (inclusive).
    from: u32,
    /// Last key group (exclusive).
    to: u32,
    entities: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct GroupLoad {
    key_group: u32,
    entities: u64,
    bytes: u64,
}

#[derive(Serialize)]
struct KeyGroups {
    count: u32,
    used: u64,
    entities_per_group: Spread,
    bytes_per_group: Spread,
    histogram: Vec<Bucket>,
    /// Every key group that holds something.
    groups: Vec<GroupLoad>,
}

#[derive(Serialize)]
struct AgeBucket {
    label: &'static str,
    min: u64,
    max: Option<u64>,
    entities: u64,
}

#[derive(Serialize)]
struct SnapshotAges {
    without_snapshot: u64,
    max: u64,
    mean: f64,
    histogram: Vec<AgeBucket>,
    /// Entities with the most events since their newest snapshot.
    most_behind: Vec<Behind>,
}

#[derive(Serialize)]
struct Behind {
    entity_type: String,
    entity_id: String,
    snapshot_seq: Option<u64>,
    highest_seq: u64,
    events_since_snapshot: u64,
}

#[derive(Serialize)]
struct Stats {
    types: Vec<TypeTotals>,
    key_groups: KeyGroups,
    largest: Vec<EntityJson>,
    snapshot_ages: SnapshotAges,
}

const AGE_BUCKETS: [(&str, u64, Option<u64>); 6] = [
    ("0", 0, Some(0)),
    ("1-9", 1, Some(9)),
    ("10-99", 10, Some(99)),
    ("100-999", 100, Some(999)),
    ("1000-9999", 1000, Some(9999)),
    ("10000+", 10000, None),
];

fn age(s: &EntitySummary) -> u64 {
    s.highest_seq
        .0
        .saturating_sub(s.snapshot_seq.map_or(0, |q| q.0))
}

fn spread(values: impl Iterator<Item = u64>, groups: u32) -> Spread {
    let mut n = 0u64;
    let mut sum = 0u128;
    let mut min = u64::MAX;
    let mut max = 0;
    for v in values {
        n += 1;
        sum += u128::from(v);
        min = min.min(v);
        max = max.max(v);
    }
    // Groups holding nothing count as zeros.
    if n < u64::from(groups) {
        min = 0;
    }
    Spread {
        min: if n == 0 { 0 } else { min },
        max,
        mean: sum as f64 / f64::from(groups.max(1)),
    }
}

fn compute(list: &[EntitySummary], key_groups: u32, a: &StatsArgs) -> Stats {
    let mut types: BTreeMap<String, TypeTotals> = BTreeMap::new();
    let mut groups: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for s in list {
        let name = s.persistence_id.entity_type().to_string();
        let t = types.entry(name.clone()).or_insert_with(|| TypeTotals {
            entity_type: name,
            ..TypeTotals::default()
        });
        t.entities += 1;
        t.events += s.events;
        t.bytes += s.bytes;
        t.snapshots += u64::from(s.snapshots);
        let g = groups.entry(s.key_group.0).or_default();
        g.0 += 1;
        g.1 += s.bytes;
    }
    let k = key_groups.max(1);
    let b = a.buckets.min(k);
    let start = |i: u32| ((u64::from(i) * u64::from(k)).div_ceil(u64::from(b))) as u32;
    let mut histogram: Vec<Bucket> = (0..b)
        .map(|i| Bucket {
            from: start(i),
            to: start(i + 1),
            entities: 0,
            bytes: 0,
        })
        .collect();
    for (g, (n, by)) in &groups {
        let i = (u64::from(*g) * u64::from(b) / u64::from(k)) as usize;
        if let Some(h) = histogram.get_mut(i) {
            h.entities += n;
            h.bytes += by;
        }
    }
    let mut largest: Vec<&EntitySummary> = list.iter().collect();
    largest.sort_by_key(|s| Reverse(s.bytes));
    largest.truncate(a.top);
    let mut ages = AGE_BUCKETS.map(|(label, min, max)| AgeBucket {
        label,
        min,
        max,
        entities: 0,
    });
    for s in list {
        let v = age(s);
        if let Some(bucket) = ages
            .iter_mut()
            .find(|bk| v >= bk.min && bk.max.is_none_or(|m| v <= m))
        {
            bucket.entities += 1;
        }
    }
    let mut behind: Vec<&EntitySummary> = list.iter().filter(|s| age(s) > 0).collect();
    behind.sort_by_key(|s| Reverse(age(s)));
    behind.truncate(a.top);
    let total_age: u128 = list.iter().map(|s| u128::from(age(s))).sum();
    Stats {
        types: types.into_values().collect(),
        key_groups: KeyGroups {
            count: key_groups,
            used: groups.len() as u64,
            entities_per_group: spread(groups.values().map(|g| g.0), k),
            bytes_per_group: spread(groups.values().map(|g| g.1), k),
            histogram,
            groups: groups
                .iter()
                .map(|(g, (n, by))| GroupLoad {
                    key_group: *g,
                    entities: *n,
                    bytes: *by,
                })
                .collect(),
        },
        largest: largest.into_iter().map(EntityJson::from).collect(),
        snapshot_ages: SnapshotAges {
            without_snapshot: list.iter().filter(|s| s.snapshot_seq.is_none()).count() as u64,
            max: list.iter().map(age).max().unwrap_or(0),
            mean: if list.is_empty() {
                0.0
            } else {
                total_age as f64 / list.len() as f64
            },
            histogram: ages.into_iter().collect(),
            most_behind: behind
                .into_iter()
                .map(|s| Behind {
                    entity_type: s.persistence_id.entity_type().to_string(),
                    entity_id: s.persistence_id.entity_id().to_string(),
                    snapshot_seq: s.snapshot_seq.map(|q| q.0),
                    highest_seq: s.highest_seq.0,
                    events_since_snapshot: age(s),
                })
                .collect(),
        },
    }
}

fn bar(v: u64, max: u64) -> String {
    const WIDTH: u64 = 40;
    let n = if max == 0 {
        0
    } else {
        (v * WIDTH).div_ceil(max)
    };
    "#".repeat(n as usize)
}

/// Runs `stats`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &StatsArgs) -> CliResult {
    let r = open_read(&a.db)?;
    let list = r.entities(None).map_err(|e| CliError::journal(&a.db, e))?;
    let stats = compute(&list, r.key_groups(), a);
    if ctx.json {
        return ctx.out.json(&stats);
    }
    let out = &mut ctx.out;
    out.line("Entity types")?;
    let mut t = Table::new(&[
        ("TYPE", Align::Left),
        ("ENTITIES", Align::Right),
        ("EVENTS", Align::Right),
        ("BYTES", Align::Right),
        ("SNAPSHOTS", Align::Right),
    ]);
    for ty in &stats.types {
        t.row(vec![
            ty.entity_type.clone(),
            count(ty.entities),
            count(ty.events),
            bytes(ty.bytes),
            count(ty.snapshots),
        ]);
    }
    t.print(out)?;

    let kg = &stats.key_groups;
    out.line("")?;
    out.line(format!(
        "Key groups: {} used of {}; entities per group min {} / mean {:.1} / max {}; bytes per group min {} / mean {} / max {}",
        count(kg.used),
        count(u64::from(kg.count)),
        count(kg.entities_per_group.min),
        kg.entities_per_group.mean,
        count(kg.entities_per_group.max),
        bytes(kg.bytes_per_group.min),
        bytes(kg.bytes_per_group.mean as u64),
        bytes(kg.bytes_per_group.max),
    ))?;
    let max_entities = kg.histogram.iter().map(|h| h.entities).max().unwrap_or(0);
    let mut t = Table::new(&[
        ("KEY GROUPS", Align::Left),
        ("ENTITIES", Align::Right),
        ("BYTES", Align::Right),
        ("", Align::Left),
    ]);
    for h in &kg.histogram {
        t.row(vec![
            format!("{}..{}", h.from, h.to),
            count(h.entities),
            bytes(h.bytes),
            bar(h.entities, max_entities),
        ]);
    }
    t.print(out)?;

    out.line("")?;
    out.line(format!("Largest entities (top {})", a.top))?;
    let mut t = Table::new(&[
        ("TYPE", Align::Left),
        ("ID", Align::Left),
        ("KEY GROUP", Align::Right),
        ("EVENTS", Align::Right),
        ("BYTES", Align::Right),
    ]);
    for e in &stats.largest {
        t.row(vec![
            e.entity_type.clone(),
            e.entity_id.clone(),
            e.key_group.to_string(),
            count(e.events),
            bytes(e.bytes),
        ]);
    }
    t.print(out)?;

    let sa = &stats.snapshot_ages;
    out.line("")?;
    out.line(format!(
        "Snapshot ages (events since the newest snapshot): mean {:.1}, max {}, {} entities without a snapshot",
        sa.mean,
        count(sa.max),
        count(sa.without_snapshot)
    ))?;
    let max_age = sa.histogram.iter().map(|h| h.entities).max().unwrap_or(0);
    let mut t = Table::new(&[
        ("EVENTS SINCE", Align::Left),
        ("ENTITIES", Align::Right),
        ("", Align::Left),
    ]);
    for h in &sa.histogram {
        t.row(vec![
            h.label.to_string(),
            count(h.entities),
            bar(h.entities, max_age),
        ]);
    }
    t.print(out)?;
    if !sa.most_behind.is_empty() {
        out.line("")?;
        out.line("Most events since a snapshot")?;
        let mut t = Table::new(&[
            ("TYPE", Align::Left),
            ("ID", Align::Left),
            ("SNAPSHOT SEQ", Align::Right),
            ("HIGHEST SEQ", Align::Right),
            ("SINCE", Align::Right),
        ]);
        for b in &sa.most_behind {
            t.row(vec![
                b.entity_type.clone(),
                b.entity_id.clone(),
                b.snapshot_seq.map_or_else(|| "-".into(), |s| s.to_string()),
                b.highest_seq.to_string(),
                count(b.events_since_snapshot),
            ]);
        }
        t.print(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_cover_every_key_group_once() {
        for (k, b) in [(1024u32, 16u32), (10, 3), (7, 7), (5, 1), (3, 2)] {
            let start = |i: u32| ((u64::from(i) * u64::from(k)).div_ceil(u64::from(b))) as u32;
            assert_eq!(start(0), 0);
            assert_eq!(start(b), k);
            for g in 0..k {
                let i = (u64::from(g) * u64::from(b) / u64::from(k)) as u32;
                assert!(start(i) <= g && g < start(i + 1), "k={k} b={b} g={g}");
            }
        }
    }
}
