//! Identifier newtypes, validated once at the boundary: entity types and ids, persistence ids,
//! sequence numbers, changelog offsets and key groups.

use std::fmt;
use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use crate::error::InvalidId;

/// Longest accepted entity type name, in bytes.
pub const MAX_TYPE_NAME_LEN: usize = 255;
/// Longest accepted entity id, in bytes.
pub const MAX_ENTITY_ID_LEN: usize = 1024;

/// Name of the stable hash that maps persistence ids to key groups. Written into every journal
/// when it is created and checked on every open.
pub const KEY_GROUP_HASH: &str = "xxh3-64(type NUL id) mod key_groups";

fn validate(kind: &'static str, s: &str, max: usize) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty { kind });
    }
    if s.len() > max {
        return Err(InvalidId::TooLong {
            kind,
            len: s.len(),
            max,
        });
    }
    if s.as_bytes().contains(&0) {
        return Err(InvalidId::ContainsNul { kind });
    }
    Ok(())
}

/// The stable name of an entity type (cheap to clone: shared) (the `TYPE_NAME` of an `EventSourced` type): non-empty, at
/// most [`MAX_TYPE_NAME_LEN`] bytes, no NUL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct EntityType(Arc<str>);

impl EntityType {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`InvalidId`] if it is empty, too long or contains NUL.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidId> {
        let name = name.into();
        validate("entity type", &name, MAX_TYPE_NAME_LEN)?;
        Ok(Self(name.into()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A user's entity key (cheap to clone: shared): non-empty, at most [`MAX_ENTITY_ID_LEN`] bytes, no NUL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct EntityId(Arc<str>);

impl EntityId {
    /// Validates `id`.
    ///
    /// # Errors
    /// [`InvalidId`] if it is empty, too long or contains NUL.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidId> {
        let id = id.into();
        validate("entity id", &id, MAX_ENTITY_ID_LEN)?;
        Ok(Self(id.into()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `(entity type, entity id)`: the unit of journal ordering.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PersistenceId {
    entity_type: EntityType,
    entity_id: EntityId,
}

impl PersistenceId {
    /// Builds a persistence id from validated parts.
    pub fn new(entity_type: EntityType, entity_id: EntityId) -> Self {
        Self {
            entity_type,
            entity_id,
        }
    }

    /// Validates both parts and builds a persistence id.
    ///
    /// # Errors
    /// [`InvalidId`] if either part is invalid.
    pub fn parse(entity_type: &str, entity_id: &str) -> Result<Self, InvalidId> {
        Ok(Self::new(
            EntityType::new(entity_type)?,
            EntityId::new(entity_id)?,
        ))
    }

    /// The entity type.
    pub fn entity_type(&self) -> &EntityType {
        &self.entity_type
    }

    /// The entity id.
    pub fn entity_id(&self) -> &EntityId {
        &self.entity_id
    }

    /// The bytes the key-group hash is computed over: `type NUL id`.
    pub(crate) fn hash_input(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.entity_type.0.len() + 1 + self.entity_id.0.len());
        v.extend_from_slice(self.entity_type.0.as_bytes());
        v.push(0);
        v.extend_from_slice(self.entity_id.0.as_bytes());
        v
    }

    /// The key group of this persistence id among `key_groups` groups, by [`KEY_GROUP_HASH`].
    pub fn key_group(&self, key_groups: u32) -> KeyGroup {
        KeyGroup::of_bytes(&self.hash_input(), key_groups)
    }
}

impl fmt::Display for PersistenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.entity_type.0, self.entity_id.0)
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lets maps keyed by `EntityId` be looked up by `&str` (hash and order are the string's).
impl std::borrow::Borrow<str> for EntityId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A per-persistence-id sequence number: starts at 1, contiguous, never reused.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Seq(pub u64);

impl Seq {
    /// The largest seq an event may have: 2^63 − 1 (a signed 64-bit count, as in Akka and
    /// most event stores), so that the next seq and a count of seqs never overflow, here or in
    /// the layers above. Appends that would go past it and import floors above it are refused
    /// with [`crate::Rejected::SeqOutOfRange`]; a stored seq above it reads as corruption
    /// (`journal/FORMAT.md` says which older files can hold one).
    pub const MAX: Seq = Seq(i64::MAX as u64);
}

/// A position in the global, append-ordered changelog. The first event has offset 1.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Offset(pub u64);

/// `stable_hash(persistence id) % key_groups`: the unit of ownership and of movement.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct KeyGroup(pub u32);

impl KeyGroup {
    /// The key group of `(entity_type, entity_id)` among `key_groups`, by [`KEY_GROUP_HASH`],
    /// without building a [`PersistenceId`] (the routing hot path). Same result as
    /// [`PersistenceId::key_group`].
    pub fn of(entity_type: &str, entity_id: &str, key_groups: u32) -> KeyGroup {
        let (t, i) = (entity_type.as_bytes(), entity_id.as_bytes());
        let n = t.len() + 1 + i.len();
        let hash = if n <= 128 {
            // The common case: one-shot hashing of a stack buffer.
            let mut buf = [0u8; 128];
            buf[..t.len()].copy_from_slice(t);
            buf[t.len() + 1..n].copy_from_slice(i);
            xxh3_64(&buf[..n])
        } else {
            let mut h = xxhash_rust::xxh3::Xxh3::new();
            h.update(t);
            h.update(&[0]);
            h.update(i);
            h.digest()
        };
        KeyGroup((hash % u64::from(key_groups.max(1))) as u32)
    }

    pub(crate) fn of_bytes(hash_input: &[u8], key_groups: u32) -> KeyGroup {
        // key_groups is validated non-zero by the builder; guard anyway so bytes never panic.
        let n = u64::from(key_groups.max(1));
        KeyGroup((xxh3_64(hash_input) % n) as u32)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for KeyGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(EntityId::new("").is_err());
        assert!(EntityId::new("a\0b").is_err());
        assert!(EntityId::new("x".repeat(MAX_ENTITY_ID_LEN + 1)).is_err());
        assert!(EntityId::new("x".repeat(MAX_ENTITY_ID_LEN)).is_ok());
        assert!(EntityType::new("account").is_ok());
        assert!(PersistenceId::parse("", "1").is_err());
    }

    #[test]
    fn key_group_is_stable() {
        // Pinned values: changing the hash silently would remap every journal.
        let pid = PersistenceId::parse("account", "42").expect("valid");
        assert_eq!(xxh3_64(b"account\x0042"), xxh3_64(&pid.hash_input()));
        let kg = pid.key_group(1024);
        assert_eq!(kg, KeyGroup((xxh3_64(b"account\x0042") % 1024) as u32));
        assert!(kg.0 < 1024);
        assert_eq!(pid.key_group(1), KeyGroup(0));
        for n in [1, 7, 1024, 65_536] {
            assert_eq!(KeyGroup::of("account", "42", n), pid.key_group(n));
        }
        let long = PersistenceId::parse("account", &"x".repeat(300)).expect("valid");
        assert_eq!(
            KeyGroup::of("account", &"x".repeat(300), 1024),
            long.key_group(1024)
        );
    }
}
