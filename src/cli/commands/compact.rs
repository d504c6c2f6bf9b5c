//! `stateline compact`: reclaims free space of a journal file (redb compaction), printing the
//! size before and after.

use serde::Serialize;
use stateline_journal::compact_file;

use crate::cli::args::DbArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::output::bytes;
use crate::cli::progress::Progress;
use crate::cli::Ctx;

use super::open_read;

#[derive(Serialize)]
struct Report {
    path: String,
    before: u64,
    after: u64,
    reclaimed: u64,
}

/// Runs `compact`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &DbArgs) -> CliResult {
    // Refuse what is not a journal of a format this build reads before touching the file.
    drop(open_read(&a.db)?);
    let progress = Progress::new(ctx.progress, Some(0), "compacting");
    let r = compact_file(&a.db).map_err(|e| CliError::journal(&a.db, e))?;
    drop(progress);
    let report = Report {
        path: a.db.display().to_string(),
        before: r.before,
        after: r.after,
        reclaimed: r.before.saturating_sub(r.after),
    };
    if ctx.json {
        return ctx.out.json(&report);
    }
    ctx.out.line(format!(
        "{}: {} → {} ({} reclaimed)",
        report.path,
        bytes(report.before),
        bytes(report.after),
        bytes(report.reclaimed)
    ))
}
