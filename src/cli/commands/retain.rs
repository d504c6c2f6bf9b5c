//! `stateline retain`: retention and TTL — deletes entities idle longer than a duration, old
//! snapshots beyond the newest K, and events covered by the newest snapshot; prints what it
//! did, or with `--dry-run` what it would do (read-only then).

use chrono::{DateTime, Utc};
use serde::Serialize;
use stateline_journal::{EntitySummary, Journal, SnapshotCriteria};

use crate::cli::args::RetainArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::output::{count, time_opt};
use crate::cli::progress::Progress;
use crate::cli::Ctx;

use super::{open_read, open_write};

/// Threads applying retention in parallel (their deletes share group commits).
const WORKERS: usize = 8;

#[derive(Serialize)]
struct Action {
    entity_type: String,
    entity_id: String,
    /// `delete_entity`, `delete_snapshots` or `delete_events`.
    action: &'static str,
    /// Events deleted.
    events: u64,
    /// Snapshots deleted.
    snapshots: u64,
    /// For `delete_events`: events up to this seq are deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    to_seq: Option<u64>,
    /// For `delete_entity`: its last write.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_write: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct Report {
    path: String,
    dry_run: bool,
    entities_deleted: u64,
    snapshots_deleted: u64,
    events_deleted: u64,
    actions: Vec<Action>,
}

fn action(s: &EntitySummary, action: &'static str) -> Action {
    Action {
        entity_type: s.persistence_id.entity_type().to_string(),
        entity_id: s.persistence_id.entity_id().to_string(),
        action,
        events: 0,
        snapshots: 0,
        to_seq: None,
        last_write: None,
    }
}

/// Decides (and unless dry-running, applies) what retention does to one entity.
fn retain_one(
    a: &RetainArgs,
    j: Option<&Journal>,
    s: &EntitySummary,
    cutoff: Option<DateTime<Utc>>,
) -> Result<Vec<Action>, stateline_journal::JournalError> {
    let pid = &s.persistence_id;
    let mut out = Vec::new();
    if cutoff.is_some_and(|c| s.last_write.is_some_and(|w| w < c)) {
        if let Some(j) = j {
            j.delete_entity_blocking(pid)?;
        }
        let mut act = action(s, "delete_entity");
        act.events = s.events;
        act.snapshots = u64::from(s.snapshots);
        act.last_write = s.last_write;
        out.push(act);
        return Ok(out);
    }
    if let Some(k) = a.keep_snapshots {
        if s.snapshots > k {
            let n = match j {
                Some(j) => j
                    .delete_snapshots_blocking(pid, SnapshotCriteria::keep_newest(k as usize))?
                    as u64,
                None => u64::from(s.snapshots - k),
            };
            if n > 0 {
                let mut act = action(s, "delete_snapshots");
                act.snapshots = n;
                out.push(act);
            }
        }
    }
    if a.delete_covered_events {
        if let Some(snap) = s.snapshot_seq.filter(|q| *q > s.deleted_to) {
            let to = match j {
                Some(j) => j.delete_events_to_blocking(pid, snap)?,
                None => snap,
            };
            let n = to.0.saturating_sub(s.deleted_to.0);
            if n > 0 {
                let mut act = action(s, "delete_events");
                act.events = n;
                act.to_seq = Some(to.0);
                out.push(act);
            }
        }
    }
    Ok(out)
}

/// Runs `retain`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &RetainArgs) -> CliResult {
    if a.keep_snapshots.is_none() && !a.delete_covered_events && a.idle_for.is_none() {
        return Err(CliError::usage(
            "nothing to do: give --keep-snapshots, --delete-covered-events and/or --idle-for",
        ));
    }
    let cutoff = match a.idle_for {
        Some(d) => {
            let d = chrono::Duration::from_std(d)
                .map_err(|_| CliError::usage("--idle-for is too long"))?;
            Some(
                Utc::now()
                    .checked_sub_signed(d)
                    .unwrap_or(DateTime::<Utc>::MIN_UTC),
            )
        }
        None => None,
    };
    let (journal, reader) = if a.dry_run {
        (None, open_read(&a.db)?)
    } else {
        let j = open_write(&a.db)?;
        let r = j.reader();
        (Some(j), r)
    };
    let list = reader
        .entities(None)
        .map_err(|e| CliError::journal(&a.db, e))?;
    let progress = Progress::new(ctx.progress, Some(list.len() as u64), "retain");
    let mut report = Report {
        path: a.db.display().to_string(),
        dry_run: a.dry_run,
        entities_deleted: 0,
        snapshots_deleted: 0,
        events_deleted: 0,
        actions: Vec::new(),
    };
    // Entities are independent: a few threads share group commits instead of paying one
    // commit per delete in turn. Results keep the list order.
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (list, journal, progress) = (&list, journal.as_ref(), &progress);
                scope.spawn(move || {
                    let mut out = Vec::new();
                    for (i, s) in list.iter().enumerate().skip(w).step_by(WORKERS) {
                        out.push((i, retain_one(a, journal, s, cutoff)?));
                        progress.inc(1);
                    }
                    Ok::<_, stateline_journal::JournalError>(out)
                })
            })
            .collect();
        let mut all = Vec::with_capacity(list.len());
        for h in handles {
            match h.join() {
                Ok(Ok(part)) => all.extend(part),
                Ok(Err(e)) => return Err(CliError::journal(&a.db, e)),
                Err(_) => return Err(CliError::usage("internal error: a retain worker panicked")),
            }
        }
        all.sort_by_key(|(i, _)| *i);
        Ok(all)
    })?;
    for (_, acts) in results {
        for act in acts {
            report.entities_deleted += u64::from(act.action == "delete_entity");
            report.snapshots_deleted += act.snapshots;
            report.events_deleted += act.events;
            report.actions.push(act);
        }
    }
    drop(progress);
    if let Some(j) = journal {
        j.flush_blocking(false)
            .map_err(|e| CliError::journal(&a.db, e))?;
    }
    if ctx.json {
        return ctx.out.json(&report);
    }
    let verb = if a.dry_run { "would delete" } else { "deleted" };
    for act in &report.actions {
        let pid = format!("{}|{}", act.entity_type, act.entity_id);
        let line = match act.action {
            "delete_entity" => format!(
                "{verb} {pid}: idle since {} ({} events, {} snapshots)",
                time_opt(act.last_write.as_ref()),
                count(act.events),
                count(act.snapshots)
            ),
            "delete_snapshots" => format!("{verb} {} old snapshots of {pid}", act.snapshots),
            _ => format!(
                "{verb} {} events of {pid} (up to seq {}, covered by its snapshot)",
                count(act.events),
                act.to_seq.unwrap_or(0)
            ),
        };
        ctx.out.line(line)?;
    }
    ctx.out.line(format!(
        "{}: {verb} {} entities, {} snapshots, {} events",
        report.path,
        count(report.entities_deleted),
        count(report.snapshots_deleted),
        count(report.events_deleted)
    ))
}
