//! The `[detect]` table of the config: the model, its thresholds and the inference workers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use skynet_core::config::{check_range, data_dir};
use skynet_core::{ConfigContext, FieldError};

use crate::detector::TensorRtOptions;
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
    /// ONNX Runtime inter-op threads per session (above 1: parallel graph execution).
    #[serde(default = "default_inter_threads")]
    pub inter_threads: i64,
    /// Tried in order; the first that loads the model is used.
    #[serde(default = "default_providers")]
    pub execution_providers: Vec<ExecutionProvider>,
    #[serde(default)]
    pub tensorrt: TensorRtSettings,
    /// Images per model call, for a model with a dynamic batch axis.
    #[serde(default = "default_max_batch")]
    pub max_batch: i64,
    /// How long the scheduler may hold a frame to fill a batch.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: i64,
    /// Candidates per image kept for NMS (the best by score).
    #[serde(default = "default_max_candidates")]
    pub max_candidates: i64,
    /// Detections per image kept after NMS (the best by score).
    #[serde(default = "default_max_detections")]
    pub max_detections: i64,
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

/// `[detect.tensorrt]`: used when `tensorrt` is among the execution providers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRtSettings {
    #[serde(default)]
    pub fp16: bool,
    /// Directory where built engines are cached across starts.
    pub engine_cache_dir: Option<String>,
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
const fn default_inter_threads() -> i64 {
    1
}
const fn default_max_batch() -> i64 {
    1
}
const fn default_max_wait_ms() -> i64 {
    5
}
const fn default_max_candidates() -> i64 {
    1000
}
const fn default_max_detections() -> i64 {
    300
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
    /// `max_wait_ms`: the longest a frame waits for a batch to fill (`options.max_batch`).
    pub max_wait: Duration,
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
        let inter_threads = count("inter_threads", self.inter_threads, 1, 256)?;
        let max_batch = count("max_batch", self.max_batch, 1, 256)?;
        let max_wait_ms = count("max_wait_ms", self.max_wait_ms, 0, 10_000)?;
        let max_candidates = count("max_candidates", self.max_candidates, 1, 1_000_000)?;
        let max_detections = count("max_detections", self.max_detections, 1, 100_000)?;
        if self.execution_providers.is_empty() {
            return Err(FieldError::new(
                "execution_providers",
                "`execution_providers` is empty: list at least one of \"tensorrt\", \"cuda\", \"cpu\"",
            ));
        }
        if let Some(p) = self
            .execution_providers
            .iter()
            .enumerate()
            .find(|(i, p)| self.execution_providers[..*i].contains(p))
            .map(|(_, p)| p)
        {
            return Err(FieldError::new(
                "execution_providers",
                format!("`execution_providers` lists \"{p}\" twice"),
            ));
        }
        let engine_cache_dir = self
            .tensorrt
            .engine_cache_dir
            .as_deref()
            .map(|p| cx.resolve_path("engine_cache_dir", p))
            .transpose()?;
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
                inter_threads,
                execution_providers: self.execution_providers.clone(),
                tensorrt: TensorRtOptions {
                    fp16: self.tensorrt.fp16,
                    engine_cache_dir,
                },
                max_batch,
                max_candidates,
                max_detections,
                weight_dirs: vec![data_dir().join("models")],
            },
            workers,
            queue,
            max_wait: Duration::from_millis(max_wait_ms as u64),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &str) -> Result<DetectPlan, FieldError> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let text = format!("model = \"yolox_nano\"\n{extra}");
        let settings: DetectSettings =
            toml::from_str(&text).map_err(|e| FieldError::new("toml", e.to_string()))?;
        settings.validate(&ConfigContext::new(&repo.join("configs/x.toml")))
    }

    #[test]
    fn engine_keys_have_defaults_and_reach_the_plan() {
        let p = plan("").unwrap();
        assert_eq!(p.options.max_batch, 1);
        assert_eq!(p.max_wait, Duration::from_millis(5));
        assert_eq!(p.options.inter_threads, 1);
        assert_eq!(
            (p.options.max_candidates, p.options.max_detections),
            (1000, 300)
        );
        assert_eq!(p.options.execution_providers, vec![ExecutionProvider::Cpu]);
        assert_eq!(p.options.tensorrt, TensorRtOptions::default());

        let p = plan(
            "execution_providers = [\"tensorrt\", \"cuda\", \"cpu\"]\ninter_threads = 2\nmax_batch = 8\nmax_wait_ms = 12\nmax_candidates = 500\nmax_detections = 50\n[tensorrt]\nfp16 = true\nengine_cache_dir = \"/var/cache/skynet/trt\"\n",
        )
        .unwrap();
        assert_eq!(
            p.options.execution_providers,
            vec![
                ExecutionProvider::Tensorrt,
                ExecutionProvider::Cuda,
                ExecutionProvider::Cpu
            ]
        );
        assert_eq!((p.options.inter_threads, p.options.max_batch), (2, 8));
        assert_eq!(p.max_wait, Duration::from_millis(12));
        assert_eq!(
            (p.options.max_candidates, p.options.max_detections),
            (500, 50)
        );
        assert!(p.options.tensorrt.fp16);
        assert_eq!(
            p.options.tensorrt.engine_cache_dir.as_deref(),
            Some(Path::new("/var/cache/skynet/trt"))
        );
    }

    #[test]
    fn bad_engine_values_name_their_key() {
        for (text, key) in [
            ("max_batch = 0", "max_batch"),
            ("max_wait_ms = -1", "max_wait_ms"),
            ("inter_threads = 0", "inter_threads"),
            ("max_candidates = 0", "max_candidates"),
            ("max_detections = 0", "max_detections"),
            ("execution_providers = []", "execution_providers"),
            (
                "execution_providers = [\"cuda\", \"cuda\"]",
                "execution_providers",
            ),
        ] {
            let e = plan(text).unwrap_err();
            assert_eq!(e.field, key, "{text}: {e:?}");
            assert!(
                e.message.contains(&format!("`{key}`")),
                "{text}: {}",
                e.message
            );
        }
        let e = plan("[tensorrt]\nfp17 = true").unwrap_err();
        assert!(e.message.contains("fp17"), "{}", e.message);
        let e = plan("execution_providers = [\"gpu\"]").unwrap_err();
        assert!(e.message.contains("gpu"), "{}", e.message);
    }
}
