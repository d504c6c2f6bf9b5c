//! The shard actor: hosts the entities of one entity type, creates them on demand, feeds each
//! one command at a time from a bounded per-shard queue, passivates idle and least-recently-used
//! entities, hibernates idle ones, and reports stats. [`ShardRef`] (`shard_ref.rs`) is the
//! handle callers send through; [`ShardConfig`] and [`ShardStats`] are in `shard_config.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use stateline_journal::{EntityId, EntityType, Journal, KeyGroup, PersistenceId};
use tokio::sync::oneshot;
use tracing::debug;

use crate::core::EntityCore;
use crate::entity::EventSourced;
use crate::entity_actor::{
    EntityActor, Exec, Gone, Hibernate, Hibernated, Passivate, Passivated, Processed, ReplyTo,
};
use crate::error::CommandError;
pub use crate::shard_config::{ShardConfig, ShardStats};
pub use crate::shard_ref::ShardRef;

struct Pending<S: EventSourced> {
    command: S::Command,
    reply_to: ReplyTo<S>,
}

struct Slot<S: EventSourced> {
    addr: Option<Addr<EntityActor<S>>>,
    /// The state of a hibernated entity (never together with `addr`).
    parked: Option<Box<EntityCore<S>>>,
    incarnation: u64,
    queue: VecDeque<Pending<S>>,
    busy: bool,
    /// A passivation or hibernation is in flight: wait for the actor's answer.
    passivating: bool,
    /// [`PassivateNow`] arrived while `passivating`: if that was a hibernation, passivate once
    /// it answers (cleared when a passivation answers or the actor dies).
    passivate_asked: bool,
    /// The stop in flight is a hibernation, and who asked for it.
    hibernating: Asked,
    /// Received a command since the running-actor bound last looked at it (second chance).
    referenced: bool,
    tick: u64,
    /// Sweep epoch of the last command.
    last_used: u64,
    state_bytes: u64,
    key_group: u32,
    /// Being handed off or shut down: passivate as soon as idle, then forget.
    draining: bool,
}

impl<S: EventSourced> Slot<S> {
    /// A slot with no actor yet.
    fn new(key_group: u32, queue: VecDeque<Pending<S>>, tick: u64, last_used: u64) -> Self {
        Slot {
            addr: None,
            parked: None,
            incarnation: 0,
            queue,
            busy: false,
            passivating: false,
            passivate_asked: false,
            hibernating: Asked::No,
            referenced: false,
            tick,
            last_used,
            state_bytes: 0,
            key_group,
            draining: false,
        }
    }

    /// Has a running actor or a hibernated state.
    fn is_live(&self) -> bool {
        self.addr.is_some() || self.parked.is_some()
    }
}

/// Who asked an entity's actor to hibernate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Asked {
    /// No hibernation in flight.
    No,
    /// The sweep, because the entity was idle (its running-order entry stays).
    Idle,
    /// The bound on running actors (which took its running-order entry).
    Bound,
}

/// Why an entity actor starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// To run commands (or recover eagerly): counts against the running bound.
    ForCommands,
    /// A hibernated entity woken only to passivate through its actor: it stops at once.
    ToPassivate,
}

/// Running-order entries the bound looks at per actor start: bounded work per start, even
/// when most running actors are busy or recently used (later starts continue the round).
const ROOM_SCAN: usize = 64;

/// Deliver a command to an entity of the shard.
pub(crate) struct Deliver<S: EventSourced> {
    pub id: EntityId,
    pub command: S::Command,
    pub reply_to: ReplyTo<S>,
}

impl<S: EventSourced> Message for Deliver<S> {
    type Result = ();
}

/// Ask for the shard's stats.
pub(crate) struct GetStats;

impl Message for GetStats {
    type Result = ShardStats;
}

