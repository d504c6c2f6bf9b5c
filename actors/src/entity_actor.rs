//! The entity actor: one per live entity key. Recovers in `started` (its mailbox waits), runs
//! one command at a time, persists with the mailbox held (`AtomicResponse`, Akka's stash while
//! persisting), applies and replies only after the commit is durable (G1).

use actix::prelude::*;
use stateline_journal::{EntityId, Journal, PersistenceId, Seq};
use tokio::sync::oneshot;
use tracing::{debug, info_span, warn, Instrument};

use crate::core::{encode_event, save_snapshot, EntityCore};
use crate::effect::Kind;
use crate::entity::EventSourced;
use crate::error::{CommandError, RecoveryError};
use crate::shard::Shard;

/// Where an entity's reply goes.
pub(crate) type ReplyTo<S> =
    oneshot::Sender<Result<<S as EventSourced>::Reply, CommandError<<S as EventSourced>::Command>>>;

/// Reported to the shard after every command.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Processed {
    pub id: EntityId,
    pub incarnation: u64,
    pub persisted: u64,
    pub stopped: bool,
    pub state_bytes: Option<u64>,
}

/// Reported to the shard when a passivated entity has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Passivated {
    pub id: EntityId,
    pub incarnation: u64,
}

/// Reported to the shard by an idle entity asked to hibernate: its state, handed over as the
/// actor stops, or `None` if it could not hibernate now (a snapshot is still being written) and
/// stays as it is.
pub(crate) struct Hibernated<S: EventSourced> {
    pub id: EntityId,
    pub incarnation: u64,
    pub core: Option<Box<EntityCore<S>>>,
}

impl<S: EventSourced> Message for Hibernated<S> {
    type Result = ();
}

/// Reported by an entity actor's drop when it stopped without saying so (a panic).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Gone {
    pub id: EntityId,
    pub incarnation: u64,
}

/// Run one command.
pub(crate) struct Exec<S: EventSourced> {
    pub command: S::Command,
    pub reply_to: ReplyTo<S>,
}

impl<S: EventSourced> Message for Exec<S> {
    type Result = ();
}

/// Stop after snapshotting if the policy asks for it.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Passivate;

/// Idle for a while: hand the state to the shard and stop the actor (see
/// [`crate::ShardConfig::hibernate_after`]).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Hibernate;

pub(crate) struct EntityActor<S: EventSourced> {
    incarnation: u64,
    pid: PersistenceId,
    /// Until recovery moves it into `core` (boxed: live entities should not carry it twice).
    journal: Option<Box<Journal>>,
    core: Option<EntityCore<S>>,
    failed: Option<Box<RecoveryError>>,
    /// Shared by all entities of the shard (cloning an `Addr` allocates a sender).
    shard: std::sync::Arc<Addr<Shard<S>>>,
    commands: u32,
    /// Set once the shard was told this incarnation ended (stopped, passivated, hibernated).
    ended: bool,
    /// Snapshots spawned and not yet written: the actor does not hibernate meanwhile.
    snapshots_in_flight: u32,
}

impl<S: EventSourced> Drop for EntityActor<S> {
    fn drop(&mut self) {
        if !self.ended {
            self.shard.do_send(Gone {
                id: self.pid.entity_id().clone(),
                incarnation: self.incarnation,
            });
        }
    }
}

impl<S: EventSourced> EntityActor<S> {
    /// An actor that recovers `pid` from the journal when it starts.
    pub(crate) fn new(
        incarnation: u64,
        pid: PersistenceId,
        journal: Journal,
        shard: std::sync::Arc<Addr<Shard<S>>>,
    ) -> Self {
        Self {
            incarnation,
            pid,
            journal: Some(Box::new(journal)),
            core: None,
            failed: None,
            shard,
            commands: 0,
            ended: false,
            snapshots_in_flight: 0,
        }
    }

