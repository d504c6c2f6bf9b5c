//! The applier: a second thread that brings the tail index up to date with each transaction
//! and then sends its replies, in commit order, while the writer thread goes on to the next
//! transaction. Taking this work off the writer overlaps it with the commit's I/O; a reply
//! still goes out only after its transaction is durable and its events are in the tail, so a
//! caller reads its own writes. An applier that fails poisons the journal (G8): the writer
//! must not pack from a tail that stopped.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
#[cfg(test)]
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;

use tracing::{error, info};

use super::{Done, Reply, TailRefs};
use crate::error::{JournalError, Result};
use crate::tail::{EntityKey, Shared};

/// Messages handed over and not yet taken, at most (two per transaction that appends): the
/// writer waits when the applier is this far behind (a reader holding the tail, say), so the
/// tail lags by a bounded number of commits and their bytes are held once.
const MAX_BEHIND: usize = 8;

/// One handover, in the writer's order: what the applier does to the tail, then the replies
/// it sends after that.
type Handover = (Work, Replies);

/// Where a [`Gate`] holds the applier.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Before a transaction's events go into the tail.
    Prepared,
    /// After that, and after the commit, before the committed offset is published.
    Committed,
}

/// Holds the applier at one [`Stage`] of every transaction that appends while closed there:
/// tests make the tail lag the commits, or run ahead of what is published, as they need. It
/// can also make the applier fail (panic) at the next message of a stage.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    cv: Condvar,
}

#[cfg(test)]
#[derive(Debug, Default)]
struct GateState {
    closed_at: Option<Stage>,
    /// Transactions waiting at the gate.
    waiting: usize,
    /// Transactions whose events reached the applier before their commit.
    prepared: usize,
    panic_at: Option<Stage>,
}

#[cfg(test)]
impl Gate {
    pub(crate) fn close_at(&self, stage: Stage) {
        self.state.lock().unwrap().closed_at = Some(stage);
    }

    pub(crate) fn open(&self) {
        self.state.lock().unwrap().closed_at = None;
        self.cv.notify_all();
    }

    /// Transactions waiting at the gate.
    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().unwrap().waiting
    }

    /// Transactions whose events reached the applier before their commit.
    pub(crate) fn prepared(&self) -> usize {
        self.state.lock().unwrap().prepared
    }

    /// Makes the applier panic at the next message of `stage` (any `Committed`, also of a
    /// transaction that only packed).
    pub(crate) fn panic_at(&self, stage: Stage) {
        self.state.lock().unwrap().panic_at = Some(stage);
    }

    /// Panics if asked to at `stage`.
    fn check(&self, stage: Stage) {
        let mut s = self.state.lock().unwrap();
        if s.panic_at == Some(stage) {
            s.panic_at = None;
            drop(s);
            panic!("injected applier failure");
        }
    }

    fn pass(&self, stage: Stage) {
        let mut s = self.state.lock().unwrap();
        if stage == Stage::Prepared {
            s.prepared += 1;
        }
        s.waiting += 1;
        while s.closed_at == Some(stage) {
            s = self.cv.wait(s).unwrap();
        }
        s.waiting -= 1;
    }
}

/// The gate a test set on the journal, if any (a type of no size otherwise).
#[cfg(test)]
pub(crate) type GateRef = Option<Arc<Gate>>;
#[cfg(not(test))]
pub(crate) type GateRef = ();

