//! Where command output goes: a buffered stdout that turns a closed pipe into a quiet exit,
//! JSON documents and JSON Lines, and the human formats of sizes and times.

use std::io::{BufWriter, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::error::{CliError, CliResult};

/// Buffered standard output (or any writer, for embedding and tests).
pub(crate) struct Out<'a> {
    w: BufWriter<&'a mut dyn Write>,
}

fn write_error(e: std::io::Error) -> CliError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CliError::broken_pipe()
    } else {
        CliError::io("stdout", &e)
    }
}

impl<'a> Out<'a> {
    /// Wraps `w`.
    pub fn new(w: &'a mut dyn Write) -> Self {
        Self {
            w: BufWriter::new(w),
        }
    }

    /// Writes one line of text.
    pub fn line(&mut self, s: impl std::fmt::Display) -> CliResult {
        writeln!(self.w, "{s}").map_err(write_error)
    }

    /// Writes one JSON document, pretty-printed.
    pub fn json(&mut self, v: &impl Serialize) -> CliResult {
        serde_json::to_writer_pretty(&mut self.w, v)
            .map_err(|e| CliError::usage(format!("stdout: {e}")))?;
        self.line("")
    }

    /// Writes one JSON Lines record.
    pub fn json_line(&mut self, v: &impl Serialize) -> CliResult {
        serde_json::to_writer(&mut self.w, v).map_err(|e| match e.io_error_kind() {
            Some(std::io::ErrorKind::BrokenPipe) => CliError::broken_pipe(),
            _ => CliError::usage(format!("stdout: {e}")),
        })?;
        self.line("")
    }

    /// Flushes what is buffered (after each batch of a followed stream).
    pub fn flush(&mut self) -> CliResult {
        self.w.flush().map_err(write_error)
    }
}

/// Whether the reader of the process's standard output has gone away (the other end of a pipe
/// or socket closed, a terminal hung up), found without writing anything: a follower that has
/// nothing to print would otherwise learn of it only at its next write.
#[cfg(unix)]
pub(crate) fn stdout_reader_gone() -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    use std::os::fd::AsFd;
    let stdout = std::io::stdout();
    let fd = stdout.as_fd();
    let mut fds = [PollFd::new(&fd, PollFlags::empty())];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut fds, Some(&zero)) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .intersects(PollFlags::ERR | PollFlags::HUP | PollFlags::NVAL),
        _ => false,
    }
}

/// Whether the reader of the process's standard output has gone away (not known here).
#[cfg(not(unix))]
pub(crate) fn stdout_reader_gone() -> bool {
    false
}

/// `1536` → `1.5 KiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A timestamp for humans: RFC 3339, UTC, milliseconds.
pub(crate) fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An optional timestamp for humans (`-` when unknown).
pub(crate) fn time_opt(t: Option<&DateTime<Utc>>) -> String {
    t.map_or_else(|| "-".to_string(), time)
}

/// A count with thousands separators: `1234567` → `1,234,567`.
pub(crate) fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_formats() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(count(12), "12");
        assert_eq!(count(123), "123");
        assert_eq!(count(1000), "1,000");
    }

    #[test]
    fn a_closed_pipe_is_a_quiet_exit() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
        }
        let mut w = Closed;
        let mut out = Out::new(&mut w);
        out.line("x").expect("buffered");
        let e = out.flush().expect_err("closed");
        assert_eq!(e.code, 0);
        assert!(e.message.is_empty());
    }
}
