//! Table definitions and the byte encoding of every redb key: big-endian integers and
//! NUL-separated names so that byte order equals logical order. See `FORMAT.md`.

use redb::TableDefinition;

use crate::error::{JournalError, Result};
use crate::ids::{EntityId, EntityType, KeyGroup, PersistenceId, Seq};
use crate::tail::EntityKey;

/// `name → sealed rmp value`: the journal header and the writer state.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("stateline.meta");
/// `entity key → sealed entity row`.
pub(crate) const ENTITIES: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("stateline.entities");
/// `generation ‖ entity key ‖ NUL ‖ first seq → frames of stored events`.
pub(crate) const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("stateline.chunks");
/// `entity key ‖ NUL ‖ seq → stored snapshot`.
pub(crate) const SNAPSHOTS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("stateline.snapshots");
/// `first offset → sealed generation row` of every packed generation.
pub(crate) const GENERATIONS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("stateline.generations");

/// Name of the log table of a segment: `offset → stored event`.
pub(crate) fn segment_table_name(segment: u64) -> String {
    format!("stateline.log.{segment:016x}")
}

/// The log table of a segment.
pub(crate) fn segment_table(name: &str) -> TableDefinition<'_, u64, &'static [u8]> {
    TableDefinition::new(name)
}

pub(crate) const META_HEADER: &str = "header";
pub(crate) const META_STATE: &str = "state";

/// `key group (u32 BE) ‖ type ‖ NUL ‖ id`: entities of one key group are contiguous, so a
/// key-group range is one range scan.
pub(crate) fn entity_key(pid: &PersistenceId, key_groups: u32) -> Vec<u8> {
    let (kg, t, i) = entity_key_parts(pid, key_groups);
    [&kg[..], t, &[0], i].concat()
}

/// [`entity_key`] held inline (no allocation for keys up to 40 bytes): what an append carries
/// to the writer.
pub(crate) fn entity_key_inline(pid: &PersistenceId, key_groups: u32) -> EntityKey {
    let (kg, t, i) = entity_key_parts(pid, key_groups);
    let mut k = EntityKey::new();
    for part in [&kg[..], t, &[0], i] {
        k.extend_from_slice(part);
    }
    k
}

/// Key group (big-endian), type and id of `pid`'s entity key.
fn entity_key_parts(pid: &PersistenceId, key_groups: u32) -> ([u8; 4], &[u8], &[u8]) {
    let (t, i) = (pid.entity_type().as_str(), pid.entity_id().as_str());
    let kg = KeyGroup::of(t, i, key_groups);
    (kg.0.to_be_bytes(), t.as_bytes(), i.as_bytes())
}

/// Inverse of [`entity_key`].
pub(crate) fn parse_entity_key(key: &[u8]) -> Result<(KeyGroup, PersistenceId)> {
    let bad = |d: &str| JournalError::corrupted("entity key", format!("{d}: {key:?}"));
    if key.len() < 4 {
        return Err(bad("too short"));
    }
    let kg = KeyGroup(u32::from_be_bytes([key[0], key[1], key[2], key[3]]));
    let rest = &key[4..];
    let nul = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| bad("no separator"))?;
    let t = std::str::from_utf8(&rest[..nul]).map_err(|_| bad("type not UTF-8"))?;
    let i = std::str::from_utf8(&rest[nul + 1..]).map_err(|_| bad("id not UTF-8"))?;
    let pid = PersistenceId::new(
        EntityType::new(t).map_err(|e| bad(&e.to_string()))?,
        EntityId::new(i).map_err(|e| bad(&e.to_string()))?,
    );
    Ok((kg, pid))
}

/// First entity key of key group `kg` (inclusive bound).
pub(crate) fn key_group_start(kg: u32) -> Vec<u8> {
    kg.to_be_bytes().to_vec()
}

/// `generation ‖ entity key ‖ NUL ‖ first seq`.
pub(crate) fn chunk_key(generation: u64, entity_key: &[u8], first_seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(chunk_key_len(entity_key));
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(entity_key);
    k.push(0);
    k.extend_from_slice(&first_seq.to_be_bytes());
    k
}

/// The entity key inside a [`chunk_key`] (`None` when the key is too short to hold one).
pub(crate) fn chunk_key_entity(chunk_key: &[u8]) -> Option<&[u8]> {
    chunk_key.get(8..chunk_key.len().checked_sub(9)?)
}

/// Length of a [`chunk_key`] for `entity_key`.
pub(crate) fn chunk_key_len(entity_key: &[u8]) -> usize {
    8 + entity_key.len() + 1 + 8
}

/// `entity key ‖ NUL ‖ seq`.
pub(crate) fn snapshot_key(entity_key: &[u8], seq: Seq) -> Vec<u8> {
    let mut k = Vec::with_capacity(entity_key.len() + 9);
    k.extend_from_slice(entity_key);
    k.push(0);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// The seq of a snapshot key (its last 8 bytes).
pub(crate) fn snapshot_key_seq(key: &[u8]) -> Result<Seq> {
    if key.len() < 9 {
        return Err(JournalError::corrupted("snapshot key", "too short"));
    }
    let s = &key[key.len() - 8..];
    let mut b = [0u8; 8];
    b.copy_from_slice(s);
    let seq = u64::from_be_bytes(b);
    crate::codec::check_seq_at_most_max(seq)
        .map_err(|e| JournalError::corrupted("snapshot key", e))?;
    Ok(Seq(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_key_round_trips_and_orders_by_key_group() {
        let pid = PersistenceId::parse("account", "a-1").expect("valid");
        let k = entity_key(&pid, 1024);
        let (kg, back) = parse_entity_key(&k).expect("parses");
        assert_eq!(back, pid);
        assert_eq!(kg, pid.key_group(1024));
        assert!(k.as_slice() >= key_group_start(kg.0).as_slice());
        assert!(k.as_slice() < key_group_start(kg.0 + 1).as_slice());
    }

    #[test]
    fn snapshot_keys_sort_by_seq_within_an_entity() {
        let pid = PersistenceId::parse("account", "a").expect("valid");
        let ek = entity_key(&pid, 16);
        assert!(snapshot_key(&ek, Seq(2)) < snapshot_key(&ek, Seq(10)));
        assert_eq!(
            snapshot_key_seq(&snapshot_key(&ek, Seq(77))).expect("ok"),
            Seq(77)
        );
        // A key past the largest seq (a damaged key) is corruption, not a seq to store.
        assert_eq!(
            snapshot_key_seq(&snapshot_key(&ek, Seq::MAX)).expect("ok"),
            Seq::MAX
        );
        let beyond = snapshot_key_seq(&snapshot_key(&ek, Seq(Seq::MAX.0 + 1)));
        assert!(
            matches!(beyond, Err(JournalError::Corrupted { .. })),
            "{beyond:?}"
        );
    }
}
