//! The shard region: the front door. Routes commands by key group to shard actors (each on its
//! own actix arbiter), and changes the number of shard actors while commands keep flowing
//! (rescale): moving key groups are buffered, drained on their old owner (entities stopped with
//! a handoff snapshot), then handed to their new owner with the buffer flushed in arrival order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::Arbiter;
use stateline_journal::{EntityId, EntityType, Journal, KeyGroup};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::entity::EventSourced;
use crate::entity_actor::ReplyTo;
use crate::error::CommandError;
use crate::shard::{Shard, ShardConfig, ShardRef, ShardStats};

/// Configuration of a shard region, with documented defaults.
#[derive(Clone, Debug)]
pub struct RegionConfig {
    /// Shard actors at start. Default: the number of cores.
    pub shards: usize,
    /// Most commands buffered for key groups in handoff, over the whole region; more are
    /// refused with [`CommandError::Overloaded`], handing the command back. Default 100,000.
    pub buffer_capacity: usize,
    /// How long a rescale waits for the old owners to drain one wave of moving key groups.
    /// Default 30 s (anything longer than 30 years counts as 30 years). On timeout the rescale
    /// stops: the waves already moved stay moved, the timed-out wave and the rest stay with
    /// their old owners (buffered commands go to them in arrival order), every key group keeps
    /// exactly one owner, and
    /// [`RegionError::HandoffTimeout`] is returned; calling `rescale` again continues.
    pub handoff_timeout: Duration,
    /// Key groups moved per handoff wave. Default 16. A command for a moving key group waits
    /// for its wave only, so smaller waves mean shorter pauses (and more, smaller drains).
    pub handoff_wave_key_groups: usize,
    /// Configuration of every shard actor.
    pub shard: ShardConfig,
}

impl Default for RegionConfig {
    fn default() -> Self {
        Self {
            shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
            buffer_capacity: 100_000,
            handoff_timeout: Duration::from_secs(30),
            handoff_wave_key_groups: 16,
            shard: ShardConfig::default(),
        }
    }
}

/// Errors of region operations (commands have [`CommandError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// A region needs at least one shard actor, and at most one per key group.
    #[error("shard count must be between 1 and the number of key groups")]
    InvalidShardCount,
    /// A shard did not drain its moving key groups in time; the rescale stopped at a consistent
    /// intermediate layout (see [`RegionConfig::handoff_timeout`]).
    #[error(
        "handoff timed out after {waited:?}: shard owning {key_groups:?} did not stop its entities"
    )]
    HandoffTimeout {
        /// Key groups of the shard that did not finish.
        key_groups: Range<u32>,
        /// How long the rescale waited.
        waited: Duration,
    },
    /// The journal has more key groups than a region handles
    /// ([`stateline_journal::MAX_KEY_GROUPS`]); only a journal made by an older build or
    /// by hand can.
    #[error("the journal has {key_groups} key groups; a region handles at most {max}")]
    TooManyKeyGroups {
        /// The journal's key-group count.
        key_groups: u32,
        /// [`stateline_journal::MAX_KEY_GROUPS`].
        max: u32,
    },
    /// The entity type name is invalid.
    #[error("invalid entity type: {0}")]
    InvalidType(#[from] stateline_journal::InvalidId),
    /// The region has stopped.
    #[error("region has stopped")]
    Stopped,
}

/// What a rescale did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RescaleReport {
    /// Shard actors before.
    pub from: usize,
    /// Shard actors after.
    pub to: usize,
    /// Key groups that changed owner.
    pub moved_key_groups: usize,
    /// Entities drained and stopped on their old owners.
    pub entities_handed_off: usize,
    /// Commands buffered while their key groups moved.
    pub buffered_commands: usize,
    /// Time from the call until the new layout was in force.
    pub handoff: Duration,
}

/// Per shard actor in [`RegionStats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    /// Key groups it owns: the span from its first to its last (contiguous, except after a
    /// rescale that stopped on a handoff timeout).
    pub key_groups: Range<u32>,
    /// Commands the region holds for its key groups that are in handoff right now.
    pub buffered_commands: usize,
    /// Its counters.
    pub stats: ShardStats,
}

