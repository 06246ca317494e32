//! Model manifests: everything needed to run a model, except the weights themselves.
//!
//! Weights never live in git. The manifest names the file and its sha256; the loader looks
//! for it beside the manifest, then in `$SKYNET_DATA_DIR/models`, where `scripts/setup.sh`
//! puts it, and refuses a file whose checksum the manifest does not accept.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::DetectError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    pub model: ModelSection,
    pub input: InputSection,
    pub output: OutputSection,
    pub labels: Vec<String>,
    /// Where the manifest was read from (not part of the file).
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    /// Post-processing family; decides how the output tensor is decoded.
    pub family: Family,
    pub file: String,
    pub sha256: String,
    /// Other exports of the same model with identical inputs and outputs.
    #[serde(default)]
    pub accepted_sha256: Vec<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Yolox,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    Nchw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    Bgr,
    Rgb,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub layout: Layout,
    pub channel_order: ChannelOrder,
    /// Pixel values are multiplied by this (1.0 keeps 0-255).
    #[serde(default = "one")]
    pub scale: f32,
    /// Value of the letterbox padding, in 0-255 pixel units.
    pub pad_value: f32,
}

fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    pub name: String,
    /// Feature-map strides, in the order the anchors appear in the output.
    pub strides: Vec<u32>,
}

impl ModelManifest {
    pub fn load(path: &Path) -> Result<Self, DetectError> {
        let text = std::fs::read_to_string(path).map_err(|source| DetectError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut manifest: ModelManifest =
            toml::from_str(&text).map_err(|e| DetectError::Manifest {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        manifest.path = path.to_path_buf();
        manifest.validate()?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), DetectError> {
        let bad = |reason: String| {
            Err(DetectError::Manifest {
                path: self.path.clone(),
                reason,
            })
        };
        if self.labels.is_empty() {
            return bad("`labels` is empty".into());
        }
        if self.input.width == 0 || self.input.height == 0 {
            return bad("input width and height must be positive".into());
        }
        if let Some(s) = self.output.strides.iter().find(|s| {
            **s == 0
                || !self.input.width.is_multiple_of(**s)
                || !self.input.height.is_multiple_of(**s)
        }) {
            return bad(format!(
                "stride {s} does not divide the input size {}x{}",
                self.input.width, self.input.height
            ));
        }
        if self.model.sha256.len() != 64 {
            return bad("`sha256` must be 64 hex digits".into());
        }
        Ok(())
    }

    /// The number of values per anchor in the output: box (4), objectness, then class scores.
    pub fn output_columns(&self) -> usize {
        5 + self.labels.len()
    }

    pub fn anchors(&self) -> usize {
        self.output
            .strides
            .iter()
            .map(|s| ((self.input.width / s) * (self.input.height / s)) as usize)
            .sum()
    }

    /// Finds the weights: beside the manifest, then in each of `search_dirs`.
    pub fn locate_weights(&self, search_dirs: &[PathBuf]) -> Result<PathBuf, DetectError> {
        let beside = self.path.parent().map(|d| d.join(&self.model.file));
        let candidates: Vec<PathBuf> = beside
            .into_iter()
            .chain(search_dirs.iter().map(|d| d.join(&self.model.file)))
            .collect();
        candidates
            .iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| DetectError::WeightsMissing {
                model: self.model.name.clone(),
                tried: candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Reads the weights and checks them against the accepted checksums.
    pub fn read_verified_weights(&self, path: &Path) -> Result<Vec<u8>, DetectError> {
        let bytes = std::fs::read(path).map_err(|source| DetectError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let actual = hex(&Sha256::digest(&bytes));
        let accepted = std::iter::once(&self.model.sha256).chain(&self.model.accepted_sha256);
        if accepted.clone().any(|s| s.eq_ignore_ascii_case(&actual)) {
            Ok(bytes)
        } else {
            Err(DetectError::WeightsChecksum {
                path: path.to_path_buf(),
                actual,
                expected: accepted.cloned().collect::<Vec<_>>().join(" or "),
            })
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
