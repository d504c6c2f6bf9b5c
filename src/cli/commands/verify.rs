//! `stateline verify`: the journal's own consistency checks (seq contiguity, snapshots,
//! envelopes, chunk indexes), every payload as MessagePack and, for registered entity types, as
//! its type; then redb's page checksums. Each problem is reported with its location; any
//! problem exits 2.
//!
//! redb's page check needs a writable open (it repairs what it can), so it runs last, only on a
//! journal that passed everything else, that no other process has open and that may be written,
//! and never with `--skip-pages`; a journal that was not closed cleanly is recovered by it
//! first. It is the one part of `verify` that writes to the file (redb's header, on open and
//! close).

use serde::Serialize;
use stateline_journal::{check_file_integrity, JournalError, JournalReader, Seq};

use crate::cli::args::VerifyArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::output::count;
use crate::cli::payload::to_json;
use crate::cli::progress::Progress;
use crate::cli::registry::Registry;
use crate::cli::Ctx;

#[derive(Serialize, Clone)]
struct ProblemOut {
    location: String,
    detail: String,
}

#[derive(Serialize)]
struct Report {
    path: String,
    ok: bool,
    /// `ok`, `failed`, or `skipped: <why>`.
    integrity: String,
    entities: u64,
    events: u64,
    snapshots: u64,
    chunks: u64,
    /// Payloads (events and snapshots) checked to decode.
    payloads: u64,
    /// Registered entity types whose payloads were checked as their type.
    typed: Vec<String>,
    problems: Vec<ProblemOut>,
}

/// Why the page check cannot open `path` for writing, if the reason is one to skip it for (no
/// write permission, a read-only file system); opening it so writes nothing.
fn unwritable(path: &std::path::Path) -> Option<String> {
    use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
    match std::fs::OpenOptions::new().write(true).open(path) {
        Err(e) if matches!(e.kind(), PermissionDenied | ReadOnlyFilesystem) => {
            Some(format!("the file cannot be opened for writing ({e})"))
        }
        _ => None,
    }
}

/// The redb page check; needs exclusive access, so it is skipped while a writer runs, and write
/// access, so it is skipped without it. Any other I/O error (a full disk, a failing one) fails
/// the command (exit 1): the check did not run, and saying "skipped" would hide why.
fn integrity(path: &std::path::Path, problems: &mut Vec<ProblemOut>) -> CliResult<String> {
    if let Some(why) = unwritable(path) {
        return Ok(format!("skipped: {why}"));
    }
    match check_file_integrity(path) {
        Ok(true) => Ok("ok".into()),
        Ok(false) => {
            problems.push(ProblemOut {
                location: path.display().to_string(),
                detail: "redb integrity check failed (damaged pages found)".into(),
            });
            Ok("failed".into())
        }
        Err(JournalError::Locked { .. }) => {
            Ok("skipped: the journal is open in another process".into())
        }
        Err(JournalError::Corrupted { location, detail }) => {
            problems.push(ProblemOut { location, detail });
            Ok("failed".into())
        }
        Err(e) => {
            let e = page_check_failed(path, e);
            if e.code != crate::cli::EXIT_CORRUPTED {
                return Err(e);
            }
            // A truncated file, say: a problem of the journal, reported with the others.
            problems.push(ProblemOut {
                location: path.display().to_string(),
                detail: without_path(path, e.message),
            });
            Ok("failed".into())
        }
    }
}

/// The page check could not run: the journal error, saying which step failed.
fn page_check_failed(path: &std::path::Path, e: JournalError) -> CliError {
    let e = CliError::journal(path, e);
    let rest = without_path(path, e.message);
    CliError::new(
        e.code,
        format!(
            "{}: redb's page check could not run: {rest}",
            path.display()
        ),
    )
}

