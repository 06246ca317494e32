//! `skynet eval` on a clip made here with exactly known events: the figures come out exact.
//!
//! The clip (10 frames a second, 26 s) is black but for a grey square at known frames; the
//! detector of this test finds the square and scores it by its brightness, so a bright
//! square is a sure person and a dim one a doubtful one. The labels say where the real
//! events are: one bright, one dim, one that nothing shows (a miss whatever the config);
//! a bright square that no label covers is a false alarm.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use skynet_core::{BBox, Detection};
use skynet_detect::{DetectError, Detector, ImageView};

const FPS: u32 = 10;
const FRAMES: u32 = 260;
/// (first frame, last frame, grey level) of each square.
const SQUARES: [(u32, u32, u8); 3] = [(20, 49, 230), (100, 129, 180), (170, 199, 230)];

/// Writes the clip as Motion JPEG in AVI (GStreamer's own encoder and muxer).
fn make_clip(dir: &Path) -> PathBuf {
    let frames = dir.join("frames");
    std::fs::create_dir_all(&frames).unwrap();
    for n in 0..FRAMES {
        let mut image = image::RgbImage::new(160, 120);
        if let Some(&(_, _, grey)) = SQUARES.iter().find(|(a, b, _)| (*a..=*b).contains(&n)) {
            for y in 40..80 {
                for x in 60..100 {
                    image.put_pixel(x, y, image::Rgb([grey, grey, grey]));
                }
            }
        }
        image.save(frames.join(format!("f{n:04}.png"))).unwrap();
    }
    let clip = dir.join("clip.avi");
    let status = Command::new("gst-launch-1.0")
        .arg("-q")
        .arg("multifilesrc")
        .arg(format!("location={}/f%04d.png", frames.display()))
        .arg("index=0")
        .arg(format!("caps=image/png,framerate={FPS}/1"))
        .args([
            "!",
            "pngdec",
            "!",
            "videoconvert",
            "!",
            "jpegenc",
            "quality=95",
        ])
        .args(["!", "avimux", "!", "filesink"])
        .arg(format!("location={}", clip.display()))
        .status()
        .expect("gst-launch-1.0 runs");
    assert!(status.success(), "the clip was made");
    clip
}

/// Finds the grey square: a "person" scored by its mean brightness (230 → 0.9, 180 → 0.71).
struct SquareFinder;

impl Detector for SquareFinder {
    fn detect(&mut self, image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        let (mut x1, mut y1, mut x2, mut y2) = (u32::MAX, u32::MAX, 0, 0);
        let (mut sum, mut count) = (0u64, 0u64);
        for y in 0..image.height {
            let row = &image.data[y as usize * image.stride..];
            for x in 0..image.width {
                let p = &row[x as usize * 3..x as usize * 3 + 3];
                let luma = (u32::from(p[0]) + u32::from(p[1]) + u32::from(p[2])) / 3;
                if luma > 40 {
                    (x1, y1, x2, y2) = (x1.min(x), y1.min(y), x2.max(x), y2.max(y));
                    sum += u64::from(luma);
                    count += 1;
                }
            }
        }
        if count < 20 {
            return Ok(Vec::new());
        }
        let score = (sum as f32 / count as f32 / 255.0).min(1.0);
        Ok(vec![Detection::new(
            "person",
            score,
            BBox::new(x1 as f32, y1 as f32, x2 as f32 + 1.0, y2 as f32 + 1.0),
        )])
    }
}

