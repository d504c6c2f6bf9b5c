//! `stateline import`: reads an export (JSON Lines) into a new or empty journal. Lines are
//! parsed on the calling thread and batched per persistence id; a few worker threads append
//! the batches with the blocking API, so group commit keeps the import fast while each
//! persistence id's batches stay in order (always the same worker).

use std::io::{BufRead, BufReader, IsTerminal};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Mutex;

use serde::Serialize;
use stateline_journal::{Journal, NewEvent, PersistenceId, Seq, SnapshotRecord, MAX_KEY_GROUPS};

use crate::cli::args::ImportArgs;
use crate::cli::error::{CliError, CliResult};
use crate::cli::output::count;
use crate::cli::payload::base64_decode;
use crate::cli::progress::Progress;
use crate::cli::Ctx;

use super::export::{ExportLine, EXPORT_VERSION};
use super::open_write;

/// Worker threads appending in parallel (their appends share group commits).
const WORKERS: u32 = 8;
/// Most events in one append.
const BATCH_EVENTS: usize = 1000;
/// Most payload bytes in one append.
const BATCH_BYTES: usize = 4 << 20;

/// Work for a worker, with the input line it came from.
enum Job {
    Floor(usize, PersistenceId, Seq),
    Events(usize, PersistenceId, Seq, Vec<NewEvent>),
    Snapshot(usize, SnapshotRecord),
}

/// The events of one persistence id waiting to be appended.
struct Batch {
    line: usize,
    pid: PersistenceId,
    first: Seq,
    next: u64,
    bytes: usize,
    events: Vec<NewEvent>,
}

#[derive(Serialize, Default)]
struct Summary {
    path: String,
    persistence_ids: u64,
    events: u64,
    snapshots: u64,
}

/// Opens the target: a new journal (with the export's key groups) or an existing empty one.
fn open_target(path: &Path, key_groups: Option<u32>) -> CliResult<Journal> {
    let exists = std::fs::metadata(path)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    if !exists {
        let mut b = Journal::builder();
        if let Some(k) = key_groups {
            b = b.key_groups(k);
        }
        return b.open(path).map_err(|e| CliError::journal(path, e));
    }
    let j = open_write(path)?;
    let list = j.entities(None).map_err(|e| CliError::journal(path, e))?;
    if j.committed_offset().0 > 0 || !list.is_empty() {
        return Err(CliError::usage(format!(
            "{}: journal is not empty ({} persistence ids); import needs a new or empty journal",
            path.display(),
            list.len()
        )));
    }
    Ok(j)
}

fn worker(j: &Journal, rx: Receiver<Job>, failed: &Mutex<Option<(usize, String, CliError)>>) {
    let db = j.path().to_path_buf();
    for job in rx {
        if failed.lock().map(|f| f.is_some()).unwrap_or(true) {
            continue; // drain without work once anything failed
        }
        let (line, what, r) = match job {
            Job::Floor(line, pid, to) => {
                let r = j.import_floor_blocking(&pid, to);
                (line, pid.to_string(), r)
            }
            Job::Events(line, pid, first, events) => {
                let r = j.append_blocking(&pid, first, events).map(drop);
                (line, pid.to_string(), r)
            }
            Job::Snapshot(line, rec) => {
                let what = format!("{} snapshot {}", rec.persistence_id, rec.seq);
                (line, what, j.import_snapshot_blocking(rec))
            }
        };
        if let Err(e) = r {
            if let Ok(mut f) = failed.lock() {
                f.get_or_insert((line, what, CliError::journal(&db, e)));
            }
        }
    }
}

/// Reads lines and dispatches jobs; returns what was read.
struct Reader<'a> {
    input: String,
    senders: Vec<SyncSender<Job>>,
    failed: &'a Mutex<Option<(usize, String, CliError)>>,
    batch: Option<Batch>,
    summary: Summary,
    progress: Progress,
}

