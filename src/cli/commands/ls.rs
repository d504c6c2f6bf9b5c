//! `stateline ls`: the persistence ids of a journal with their sizes, filtered and sorted.

use std::cmp::Reverse;

use crate::cli::args::{LsArgs, SortBy};
use crate::cli::error::CliResult;
use crate::cli::output::{bytes, count, time_opt};
use crate::cli::payload::EntityJson;
use crate::cli::table::{Align, Table};
use crate::cli::Ctx;

use super::{entities, open_read};

/// Runs `ls`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &LsArgs) -> CliResult {
    let r = open_read(&a.db)?;
    let mut list = entities(&r, &a.filter)?;
    match a.sort {
        SortBy::Id => {}
        SortBy::Events => list.sort_by_key(|s| Reverse(s.events)),
        SortBy::Bytes => list.sort_by_key(|s| Reverse(s.bytes)),
        SortBy::LastWrite => list.sort_by_key(|s| Reverse(s.last_write)),
    }
    if let Some(n) = a.limit {
        list.truncate(n);
    }
    let rows: Vec<EntityJson> = list.iter().map(EntityJson::from).collect();
    if ctx.json {
        return ctx.out.json(&rows);
    }
    let mut t = Table::new(&[
        ("TYPE", Align::Left),
        ("ID", Align::Left),
        ("KEY GROUP", Align::Right),
        ("EVENTS", Align::Right),
        ("HIGHEST SEQ", Align::Right),
        ("SNAPSHOT SEQ", Align::Right),
        ("BYTES", Align::Right),
        ("LAST WRITE", Align::Left),
    ]);
    for e in &rows {
        t.row(vec![
            e.entity_type.clone(),
            e.entity_id.clone(),
            e.key_group.to_string(),
            count(e.events),
            e.highest_seq.to_string(),
            e.snapshot_seq.map_or_else(|| "-".into(), |s| s.to_string()),
            bytes(e.bytes),
            time_opt(e.last_write.as_ref()),
        ]);
    }
    if t.is_empty() {
        return ctx.out.line("no persistence ids");
    }
    t.print(&mut ctx.out)
}
