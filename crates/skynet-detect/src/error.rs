use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(
        "ONNX Runtime library not found (looked in: {tried}).\n  Run `scripts/setup.sh` to install it, or point ORT_DYLIB_PATH (or `[detect] onnxruntime` in the config) at libonnxruntime.so"
    )]
    RuntimeMissing { tried: String },
    #[error("ONNX Runtime at {path} could not be loaded: {reason}")]
    RuntimeLoad { path: PathBuf, reason: String },
    #[error("model manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },
    #[error(
        "model weights for `{model}` not found (looked in: {tried}).\n  Run `scripts/setup.sh` to fetch them, or set SKYNET_DATA_DIR"
    )]
    WeightsMissing { model: String, tried: String },
    #[error("model weights {path} have sha256 {actual}, but the manifest accepts only {expected}")]
    WeightsChecksum {
        path: PathBuf,
        actual: String,
        expected: String,
    },
    #[error("could not read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model `{model}`: ONNX Runtime {action} failed: {reason}")]
    Session {
        model: String,
        action: &'static str,
        reason: String,
    },
    /// The model file's real inputs or outputs are not what its manifest describes.
    #[error("model `{model}` does not match its manifest {manifest}: {reason}")]
    ModelMismatch {
        model: String,
        manifest: PathBuf,
        reason: String,
    },
    #[error("model `{model}`: output has shape {shape:?}, expected {expected}")]
    OutputShape {
        model: String,
        shape: Vec<i64>,
        expected: String,
    },
    #[error("image {width}x{height} with stride {stride} needs {needed} bytes, got {got}")]
    ImageSize {
        width: u32,
        height: u32,
        stride: usize,
        needed: usize,
        got: usize,
    },
    #[error("could not decode image {path}: {reason}")]
    Image { path: PathBuf, reason: String },
}
