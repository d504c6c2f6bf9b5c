//! [`ShardRef`]: the handle of a shard actor. Commands are counted against the shard's bound
//! before they are sent, and every refusal hands the command back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use stateline_journal::{EntityId, EntityType};
use tokio::sync::oneshot;

use crate::entity::EventSourced;
use crate::entity_actor::ReplyTo;
use crate::error::CommandError;
use crate::shard::{
    Deliver, GetStats, PassivateNow, Release, ReleaseReport, Shard, Shutdown, Warm,
};
use crate::shard_config::ShardStats;

/// The handle of a shard actor: sends commands to its entities. Cheap to clone.
pub struct ShardRef<S: EventSourced> {
    pub(crate) addr: Addr<Shard<S>>,
    pub(crate) entity_type: EntityType,
    /// Commands queued or running in the shard (shared with it).
    pub(crate) queued: Arc<AtomicUsize>,
    pub(crate) capacity: usize,
}

impl<S: EventSourced> Clone for ShardRef<S> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            entity_type: self.entity_type.clone(),
            queued: self.queued.clone(),
            capacity: self.capacity,
        }
    }
}

impl<S: EventSourced> ShardRef<S> {
    /// Enqueues `command` for entity `id` and returns a receiver of its reply. Refusals are
    /// immediate and hand the command back.
    ///
    /// # Errors
    /// [`CommandError::InvalidId`], [`CommandError::Overloaded`], [`CommandError::ShardStopped`].
    #[allow(clippy::type_complexity)]
    pub fn enqueue(
        &self,
        id: &str,
        command: S::Command,
    ) -> Result<
        oneshot::Receiver<Result<S::Reply, CommandError<S::Command>>>,
        CommandError<S::Command>,
    > {
        let id = match EntityId::new(id) {
            Ok(id) => id,
            Err(error) => return Err(CommandError::InvalidId { command, error }),
        };
        let before = self.queued.fetch_add(1, Ordering::SeqCst);
        if before >= self.capacity {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(CommandError::Overloaded {
                command,
                queued: before,
            });
        }
        let (reply_to, rx) = oneshot::channel();
        self.deliver(id, command, reply_to, before)
            .map_err(|(e, _)| e)?;
        Ok(rx)
    }

    /// Enqueues with an existing reply channel (the region's path); a refusal returns the
    /// channel with the error so the caller can be told. The id is validated.
    #[allow(clippy::type_complexity)]
    pub(crate) fn enqueue_with(
        &self,
        id: EntityId,
        command: S::Command,
        reply_to: ReplyTo<S>,
    ) -> Result<(), (CommandError<S::Command>, ReplyTo<S>)> {
        let before = self.queued.fetch_add(1, Ordering::SeqCst);
        if before >= self.capacity {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err((
                CommandError::Overloaded {
                    command,
                    queued: before,
                },
                reply_to,
            ));
        }
        self.deliver(id, command, reply_to, before)
    }

    #[allow(clippy::type_complexity)]
    fn deliver(
        &self,
        id: EntityId,
        command: S::Command,
        reply_to: ReplyTo<S>,
        before: usize,
    ) -> Result<(), (CommandError<S::Command>, ReplyTo<S>)> {
        match self.addr.try_send(Deliver::<S> {
            id,
            command,
            reply_to,
        }) {
            Ok(()) => Ok(()),
            Err(SendError::Full(m)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err((
                    CommandError::Overloaded {
                        command: m.command,
                        queued: before,
                    },
                    m.reply_to,
                ))
            }
            Err(SendError::Closed(m)) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err((
                    CommandError::ShardStopped { command: m.command },
                    m.reply_to,
                ))
            }
        }
    }

    /// Sends `command` to entity `id` and waits for its reply.
    ///
    /// # Errors
    /// Every [`CommandError`]: refusals hand the command back; persist errors and recovery
    /// errors report what happened to it.
    pub async fn send(
        &self,
        id: &str,
        command: S::Command,
    ) -> Result<S::Reply, CommandError<S::Command>> {
        let rx = self.enqueue(id, command)?;
        rx.await.unwrap_or(Err(CommandError::EntityStopped))
    }

    /// Sends `command` without waiting for the reply (fire and forget). The command is still
    /// applied exactly once; only its reply is dropped.
    ///
    /// # Errors
    /// The immediate refusals of [`Self::enqueue`].
    pub fn tell(&self, id: &str, command: S::Command) -> Result<(), CommandError<S::Command>> {
        self.enqueue(id, command).map(drop)
    }

    /// The shard's counters.
    ///
    /// # Errors
    /// [`actix::MailboxError`] if the shard has stopped.
    pub async fn stats(&self) -> Result<ShardStats, MailboxError> {
        self.addr.send(GetStats).await
    }

    /// Stops the shard gracefully: commands already queued are processed, every entity is
    /// passivated (snapshotting per its policy), later commands are refused with
    /// [`CommandError::ShardStopped`]. Resolves when the shard has stopped; afterwards the
    /// journal is no longer referenced by this shard.
    pub async fn stop(&self) {
        let (tx, rx) = oneshot::channel();
        // `do_send` ignores the mailbox bound: a busy shard must still get its stop request.
        // If the shard is already gone the sender is dropped and `rx` resolves at once.
        self.addr.do_send(Shutdown(tx));
        let _ = rx.await;
    }

    /// Asks the shard to drain and stop the entities of `key_groups`; the receiver fires when
    /// none of them is live or queued. `None` if the shard has stopped.
    pub(crate) fn start_release(
        &self,
        key_groups: Vec<std::ops::Range<u32>>,
    ) -> Option<oneshot::Receiver<ReleaseReport>> {
        let (done, rx) = oneshot::channel();
        self.addr.do_send(Release { key_groups, done });
        self.addr.connected().then_some(rx)
    }

    /// Recovers the stored entities of `key_groups` in the background (eager entity types).
    pub(crate) fn warm(&self, key_groups: Vec<std::ops::Range<u32>>) {
        self.addr.do_send(Warm(key_groups));
    }

    /// Passivates entity `id` now if it is idle (its next command starts it again).
    pub fn passivate(&self, id: &str) {
        self.addr.do_send(PassivateNow(id.to_string()));
    }
}