impl Reader<'_> {
    fn bad(&self, line: usize, what: impl std::fmt::Display) -> CliError {
        CliError::usage(format!("{}:{line}: {what}", self.input))
    }

    fn send(&mut self, pid: &PersistenceId, job: Job) -> CliResult {
        let w = pid.key_group(WORKERS).0 as usize;
        if self.failed.lock().map(|f| f.is_some()).unwrap_or(true) {
            return Err(CliError::usage("stopped"));
        }
        match self.senders.get(w) {
            Some(tx) if tx.send(job).is_ok() => Ok(()),
            _ => Err(CliError::usage("import worker stopped")),
        }
    }

    fn flush_batch(&mut self) -> CliResult {
        if let Some(b) = self.batch.take() {
            self.summary.events += b.events.len() as u64;
            self.progress.inc(b.events.len() as u64);
            let pid = b.pid.clone();
            self.send(&pid, Job::Events(b.line, b.pid, b.first, b.events))?;
        }
        Ok(())
    }

    fn line(&mut self, n: usize, text: &str) -> CliResult {
        if text.trim().is_empty() {
            return Ok(());
        }
        let parsed: ExportLine = serde_json::from_str(text)
            .map_err(|e| self.bad(n, format!("not an export line: {e}")))?;
        let input = self.input.clone();
        let pid_of = |t: &str, id: &str| {
            PersistenceId::parse(t, id).map_err(|e| {
                CliError::usage(format!("{input}:{n}: invalid persistence id {t}|{id}: {e}"))
            })
        };
        match parsed {
            ExportLine::Header(h) => {
                if n != 1 {
                    return Err(self.bad(n, "a header line after the first line"));
                }
                if h.export_version > EXPORT_VERSION {
                    return Err(self.bad(
                        n,
                        format!(
                            "export version {} is newer than this build reads ({EXPORT_VERSION})",
                            h.export_version
                        ),
                    ));
                }
            }
            ExportLine::Entity(e) => {
                self.flush_batch()?;
                let pid = pid_of(&e.entity_type, &e.entity_id)?;
                self.summary.persistence_ids += 1;
                if e.deleted_to > Seq::MAX.0 {
                    return Err(self.bad(
                        n,
                        format!(
                            "deleted_to {} is beyond the largest seq {}",
                            e.deleted_to,
                            Seq::MAX
                        ),
                    ));
                }
                if e.deleted_to > 0 {
                    self.send(&pid.clone(), Job::Floor(n, pid, Seq(e.deleted_to)))?;
                }
            }
            ExportLine::Event(ev) => {
                let pid = pid_of(&ev.entity_type, &ev.entity_id)?;
                if ev.seq == 0 || ev.seq > Seq::MAX.0 {
                    return Err(self.bad(n, format!("seq {} is not in 1..={}", ev.seq, Seq::MAX)));
                }
                let payload = match &ev.payload_base64 {
                    Some(b) => {
                        base64_decode(b).map_err(|e| self.bad(n, format!("payload_base64: {e}")))?
                    }
                    None => rmp_serde::to_vec_named(&ev.payload)
                        .map_err(|e| self.bad(n, format!("payload: {e}")))?,
                };
                let continues = self
                    .batch
                    .as_ref()
                    .is_some_and(|b| b.pid == pid && b.next == ev.seq);
                let full = self
                    .batch
                    .as_ref()
                    .is_some_and(|b| b.events.len() >= BATCH_EVENTS || b.bytes >= BATCH_BYTES);
                if !continues || full {
                    self.flush_batch()?;
                }
                let b = self.batch.get_or_insert_with(|| Batch {
                    line: n,
                    pid,
                    first: Seq(ev.seq),
                    next: ev.seq,
                    bytes: 0,
                    events: Vec::new(),
                });
                b.bytes += payload.len();
                b.next = ev.seq + 1;
                b.events.push(NewEvent::imported(
                    ev.manifest.into(),
                    payload,
                    ev.event_id,
                    ev.timestamp,
                ));
            }
            ExportLine::Snapshot(s) => {
                self.flush_batch()?;
                let pid = pid_of(&s.entity_type, &s.entity_id)?;
                let payload = match &s.payload_base64 {
                    Some(b) => {
                        base64_decode(b).map_err(|e| self.bad(n, format!("payload_base64: {e}")))?
                    }
                    None => rmp_serde::to_vec_named(&s.payload)
                        .map_err(|e| self.bad(n, format!("payload: {e}")))?,
                };
                self.summary.snapshots += 1;
                let rec = SnapshotRecord {
                    persistence_id: pid.clone(),
                    seq: Seq(s.seq),
                    timestamp: s.timestamp,
                    manifest: s.manifest.into(),
                    payload,
                };
                self.send(&pid, Job::Snapshot(n, rec))?;
            }
        }
        Ok(())
    }
}

