//! Errors of the command-line tool: one line of text and the process exit code it maps to.

use std::fmt;
use std::path::Path;

use stateline_journal::JournalError;

/// Exit code of a successful run.
pub const EXIT_OK: i32 = 0;
/// Exit code of a usage error (bad arguments) or an I/O error, also "not a journal" and
/// "locked by another process".
pub const EXIT_ERROR: i32 = 1;
/// Exit code of a corrupted journal or a failed verification.
pub const EXIT_CORRUPTED: i32 = 2;
/// Exit code of a journal written by a newer on-disk format than this build reads.
pub const EXIT_NEWER_FORMAT: i32 = 3;

/// Why a command failed: a one-line message for stderr and the exit code.
#[derive(Debug)]
pub(crate) struct CliError {
    /// Process exit code.
    pub code: i32,
    /// One line for stderr; empty for a quiet exit (stdout closed by the reader).
    pub message: String,
}

impl CliError {
    /// A usage error (exit 1).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(EXIT_ERROR, message)
    }

    /// Corrupted data or a failed check (exit 2).
    pub fn corrupted(message: impl Into<String>) -> Self {
        Self::new(EXIT_CORRUPTED, message)
    }

    /// An error with an explicit exit code; the message is folded to one line.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: one_line(&message.into()),
        }
    }

    /// The reader of stdout went away (`stateline changelog db | head`): stop quietly.
    pub fn broken_pipe() -> Self {
        Self {
            code: EXIT_OK,
            message: String::new(),
        }
    }

    /// An I/O error on `what` (a file name, `stdout`, `stdin`).
    pub fn io(what: impl fmt::Display, e: &std::io::Error) -> Self {
        Self::usage(format!("{what}: {e}"))
    }

    /// A journal error on the journal at `path`, naming the file and mapped to its exit code:
    /// corruption 2, newer format 3, everything else 1.
    pub fn journal(path: &Path, e: JournalError) -> Self {
        let p = path.display().to_string();
        match e {
            JournalError::Corrupted { location, detail } => {
                if location == p {
                    Self::corrupted(format!("{p}: journal corrupted: {detail}"))
                } else {
                    Self::corrupted(format!("{p}: journal corrupted at {location}: {detail}"))
                }
            }
            JournalError::UnsupportedFormat { found, supported } => Self::new(
                EXIT_NEWER_FORMAT,
                format!(
                    "{p}: journal format version {found} is newer than this build reads \
                     (version {supported}); use a newer stateline"
                ),
            ),
            JournalError::NotAJournal { detail, .. } => {
                Self::usage(format!("{p}: not a stateline journal ({detail})"))
            }
            JournalError::Locked { .. } => Self::usage(format!(
                "{p}: journal is locked by another process; stop the application that has it \
                 open (read-only commands work meanwhile, unless it opened the journal with \
                 Durability::None, which locks readers out too)"
            )),
            JournalError::NeedsRecovery { .. } => Self::usage(format!(
                "{p}: journal was not closed cleanly and needs the recovery that only a writable \
                 open performs (open it with the application, or run `stateline verify`)"
            )),
            JournalError::Io(m) => {
                let m = m.strip_prefix(&format!("{p}: ")).unwrap_or(&m);
                let m = m.strip_prefix("I/O error: ").unwrap_or(m);
                if m.contains("failed to fill whole buffer") {
                    // A read past the end of the file: it is shorter than its own layout.
                    Self::corrupted(format!("{p}: journal file is truncated ({m})"))
                } else {
                    Self::usage(format!("{p}: I/O error: {m}"))
                }
            }
            other => Self::usage(format!("{p}: {other}")),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Folds a message to one line (stderr gets exactly one line per error).
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, part) in s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(part);
    }
    out
}

/// Result of a command.
pub(crate) type CliResult<T = ()> = Result<T, CliError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_errors_map_to_exit_codes() {
        let p = Path::new("bank.redb");
        let c = CliError::journal(
            p,
            JournalError::Corrupted {
                location: "x".into(),
                detail: "y".into(),
            },
        );
        assert_eq!(c.code, EXIT_CORRUPTED);
        assert!(c.message.starts_with("bank.redb: "));
        let u = CliError::journal(
            p,
            JournalError::UnsupportedFormat {
                found: 2,
                supported: 1,
            },
        );
        assert_eq!(u.code, EXIT_NEWER_FORMAT);
        let l = CliError::journal(p, JournalError::Locked { path: p.into() });
        assert_eq!(l.code, EXIT_ERROR);
        assert!(l.message.contains("locked"));
        let io = CliError::journal(p, JournalError::Io("bank.redb: denied".into()));
        assert_eq!(io.message, "bank.redb: I/O error: denied");
        let eof = CliError::journal(
            p,
            JournalError::Io("I/O error: failed to fill whole buffer".into()),
        );
        assert_eq!(eof.code, EXIT_CORRUPTED);
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(CliError::usage("a\n\n b \n").message, "a; b");
    }
}
