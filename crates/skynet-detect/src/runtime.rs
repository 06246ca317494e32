//! Finding and loading the ONNX Runtime shared library.
//!
//! ort is built with `load-dynamic`: nothing is downloaded at build time, and the library is
//! opened at run time. Calling into ort before it is loaded panics, so every entry point goes
//! through [`OnnxRuntime::init`] first, which turns a missing library into a clear error.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::DetectError;

// ONNX Runtime allows one environment per process; it is made once and shared.
static LOADED: OnceLock<OnnxRuntime> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Proof that ONNX Runtime is loaded, and the environment sessions are built in.
#[derive(Clone)]
pub struct OnnxRuntime {
    pub library: PathBuf,
    pub(crate) environment: Environment,
}

impl std::fmt::Debug for OnnxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxRuntime")
            .field("library", &self.library)
            .finish_non_exhaustive()
    }
}

impl OnnxRuntime {
    /// Loads the library once per process. Looks, in order, at `explicit` (from config),
    /// `ORT_DYLIB_PATH`, then `lib/libonnxruntime.so` under each of `data_dirs`.
    pub fn init(explicit: Option<&Path>, data_dirs: &[PathBuf]) -> Result<Self, DetectError> {
        let _guard = LOADING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(runtime) = LOADED.get() {
            return Ok(runtime.clone());
        }
        let candidates = Self::candidates(explicit, data_dirs);
        let Some(library) = candidates.iter().find(|p| p.is_file()).cloned() else {
            return Err(DetectError::RuntimeMissing {
                tried: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let load_err = |reason: String| DetectError::RuntimeLoad {
            path: library.clone(),
            reason,
        };
        let environment = ort::init_from(&library)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("skynet")
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        tracing::info!(library = %library.display(), "ONNX Runtime loaded");
        Ok(LOADED
            .get_or_init(|| OnnxRuntime {
                library,
                environment,
            })
            .clone())
    }

    fn candidates(explicit: Option<&Path>, data_dirs: &[PathBuf]) -> Vec<PathBuf> {
        // An explicit choice is the only candidate: silently using another library would hide a typo.
        if let Some(p) = explicit {
            return vec![p.to_path_buf()];
        }
        if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            return vec![PathBuf::from(p)];
        }
        data_dirs
            .iter()
            .map(|d| d.join("lib").join("libonnxruntime.so"))
            .collect()
    }
}
