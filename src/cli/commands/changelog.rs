//! `stateline changelog`: every event in global offset order; with `--follow`, new commits of
//! a running application as they land (polling a read-only handle).

use std::path::Path;
use std::time::Duration;

use stateline_journal::{JournalReader, Offset};

use crate::cli::args::ChangelogArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::output;
use crate::cli::payload::EventJson;
use crate::cli::Ctx;

use super::open_read;

/// How often `--follow` looks for new commits.
const POLL: Duration = Duration::from_millis(200);

/// Prints everything committed from `from` on; returns the offset to continue from.
fn drain(ctx: &mut Ctx<'_>, r: &JournalReader, from: Offset) -> CliResult<Offset> {
    let path = r.path().to_path_buf();
    let mut iter = r.changelog(from).map_err(|e| CliError::journal(&path, e))?;
    for rec in iter.by_ref() {
        let rec = rec.map_err(|e| CliError::journal(&path, e))?;
        let ev = EventJson::of(&rec, false);
        if ctx.json {
            ctx.out.json_line(&ev)?;
        } else {
            ctx.out.line(ev.human(true))?;
        }
    }
    Ok(iter.position().max(from))
}

/// Runs `changelog`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &ChangelogArgs) -> CliResult {
    // Taken before the open, and checked after it, so that the file read is the file followed.
    let file = if a.follow {
        Some(FileIdentity::of(&a.db).map_err(|e| CliError::io(a.db.display(), &e))?)
    } else {
        None
    };
    let r = open_read(&a.db)?;
    if let Some(file) = &file {
        file.check(&a.db)?;
    }
    if !ctx.json {
        ctx.out.line(
            "    OFFSET     SEQ  TIMESTAMP                 PERSISTENCE ID  MANIFEST  PAYLOAD",
        )?;
    }
    let mut next = drain(ctx, &r, Offset(a.from_offset.max(1)))?;
    let Some(file) = file else {
        return Ok(());
    };
    // A read-only handle follows the writer's commits (redb shares the file in the writer's
    // concurrency mode), so one handle serves the whole run, as long as the path still names
    // the file it reads.
    loop {
        ctx.out.flush()?;
        std::thread::sleep(POLL);
        if ctx.process_stdout && output::stdout_reader_gone() {
            return Err(CliError::broken_pipe());
        }
        if let Err(gone) = file.check(&a.db) {
            // What was committed to the old file up to now is still printed.
            drain(ctx, &r, next)?;
            ctx.out.flush()?;
            return Err(gone);
        }
        next = drain(ctx, &r, next)?;
    }
}

/// Which file a path names, to notice it being removed or replaced while it is followed (the
/// handle would go on reading the old file, which no writer appends to any more).
struct FileIdentity {
    #[cfg(unix)]
    dev_ino: (u64, u64),
}

impl FileIdentity {
    fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let id = {
            use std::os::unix::fs::MetadataExt;
            Self {
                dev_ino: (meta.dev(), meta.ino()),
            }
        };
        #[cfg(not(unix))]
        let id = {
            let _ = meta;
            Self {}
        };
        Ok(id)
    }

    /// Fails (exit 1) once `path` no longer names the file followed.
    fn check(&self, path: &Path) -> CliResult {
        let p = path.display();
        match Self::of(path) {
            #[cfg(unix)]
            Ok(now) if now.dev_ino != self.dev_ino => Err(CliError::usage(format!(
                "{p}: the journal was replaced by another file while it was followed; run the \
                 command again to follow the new one"
            ))),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::usage(format!(
                "{p}: the journal was removed while it was followed"
            ))),
            Err(e) => Err(CliError::io(p, &e)),
        }
    }
}