/// A shard actor hosting entities of type `S`.
pub struct Shard<S: EventSourced> {
    /// `None` once the shard has stopped: a stopped shard holds no journal handle.
    journal: Option<Journal>,
    entity_type: EntityType,
    config: ShardConfig,
    /// Keyed by the entity id its actors' persistence ids share (one allocation per entity).
    slots: HashMap<EntityId, Slot<S>>,
    /// Incremented by every sweep: a coarse clock for idleness.
    epoch: u64,
    next_tick: u64,
    next_incarnation: u64,
    /// Live entities: running actors plus hibernated states.
    live: usize,
    hibernated: usize,
    /// Hibernations asked for and not yet answered (their actors still run).
    hibernating: usize,
    /// Running actors in start order, as `(id, incarnation)`, for the second-chance choice of
    /// which to hibernate past [`ShardConfig::max_running_entities`]. Entries of actors that
    /// have stopped since are skipped and compacted away.
    running_order: VecDeque<(EntityId, u64)>,
    /// Length of `running_order` after its last compaction.
    running_order_floor: usize,
    queued: Arc<AtomicUsize>,
    stats: ShardStats,
    stopping: Vec<oneshot::Sender<()>>,
    releases: Vec<PendingRelease>,
    key_groups: u32,
    /// This shard's address, shared with its entities.
    me: Option<Arc<Addr<Shard<S>>>>,
    /// Entities to recover eagerly, a few per turn of the mailbox.
    warming: VecDeque<EntityId>,
    /// Stopped: every command is refused and handed back.
    closed: bool,
}

/// A handoff in progress: the entities of some key groups still to drain.
struct PendingRelease {
    remaining: std::collections::HashSet<EntityId>,
    done: oneshot::Sender<ReleaseReport>,
    started: Instant,
    entities: usize,
}

/// What a shard did to release key groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReleaseReport {
    /// Entities that were live or had queued commands, drained and stopped.
    pub entities: usize,
    /// Time from the request until the last of them stopped.
    pub elapsed: Duration,
}

impl<S: EventSourced> Shard<S> {
    /// Starts a shard actor on the current actix arbiter and returns its handle.
    ///
    /// # Errors
    /// [`stateline_journal::InvalidId`] if `S::TYPE_NAME` is not a valid entity type name.
    pub fn start(
        journal: Journal,
        config: ShardConfig,
    ) -> Result<ShardRef<S>, stateline_journal::InvalidId> {
        Self::start_on(&Arbiter::current(), journal, config)
    }

    /// Starts a shard actor on `arbiter` (a thread of its own) and returns its handle.
    ///
    /// # Errors
    /// [`stateline_journal::InvalidId`] if `S::TYPE_NAME` is not a valid entity type name.
    pub fn start_on(
        arbiter: &ArbiterHandle,
        journal: Journal,
        config: ShardConfig,
    ) -> Result<ShardRef<S>, stateline_journal::InvalidId> {
        let entity_type = EntityType::new(S::TYPE_NAME)?;
        let journal_key_groups = journal.key_groups();
        let queued = Arc::new(AtomicUsize::new(0));
        let capacity = config.max_queued_commands;
        let shard = Shard::<S> {
            journal: Some(journal),
            entity_type: entity_type.clone(),
            config,
            slots: HashMap::new(),
            epoch: 0,
            next_tick: 0,
            next_incarnation: 0,
            live: 0,
            hibernated: 0,
            hibernating: 0,
            running_order: VecDeque::new(),
            running_order_floor: 0,
            queued: queued.clone(),
            stats: ShardStats::default(),
            stopping: Vec::new(),
            releases: Vec::new(),
            key_groups: journal_key_groups,
            me: None,
            warming: VecDeque::new(),
            closed: false,
        };
        let mailbox = capacity.saturating_mul(2).clamp(1024, 1 << 30);
        // The handle bounds what is queued (max_queued_commands); the actix mailbox must not
        // refuse below that bound (entities' reports come on top). The channel is made with
        // that capacity before any message can be sent.
        let (tx, rx) = actix::dev::channel::channel::<Shard<S>>(mailbox);
        arbiter.spawn_fn(move || {
            let ctx = Context::with_receiver(rx);
            actix_rt::spawn(ctx.into_future(shard));
        });
        let addr = Addr::new(tx);
        Ok(ShardRef {
            addr,
            entity_type,
            queued,
            capacity,
        })
    }

