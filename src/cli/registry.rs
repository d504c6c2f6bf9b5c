//! Entity types registered with [`super::Cli::register`]: how to decode their events and
//! snapshots, apply events to a state, and show a state as JSON — behind object-safe traits so
//! that commands work on any mix of registered types.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use stateline_actors::EventSourced;
use stateline_journal::{EventRecord, SnapshotRecord};

/// A registered entity type.
pub(crate) trait TypedEntity: Send + Sync {
    /// The snapshot version its code reads.
    fn snapshot_version(&self) -> u32;
    /// The state before the first event (`Default`).
    fn initial(&self) -> Box<dyn TypedState>;
    /// Decodes a snapshot of the current snapshot version into a state.
    fn decode_snapshot(&self, rec: &SnapshotRecord) -> Result<Box<dyn TypedState>, String>;
    /// Whether an event decodes as this type's event (through its upcaster).
    fn check_event(&self, rec: &EventRecord) -> Result<(), String>;
}

/// A state of a registered entity type, being replayed.
pub(crate) trait TypedState {
    /// Decodes `rec` (through the upcaster) and applies it.
    fn apply(&mut self, rec: &EventRecord) -> Result<(), String>;
    /// The state as JSON (its `Serialize` impl through serde_json).
    fn to_json(&self) -> Result<serde_json::Value, String>;
}

struct Registered<S>(PhantomData<fn() -> S>);

struct State<S>(S);

impl<S: EventSourced> TypedEntity for Registered<S> {
    fn snapshot_version(&self) -> u32 {
        S::SNAPSHOT_VERSION
    }

    fn initial(&self) -> Box<dyn TypedState> {
        Box::new(State(S::default()))
    }

    fn decode_snapshot(&self, rec: &SnapshotRecord) -> Result<Box<dyn TypedState>, String> {
        if rec.manifest.version != S::SNAPSHOT_VERSION {
            return Err(format!(
                "snapshot version {}, this code reads version {}",
                rec.manifest.version,
                S::SNAPSHOT_VERSION
            ));
        }
        let s: S = rmp_serde::from_slice(&rec.payload)
            .map_err(|e| format!("does not decode as {}: {e}", S::TYPE_NAME))?;
        Ok(Box::new(State(s)))
    }

    fn check_event(&self, rec: &EventRecord) -> Result<(), String> {
        S::upcast(&rec.manifest, &rec.payload)
            .map(drop)
            .map_err(|e| format!("does not decode as an event of {}: {e}", S::TYPE_NAME))
    }
}

impl<S: EventSourced> TypedState for State<S> {
    fn apply(&mut self, rec: &EventRecord) -> Result<(), String> {
        let event = S::upcast(&rec.manifest, &rec.payload)
            .map_err(|e| format!("does not decode as an event of {}: {e}", S::TYPE_NAME))?;
        self.0.apply(&event);
        Ok(())
    }

    fn to_json(&self) -> Result<serde_json::Value, String> {
        serde_json::to_value(&self.0).map_err(|e| format!("state does not serialize: {e}"))
    }
}

/// The registered entity types by name.
#[derive(Default)]
pub(crate) struct Registry {
    types: BTreeMap<&'static str, Box<dyn TypedEntity>>,
}

impl Registry {
    /// Registers `S` (a later registration of the same name replaces an earlier one).
    pub fn register<S: EventSourced>(&mut self) {
        self.types
            .insert(S::TYPE_NAME, Box::new(Registered::<S>(PhantomData)));
    }

    /// The registered type named `name`.
    pub fn get(&self, name: &str) -> Option<&dyn TypedEntity> {
        self.types.get(name).map(Box::as_ref)
    }

    /// Names of the registered types.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.types.keys().copied()
    }
}
