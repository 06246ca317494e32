//! `skynet eval`: the config's file cameras through the same pipeline code as `skynet run`,
//! at full speed and in event time, and the incidents scored against labelled events.
//!
//! A run here is `skynet run --until-eof` with what reaches outside taken away: no sinks, no
//! console, no metrics listener, no MQTT, no case system, no cluster, no evidence files, no
//! recording, and a scratch outbox in `--out`. Live cameras, and looping files standing in for
//! them, are left out (there is no labelled truth for them); `realtime` files play unpaced,
//! so the same clip and config always give the same incidents. A config without file
//! cameras that records observations (`[risk] record`) is evaluated on its
//! recording instead, through `skynet replay`'s engine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use skynet_eval::labels;
use skynet_eval::objects::{DetectedBox, FrameDetections};
use skynet_eval::score::{EvalIncident, Footage, Report};

use crate::config::PipelineConfig;
use crate::pipeline::{self, RunOptions, Services};

/// `skynet eval` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    #[arg(long, short)]
    pub config: PathBuf,
    /// Labelled events, JSON Lines: `{"camera": ID, "category": C, "start_s": S, "end_s": E}`
    /// (or `grid` for `camera`, `start`/`end` in RFC 3339 for the offsets).
    #[arg(long)]
    pub labels: PathBuf,
    /// Object-level labels of a camera, MOTChallenge `gt.txt` (`CAMERA=PATH`; repeatable):
    /// per-class precision, recall and AP of its detections at IoU 0.5.
    #[arg(long, value_name = "CAMERA=GT.TXT")]
    pub objects: Vec<String>,
    /// Sweep a numeric config key over `FROM:TO:STEP` (repeatable: several make a grid),
    /// e.g. `detect.threshold=0.2:0.6:0.1`, `cameras.0.rules.0.min_frames=1:5:1`.
    #[arg(long, value_name = "KEY=FROM:TO:STEP")]
    pub sweep: Vec<String>,
    /// Set a config key before the run (repeatable), e.g. `risk.levels.iii=0.45`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where report.json and report.md (and for a sweep sweep.json, sweep.md and the plots)
    /// go.
    #[arg(long, default_value = "eval")]
    pub out: PathBuf,
    /// Sweep points run at once, each in a process of its own.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: u32,
    /// A sweep's recommended operating point: the highest recall at no more than this many
    /// false alarms per hour of footage.
    #[arg(long, default_value_t = 1.0)]
    pub max_false_per_hour: f64,
}

