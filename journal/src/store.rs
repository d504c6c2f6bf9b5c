//! [`Store`]: owns a redb handle and contains a panic of redb's close on damaged bytes (G7).
//! redb trusts a cleanly closed file; if its bytes were altered afterwards, closing it can hit
//! an internal assertion. A journal handle's drop must not panic its owner's thread.

use std::ops::Deref;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// A redb database (read-write or read-only) whose drop never unwinds into the caller.
pub(crate) struct Store<D>(Option<D>);

impl<D> Store<D> {
    pub(crate) fn new(db: D) -> Self {
        Self(Some(db))
    }
}

impl<D> Deref for Store<D> {
    type Target = D;
    fn deref(&self) -> &D {
        match &self.0 {
            Some(d) => d,
            // Only `drop` takes the handle out, and nothing can deref during drop.
            None => unreachable!("store used after drop"),
        }
    }
}

impl<D> Drop for Store<D> {
    fn drop(&mut self) {
        let db = self.0.take();
        if catch_unwind(AssertUnwindSafe(move || drop(db))).is_err() {
            tracing::error!("closing the journal file failed inside redb (damaged file?)");
        }
    }
}