/// Per key group in [`RegionStats`]: what the journal holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyGroupInfo {
    /// The key group.
    pub key_group: u32,
    /// Persistence ids stored.
    pub entities: u64,
    /// Bytes of their stored events.
    pub bytes: u64,
}

/// A snapshot of the region.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionStats {
    /// The shard actors, by key-group range.
    pub shards: Vec<ShardInfo>,
    /// Commands buffered for key groups in handoff.
    pub buffered_commands: usize,
    /// Key groups with stored entities.
    pub key_groups: Vec<KeyGroupInfo>,
    /// Every rescale so far.
    pub rescales: Vec<RescaleReport>,
}

struct Buffered<S: EventSourced> {
    id: EntityId,
    command: S::Command,
    reply_to: ReplyTo<S>,
}

struct ShardSlot<S: EventSourced> {
    shard: ShardRef<S>,
    arbiter: Arbiter,
    range: Range<u32>,
}

struct Routing<S: EventSourced> {
    shards: BTreeMap<u64, ShardSlot<S>>,
    owner: Vec<u64>,
    moving: HashMap<u32, VecDeque<Buffered<S>>>,
    next_id: u64,
    stopped: bool,
}

struct Inner<S: EventSourced> {
    journal: Journal,
    entity_type: EntityType,
    key_groups: u32,
    routing: Mutex<Routing<S>>,
    buffered: AtomicUsize,
    config: RegionConfig,
    /// Serializes rescales (and stop).
    rescaling: tokio::sync::Mutex<()>,
    /// Every completed rescale; readable while another one runs.
    history: Mutex<Vec<RescaleReport>>,
}

/// The front door of stateline: routes commands for entities of type `S` by key group to shard
/// actors, and rescales them at run time. Cheap to clone. Must be started inside an actix
/// system.
pub struct ShardRegion<S: EventSourced> {
    inner: Arc<Inner<S>>,
}

impl<S: EventSourced> Clone for ShardRegion<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// Stops an arbiter and waits for its thread, so that everything it hosted (and the journal
/// handles they held) is dropped when this returns. The shard on it has already stopped, so
/// the wait is short.
fn retire(arbiter: Arbiter) {
    arbiter.stop();
    if arbiter.join().is_err() {
        warn!("a shard arbiter thread panicked");
    }
}

/// `n` contiguous key-group ranges of (nearly) equal size covering `0..key_groups`.
pub fn layout(key_groups: u32, n: usize) -> Vec<Range<u32>> {
    let n = n.max(1) as u64;
    let k = u64::from(key_groups);
    (0..n)
        .map(|i| ((i * k / n) as u32)..(((i + 1) * k / n) as u32))
        .collect()
}

/// Merges sorted key groups into ranges.
fn ranges_of(mut kgs: Vec<u32>) -> Vec<Range<u32>> {
    kgs.sort_unstable();
    let mut out: Vec<Range<u32>> = Vec::new();
    for kg in kgs {
        match out.last_mut() {
            Some(r) if r.end == kg => r.end = kg + 1,
            _ => out.push(kg..kg + 1),
        }
    }
    out
}

impl<S: EventSourced> ShardRegion<S> {
    /// Starts a region with `config.shards` shard actors, each on its own arbiter.
    ///
    /// # Errors
    /// [`RegionError::InvalidShardCount`], [`RegionError::InvalidType`],
    /// [`RegionError::TooManyKeyGroups`].
    pub fn start(journal: Journal, config: RegionConfig) -> Result<Self, RegionError> {
        if journal.key_groups() > stateline_journal::MAX_KEY_GROUPS {
            return Err(RegionError::TooManyKeyGroups {
                key_groups: journal.key_groups(),
                max: stateline_journal::MAX_KEY_GROUPS,
            });
        }
        if config.shards == 0 || config.shards > journal.key_groups() as usize {
            return Err(RegionError::InvalidShardCount);
        }
        let entity_type = EntityType::new(S::TYPE_NAME)?;
        let key_groups = journal.key_groups();
        let mut shards = BTreeMap::new();
        let mut owner = vec![0u64; key_groups as usize];
        for (i, range) in layout(key_groups, config.shards).into_iter().enumerate() {
            let arbiter = Arbiter::new();
            let shard =
                Shard::<S>::start_on(&arbiter.handle(), journal.clone(), config.shard.clone())?;
            for kg in range.clone() {
                owner[kg as usize] = i as u64;
            }
            shards.insert(
                i as u64,
                ShardSlot {
                    shard,
                    arbiter,
                    range,
                },
            );
        }
        let next_id = shards.len() as u64;
        Ok(Self {
            inner: Arc::new(Inner {
                journal,
                entity_type,
                key_groups,
                routing: Mutex::new(Routing {
                    shards,
                    owner,
                    moving: HashMap::new(),
                    next_id,
                    stopped: false,
                }),
                buffered: AtomicUsize::new(0),
                config,
                rescaling: tokio::sync::Mutex::new(()),
                history: Mutex::new(Vec::new()),
            }),
        })
    }

