//! `stateline replay`: an entity's state at a seq or a time. Registered types are replayed with
//! their own code (newest usable snapshot + events, as recovery does); other types show the
//! newest snapshot at or below the point, decoded to JSON, and the events after it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use stateline_journal::{EntitySummary, EventRecord, JournalReader, PersistenceId, Seq};

use crate::cli::args::ReplayArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::output::time;
use crate::cli::payload::{EventJson, SnapshotJson};
use crate::cli::registry::{TypedEntity, TypedState};
use crate::cli::Ctx;

use super::{open_read, pid, summary};

/// Checks that `seq` is a point of `s`'s history.
pub(crate) fn check_seq(r: &JournalReader, s: &EntitySummary, seq: u64) -> CliResult<u64> {
    if seq > s.highest_seq.0 {
        return Err(CliError::usage(format!(
            "{}: seq {seq} is beyond the highest seq {} of {}",
            r.path().display(),
            s.highest_seq,
            s.persistence_id
        )));
    }
    Ok(seq)
}

/// The highest seq appended at or before `at`.
fn seq_at(r: &JournalReader, s: &EntitySummary, at: DateTime<Utc>) -> CliResult<u64> {
    let path = r.path();
    let mut found = None;
    let mut any = false;
    let iter = r
        .events(&s.persistence_id, Seq(1), Seq(u64::MAX), u64::MAX)
        .map_err(|e| CliError::journal(path, e))?;
    for rec in iter {
        let rec = rec.map_err(|e| CliError::journal(path, e))?;
        any = true;
        if rec.timestamp > at {
            break;
        }
        found = Some(rec.seq.0);
    }
    match found {
        Some(seq) => Ok(seq),
        None if s.deleted_to.0 == 0 => Ok(0),
        None if !any && s.last_write.is_some_and(|w| w <= at) => Ok(s.highest_seq.0),
        None => Err(CliError::usage(format!(
            "{}: events up to seq {} of {} were deleted; its state at {} cannot be told",
            path.display(),
            s.deleted_to,
            s.persistence_id,
            time(&at)
        ))),
    }
}

fn unreachable_point(r: &JournalReader, s: &EntitySummary, seq: u64) -> CliError {
    CliError::usage(format!(
        "{}: cannot rebuild {} at seq {seq}: events up to seq {} were deleted and no usable \
         snapshot at or between seq {} and {seq} exists",
        r.path().display(),
        s.persistence_id,
        s.deleted_to,
        s.deleted_to
    ))
}

/// A typed state rebuilt by [`typed_state`].
pub(crate) struct TypedReplay {
    /// The state.
    pub state: Box<dyn TypedState>,
    /// The snapshot it started from.
    pub snapshot_seq: Option<u64>,
    /// Events applied after the snapshot.
    pub applied: u64,
    /// Snapshots skipped and why.
    pub notes: Vec<String>,
}

/// Rebuilds the state of `s` at `seq` with the registered type `ty`: the newest snapshot at or
/// below `seq` that decodes (and leaves no deleted event to replay), then the events after it.
pub(crate) fn typed_state(
    r: &JournalReader,
    ty: &dyn TypedEntity,
    s: &EntitySummary,
    seq: u64,
) -> CliResult<TypedReplay> {
    let path = r.path();
    let pid = &s.persistence_id;
    let deleted_to = s.deleted_to.0;
    let mut notes = Vec::new();
    let mut start: Option<(u64, Box<dyn TypedState>)> = None;
    let snaps = r
        .snapshot_seqs(pid)
        .map_err(|e| CliError::journal(path, e))?;
    for q in snaps.into_iter().rev().map(|q| q.0).filter(|q| *q <= seq) {
        if q < deleted_to && q != seq {
            break;
        }
        let rec = match r.snapshot_at(pid, Seq(q)) {
            Ok(Some(rec)) => rec,
            Ok(None) => continue,
            Err(e) => {
                notes.push(format!("snapshot at seq {q} skipped: {e}"));
                continue;
            }
        };
        match ty.decode_snapshot(&rec) {
            Ok(state) => {
                start = Some((q, state));
                break;
            }
            Err(e) => notes.push(format!("snapshot at seq {q} skipped: {e}")),
        }
    }
    let (snapshot_seq, mut state) = match start {
        Some((q, st)) => (Some(q), st),
        None if seq == 0 || deleted_to == 0 => (None, ty.initial()),
        None => return Err(unreachable_point(r, s, seq)),
    };
    let from = snapshot_seq.unwrap_or(0);
    each_event_between(r, pid, from, seq, |rec| {
        state.apply(&rec).map_err(|e| {
            CliError::corrupted(format!("{}: {pid} seq {}: {e}", path.display(), rec.seq))
        })
    })?;
    Ok(TypedReplay {
        state,
        snapshot_seq,
        applied: seq - from,
        notes,
    })
}