/// Runs `skynet eval`: one evaluation, or a sweep of them.
pub fn run(args: &EvalArgs) -> Result<ExitCode> {
    if !args.sweep.is_empty() {
        return crate::sweep_cli::run_sweep(args);
    }
    let report = evaluate(args)?;
    skynet_eval::report::write(&args.out, &report)
        .with_context(|| format!("writing the report to {}", args.out.display()))?;
    let o = &report.overall;
    println!(
        "precision {:.3}  recall {:.3}  F1 {:.3}  false alarms/h {:.2}  ({} label(s), {} incident(s), {} of footage)",
        o.precision,
        o.recall,
        o.f1,
        o.false_alarms_per_hour,
        o.labels,
        o.incidents,
        skynet_eval::report::footage(o.footage_hours)
    );
    eprintln!(
        "report: {} and {}",
        args.out.join("report.json").display(),
        args.out.join("report.md").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The config as `--set` leaves it: parsed from the file's text with each key changed, so
/// errors still name the file, line and column.
pub fn load_with_overrides(path: &Path, set: &[String]) -> Result<(PipelineConfig, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config {}", path.display()))?;
    let overrides = set
        .iter()
        .map(|s| skynet_eval::sweep::parse_set(s))
        .collect::<Result<Vec<_>, _>>()?;
    let text = skynet_eval::sweep::apply_overrides(&text, &overrides)
        .with_context(|| format!("applying --set to {}", path.display()))?;
    let config = PipelineConfig::parse(path, &text)?;
    Ok((config, text))
}

/// Runs one evaluation and scores it; writes nothing but its scratch outbox under `--out`.
pub fn evaluate(args: &EvalArgs) -> Result<Report> {
    evaluate_with(args, None)
}

/// [`evaluate`], with these detectors instead of the configured model's (tests).
pub fn evaluate_with(
    args: &EvalArgs,
    detectors: Option<Vec<Box<dyn skynet_detect::Detector>>>,
) -> Result<Report> {
    let (config, text) = load_with_overrides(&args.config, &args.set)?;
    let labels = labels::parse_labels(&args.labels)?;
    let cameras: Vec<(String, String)> = config
        .cameras
        .iter()
        .map(|c| (c.id.to_string(), c.grid.to_string()))
        .collect();
    labels::check_targets(&args.labels, &labels, &cameras)?;
    let objects = object_labels(args, &config)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // `realtime` and `loop` files are played once, unpaced: decided on the config as the
    // evaluation runs it.
    let eval_config = for_evaluation(&args.config, &text, &args.out)?;
    let run = if !eval_config.cameras.is_empty() {
        run_cameras(&eval_config, detectors)?
    } else if let Some(recording) = config.record_observations.clone() {
        replay_recording(&config, &recording)?
    } else {
        anyhow::bail!(
            "{} has no file cameras and records no observations: nothing to evaluate (live \
             cameras have no labelled truth; point a camera at a recorded clip)",
            args.config.display()
        );
    };
    let resolved = labels::resolve(&args.labels, &labels, &run.footage)?;
    let mut report = skynet_eval::score::score(&run.incidents, &resolved, &run.footage);
    if !objects.is_empty() {
        report.objects = Some(score_objects(&config, &objects)?);
    }
    Ok(report)
}

/// What a run gave: its incidents and each camera's footage.
struct EvalRun {
    incidents: Vec<EvalIncident>,
    footage: Vec<Footage>,
}

/// The config of an evaluation run: file cameras unpaced and once, nothing reaching
/// outside, a scratch outbox.
fn for_evaluation(path: &Path, text: &str, out: &Path) -> Result<PipelineConfig> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("reading {}", path.display()))?;
    let mut looping = Vec::new();
    if let Some(cameras) = doc
        .get_mut("cameras")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    {
        for camera in cameras.iter_mut() {
            // A looping file never ends: it stands in for a live camera (the city demo's),
            // and is left out with them.
            if camera.get("loop").and_then(toml_edit::Item::as_bool) == Some(true)
                && let Some(id) = camera.get("id").and_then(toml_edit::Item::as_str)
            {
                looping.push(id.to_string());
            }
            for key in ["realtime", "loop"] {
                if camera.contains_key(key) {
                    camera[key] = toml_edit::value(false);
                }
            }
        }
    }
    let mut config = PipelineConfig::parse(path, &doc.to_string())?;
    let left_out =
        |c: &crate::config::CameraSpec| c.is_live() || looping.iter().any(|id| id == c.id.as_str());
    let live: Vec<String> = config
        .cameras
        .iter()
        .filter(|c| left_out(c))
        .map(|c| c.id.to_string())
        .collect();
    if !live.is_empty() {
        tracing::warn!(cameras = %live.join(", "), "live cameras and looping files are left out of the evaluation");
    }
    config.cameras.retain(|c| !left_out(c));
    config.sinks.clear();
    config.api = None;
    config.metrics_listen = None;
    config.metrics_auth_token = None;
    config.mqtt = None;
    config.cases = None;
    config.cluster = skynet_cluster::ClusterConfig::default();
    config.evidence.enabled = false;
    config.record_observations = None;
    let outbox = out.join(".eval-outbox.sqlite");
    remove_database(&outbox)?;
    config.outbox = outbox;
    Ok(config)
}

fn remove_database(path: &Path) -> Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}

/// Runs the pipeline to the end of its files and reads back its incidents and footage.
fn run_cameras(
    config: &PipelineConfig,
    detectors: Option<Vec<Box<dyn skynet_detect::Detector>>>,
) -> Result<EvalRun> {
    let services = Arc::new(Services::start(None).context("starting the I/O runtime")?);
    let summary = pipeline::run(
        config,
        RunOptions {
            services: Some(Arc::clone(&services)),
            detectors,
            ..RunOptions::default()
        },
    )?;
    services.stop();
    if !summary.failed_cameras.is_empty() {
        let ids: Vec<String> = summary
            .failed_cameras
            .iter()
            .map(ToString::to_string)
            .collect();
        anyhow::bail!("camera(s) failed during the evaluation: {}", ids.join(", "));
    }
    let outbox = skynet_emit::Outbox::open(&config.outbox)
        .with_context(|| format!("opening {}", config.outbox.display()))?;
    let mut fold = crate::replay::IncidentFold::default();
    for event in outbox.events()? {
        fold.add(&event.data);
    }
    let incidents = fold.finish().into_iter().map(eval_incident).collect();
    drop(outbox);
    remove_database(&config.outbox)?;
    let grids: BTreeMap<String, String> = config
        .cameras
        .iter()
        .map(|c| (c.id.to_string(), c.grid.to_string()))
        .collect();
    let footage = summary
        .camera_frames
        .into_iter()
        .filter_map(|(camera, span)| {
            let (first_frame, last_frame) = span?;
            Some(Footage {
                grid: grids.get(camera.as_str()).cloned().unwrap_or_default(),
                camera: camera.to_string(),
                first_frame,
                last_frame,
            })
        })
        .collect();
    Ok(EvalRun { incidents, footage })
}

