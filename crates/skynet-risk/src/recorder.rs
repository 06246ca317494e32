//! `[risk] record`: every observation the engine takes, appended to a JSON Lines file for
//! `skynet replay`.

use std::path::{Path, PathBuf};

/// Appends observations to a JSON Lines file. A failing file stops the recording (logged
/// and counted), never the pipeline.
pub struct ObservationRecorder {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    recorded: metrics::Counter,
}

impl ObservationRecorder {
    pub fn open(path: &Path) -> Option<Self> {
        // Observations name people's whereabouts: the file is owner only.
        let file = skynet_core::private_fs::create_private_parent(path)
            .and_then(|()| skynet_core::private_fs::restrict(path))
            .and_then(|_| {
                skynet_core::private_fs::private_open_options()
                    .create(true)
                    .append(true)
                    .open(path)
            });
        match file {
            Ok(file) => {
                tracing::info!(path = %path.display(), "recording observations");
                Some(Self {
                    path: path.to_path_buf(),
                    out: std::io::BufWriter::new(file),
                    recorded: metrics::counter!("skynet_observations_recorded_total"),
                })
            }
            Err(e) => {
                metrics::counter!("skynet_observations_record_errors_total").increment(1);
                tracing::error!(path = %path.display(), error = %e, "cannot record observations; going on without");
                None
            }
        }
    }

    /// The file recorded to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn write(&mut self, observation: &skynet_core::Observation) -> std::io::Result<()> {
        use std::io::Write;
        serde_json::to_writer(&mut self.out, observation)?;
        self.out.write_all(b"\n")?;
        self.recorded.increment(1);
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        use std::io::Write;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use skynet_core::DeviceId;

    use super::*;

    #[test]
    fn a_recording_that_cannot_be_written_is_dropped_and_the_rest_goes_on() {
        // A directory where the file should be: opening fails, nothing panics.
        let dir = tempfile::tempdir().unwrap();
        assert!(ObservationRecorder::open(dir.path()).is_none());
        // A writable one records each observation on its own line.
        let path = dir.path().join("sub/observations.jsonl");
        let mut recorder = ObservationRecorder::open(&path).expect("creates its directory");
        let observation = skynet_core::DeviceFault {
            camera: DeviceId::new("c"),
            source: skynet_core::SourceKind::Camera,
            grid: skynet_core::GridId::new("g"),
            owner: skynet_core::OwnerKind::Police,
            category: "camera_offline".into(),
            since: DateTime::<Utc>::UNIX_EPOCH,
            at: DateTime::<Utc>::UNIX_EPOCH,
        }
        .observation();
        recorder.write(&observation).unwrap();
        recorder.write(&observation).unwrap();
        recorder.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<skynet_core::Observation> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, vec![observation.clone(), observation]);
    }
}
