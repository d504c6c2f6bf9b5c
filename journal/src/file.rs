//! The journal's file: what is at a path (nothing, an empty file, an interrupted creation, a
//! redb file, or something that is not a journal), and creating a journal there so that a crash
//! at any moment leaves what was there or a complete journal, and two creators never both get
//! one.

use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::JournalBuilder;
use crate::error::{JournalError, Result};
use crate::journal::{guard, init_or_check, open_error};

/// The first bytes of every redb file (written last when redb initialises one).
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// The first bytes of a file a journal is being written into in place; replaced by
/// [`REDB_MAGIC`] as the last step, so a file that still starts with them is an interrupted
/// creation and nothing else.
const CREATING_MAGIC: [u8; 9] = [b's', b't', b'l', b'n', 0x1A, 0x0A, 0xA9, 0x0D, 0x00];

/// Why a device, FIFO or socket at a journal's path is not a journal.
const NOT_REGULAR: &str = "not a regular file (a device, FIFO or socket)";

/// What is at a journal's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// No file.
    Missing,
    /// An empty regular file.
    Empty,
    /// A journal whose creation in place was interrupted (a crash, a full disk): nothing was
    /// ever committed to it, and a writable open creates it again.
    Interrupted,
    /// A file that starts as a redb file does.
    Redb,
}

impl FileKind {
    /// What is at `path`: a directory, a device, FIFO or socket, or a file that is neither empty
    /// nor redb's is [`JournalError::NotAJournal`], and never replaced.
    ///
    /// # Errors
    /// [`JournalError::NotAJournal`], or [`JournalError::Io`] if the path cannot be examined.
    pub(crate) fn probe(path: &Path) -> Result<FileKind> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(FileKind::Missing),
            Err(e) => return Err(io_at(path, e)),
        };
        if meta.is_dir() {
            return Err(not_a_journal(path, "is a directory"));
        }
        // A device, FIFO or socket reports length 0; it must never be taken for an empty file
        // (creating a journal would write into it, `/dev/null` included).
        if !meta.is_file() {
            return Err(not_a_journal(path, NOT_REGULAR));
        }
        if meta.len() == 0 {
            return Ok(FileKind::Empty);
        }
        let mut f = fs::File::open(path).map_err(|e| io_at(path, e))?;
        let first_look = kind_of(read_head(path, &mut f)?);
        if first_look == Some(FileKind::Redb) {
            return Ok(FileKind::Redb);
        }
        // Not redb's (yet). A creator writes under the file's exclusive lock: look again under
        // a shared one, so that a head half-written at this moment is not taken for a foreign
        // file, and a creation in progress is not taken for an interrupted one.
        let kind = match f.try_lock_shared() {
            Ok(()) => {
                f.seek(SeekFrom::Start(0)).map_err(|e| io_at(path, e))?;
                kind_of(read_head(path, &mut f)?)
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked {
                    path: path.to_path_buf(),
                })
            }
            // No locks on this file system: the first look is all there is.
            Err(fs::TryLockError::Error(_)) => first_look,
        };
        kind.ok_or_else(|| not_a_journal(path, "not a redb file"))
    }

    /// [`Self::probe`], requiring a journal (for opens that never create one).
    ///
    /// # Errors
    /// As [`Self::probe`], and [`JournalError::NotAJournal`] for anything but a redb file.
    pub(crate) fn require_redb(path: &Path) -> Result<()> {
        Self::probe(path)?.must_be_redb(path)
    }

    /// `Ok` for a redb file, [`JournalError::NotAJournal`] saying what `path` is otherwise.
    pub(crate) fn must_be_redb(self, path: &Path) -> Result<()> {
        let detail = match self {
            FileKind::Redb => return Ok(()),
            FileKind::Missing => "no such file",
            FileKind::Empty => "empty file",
            FileKind::Interrupted => {
                "a journal whose creation was interrupted; a writable open creates it again"
            }
        };
        Err(not_a_journal(path, detail))
    }
}

/// Up to the first 9 bytes of a file, and how many there are (fewer: the file is shorter).
fn read_head(path: &Path, f: &mut fs::File) -> Result<([u8; 9], usize)> {
    let mut head = [0u8; 9];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io_at(path, e)),
        }
    }
    Ok((head, n))
}