/// The untyped view of `s` at `seq`: the newest snapshot at or below it and the events after.
pub(crate) struct UntypedReplay {
    /// The snapshot, decoded to JSON.
    pub snapshot: Option<SnapshotJson>,
    /// The events after the snapshot up to the point.
    pub events: Vec<EventJson>,
}

/// Collects the untyped view of `s` at `seq`.
pub(crate) fn untyped(r: &JournalReader, s: &EntitySummary, seq: u64) -> CliResult<UntypedReplay> {
    let path = r.path();
    let pid = &s.persistence_id;
    let snap = r
        .load_snapshot(pid, Seq(seq))
        .map_err(|e| CliError::journal(path, e))?;
    let from = match &snap {
        Some(rec) if rec.seq.0 >= s.deleted_to.0 || rec.seq.0 == seq => rec.seq.0,
        _ if s.deleted_to.0 == 0 || seq == 0 => 0,
        _ => return Err(unreachable_point(r, s, seq)),
    };
    let snapshot = snap
        .filter(|rec| rec.seq.0 == from && from > 0)
        .map(|rec| SnapshotJson::of(&rec, false));
    events_between(r, pid, from, seq).map(|events| UntypedReplay { snapshot, events })
}

/// The events of `pid` with `from < seq <= to`, as JSON.
pub(crate) fn events_between(
    r: &JournalReader,
    pid: &PersistenceId,
    from: u64,
    to: u64,
) -> CliResult<Vec<EventJson>> {
    let mut events = Vec::new();
    each_event_between(r, pid, from, to, |rec| {
        events.push(EventJson::of(&rec, false));
        Ok(())
    })?;
    Ok(events)
}

/// Calls `each` with every event of `pid` with `from < seq <= to`, in order, and fails unless
/// that is all of them. The caller checked the range against a summary read before; events
/// deleted since (retention in another process) are an error to retry, never a shorter
/// history passed off as the whole one.
fn each_event_between(
    r: &JournalReader,
    pid: &PersistenceId,
    from: u64,
    to: u64,
    mut each: impl FnMut(EventRecord) -> CliResult<()>,
) -> CliResult<()> {
    if to <= from {
        return Ok(());
    }
    let path = r.path();
    let mut expect = from + 1;
    let iter = r
        .events(pid, Seq(expect), Seq(to), u64::MAX)
        .map_err(|e| CliError::journal(path, e))?;
    for rec in iter {
        let rec = rec.map_err(|e| CliError::journal(path, e))?;
        if rec.seq.0 != expect {
            return Err(missing_events(r, pid, expect, to, Some(rec.seq.0)));
        }
        each(rec)?;
        expect += 1;
    }
    if expect != to + 1 {
        return Err(missing_events(r, pid, expect, to, None));
    }
    Ok(())
}

/// The error for events `expect..=to` missing from a read (`found`: the seq read instead):
/// deleted since the command looked, or lost (corruption).
fn missing_events(
    r: &JournalReader,
    pid: &PersistenceId,
    expect: u64,
    to: u64,
    found: Option<u64>,
) -> CliError {
    let path = r.path().display();
    match summary(r, pid) {
        Ok(now) if now.deleted_to.0 >= expect => CliError::usage(format!(
            "{path}: events of {pid} up to seq {} were deleted while this command read them \
             (retention in another process?); run it again",
            now.deleted_to
        )),
        Err(e) => e,
        Ok(_) => CliError::corrupted(match found {
            Some(seq) => format!("{path}: {pid}: expected seq {expect}, found seq {seq}"),
            None => format!(
                "{path}: {pid}: events end at seq {}, expected them up to seq {to}",
                expect - 1
            ),
        }),
    }
}