    fn touch(&mut self, id: &str) {
        let tick = self.next_tick;
        self.next_tick += 1;
        let epoch = self.epoch;
        if let Some(slot) = self.slots.get_mut(id) {
            slot.tick = tick;
            slot.last_used = epoch;
            slot.referenced = true;
        }
    }

    /// Entities whose actor runs and is not on its way to hibernation.
    fn running(&self) -> usize {
        self.live
            .saturating_sub(self.hibernated)
            .saturating_sub(self.hibernating)
    }

    /// Before an actor starts: hibernates idle running actors until one more fits under
    /// [`ShardConfig::max_running_entities`]. Second chance over the start order: an actor
    /// that received a command since it was last looked at goes to the back once; busy ones
    /// always do. Looks at no more than [`ROOM_SCAN`] entries: if they were all busy or
    /// recently used, the bound is exceeded for now and the next starts go on from there.
    fn make_running_room(&mut self) {
        let cap = self.config.max_running_entities;
        let mut budget = ROOM_SCAN;
        while self.running() >= cap && budget > 0 {
            budget -= 1;
            let Some((id, incarnation)) = self.running_order.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(id.as_str()) else {
                continue;
            };
            if slot.incarnation != incarnation || slot.addr.is_none() {
                continue;
            }
            let idle = !slot.busy && !slot.passivating && !slot.draining && slot.queue.is_empty();
            if !idle || std::mem::take(&mut slot.referenced) {
                self.running_order.push_back((id, incarnation));
                continue;
            }
            self.hibernate(id.as_str(), Asked::Bound);
        }
    }

    /// Asks the idle running actor of `id` to hibernate.
    fn hibernate(&mut self, id: &str, asker: Asked) {
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if slot.passivating {
            return;
        }
        let Some(addr) = slot.addr.as_ref() else {
            return;
        };
        slot.passivating = true;
        slot.hibernating = asker;
        self.hibernating += 1;
        addr.do_send(Hibernate);
    }

    /// The actor of `slot` answered a stop request or died: a hibernation it was asked for is
    /// no longer in flight. Returns who had asked for one.
    fn stop_answered(hibernating: &mut usize, slot: &mut Slot<S>) -> Asked {
        let asked = std::mem::replace(&mut slot.hibernating, Asked::No);
        if asked != Asked::No {
            *hibernating -= 1;
        }
        asked
    }

    /// Starts the entity actor of a slot that has none: on its hibernated state if it has
    /// one, otherwise recovering from the journal.
    fn start_entity(&mut self, id: &str, why: Start, ctx: &mut Context<Self>) {
        let Some(entity_id) = self.slots.get_key_value(id).map(|(k, _)| k.clone()) else {
            return;
        };
        let parked = self.slots.get_mut(id).and_then(|s| s.parked.take());
        if parked.is_none() && self.live >= self.config.max_active_entities {
            self.evict_lru(ctx);
        }
        if why == Start::ForCommands {
            self.make_running_room();
        }
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        let me = match &self.me {
            Some(me) => me.clone(),
            None => {
                let me = Arc::new(ctx.address());
                self.me = Some(me.clone());
                me
            }
        };
        let actor = match parked {
            Some(core) => {
                self.hibernated -= 1;
                EntityActor::<S>::woken(incarnation, *core, me)
            }
            None => {
                let pid = PersistenceId::new(self.entity_type.clone(), entity_id.clone());
                let Some(journal) = self.journal.clone() else {
                    return;
                };
                self.live += 1;
                EntityActor::<S>::new(incarnation, pid, journal, me)
            }
        };
        let addr = actor.start();
        if let Some(slot) = self.slots.get_mut(id) {
            slot.addr = Some(addr);
            slot.incarnation = incarnation;
        }
        if why == Start::ForCommands {
            self.track_running(entity_id, incarnation);
        }
    }

