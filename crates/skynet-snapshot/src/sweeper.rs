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

/// How often the sweeper looks for old files.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Sweeps at start and then hourly on its own thread, until `stop` is triggered.
pub fn spawn_sweeper(
    dir: PathBuf,
    retain: Duration,
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
                let started = std::time::Instant::now();
                while started.elapsed() < SWEEP_EVERY && !stop.is_triggered() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })
}
