//! Progress bars for long operations: drawn on stderr when it is a terminal, absent otherwise
//! (piped output and tests stay clean).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar (known length) or spinner (unknown) that does nothing unless enabled.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
}

fn bar_style() -> Option<ProgressStyle> {
    ProgressStyle::with_template("{msg:>10} [{bar:40}] {human_pos}/{human_len} ({eta} left)")
        .ok()
        .map(|s| s.progress_chars("=> "))
}

fn counter_style() -> Option<ProgressStyle> {
    ProgressStyle::with_template("{spinner} {msg}: {human_pos} ({elapsed})").ok()
}

fn spinner_style() -> Option<ProgressStyle> {
    ProgressStyle::with_template("{spinner} {msg} ({elapsed})").ok()
}

impl Progress {
    /// A bar over `len` items, a plain spinner when `len` is `Some(0)`, or a counting spinner
    /// when it is `None`, labelled `message`; hidden unless `enabled`.
    pub fn new(enabled: bool, len: Option<u64>, message: &str) -> Self {
        if !enabled {
            return Self { bar: None };
        }
        let bar =
            ProgressBar::with_draw_target(len.filter(|n| *n > 0), ProgressDrawTarget::stderr());
        let style = match len {
            Some(0) => spinner_style(),
            Some(_) => bar_style(),
            None => counter_style(),
        };
        if let Some(s) = style {
            bar.set_style(s);
        }
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self { bar: Some(bar) }
    }

    /// Sets the position.
    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }

    /// Advances by `n`.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// Starts the next phase of an operation: a bar over `len` items, or a plain spinner when
    /// `len` is 0, labelled `message`. Does nothing if the phase is already current.
    pub fn phase(&self, len: u64, message: &str) {
        let Some(b) = &self.bar else {
            return;
        };
        if b.message() == message && b.length() == Some(len).filter(|l| *l > 0) {
            return;
        }
        let style = if len > 0 {
            bar_style()
        } else {
            spinner_style()
        };
        if let Some(s) = style {
            b.set_style(s);
        }
        if len > 0 {
            b.set_length(len);
        } else {
            b.unset_length();
        }
        b.set_position(0);
        b.set_message(message.to_string());
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