    /// Puts a running actor at the back of the start order (with no bound, there is none).
    fn track_running(&mut self, id: EntityId, incarnation: u64) {
        if self.config.max_running_entities == usize::MAX {
            return;
        }
        self.running_order.push_back((id, incarnation));
        // Amortized O(1): a compaction runs after at least as many pushes as it keeps.
        if self.running_order.len() > 2 * self.running_order_floor + 64 {
            self.compact_running_order();
        }
    }

    /// Drops the entries of actors that stopped since (they are also skipped wherever met),
    /// so the order's memory follows the running actors: after pushes (see `track_running`)
    /// and at each sweep.
    fn compact_running_order(&mut self) {
        let slots = &self.slots;
        self.running_order.retain(|(id, incarnation)| {
            slots
                .get(id.as_str())
                .is_some_and(|s| s.incarnation == *incarnation && s.addr.is_some())
        });
        if self.running_order.capacity() > 2 * self.running_order.len() + 64 {
            self.running_order.shrink_to_fit();
        }
        self.running_order_floor = self.running_order.len();
    }

    /// Queues the stored entities of `key_groups` for eager recovery.
    fn warm(&mut self, key_groups: &[std::ops::Range<u32>], ctx: &mut Context<Self>) {
        let was_idle = self.warming.is_empty();
        for range in key_groups {
            let Some(journal) = &self.journal else {
                return;
            };
            match journal.entities(Some(range.clone())) {
                Ok(list) => self.warming.extend(
                    list.into_iter()
                        .filter(|e| e.persistence_id.entity_type() == &self.entity_type)
                        .map(|e| e.persistence_id.entity_id().clone()),
                ),
                Err(e) => tracing::warn!(error = %e, "cannot list entities to recover eagerly"),
            }
        }
        if was_idle && !self.warming.is_empty() {
            ctx.notify(WarmStep);
        }
    }

    /// Runs the next queued command of `id` if its entity is free.
    fn pump(&mut self, id: &str, ctx: &mut Context<Self>) {
        let needs_start = match self.slots.get(id) {
            Some(s) if s.busy || s.passivating || s.queue.is_empty() => return,
            Some(s) => s.addr.is_none(),
            None => return,
        };
        if needs_start {
            self.start_entity(id, Start::ForCommands, ctx);
        }
        self.touch(id);
        if let Some(slot) = self.slots.get_mut(id) {
            if let (Some(p), Some(addr)) = (slot.queue.pop_front(), slot.addr.as_ref()) {
                if slot.queue.is_empty() {
                    // Most entities are idle most of the time: keep no buffer for them.
                    slot.queue = VecDeque::new();
                }
                slot.busy = true;
                addr.do_send(Exec::<S> {
                    command: p.command,
                    reply_to: p.reply_to,
                });
            }
        }
    }

