//! `stateline info`: header facts, counts and sizes of a journal.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::cli::args::DbArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::output::{bytes, count, time};
use crate::cli::Ctx;

use super::open_read;

/// What `info` prints.
#[derive(Serialize)]
struct Info {
    path: String,
    format_version: u32,
    journal_id: uuid::Uuid,
    created_at: DateTime<Utc>,
    key_groups: u32,
    hash: String,
    entity_types: u64,
    persistence_ids: u64,
    events: u64,
    event_bytes: u64,
    snapshots: u64,
    highest_offset: u64,
    file_bytes: u64,
}

/// Runs `info`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &DbArgs) -> CliResult {
    let r = open_read(&a.db)?;
    let header = r.info();
    let list = r.entities(None).map_err(|e| CliError::journal(&a.db, e))?;
    let types: BTreeSet<&str> = list
        .iter()
        .map(|s| s.persistence_id.entity_type().as_str())
        .collect();
    let file_bytes = std::fs::metadata(&a.db)
        .map_err(|e| CliError::io(a.db.display(), &e))?
        .len();
    let info = Info {
        path: a.db.display().to_string(),
        format_version: header.format_version,
        journal_id: header.journal_id,
        created_at: header.created_at,
        key_groups: header.key_groups,
        hash: header.hash,
        entity_types: types.len() as u64,
        persistence_ids: list.len() as u64,
        events: list.iter().map(|s| s.events).sum(),
        event_bytes: list.iter().map(|s| s.bytes).sum(),
        snapshots: list.iter().map(|s| u64::from(s.snapshots)).sum(),
        highest_offset: r.committed_offset().0,
        file_bytes,
    };
    if ctx.json {
        return ctx.out.json(&info);
    }
    let rows = [
        ("journal", info.path.clone()),
        ("format version", info.format_version.to_string()),
        ("journal id", info.journal_id.to_string()),
        ("created at", time(&info.created_at)),
        ("key groups", count(u64::from(info.key_groups))),
        ("hash", info.hash.clone()),
        ("entity types", count(info.entity_types)),
        ("persistence ids", count(info.persistence_ids)),
        (
            "events",
            format!("{} ({})", count(info.events), bytes(info.event_bytes)),
        ),
        ("snapshots", count(info.snapshots)),
        ("highest offset", count(info.highest_offset)),
        ("file size", bytes(info.file_bytes)),
    ];
    for (k, v) in rows {
        ctx.out.line(format!("{:<16} {v}", format!("{k}:")))?;
    }
    Ok(())
}