    fn routing(&self) -> MutexGuard<'_, Routing<S>> {
        self.inner.routing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The journal behind the region.
    pub fn journal(&self) -> &Journal {
        &self.inner.journal
    }

    /// Number of shard actors in force.
    pub fn shard_count(&self) -> usize {
        self.routing().shards.len()
    }

    /// Routes `command` to entity `id` and returns a receiver of its reply. Refusals are
    /// immediate and hand the command back.
    ///
    /// # Errors
    /// [`CommandError::InvalidId`] (synchronously, for an invalid id),
    /// [`CommandError::Overloaded`] (shard queue or handoff buffer full),
    /// [`CommandError::ShardStopped`] (region stopped).
    #[allow(clippy::type_complexity)]
    pub fn enqueue(
        &self,
        id: &str,
        command: S::Command,
    ) -> Result<
        oneshot::Receiver<Result<S::Reply, CommandError<S::Command>>>,
        CommandError<S::Command>,
    > {
        let eid = match EntityId::new(id) {
            Ok(e) => e,
            Err(error) => return Err(CommandError::InvalidId { command, error }),
        };
        let kg = KeyGroup::of(S::TYPE_NAME, eid.as_str(), self.inner.key_groups).0;
        let (reply_to, rx) = oneshot::channel();
        let mut r = self.routing();
        if r.stopped {
            return Err(CommandError::ShardStopped { command });
        }
        if let Some(buf) = r.moving.get_mut(&kg) {
            let n = self.inner.buffered.load(Ordering::SeqCst);
            if n >= self.inner.config.buffer_capacity {
                return Err(CommandError::Overloaded { command, queued: n });
            }
            buf.push_back(Buffered {
                id: eid,
                command,
                reply_to,
            });
            self.inner.buffered.fetch_add(1, Ordering::SeqCst);
            return Ok(rx);
        }
        let owner = r.owner[kg as usize];
        match r.shards.get(&owner) {
            Some(slot) => slot
                .shard
                .enqueue_with(eid, command, reply_to)
                .map_err(|(e, _)| e)?,
            None => return Err(CommandError::ShardStopped { command }),
        }
        Ok(rx)
    }

    /// Sends `command` to entity `id` and waits for its reply.
    ///
    /// # Errors
    /// Every [`CommandError`]; refusals hand the command back.
    pub async fn send(
        &self,
        id: &str,
        command: S::Command,
    ) -> Result<S::Reply, CommandError<S::Command>> {
        let rx = self.enqueue(id, command)?;
        rx.await.unwrap_or(Err(CommandError::EntityStopped))
    }

    /// Sends `command` without waiting for its reply (fire and forget); it is still applied
    /// exactly once.
    ///
    /// # Errors
    /// The immediate refusals of [`Self::enqueue`].
    pub fn tell(&self, id: &str, command: S::Command) -> Result<(), CommandError<S::Command>> {
        self.enqueue(id, command).map(drop)
    }

    /// Changes the number of shard actors to `shards` while commands keep flowing; resolves
    /// when the new layout is in force. Only key groups whose owner changes move (growing 4 → 8
    /// moves half of them, the minimum). Concurrent calls are serialized; rescaling to the
    /// current size is a no-op.
    ///
    /// # Errors
    /// [`RegionError::InvalidShardCount`]; [`RegionError::HandoffTimeout`] (the rescale was
    /// aborted, the old layout stays); [`RegionError::Stopped`].
    pub async fn rescale(&self, shards: usize) -> Result<RescaleReport, RegionError> {
        if shards == 0 || shards > self.inner.key_groups as usize {
            return Err(RegionError::InvalidShardCount);
        }
        // Run to completion even if the caller stops waiting: a rescale abandoned halfway
        // would leave key groups buffering forever.
        let me = self.clone();
        actix_rt::spawn(async move { me.rescale_now(shards).await })
            .await
            .map_err(|_| RegionError::Stopped)?
    }

