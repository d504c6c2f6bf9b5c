//! The applier: a second thread that brings the tail index up to date with each committed
//! transaction and then sends its replies, in commit order, while the writer thread goes on to
//! the next transaction. Taking this work off the writer overlaps it with the next commit's
//! I/O; a reply still goes out only after its transaction is durable and its events are in the
//! tail, so a caller reads its own writes.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
#[cfg(test)]
use std::sync::{Condvar, Mutex};
use std::thread::JoinHandle;

use tracing::info;

use super::{Done, Effects, Reply, TailRefs};
use crate::error::{JournalError, Result};
use crate::tail::{EntityKey, Shared};

/// Messages handed over and not yet taken, at most (two per transaction that appends): the
/// writer waits when the applier is this far behind (a reader holding the tail, say), so the
/// tail lags by a bounded number of commits and their bytes are held once.
const MAX_BEHIND: usize = 8;

/// What the applier does, in the writer's order.
enum Applied {
    /// A transaction about to commit: its appended events go into the tail, not yet published
    /// (readers keep only refs at or below the committed offset), so that this work overlaps
    /// the commit's I/O.
    Prepared {
        tail: Vec<(EntityKey, TailRefs)>,
        /// Stored bytes of the events, ascending offset.
        bytes: Vec<(u64, Vec<u8>)>,
    },
    /// A committed transaction: a packed segment leaves the tail, the committed offset is
    /// published, then its replies go out.
    Committed {
        fx: Effects,
        /// The highest committed offset, when the transaction appended.
        committed: Option<u64>,
        done: Vec<Done>,
        /// `flush(pack: true)` callers whose packing is complete with this transaction.
        waiters: Vec<Reply<()>>,
    },
    /// A failed transaction: what it put in the tail (offsets from `unwind_from`) is taken out;
    /// writes are of unknown outcome, refusals stay refusals.
    Failed {
        unwind_from: u64,
        msg: String,
        done: Vec<Done>,
        waiters: Vec<Reply<()>>,
    },
    /// Answered once everything handed over before it is applied.
    Barrier(mpsc::SyncSender<()>),
}

/// Holds the applier before each committed transaction while closed: tests make the tail lag
/// the commits by as much as they need.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Closed, and how many transactions wait at it.
    state: Mutex<(bool, usize)>,
    cv: Condvar,
}

#[cfg(test)]
impl Gate {
    pub(crate) fn close(&self) {
        self.state.lock().unwrap().0 = true;
    }

    pub(crate) fn open(&self) {
        self.state.lock().unwrap().0 = false;
        self.cv.notify_all();
    }

    /// Transactions waiting at the gate.
    pub(crate) fn waiting(&self) -> usize {
        self.state.lock().unwrap().1
    }

    fn pass(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 += 1;
        while s.0 {
            s = self.cv.wait(s).unwrap();
        }
        s.1 -= 1;
    }
}

/// The gate a test set on the journal, if any (a type of no size otherwise).
#[cfg(test)]
pub(crate) type GateRef = Option<Arc<Gate>>;
#[cfg(not(test))]
pub(crate) type GateRef = ();

/// The writer's handle on the applier thread.
pub(super) struct Applier {
    tx: Option<mpsc::SyncSender<Applied>>,
    handle: Option<JoinHandle<()>>,
}

impl Applier {
    /// Starts the applier thread for the journal whose state `shared` is.
    pub(super) fn start(shared: Arc<Shared>, gate: GateRef) -> Result<Self> {
        let (tx, rx) = mpsc::sync_channel(MAX_BEHIND);
        let handle = std::thread::Builder::new()
            .name("stateline-applier".into())
            .spawn(move || run(&shared, &rx, &gate))
            .map_err(|e| JournalError::Io(format!("cannot start applier thread: {e}")))?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Hands over the appended events of a transaction about to commit.
    pub(super) fn prepared(&self, tail: Vec<(EntityKey, TailRefs)>, bytes: Vec<(u64, Vec<u8>)>) {
        if !tail.is_empty() {
            self.send(Applied::Prepared { tail, bytes });
        }
    }

    /// Hands over a committed transaction.
    pub(super) fn committed(
        &self,
        fx: Effects,
        committed: Option<u64>,
        done: Vec<Done>,
        waiters: Vec<Reply<()>>,
    ) {
        self.send(Applied::Committed {
            fx,
            committed,
            done,
            waiters,
        });
    }

    /// Hands over a failed transaction's replies; `unwind_from` is its first offset.
    pub(super) fn failed(
        &self,
        unwind_from: u64,
        msg: String,
        done: Vec<Done>,
        waiters: Vec<Reply<()>>,
    ) {
        self.send(Applied::Failed {
            unwind_from,
            msg,
            done,
            waiters,
        });
    }

    /// Returns once every transaction handed over so far is in the tail (the writer reads the
    /// tail to plan packing a segment, which must see all of the segment's events).
    pub(super) fn wait_applied(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Applied::Barrier(tx));
        // An applier that is gone has nothing left to apply.
        let _ = rx.recv();
    }

