//! The [`Detector`] trait and its ONNX Runtime implementation.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Deserialize;
use skynet_core::Detection;

use crate::DetectError;
use crate::decode::{BoxDecoder, DecodeParams};
use crate::manifest::{ModelManifest, ModelPort};
use crate::preprocess::{ImageView, Letterbox, LetterboxGeometry};
use crate::runtime::OnnxRuntime;

/// Finds objects in images. Each inference worker owns one.
pub trait Detector: Send {
    fn detect(&mut self, image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError>;

    /// The most images one [`detect_batch`](Self::detect_batch) call runs at once: 1 unless
    /// the model has a dynamic batch axis and batching was asked for.
    fn max_batch(&self) -> usize {
        1
    }

    /// Detects in several images (from any cameras) in one model call where the model allows
    /// it; one result per image, in order. A failure of the whole call fails every image.
    fn detect_batch(
        &mut self,
        images: &[ImageView<'_>],
    ) -> Vec<Result<Vec<Detection>, DetectError>> {
        images.iter().map(|image| self.detect(image)).collect()
    }
}

/// Where inference runs. `[detect] execution_providers` lists them in order of preference;
/// each is tried in turn and the first that registers and loads the model is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    Tensorrt,
}

impl ExecutionProvider {
    /// The name in the config, the log and the metric label.
    pub fn name(self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda => "cuda",
            ExecutionProvider::Tensorrt => "tensorrt",
        }
    }
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `[detect.tensorrt]`: options of the TensorRT provider.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TensorRtOptions {
    /// Lets TensorRT run layers in half precision.
    pub fp16: bool,
    /// Built engines are kept here and reused by the next start (building one takes minutes).
    pub engine_cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DetectorOptions {
    pub threshold: f32,
    pub nms_iou: f32,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    /// ONNX Runtime inter-op threads per session; above 1 the graph runs in parallel mode.
    pub inter_threads: usize,
    pub execution_providers: Vec<ExecutionProvider>,
    pub tensorrt: TensorRtOptions,
    /// Images per model call for a model with a dynamic batch axis (1 for a fixed one).
    pub max_batch: usize,
    /// Candidates kept for NMS per image, the best by score.
    pub max_candidates: usize,
    /// Detections kept per image after NMS, the best by score.
    pub max_detections: usize,
    /// Directories searched for the weights after the manifest's own.
    pub weight_dirs: Vec<PathBuf>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        let decode = DecodeParams::default();
        Self {
            threshold: decode.threshold,
            nms_iou: decode.nms_iou,
            intra_threads: 1,
            inter_threads: 1,
            execution_providers: vec![ExecutionProvider::Cpu],
            tensorrt: TensorRtOptions::default(),
            max_batch: 1,
            max_candidates: decode.max_candidates,
            max_detections: decode.max_detections,
            weight_dirs: Vec::new(),
        }
    }
}

impl DetectorOptions {
    pub fn decode_params(&self) -> DecodeParams {
        DecodeParams {
            threshold: self.threshold,
            nms_iou: self.nms_iou,
            max_candidates: self.max_candidates,
            max_detections: self.max_detections,
        }
    }
}

pub struct OnnxDetector {
    session: Session,
    manifest: Arc<ModelManifest>,
    params: DecodeParams,
    letterbox: Letterbox,
    decoder: BoxDecoder,
    /// Room for `max_batch` images, planar, one after another.
    input: Vec<f32>,
    provider: ExecutionProvider,
    dynamic_batch: bool,
    max_batch: usize,
    inference_seconds: metrics::Histogram,
    batch_size: metrics::Histogram,
}

/// Models already warned about asking for batches of a fixed-batch model: once per process.
static WARNED_FIXED_BATCH: Mutex<Vec<String>> = Mutex::new(Vec::new());

impl OnnxDetector {
    pub fn new(
        runtime: &OnnxRuntime,
        manifest: Arc<ModelManifest>,
        options: DetectorOptions,
    ) -> Result<Self, DetectError> {
        let weights_path = manifest.locate_weights(&options.weight_dirs)?;
        let weights = manifest.read_verified_weights(&weights_path)?;
        let model = manifest.model.name.clone();
        // TensorRT builds its engine for the input shapes it is told; without a profile a
        // dynamic batch axis would make it rebuild (for seconds to minutes) at the first call
        // of each new batch size.
        let input = &manifest.input;
        let trt_profile = (options.max_batch > 1).then(|| TrtProfile {
            min: format!("{}:1x3x{}x{}", input.name, input.height, input.width),
            max: format!(
                "{}:{}x3x{}x{}",
                input.name, options.max_batch, input.height, input.width
            ),
        });
        let (session, provider) =
            build_session(runtime, &weights, &options, &model, trt_profile.as_ref())?;
        let ports = |outlets: &[ort::value::Outlet]| -> Vec<ModelPort> {
            outlets
                .iter()
                .map(|o| ModelPort {
                    name: o.name().to_string(),
                    shape: o.dtype().tensor_shape().map(|s| s.to_vec()),
                })
                .collect()
        };
        let inputs = ports(session.inputs());
        manifest.check_ports(&inputs, &ports(session.outputs()))?;
        let dynamic_batch = inputs
            .iter()
            .find(|p| p.name == manifest.input.name)
            .and_then(|p| p.shape.as_ref())
            .and_then(|s| s.first())
            .is_some_and(|&batch| batch < 0);
        let wanted_batch = options.max_batch.max(1);
        let max_batch = if dynamic_batch { wanted_batch } else { 1 };
        if wanted_batch > 1 && !dynamic_batch {
            let mut warned = WARNED_FIXED_BATCH
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !warned.contains(&model) {
                warned.push(model.clone());
                tracing::warn!(
                    model = %model,
                    max_batch = wanted_batch,
                    "max_batch > 1 asked for, but the model's batch axis is fixed: one image per call (see scripts/derive_models.py for a dynamic-batch variant)"
                );
            }
        }
        let input = &manifest.input;
        let decoder = BoxDecoder::for_manifest(&manifest);
        let letterbox = Letterbox::new(
            input.width,
            input.height,
            input.pad_value,
            input.scale,
            input.channel_order,
        );
        let buffer = vec![0.0; letterbox.tensor_len() * max_batch];
        tracing::info!(
            model = %model,
            provider = provider.name(),
            family = manifest.model.family.name(),
            max_batch,
            weights = %weights_path.display(),
            "detector ready"
        );
        metrics::gauge!("skynet_execution_provider", "model" => model.clone(), "provider" => provider.name())
            .set(1.0);
        let inference_seconds =
            metrics::histogram!("skynet_inference_seconds", "model" => model.clone());
        let batch_size = metrics::histogram!("skynet_inference_batch_size", "model" => model);
        Ok(Self {
            session,
            params: options.decode_params(),
            manifest,
            letterbox,
            decoder,
            input: buffer,
            provider,
            dynamic_batch,
            max_batch,
            inference_seconds,
            batch_size,
        })
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// The execution provider the session runs on (the first of the configured ones that loaded).
    pub fn execution_provider(&self) -> ExecutionProvider {
        self.provider
    }

    /// Whether the model's batch axis is symbolic, so one call can take several images.
    pub fn has_dynamic_batch(&self) -> bool {
        self.dynamic_batch
    }

    /// Fills the model input from `image`; split from [`run`](Self::run) so benchmarks can time each.
    pub fn preprocess(&mut self, image: &ImageView<'_>) -> LetterboxGeometry {
        let len = self.letterbox.tensor_len();
        self.letterbox.fill(image, &mut self.input[..len])
    }

    /// Runs the model on the current input (one image) and decodes the output.
    pub fn run(
        &mut self,
        geometry: LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Result<Vec<Detection>, DetectError> {
        let mut results = self.run_batch(&[(geometry, source_size)])?;
        Ok(results.pop().unwrap_or_default())
    }

    /// Runs the model once on the first `images.len()` inputs of the buffer; one result per image.
    fn run_batch(
        &mut self,
        images: &[(LetterboxGeometry, (u32, u32))],
    ) -> Result<Vec<Vec<Detection>>, DetectError> {
        let manifest = &self.manifest;
        let model = &manifest.model.name;
        let session_err = |action: &'static str| {
            move |e: ort::Error| DetectError::Session {
                model: model.clone(),
                action,
                reason: e.to_string(),
            }
        };
        let batch = images.len();
        let shape = [
            batch,
            3,
            manifest.input.height as usize,
            manifest.input.width as usize,
        ];
        let len = self.letterbox.tensor_len() * batch;
        let tensor = TensorRef::from_array_view((shape, &self.input[..len]))
            .map_err(session_err("input tensor"))?;
        let started = Instant::now();
        let outputs = self
            .session
            .run(ort::inputs![manifest.input.name.as_str() => tensor])
            .map_err(session_err("inference"))?;
        self.inference_seconds
            .record(started.elapsed().as_secs_f64());
        self.batch_size.record(batch as f64);
        let Some(output) = outputs.get(manifest.output.name.as_str()) else {
            return Err(DetectError::Session {
                model: model.clone(),
                action: "output lookup",
                reason: format!("no output named `{}`", manifest.output.name),
            });
        };
        let (shape, values) = output
            .try_extract_tensor::<f32>()
            .map_err(session_err("output extraction"))?;
        let per_image = values.len() / batch.max(1);
        let expected = self.decoder.values_per_image();
        let fits = values.len() == per_image * batch
            && per_image.is_multiple_of(self.decoder.row_len())
            && expected.is_none_or(|e| e == per_image);
        if !fits {
            return Err(DetectError::OutputShape {
                model: model.clone(),
                shape: shape.to_vec(),
                expected: match expected {
                    Some(e) => format!("{batch} images of {e} values"),
                    None => format!("{batch} images of rows of {}", self.decoder.row_len()),
                },
            });
        }
        // By index, not by chunks: an output with no rows (an end-to-end model that found
        // nothing) has no chunks, and each image must still get its (empty) result.
        Ok(images
            .iter()
            .enumerate()
            .map(|(i, &(geometry, source_size))| {
                let values = values
                    .get(i * per_image..(i + 1) * per_image)
                    .unwrap_or(&[]);
                self.decoder.decode(
                    values,
                    &manifest.labels,
                    &self.params,
                    geometry,
                    source_size,
                )
            })
            .collect())
    }
}

impl Detector for OnnxDetector {
    fn detect(&mut self, image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        let geometry = self.preprocess(image);
        self.run(geometry, (image.width, image.height))
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn detect_batch(
        &mut self,
        images: &[ImageView<'_>],
    ) -> Vec<Result<Vec<Detection>, DetectError>> {
        let mut results = Vec::with_capacity(images.len());
        let tensor_len = self.letterbox.tensor_len();
        for chunk in images.chunks(self.max_batch.max(1)) {
            let mut prepared = Vec::with_capacity(chunk.len());
            for (slot, image) in self.input.chunks_exact_mut(tensor_len).zip(chunk) {
                let geometry = self.letterbox.fill(image, slot);
                prepared.push((geometry, (image.width, image.height)));
            }
            match self.run_batch(&prepared) {
                Ok(detections) => results.extend(detections.into_iter().map(Ok)),
                Err(e) => {
                    // DetectError is not Clone: every image of the failed call gets its own copy.
                    let reason = e.to_string();
                    results.extend(chunk.iter().map(|_| {
                        Err(DetectError::Session {
                            model: self.manifest.model.name.clone(),
                            action: "batched inference",
                            reason: reason.clone(),
                        })
                    }));
                }
            }
        }
        results
    }
}

/// Tries each configured provider in order with error-on-failure registration, so a
/// provider that is missing or fails is seen and the next one tried explicitly, instead
/// of ONNX Runtime silently dropping to CPU.
/// TensorRT's optimisation profile for a dynamic batch axis: `name:NxCxHxW` at batch 1 and at
/// `max_batch` (also the shape it optimises for).
struct TrtProfile {
    min: String,
    max: String,
}

fn build_session(
    runtime: &OnnxRuntime,
    weights: &[u8],
    options: &DetectorOptions,
    model: &str,
    trt_profile: Option<&TrtProfile>,
) -> Result<(Session, ExecutionProvider), DetectError> {
    let wanted: &[ExecutionProvider] = if options.execution_providers.is_empty() {
        &[ExecutionProvider::Cpu]
    } else {
        &options.execution_providers
    };
    let mut failures = Vec::new();
    for &provider in wanted {
        match session_on(runtime, weights, options, provider, trt_profile) {
            Ok(session) => {
                if !failures.is_empty() {
                    tracing::info!(
                        model,
                        provider = provider.name(),
                        "fell back to execution provider"
                    );
                }
                return Ok((session, provider));
            }
            Err(reason) => {
                tracing::warn!(model, provider = provider.name(), %reason, "execution provider unavailable; trying the next");
                failures.push(format!("{provider}: {reason}"));
            }
        }
    }
    Err(DetectError::Session {
        model: model.to_string(),
        action: "session creation on every execution provider",
        reason: failures.join("; "),
    })
}

/// Turns an ONNX Runtime error of one set-up step into text naming the step.
fn text<E: std::fmt::Display>(step: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{step}: {e}")
}

fn session_on(
    runtime: &OnnxRuntime,
    weights: &[u8],
    options: &DetectorOptions,
    provider: ExecutionProvider,
    trt_profile: Option<&TrtProfile>,
) -> Result<Session, String> {
    let mut builder = Session::builder(&runtime.environment)
        .map_err(|e| format!("session builder: {e}"))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(text("optimisation level"))?
        .with_intra_threads(options.intra_threads.max(1))
        .map_err(text("intra_threads"))?;
    if options.inter_threads > 1 {
        builder = builder
            .with_parallel_execution(true)
            .map_err(text("parallel execution"))?
            .with_inter_threads(options.inter_threads)
            .map_err(text("inter_threads"))?;
    }
    let dispatch = match provider {
        ExecutionProvider::Cpu => ort::ep::CPU::default().build(),
        ExecutionProvider::Cuda => ort::ep::CUDA::default().build(),
        ExecutionProvider::Tensorrt => {
            let trt = &options.tensorrt;
            let mut ep = ort::ep::TensorRT::default().with_fp16(trt.fp16);
            if let Some(dir) = &trt.engine_cache_dir {
                ep = ep
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            if let Some(profile) = trt_profile {
                ep = ep
                    .with_profile_min_shapes(&profile.min)
                    .with_profile_opt_shapes(&profile.max)
                    .with_profile_max_shapes(&profile.max);
            }
            ep.build()
        }
    };
    builder
        .with_execution_providers([dispatch.error_on_failure()])
        .map_err(text("registration"))?
        .commit_from_memory(weights)
        .map_err(|e| format!("model load: {e}"))
}

/// Loads a still image from disk as an RGB buffer for [`Detector::detect`].
pub fn load_image(path: &std::path::Path) -> Result<(u32, u32, Vec<u8>), DetectError> {
    let img = image::open(path).map_err(|e| DetectError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let rgb = img.into_rgb8();
    Ok((rgb.width(), rgb.height(), rgb.into_raw()))
}