    async fn rescale_now(&self, shards: usize) -> Result<RescaleReport, RegionError> {
        let _serialized = self.inner.rescaling.lock().await;
        let started = Instant::now();
        let k = self.inner.key_groups;
        let ranges = layout(k, shards);

        // Plan: each new range goes to the shard that already owns most of it (by actual
        // ownership, which after an interrupted rescale need not be contiguous).
        let (from, owner, ids) = {
            let r = self.routing();
            if r.stopped {
                return Err(RegionError::Stopped);
            }
            let ids: Vec<u64> = r.shards.keys().copied().collect();
            (r.shards.len(), r.owner.clone(), ids)
        };
        let mut used = std::collections::HashSet::new();
        let mut assignment: Vec<Option<u64>> = Vec::with_capacity(ranges.len());
        for range in &ranges {
            let best = ids
                .iter()
                .filter(|id| !used.contains(*id))
                .map(|id| {
                    let owned = range
                        .clone()
                        .filter(|kg| owner[*kg as usize] == *id)
                        .count();
                    (owned, *id)
                })
                .filter(|(o, _)| *o > 0)
                .max();
            if let Some((_, id)) = best {
                used.insert(id);
            }
            assignment.push(best.map(|(_, id)| id));
        }
        let in_place = from == shards
            && ranges.iter().zip(&assignment).all(|(range, a)| {
                a.is_some_and(|id| range.clone().all(|kg| owner[kg as usize] == id))
            });
        if in_place {
            return Ok(RescaleReport {
                from,
                to: shards,
                moved_key_groups: 0,
                entities_handed_off: 0,
                buffered_commands: 0,
                handoff: started.elapsed(),
            });
        }
        // Start the new shards before taking the routing lock.
        let mut fresh = Vec::new();
        for (i, a) in assignment.iter().enumerate() {
            if a.is_none() {
                let arbiter = Arbiter::new();
                let shard = Shard::<S>::start_on(
                    &arbiter.handle(),
                    self.inner.journal.clone(),
                    self.inner.config.shard.clone(),
                )?;
                fresh.push((i, shard, arbiter));
            }
        }
        // Register the new shards and plan every key group's move.
        let mut new_owner = vec![0u64; k as usize];
        let mut by_old: BTreeMap<u64, VecDeque<u32>> = BTreeMap::new();
        {
            let mut r = self.routing();
            let mut ids = Vec::with_capacity(ranges.len());
            let mut fresh_iter = fresh.into_iter();
            for (i, a) in assignment.iter().enumerate() {
                let id = match a {
                    Some(id) => *id,
                    None => {
                        let Some((_, shard, arbiter)) = fresh_iter.next() else {
                            return Err(RegionError::Stopped);
                        };
                        let id = r.next_id;
                        r.next_id += 1;
                        r.shards.insert(
                            id,
                            ShardSlot {
                                shard,
                                arbiter,
                                // Owns nothing until its key groups arrive.
                                range: ranges[i].start..ranges[i].start,
                            },
                        );
                        id
                    }
                };
                ids.push(id);
            }
            for (i, range) in ranges.iter().enumerate() {
                for kg in range.clone() {
                    new_owner[kg as usize] = ids[i];
                    let old = r.owner[kg as usize];
                    if old != ids[i] {
                        by_old.entry(old).or_default().push_back(kg);
                    }
                }
            }
        }
        let moved: usize = by_old.values().map(VecDeque::len).sum();
        // Waves of key groups, taken round-robin from the old owners so that every draining
        // shard works at once; a command waits only for its own wave, not the whole handoff.
        let wave_size = self.inner.config.handoff_wave_key_groups.max(1);
        let mut waves: Vec<Vec<u32>> = Vec::new();
        let mut current = Vec::new();
        while by_old.values().any(|q| !q.is_empty()) {
            for q in by_old.values_mut() {
                if let Some(kg) = q.pop_front() {
                    current.push(kg);
                    if current.len() == wave_size {
                        waves.push(std::mem::take(&mut current));
                    }
                }
            }
        }
        if !current.is_empty() {
            waves.push(current);
        }

        let mut handed_off = 0;
        let mut buffered_commands = 0;
        let mut failed: Option<Range<u32>> = None;
        for wave in waves {
            // Buffer the wave's key groups, then drain them on their old owners.
            let mut waits = Vec::new();
            {
                let mut r = self.routing();
                let mut per_old: HashMap<u64, Vec<u32>> = HashMap::new();
                for &kg in &wave {
                    r.moving.insert(kg, VecDeque::new());
                    per_old.entry(r.owner[kg as usize]).or_default().push(kg);
                }
                for (old, kgs) in per_old {
                    if let Some(slot) = r.shards.get(&old) {
                        let range = slot.range.clone();
                        waits.push((range, slot.shard.start_release(ranges_of(kgs))));
                    }
                }
            }
            let deadline = deadline_after(self.inner.config.handoff_timeout);
            for (range, rx) in waits {
                let outcome = match rx {
                    Some(rx) => tokio::time::timeout_at(deadline, rx)
                        .await
                        .ok()
                        .and_then(Result::ok),
                    None => None,
                };
                match outcome {
                    Some(report) => handed_off += report.entities,
                    None => {
                        failed.get_or_insert(range);
                    }
                }
            }
            // Hand the wave over (or back, on timeout), flushing its buffers in arrival order.
            let abort = failed.is_some();
            let wave_kgs = wave.clone();
            let mut r = self.routing();
            for kg in wave {
                let Some(buf) = r.moving.remove(&kg) else {
                    continue;
                };
                let target = if abort {
                    r.owner[kg as usize]
                } else {
                    new_owner[kg as usize]
                };
                r.owner[kg as usize] = target;
                buffered_commands += buf.len();
                self.inner.buffered.fetch_sub(buf.len(), Ordering::SeqCst);
                // Once the new owner refuses one of an entity's commands, the entity's later
                // buffered commands are refused too, so a retry cannot overtake them.
                let mut refused: std::collections::HashSet<EntityId> = Default::default();
                for b in buf {
                    if refused.contains(&b.id) {
                        let _ = b.reply_to.send(Err(CommandError::Overloaded {
                            command: b.command,
                            queued: 0,
                        }));
                        continue;
                    }
                    let id = b.id.clone();
                    let result = match r.shards.get(&target) {
                        Some(slot) => slot.shard.enqueue_with(b.id, b.command, b.reply_to),
                        None => {
                            let _ = b
                                .reply_to
                                .send(Err(CommandError::ShardStopped { command: b.command }));
                            Ok(())
                        }
                    };
                    // A refusal by the new owner goes back to the caller with the command.
                    if let Err((e, reply_to)) = result {
                        warn!(error = %e, "buffered command refused after handoff");
                        refused.insert(id);
                        let _ = reply_to.send(Err(e));
                    }
                }
            }
            if abort {
                break;
            }
            if S::RECOVER_EAGERLY {
                // The new owners recover the moved entities now, a few at a time.
                let mut per_new: HashMap<u64, Vec<u32>> = HashMap::new();
                for &kg in &wave_kgs {
                    per_new.entry(new_owner[kg as usize]).or_default().push(kg);
                }
                for (id, kgs) in per_new {
                    if let Some(slot) = r.shards.get(&id) {
                        slot.shard.warm(ranges_of(kgs));
                    }
                }
            }
        }

        // Shards that own nothing any more stop; the others get their new ranges.
        let mut retired = Vec::new();
        {
            let mut r = self.routing();
            let mut spans: HashMap<u64, Range<u32>> = HashMap::new();
            for (kg, id) in r.owner.iter().enumerate() {
                let kg = kg as u32;
                spans
                    .entry(*id)
                    .and_modify(|s| s.end = kg + 1)
                    .or_insert(kg..kg + 1);
            }
            let ids: Vec<u64> = r.shards.keys().copied().collect();
            for id in ids {
                match spans.get(&id) {
                    Some(span) => {
                        if let Some(slot) = r.shards.get_mut(&id) {
                            slot.range = span.clone();
                        }
                    }
                    None => {
                        if let Some(slot) = r.shards.remove(&id) {
                            retired.push(slot);
                        }
                    }
                }
            }
        }
        for slot in retired {
            slot.shard.stop().await;
            retire(slot.arbiter);
        }
        if let Some(key_groups) = failed {
            let waited = started.elapsed();
            warn!(?key_groups, ?waited, "handoff timed out; rescale stopped");
            return Err(RegionError::HandoffTimeout { key_groups, waited });
        }
        let report = RescaleReport {
            from,
            to: shards,
            moved_key_groups: moved,
            entities_handed_off: handed_off,
            buffered_commands,
            handoff: started.elapsed(),
        };
        info!(
            from,
            to = shards,
            moved_key_groups = moved,
            entities = handed_off,
            buffered = buffered_commands,
            handoff_ms = report.handoff.as_millis() as u64,
            "rescale complete"
        );
        self.inner
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(report.clone());
        Ok(report)
    }

