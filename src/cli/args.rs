//! The command line: every command, flag and help text (clap derive), with the parsers of
//! key-group ranges, timestamps and durations.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Inspect, replay, verify and maintain stateline journals";

const LONG_ABOUT: &str = "Inspect, replay, verify and maintain stateline journals.

Read-only commands (info, ls, stats, events, changelog, replay, diff, export) open the journal \
without the writer's lock, so a running application can be inspected (unless it opened the \
journal with Durability::None, which locks readers out). verify reads the same way, \
then runs redb's page check, which opens the file for writing (unless another process has it \
open, or with --skip-pages). Writing commands (import, retain, compact) refuse a journal that \
another process has open.

Exit codes: 0 success; 1 usage or I/O error (also: not a journal, locked); 2 corruption or a \
failed verification; 3 a journal written by a newer format.";

const EXAMPLES: &str = "Examples:
  stateline info bank.redb
  stateline ls bank.redb --sort bytes --limit 10
  stateline events bank.redb account acc-00042 --json
  stateline replay bank.redb account acc-00042 --to-seq 10
  stateline verify bank.redb";

/// `stateline`: journal inspection, replay, verification and maintenance.
#[derive(Debug, Parser)]
#[command(
    name = "stateline",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXAMPLES,
    propagate_version = true
)]
pub(crate) struct Args {
    /// Print JSON instead of tables: one document, or JSON Lines for streams (events,
    /// changelog, export).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Format version, journal id, creation time, key groups, hash, counts and sizes.
    #[command(after_help = "Examples:
  stateline info bank.redb
  stateline info bank.redb --json | jq .events")]
    Info(DbArgs),

    /// Persistence ids with event count, highest seq, newest snapshot, bytes, last write.
    #[command(after_help = "Examples:
  stateline ls bank.redb --limit 20
  stateline ls bank.redb --type account --key-groups 0..64 --sort last-write
  stateline ls bank.redb --sort bytes --limit 10 --json")]
    Ls(LsArgs),

    /// Totals per entity type, key-group distribution, largest entities, snapshot ages.
    #[command(after_help = "Examples:
  stateline stats bank.redb
  stateline stats bank.redb --top 20 --buckets 32
  stateline stats bank.redb --json")]
    Stats(StatsArgs),

    /// The events of one entity with their payloads decoded to JSON.
    #[command(after_help = "Examples:
  stateline events bank.redb account acc-00042
  stateline events bank.redb account acc-00042 --from 10 --to 20 --json")]
    Events(EventsArgs),

    /// Every event in global offset order; with --follow, keep printing new commits.
    #[command(after_help = "Examples:
  stateline changelog bank.redb --from-offset 1000
  stateline changelog bank.redb --follow --json")]
    Changelog(ChangelogArgs),

    /// The state of an entity at a point in its history.
    #[command(
        long_about = "The state of an entity at a point in its history (default: its latest seq).

Entity types registered with stateline::cli::Cli::register (in an application's own binary) \
are replayed with their own code and shown as JSON. Other types show the newest snapshot at or \
below the point, decoded to JSON, and the events after it.",
        after_help = "Examples:
  stateline replay bank.redb account acc-00042
  stateline replay bank.redb account acc-00042 --to-seq 10
  stateline replay bank.redb account acc-00042 --at 2025-01-31T12:00:00Z --json"
    )]
    Replay(ReplayArgs),

    /// What changed in an entity's state between two seqs.
    #[command(
        long_about = "What changed in an entity's state between two seqs.

For entity types registered with stateline::cli::Cli::register, a JSON diff of the two typed \
states. For other types, the events between the two points (refused, exit 1, when some of \
them were deleted by retention).",
        after_help = "Examples:
  stateline diff bank.redb account acc-00042 10 20
  stateline diff bank.redb account acc-00042 0 15 --json"
    )]
    Diff(DiffArgs),

    /// Checks integrity: seq contiguity, snapshots, envelopes, payloads, indexes, pages.
    #[command(
        long_about = "Checks a journal: seq contiguity per persistence id, snapshots not ahead \
of their journal, every stored envelope and payload decodes (and, for registered entity types, \
decodes as its type), chunk indexes consistent with the log; then redb's page checksums. Exits 2 \
if anything is wrong, listing each problem with its location.

