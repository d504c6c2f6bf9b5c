//! The publisher thread: makes committed transactions visible in memory (tail index, event
//! cache, committed offset) and then answers their callers, while the writer thread goes on
//! with the next transaction. Publishing is a fifth of the writer's work; done beside it, it
//! overlaps the next transaction's commit, which mostly waits for the disk.
//!
//! Order: publications are applied one at a time in commit order, and a caller is answered
//! only after its transaction is published, so an acknowledged append is visible to every
//! read that starts after the acknowledgement. The writer reads the tail only to plan packing
//! a sealed segment, and first waits until everything it committed is published
//! ([`Publisher::wait`]), so the plan holds every event of the segment.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tracing::{error, info};

use crate::tail::{Shared, TailRef};
use crate::writer::{Done, Reply};

/// What one committed transaction changes in memory, and who waits for it.
pub(crate) struct Publication {
    /// Refs of the appended events, per entity (ascending seq within each).
    pub tail: Vec<(Vec<u8>, Vec<TailRef>)>,
    /// Stored bytes of the appended events, by offset, ascending and dense.
    pub appended_bytes: Vec<(u64, Vec<u8>)>,
    /// A segment whose packing this transaction completed.
    pub packed_segment: Option<u64>,
    /// The highest offset committed, when the transaction appended.
    pub committed: Option<u64>,
    pub done: Vec<Done>,
    /// `flush(pack)` callers whose packing is complete with this transaction.
    pub pack_waiters: Vec<Reply<()>>,
}

/// Publications handed to the thread but not yet applied are at most this many: the writer
/// waits rather than run further ahead.
const QUEUE: usize = 2;

#[derive(Default)]
struct Progress {
    published: Mutex<u64>,
    changed: Condvar,
}

/// The writer's handle on the publisher thread.
pub(crate) struct Publisher {
    tx: Option<SyncSender<Publication>>,
    handle: Option<JoinHandle<()>>,
    progress: Arc<Progress>,
    sent: u64,
}

impl Publisher {
    pub(crate) fn start(shared: Arc<Shared>) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Publication>(QUEUE);
        let progress = Arc::new(Progress::default());
        let seen = progress.clone();
        let handle = std::thread::Builder::new()
            .name("stateline-publisher".into())
            .spawn(move || {
                for p in rx {
                    publish(&shared, p);
                    let mut n = seen.published.lock().unwrap_or_else(|e| e.into_inner());
                    *n += 1;
                    seen.changed.notify_all();
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
            progress,
            sent: 0,
        })
    }

    /// Hands a committed transaction over. `false` if the publisher thread is gone (its
    /// callers then see the journal closed).
    pub(crate) fn publish(&mut self, p: Publication) -> bool {
        let Some(tx) = self.tx.as_ref() else {
            return false;
        };
        if tx.send(p).is_err() {
            error!("journal publisher stopped");
            return false;
        }
        self.sent += 1;
        true
    }

    /// Waits until every publication handed over has been applied.
    pub(crate) fn wait(&self) {
        let mut n = self
            .progress
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *n < self.sent && self.handle.as_ref().is_some_and(|h| !h.is_finished()) {
            n = self
                .progress
                .changed
                .wait_timeout(n, std::time::Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Applies what is queued and stops the thread.
    pub(crate) fn stop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            drop(h.join());
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Applies one publication, then answers its callers.
fn publish(shared: &Shared, p: Publication) {
    {
        let mut tail = shared.tail.write().unwrap_or_else(|e| e.into_inner());
        let bytes = &p.appended_bytes;
        let base = bytes.first().map_or(0, |(offset, _)| *offset);
        for (ek, refs) in &p.tail {
            tail.extend(
                ek,
                refs.iter()
                    .map(|r| (*r, bytes[(r.offset - base) as usize].1.as_slice())),
            );
        }
        if let Some(seg) = p.packed_segment {
            // Readers that saw the old entity rows retry when the version moves (read.rs).
            shared.pack_version.fetch_add(1, Ordering::SeqCst);
            tail.drop_segment(seg);
        }
    }
    if let Some(offset) = p.committed {
        shared.committed.send_replace(offset);
    }
    if let Some(seg) = p.packed_segment {
        info!(segment = seg, "log segment packed into chunks");
    }
    for d in p.done {
        d.send();
    }
    for w in p.pack_waiters {
        drop(w.send(Ok(())));
    }
}