    /// An actor that continues from the state a hibernated incarnation handed over: nothing
    /// is read from the journal.
    pub(crate) fn woken(
        incarnation: u64,
        core: EntityCore<S>,
        shard: std::sync::Arc<Addr<Shard<S>>>,
    ) -> Self {
        Self {
            incarnation,
            pid: core.pid.clone(),
            journal: None,
            core: Some(core),
            failed: None,
            shard,
            // The shard kept the last measured state size: measure again on the 16th command
            // after waking, not on the first (entities that wake often would pay every time).
            commands: 1,
            ended: false,
            snapshots_in_flight: 0,
        }
    }

    /// Tells the shard this incarnation passivated, and stops it.
    fn end_passivated(&mut self, ctx: &mut Context<Self>) {
        self.ended = true;
        self.shard.do_send(Passivated {
            id: self.pid.entity_id().clone(),
            incarnation: self.incarnation,
        });
        self.core = None;
        ctx.stop();
    }

    fn report(&mut self, persisted: u64, stopped: bool, state_bytes: Option<u64>) {
        self.ended |= stopped;
        self.shard.do_send(Processed {
            id: self.pid.entity_id().clone(),
            incarnation: self.incarnation,
            persisted,
            stopped,
            state_bytes,
        });
    }

    fn state_bytes(&mut self) -> Option<u64> {
        self.commands += 1;
        // Measuring serializes the state: do it on the first command and every 16th.
        if self.commands % 16 != 1 {
            return None;
        }
        let core = self.core.as_ref()?;
        crate::core::encode_state(&core.state)
            .ok()
            .map(|b| b.len() as u64)
    }
}

impl<S: EventSourced> Actor for EntityActor<S> {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        // Synchronous: the mailbox is not polled until recovery is done, so commands that
        // arrive meanwhile wait and run afterwards, in order.
        let Some(journal) = self.journal.take() else {
            return;
        };
        match EntityCore::<S>::recover(*journal, self.pid.clone()) {
            Ok(core) => self.core = Some(core),
            Err(e) => {
                warn!(error = %e, "entity recovery failed");
                self.failed = Some(Box::new(e));
            }
        }
    }
}