The page check opens the file for writing (redb repairs what it can, and recovers a journal \
that was not closed cleanly); it is skipped while another process has the journal open, when \
the file cannot be opened for writing, when other problems were found, and with --skip-pages. \
A journal that needs the recovery fails (exit 1) when the page check cannot run.",
        after_help = "Examples:
  stateline verify bank.redb
  stateline verify bank.redb --skip-pages --json"
    )]
    Verify(VerifyArgs),

    /// Writes events, snapshots and entity metadata as JSON Lines to stdout.
    #[command(
        long_about = "Writes the journal as JSON Lines to stdout: a header line, then per \
persistence id an `entity` line, its `event` lines and its `snapshot` lines. Payloads appear \
decoded (`payload`) and as exact bytes (`payload_base64`). `stateline import` reads it back.",
        after_help = "Examples:
  stateline export bank.redb > bank.jsonl
  stateline export bank.redb --type account --key-groups 0..512 > half.jsonl"
    )]
    Export(ExportArgs),

    /// (writes) Imports an export into a new or empty journal.
    #[command(
        long_about = "Reads the JSON Lines of `stateline export` (stdin, or --input) into a new \
or empty journal, keeping seqs, event ids, timestamps, snapshots and deleted prefixes. Offsets \
are assigned anew. A line without `payload_base64` has its JSON `payload` encoded as \
MessagePack. Refuses a journal that has data or that another process has open. If a line \
fails, the journal keeps what was imported before it: delete the file and import again.",
        after_help = "Examples:
  stateline import copy.redb < bank.jsonl
  stateline export bank.redb | stateline import copy.redb
  stateline import copy.redb --input bank.jsonl --json"
    )]
    Import(ImportArgs),

    /// (writes) Applies retention and TTL: covered events, old snapshots, idle entities.
    #[command(after_help = "Examples:
  stateline retain bank.redb --keep-snapshots 2 --delete-covered-events --dry-run
  stateline retain bank.redb --idle-for 90days
  stateline retain bank.redb --keep-snapshots 1 --idle-for 30d --json")]
    Retain(RetainArgs),

    /// (writes) Reclaims free space (redb compaction), printing the size before and after.
    #[command(after_help = "Examples:
  stateline compact bank.redb
  stateline compact bank.redb --json")]
    Compact(DbArgs),
}

/// Just the journal.
#[derive(Debug, clap::Args)]
pub(crate) struct DbArgs {
    /// The journal file.
    pub db: PathBuf,
}

/// `verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The journal file.
    pub db: PathBuf,
    /// Do not run redb's page check (which needs to open the file for writing).
    #[arg(long)]
    pub skip_pages: bool,
}

/// Filters by entity type and key-group range.
#[derive(Debug, clap::Args)]
pub(crate) struct Filter {
    /// Only this entity type.
    #[arg(long = "type", value_name = "TYPE")]
    pub entity_type: Option<String>,
    /// Only key groups A..B (half-open; also A..=B or a single N).
    #[arg(long, value_name = "A..B", value_parser = parse_key_groups)]
    pub key_groups: Option<Range<u32>>,
}

/// `ls`.
#[derive(Debug, clap::Args)]
pub(crate) struct LsArgs {
    /// The journal file.
    pub db: PathBuf,
    /// Filters.
    #[command(flatten)]
    pub filter: Filter,
    /// Order: by persistence id (key order), or largest/newest first.
    #[arg(long, value_enum, default_value_t = SortBy::Id)]
    pub sort: SortBy,
    /// Print at most N persistence ids.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// Orders of `ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SortBy {
    /// Key order (key group, type, id).
    Id,
    /// Most stored events first.
    Events,
    /// Most stored bytes first.
    Bytes,
    /// Most recent write first.
    LastWrite,
}

/// `stats`.
#[derive(Debug, clap::Args)]
pub(crate) struct StatsArgs {
    /// The journal file.
    pub db: PathBuf,
    /// How many of the largest entities to show.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
    /// Histogram buckets over the key groups.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub buckets: u32,
}

/// `events`.
#[derive(Debug, clap::Args)]
pub(crate) struct EventsArgs {
    /// The journal file.
    pub db: PathBuf,
    /// Entity type.
    #[arg(value_name = "TYPE")]
    pub entity_type: String,
    /// Entity id.
    #[arg(value_name = "ID")]
    pub entity_id: String,
    /// First seq (inclusive).
    #[arg(long, value_name = "SEQ", default_value_t = 1)]
    pub from: u64,
    /// Last seq (inclusive).
    #[arg(long, value_name = "SEQ")]
    pub to: Option<u64>,
    /// Print at most N events.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

/// `changelog`.
#[derive(Debug, clap::Args)]
pub(crate) struct ChangelogArgs {
    /// The journal file.
    pub db: PathBuf,
    /// First offset (inclusive).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub from_offset: u64,
    /// Keep running and print events as they are committed (polls every 200 ms; Ctrl-C stops).
    /// Ends with exit 0 once the reader of stdout goes away (`| head`), and with exit 1 if the
    /// journal file is removed or replaced by another one.
    #[arg(long)]
    pub follow: bool,
}

/// `replay`.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The journal file.
    pub db: PathBuf,
    /// Entity type.
    #[arg(value_name = "TYPE")]
    pub entity_type: String,
    /// Entity id.
    #[arg(value_name = "ID")]
    pub entity_id: String,
    /// Replay up to and including this seq (default: the highest).
    #[arg(long, value_name = "N", conflicts_with = "at")]
    pub to_seq: Option<u64>,
    /// Replay the events appended at or before this time (RFC 3339, or
    /// `YYYY-MM-DD[ HH:MM:SS]` in UTC).
    #[arg(long, value_name = "TIMESTAMP", value_parser = parse_timestamp)]
    pub at: Option<DateTime<Utc>>,
}

