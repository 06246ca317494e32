//! Retention: snapshot files older than `retain_days` deleted, off the hot path.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use skynet_core::Shutdown;

/// Deletes files under `dir` (one level of incident folders) last modified more than
/// `retain` ago, and folders left empty. Returns how many files went.
pub fn sweep(dir: &Path, retain: Duration) -> std::io::Result<usize> {
    let Some(cutoff) = SystemTime::now().checked_sub(retain) else {
        return Ok(0);
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        // Nothing written yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut deleted = 0;
    for folder in entries.flatten() {
        if !folder.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(folder.path()) else {
            continue;
        };
        for file in files.flatten() {
            let old = file
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if !file.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            if old {
                match std::fs::remove_file(file.path()) {
                    Ok(()) => deleted += 1,
                    Err(e) => {
                        tracing::warn!(path = %file.path().display(), error = %e, "old evidence could not be deleted")
                    }
                }
            } else if let Err(e) = skynet_core::private_fs::restrict(&file.path()) {
                // Evidence written before files were created owner-only (or copied in) is
                // tightened at the sweep at start; restrict names each one it changes.
                tracing::warn!(path = %file.path().display(), error = %e, "evidence readable by others could not be tightened");
            }
        }
        // Fails, harmlessly, while the folder still has files.
        let _ = std::fs::remove_dir(folder.path());
    }
    Ok(deleted)
}

/// Deletes the oldest files under `dir` (one level of incident folders) until what is left
/// takes at most `max_bytes`. Returns how many went.
pub fn enforce_budget(dir: &Path, max_bytes: u64) -> usize {
    let Ok(folders) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut files = Vec::new();
    for folder in folders.flatten() {
        let Ok(entries) = std::fs::read_dir(folder.path()) else {
            continue;
        };
        for file in entries.flatten() {
            if let Ok(meta) = file.metadata()
                && meta.is_file()
            {
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                files.push((modified, meta.len(), file.path()));
            }
        }
    }
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
            if let Some(parent) = path.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
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
}
