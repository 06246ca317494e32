//! The `[detect]` table of the config: the model, its thresholds and the inference workers.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use skynet_core::config::{check_range, data_dir};
use skynet_core::{ConfigContext, FieldError};

use crate::filter::validate_class_limits;
use crate::{ClassLimitsTable, DetectorOptions, ExecutionProvider, ModelManifest, OwnerClasses};

/// `[detect]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectSettings {
    /// A manifest path (`.toml`) or a model name looked up in the model directories.
    pub model: String,
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    #[serde(default = "default_nms_iou")]
    pub nms_iou: f64,
    /// Inference sessions in parallel.
    #[serde(default = "default_workers")]
    pub workers: i64,
    /// ONNX Runtime threads per session.
    #[serde(default = "default_intra_threads")]
    pub intra_threads: i64,
    #[serde(default = "default_providers")]
    pub execution_providers: Vec<ExecutionProvider>,
    /// Frames waiting per camera before the oldest is dropped (live) or the source waits.
    #[serde(default = "default_queue")]
    pub queue: i64,
    /// Path of libonnxruntime.so; otherwise ORT_DYLIB_PATH, then where set-up put it.
    pub onnxruntime: Option<String>,
    /// Per class, for every camera: minimum score and box-area range.
    #[serde(default)]
    pub classes: ClassLimitsTable,
    /// Per owner, the labels its cameras look for.
    #[serde(default)]
    pub owner_classes: OwnerClasses,
}

const fn default_threshold() -> f64 {
    0.3
}
const fn default_nms_iou() -> f64 {
    0.45
}
const fn default_workers() -> i64 {
    2
}
const fn default_intra_threads() -> i64 {
    1
}
const fn default_queue() -> i64 {
    4
}
fn default_providers() -> Vec<ExecutionProvider> {
    vec![ExecutionProvider::Cpu]
}

/// `[detect]` checked: what the pipeline builds its detectors from.
#[derive(Debug, Clone)]
pub struct DetectPlan {
    pub model: ModelManifest,
    pub options: DetectorOptions,
    pub workers: usize,
    pub queue: usize,
    pub onnxruntime: Option<PathBuf>,
    /// `[detect.classes]`, checked against the model's labels.
    pub classes: ClassLimitsTable,
    /// `[detect.owner_classes]`, checked against the model's labels.
    pub owner_classes: OwnerClasses,
}

fn count(name: &str, value: i64, min: i64, max: i64) -> Result<usize, FieldError> {
    if (min..=max).contains(&value) {
        usize::try_from(value)
            .map_err(|_| FieldError::new(name, format!("`{name}` is out of range")))
    } else {
        Err(FieldError::new(
            name,
            format!("`{name}` must be between {min} and {max}, got {value}"),
        ))
    }
}

impl DetectSettings {
    /// Checks every value and loads the model's manifest (a file read: the manifest names
    /// the labels rules are checked against). Errors name the key.
    pub fn validate(&self, cx: &ConfigContext) -> Result<DetectPlan, FieldError> {
        let model = find_model(cx, &self.model)?;
        let threshold = check_range("threshold", self.threshold, 0.0, 1.0)?;
        let nms_iou = check_range("nms_iou", self.nms_iou, 0.0, 1.0)?;
        let workers = count("workers", self.workers, 1, 64)?;
        let intra_threads = count("intra_threads", self.intra_threads, 1, 256)?;
        let queue = count("queue", self.queue, 1, 10_000)?;
        let onnxruntime = self
            .onnxruntime
            .as_deref()
            .map(|p| cx.resolve_path("onnxruntime", p))
            .transpose()?;
        validate_class_limits(
            "classes",
            &self.classes,
            &model.model.name,
            &model.labels,
            threshold,
        )?;
        self.owner_classes
            .validate(&model.model.name, &model.labels)?;
        Ok(DetectPlan {
            model,
            options: DetectorOptions {
                threshold: threshold as f32,
                nms_iou: nms_iou as f32,
                intra_threads,
                execution_providers: self.execution_providers.clone(),
                weight_dirs: vec![data_dir().join("models")],
            },
            workers,
            queue,
            onnxruntime,
            classes: self.classes.clone(),
            owner_classes: self.owner_classes.clone(),
        })
    }
}

/// A manifest path, or a model name looked up in `../models` and `models` beside the config
/// file, then in `$SKYNET_DATA_DIR/models`.
fn find_model(cx: &ConfigContext, value: &str) -> Result<ModelManifest, FieldError> {
    let err = |m: String| FieldError::new("model", m);
    let manifest_path = if value.ends_with(".toml") {
        cx.resolve_path("model", value)?
    } else {
        let dirs = [
            cx.base_dir.join("../models"),
            cx.base_dir.join("models"),
            data_dir().join("models"),
        ];
        let file = format!("{value}.toml");
        match dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
            Some(p) => p,
            None => {
                let looked = dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(err(format!(
                    "unknown model `{value}`: no manifest {file} in {looked}"
                )));
            }
        }
    };
    if !Path::new(&manifest_path).is_file() {
        return Err(err(format!(
            "unknown model: manifest {} does not exist",
            manifest_path.display()
        )));
    }
    ModelManifest::load(&manifest_path).map_err(|e| err(e.to_string()))
}