/// The writer's handle on the applier thread.
pub(super) struct Applier {
    tx: Option<mpsc::SyncSender<Handover>>,
    handle: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Applier {
    /// Starts the applier thread for the journal whose state `shared` is.
    pub(super) fn start(shared: Arc<Shared>, gate: GateRef) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(MAX_BEHIND);
        let theirs = shared.clone();
        let handle = std::thread::Builder::new()
            .name("stateline-applier".into())
            .spawn(move || run(&theirs, &rx, &gate))
            .map_err(|e| JournalError::Io(format!("cannot start applier thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
            shared,
        })
    }

    /// Hands over the appended events of a transaction about to commit.
    pub(super) fn prepared(&self, tail: Vec<(EntityKey, TailRefs)>, bytes: Vec<(u64, Vec<u8>)>) {
        if !tail.is_empty() {
            self.send((Work::Prepared { tail, bytes }, Replies::Nothing));
        }
    }

    /// Hands over a committed transaction (its events went with [`Self::prepared`]).
    pub(super) fn committed(
        &self,
        packed_segment: Option<u64>,
        committed: Option<u64>,
        done: Vec<Done>,
        waiters: Vec<Reply<()>>,
    ) {
        self.send((
            Work::Committed {
                packed_segment,
                committed,
            },
            Replies::Committed { done, waiters },
        ));
    }

    /// Hands over a failed transaction's replies; `unwind_from` is its first offset.
    pub(super) fn failed(
        &self,
        unwind_from: u64,
        msg: String,
        done: Vec<Done>,
        waiters: Vec<Reply<()>>,
    ) {
        self.send((
            Work::Unwind(unwind_from),
            Replies::Failed { msg, done, waiters },
        ));
    }

    /// Hands over refusals of a poisoned journal.
    pub(super) fn refused(&self, done: Vec<Done>, waiters: Vec<Reply<()>>) {
        self.send((Work::Nothing, Replies::Refused { done, waiters }));
    }

    /// Returns once every transaction handed over so far is in the tail (the writer reads the
    /// tail to plan packing a segment, which must see all of the segment's events).
    ///
    /// # Errors
    /// [`JournalError::Io`] if the applier failed: the tail stopped, and planning from it
    /// would drop the events committed since from the packed segment.
    pub(super) fn wait_applied(&self) -> Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send((Work::Nothing, Replies::Barrier(tx)));
        match rx.recv() {
            Ok(true) => Ok(()),
            _ => Err(JournalError::Io(
                "the journal's applier thread failed; the tail index stopped".into(),
            )),
        }
    }

