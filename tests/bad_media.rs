//! Damaged files: a truncated file and one with random bytes in the middle are decoded as far
//! as they go; nothing crashes, and the other camera is not disturbed.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use skynet::{RunOptions, pipeline};
use skynet_core::Detection;
use skynet_detect::{DetectError, Detector, ImageView};

struct CountingDetector(Arc<AtomicU64>);

impl Detector for CountingDetector {
    fn detect(&mut self, _image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(Vec::new())
    }
}

fn camera(id: &str, uri: &Path) -> String {
    format!(
        "\n[[cameras]]\nid = \"{id}\"\nowner = \"city_management\"\nuri = \"{}\"\ngrid = \"G-0102\"\nmotion = {{ enabled = false }}\nreconnect = {{ initial_backoff_s = 0.05, max_backoff_s = 0.1 }}\n",
        uri.display()
    )
}

#[test]
fn truncated_and_garbled_files_are_survived() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read(common::media("vtest.avi")).unwrap();
    let truncated = dir.path().join("truncated.avi");
    std::fs::write(&truncated, &original[..original.len() * 2 / 5]).unwrap();
    let garbled = dir.path().join("garbled.avi");
    let mut bytes = original.clone();
    let middle = bytes.len() / 2;
    let mut seed = 0x2545_f491_u32;
    for b in &mut bytes[middle..middle + 256 * 1024] {
        // xorshift: the same garbage on every run.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        *b = seed as u8;
    }
    std::fs::write(&garbled, &bytes).unwrap();
    let not_video = dir.path().join("not-video.avi");
    std::fs::write(&not_video, b"this is not a video").unwrap();

    // The file camera of the base config first (intact), then the damaged ones.
    let base = common::vtest_config(dir.path(), "cam-intact", common::NOBODY, 100);
    let text = format!(
        "{base}{}{}{}",
        camera("cam-truncated", &truncated),
        camera("cam-garbled", &garbled),
        camera("cam-not-video", &not_video)
    );
    let config = common::pipeline_config(dir.path(), &text);
    let calls = Arc::new(AtomicU64::new(0));
    let detectors: Vec<Box<dyn Detector>> = vec![Box::new(CountingDetector(Arc::clone(&calls)))];
    let summary = pipeline::run(
        &config,
        RunOptions {
            detectors: Some(detectors),
            ..RunOptions::default()
        },
    )
    .expect("damaged files do not stop the pipeline");
    // 100 intact frames, most of the truncated file (795 * 2/5 = 318 frames at most), and
    // the garbled file around its damage; only the file that is no video at all is given up.
    assert!(summary.frames_decoded >= 100 + 250 + 600, "{summary:?}");
    assert_eq!(
        summary.failed_cameras,
        vec![skynet_core::DeviceId::new("cam-not-video")]
    );
    assert_eq!(calls.load(Ordering::Relaxed), summary.frames_analysed);
}