/// Runs `import`.
pub(crate) fn run(ctx: &mut Ctx<'_>, a: &ImportArgs) -> CliResult {
    let (input, name): (Box<dyn BufRead>, String) =
        match &a.input {
            Some(p) => {
                let f = std::fs::File::open(p).map_err(|e| CliError::io(p.display(), &e))?;
                (Box::new(BufReader::new(f)), p.display().to_string())
            }
            None if std::io::stdin().is_terminal() => return Err(CliError::usage(
                "import reads an export from stdin: redirect a file (< bank.jsonl) or use --input",
            )),
            None => (Box::new(std::io::stdin().lock()), "<stdin>".to_string()),
        };
    let mut lines = input.lines();
    let first = match lines.next() {
        Some(l) => l.map_err(|e| CliError::io(&name, &e))?,
        None => {
            return Err(CliError::usage(format!(
                "{name}: empty input, nothing to import"
            )))
        }
    };
    // A first line that is not an export line is refused before anything is created.
    let key_groups = match serde_json::from_str::<ExportLine>(&first) {
        Ok(ExportLine::Header(h)) => match h.key_groups {
            Some(k) if k == 0 || k > MAX_KEY_GROUPS => {
                return Err(CliError::usage(format!(
                    "{name}:1: key_groups {k} is not in 1..={MAX_KEY_GROUPS}"
                )))
            }
            k => k,
        },
        Ok(_) => None,
        Err(e) => {
            return Err(CliError::usage(format!(
                "{name}:1: not an export line: {e}"
            )))
        }
    };
    let journal = open_target(&a.db, key_groups)?;
    let failed: Mutex<Option<(usize, String, CliError)>> = Mutex::new(None);
    let read = std::thread::scope(|scope| {
        let mut senders = Vec::new();
        for _ in 0..WORKERS {
            let (tx, rx) = sync_channel::<Job>(16);
            senders.push(tx);
            let (j, failed) = (&journal, &failed);
            scope.spawn(move || worker(j, rx, failed));
        }
        let mut reader = Reader {
            input: name.clone(),
            senders,
            failed: &failed,
            batch: None,
            summary: Summary {
                path: a.db.display().to_string(),
                ..Summary::default()
            },
            progress: Progress::new(ctx.progress, None, "events imported"),
        };
        let mut result = reader.line(1, &first);
        if result.is_ok() {
            for (i, l) in lines.enumerate() {
                let n = i + 2;
                result = l
                    .map_err(|e| CliError::io(&name, &e))
                    .and_then(|l| reader.line(n, &l));
                if result.is_err() {
                    break;
                }
            }
        }
        if result.is_ok() {
            result = reader.flush_batch();
        }
        // Dropping the senders ends the workers; the scope joins them.
        reader.senders.clear();
        result.map(|()| reader.summary)
    });
    if let Some((line, what, e)) = failed.into_inner().ok().flatten() {
        return Err(CliError::new(
            e.code,
            format!("{name}:{line}: {what}: {}", e.message),
        ));
    }
    let summary = read?;
    journal
        .flush_blocking(true)
        .map_err(|e| CliError::journal(&a.db, e))?;
    drop(journal);
    if ctx.json {
        return ctx.out.json(&summary);
    }
    ctx.out.line(format!(
        "imported {} events and {} snapshots of {} persistence ids into {}",
        count(summary.events),
        count(summary.snapshots),
        count(summary.persistence_ids),
        summary.path
    ))
}