/// `diff`.
#[derive(Debug, clap::Args)]
pub(crate) struct DiffArgs {
    /// The journal file.
    pub db: PathBuf,
    /// Entity type.
    #[arg(value_name = "TYPE")]
    pub entity_type: String,
    /// Entity id.
    #[arg(value_name = "ID")]
    pub entity_id: String,
    /// The earlier point (0 is the state before the first event).
    #[arg(value_name = "SEQ_A")]
    pub seq_a: u64,
    /// The later point.
    #[arg(value_name = "SEQ_B")]
    pub seq_b: u64,
}

/// `export`.
#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// The journal file.
    pub db: PathBuf,
    /// Filters.
    #[command(flatten)]
    pub filter: Filter,
}

/// `import`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImportArgs {
    /// The journal file to create (or an existing empty journal).
    pub db: PathBuf,
    /// Read this file instead of stdin.
    #[arg(long, short, value_name = "FILE")]
    pub input: Option<PathBuf>,
}

/// `retain`.
#[derive(Debug, clap::Args)]
pub(crate) struct RetainArgs {
    /// The journal file.
    pub db: PathBuf,
    /// Keep the newest K snapshots of each entity, delete older ones (K ≥ 1).
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..))]
    pub keep_snapshots: Option<u32>,
    /// Delete the events covered by each entity's newest snapshot.
    #[arg(long)]
    pub delete_covered_events: bool,
    /// Delete entities (events and snapshots) with no write for this long, e.g. `90days`,
    /// `12h`, `30d 12h`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_for: Option<Duration>,
    /// Print what would be done, change nothing (works while an application has the journal
    /// open).
    #[arg(long)]
    pub dry_run: bool,
}

/// Parses `A..B`, `A..=B` or `N` into a half-open range of key groups.
pub(crate) fn parse_key_groups(s: &str) -> Result<Range<u32>, String> {
    let num = |t: &str| {
        t.trim()
            .parse::<u32>()
            .map_err(|_| format!("{t:?} is not a key group number"))
    };
    let range = if let Some((a, b)) = s.split_once("..=") {
        let b = num(b)?;
        num(a)?..b.checked_add(1).ok_or("range end too large")?
    } else if let Some((a, b)) = s.split_once("..") {
        num(a)?..num(b)?
    } else {
        let n = num(s)?;
        n..n.checked_add(1).ok_or("key group too large")?
    };
    if range.start >= range.end {
        return Err(format!(
            "empty key-group range {s:?} (expected A..B with A < B)"
        ));
    }
    Ok(range)
}

/// Parses RFC 3339, `YYYY-MM-DD HH:MM:SS[.f]` / `YYYY-MM-DDTHH:MM:SS[.f]` (UTC) or
/// `YYYY-MM-DD` (midnight UTC).
pub(crate) fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    if let Some(t) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
    {
        return Ok(t.and_utc());
    }
    Err(format!(
        "{s:?} is not a timestamp (use RFC 3339 like 2025-01-31T12:00:00Z, or 2025-01-31 12:00:00)"
    ))
}

/// Parses a duration like `90days`, `12h`, `30d 12h`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); e.g. 90days, 12h"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn key_group_ranges() {
        assert_eq!(parse_key_groups("0..64"), Ok(0..64));
        assert_eq!(parse_key_groups("3..=5"), Ok(3..6));
        assert_eq!(parse_key_groups("7"), Ok(7..8));
        assert!(parse_key_groups("5..5").is_err());
        assert!(parse_key_groups("a..b").is_err());
        assert!(parse_key_groups("0..=4294967295").is_err());
    }

    #[test]
    fn timestamps_and_durations() {
        let t = parse_timestamp("2025-01-31T12:00:00Z").expect("rfc3339");
        assert_eq!(parse_timestamp("2025-01-31 12:00:00"), Ok(t));
        assert!(parse_timestamp("2025-01-31").is_ok());
        assert!(parse_timestamp("yesterday").is_err());
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn every_command_has_an_example() {
        for sub in Args::command().get_subcommands() {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                help.contains("stateline "),
                "{} has no example",
                sub.get_name()
            );
        }
    }
}