    /// Passivates the least recently used idle entity, to stay under the active limit.
    ///
    /// Evicts the oldest 1% at once (at least one), so that a shard at its limit pays one scan
    /// per hundred new entities rather than keeping an ordered index on every command.
    fn evict_lru(&mut self, ctx: &mut Context<Self>) {
        let mut idle: Vec<(u64, &EntityId)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.is_live() && !s.busy && !s.passivating && s.queue.is_empty())
            .map(|(id, s)| (s.tick, id))
            .collect();
        let n = (self.config.max_active_entities / 100)
            .max(1)
            .min(idle.len());
        if n == 0 {
            return;
        }
        if n < idle.len() {
            idle.select_nth_unstable(n - 1);
        }
        let victims: Vec<EntityId> = idle[..n].iter().map(|(_, id)| (*id).clone()).collect();
        for id in victims {
            self.passivate(id.as_str(), ctx);
        }
    }

    /// Stops a live entity (snapshotting per its policy); a hibernated one is woken first, so
    /// that passivation has one path. If a stop is already in flight (a hibernation), its
    /// answer decides: a hibernated entity is then passivated, a refusal passivates the actor.
    fn passivate(&mut self, id: &str, ctx: &mut Context<Self>) {
        match self.slots.get_mut(id) {
            None => return,
            Some(slot) if slot.passivating => {
                slot.passivate_asked = true;
                return;
            }
            Some(slot)
                if slot
                    .parked
                    .as_ref()
                    .is_some_and(|core| !core.snapshot_on_stop_due(&core.policy())) =>
            {
                // Hibernated, and stopping would write no snapshot: passivating it is dropping
                // the kept state; no actor needs to start for that.
                slot.parked = None;
                slot.state_bytes = 0;
                self.hibernated -= 1;
                self.live -= 1;
                self.stats.passivations += 1;
                self.settle(id, ctx);
                return;
            }
            Some(slot) if slot.parked.is_some() => self.start_entity(id, Start::ToPassivate, ctx),
            Some(_) => {}
        }
        if let Some(addr) = self.begin_stop(id) {
            addr.do_send(Passivate);
        }
    }

    /// After an entity's actor stopped or its state was dropped: runs commands that arrived
    /// meanwhile (on a fresh incarnation), forgets or drains the slot, and finishes a stop.
    fn settle(&mut self, id: &str, ctx: &mut Context<Self>) {
        self.pump(id, ctx);
        self.remove_if_idle(id, ctx);
        self.continue_stopping(ctx);
    }

    /// The running actor of `id`, marked as asked to stop (passivate or hibernate): the slot
    /// waits for its answer.
    fn begin_stop(&mut self, id: &str) -> Option<&Addr<EntityActor<S>>> {
        let slot = self.slots.get_mut(id)?;
        let addr = slot.addr.as_ref()?;
        slot.passivating = true;
        Some(addr)
    }

    /// Sweep epochs in `d` (at least one), `u64::MAX` for "never".
    fn epochs(&self, d: Duration) -> u64 {
        let interval = self.config.sweep_interval.max(Duration::from_millis(1));
        u64::try_from(d.as_nanos().div_ceil(interval.as_nanos())).unwrap_or(u64::MAX)
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        self.epoch += 1;
        let passivate_epochs = self.epochs(self.config.passivate_after);
        let hibernate_epochs = self.epochs(self.config.hibernate_after);
        let epoch = self.epoch;
        let mut passivate = Vec::new();
        let mut hibernate = Vec::new();
        for (id, s) in &self.slots {
            if !s.is_live() || s.busy || s.passivating || !s.queue.is_empty() {
                continue;
            }
            let idle = epoch.saturating_sub(s.last_used);
            if idle > passivate_epochs {
                passivate.push(id.clone());
            } else if idle > hibernate_epochs && s.addr.is_some() {
                hibernate.push(id.clone());
            }
        }
        for id in passivate {
            self.passivate(id.as_str(), ctx);
        }
        for id in hibernate {
            self.hibernate(id.as_str(), Asked::Idle);
        }
        if self.running_order.len() > 2 * self.running() + 64 {
            self.compact_running_order();
        }
    }

    /// Passivates a draining entity once it is idle; forgets it once stopped.
    fn drain_step(&mut self, id: &str, ctx: &mut Context<Self>) {
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        if !slot.draining || slot.busy || slot.passivating || !slot.queue.is_empty() {
            return;
        }
        if slot.is_live() {
            self.passivate(id, ctx);
        } else if self.slots.remove(id).is_some() {
            self.finish_release(id);
        }
    }

    fn finish_release(&mut self, id: &str) {
        let mut i = 0;
        while i < self.releases.len() {
            self.releases[i].remaining.remove(id);
            if self.releases[i].remaining.is_empty() {
                let r = self.releases.swap_remove(i);
                let _ = r.done.send(ReleaseReport {
                    entities: r.entities,
                    elapsed: r.started.elapsed(),
                });
            } else {
                i += 1;
            }
        }
    }

    /// Drains the entities of `key_groups`; `done` fires when none of them is live or queued.
    fn release(
        &mut self,
        key_groups: &[std::ops::Range<u32>],
        done: oneshot::Sender<ReleaseReport>,
        ctx: &mut Context<Self>,
    ) {
        // Eager recoveries still queued for these key groups must not start after the handoff
        // (the new owner would have them too: G5).
        let k = self.key_groups;
        self.warming.retain(|id| {
            let kg = KeyGroup::of(S::TYPE_NAME, id.as_str(), k).0;
            !key_groups.iter().any(|r| r.contains(&kg))
        });
        let ids: Vec<EntityId> = self
            .slots
            .iter()
            .filter(|(_, s)| key_groups.iter().any(|r| r.contains(&s.key_group)))
            .map(|(id, _)| id.clone())
            .collect();
        let release = PendingRelease {
            remaining: ids.iter().cloned().collect(),
            done,
            started: Instant::now(),
            entities: ids.len(),
        };
        if release.remaining.is_empty() {
            let _ = release.done.send(ReleaseReport::default());
            return;
        }
        self.releases.push(release);
        for id in ids {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.draining = true;
            }
            self.drain_step(id.as_str(), ctx);
        }
    }

    /// While stopping: stop once no entity is left.
    ///
    /// The actor itself stays until its last handle is gone, answering later commands with
    /// [`CommandError::ShardStopped`] (handing them back) instead of dropping them with its
    /// mailbox; it releases the journal and its own address now.
    fn continue_stopping(&mut self, _ctx: &mut Context<Self>) {
        if !self.stopping.is_empty() && self.slots.is_empty() {
            self.journal = None;
            self.me = None;
            self.warming.clear();
            self.closed = true;
            for done in self.stopping.drain(..) {
                let _ = done.send(());
            }
        }
    }

    fn remove_if_idle(&mut self, id: &str, ctx: &mut Context<Self>) {
        if self.slots.get(id).is_some_and(|s| s.draining) {
            self.drain_step(id, ctx);
            return;
        }
        let empty = self
            .slots
            .get(id)
            .is_some_and(|s| !s.is_live() && s.queue.is_empty() && !s.busy && !s.passivating);
        if empty {
            self.slots.remove(id);
        }
    }
}

