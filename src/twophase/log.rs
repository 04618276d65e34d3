//! The decision log of two-phase commit: one line per event, appended to
//! `general.two_phase_log`. `commit ID` is written and fsynced after every shard prepared
//! transaction `ID` and before any is committed, so a crash between the two phases leaves
//! the decision on disk; `done ID` follows once every shard committed (no fsync: a lost
//! `done` only makes recovery look again). A transaction with no `commit` line is rolled back
//! by recovery (presumed abort). The file is rewritten, atomically, to drop what is settled.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::TwoPhaseError;

/// The open decision log.
pub struct Log {
    path: PathBuf,
    /// The file, appended to; the lock also orders appends with a rewrite.
    file: parking_lot::Mutex<std::fs::File>,
}

/// What the log says about the transactions in it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Decisions {
    /// Decided to commit and not known to be finished on every shard.
    pub committed: HashSet<String>,
    /// Lines in the file (to decide when a rewrite is worth it).
    pub lines: usize,
}

impl Log {
    /// Opens (creating) the log at `path`.
    pub fn open(path: &Path) -> Result<Log, TwoPhaseError> {
        let file = open_append(path)?;
        Ok(Log {
            path: path.to_path_buf(),
            file: parking_lot::Mutex::new(file),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records, durably, that transaction `id` commits. Blocks for the fsync: call it off
    /// the async workers (`spawn_blocking`).
    pub fn commit(&self, id: &str) -> Result<(), TwoPhaseError> {
        let mut file = self.file.lock();
        let io = |e: std::io::Error| TwoPhaseError::Log {
            path: self.path.clone(),
            error: e.to_string(),
        };
        let before = file.metadata().map_err(io)?.len();
        let written = file
            .write_all(format!("commit {id}\n").as_bytes())
            .and_then(|_| file.sync_data());
        if let Err(e) = written {
            // Not decided: take back what may have been written, so no later line is
            // glued to a torn one.
            let _ = file.set_len(before);
            return Err(io(e));
        }
        Ok(())
    }

    /// Records that transaction `id` committed on every shard (not fsynced).
    pub fn done(&self, id: &str) -> Result<(), TwoPhaseError> {
        let mut file = self.file.lock();
        file.write_all(format!("done {id}\n").as_bytes())
            .map_err(|e| TwoPhaseError::Log {
                path: self.path.clone(),
                error: e.to_string(),
            })
    }

    /// Reads the decisions now in the file.
    pub fn decisions(&self) -> Result<Decisions, TwoPhaseError> {
        let _appends = self.file.lock();
        read(&self.path)
    }

    /// Rewrites the file without the transactions in `settled` and those marked done, so
    /// that it holds only undecided commits. Atomic: a temporary file, fsynced, renamed
    /// over the log, with appends held off meanwhile.
    pub fn compact(&self, settled: &HashSet<String>) -> Result<(), TwoPhaseError> {
        let mut file = self.file.lock();
        let io = |e: std::io::Error| TwoPhaseError::Log {
            path: self.path.clone(),
            error: e.to_string(),
        };
        let now = read(&self.path)?;
        let mut keep: Vec<&String> = now.committed.difference(settled).collect();
        keep.sort();
        let tmp = self.path.with_extension("rewrite");
        {
            let mut out = std::fs::File::create(&tmp).map_err(io)?;
            for id in keep {
                out.write_all(format!("commit {id}\n").as_bytes())
                    .map_err(io)?;
            }
            out.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io)?;
        }
        *file = open_append(&self.path)?;
        Ok(())
    }
}

/// Opens the log for appending, first cutting off a line a crash left unfinished (its
/// fsync never returned, so nothing was committed on its word).
fn open_append(path: &Path) -> Result<std::fs::File, TwoPhaseError> {
    let io = |e: std::io::Error| TwoPhaseError::Log {
        path: path.to_path_buf(),
        error: e.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(io)?;
    let text = std::fs::read(path).map_err(io)?;
    let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if whole < text.len() {
        file.set_len(whole as u64).map_err(io)?;
        file.sync_data().map_err(io)?;
    }
    Ok(file)
}

/// Parses the log at `path` (a missing file holds no decisions). A line cut short by a
/// crash is ignored: its fsync never returned, so no shard was committed on its word.
pub fn read(path: &Path) -> Result<Decisions, TwoPhaseError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Decisions::default()),
        Err(e) => {
            return Err(TwoPhaseError::Log {
                path: path.to_path_buf(),
                error: e.to_string(),
            })
        }
    };
    let mut d = Decisions::default();
    let mut done = HashSet::new();
    // Only whole lines count: the last one may be torn.
    let whole = match text.iter().rposition(|b| *b == b'\n') {
        Some(end) => text.get(..=end).unwrap_or_default(),
        None => &[],
    };
    for line in String::from_utf8_lossy(whole).lines() {
        d.lines += 1;
        match line.split_once(' ') {
            Some(("commit", id)) if !id.is_empty() => {
                d.committed.insert(id.to_string());
            }
            Some(("done", id)) => {
                done.insert(id.to_string());
            }
            _ => {
                tracing::warn!(path = %path.display(), line, "two_phase_log: line not understood, ignored")
            }
        }
    }
    d.committed.retain(|id| !done.contains(id));
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_survive_reopen_torn_lines_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("2pc.log");
        let log = Log::open(&path).unwrap();
        log.commit("a-1").unwrap();
        log.commit("a-2").unwrap();
        log.done("a-1").unwrap();
        log.commit("a-3").unwrap();
        drop(log);
        // A crash in the middle of a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"commit a-4").unwrap();
        let log = Log::open(&path).unwrap();
        let d = log.decisions().unwrap();
        let want: HashSet<String> = ["a-2", "a-3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(d.committed, want);
        assert_eq!(d.lines, 4);
        log.compact(&["a-3".to_string()].into_iter().collect())
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "commit a-2\n");
        log.commit("a-5").unwrap();
        let d = read(&path).unwrap();
        assert_eq!(d.committed.len(), 2);
        assert!(read(&dir.path().join("missing"))
            .unwrap()
            .committed
            .is_empty());
    }
}
