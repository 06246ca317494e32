//! Retention: snapshot files older than `retain_days` deleted, off the hot path.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use skynet_core::Shutdown;

/// How deep the sweep looks under the evidence directory: `<incident>/<file>` and
/// `patrol/<patrol>/<round>/<camera>.jpg` (patrol rounds' snapshots), with room to spare.
const MAX_DEPTH: usize = 6;

/// A file the walk found, with its metadata.
type FoundFile = (PathBuf, std::fs::Metadata);

/// Every regular file under `dir` (at most [`MAX_DEPTH`] folders down; links are not
/// followed), with its metadata, and every folder under it, deepest first.
fn walk(dir: &Path) -> std::io::Result<(Vec<FoundFile>, Vec<PathBuf>)> {
    let mut files = Vec::new();
    let mut folders = Vec::new();
    let mut pending = vec![(dir.to_path_buf(), 0usize)];
    let mut first = true;
    while let Some((folder, depth)) = pending.pop() {
        let entries = match std::fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if first => return Err(e),
            Err(_) => continue,
        };
        first = false;
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() && depth < MAX_DEPTH {
                folders.push((entry.path(), depth + 1));
                pending.push((entry.path(), depth + 1));
            } else if kind.is_file()
                && let Ok(meta) = entry.metadata()
            {
                files.push((entry.path(), meta));
            }
        }
    }
    // Deepest first, so a parent is tried after its children are gone.
    folders.sort_by_key(|folder| std::cmp::Reverse(folder.1));
    Ok((files, folders.into_iter().map(|(path, _)| path).collect()))
}

/// Removes the folders that are empty (they fail, harmlessly, while they hold files).
fn remove_empty(folders: &[PathBuf]) {
    for folder in folders {
        let _ = std::fs::remove_dir(folder);
    }
}

/// Deletes files under `dir` (incident folders, and the patrol rounds' folders) last
/// modified more than `retain` ago, and folders left empty. Returns how many files went.
pub fn sweep(dir: &Path, retain: Duration) -> std::io::Result<usize> {
    let Some(cutoff) = SystemTime::now().checked_sub(retain) else {
        return Ok(0);
    };
    let (files, folders) = match walk(dir) {
        Ok(found) => found,
        // Nothing written yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut deleted = 0;
    for (path, meta) in files {
        if meta.modified().is_ok_and(|t| t < cutoff) {
            match std::fs::remove_file(&path) {
                Ok(()) => deleted += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "old evidence could not be deleted")
                }
            }
        } else if let Err(e) = skynet_core::private_fs::restrict(&path) {
            // Evidence written before files were created owner-only (or copied in) is
            // tightened at the sweep at start; restrict names each one it changes.
            tracing::warn!(path = %path.display(), error = %e, "evidence readable by others could not be tightened");
        }
    }
    remove_empty(&folders);
    Ok(deleted)
}

/// Deletes the oldest files under `dir` (incident folders, and the patrol rounds' folders)
/// until what is left takes at most `max_bytes`. Returns how many went.
pub fn enforce_budget(dir: &Path, max_bytes: u64) -> usize {
    let Ok((found, folders)) = walk(dir) else {
        return 0;
    };
    let mut files: Vec<(SystemTime, u64, PathBuf)> = found
        .into_iter()
        .map(|(path, meta)| {
            (
                meta.modified().unwrap_or(std::time::UNIX_EPOCH),
                meta.len(),
                path,
            )
        })
        .collect();
    let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
    files.sort();
    let mut deleted = 0;
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(len);
            deleted += 1;
        }
    }
    if deleted > 0 {
        remove_empty(&folders);
    }
    deleted
}

/// How often the sweeper looks for old files.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Sweeps at start and then hourly on its own thread, until `stop` is triggered.
pub fn spawn_sweeper(
    dir: PathBuf,
    retain: Duration,
    stop: Shutdown,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    spawn_sweeper_with_budget(dir, retain, None, stop)
}

/// As [`spawn_sweeper`], also keeping the directory within `max_bytes` (`[evidence] max_gb`):
/// the oldest files removed first.
pub fn spawn_sweeper_with_budget(
    dir: PathBuf,
    retain: Duration,
    max_bytes: Option<u64>,
    stop: Shutdown,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("evidence-sweep".into())
        .spawn(move || {
            let deleted = metrics::counter!("skynet_evidence_deleted_total");
            while !stop.is_triggered() {
                match sweep(&dir, retain) {
                    Ok(n) => deleted.increment(n as u64),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "evidence retention sweep failed")
                    }
                }
                if let Some(max) = max_bytes {
                    deleted.increment(enforce_budget(&dir, max) as u64);
                }
                let started = std::time::Instant::now();
                while started.elapsed() < SWEEP_EVERY && !stop.is_triggered() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_budget_the_oldest_files_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        for (i, name) in ["a/1.jpg", "a/1.mp4", "b/1.mp4"].iter().enumerate() {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![0u8; 1000]).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(old + Duration::from_secs(i as u64 * 60))
                .unwrap();
        }
        assert_eq!(enforce_budget(dir.path(), 5000), 0);
        assert_eq!(enforce_budget(dir.path(), 1500), 2);
        assert!(!dir.path().join("a").exists());
        assert!(dir.path().join("b/1.mp4").exists());
    }

    /// Patrol snapshots lie four folders down: the sweep and the budget reach them, and the
    /// folders they leave empty go (the evidence directory itself stays).
    #[test]
    fn patrol_snapshots_are_swept_and_counted_in_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let old = SystemTime::now() - Duration::from_secs(3 * 86_400);
        let write = |name: &str, modified: SystemTime| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![0u8; 1000]).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(modified).unwrap();
        };
        write("patrol/north/100/cam0.jpg", old);
        write("patrol/north/100/cam1.jpg", old);
        write("patrol/north/101/cam0.jpg", SystemTime::now());
        write("inc-1/1.jpg", old);
        assert_eq!(sweep(dir.path(), Duration::from_secs(86_400)).unwrap(), 3);
        assert!(!dir.path().join("patrol/north/100").exists());
        assert!(!dir.path().join("inc-1").exists());
        assert!(dir.path().join("patrol/north/101/cam0.jpg").exists());
        assert!(dir.path().exists());

        write(
            "patrol/north/102/cam0.jpg",
            SystemTime::now() + Duration::from_secs(60),
        );
        assert_eq!(enforce_budget(dir.path(), 1500), 1);
        assert!(!dir.path().join("patrol/north/101").exists());
        assert!(dir.path().join("patrol/north/102/cam0.jpg").exists());
    }
}
