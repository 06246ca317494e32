//! Event clips (issue 25 part 1): an incident on an RTSP camera (the tests' own server) gets
//! an MP4 clip cut from the camera's encoded stream, with pre- and post-roll; a camera with
//! privacy masks gets its clip blurred in the masks.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{RtspCamera, eventually, free_port, stored_events};
use skynet::{RunOptions, pipeline};
use skynet_core::{BBox, Detection, EvidenceRef, Incident, Shutdown};
use skynet_detect::{DetectError, Detector, ImageView};

const PRE_S: f64 = 3.0;
const POST_S: f64 = 3.0;

/// A person in the walkway zone from `from` to `to` after the detector's first call (wall
/// clock: the camera runs in real time), nobody otherwise.
struct PersonFor {
    first: Arc<Mutex<Option<Instant>>>,
    from: Duration,
    to: Duration,
}

impl Detector for PersonFor {
    fn detect(&mut self, image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        let first = *self.first.lock().unwrap().get_or_insert_with(Instant::now);
        let t = first.elapsed();
        if t < self.from || t >= self.to {
            return Ok(Vec::new());
        }
        // Feet at (0.5, 0.47): inside common::WALKWAY.
        let (w, h) = (image.width as f32, image.height as f32);
        Ok(vec![Detection {
            label: "person".into(),
            score: 0.9,
            bbox: BBox::new(0.48 * w, 0.3 * h, 0.52 * w, 0.47 * h),
            track: None,
        }])
    }
}

/// The config: `cameras` (id, uri, extra keys), clips on.
fn config(dir: &Path, cameras: &[(&str, &str, &str)]) -> String {
    let base = common::vtest_config(dir, "unused", common::WALKWAY, 1);
    let head = base.split("\n[[cameras]]").next().unwrap();
    let head = head
        .replace("close_after_s = 120", "close_after_s = 8\nupdate_every_s = 1")
        .replace(
            "[evidence]\n",
            &format!(
                "[evidence]\nclips = {{ enabled = true, pre_s = {PRE_S}, post_s = {POST_S}, max_s = 40 }}\n"
            ),
        );
    let mut text = head.to_string();
    for (id, uri, extra) in cameras {
        text.push_str(&format!(
            r#"
[[cameras]]
id = "{id}"
owner = "city_management"
uri = "{uri}"
motion = {{ enabled = false }}
{extra}

  [[cameras.zones]]
  name = "zone"
  polygon = {walkway}

  [[cameras.rules]]
  name = "zone-rule"
  kind = "zone_intrusion"
  zone = "zone"
  labels = ["person"]
  min_frames = 3
  cooldown_s = 2.0
"#,
            walkway = common::WALKWAY
        ));
    }
    text
}

