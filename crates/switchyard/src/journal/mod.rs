//! A crash journal: an append-only file of the requests an engine accepted
//! and of their ends, so that after a crash none is silently lost.
//!
//! Each accepted request is appended, checksummed, and `fsync`ed before
//! `submit` returns; each end is appended (flushed to the OS, so it outlives
//! a killed process; a power cut may lose it, and the request then runs
//! again: delivery is at least once). Opening a journal reads it back: the
//! requests accepted and never finished are [`Journal::pending`], to
//! re-queue or report. The file is then rewritten with only those, and
//! again whenever finished records pile up, so it stays small.
//!
//! The engine writes it when built with
//! [`EngineBuilder::journal`](crate::EngineBuilder::journal); this module is
//! the file format and its reader and writer, usable alone.
//!
//! # Example
//!
//! ```
//! use switchyard::core::RequestId;
//! use switchyard::journal::{Journal, Outcome};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("requests.journal");
//! let (first, second) = (RequestId::from_u64(1), RequestId::from_u64(2));
//! {
//!     let journal = Journal::open(&path)?;
//!     journal.accept(first, b"first request")?;
//!     journal.accept(second, b"second request")?;
//!     journal.finish(first, Outcome::Succeeded)?;
//!     // ... the process dies here ...
//! }
//! let journal = Journal::open(&path)?;
//! let pending = journal.pending();
//! assert_eq!(pending.len(), 1);
//! assert_eq!(pending[0].id, second);
//! assert_eq!(pending[0].payload, b"second request");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod record;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use switchyard_core::RequestId;

pub use record::{MAGIC, MAX_RECORD_BYTES, Outcome, Record, Records, TornTail, read_records};

/// What goes wrong with a journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// Reading, writing or syncing the file failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with a journal header.
    #[error("not a Switchyard journal (wrong header)")]
    NotAJournal,
    /// A record before the end is damaged; records after it cannot be
    /// trusted to be found, so nothing is replayed.
    #[error("journal damaged at byte {offset}: {reason}")]
    Corrupt {
        /// Where the damaged record starts.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A request too large to journal.
    #[error("a request of {bytes} bytes is too large to journal (at most {MAX_RECORD_BYTES})")]
    TooLarge {
        /// Its size.
        bytes: usize,
    },
}

impl JournalError {
    /// The error for `path`, with its file name in the message.
    fn io(path: &Path, source: std::io::Error) -> Self {
        JournalError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// A request accepted and not finished when the journal was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRequest {
    /// Its id.
    pub id: RequestId,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub accepted_unix_ms: u64,
    /// The request, as it was written.
    pub payload: Vec<u8>,
}

/// What opening a journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Records read.
    pub records: usize,
    /// Requests accepted and finished.
    pub finished: usize,
    /// Requests accepted and not finished.
    pub pending: usize,
    /// An unfinished last record, dropped.
    pub torn_tail: Option<TornTail>,
}

/// Finished records kept before the file is rewritten without them.
const COMPACT_AFTER: u64 = if cfg!(test) { 64 } else { 4096 };

struct State {
    file: File,
    /// Accepted and not finished: id -> (order of acceptance, framed record).
    pending: HashMap<RequestId, (u64, Vec<u8>)>,
    /// What opening found unfinished, in acceptance order.
    replayed: Vec<PendingRequest>,
    next_order: u64,
    /// Records in the file now.
    records: u64,
}

/// An open journal file. Shared by reference between threads.
pub struct Journal {
    path: PathBuf,
    state: Mutex<State>,
    summary: ReplaySummary,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("pending", &self.state.lock().pending.len())
            .finish()
    }
}