impl<S: EventSourced> Actor for Shard<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // A zero interval would spin: at least a millisecond.
        let every = self.config.sweep_interval.max(Duration::from_millis(1));
        ctx.run_interval(every, |act, ctx| act.sweep(ctx));
    }
}

impl<S: EventSourced> Handler<Deliver<S>> for Shard<S> {
    type Result = ();

    fn handle(&mut self, msg: Deliver<S>, ctx: &mut Context<Self>) {
        if !self.stopping.is_empty() || self.closed {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            let _ = msg.reply_to.send(Err(CommandError::ShardStopped {
                command: msg.command,
            }));
            return;
        }
        let pending = Pending {
            command: msg.command,
            reply_to: msg.reply_to,
        };
        // A command for a draining entity (only possible when used without a region) keeps
        // it: the drain completes when its queue is empty.
        if let Some(slot) = self.slots.get_mut(msg.id.as_str()) {
            slot.queue.push_back(pending);
        } else {
            let key_group = KeyGroup::of(S::TYPE_NAME, msg.id.as_str(), self.key_groups).0;
            let mut queue = VecDeque::with_capacity(1);
            queue.push_back(pending);
            self.slots
                .insert(msg.id.clone(), Slot::new(key_group, queue, 0, self.epoch));
        }
        self.pump(msg.id.as_str(), ctx);
    }
}

