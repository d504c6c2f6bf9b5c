//! [`Effect`]: what a command handler decides. A reply is part of every effect, so forgetting
//! to reply does not compile.

use crate::entity::EventSourced;

type ReplyFn<S> = Box<dyn FnOnce(&S) -> <S as EventSourced>::Reply + Send>;
type SideEffect<S> = Box<dyn FnOnce(&S) + Send>;

pub(crate) enum Kind<S: EventSourced> {
    Persist {
        events: Vec<S::Event>,
        reply: ReplyFn<S>,
    },
    Reply(S::Reply),
    Reject(S::Reply),
    Stop(S::Reply),
}

/// The decision of [`EventSourced::handle`]: persist events then reply, reply, reject, or stop.
#[must_use = "an effect does nothing unless returned from `handle`"]
pub struct Effect<S: EventSourced> {
    pub(crate) kind: Kind<S>,
    pub(crate) after: Vec<SideEffect<S>>,
}

/// Events to persist, waiting for their reply: call [`Persist::then_reply`] to get an
/// [`Effect`].
#[must_use = "call `then_reply` to turn this into an Effect"]
pub struct Persist<S: EventSourced> {
    events: Vec<S::Event>,
}

impl<S: EventSourced> Persist<S> {
    /// The reply, computed from the state after the events are durable and applied.
    pub fn then_reply(self, f: impl FnOnce(&S) -> S::Reply + Send + 'static) -> Effect<S> {
        Effect {
            kind: Kind::Persist {
                events: self.events,
                reply: Box::new(f),
            },
            after: Vec::new(),
        }
    }
}

impl<S: EventSourced> Effect<S> {
    /// Persist `events` atomically (all or none, G2), apply them once durable, then reply.
    /// An empty list persists nothing and replies at once.
    pub fn persist(events: Vec<S::Event>) -> Persist<S> {
        Persist { events }
    }

    /// Reply without persisting.
    pub fn reply(reply: S::Reply) -> Self {
        Effect {
            kind: Kind::Reply(reply),
            after: Vec::new(),
        }
    }

    /// Refuse the command with an error reply; nothing is persisted. (Recorded as a rejection
    /// in traces and stats; for the caller it is the reply.)
    pub fn reject(reply: S::Reply) -> Self {
        Effect {
            kind: Kind::Reject(reply),
            after: Vec::new(),
        }
    }

    /// Reply, then stop the entity (it is started again by its next command).
    pub fn stop(reply: S::Reply) -> Self {
        Effect {
            kind: Kind::Stop(reply),
            after: Vec::new(),
        }
    }

    /// A side effect to run after the events are durable and applied, with the new state:
    /// at most once, never during recovery, and not at all if persisting fails. For effects
    /// without persistence it runs right after the reply is decided.
    pub fn and_then(mut self, f: impl FnOnce(&S) + Send + 'static) -> Self {
        self.after.push(Box::new(f));
        self
    }
}