impl Journal {
    /// Opens the journal at `path` (creating it if missing), reads back
    /// what it holds, and rewrites it with only the unfinished requests.
    ///
    /// # Errors
    /// I/O errors, a file that is not a journal, or damage before its end
    /// (the file is left as it is, to inspect or move aside).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, JournalError> {
        let path = path.as_ref().to_owned();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(JournalError::io(&path, e)),
        };
        let read = read_records(&bytes)?;
        let mut summary = ReplaySummary {
            records: read.records.len(),
            torn_tail: read.torn_tail,
            ..ReplaySummary::default()
        };
        let mut pending: HashMap<RequestId, (u64, Vec<u8>)> = HashMap::new();
        let mut replayed: Vec<Option<PendingRequest>> = Vec::new();
        let mut highest = None;
        for record in read.records {
            highest = highest.max(Some(record.id()));
            match record {
                Record::Accepted {
                    id,
                    accepted_unix_ms,
                    payload,
                } => {
                    if pending.contains_key(&id) {
                        continue;
                    }
                    let framed = Record::Accepted {
                        id,
                        accepted_unix_ms,
                        payload: payload.clone(),
                    }
                    .encode();
                    pending.insert(id, (replayed.len() as u64, framed));
                    replayed.push(Some(PendingRequest {
                        id,
                        accepted_unix_ms,
                        payload,
                    }));
                }
                Record::Finished { id, .. } => {
                    if let Some((order, _)) = pending.remove(&id) {
                        replayed[order as usize] = None;
                        summary.finished += 1;
                    }
                }
            }
        }
        if let Some(id) = highest {
            RequestId::reserve_through(id);
        }
        let replayed: Vec<PendingRequest> = replayed.into_iter().flatten().collect();
        summary.pending = replayed.len();
        let file = rewrite(&path, &pending)?;
        Ok(Journal {
            state: Mutex::new(State {
                file,
                records: pending.len() as u64,
                next_order: replayed.len() as u64,
                pending,
                replayed,
            }),
            path,
            summary,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What opening the file found.
    pub fn summary(&self) -> &ReplaySummary {
        &self.summary
    }

    /// The requests accepted and not finished when the journal was opened,
    /// in the order they were accepted (those finished since are left out).
    pub fn pending(&self) -> Vec<PendingRequest> {
        let state = self.state.lock();
        state
            .replayed
            .iter()
            .filter(|p| state.pending.contains_key(&p.id))
            .cloned()
            .collect()
    }

    /// Requests accepted and not finished now.
    pub fn outstanding(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// Records `id` as accepted with `payload`, on disk (`fsync`) before
    /// returning. Accepting an id already outstanding does nothing.
    ///
    /// # Errors
    /// I/O errors, or a payload over [`MAX_RECORD_BYTES`].
    pub fn accept(&self, id: RequestId, payload: &[u8]) -> Result<(), JournalError> {
        if payload.len() > MAX_RECORD_BYTES - 17 {
            return Err(JournalError::TooLarge {
                bytes: payload.len(),
            });
        }
        let accepted_unix_ms = unix_ms_now();
        let framed = Record::Accepted {
            id,
            accepted_unix_ms,
            payload: payload.to_vec(),
        }
        .encode();
        let mut state = self.state.lock();
        if state.pending.contains_key(&id) {
            return Ok(());
        }
        let written = state
            .file
            .write_all(&framed)
            .and_then(|()| state.file.sync_data());
        written.map_err(|e| JournalError::io(&self.path, e))?;
        let order = state.next_order;
        state.next_order += 1;
        state.pending.insert(id, (order, framed));
        state.records += 1;
        Ok(())
    }

    /// Records that `id` ended. Ids not outstanding are ignored. Flushed
    /// to the OS, not synced (see the module docs); rewrites the file when
    /// finished records outnumber the outstanding ones and a few thousand.
    ///
    /// # Errors
    /// I/O errors.
    pub fn finish(&self, id: RequestId, outcome: Outcome) -> Result<(), JournalError> {
        let mut state = self.state.lock();
        if state.pending.remove(&id).is_none() {
            return Ok(());
        }
        let framed = Record::Finished { id, outcome }.encode();
        state
            .file
            .write_all(&framed)
            .map_err(|e| JournalError::io(&self.path, e))?;
        state.records += 1;
        let live = state.pending.len() as u64;
        if state.records > COMPACT_AFTER.max(2 * live) {
            state.file = rewrite(&self.path, &state.pending)?;
            state.records = live;
            let pending = &state.pending;
            let keep: Vec<PendingRequest> = state
                .replayed
                .iter()
                .filter(|p| pending.contains_key(&p.id))
                .cloned()
                .collect();
            state.replayed = keep;
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch now (0 on a clock set before it).
pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes `pending` (in acceptance order) to a new file beside `path`,
/// syncs it, renames it over `path`, syncs the folder, and returns the new
/// file open for appending.
fn rewrite(
    path: &Path,
    pending: &HashMap<RequestId, (u64, Vec<u8>)>,
) -> Result<File, JournalError> {
    let io = |e| JournalError::io(path, e);
    let mut records: Vec<&(u64, Vec<u8>)> = pending.values().collect();
    records.sort_by_key(|(order, _)| *order);
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".rewrite");
    let fresh = path.with_file_name(name);
    {
        let mut file = File::create(&fresh).map_err(io)?;
        let mut bytes = MAGIC.to_vec();
        for (_, framed) in records {
            bytes.extend_from_slice(framed);
        }
        file.write_all(&bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&fresh, path).map_err(io)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes the rename itself durable; not every platform can open a
        // folder, and a failure here loses nothing already synced.
        if let Ok(dir) = File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    OpenOptions::new().append(true).open(path).map_err(io)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(n: u64) -> RequestId {
        RequestId::from_u64(n)
    }

    #[test]
    fn unfinished_requests_survive_reopening_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        {
            let j = Journal::open(&path).unwrap();
            assert!(j.pending().is_empty());
            for n in [5, 3, 9] {
                j.accept(id(n), format!("req {n}").as_bytes()).unwrap();
            }
            j.finish(id(3), Outcome::Failed).unwrap();
            j.finish(id(42), Outcome::Succeeded).unwrap();
            assert_eq!(j.outstanding(), 2);
        }
        let j = Journal::open(&path).unwrap();
        let ids: Vec<RequestId> = j.pending().iter().map(|p| p.id).collect();
        assert_eq!(ids, [id(5), id(9)]);
        assert_eq!(j.pending()[1].payload, b"req 9");
        assert_eq!(j.summary().finished, 1);
        assert_eq!(j.summary().pending, 2);
        // Reading it back rewrote it with only the two.
        let read = read_records(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(read.records.len(), 2);
        // Ids handed out from now on are past the journal's.
        assert!(RequestId::next() > id(9));
        // Finishing one after reopening is remembered too.
        j.finish(id(5), Outcome::Succeeded).unwrap();
        assert_eq!(j.pending().len(), 1);
        drop(j);
        assert_eq!(Journal::open(&path).unwrap().pending().len(), 1);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        {
            let j = Journal::open(&path).unwrap();
            j.accept(id(1), b"kept").unwrap();
        }
        let half = Record::Accepted {
            id: id(2),
            accepted_unix_ms: 0,
            payload: b"cut short by a crash".to_vec(),
        }
        .encode();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&half[..half.len() / 2]).unwrap();
        drop(f);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.pending().len(), 1);
        assert_eq!(j.summary().torn_tail.unwrap().offset, 8 + 8 + 17 + 4);
        drop(j);
        // The rewrite dropped it for good.
        assert_eq!(Journal::open(&path).unwrap().summary().torn_tail, None);
    }

    #[test]
    fn damage_is_reported_and_the_file_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        {
            let j = Journal::open(&path).unwrap();
            j.accept(id(1), b"one").unwrap();
            j.accept(id(2), b"two").unwrap();
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Journal::open(&path),
            Err(JournalError::Corrupt { .. })
        ));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(matches!(
            Journal::open(&path),
            Err(JournalError::NotAJournal)
        ));
    }

    #[test]
    fn finished_records_are_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let j = Journal::open(&path).unwrap();
        j.accept(id(1), b"stays").unwrap();
        for n in 2..2 + COMPACT_AFTER {
            j.accept(id(n), b"x").unwrap_or_else(|e| panic!("{e}"));
            j.finish(id(n), Outcome::Succeeded).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len < 4096, "{len} bytes after compaction");
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.pending().len(), 1);
        assert_eq!(j.pending()[0].payload, b"stays");
    }

    #[test]
    fn oversized_payloads_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path().join("j")).unwrap();
        let big = vec![0u8; MAX_RECORD_BYTES];
        assert!(matches!(
            j.accept(id(1), &big),
            Err(JournalError::TooLarge { .. })
        ));
        assert_eq!(j.outstanding(), 0);
    }
}
