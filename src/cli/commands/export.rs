//! `stateline export`: the journal as JSON Lines — a header, then per persistence id an
//! `entity` line, its events and its snapshots, payloads both decoded and as exact bytes. The
//! line format is [`ExportLine`], which `stateline import` reads back.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use stateline_journal::Seq;

use crate::cli::args::ExportArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::payload::{EventJson, SnapshotJson};
use crate::cli::progress::Progress;
use crate::cli::Ctx;

use super::{entities, open_read};

/// Version of the export line format.
pub(crate) const EXPORT_VERSION: u32 = 1;

/// The first line of an export.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct HeaderJson {
    /// [`EXPORT_VERSION`].
    pub export_version: u32,
    /// Format version of the exported journal.
    #[serde(default)]
    pub journal_format_version: u32,
    /// Id of the exported journal.
    #[serde(default)]
    pub journal_id: Option<uuid::Uuid>,
    /// Key groups of the exported journal (a new journal is created with the same number).
    #[serde(default)]
    pub key_groups: Option<u32>,
    /// When the export was taken.
    #[serde(default)]
    pub exported_at: Option<DateTime<Utc>>,
}

/// A persistence id in an export. Only what survives an import is written (no sizes or
/// write times), so export → import → export reproduces the same lines.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct EntityLine {
    /// Entity type.
    pub entity_type: String,
    /// Entity id.
    pub entity_id: String,
    /// Highest seq ever appended.
    pub highest_seq: u64,
    /// Events up to this seq were deleted before the export.
    #[serde(default)]
    pub deleted_to: u64,
    /// Stored events (informational).
    #[serde(default)]
    pub events: u64,
    /// Stored snapshots (informational).
    #[serde(default)]
    pub snapshots: u32,
}

/// One line of an export.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ExportLine {
    /// The first line.
    Header(HeaderJson),
    /// A persistence id: its highest seq and deleted prefix; its events and snapshots follow.
    Entity(EntityLine),
    /// An event.
    Event(EventJson),
    /// A snapshot.
    Snapshot(SnapshotJson),
}

/// Runs `export`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &ExportArgs) -> CliResult {
    let r = open_read(&a.db)?;
    let err = |e| CliError::journal(&a.db, e);
    let info = r.info();
    ctx.out.json_line(&ExportLine::Header(HeaderJson {
        export_version: EXPORT_VERSION,
        journal_format_version: info.format_version,
        journal_id: Some(info.journal_id),
        key_groups: Some(info.key_groups),
        exported_at: Some(Utc::now()),
    }))?;
    let list = entities(&r, &a.filter)?;
    let progress = Progress::new(ctx.progress, Some(list.len() as u64), "export");
    for s in &list {
        let pid = &s.persistence_id;
        ctx.out.json_line(&ExportLine::Entity(EntityLine {
            entity_type: pid.entity_type().to_string(),
            entity_id: pid.entity_id().to_string(),
            highest_seq: s.highest_seq.0,
            deleted_to: s.deleted_to.0,
            events: s.events,
            snapshots: s.snapshots,
        }))?;
        for rec in r
            .events(pid, Seq(1), Seq(u64::MAX), u64::MAX)
            .map_err(err)?
        {
            let rec = rec.map_err(err)?;
            // Offsets are reassigned on import; leave them out.
            let mut ev = EventJson::of(&rec, true);
            ev.offset = None;
            ctx.out.json_line(&ExportLine::Event(ev))?;
        }
        for q in r.snapshot_seqs(pid).map_err(err)? {
            if let Some(rec) = r.snapshot_at(pid, q).map_err(err)? {
                ctx.out
                    .json_line(&ExportLine::Snapshot(SnapshotJson::of(&rec, true)))?;
            }
        }
        progress.inc(1);
    }
    Ok(())
}