impl<S: EventSourced> Handler<Processed> for Shard<S> {
    type Result = ();

    fn handle(&mut self, msg: Processed, ctx: &mut Context<Self>) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
        self.stats.messages_handled += 1;
        self.stats.events_persisted += msg.persisted;
        let id = msg.id.as_str();
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if slot.incarnation != msg.incarnation {
            return;
        }
        slot.busy = false;
        if let Some(b) = msg.state_bytes {
            slot.state_bytes = b;
        }
        if msg.stopped && slot.addr.take().is_some() {
            self.live -= 1;
            slot.state_bytes = 0;
        }
        self.settle(msg.id.as_str(), ctx);
    }
}

impl<S: EventSourced> Handler<Gone> for Shard<S> {
    type Result = ();

    /// An entity actor died without reporting (a panic in user code): free its slot, fail its
    /// in-flight command (its caller already saw the reply channel close), carry on.
    fn handle(&mut self, msg: Gone, ctx: &mut Context<Self>) {
        let id = msg.id.as_str();
        let Some(slot) = self.slots.get_mut(id) else {
            return;
        };
        if slot.incarnation != msg.incarnation || slot.addr.is_none() {
            return;
        }
        tracing::warn!(id, "entity actor died (panic in its code?)");
        Self::stop_answered(&mut self.hibernating, slot);
        slot.addr = None;
        slot.passivating = false;
        slot.passivate_asked = false;
        slot.state_bytes = 0;
        self.live -= 1;
        if slot.busy {
            slot.busy = false;
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
        self.settle(id, ctx);
    }
}

impl<S: EventSourced> Handler<Passivated> for Shard<S> {
    type Result = ();

    fn handle(&mut self, msg: Passivated, ctx: &mut Context<Self>) {
        let Some(slot) = self.slots.get_mut(msg.id.as_str()) else {
            return;
        };
        if slot.incarnation != msg.incarnation {
            return;
        }
        slot.passivating = false;
        slot.passivate_asked = false;
        Self::stop_answered(&mut self.hibernating, slot);
        if slot.addr.take().is_some() {
            self.live -= 1;
        }
        // No command is sent to an actor asked to stop; if one were, it died with the actor:
        // free the entity rather than wedge it.
        debug_assert!(!slot.busy, "a command was sent to a passivating entity");
        if std::mem::take(&mut slot.busy) {
            tracing::error!(id = %msg.id, "a command was lost with a passivated actor");
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
        slot.state_bytes = 0;
        self.stats.passivations += 1;
        debug!(id = %msg.id, "entity passivated");
        // Commands that arrived while it was passivating go to a fresh incarnation.
        self.settle(msg.id.as_str(), ctx);
    }
}

impl<S: EventSourced> Handler<Hibernated<S>> for Shard<S> {
    type Result = ();

    fn handle(&mut self, msg: Hibernated<S>, ctx: &mut Context<Self>) {
        let Some(slot) = self.slots.get_mut(msg.id.as_str()) else {
            return;
        };
        if slot.incarnation != msg.incarnation || slot.addr.is_none() {
            return;
        }
        slot.passivating = false;
        let asked = Self::stop_answered(&mut self.hibernating, slot);
        let passivate = std::mem::take(&mut slot.passivate_asked);
        if let Some(core) = msg.core {
            // The actor has stopped; its state waits here for the next command.
            slot.addr = None;
            slot.parked = Some(core);
            self.hibernated += 1;
            self.stats.hibernations += 1;
        } else if asked == Asked::Bound {
            // Refused (a snapshot is being written): it runs on, so the bound, which took its
            // entry, may pick it again. (After the sweep asked, its entry is still there.)
            self.track_running(msg.id.clone(), msg.incarnation);
        }
        if passivate {
            // Asked while the hibernation was in flight: the entity was idle then.
            self.passivate(msg.id.as_str(), ctx);
        }
        // Commands that arrived meanwhile wake it at once; a drain passivates it.
        self.settle(msg.id.as_str(), ctx);
    }
}

impl<S: EventSourced> Handler<GetStats> for Shard<S> {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        let mut s = self.stats.clone();
        s.live_entities = self.live;
        s.hibernated_entities = self.hibernated;
        s.queued_commands = self.queued.load(Ordering::SeqCst);
        s.state_bytes = self.slots.values().map(|s| s.state_bytes).sum();
        MessageResult(s)
    }
}

/// Recover the stored entities of some key groups now (handoff of an eager entity type).
pub(crate) struct Warm(pub Vec<std::ops::Range<u32>>);

impl Message for Warm {
    type Result = ();
}

impl<S: EventSourced> Handler<Warm> for Shard<S> {
    type Result = ();