    fn send(&self, a: Handover) {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(a).is_ok());
        if !sent {
            // The applier is gone (it poisons the journal when it fails, this makes sure):
            // the message's callers see their reply dropped, as `Poisoned`.
            self.shared.poisoned.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        // Closing the channel lets the applier finish what was handed over and exit.
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(shared: &Shared, rx: &mpsc::Receiver<Handover>, gate: &GateRef) {
    // Set when a message's work panicked: the tail may be half updated, so nothing more is
    // added to it or published, and every later transaction's replies are failures.
    let mut failed = false;
    // The replies are apart from the work, so that a panic in the work cannot drop them.
    while let Ok((work, replies)) = rx.recv() {
        if !failed && catch_unwind(AssertUnwindSafe(|| work.run(shared, gate))).is_err() {
            failed = true;
            shared.poisoned.store(true, Ordering::SeqCst);
            error!("journal applier failed; poisoned");
        }
        replies.send(failed);
    }
}

/// What the applier does to the tail for one handover.
enum Work {
    /// A transaction about to commit: its appended events go into the tail, not yet published
    /// (readers keep only refs at or below the committed offset), so that this work overlaps
    /// the commit's I/O.
    Prepared {
        tail: Vec<(EntityKey, TailRefs)>,
        /// Stored bytes of the events, ascending offset.
        bytes: Vec<(u64, Vec<u8>)>,
    },
    /// A committed transaction: a packed segment leaves the tail, then the committed offset
    /// (when it appended) is published.
    Committed {
        packed_segment: Option<u64>,
        committed: Option<u64>,
    },
    /// A failed transaction: what it put in the tail (offsets from this one) is taken out.
    Unwind(u64),
    Nothing,
}

/// The replies one handover carries, sent after its work.
enum Replies {
    /// A committed transaction's; `waiters` are `flush(pack: true)` callers whose packing is
    /// complete with it.
    Committed {
        done: Vec<Done>,
        waiters: Vec<Reply<()>>,
    },
    /// A failed transaction's: writes are of unknown outcome, refusals stay refusals.
    Failed {
        msg: String,
        done: Vec<Done>,
        waiters: Vec<Reply<()>>,
    },
    /// Refusals of a poisoned journal (and its `flush(pack: true)` callers): after the
    /// replies of the commits before them.
    Refused {
        done: Vec<Done>,
        waiters: Vec<Reply<()>>,
    },
    /// Answered once everything handed over before it is applied: `true` if the applier
    /// still keeps the tail.
    Barrier(mpsc::SyncSender<bool>),
    Nothing,
}

impl Work {
    fn run(self, shared: &Shared, gate: &GateRef) {
        let _ = gate;
        match self {
            Work::Prepared { tail, bytes } => {
                #[cfg(test)]
                if let Some(g) = gate {
                    g.check(Stage::Prepared);
                    g.pass(Stage::Prepared);
                }
                extend(shared, &tail, &bytes);
                // The bytes are freed here, off the writer thread.
                drop((tail, bytes));
            }
            Work::Committed {
                packed_segment,
                committed,
            } => {
                #[cfg(test)]
                if let Some(g) = gate {
                    g.check(Stage::Committed);
                    if committed.is_some() {
                        g.pass(Stage::Committed);
                    }
                }
                apply(shared, packed_segment, committed);
            }
            Work::Unwind(from) => shared
                .tail
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .unwind_from(from),
            Work::Nothing => {}
        }
    }
}

impl Replies {
    /// Sends the replies; once the applier has `failed`, a committed transaction's outcome is
    /// unknown to its callers (it was not published), as after a failed commit.
    fn send(self, failed: bool) {
        const APPLIER_FAILED: &str = "the journal's applier thread failed";
        let fail = |msg: &str, done: Vec<Done>, waiters: Vec<Reply<()>>| {
            for d in done {
                d.fail(msg);
            }
            for w in waiters {
                drop(w.send(Err(JournalError::Io(msg.to_string()))));
            }
        };
        match self {
            Replies::Committed { done, waiters } if failed => fail(APPLIER_FAILED, done, waiters),
            Replies::Committed { done, waiters } => {
                done.into_iter().for_each(Done::send);
                for w in waiters {
                    drop(w.send(Ok(())));
                }
            }
            Replies::Failed { msg, done, waiters } => fail(&msg, done, waiters),
            Replies::Refused { done, waiters } => {
                done.into_iter().for_each(Done::send);
                for w in waiters {
                    drop(w.send(Err(JournalError::Poisoned)));
                }
            }
            Replies::Barrier(tx) => drop(tx.send(!failed)),
            Replies::Nothing => {}
        }
    }
}

/// Adds a transaction's appended events to the tail (before its commit: not yet visible).
fn extend(shared: &Shared, refs: &[(EntityKey, TailRefs)], bytes: &[(u64, Vec<u8>)]) {
    let mut tail = shared.tail.write().unwrap_or_else(|p| p.into_inner());
    // The appended events' bytes, in offset order from the first.
    let base = bytes.first().map_or(0, |(offset, _)| *offset);
    for (ek, refs) in refs {
        tail.extend(
            ek,
            refs.iter()
                .map(|r| (*r, bytes[(r.offset - base) as usize].1.as_slice())),
        );
    }
}

/// Brings the tail up to date with one committed transaction (its events are in it already),
/// then publishes its offset.
fn apply(shared: &Shared, packed_segment: Option<u64>, committed: Option<u64>) {
    if let Some(seg) = packed_segment {
        let mut tail = shared.tail.write().unwrap_or_else(|p| p.into_inner());
        // Readers that saw the old entity rows retry when the version moves (read.rs).
        shared.pack_version.fetch_add(1, Ordering::SeqCst);
        tail.drop_segment(seg);
    }
    if let Some(offset) = committed {
        shared.committed.send_replace(offset);
    }
    if let Some(seg) = packed_segment {
        info!(segment = seg, "log segment packed into chunks");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::{Journal, Manifest, NewEvent, PersistenceId, Seq};

    fn event(i: u64) -> NewEvent {
        NewEvent::new(Manifest::new("Deposited", 1), vec![i as u8; 8])
    }

    fn seqs(j: &Journal, pid: &PersistenceId) -> Vec<u64> {
        j.all_events(pid).unwrap().iter().map(|e| e.seq.0).collect()
    }

    fn gated() -> (Arc<Gate>, crate::JournalBuilder) {
        let gate = Arc::new(Gate::default());
        let mut builder = Journal::builder();
        builder.applier_gate = Some(gate.clone());
        (gate, builder)
    }

    fn wait_for(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The applier puts a transaction's events in the tail while it commits: when the commit
    /// fails, they are taken out again before the failure is reported.
    #[test]
    fn a_failed_commit_leaves_nothing_in_the_tail() {
        let storage = crate::FaultyStorage::new();
        let (gate, builder) = gated();
        let j = builder.open_with_backend(storage.clone(), "mem").unwrap();
        let pid = PersistenceId::parse("Account", "a").unwrap();
        let other = PersistenceId::parse("Account", "b").unwrap();
        j.append_blocking(&pid, Seq(1), vec![event(1), event(2)])
            .unwrap();
        let prepared = gate.prepared();
        storage.fail_now(true);
        let err = j.append_blocking(&pid, Seq(3), vec![event(3)]).unwrap_err();
        assert!(matches!(err, crate::JournalError::Io(_)), "{err}");
        // The failing transaction's events did reach the tail (the commit, not the
        // transaction before it, failed), so they were taken out again.
        assert_eq!(gate.prepared(), prepared + 1);
        let err = j
            .append_blocking(&other, Seq(1), vec![event(1)])
            .unwrap_err();
        assert!(matches!(err, crate::JournalError::Poisoned), "{err}");
        let tail = j.shared().tail.read().unwrap();
        let ek = crate::keys::entity_key(&pid, j.key_groups());
        let refs: Vec<u64> = tail.entries[&ek[..]].refs.iter().map(|r| r.seq).collect();
        assert_eq!(refs, [1, 2]);
        assert_eq!(tail.len(), 2);
        drop(tail);
        assert_eq!(seqs(&j, &pid), [1, 2]);
        assert_eq!(j.highest_seq(&pid).unwrap(), Seq(2));
    }

    /// Events in the tail but not yet published (their transaction committing, or committed
    /// and not yet acknowledged) are invisible to every read.
    #[test]
    fn events_in_the_tail_are_invisible_until_published() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, builder) = gated();
        let j = builder.open(dir.path().join("j.redb")).unwrap();
        let pid = PersistenceId::parse("Account", "a").unwrap();
        j.append_blocking(&pid, Seq(1), (1..=3).map(event).collect())
            .unwrap();
        gate.close_at(Stage::Committed);
        let fourth = {
            let (j, pid) = (j.clone(), pid.clone());
            std::thread::spawn(move || j.append_blocking(&pid, Seq(4), vec![event(4)]))
        };
        wait_for("the fourth event is committed", || gate.waiting() == 1);
        let ek = crate::keys::entity_key(&pid, j.key_groups());
        let in_tail = j.shared().tail.read().unwrap().entries[&ek[..]].refs.len();
        assert_eq!(in_tail, 4, "the fourth event is in the tail");
        assert_eq!(seqs(&j, &pid), [1, 2, 3]);
        assert_eq!(j.highest_seq(&pid).unwrap(), Seq(3));
        let listed = j.entities(None).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].highest_seq, Seq(3));
        assert_eq!(j.committed_offset().0, 3);
        gate.open();
        assert_eq!(fourth.join().unwrap().unwrap().last_seq, Seq(4));
        // Acknowledged: visible at once.
        assert_eq!(seqs(&j, &pid), [1, 2, 3, 4]);
        assert_eq!(j.highest_seq(&pid).unwrap(), Seq(4));
    }