/// Every event and snapshot payload decodes as MessagePack, and as its type when registered.
/// Read errors are the journal check's to report; one is reported here only if that check
/// found nothing (so a read failure never passes silently).
fn payloads(r: &JournalReader, registry: &Registry, progress: &Progress, report: &mut Report) {
    let read_error = |report: &mut Report, location: String, e: JournalError| {
        if report.problems.is_empty() {
            report.problems.push(ProblemOut {
                location,
                detail: e.to_string(),
            });
        }
    };
    let list = match r.entities(None) {
        Ok(list) => list,
        Err(e) => return read_error(report, "entities".into(), e),
    };
    progress.phase(list.len() as u64, "payloads");
    for s in &list {
        let pid = &s.persistence_id;
        let ty = registry.get(pid.entity_type().as_str());
        match r.events(pid, Seq(1), Seq(u64::MAX), u64::MAX) {
            Err(e) => read_error(report, pid.to_string(), e),
            Ok(iter) => {
                for rec in iter {
                    let rec = match rec {
                        Ok(rec) => rec,
                        Err(e) => {
                            read_error(report, pid.to_string(), e);
                            break;
                        }
                    };
                    report.payloads += 1;
                    let check = to_json(&rec.payload)
                        .map(drop)
                        .map_err(|e| format!("payload is not MessagePack: {e}"))
                        .and_then(|()| ty.map_or(Ok(()), |t| t.check_event(&rec)));
                    if let Err(detail) = check {
                        report.problems.push(ProblemOut {
                            location: format!("{pid} seq {}", rec.seq),
                            detail,
                        });
                    }
                }
            }
        }
        let seqs = match r.snapshot_seqs(pid) {
            Ok(seqs) => seqs,
            Err(e) => {
                read_error(report, format!("{pid} snapshots"), e);
                Vec::new()
            }
        };
        for q in seqs {
            let rec = match r.snapshot_at(pid, q) {
                Ok(Some(rec)) => rec,
                Ok(None) => continue,
                Err(e) => {
                    read_error(report, format!("{pid} snapshot {q}"), e);
                    continue;
                }
            };
            report.payloads += 1;
            let check = to_json(&rec.payload)
                .map(drop)
                .map_err(|e| format!("snapshot payload is not MessagePack: {e}"))
                .and_then(|()| match ty {
                    Some(t) if t.snapshot_version() == rec.manifest.version => {
                        t.decode_snapshot(&rec).map(drop)
                    }
                    _ => Ok(()),
                });
            if let Err(detail) = check {
                report.problems.push(ProblemOut {
                    location: format!("{pid} snapshot {q}"),
                    detail,
                });
            }
        }
        progress.inc(1);
    }
}

/// Whether a read-only open failed because the file needs the crash recovery that only a
/// writable open performs (redb reports it as an aborted repair).
pub(crate) fn needs_recovery(e: &JournalError) -> bool {
    matches!(e, JournalError::NeedsRecovery { .. })
}