    fn send(&self, a: Applied) {
        if let Some(tx) = &self.tx {
            // Only a panicked applier hangs up; its callers then see the journal closed.
            let _ = tx.send(a);
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

fn run(shared: &Shared, rx: &mpsc::Receiver<Applied>, gate: &GateRef) {
    let _ = gate;
    while let Ok(a) = rx.recv() {
        match a {
            Applied::Prepared { tail, bytes } => {
                #[cfg(test)]
                if let Some(g) = gate {
                    g.pass();
                }
                extend(shared, &tail, &bytes);
                // The bytes are freed here, off the writer thread.
                drop((tail, bytes));
            }
            Applied::Committed {
                fx,
                committed,
                done,
                waiters,
            } => {
                apply(shared, &fx, committed);
                for d in done {
                    d.send();
                }
                for w in waiters {
                    drop(w.send(Ok(())));
                }
            }
            Applied::Failed {
                unwind_from,
                msg,
                done,
                waiters,
            } => {
                shared
                    .tail
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwind_from(unwind_from);
                for d in done {
                    d.fail(&msg);
                }
                for w in waiters {
                    drop(w.send(Err(JournalError::Io(msg.clone()))));
                }
            }
            Applied::Barrier(tx) => drop(tx.send(())),
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
fn apply(shared: &Shared, fx: &Effects, committed: Option<u64>) {
    if let Some(seg) = fx.packed_segment {
        let mut tail = shared.tail.write().unwrap_or_else(|p| p.into_inner());
        // Readers that saw the old entity rows retry when the version moves (read.rs).
        shared.pack_version.fetch_add(1, Ordering::SeqCst);
        tail.drop_segment(seg);
    }
    if let Some(offset) = committed {
        shared.committed.send_replace(offset);
    }
    if let Some(seg) = fx.packed_segment {
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

    /// The applier puts a transaction's events in the tail while it commits: when the commit
    /// fails, they are taken out again before the failure is reported, and were never
    /// visible to readers.
    #[test]
    fn a_failed_commit_leaves_nothing_in_the_tail() {
        let storage = crate::FaultyStorage::new();
        let j = Journal::builder()
            .open_with_backend(storage.clone(), "mem")
            .unwrap();
        let pid = PersistenceId::parse("Account", "a").unwrap();
        let other = PersistenceId::parse("Account", "b").unwrap();
        j.append_blocking(&pid, Seq(1), vec![event(1), event(2)])
            .unwrap();
        storage.fail_now(true);
        let err = j.append_blocking(&pid, Seq(3), vec![event(3)]).unwrap_err();
        assert!(matches!(err, crate::JournalError::Io(_)), "{err}");
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

    /// Packing a segment plans from the tail, so it must wait until the tail holds every event
    /// committed to the segment: here the event that fills it is committed but still held
    /// before the tail when the next append opens a second segment and packing starts.
    #[test]
    fn packing_waits_until_the_tail_holds_the_whole_segment() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let mut builder = Journal::builder().segment_events(4);
        builder.applier_gate = Some(gate.clone());
        let path = dir.path().join("j.redb");
        let j = builder.open(&path).unwrap();
        let pid = PersistenceId::parse("Account", "a").unwrap();
        j.append_blocking(&pid, Seq(1), (1..=3).map(event).collect())
            .unwrap();
        gate.close();
        let append = |seq: u64| {
            let (j, pid) = (j.clone(), pid.clone());
            std::thread::spawn(move || j.append_blocking(&pid, Seq(seq), vec![event(seq)]))
        };
        let fourth = append(4);
        let deadline = Instant::now() + Duration::from_secs(20);
        while gate.waiting() == 0 {
            assert!(
                Instant::now() < deadline,
                "the fourth event never committed"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Committed but not in the tail nor acknowledged: readers see the journal as before.
        assert_eq!(seqs(&j, &pid), [1, 2, 3]);
        assert_eq!(j.highest_seq(&pid).unwrap(), Seq(3));
        // Segment 1 is full: this append opens segment 2, and packing segment 1 begins in
        // the same transaction. Without waiting for the tail it would pack events 1-3 only
        // and drop the segment, event 4 with it.
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
