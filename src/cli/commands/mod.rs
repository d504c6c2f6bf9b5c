//! One module per command, and what they share: opening a journal read-only or for writing,
//! naming a persistence id, filtering the entity list.

pub(crate) mod changelog;
pub(crate) mod compact;
pub(crate) mod diff;
pub(crate) mod events;
pub(crate) mod export;
pub(crate) mod import;
pub(crate) mod info;
pub(crate) mod ls;
pub(crate) mod replay;
pub(crate) mod retain;
pub(crate) mod stats;
pub(crate) mod verify;

use std::path::Path;

use stateline_journal::{EntitySummary, Journal, JournalReader, PersistenceId};

use super::args::Filter;
use super::error::{CliError, CliResult};

/// Opens `path` read-only, sharing it with a running writer.
pub(crate) fn open_read(path: &Path) -> CliResult<JournalReader> {
    JournalReader::open_read_only(path).map_err(|e| CliError::journal(path, e))
}

/// Opens an existing journal for writing; refused while another process has it open.
pub(crate) fn open_write(path: &Path) -> CliResult<Journal> {
    Journal::builder()
        .create(false)
        .open(path)
        .map_err(|e| CliError::journal(path, e))
}

/// Validates a persistence id given on the command line.
pub(crate) fn pid(entity_type: &str, entity_id: &str) -> CliResult<PersistenceId> {
    PersistenceId::parse(entity_type, entity_id).map_err(|e| {
        CliError::usage(format!(
            "invalid persistence id {entity_type}|{entity_id}: {e}"
        ))
    })
}

/// What the journal holds for `pid`, or an error naming the file if nothing.
pub(crate) fn summary(r: &JournalReader, pid: &PersistenceId) -> CliResult<EntitySummary> {
    let kg = r.key_group_of(pid).0;
    let list = r
        .entities(Some(kg..kg.saturating_add(1)))
        .map_err(|e| CliError::journal(r.path(), e))?;
    list.into_iter()
        .find(|s| s.persistence_id == *pid)
        .ok_or_else(|| {
            CliError::usage(format!(
                "{}: no persistence id {pid} in this journal",
                r.path().display()
            ))
        })
}

/// The entities matching `filter`, in key order.
pub(crate) fn entities(r: &JournalReader, filter: &Filter) -> CliResult<Vec<EntitySummary>> {
    let mut list = r
        .entities(filter.key_groups.clone())
        .map_err(|e| CliError::journal(r.path(), e))?;
    if let Some(t) = &filter.entity_type {
        list.retain(|s| s.persistence_id.entity_type().as_str() == t);
    }
    Ok(list)
}
