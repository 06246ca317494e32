//! `skynet detect`: the detector (and tracker) on images and videos, one JSON line per image
//! or frame, for engineers tuning thresholds and checking a model.
//!
//! Images (`.jpg`, `.jpeg`, `.png`, `.bmp`, `.webp`) are read whole; anything else is decoded
//! as a video through the pipeline's own GStreamer source, every frame. `--track` runs the
//! tracker over a video's frames, so each detection carries its `track` id; `--annotate DIR`
//! writes every image or frame with its boxes, labels (and track ids) and the camera's zones
//! drawn, privacy masks blurred.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use skynet_core::{
    AnalysedFrame, DeviceId, Frame, FrameImage, OverloadPolicy, PixelOrder, Shutdown, Watermark,
    stage_queue,
};
use skynet_detect::{
    Detector, DetectorOptions, ImageView, ModelManifest, OnnxDetector, OnnxRuntime, Zone,
};
use skynet_ingest::{FrameOutput, FrameSource, GstSource, GstSourceOptions};

use crate::{PipelineConfig, paths};
use skynet_snapshot::{Annotations, render};

/// What `skynet detect` was asked to do.
#[derive(Debug, Clone)]
pub struct DetectArgs {
    pub model: PathBuf,
    pub threshold: f32,
    pub nms_iou: f32,
    pub onnxruntime: Option<PathBuf>,
    /// Run the tracker over each video's frames.
    pub track: bool,
    /// Stop each video after this many frames.
    pub max_frames: Option<u64>,
    /// Write annotated images here.
    pub annotate: Option<PathBuf>,
    /// Zones and privacy masks of this camera of `config` are drawn on annotated images.
    pub config: Option<PathBuf>,
    pub camera: Option<String>,
    pub inputs: Vec<PathBuf>,
}

/// What is drawn besides the boxes.
#[derive(Default)]
struct Overlay {
    zones: Vec<Zone>,
    privacy_masks: Vec<Vec<[f64; 2]>>,
}

const IMAGE_EXTENSIONS: [&str; 5] = ["jpg", "jpeg", "png", "bmp", "webp"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Runs the command; `Ok(false)` when some input failed (each is reported, the rest go on).
pub fn run(args: &DetectArgs) -> Result<bool> {
    for (flag, value) in [("--threshold", args.threshold), ("--nms-iou", args.nms_iou)] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&value),
            "{flag} must be between 0 and 1, got {value}"
        );
    }
    let overlay = overlay(args)?;
    if let Some(dir) = &args.annotate {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the --annotate directory {}", dir.display()))?;
    }
    let runtime = OnnxRuntime::init(args.onnxruntime.as_deref(), &[paths::data_dir()])?;
    let manifest = Arc::new(ModelManifest::load(&args.model)?);
    let options = DetectorOptions {
        threshold: args.threshold,
        nms_iou: args.nms_iou,
        intra_threads: 2,
        weight_dirs: vec![paths::data_dir().join("models")],
        ..DetectorOptions::default()
    };
    let mut detector = OnnxDetector::new(&runtime, manifest, options)?;
    let mut all_ok = true;
    for path in &args.inputs {
        let outcome = if is_image(path) {
            image(&mut detector, path, args, &overlay)
        } else {
            video(&mut detector, path, args, &overlay)
        };
        if let Err(e) = outcome {
            eprintln!("error: {}: {e:#}", path.display());
            all_ok = false;
        }
    }
    Ok(all_ok)
}

/// The zones and privacy masks of `--camera` in `--config`, when both are given.
fn overlay(args: &DetectArgs) -> Result<Overlay> {
    match (&args.config, &args.camera) {
        (None, None) => Ok(Overlay::default()),
        (Some(config), Some(camera)) => {
            let c = PipelineConfig::load(config)?;
            let Some(spec) = c.cameras.iter().find(|s| s.id.as_str() == camera) else {
                let known: Vec<&str> = c.cameras.iter().map(|s| s.id.as_str()).collect();
                anyhow::bail!(
                    "no camera `{camera}` in {}; it has: {}",
                    config.display(),
                    known.join(", ")
                );
            };
            Ok(Overlay {
                zones: spec.zones.clone(),
                privacy_masks: spec.privacy_masks.clone(),
            })
        }
        _ => anyhow::bail!("--config and --camera go together: zones are a camera's"),
    }
}

