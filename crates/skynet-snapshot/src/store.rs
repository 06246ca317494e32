//! Snapshots on disk: JPEG encoding, the SHA-256 the incident references, and the file
//! written atomically as `<dir>/<incident id>/<revision>.jpg`.

use std::io::Write;
use std::path::{Path, PathBuf};

use image::RgbImage;
use sha2::{Digest, Sha256};

use crate::SnapshotError;
use crate::settings::{SnapshotConfig, with_slash};

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A written snapshot: where it is and what the incident references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub path: PathBuf,
    pub url: String,
    pub sha256: String,
}

/// Encodes snapshots and writes them under the evidence directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
    url_base: String,
    quality: u8,
}

impl SnapshotStore {
    pub fn new(config: &SnapshotConfig) -> Self {
        Self {
            dir: config.dir.clone(),
            url_base: with_slash(config.url_base.clone()),
            quality: config.jpeg_quality.clamp(1, 100),
        }
    }

    pub fn encode(&self, image: &RgbImage) -> Result<Vec<u8>, SnapshotError> {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, self.quality)
            .encode_image(image)?;
        Ok(jpeg)
    }

    /// Writes `<dir>/<incident>/<revision>.jpg` atomically: a temporary file beside it,
    /// synced, then renamed, so a reader (or a crash) never sees half a file.
    pub fn write(
        &self,
        incident: &str,
        revision: u32,
        jpeg: &[u8],
    ) -> Result<Stored, SnapshotError> {
        // The id becomes a directory name: nothing that could climb out of `dir`.
        let safe = !incident.is_empty()
            && incident.len() <= 128
            && !incident.starts_with('.')
            && incident
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !safe {
            return Err(SnapshotError::BadIncidentId(incident.to_string()));
        }
        self.write_at(&format!("{incident}/{revision}.jpg"), jpeg)
    }

    /// Writes `jpeg` at `relative` under the evidence directory, atomically (a patrol's
    /// `patrol/<patrol>/<round>/<camera>.jpg`). Each part of `relative` must be a plain
    /// name: no `..`, no leading `.`, no absolute path.
    pub fn write_at(&self, relative: &str, jpeg: &[u8]) -> Result<Stored, SnapshotError> {
        let parts: Vec<&str> = relative.split('/').collect();
        let safe = !relative.is_empty()
            && relative.len() <= 512
            && parts.iter().all(|part| {
                !part.is_empty()
                    && !part.starts_with('.')
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        let Some((name, folders)) = parts.split_last().filter(|_| safe) else {
            return Err(SnapshotError::BadIncidentId(relative.to_string()));
        };
        let folder = folders
            .iter()
            .fold(self.dir.clone(), |dir, part| dir.join(part));
        let path = folder.join(name);
        let tmp = folder.join(format!(".{name}.{}.tmp", std::process::id()));
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Write { path, source }
        };
        // Evidence shows people: owner-only files in owner-only folders, whatever the umask.
        skynet_core::private_fs::create_private_dir(&folder).map_err(io(&folder))?;
        let written = skynet_core::private_fs::private_open_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(jpeg)?;
                f.sync_all()
            });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, &path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&path)(e));
        }
        Ok(Stored {
            url: format!("{}{relative}", self.url_base),
            sha256: sha256_hex(jpeg),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use image::Rgb;
    use skynet_core::ConfigContext;

    use super::*;
    use crate::settings::SnapshotSettings;
    use crate::sweeper::sweep;

    #[test]
    fn a_snapshot_is_written_atomically_with_its_hash_and_url() {
        let dir = tempfile::tempdir().unwrap();
        let config = SnapshotSettings {
            dir: Some(dir.path().display().to_string()),
            url_base: Some("https://skynet.example/evidence".into()),
            ..SnapshotSettings::default()
        }
        .validate(&ConfigContext::new(Path::new("x.toml")))
        .unwrap();
        let store = SnapshotStore::new(&config);
        let image = RgbImage::from_pixel(32, 24, Rgb([10, 200, 30]));
        let jpeg = store.encode(&image).unwrap();
        let stored = store.write("inc-1", 3, &jpeg).unwrap();
        assert_eq!(stored.path, dir.path().join("inc-1/3.jpg"));
        assert_eq!(stored.url, "https://skynet.example/evidence/inc-1/3.jpg");
        assert_eq!(
            stored.sha256,
            sha256_hex(&std::fs::read(&stored.path).unwrap())
        );
        assert_eq!(stored.sha256.len(), 64);
        // Only the file: no temporary left behind.
        assert_eq!(
            std::fs::read_dir(dir.path().join("inc-1")).unwrap().count(),
            1
        );
        assert!(matches!(
            store.write("../up", 1, &jpeg),
            Err(SnapshotError::BadIncidentId(_))
        ));
        // The default url is the directory's.
        let local = SnapshotSettings {
            dir: Some(dir.path().display().to_string()),
            ..SnapshotSettings::default()
        }
        .validate(&ConfigContext::new(Path::new("x.toml")))
        .unwrap();
        assert!(local.url_base.starts_with("file:///") && local.url_base.ends_with('/'));

        // Retention: a young file stays, everything goes with no retention at all.
        assert_eq!(sweep(dir.path(), Duration::from_secs(3600)).unwrap(), 0);
        assert_eq!(sweep(dir.path(), Duration::ZERO).unwrap(), 1);
        assert!(!dir.path().join("inc-1").exists());
        assert_eq!(sweep(&dir.path().join("none"), Duration::ZERO).unwrap(), 0);
    }
}
