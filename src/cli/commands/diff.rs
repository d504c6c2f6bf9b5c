//! `stateline diff`: what changed in an entity's state between two seqs — a JSON diff of the
//! two typed states for registered types, the events in between for others.

use serde::Serialize;

use crate::cli::args::DiffArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::jsondiff::{diff, Change};
use crate::cli::payload::EventJson;
use crate::cli::Ctx;

use super::replay::{check_seq, events_between, typed_state};
use super::{open_read, pid, summary};

#[derive(Serialize)]
struct DiffOut {
    entity_type: String,
    entity_id: String,
    from_seq: u64,
    to_seq: u64,
    typed: bool,
    /// The state changes (typed only).
    #[serde(skip_serializing_if = "Option::is_none")]
    changes: Option<Vec<Change>>,
    /// The events between the two points (untyped only).
    #[serde(skip_serializing_if = "Option::is_none")]
    events: Option<Vec<EventJson>>,
}

/// Runs `diff`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &DiffArgs) -> CliResult {
    let r = open_read(&a.db)?;
    let pid = pid(&a.entity_type, &a.entity_id)?;
    let s = summary(&r, &pid)?;
    let (sa, sb) = (check_seq(&r, &s, a.seq_a)?, check_seq(&r, &s, a.seq_b)?);
    let mut out = DiffOut {
        entity_type: a.entity_type.clone(),
        entity_id: a.entity_id.clone(),
        from_seq: sa,
        to_seq: sb,
        typed: false,
        changes: None,
        events: None,
    };
    if let Some(ty) = ctx.registry.get(&a.entity_type) {
        let json = |seq| {
            typed_state(&r, ty, &s, seq)?
                .state
                .to_json()
                .map_err(|e| CliError::usage(format!("{}: {pid}: {e}", a.db.display())))
        };
        let (va, vb) = (json(sa)?, json(sb)?);
        out.typed = true;
        out.changes = Some(diff(&va, &vb));
    } else {
        let (lo, hi) = (sa.min(sb), sa.max(sb));
        if lo < hi && lo < s.deleted_to.0 {
            // Some of the events between the points are gone: listing the rest would pass
            // for the whole difference.
            return Err(CliError::usage(format!(
                "{}: cannot list the events of {pid} between seq {lo} and seq {hi}: events up \
                 to seq {} were deleted",
                a.db.display(),
                s.deleted_to
            )));
        }
        out.events = Some(events_between(&r, &pid, lo, hi)?);
    }
    if ctx.json {
        return ctx.out.json(&out);
    }
    ctx.out.line(format!("{pid}: seq {sa} → seq {sb}"))?;
    if let Some(changes) = &out.changes {
        if changes.is_empty() {
            ctx.out.line("no change")?;
        }
        for c in changes {
            ctx.out.line(c.human())?;
        }
    }
    if let Some(events) = &out.events {
        ctx.out.line(format!(
            "entity type {:?} is not registered (register it with stateline::cli::Cli::register \
             for a state diff); the {} events between the two points:",
            a.entity_type,
            events.len()
        ))?;
        ctx.out.line(super::events::HEADER)?;
        for e in events {
            ctx.out.line(e.human(false))?;
        }
    }
    Ok(())
}