fn clips_of(dir: &Path) -> Vec<(Incident, EvidenceRef)> {
    if !dir.join("outbox.sqlite").exists() {
        return Vec::new();
    }
    stored_events(dir)
        .into_iter()
        .flat_map(|e| {
            let incident = e.data;
            incident
                .evidence
                .iter()
                .filter(|ev| ev.kind == "clip")
                .cloned()
                .map(|ev| (incident.clone(), ev))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Runs the pipeline with the detector until every camera in `cameras` has a clip listed.
fn run_until_clips(dir: &Path, text: &str, cameras: &[&str]) {
    let config = common::pipeline_config(dir, text);
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let (watch_dir, wanted) = (
        dir.to_path_buf(),
        cameras.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
    );
    let watcher = std::thread::spawn(move || {
        let done = eventually(Duration::from_secs(150), || {
            let clips = clips_of(&watch_dir);
            wanted
                .iter()
                .all(|c| clips.iter().any(|(_, ev)| ev.camera.as_str() == c))
        });
        stop.trigger();
        done
    });
    let first = Arc::new(Mutex::new(None));
    let detectors: Vec<Box<dyn Detector>> = (0..2)
        .map(|_| {
            Box::new(PersonFor {
                first: Arc::clone(&first),
                from: Duration::from_secs(8),
                to: Duration::from_secs(11),
            }) as Box<dyn Detector>
        })
        .collect();
    pipeline::run(
        &config,
        RunOptions {
            shutdown,
            detectors: Some(detectors),
            ..RunOptions::default()
        },
    )
    .unwrap();
    if !watcher.join().unwrap() {
        let revisions: Vec<String> = if dir.join("outbox.sqlite").exists() {
            stored_events(dir)
                .into_iter()
                .map(|e| {
                    let i = e.data;
                    let kinds: Vec<&str> = i.evidence.iter().map(|e| e.kind.as_str()).collect();
                    format!(
                        "{} {} {:?} {} {:?}",
                        i.id, i.revision, i.change, i.camera, kinds
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        let files: Vec<String> = std::fs::read_dir(dir.join("evidence"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .map(|f| f.path().display().to_string())
            .collect();
        panic!(
            "no clip listed for every camera of {cameras:?} within 150 s; revisions {revisions:#?}, files {files:#?}"
        );
    }
}

fn file_of(url: &str) -> PathBuf {
    PathBuf::from(url.strip_prefix("file://").expect("a file:// url"))
}

/// The MP4's duration from its `mvhd` box, in seconds.
fn mp4_duration(bytes: &[u8]) -> f64 {
    let at = bytes
        .windows(4)
        .position(|w| w == b"mvhd")
        .expect("an mvhd box");
    let body = &bytes[at + 4..];
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64;
    let be64 = |b: &[u8]| u64::from_be_bytes(b[..8].try_into().unwrap());
    let (timescale, duration) = if body[0] == 1 {
        (be32(&body[20..]), be64(&body[24..]))
    } else {
        (be32(&body[12..]), be32(&body[16..]))
    };
    duration as f64 / timescale as f64
}

#[test]
fn an_incident_on_an_rtsp_camera_gets_a_clip_with_pre_and_post_roll_and_a_masked_one_is_blurred() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let _camera = RtspCamera::start(port);
    // The same stream twice: one camera plain, one with a privacy mask over the left half.
    let mask = "privacy_masks = [[[0.05, 0.05], [0.45, 0.05], [0.45, 0.95], [0.05, 0.95]]]";
    // In cells of their own: one incident each.
    let masked = format!("grid = \"G-0101\"\n{mask}");
    let uri = format!("rtsp://127.0.0.1:{port}/cam");
    let text = config(
        dir.path(),
        &[
            ("cam-clip", &uri, "grid = \"G-0102\""),
            ("cam-masked", &uri, &masked),
        ],
    );
    run_until_clips(dir.path(), &text, &["cam-clip", "cam-masked"]);

    let clips = clips_of(dir.path());
    let mut frames_of = Vec::new();
    for camera in ["cam-clip", "cam-masked"] {
        let (incident, clip) = clips
            .iter()
            .find(|(_, ev)| ev.camera.as_str() == camera)
            .unwrap();
        // Named by the revision that opened the incident, listed on a later one.
        assert!(
            clip.url.ends_with(&format!("/{}/1.mp4", incident.id)),
            "{}",
            clip.url
        );
        assert!(incident.revision > 1);
        let path = file_of(&clip.url);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(clip.sha256, skynet_snapshot::sha256_hex(&bytes));
        let (start, end) = (clip.start.unwrap(), clip.end.unwrap());
        assert_eq!(clip.frame_at, start);
        // The first frame is at least pre_s - 1 s before the incident was first seen...
        let before = (incident.first_seen - start).num_milliseconds() as f64 / 1000.0;
        assert!(
            before >= PRE_S - 1.0,
            "{camera}: the clip starts {before:.2} s before first_seen"
        );
        // ...and it runs post_s past the last evidence (within a frame or two).
        let after = (end - incident.last_seen).num_milliseconds() as f64 / 1000.0;
        assert!(
            after >= POST_S - 0.5,
            "{camera}: the clip ends {after:.2} s after last_seen"
        );
        let duration = mp4_duration(&bytes);
        assert!(
            (PRE_S + POST_S - 1.0..=41.0).contains(&duration),
            "{camera}: MP4 duration {duration:.2} s"
        );
        assert!((duration - clip.duration_s.unwrap()).abs() < 1.0);
        let frames = common::decode_grey(&path, clip.width, clip.height);
        assert!(
            frames.len() as f64 >= (PRE_S + POST_S - 1.0) * 10.0 - 1.0,
            "{camera}: {} frames decoded",
            frames.len()
        );
        frames_of.push((clip.width, frames));
    }
    // The mask's area: its detail blurred away in every frame of the masked clip, and there
    // in the plain one's.
    let inside = (0.1, 0.1, 0.4, 0.9);
    let outside = (0.55, 0.1, 0.95, 0.9);
    let mean = |(w, frames): &(u32, Vec<Vec<u8>>), region| {
        frames
            .iter()
            .map(|f| common::tile_variance(f, *w, region))
            .sum::<f64>()
            / frames.len() as f64
    };
    let (plain, masked) = (mean(&frames_of[0], inside), mean(&frames_of[1], inside));
    assert!(plain > 50.0, "the plain clip's area has detail: {plain:.1}");
    assert!(
        masked < plain * 0.2,
        "local variance in the mask {plain:.1} -> {masked:.1}: not blurred"
    );
    // Outside the mask the masked clip keeps its detail (re-encoded, not blurred).
    let (plain_out, masked_out) = (mean(&frames_of[0], outside), mean(&frames_of[1], outside));
    assert!(
        masked_out > plain_out * 0.5,
        "outside the mask {plain_out:.1} -> {masked_out:.1}"
    );
}

#[test]
fn a_file_camera_cuts_its_clip_from_the_file_itself() {
    let dir = tempfile::tempdir().unwrap();
    let video = skynet::paths::data_dir().join("media/vtest.avi");
    // Paced like a live camera, so the incident outlives the clip's post-roll.
    let text = config(
        dir.path(),
        &[(
            "cam-file",
            video.to_str().unwrap(),
            "grid = \"G-0102\"\nrealtime = true",
        )],
    );
    run_until_clips(dir.path(), &text, &["cam-file"]);
    let clips = clips_of(dir.path());
    let (incident, clip) = &clips[0];
    let path = file_of(&clip.url);
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(clip.sha256, skynet_snapshot::sha256_hex(&bytes));
    let before = (incident.first_seen - clip.start.unwrap()).num_milliseconds() as f64 / 1000.0;
    assert!(
        before >= PRE_S - 1.0,
        "the clip starts {before:.2} s before first_seen"
    );
    let duration = mp4_duration(&bytes);
    assert!(
        duration >= PRE_S + POST_S - 1.0,
        "MP4 duration {duration:.2} s"
    );
    // Transcoded to H.264 from the file's DivX 3, at the file's own size.
    assert_eq!((clip.width, clip.height), (768, 576));
    let frames = common::decode_grey(&path, clip.width, clip.height);
    assert!(frames.len() as f64 >= (PRE_S + POST_S - 1.0) * 10.0 - 1.0);
}

#[test]
fn bad_clip_settings_name_their_key_and_clips_are_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, text).unwrap();
        skynet::PipelineConfig::load(&path)
    };
    let plain = common::vtest_config(dir.path(), "cam", common::WALKWAY, 10);
    let config = load(&plain).unwrap();
    assert!(!config.evidence.clips.enabled);
    assert!(config.cameras[0].clips.is_none());
    let node = plain.replace(
        "[evidence]\n",
        "[evidence]\nclips = { enabled = true, post_s = -1 }\n",
    );
    let e = load(&node).unwrap_err().to_string();
    assert!(e.contains("clips.post_s"), "{e}");
    let budget = plain.replace("[evidence]\n", "[evidence]\nmax_gb = 0\n");
    let e = load(&budget).unwrap_err().to_string();
    assert!(e.contains("max_gb"), "{e}");
    let camera = plain.replace(
        "max_frames = 10\n",
        "max_frames = 10\nclips = { enabled = true, pre_s = 5, max_s = 2 }\n",
    );
    let e = load(&camera).unwrap_err().to_string();
    assert!(e.contains("clips.max_s"), "{e}");
    let ok = plain.replace(
        "max_frames = 10\n",
        "max_frames = 10\nclips = { enabled = true, pre_s = 2 }\n",
    );
    let config = load(&ok).unwrap();
    let clips = config.cameras[0].clips.unwrap();
    assert!(clips.enabled);
    assert_eq!(clips.pre, Duration::from_secs(2));
    assert_eq!(clips.post, Duration::from_secs(10));
}