fn write_config(dir: &Path, clip: &Path, threshold: f64) -> PathBuf {
    let esc = |p: &Path| p.display().to_string().replace('\\', "/");
    let text = format!(
        r#"
[node]
name = "eval-node"

[grids]
file = "{grids}"

[detect]
model = "{model}"
threshold = {threshold}
workers = 1

[risk]
half_life_s = 1
close_after_s = 3
# Evidence after a close opens a new incident (a reopened one is one incident, as operators
# see it).
cooldown_s = 1
open_at = "IV"
levels = {{ iv = 0.25, iii = 0.5, ii = 0.7, i = 0.85 }}

[outbox]
path = "{dir}/outbox.sqlite"

[[sinks]]
kind = "jsonl"
path = "{dir}/incidents.jsonl"

[[cameras]]
id = "cam-eval"
owner = "city_management"
uri = "{clip}"
grid = "G-0102"
start_at = "2026-12-01T08:00:00Z"

  [[cameras.zones]]
  name = "yard"
  polygon = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]

  [[cameras.rules]]
  name = "yard-closed"
  kind = "zone_intrusion"
  zone = "yard"
  labels = ["person"]
  min_score = 0.1
  min_frames = 3
  cooldown_s = 0.5
  category = "restricted_area_intrusion"
  weight = 1.0
"#,
        grids = esc(&common::repo().join("configs/demo-grids.geojson")),
        model = esc(&common::manifest_path()),
        dir = esc(dir),
        clip = esc(clip),
    );
    let path = dir.join("eval.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const LABELS: &str = r#"{"camera": "cam-eval", "category": "restricted_area_intrusion", "start_s": 2.0, "end_s": 4.9}
# the dim one: a real event the detector is unsure of
{"camera": "cam-eval", "category": "restricted_area_intrusion", "start_s": 10.0, "end_s": 12.9}
{"grid": "G-0102", "category": "restricted_area_intrusion", "start": "2026-12-01T08:00:24Z", "end": "2026-12-01T08:00:25Z"}
"#;

fn args(dir: &Path, config: PathBuf) -> skynet::eval_cli::EvalArgs {
    let labels = dir.join("labels.jsonl");
    std::fs::write(&labels, LABELS).unwrap();
    skynet::eval_cli::EvalArgs {
        config,
        labels,
        objects: Vec::new(),
        sweep: Vec::new(),
        set: Vec::new(),
        out: dir.join("out"),
        jobs: 1,
        max_false_per_hour: 1.0,
    }
}

fn evaluate(args: &skynet::eval_cli::EvalArgs) -> skynet_eval::score::Report {
    let _ = common::runtime();
    skynet::eval_cli::evaluate_with(args, Some(vec![Box::new(SquareFinder)]))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn a_clip_with_known_events_gives_exact_precision_recall_and_delays() {
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path());

    // Threshold 0.8: the bright squares are found, the dim one is not.
    let strict = evaluate(&args(dir.path(), write_config(dir.path(), &clip, 0.8)));
    let o = &strict.overall;
    assert_eq!((o.labels, o.incidents), (3, 2), "{strict:#?}");
    assert_eq!(
        (o.matched_labels, o.matched_incidents, o.false_alarms),
        (1, 1, 1)
    );
    assert!((o.precision - 0.5).abs() < 1e-9);
    assert!((o.recall - 1.0 / 3.0).abs() < 1e-9);
    assert!((o.f1 - 0.4).abs() < 1e-9);
    // The first observation comes on the fourth frame with the square in view (its track
    // confirmed, then min_frames = 3 in a row in the zone): 0.3 s after the labelled start.
    assert_eq!(o.delay_median_s, Some(0.3));
    assert_eq!(o.delay_worst_s, Some(0.3));
    // 25.9 s of footage (first frame to last), one false alarm.
    assert!((o.footage_hours - 25.9 / 3600.0).abs() < 1e-9, "{o:?}");
    assert!((o.false_alarms_per_hour - 3600.0 / 25.9).abs() < 1e-6);
    assert_eq!(strict.misses.len(), 2);
    assert_eq!(strict.false_alarms.len(), 1);

    // Threshold 0.6: the dim one is found too (the tracker starts tracks from 0.6).
    let lenient = evaluate(&args(dir.path(), write_config(dir.path(), &clip, 0.6)));
    let o = &lenient.overall;
    assert_eq!((o.labels, o.incidents), (3, 3), "{lenient:#?}");
    assert_eq!((o.matched_labels, o.false_alarms), (2, 1));
    assert!((o.recall - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(o.delay_median_s, Some(0.3));

    // A camera that plays its file in real time (as a demo does) is evaluated unpaced, with
    // the same incidents.
    let paced = write_config(dir.path(), &clip, 0.6);
    let text = std::fs::read_to_string(&paced)
        .unwrap()
        .replace("start_at =", "realtime = true\nstart_at =");
    std::fs::write(&paced, text).unwrap();
    assert_eq!(evaluate(&args(dir.path(), paced)), lenient);

    // The report files are written by the CLI path.
    assert!(
        skynet_eval::report::markdown(&lenient).contains("restricted_area_intrusion"),
        "the Markdown names the category"
    );
}

#[test]
fn malformed_labels_and_unknown_cameras_are_errors_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("absent.avi");
    let config = write_config(dir.path(), &clip, 0.5);
    let mut a = args(dir.path(), config.clone());
    std::fs::write(
        &a.labels,
        "{\"camera\": \"cam-eval\", \"category\": \"x\", \"start_s\": 1, \"end_s\": 2}\n{\"camera\": \"cam-eval\", \"start_s\": 1}\n",
    )
    .unwrap();
    let e = format!(
        "{:#}",
        skynet::eval_cli::evaluate_with(&a, None).unwrap_err()
    );
    assert!(e.contains("labels.jsonl:2"), "{e}");

    std::fs::write(
        &a.labels,
        "{\"camera\": \"cam-nowhere\", \"category\": \"x\", \"start_s\": 1, \"end_s\": 2}\n",
    )
    .unwrap();
    let e = format!(
        "{:#}",
        skynet::eval_cli::evaluate_with(&a, None).unwrap_err()
    );
    assert!(
        e.contains("labels.jsonl:1") && e.contains("cam-nowhere"),
        "{e}"
    );

    a.set = vec!["detect.nonexistent.key=1".into()];
    assert!(skynet::eval_cli::evaluate_with(&a, None).is_err());
}

/// The real model on vtest.avi's first frames, through the binary: a sweep over three
/// thresholds gives three rows, each equal to a single evaluation with that threshold.
#[test]
fn a_sweep_of_three_thresholds_agrees_with_three_single_evaluations() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::vtest_config(dir.path(), "cam-sweep", common::WALKWAY, 60).replacen(
        "max_frames",
        "start_at = \"2026-12-01T08:00:00Z\"\nmax_frames",
        1,
    );
    let config = dir.path().join("sweep.toml");
    std::fs::write(&config, text).unwrap();
    let labels = dir.path().join("labels.jsonl");
    std::fs::write(
        &labels,
        "{\"camera\": \"cam-sweep\", \"category\": \"restricted_area_intrusion\", \"start_s\": 0.0, \"end_s\": 2.0}\n\
         {\"camera\": \"cam-sweep\", \"category\": \"restricted_area_intrusion\", \"start_s\": 30.0, \"end_s\": 40.0}\n",
    )
    .unwrap();
    let eval = |extra: &[&str], out: &Path| {
        let output = Command::new(common::skynet_bin())
            .arg("eval")
            .arg("--config")
            .arg(&config)
            .arg("--labels")
            .arg(&labels)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "skynet eval {extra:?}: {}",
            common::text(&output.stderr)
        );
        common::text(&output.stdout)
    };
    let sweep_dir = dir.path().join("sweep");
    let printed = eval(
        &["--sweep", "detect.threshold=0.3:0.7:0.2", "--jobs", "2"],
        &sweep_dir,
    );
    assert!(printed.contains("recommended"), "{printed}");
    let sweep: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sweep_dir.join("sweep.json")).unwrap()).unwrap();
    let rows = sweep["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{sweep:#}");
    assert!(sweep["criterion"].as_str().is_some(), "{sweep:#}");
    for name in ["sweep.md", "pr_curve.svg", "pr_curve.png"] {
        assert!(sweep_dir.join(name).is_file(), "{name} is written");
    }
    for (i, threshold) in ["0.3", "0.5", "0.7"].iter().enumerate() {
        let single = dir.path().join(format!("single-{i}"));
        eval(
            &["--set", &format!("detect.threshold={threshold}")],
            &single,
        );
        let report: skynet_eval::score::Report =
            serde_json::from_slice(&std::fs::read(single.join("report.json")).unwrap()).unwrap();
        let row: skynet_eval::sweep::SweepRow = serde_json::from_value(rows[i].clone()).unwrap();
        assert_eq!(row.figures, Some(report.overall), "threshold {threshold}");
    }
}

