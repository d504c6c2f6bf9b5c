//! `stateline events`: one entity's events, streamed, with payloads decoded to JSON.

use stateline_journal::Seq;

use crate::cli::args::EventsArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::payload::EventJson;
use crate::cli::Ctx;

use super::{open_read, pid, summary};

/// Column header of the human event lines (see [`EventJson::human`]).
pub(crate) const HEADER: &str = "    OFFSET     SEQ  TIMESTAMP                 MANIFEST  PAYLOAD";

/// Runs `events`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &EventsArgs) -> CliResult {
    let r = open_read(&a.db)?;
    let pid = pid(&a.entity_type, &a.entity_id)?;
    summary(&r, &pid)?;
    let to = a.to.unwrap_or(u64::MAX);
    let iter = r
        .events(&pid, Seq(a.from), Seq(to), a.limit.unwrap_or(u64::MAX))
        .map_err(|e| CliError::journal(&a.db, e))?;
    if !ctx.json {
        ctx.out.line(HEADER)?;
    }
    for rec in iter {
        let rec = rec.map_err(|e| CliError::journal(&a.db, e))?;
        let ev = EventJson::of(&rec, false);
        if ctx.json {
            ctx.out.json_line(&ev)?;
        } else {
            ctx.out.line(ev.human(false))?;
        }
    }
    Ok(())
}