    /// Per shard actor its key-group range and counters; per key group what the journal
    /// holds; commands buffered; the rescale history.
    ///
    /// # Errors
    /// [`RegionError::Stopped`] if a shard stopped; journal read errors are reported as an
    /// empty key-group list.
    pub async fn stats(&self) -> Result<RegionStats, RegionError> {
        let shards: Vec<(Range<u32>, ShardRef<S>, usize)> = {
            let r = self.routing();
            let mut buffered: HashMap<u64, usize> = HashMap::new();
            for (kg, buf) in &r.moving {
                *buffered.entry(r.owner[*kg as usize]).or_default() += buf.len();
            }
            r.shards
                .iter()
                .map(|(id, s)| {
                    let b = buffered.get(id).copied().unwrap_or(0);
                    (s.range.clone(), s.shard.clone(), b)
                })
                .collect()
        };
        let mut infos = Vec::new();
        for (range, shard, buffered_commands) in shards {
            let stats = shard.stats().await.map_err(|_| RegionError::Stopped)?;
            infos.push(ShardInfo {
                key_groups: range,
                buffered_commands,
                stats,
            });
        }
        infos.sort_by_key(|s| s.key_groups.start);
        let mut per_kg: BTreeMap<u32, KeyGroupInfo> = BTreeMap::new();
        if let Ok(entities) = self.inner.journal.entities(None) {
            for e in entities {
                if e.persistence_id.entity_type() != &self.inner.entity_type {
                    continue;
                }
                let info = per_kg.entry(e.key_group.0).or_insert(KeyGroupInfo {
                    key_group: e.key_group.0,
                    entities: 0,
                    bytes: 0,
                });
                info.entities += 1;
                info.bytes += e.bytes;
            }
        }
        // From the same moment as the per-shard counts.
        let buffered_commands = infos.iter().map(|s| s.buffered_commands).sum();
        Ok(RegionStats {
            shards: infos,
            buffered_commands,
            key_groups: per_kg.into_values().collect(),
            rescales: self
                .inner
                .history
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        })
    }

    /// Stops the region: queued commands are processed, every entity is passivated, later
    /// commands are refused with [`CommandError::ShardStopped`]. Resolves when every shard has
    /// stopped.
    pub async fn stop(&self) {
        let _serialized = self.inner.rescaling.lock().await;
        let slots: Vec<ShardSlot<S>> = {
            let mut r = self.routing();
            r.stopped = true;
            std::mem::take(&mut r.shards).into_values().collect()
        };
        for slot in slots {
            slot.shard.stop().await;
            retire(slot.arbiter);
        }
    }
}

/// `now + timeout` as a deadline, or one 30 years away when that does not fit in an instant
/// (`Duration::MAX` as a handoff timeout means "wait as long as it takes").
fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 86_400);
    let now = tokio::time::Instant::now();
    now.checked_add(timeout.min(FAR)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_every_key_group_once() {
        for n in 1..=9 {
            let l = layout(1024, n);
            assert_eq!(l.len(), n);
            assert_eq!(l[0].start, 0);
            assert_eq!(l[n - 1].end, 1024);
            assert!(l.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn ranges_merge_contiguous_key_groups() {
        assert_eq!(ranges_of(vec![5, 1, 2, 3, 7]), vec![1..4, 5..6, 7..8]);
    }
}
