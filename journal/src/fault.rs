//! [`FaultyStorage`]: an in-memory redb storage backend that fails on demand, for testing how
//! a journal (and the entities above it) behave on I/O errors (G8).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use redb::backends::InMemoryBackend;
use redb::StorageBackend;

/// In-memory storage that fails writes and syncs while [`Self::fail_now`] is on, or after a
/// set number of further writes and syncs ([`Self::fail_after`]), and that can stall them
/// ([`Self::stall`]: a disk that stops answering, for overload tests). Clones share the same bytes
/// and switches, so a test can keep one clone to flip faults and reopen the journal on the
/// same storage. Reads never fail (a crash-free disk that refuses to write).
#[derive(Debug, Clone)]
pub struct FaultyStorage {
    inner: Arc<InMemoryBackend>,
    failing: Arc<AtomicBool>,
    /// Writes and syncs allowed before failing starts; `u64::MAX` means never.
    budget: Arc<AtomicU64>,
    /// While true, writes and syncs wait.
    stalled: Arc<(Mutex<bool>, Condvar)>,
}

impl Default for FaultyStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl FaultyStorage {
    /// Healthy, empty storage.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(InMemoryBackend::new()),
            failing: Arc::new(AtomicBool::new(false)),
            budget: Arc::new(AtomicU64::new(u64::MAX)),
            stalled: Arc::new((Mutex::new(false), Condvar::new())),
        }
    }

    /// Makes writes and syncs wait (`true`) until released (`false`).
    pub fn stall(&self, on: bool) {
        let (lock, cv) = &*self.stalled;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = on;
        cv.notify_all();
    }

    /// Makes every write and sync fail (`true`) or succeed (`false`) from now on.
    pub fn fail_now(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
        if !on {
            self.budget.store(u64::MAX, Ordering::SeqCst);
        }
    }

    /// Lets `n` more writes or syncs succeed, then fails every later one.
    pub fn fail_after(&self, n: u64) {
        self.budget.store(n, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), std::io::Error> {
        {
            let (lock, cv) = &*self.stalled;
            let mut stalled = lock.lock().unwrap_or_else(|p| p.into_inner());
            while *stalled {
                stalled = cv.wait(stalled).unwrap_or_else(|p| p.into_inner());
            }
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected storage fault"));
        }
        let left = self.budget.load(Ordering::SeqCst);
        if left == u64::MAX {
            return Ok(());
        }
        if left == 0 {
            self.failing.store(true, Ordering::SeqCst);
            return Err(std::io::Error::other("injected storage fault"));
        }
        self.budget.store(left - 1, Ordering::SeqCst);
        Ok(())
    }
}

impl StorageBackend for FaultyStorage {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.check()?;
        self.inner.write(offset, data)
    }
}