impl<S: EventSourced> Handler<Exec<S>> for EntityActor<S> {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: Exec<S>, ctx: &mut Context<Self>) -> Self::Result {
        let done = || AtomicResponse::new(Box::pin(fut::ready(())));
        let Some(core) = self.core.as_mut() else {
            let err = match self.failed.take() {
                Some(e) => CommandError::Recovery(*e),
                None => CommandError::EntityStopped,
            };
            let _ = msg.reply_to.send(Err(err));
            self.report(0, true, None);
            ctx.stop();
            return done();
        };
        let span = info_span!("command", entity_type = S::TYPE_NAME, id = %self.pid.entity_id());
        let effect = span.in_scope(|| core.state.handle(msg.command));
        let after = effect.after;
        match effect.kind {
            Kind::Reply(r) | Kind::Reject(r) => {
                for f in after {
                    f(&core.state);
                }
                let _ = msg.reply_to.send(Ok(r));
                let bytes = self.state_bytes();
                self.report(0, false, bytes);
                done()
            }
            Kind::Stop(r) => {
                for f in after {
                    f(&core.state);
                }
                let _ = msg.reply_to.send(Ok(r));
                self.report(0, true, None);
                ctx.stop();
                done()
            }
            Kind::Persist { events, reply } if events.is_empty() => {
                let r = reply(&core.state);
                for f in after {
                    f(&core.state);
                }
                let _ = msg.reply_to.send(Ok(r));
                let bytes = self.state_bytes();
                self.report(0, false, bytes);
                done()
            }
            Kind::Persist { events, reply } => {
                let encoded: Result<Vec<_>, _> = events.iter().map(encode_event::<S>).collect();
                let encoded = match encoded {
                    Ok(e) => e,
                    Err(e) => {
                        let err = stateline_journal::JournalError::Rejected(
                            stateline_journal::Rejected::InvalidManifest(format!(
                                "event does not serialize: {e}"
                            )),
                        );
                        let _ = msg.reply_to.send(Err(CommandError::Rejected(err)));
                        self.report(0, false, None);
                        return done();
                    }
                };
                let journal = core.journal.clone();
                let pid = core.pid.clone();
                let expected = Seq(core.seq + 1);
                let reply_to = msg.reply_to;
                let fut = async move { journal.append(&pid, expected, encoded).await }
                    .instrument(span.clone());
                AtomicResponse::new(Box::pin(fut.into_actor(self).map(move |res, act, ctx| {
                    let _g = span.enter();
                    let Some(core) = act.core.as_mut() else {
                        let _ = reply_to.send(Err(CommandError::EntityStopped));
                        return;
                    };
                    match res {
                        Ok(ack) => {
                            core.applied(&events, ack.last_seq);
                            debug!(
                                first_seq = ack.first_seq.0,
                                last_seq = ack.last_seq.0,
                                "persisted"
                            );
                            let r = reply(&core.state);
                            for f in after {
                                f(&core.state);
                            }
                            let _ = reply_to.send(Ok(r));
                            if core.snapshot_due(&core.policy()) {
                                if let Some((seq, bytes)) = core.take_snapshot() {
                                    let j = core.journal.clone();
                                    let pid = core.pid.clone();
                                    let policy = core.policy();
                                    act.snapshots_in_flight += 1;
                                    ctx.spawn(
                                        async move {
                                            if let Err(e) =
                                                save_snapshot::<S>(j, pid, policy, seq, bytes).await
                                            {
                                                warn!(error = %e, "snapshot failed");
                                            }
                                        }
                                        .into_actor(act)
                                        .map(|(), act, _| act.snapshots_in_flight -= 1),
                                    );
                                }
                            }
                            let n = ack.last_seq.0 - ack.first_seq.0 + 1;
                            let bytes = act.state_bytes();
                            act.report(n, false, bytes);
                        }
                        Err(e) if e.is_rejected() => {
                            let _ = reply_to.send(Err(CommandError::Rejected(e)));
                            act.report(0, false, None);
                        }
                        Err(e) => {
                            warn!(error = %e, "persist failed; entity stops");
                            let _ = reply_to.send(Err(CommandError::PersistFailed(e)));
                            act.core = None;
                            act.report(0, true, None);
                            ctx.stop();
                        }
                    }
                })))
            }
        }
    }
}

impl<S: EventSourced> Handler<Passivate> for EntityActor<S> {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: Passivate, _ctx: &mut Context<Self>) -> Self::Result {
        let snapshot = self.core.as_mut().and_then(|core| {
            let policy = core.policy();
            if core.snapshot_on_stop_due(&policy) {
                core.take_snapshot().map(|(seq, bytes)| {
                    (core.journal.clone(), core.pid.clone(), policy, seq, bytes)
                })
            } else {
                None
            }
        });
        let fut = async move {
            if let Some((j, pid, policy, seq, bytes)) = snapshot {
                if let Err(e) = save_snapshot::<S>(j, pid, policy, seq, bytes).await {
                    warn!(error = %e, "snapshot on passivation failed");
                }
            }
        };
        AtomicResponse::new(Box::pin(
            fut.into_actor(self)
                .map(|_, act, ctx| act.end_passivated(ctx)),
        ))
    }
}

impl<S: EventSourced> Handler<Hibernate> for EntityActor<S> {
    type Result = ();

    fn handle(&mut self, _: Hibernate, ctx: &mut Context<Self>) {
        // The shard asks only when no command is queued or running.
        let id = self.pid.entity_id().clone();
        let incarnation = self.incarnation;
        if self.snapshots_in_flight > 0 {
            // Stopping would cancel the snapshot being written: stay, a later sweep asks again.
            self.shard.do_send(Hibernated {
                id,
                incarnation,
                core: None,
            });
            return;
        }
        match self.core.take() {
            Some(core) => {
                self.shard.do_send(Hibernated {
                    id,
                    incarnation,
                    core: Some(Box::new(core)),
                });
                self.ended = true;
                ctx.stop();
            }
            // Recovery failed: there is no state to keep. The next command starts a fresh
            // incarnation that tries (and reports) recovery again.
            None => self.end_passivated(ctx),
        }
    }
}
