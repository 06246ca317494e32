//! The [`Detector`] trait and its ONNX Runtime implementation.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Deserialize;
use skynet_core::Detection;

use crate::DetectError;
use crate::manifest::{Family, ModelManifest, ModelPort};
use crate::preprocess::{ImageView, Letterbox};
use crate::runtime::OnnxRuntime;
use crate::yolox::YoloxDecoder;

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

/// Where inference runs. Listed in order of preference; CPU is always the last resort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Cpu,
    Cuda,
    Tensorrt,
}

#[derive(Debug, Clone)]
pub struct DetectorOptions {
    pub threshold: f32,
    pub nms_iou: f32,
    /// ONNX Runtime intra-op threads per session.
    pub intra_threads: usize,
    pub execution_providers: Vec<ExecutionProvider>,
    /// Directories searched for the weights after the manifest's own.
    pub weight_dirs: Vec<PathBuf>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self {
            threshold: 0.3,
            nms_iou: 0.45,
            intra_threads: 1,
            execution_providers: vec![ExecutionProvider::Cpu],
            weight_dirs: Vec::new(),
        }
    }
}

pub struct OnnxDetector {
    session: Session,
    manifest: Arc<ModelManifest>,
    options: DetectorOptions,
    letterbox: Letterbox,
    decoder: YoloxDecoder,
    input: Vec<f32>,
    inference_seconds: metrics::Histogram,
}

impl OnnxDetector {
    pub fn new(
        runtime: &OnnxRuntime,
        manifest: Arc<ModelManifest>,
        options: DetectorOptions,
    ) -> Result<Self, DetectError> {
        let weights_path = manifest.locate_weights(&options.weight_dirs)?;
        let weights = manifest.read_verified_weights(&weights_path)?;
        let model = manifest.model.name.clone();
        let fail = |action: &'static str| {
            let model = model.clone();
            move |e: ort::Error<_>| DetectError::Session {
                model: model.clone(),
                action,
                reason: e.to_string(),
            }
        };
        let mut builder = Session::builder(&runtime.environment)
            .map_err(|e| DetectError::Session {
                model: model.clone(),
                action: "session builder",
                reason: e.to_string(),
            })?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(fail("optimisation level"))?
            .with_intra_threads(options.intra_threads.max(1))
            .map_err(fail("thread settings"))?
            .with_execution_providers(execution_providers(&options.execution_providers))
            .map_err(fail("execution provider registration"))?;
        let session = builder
            .commit_from_memory(&weights)
            .map_err(|e| DetectError::Session {
                model: model.clone(),
                action: "model load",
                reason: e.to_string(),
            })?;
        let ports = |outlets: &[ort::value::Outlet]| -> Vec<ModelPort> {
            outlets
                .iter()
                .map(|o| ModelPort {
                    name: o.name().to_string(),
                    shape: o.dtype().tensor_shape().map(|s| s.to_vec()),
                })
                .collect()
        };
        manifest.check_ports(&ports(session.inputs()), &ports(session.outputs()))?;
        let input = &manifest.input;
        let Family::Yolox = manifest.model.family;
        let decoder = YoloxDecoder::new(
            input.width,
            input.height,
            &manifest.output.strides,
            manifest.labels.len(),
        );
        let letterbox = Letterbox::new(
            input.width,
            input.height,
            input.pad_value,
            input.scale,
            input.channel_order,
        );
        let buffer = vec![0.0; letterbox.tensor_len()];
        tracing::debug!(model = %manifest.model.name, weights = %weights_path.display(), "detector ready");
        let inference_seconds =
            metrics::histogram!("skynet_inference_seconds", "model" => manifest.model.name.clone());
        Ok(Self {
            session,
            manifest,
            options,
            letterbox,
            decoder,
            input: buffer,
            inference_seconds,
        })
    }

    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }

    /// Fills the model input from `image`; split from [`run`](Self::run) so benchmarks can time each.
    pub fn preprocess(&mut self, image: &ImageView<'_>) -> crate::preprocess::LetterboxGeometry {
        self.letterbox.fill(image, &mut self.input)
    }

    /// Runs the model on the current input and decodes the output.
    pub fn run(
        &mut self,
        geometry: crate::preprocess::LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Result<Vec<Detection>, DetectError> {
        let manifest = &self.manifest;
        let model = &manifest.model.name;
        let session_err = |action: &'static str| {
            move |e: ort::Error| DetectError::Session {
                model: model.clone(),
                action,
                reason: e.to_string(),
            }
        };
        let shape = [
            1usize,
            3,
            manifest.input.height as usize,
            manifest.input.width as usize,
        ];
        let tensor = TensorRef::from_array_view((shape, &self.input[..]))
            .map_err(session_err("input tensor"))?;
        let started = Instant::now();
        let outputs = self
            .session
            .run(ort::inputs![manifest.input.name.as_str() => tensor])
            .map_err(session_err("inference"))?;
        self.inference_seconds
            .record(started.elapsed().as_secs_f64());
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
        let (anchors, columns) = (self.decoder.anchors(), manifest.output_columns());
        if values.len() != anchors * columns {
            return Err(DetectError::OutputShape {
                model: model.clone(),
                shape: shape.to_vec(),
                anchors,
                columns,
            });
        }
        Ok(self.decoder.decode(
            values,
            &manifest.labels,
            self.options.threshold,
            self.options.nms_iou,
            geometry,
            source_size,
        ))
    }
}

impl Detector for OnnxDetector {
    fn detect(&mut self, image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        let geometry = self.preprocess(image);
        self.run(geometry, (image.width, image.height))
    }
}

fn execution_providers(wanted: &[ExecutionProvider]) -> Vec<ort::ep::ExecutionProviderDispatch> {
    // Providers the loaded library lacks are skipped with a warning by ONNX Runtime, and the
    // session falls back to the next one: a GPU config still runs on a CPU-only machine.
    wanted
        .iter()
        .map(|p| match p {
            ExecutionProvider::Cpu => ort::ep::CPU::default().build(),
            ExecutionProvider::Cuda => ort::ep::CUDA::default().build(),
            ExecutionProvider::Tensorrt => ort::ep::TensorRT::default().build(),
        })
        .collect()
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