fn image(
    detector: &mut OnnxDetector,
    path: &Path,
    args: &DetectArgs,
    overlay: &Overlay,
) -> Result<()> {
    let (width, height, rgb) = skynet_detect::detector::load_image(path)?;
    let view = ImageView::new(width, height, width as usize * 3, PixelOrder::Rgb, &rgb)?;
    let detections = detector.detect(&view)?;
    println!(
        "{}",
        serde_json::json!({ "image": path, "detections": detections })
    );
    if let Some(dir) = &args.annotate {
        let image = FrameImage {
            width,
            height,
            stride: width as usize * 3,
            order: PixelOrder::Rgb,
            data: rgb.into(),
        };
        let out = dir.join(format!("{}.jpg", file_stem(path)));
        annotate(&image, &detections, overlay, &out)?;
    }
    Ok(())
}

fn video(
    detector: &mut OnnxDetector,
    path: &Path,
    args: &DetectArgs,
    overlay: &Overlay,
) -> Result<()> {
    let mut tracker = args
        .track
        .then(|| skynet_detect::tracker::Tracker::new(Default::default()));
    let stem = file_stem(path);
    each_video_frame(detector, path, args.max_frames, |frame, detections| {
        let mut analysed = AnalysedFrame {
            info: frame.info.clone(),
            detections,
            inference: std::time::Duration::ZERO,
            inferred: true,
            tracks: Vec::new(),
        };
        if let Some(tracker) = &mut tracker {
            tracker.update(&mut analysed);
        }
        let mut line = serde_json::json!({
            "video": path,
            "frame": frame.info.seq,
            "time": frame.info.captured_at,
            "detections": analysed.detections,
        });
        if tracker.is_some() {
            line["tracks"] = serde_json::to_value(&analysed.tracks)?;
        }
        println!("{line}");
        if let Some(dir) = &args.annotate {
            let (sx, sy) = frame.image_scale();
            // Drawn on the decoded image, in its pixels.
            let boxes: Vec<_> = analysed
                .detections
                .iter()
                .map(|d| skynet_core::Detection {
                    bbox: d.bbox.scaled(1.0 / sx, 1.0 / sy),
                    ..d.clone()
                })
                .collect();
            let out = dir.join(format!("{stem}-{:06}.jpg", frame.info.seq));
            annotate(&frame.image, &boxes, overlay, &out)?;
        }
        Ok(())
    })
}

/// Decodes every frame of a clip (up to `max_frames`) and runs the detector on it; `on_frame`
/// gets the frame and its detections in the clip's own pixels. The first error stops the
/// clip (`skynet detect`, and `skynet eval --objects`).
pub fn each_video_frame(
    detector: &mut OnnxDetector,
    path: &Path,
    max_frames: Option<u64>,
    mut on_frame: impl FnMut(&Frame, Vec<skynet_core::Detection>) -> Result<()>,
) -> Result<()> {
    skynet_ingest::init()?;
    anyhow::ensure!(path.is_file(), "no such file");
    let absolute = std::fs::canonicalize(path)?;
    let camera = DeviceId::new("detect");
    let (queue, frames) = stage_queue::<Frame>("frames", "detect", 8, OverloadPolicy::Block);
    let out = FrameOutput::new(queue, Watermark::new(false));
    let mut source = GstSource::new(
        camera,
        GstSourceOptions {
            max_frames,
            ..GstSourceOptions::new(absolute.display().to_string())
        },
    );
    let stop = Shutdown::new();
    let decoder = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("detect-decode".into())
            .spawn(move || source.run(&out, &stop))?
    };
    let mut failure = None;
    for frame in frames.channel().iter() {
        frames.took();
        let step = (|| -> Result<()> {
            let view = ImageView::of_frame(&frame)?;
            let mut detections = detector.detect(&view)?;
            let (sx, sy) = frame.image_scale();
            for d in &mut detections {
                d.bbox = d.bbox.scaled(sx, sy);
            }
            on_frame(&frame, detections)
        })();
        if let Err(e) = step {
            failure = Some(e.context(format!("frame {}", frame.info.seq)));
            stop.trigger();
            break;
        }
    }
    drop(frames);
    let decoded = decoder
        .join()
        .map_err(|_| anyhow::anyhow!("the decoder thread panicked"))?;
    if let Some(e) = failure {
        return Err(e);
    }
    decoded.map(|_| ()).map_err(Into::into)
}

fn annotate(
    image: &FrameImage,
    detections: &[skynet_core::Detection],
    overlay: &Overlay,
    out: &Path,
) -> Result<()> {
    let rendered = render(
        image,
        Annotations {
            detections,
            zones: &overlay.zones,
            privacy_masks: &overlay.privacy_masks,
        },
    )?;
    rendered
        .save(out)
        .with_context(|| format!("cannot write {}", out.display()))
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "input".into())
}