/// Runs `verify`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &VerifyArgs) -> CliResult {
    let path = &a.db;
    let mut report = Report {
        path: path.display().to_string(),
        ok: false,
        integrity: String::new(),
        entities: 0,
        events: 0,
        snapshots: 0,
        chunks: 0,
        payloads: 0,
        typed: ctx.registry.names().map(str::to_string).collect(),
        problems: Vec::new(),
    };
    let progress = Progress::new(ctx.progress, Some(0), "opening");
    let opened = match JournalReader::open_read_only(path) {
        Err(e) if needs_recovery(&e) && !a.skip_pages => {
            // Not closed cleanly: the page check's writable open recovers it, as the
            // application would on its next open.
            progress.phase(0, "recovering and checking pages");
            report.integrity = integrity(path, &mut report.problems)?;
            match JournalReader::open_read_only(path) {
                // The page check found damage and did not recover the file: report it.
                Err(e) if needs_recovery(&e) && !report.problems.is_empty() => Err(e),
                // The recovery did not happen (the page check was skipped): say why, rather
                // than point back at this command.
                Err(e) if needs_recovery(&e) => {
                    return Err(CliError::usage(format!(
                        "{}: journal was not closed cleanly and needs the recovery that only a \
                         writable open performs, which verify's page check could not do: {}",
                        path.display(),
                        report.integrity
                    )))
                }
                other => other,
            }
        }
        Err(e) if needs_recovery(&e) => {
            return Err(CliError::usage(format!(
                "{}: journal was not closed cleanly and needs the recovery that only a writable \
                 open performs: run `stateline verify` without --skip-pages, or open it with \
                 the application",
                path.display()
            )))
        }
        other => other,
    };
    match opened {
        Ok(r) => {
            progress.phase(0, "journal");
            let j = r
                .verify(&mut |done, total| {
                    progress.phase(total, "journal");
                    progress.set(done);
                })
                .map_err(|e| CliError::journal(path, e));
            match j {
                Ok(j) => {
                    report.entities = j.entities;
                    report.events = j.events;
                    report.snapshots = j.snapshots;
                    report.chunks = j.chunks;
                    report
                        .problems
                        .extend(j.problems.into_iter().map(|p| ProblemOut {
                            location: p.location,
                            detail: p.detail,
                        }));
                }
                // The journal opened but could not be read through: whatever the cause
                // (damaged pages, a truncated file, a failing disk), verification failed.
                Err(e) => report.problems.push(ProblemOut {
                    location: path.display().to_string(),
                    detail: without_path(path, e.message),
                }),
            }
            payloads(&r, ctx.registry, &progress, &mut report);
        }
        // A journal needing recovery whose page check found damage: the report says what.
        Err(e) if needs_recovery(&e) && !report.problems.is_empty() => {}
        Err(e) => {
            let e = CliError::journal(path, e);
            if e.code != crate::cli::EXIT_CORRUPTED {
                return Err(e);
            }
            report.problems.push(ProblemOut {
                location: path.display().to_string(),
                detail: without_path(path, e.message),
            });
        }
    }
    if report.integrity.is_empty() {
        report.integrity = if a.skip_pages {
            "skipped (--skip-pages)".into()
        } else if !report.problems.is_empty() {
            // redb's check opens the file for writing and would leave a damaged file needing a
            // repair that read-only commands cannot do: keep the file as it is.
            "skipped: the journal has problems already".into()
        } else {
            progress.phase(0, "checking pages");
            integrity(path, &mut report.problems)?
        };
    }
    drop(progress);
    report.ok = report.problems.is_empty();
    if ctx.json {
        ctx.out.json(&report)?;
    } else {
        ctx.out.line(format!("journal:    {}", report.path))?;
        ctx.out.line(format!("pages:      {}", report.integrity))?;
        ctx.out.line(format!(
            "checked:    {} persistence ids, {} events, {} snapshots, {} chunks, {} payloads",
            count(report.entities),
            count(report.events),
            count(report.snapshots),
            count(report.chunks),
            count(report.payloads)
        ))?;
        if !report.typed.is_empty() {
            ctx.out
                .line(format!("typed:      {}", report.typed.join(", ")))?;
        }
        if report.ok {
            ctx.out.line("result:     OK")?;
        } else {
            ctx.out.line(format!(
                "result:     {}",
                plural(report.problems.len(), "problem")
            ))?;
            for p in &report.problems {
                ctx.out.line(format!("  {}: {}", p.location, p.detail))?;
            }
        }
    }
    match report.problems.first() {
        None => Ok(()),
        Some(first) => Err(CliError::corrupted(format!(
            "{}: verification failed with {} (first: {}: {})",
            path.display(),
            plural(report.problems.len(), "problem"),
            first.location,
            first.detail
        ))),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{} {what}s", count(n as u64))
    }
}

/// An error message without its leading `path: ` (the problem's location names the file).
fn without_path(path: &std::path::Path, message: String) -> String {
    let prefix = format!("{}: ", path.display());
    match message.strip_prefix(&prefix) {
        Some(rest) => rest.to_string(),
        None => message,
    }
}