#[derive(Serialize)]
struct TypedOut {
    entity_type: String,
    entity_id: String,
    seq: u64,
    highest_seq: u64,
    typed: bool,
    state: Value,
    snapshot_seq: Option<u64>,
    events_applied: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

#[derive(Serialize)]
struct UntypedOut {
    entity_type: String,
    entity_id: String,
    seq: u64,
    highest_seq: u64,
    typed: bool,
    snapshot: Option<SnapshotJson>,
    events: Vec<EventJson>,
}

/// Runs `replay`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &ReplayArgs) -> CliResult {
    let r = open_read(&a.db)?;
    let pid = pid(&a.entity_type, &a.entity_id)?;
    let s = summary(&r, &pid)?;
    let seq = match (a.to_seq, a.at) {
        (Some(n), _) => check_seq(&r, &s, n)?,
        (None, Some(at)) => seq_at(&r, &s, at)?,
        (None, None) => s.highest_seq.0,
    };
    let head = format!("{pid} at seq {seq} (highest seq {})", s.highest_seq);
    if let Some(ty) = ctx.registry.get(&a.entity_type) {
        let t = typed_state(&r, ty, &s, seq)?;
        let state = t
            .state
            .to_json()
            .map_err(|e| CliError::usage(format!("{}: {pid}: {e}", a.db.display())))?;
        if ctx.json {
            return ctx.out.json(&TypedOut {
                entity_type: a.entity_type.clone(),
                entity_id: a.entity_id.clone(),
                seq,
                highest_seq: s.highest_seq.0,
                typed: true,
                state,
                snapshot_seq: t.snapshot_seq,
                events_applied: t.applied,
                notes: t.notes,
            });
        }
        let from = match t.snapshot_seq {
            Some(q) => format!("snapshot at seq {q}"),
            None => "the initial state".to_string(),
        };
        ctx.out
            .line(format!("{head}: {from} + {} events", t.applied))?;
        for n in &t.notes {
            ctx.out.line(format!("note: {n}"))?;
        }
        return ctx.out.line(pretty(&state));
    }
    let u = untyped(&r, &s, seq)?;
    if ctx.json {
        return ctx.out.json(&UntypedOut {
            entity_type: a.entity_type.clone(),
            entity_id: a.entity_id.clone(),
            seq,
            highest_seq: s.highest_seq.0,
            typed: false,
            snapshot: u.snapshot,
            events: u.events,
        });
    }
    ctx.out.line(format!(
        "{head}; entity type {:?} is not registered: newest snapshot at or below seq {seq}, then the events after it",
        a.entity_type
    ))?;
    match &u.snapshot {
        Some(snap) => {
            ctx.out.line(format!(
                "snapshot at seq {} (saved {}, {}@{}):",
                snap.seq,
                time(&snap.timestamp),
                snap.manifest.type_name,
                snap.manifest.version
            ))?;
            match &snap.payload_error {
                Some(e) => ctx.out.line(format!("<not MessagePack: {e}>"))?,
                None => ctx.out.line(pretty(&snap.payload))?,
            }
        }
        None => ctx.out.line("no snapshot: the initial state")?,
    }
    ctx.out
        .line(format!("events after it: {}", u.events.len()))?;
    if !u.events.is_empty() {
        ctx.out.line(super::events::HEADER)?;
        for e in &u.events {
            ctx.out.line(e.human(false))?;
        }
    }
    Ok(())
}

/// Pretty JSON text (infallible for `Value`).
pub(crate) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use stateline_journal::{Journal, Manifest, NewEvent};

    use super::*;

    /// A summary read before retention ran in another process must not pass the events left
    /// for the whole history (untyped replay and diff list them): the read fails, saying why.
    #[test]
    fn events_deleted_after_the_summary_fail_the_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path().join("j.redb")).unwrap();
        let pid = PersistenceId::parse("account", "a").unwrap();
        let payload = rmp_serde::to_vec(&1u32).unwrap();
        let events = (0..10)
            .map(|_| NewEvent::new(Manifest::new("Added", 1), payload.clone()))
            .collect();
        j.append_blocking(&pid, Seq(1), events).unwrap();
        let before = summary(&j, &pid).unwrap();
        assert_eq!(untyped(&j, &before, 10).unwrap().events.len(), 10);
        assert_eq!(events_between(&j, &pid, 2, 7).unwrap().len(), 5);

        j.delete_events_to_blocking(&pid, Seq(4)).unwrap();
        for err in [
            untyped(&j, &before, 10).err().unwrap(),
            events_between(&j, &pid, 2, 7).err().unwrap(),
        ] {
            assert_eq!(err.code, crate::cli::error::EXIT_ERROR, "{err:?}");
            assert!(
                err.message.contains("up to seq 4 were deleted while"),
                "{err:?}"
            );
        }
        // The events after the deleted prefix still read.
        assert_eq!(events_between(&j, &pid, 4, 10).unwrap().len(), 6);
    }
}