    fn handle(&mut self, msg: Warm, ctx: &mut Context<Self>) {
        self.warm(&msg.0, ctx);
    }
}

/// Start the next few queued eager recoveries, then yield to commands.
struct WarmStep;

impl Message for WarmStep {
    type Result = ();
}

/// Eager recoveries started per turn: recovery runs on the shard's thread, so this bounds how
/// long commands wait behind it.
const WARM_BATCH: usize = 16;

impl<S: EventSourced> Handler<WarmStep> for Shard<S> {
    type Result = ();

    fn handle(&mut self, _: WarmStep, ctx: &mut Context<Self>) {
        for _ in 0..WARM_BATCH {
            let Some(id) = self.warming.pop_front() else {
                break;
            };
            if !self.stopping.is_empty() || self.slots.contains_key(id.as_str()) {
                continue;
            }
            if self.live >= self.config.max_active_entities {
                // Never evict to warm: stop warming instead.
                self.warming.clear();
                break;
            }
            let key_group = KeyGroup::of(S::TYPE_NAME, id.as_str(), self.key_groups).0;
            self.slots.insert(
                id.clone(),
                Slot::new(key_group, VecDeque::new(), self.next_tick, self.epoch),
            );
            self.start_entity(id.as_str(), Start::ForCommands, ctx);
        }
        if !self.warming.is_empty() {
            ctx.notify(WarmStep);
        }
    }
}

/// Finish queued commands, passivate every entity, then stop.
pub(crate) struct Shutdown(pub oneshot::Sender<()>);

impl Message for Shutdown {
    type Result = ();
}

impl<S: EventSourced> Handler<Shutdown> for Shard<S> {
    type Result = ();

    fn handle(&mut self, msg: Shutdown, ctx: &mut Context<Self>) {
        self.stopping.push(msg.0);
        let ids: Vec<EntityId> = self.slots.keys().cloned().collect();
        for id in ids {
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.draining = true;
            }
            self.drain_step(id.as_str(), ctx);
        }
        self.continue_stopping(ctx);
    }
}

/// Drain and stop the entities of some key groups (handoff).
pub(crate) struct Release {
    pub key_groups: Vec<std::ops::Range<u32>>,
    pub done: oneshot::Sender<ReleaseReport>,
}

impl Message for Release {
    type Result = ();
}

impl<S: EventSourced> Handler<Release> for Shard<S> {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Context<Self>) {
        self.release(&msg.key_groups, msg.done, ctx);
    }
}

/// Passivate one entity now (tests and operators).
pub(crate) struct PassivateNow(pub String);

impl Message for PassivateNow {
    type Result = ();
}

impl<S: EventSourced> Handler<PassivateNow> for Shard<S> {
    type Result = ();

    fn handle(&mut self, msg: PassivateNow, ctx: &mut Context<Self>) {
        let Some(slot) = self.slots.get_mut(msg.0.as_str()) else {
            return;
        };
        if slot.busy || !slot.queue.is_empty() {
            return;
        }
        // Idle; if hibernating (or already passivating), the answer decides.
        self.passivate(&msg.0, ctx);
    }
}