/// A recording's observations through the risk engine (`skynet replay`'s, with the
/// config's thresholds); every camera's footage is the recording's span.
fn replay_recording(config: &PipelineConfig, recording: &Path) -> Result<EvalRun> {
    let open = || {
        std::fs::File::open(recording)
            .map(std::io::BufReader::new)
            .with_context(|| format!("opening the recording {}", recording.display()))
    };
    let name = recording.display().to_string();
    let (incidents, report) = crate::replay::incidents(
        config,
        &crate::replay::Thresholds::of(config),
        std::io::BufRead::lines(open()?),
        |line, reason| {
            tracing::warn!(line, reason = %reason, file = %name, "a recorded line was not an observation");
        },
    )
    .with_context(|| format!("reading the recording {}", recording.display()))?;
    tracing::info!(observations = report.observations, "replayed the recording");
    // The recording covers every camera of the config for its whole span: a camera with
    // nothing to report records nothing, it was not away.
    let mut span: Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = None;
    for line in std::io::BufRead::lines(open()?) {
        let Ok(observation) = serde_json::from_str::<skynet_core::Observation>(&line?) else {
            continue;
        };
        let at = observation.at;
        span = Some(span.map_or((at, at), |(first, last)| (first.min(at), last.max(at))));
    }
    let footage = span
        .map(|(first_frame, last_frame)| {
            config
                .cameras
                .iter()
                .map(|c| Footage {
                    camera: c.id.to_string(),
                    grid: c.grid.to_string(),
                    first_frame,
                    last_frame,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(EvalRun {
        incidents: incidents.into_iter().map(eval_incident).collect(),
        footage,
    })
}

/// An incident as the scoring takes it.
fn eval_incident(incident: crate::replay::IncidentSummary) -> EvalIncident {
    EvalIncident {
        level: incident.level.as_str().to_string(),
        id: incident.id,
        grid: incident.grid,
        category: incident.category,
        cameras: incident.cameras,
        first_seen: incident.first_seen,
        last_seen: incident.last_seen,
        opened_at: incident.opened_at,
    }
}

/// `--objects CAMERA=GT.TXT`: a camera's clip (the frames it reads) and its boxes.
pub(crate) struct ObjectLabels {
    camera: String,
    clip: PathBuf,
    max_frames: Option<u64>,
    pub(crate) gt: PathBuf,
}

/// `--objects CAMERA=GT.TXT`, checked against the config's file cameras.
pub(crate) fn object_labels(args: &EvalArgs, config: &PipelineConfig) -> Result<Vec<ObjectLabels>> {
    let mut out = Vec::new();
    for arg in &args.objects {
        let Some((camera, gt)) = arg.split_once('=') else {
            anyhow::bail!("--objects {arg}: expected CAMERA=GT.TXT");
        };
        let Some(spec) = config.cameras.iter().find(|c| c.id.as_str() == camera) else {
            anyhow::bail!(
                "--objects {arg}: no camera `{camera}` in {}",
                args.config.display()
            );
        };
        let Some((file, max_frames)) = spec.source.file_clip() else {
            anyhow::bail!("--objects {arg}: camera `{camera}` does not read a file");
        };
        out.push(ObjectLabels {
            camera: camera.to_string(),
            clip: file,
            max_frames,
            gt: PathBuf::from(gt),
        });
    }
    Ok(out)
}

/// Each `--objects` camera's clip through the config's detector, frame by frame, scored
/// against its boxes.
fn score_objects(
    config: &PipelineConfig,
    objects: &[ObjectLabels],
) -> Result<skynet_eval::objects::ObjectReport> {
    let labels = config.model.labels.clone();
    let mut clips = Vec::new();
    let runtime = skynet_detect::OnnxRuntime::init(
        config.onnxruntime.as_deref(),
        &[crate::paths::data_dir()],
    )?;
    let mut detector = skynet_detect::OnnxDetector::new(
        &runtime,
        Arc::clone(&config.model),
        config.detector.clone(),
    )?;
    for clip in objects {
        let gt = skynet_eval::objects::parse_gt(&clip.gt, &labels)?;
        let mut detections: Vec<FrameDetections> = Vec::new();
        crate::detect_cli::each_video_frame(
            &mut detector,
            &clip.clip,
            clip.max_frames,
            |frame, found| {
                detections.push(FrameDetections {
                    // gt.txt numbers frames from 1.
                    frame: frame.info.seq + 1,
                    boxes: found
                        .iter()
                        .map(|d| DetectedBox {
                            label: d.label.clone(),
                            score: d.score,
                            x: d.bbox.x1,
                            y: d.bbox.y1,
                            w: d.bbox.x2 - d.bbox.x1,
                            h: d.bbox.y2 - d.bbox.y1,
                        })
                        .collect(),
                });
                Ok(())
            },
        )
        .with_context(|| {
            format!(
                "detecting on camera {}'s clip {}",
                clip.camera,
                clip.clip.display()
            )
        })?;
        clips.push((gt, detections));
    }
    let sets: Vec<_> = clips
        .iter()
        .map(|(gt, detections)| (gt.as_slice(), detections.as_slice()))
        .collect();
    Ok(skynet_eval::objects::score_object_sets(&sets))
}