/// The kind of a regular file from its first bytes, `None` if it is not a journal. A file of
/// 5 to 8 bytes that begin [`CREATING_MAGIC`] is an interrupted creation too (its first step
/// cut short).
fn kind_of((head, n): ([u8; 9], usize)) -> Option<FileKind> {
    if n == 0 {
        // Emptied since it was looked at (a creator's first step undone, say).
        Some(FileKind::Empty)
    } else if n == REDB_MAGIC.len() && head == REDB_MAGIC {
        Some(FileKind::Redb)
    } else if n >= MIN_INTERRUPTED && head[..n] == CREATING_MAGIC[..n] {
        Some(FileKind::Interrupted)
    } else {
        None
    }
}

/// The shortest prefix of [`CREATING_MAGIC`] taken for an interrupted creation: through its
/// 0x1A, so that a foreign file holding just `stln` is never written over.
const MIN_INTERRUPTED: usize = 5;

fn not_a_journal(path: &Path, detail: &str) -> JournalError {
    JournalError::NotAJournal {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

fn io_at(path: &Path, e: std::io::Error) -> JournalError {
    JournalError::Io(format!("{}: {e}", path.display()))
}

/// Makes the file at `path`, found to be of `kind`, a journal created with `cfg`; returns once
/// a complete journal is there (or another creator's, which the caller then opens like any
/// journal). A journal is built in memory first; then:
///
/// - **no file**: it is written under a temporary name in the same directory, synced, and
///   hard-linked into place, which fails if another creator linked first (then that one is
///   used). A crash leaves no file, or a stray temporary one.
/// - **an empty file or an interrupted creation**: it is written into that file, in place, so
///   the file keeps its mode, owner and other hard links, under an exclusive lock on the file
///   (a concurrent creator gets [`JournalError::Locked`], or the finished journal). The file
///   first gets [`CREATING_MAGIC`] and is synced, then the rest, synced, and last redb's magic
///   bytes, synced: a crash leaves an empty file or an interrupted creation, which the next
///   writable open creates again, or a complete journal.
///
/// # Errors
/// [`JournalError::Locked`], [`JournalError::NotAJournal`] if something else took the path
/// meanwhile, [`JournalError::Io`].
pub(crate) fn create(path: &Path, kind: FileKind, cfg: &JournalBuilder) -> Result<()> {
    match kind {
        FileKind::Redb => Ok(()),
        FileKind::Missing => create_new(path, cfg),
        FileKind::Empty | FileKind::Interrupted => create_in_place(path, cfg),
    }
}

/// The bytes of a new, empty journal file created with `cfg`.
fn new_journal_bytes(path: &Path, cfg: &JournalBuilder) -> Result<Vec<u8>> {
    let file = MemoryFile::default();
    let mut b = redb::Builder::new();
    b.set_concurrency_mode(redb::ConcurrencyMode::ExclusiveWriter);
    let db = guard(path, || {
        b.create_with_backend(file.clone())
            .map_err(|e| open_error(path, e))
    })?;
    guard(path, || init_or_check(&db, path, cfg))?;
    drop(db);
    let bytes = std::mem::take(&mut *file.bytes());
    Ok(bytes)
}

fn create_new(path: &Path, cfg: &JournalBuilder) -> Result<()> {
    // Where a dangling symbolic link leads, so the link keeps pointing at the journal.
    let path = follow_links(path).map_err(|e| io_at(path, e))?;
    let path = path.as_path();
    let io = |e| io_at(path, e);
    let dir = parent_dir(path);
    let bytes = new_journal_bytes(path, cfg)?;
    // A name of its own, not derived from the journal's: a journal name near the file system's
    // 255-byte limit must still be creatable.
    let tmp = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    remove_stale_temporaries(&dir);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            // Another creator won the race: its file is used (or refused) by the caller.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
        sync_dir(&dir)
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// How often a creator tries the file's lock ([`LOCK_PAUSE`] apart) before it reports
/// `Locked`: a probe holds its shared lock for a read of 9 bytes.
pub(crate) const LOCK_TRIES: u32 = 20;

/// The pause between two tries of a lock a probe may hold for a moment.
pub(crate) const LOCK_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// The name of a journal's temporary creation file, before a random suffix.
const TEMP_PREFIX: &str = ".stateline-creating-";

/// How old a temporary creation file must be to be taken for one a killed creator left (a
/// creation takes milliseconds).
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes the temporary creation files in `dir` that creators killed mid-creation left
/// behind (best effort: what cannot be listed or removed stays).
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(TEMP_PREFIX)) else {
            continue;
        };
        if suffix.len() != 32 || !suffix.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let stale = entry
            .metadata()
            .ok()
            .filter(fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_AFTER);
        if stale {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn create_in_place(path: &Path, cfg: &JournalBuilder) -> Result<()> {
    let io = |e| io_at(path, e);
    let bytes = new_journal_bytes(path, cfg)?;
    let mut f = match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        // Removed meanwhile: the caller looks again.
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(not_a_journal(path, NOT_REGULAR));
    }
    // Another creator is writing it, or a finished journal is open (it is then opened like
    // any journal), or another open's probe holds a shared lock for a moment: that one is
    // waited out, briefly.
    let mut tries = 0;
    loop {
        match f.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) => {
                f.seek(SeekFrom::Start(0)).map_err(io)?;
                if kind_of(read_head(path, &mut f)?) == Some(FileKind::Redb) {
                    return Ok(());
                }
                tries += 1;
                if tries == LOCK_TRIES {
                    return Err(JournalError::Locked {
                        path: path.to_path_buf(),
                    });
                }
                std::thread::sleep(LOCK_PAUSE);
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    // Under the lock, look again: another creator may have finished, or someone written
    // something else.
    if f.metadata().map_err(io)?.len() > 0 {
        f.seek(SeekFrom::Start(0)).map_err(io)?;
        match kind_of(read_head(path, &mut f)?) {
            Some(FileKind::Redb) => return Ok(()),
            Some(_) => f.set_len(0).map_err(io)?,
            None => return Err(not_a_journal(path, "not a redb file")),
        }
    }
    let mut write_at = |offset: u64, data: &[u8]| -> std::io::Result<()> {
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(data)?;
        f.sync_all()
    };
    let magic = REDB_MAGIC.len();
    write_at(0, &CREATING_MAGIC).map_err(io)?;
    write_at(magic as u64, &bytes[magic..]).map_err(io)?;
    write_at(0, &bytes[..magic]).map_err(io)?;
    // The file may have been created just before (`touch`) without its directory entry
    // being durable: acknowledged events must not vanish with it.
    let at = follow_links(path).map_err(io)?;
    sync_dir(&parent_dir(&at))?;
    // Closing the file releases the lock.
    Ok(())
}

/// The directory `path` is in.
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes the entries of directory `dir` durable.
fn sync_dir(dir: &Path) -> Result<()> {
    match fs::File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // Some file systems cannot sync a directory, and a directory without read permission
        // cannot be opened to sync it: there is nothing more to do there.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::InvalidInput | ErrorKind::Unsupported | ErrorKind::PermissionDenied
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(io_at(dir, e)),
    }
}

/// Where `path` leads through symbolic links (the last one may point at a missing file).
fn follow_links(path: &Path) -> std::io::Result<PathBuf> {
    let mut at = path.to_path_buf();
    // As the kernel's own limit on links followed in one lookup (40, the last one included).
    for _ in 0..=40 {
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&at)?;
                at = match at.parent() {
                    Some(dir) => dir.join(target),
                    None => target,
                };
            }
            _ => return Ok(at),
        }
    }
    Err(std::io::Error::other("too many levels of symbolic links"))
}

/// Copies the bytes of `bytes` at `offset` into `out` (an in-memory backend's read).
pub(crate) fn read_from(bytes: &[u8], offset: u64, out: &mut [u8]) -> std::io::Result<()> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    match bytes.get(start..start.saturating_add(out.len())) {
        Some(src) => {
            out.copy_from_slice(src);
            Ok(())
        }
        None => Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "read past the end of the storage",
        )),
    }
}

/// A redb storage backend in memory whose bytes can be taken afterwards.
#[derive(Clone, Debug, Default)]
struct MemoryFile {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl MemoryFile {
    fn bytes(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl redb::StorageBackend for MemoryFile {
    fn len(&self) -> std::result::Result<u64, std::io::Error> {
        Ok(self.bytes().len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::result::Result<(), std::io::Error> {
        read_from(&self.bytes(), offset, out)
    }

    fn set_len(&self, len: u64) -> std::result::Result<(), std::io::Error> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        self.bytes().resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> std::result::Result<(), std::io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::result::Result<(), std::io::Error> {
        let mut bytes = self.bytes();
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = start + data.len();
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        bytes[start..end].copy_from_slice(data);
        Ok(())
    }
}