/// `--objects`: boxes written from `skynet detect`'s own output on the same frames give AP 1
/// for `person` (frames numbered from 1, boxes in the clip's pixels, as gt.txt has them).
#[test]
fn object_labels_from_the_detectors_own_boxes_give_an_ap_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::vtest_config(dir.path(), "cam-objects", common::WALKWAY, 12);
    let config = dir.path().join("objects.toml");
    std::fs::write(&config, text).unwrap();
    let detected = Command::new(common::skynet_bin())
        .arg("detect")
        .arg("--model")
        .arg(common::manifest_path())
        .args(["--threshold", "0.4", "--max-frames", "12"])
        .arg(common::media("vtest.avi"))
        .output()
        .unwrap();
    assert!(
        detected.status.success(),
        "{}",
        common::text(&detected.stderr)
    );
    let mut gt = String::new();
    let mut people = 0;
    for line in common::text(&detected.stdout).lines() {
        let frame: serde_json::Value = serde_json::from_str(line).unwrap();
        let number = frame["frame"].as_u64().unwrap() + 1;
        for d in frame["detections"].as_array().unwrap() {
            if d["label"] != "person" {
                continue;
            }
            let b: Vec<f64> = serde_json::from_value(d["box"].clone()).unwrap();
            people += 1;
            gt.push_str(&format!(
                "{number},{people},{},{},{},{},1,1,1\n",
                b[0],
                b[1],
                b[2] - b[0],
                b[3] - b[1]
            ));
        }
    }
    assert!(people > 12, "people in the first frames: {people}");
    let gt_path = dir.path().join("gt.txt");
    std::fs::write(&gt_path, gt).unwrap();
    let labels = dir.path().join("labels.jsonl");
    std::fs::write(
        &labels,
        "{\"camera\": \"cam-objects\", \"category\": \"restricted_area_intrusion\", \"start_s\": 0.0, \"end_s\": 1.0}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let status = Command::new(common::skynet_bin())
        .arg("eval")
        .arg("--config")
        .arg(&config)
        .arg("--labels")
        .arg(&labels)
        .args(["--set", "detect.threshold=0.4", "--objects"])
        .arg(format!("cam-objects={}", gt_path.display()))
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let report: skynet_eval::score::Report =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let person = &report.objects.expect("object figures").per_class["person"];
    assert_eq!(person.ground_truth, people);
    assert!((person.ap - 1.0).abs() < 1e-9, "{person:?}");
    assert!((person.recall - 1.0).abs() < 1e-9 && (person.precision - 1.0).abs() < 1e-9);
}

