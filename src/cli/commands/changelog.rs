//! `stateline changelog`: every event in global offset order; with `--follow`, new commits of
//! a running application as they land (polling a read-only handle).

use std::time::Duration;

use stateline_journal::{JournalReader, Offset};

use crate::cli::args::ChangelogArgs;
use crate::cli::error::{CliError, CliResult};
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
    let r = open_read(&a.db)?;
    if !ctx.json {
        ctx.out.line(
            "    OFFSET     SEQ  TIMESTAMP                 PERSISTENCE ID  MANIFEST  PAYLOAD",
        )?;
    }
    let mut next = drain(ctx, &r, Offset(a.from_offset.max(1)))?;
    if !a.follow {
        return Ok(());
    }
    // A read-only handle follows the writer's commits (redb shares the file in the writer's
    // concurrency mode), so one handle serves the whole run.
    loop {
        ctx.out.flush()?;
        std::thread::sleep(POLL);
        next = drain(ctx, &r, next)?;
    }
}