    /// An applier that fails poisons the journal (G8): the transaction it was handling gets
    /// an I/O error (committed, as it happens: its outcome is unknown to the caller), later
    /// requests `Poisoned`, and reopening finds every event committed, without a gap. At
    /// either stage: before the events enter the tail, or while the replies wait for the
    /// committed offset to be published.
    #[test]
    fn a_failed_applier_poisons_the_journal() {
        for stage in [Stage::Prepared, Stage::Committed] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("j.redb");
            let (gate, builder) = gated();
            let j = builder.segment_events(2).open(&path).unwrap();
            let pid = PersistenceId::parse("Account", "a").unwrap();
            j.append_blocking(&pid, Seq(1), vec![event(1)]).unwrap();
            gate.panic_at(stage);
            let err = j.append_blocking(&pid, Seq(2), vec![event(2)]).unwrap_err();
            assert!(
                matches!(err, crate::JournalError::Io(_)),
                "{stage:?}: {err}"
            );
            for seq in [2, 3] {
                let err = j
                    .append_blocking(&pid, Seq(seq), vec![event(seq)])
                    .unwrap_err();
                assert!(matches!(err, crate::JournalError::Poisoned), "{err}");
            }
            let err = j.flush_blocking(true).unwrap_err();
            assert!(matches!(err, crate::JournalError::Poisoned), "{err}");
            drop(j);
            let j = Journal::open(&path).unwrap();
            assert_eq!(seqs(&j, &pid), [1, 2], "{stage:?}");
            j.append_blocking(&pid, Seq(3), vec![event(3)]).unwrap();
            j.flush_blocking(true).unwrap();
            assert_eq!(seqs(&j, &pid), [1, 2, 3]);
        }
    }

    /// A `flush(pack: true)` waiting for packing is answered when the applier fails during
    /// the packing (no later request reaches a poisoned writer to wake it).
    #[test]
    fn a_pack_flush_is_answered_when_the_applier_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, builder) = gated();
        let entities = 2_000u64;
        let j = builder
            .durability(crate::Durability::None)
            .segment_events(entities)
            .pack_step_events(1)
            .open(dir.path().join("j.redb"))
            .unwrap();
        let pid = |i: u64| PersistenceId::parse("Account", &i.to_string()).unwrap();
        for i in 0..=entities {
            j.append_blocking(&pid(i), Seq(1), vec![event(i)]).unwrap();
        }
        // The first segment is sealed; packing it takes one commit per entity.
        let (tx, rx) = std::sync::mpsc::channel();
        let flusher = {
            let j = j.clone();
            std::thread::spawn(move || tx.send(j.flush_blocking(true)).unwrap())
        };
        std::thread::sleep(Duration::from_millis(20));
        gate.panic_at(Stage::Committed);
        let flushed = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the flush was never answered");
        let err = flushed.expect_err("packing 2,000 entities one a commit outlasts 20 ms");
        assert!(
            matches!(
                err,
                crate::JournalError::Io(_) | crate::JournalError::Poisoned
            ),
            "{err}"
        );
        flusher.join().unwrap();
    }

    /// Packing a segment plans from the tail, so it must wait until the tail holds every event
    /// committed to the segment: here the event that fills it is committed but still held
    /// before the tail when the next append opens a second segment and packing starts.
    #[test]
    fn packing_waits_until_the_tail_holds_the_whole_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (gate, builder) = gated();
        let path = dir.path().join("j.redb");
        let j = builder.segment_events(4).open(&path).unwrap();
        let pid = PersistenceId::parse("Account", "a").unwrap();
        j.append_blocking(&pid, Seq(1), (1..=3).map(event).collect())
            .unwrap();
        gate.close_at(Stage::Prepared);
        let append = |seq: u64| {
            let (j, pid) = (j.clone(), pid.clone());
            std::thread::spawn(move || j.append_blocking(&pid, Seq(seq), vec![event(seq)]))
        };
        let fourth = append(4);
        wait_for("the fourth event reaches the applier", || {
            gate.waiting() == 1
        });
        // Its transaction commits while its events wait to enter the tail; nothing of it is
        // published: readers see the journal as before.
        assert_eq!(seqs(&j, &pid), [1, 2, 3]);
        assert_eq!(j.highest_seq(&pid).unwrap(), Seq(3));
        // Segment 1 is full: this append opens segment 2, and packing segment 1 begins in
        // the same transaction. Without waiting for the tail it would pack events 1-3 only
        // and drop the segment, event 4 with it. (The pause gives a writer that did not wait
        // the time to get that far.)
        let fifth = append(5);
        std::thread::sleep(Duration::from_millis(300));
        gate.open();
        assert_eq!(fourth.join().unwrap().unwrap().last_seq, Seq(4));
        assert_eq!(fifth.join().unwrap().unwrap().last_seq, Seq(5));
        j.flush_blocking(true).unwrap();
        assert_eq!(seqs(&j, &pid), [1, 2, 3, 4, 5]);
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(seqs(&j, &pid), [1, 2, 3, 4, 5]);
    }
}