/// A config without file cameras that records its observations is evaluated on its
/// recording: configs/city.toml's recorded day (the replay fixtures), through the binary.
#[test]
fn a_recorded_day_is_evaluated_when_there_are_no_file_cameras() {
    let dir = tempfile::tempdir().unwrap();
    let mut day = String::new();
    for name in ["gas-and-person.jsonl", "smoke-and-crowd.jsonl"] {
        day.push_str(
            &std::fs::read_to_string(common::repo().join("tests/fixtures/replay").join(name))
                .unwrap(),
        );
    }
    std::fs::write(dir.path().join("observations.jsonl"), day).unwrap();
    let labels = dir.path().join("labels.jsonl");
    std::fs::write(
        &labels,
        "{\"grid\": \"G-0201\", \"category\": \"gas_leak\", \"start\": \"2026-11-27T08:59:00Z\", \"end\": \"2026-11-27T09:03:00Z\"}\n\
         {\"grid\": \"G-0201\", \"category\": \"fire\", \"start\": \"2026-11-27T10:00:00Z\", \"end\": \"2026-11-27T10:01:00Z\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let output = Command::new(common::skynet_bin())
        .arg("eval")
        .arg("--config")
        .arg(common::repo().join("configs/city.toml"))
        .arg("--labels")
        .arg(&labels)
        .arg("--out")
        .arg(&out)
        .env("SKYNET_STATE_DIR", dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", common::text(&output.stderr));
    let report: skynet_eval::score::Report =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let gas = &report.per_category["gas_leak"];
    assert_eq!((gas.labels, gas.matched_labels), (1, 1), "{report:#?}");
    assert_eq!(report.overall.labels, 2);
    assert_eq!(report.misses.len(), 1, "the fire nobody recorded is a miss");
    assert!(report.overall.incidents >= 2, "{report:#?}");
}

/// A sweep checks the labels and `--objects` before any point runs: a bad labels line (or
/// a class outside the model's labels in gt.txt) exits 2, as a single evaluation does,
/// with no point started.
#[test]
fn a_sweep_with_bad_labels_exits_2_before_any_point() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &dir.path().join("absent.avi"), 0.5);
    let a = args(dir.path(), config.clone());
    let sweep = |labels: &Path, extra: &[&str]| {
        Command::new(common::skynet_bin())
            .arg("eval")
            .arg("--config")
            .arg(&config)
            .arg("--labels")
            .arg(labels)
            .arg("--out")
            .arg(&a.out)
            .args(["--sweep", "detect.threshold=0.3:0.5:0.2"])
            .args(extra)
            .output()
            .unwrap()
    };
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"camera\": \"cam-eval\", \"category\": \"x\", \"start_s\": 1, \"end_s\": 2}\n{\"camera\": \"cam-eval\", \"start_s\": 1}\n",
    )
    .unwrap();
    let output = sweep(&bad, &[]);
    let stderr = common::text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.jsonl:2"), "{stderr}");
    assert!(!a.out.join("points").exists());

    let gt = dir.path().join("gt.txt");
    std::fs::write(&gt, "1,1,0,0,10,10,1,1,1\n1,2,0,0,10,10,1,1000,1\n").unwrap();
    let objects = format!("cam-eval={}", gt.display());
    let output = sweep(&a.labels, &["--objects", &objects]);
    let stderr = common::text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("gt.txt:2") && stderr.contains("class 1000"),
        "{stderr}"
    );
    assert!(!a.out.join("points").exists());
}
