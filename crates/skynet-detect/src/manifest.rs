//! Model manifests: everything needed to run a model, except the weights themselves.
//!
//! Weights never live in git. The manifest names the file and its sha256; the loader looks
//! for it beside the manifest, then in `$SKYNET_DATA_DIR/models`, where `scripts/setup.sh`
//! puts it, and refuses a file whose checksum the manifest does not accept.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::DetectError;
pub use crate::model_family::FamilyRef;
use crate::model_family::agrees;

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
    pub family: FamilyRef,
    pub file: String,
    pub sha256: String,
    /// Other exports of the same model with identical inputs and outputs.
    #[serde(default)]
    pub accepted_sha256: Vec<String>,
    #[serde(default)]
    pub url: Option<String>,
    /// Not downloaded but generated from another model (the name of its manifest in
    /// models/) by `scripts/derive_models.py` with [`recipe`](Self::recipe); `sha256` is that
    /// of the generated file.
    #[serde(default)]
    pub derived_from: Option<String>,
    /// The derivation: `dynamic-batch`, `yolov8-layout` or `nms-inside`.
    #[serde(default)]
    pub recipe: Option<String>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
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
    /// Feature-map strides, in the order the anchors appear in the output (`yolox` and
    /// `yolov8`; they give the number of anchors).
    #[serde(default)]
    pub strides: Vec<u32>,
}

/// One input or output of a model as the model file declares it: its name and, for a
/// tensor, its dimensions (negative where the model leaves one open, such as the batch).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPort {
    pub name: String,
    pub shape: Option<Vec<i64>>,
}

impl ModelManifest {
    /// Checks the model's real inputs and outputs against the manifest, so a manifest that
    /// disagrees with its model fails at load with what differs, not at the first frame.
    pub fn check_ports(
        &self,
        inputs: &[ModelPort],
        outputs: &[ModelPort],
    ) -> Result<(), DetectError> {
        let mismatch = |reason: String| DetectError::ModelMismatch {
            model: self.model.name.clone(),
            manifest: self.path.clone(),
            reason,
        };
        let names = |ports: &[ModelPort]| {
            ports
                .iter()
                .map(|p| format!("`{}`", p.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let missing = |ports: &[ModelPort], name: &str, what: &str| {
            mismatch(format!(
                "{what} `{name}` is not in the model; its {what}s: {}",
                names(ports)
            ))
        };

        let input = inputs
            .iter()
            .find(|p| p.name == self.input.name)
            .ok_or_else(|| missing(inputs, &self.input.name, "input"))?;
        if let Some(shape) = &input.shape {
            let (w, h) = (self.input.width as usize, self.input.height as usize);
            let fits = shape.len() == 4
                && agrees(shape[1], 3)
                && agrees(shape[2], h)
                && agrees(shape[3], w);
            if !fits {
                return Err(mismatch(format!(
                    "input `{}` has shape {shape:?}; the manifest describes NCHW [N, 3, {h}, {w}] (input.width = {w}, input.height = {h})",
                    input.name
                )));
            }
        }
        let output = outputs
            .iter()
            .find(|p| p.name == self.output.name)
            .ok_or_else(|| missing(outputs, &self.output.name, "output"))?;
        if let Some(shape) = &output.shape
            && let Err(expected) = self.model.family.check_output(self, shape)
        {
            return Err(mismatch(format!(
                "output `{}` has shape {shape:?}; the manifest (family `{}`) describes {expected}",
                output.name,
                self.model.family.name(),
            )));
        }
        Ok(())
    }

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
        if let Err(reason) = self.model.family.check_manifest(self) {
            return bad(reason);
        }
        if self.model.derived_from.is_some() != self.model.recipe.is_some() {
            return bad(
                "`derived_from` and `recipe` go together: a derived model names both".into(),
            );
        }
        if self.model.sha256.len() != 64 {
            return bad("`sha256` must be 64 hex digits".into());
        }
        Ok(())
    }

    /// The number of values per output row, as the model's family lays it out.
    pub fn output_columns(&self) -> usize {
        self.model.family.output_columns(self)
    }

    pub fn anchors(&self) -> usize {
        self.output
            .strides
            .iter()
            .filter(|s| **s > 0)
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

#[cfg(test)]
mod port_tests {
    use super::*;

    fn manifest() -> ModelManifest {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/yolox_nano.toml");
        ModelManifest::load(&path).unwrap()
    }

    fn port(name: &str, shape: &[i64]) -> ModelPort {
        ModelPort {
            name: name.into(),
            shape: Some(shape.to_vec()),
        }
    }

    #[test]
    fn a_model_that_matches_its_manifest_passes_and_open_dimensions_are_accepted() {
        let m = manifest();
        let input = [port("images", &[1, 3, 416, 416])];
        let output = [port("output", &[1, 3549, 85])];
        m.check_ports(&input, &output).unwrap();
        // A symbolic batch axis (the dynamic-batch export).
        m.check_ports(
            &[port("images", &[-1, 3, 416, 416])],
            &[port("output", &[-1, 3549, 85])],
        )
        .unwrap();
    }

    #[test]
    fn a_manifest_that_disagrees_with_its_model_says_what_differs() {
        let m = manifest();
        let input = [port("images", &[1, 3, 416, 416])];
        let output = [port("output", &[1, 3549, 85])];
        let err = |inputs: &[ModelPort], outputs: &[ModelPort]| {
            m.check_ports(inputs, outputs).unwrap_err().to_string()
        };
        let e = err(&[port("input.1", &[1, 3, 416, 416])], &output);
        assert!(
            e.contains("input `images` is not in the model; its inputs: `input.1`"),
            "{e}"
        );
        assert!(e.contains("yolox_nano.toml"), "{e}");
        let e = err(&[port("images", &[1, 3, 640, 640])], &output);
        assert!(
            e.contains("[1, 3, 640, 640]") && e.contains("input.width = 416"),
            "{e}"
        );
        let e = err(&input, &[port("dets", &[1, 100, 6])]);
        assert!(
            e.contains("output `output` is not in the model; its outputs: `dets`"),
            "{e}"
        );
        // An 84-column (ultralytics-style) output, or a label list of the wrong length.
        let e = err(&input, &[port("output", &[1, 3549, 84])]);
        assert!(e.contains("[N, 3549, 85] (80 labels + 5"), "{e}");
        assert!(e.contains("family `yolox`"), "{e}");
        let mut fewer = m.clone();
        fewer.labels.truncate(79);
        let e = fewer.check_ports(&input, &output).unwrap_err().to_string();
        assert!(e.contains("79 labels"), "{e}");
    }
}

#[cfg(test)]
mod family_tests {
    use super::*;

    fn load(name: &str) -> ModelManifest {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../../models/{name}.toml"));
        ModelManifest::load(&path).unwrap()
    }

    fn port(name: &str, shape: &[i64]) -> ModelPort {
        ModelPort {
            name: name.into(),
            shape: Some(shape.to_vec()),
        }
    }

    #[test]
    fn every_family_checks_its_own_output_layout() {
        let input = [port("images", &[1, 3, 416, 416])];
        let v8 = load("yolox_nano_v8");
        assert_eq!(v8.model.family.name(), "yolov8");
        assert_eq!(v8.model.derived_from.as_deref(), Some("yolox_nano"));
        v8.check_ports(&input, &[port("output0", &[1, 84, 3549])])
            .unwrap();
        let e = v8
            .check_ports(&input, &[port("output0", &[1, 3549, 84])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("family `yolov8`") && e.contains("[N, 84, 3549]"),
            "{e}"
        );

        let nms = load("yolox_nano_nms");
        assert_eq!(nms.model.family.name(), "nms-inside");
        nms.check_ports(&input, &[port("detections", &[1, -1, 6])])
            .unwrap();
        let e = nms
            .check_ports(&input, &[port("detections", &[1, 100, 7])])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("family `nms-inside`") && e.contains("[N, K, 6]"),
            "{e}"
        );

        let dynamic = load("yolox_nano_dynamic");
        dynamic
            .check_ports(
                &[port("images", &[-1, 3, 416, 416])],
                &[port("output", &[-1, 3549, 85])],
            )
            .unwrap();
    }

    #[test]
    fn derived_models_name_both_parent_and_recipe_and_anchor_families_need_strides() {
        let mut text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/yolox_nano_v8.toml"),
        )
        .unwrap();
        text = text.replace("recipe = \"yolov8-layout\"\n", "");
        let dir = std::env::temp_dir().join(format!("skynet-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.toml");
        std::fs::write(&path, &text).unwrap();
        let e = ModelManifest::load(&path).unwrap_err().to_string();
        assert!(e.contains("`derived_from` and `recipe` go together"), "{e}");
        let text = text
            .replace("derived_from = \"yolox_nano\"\n", "")
            .replace("strides = [8, 16, 32]\n", "");
        std::fs::write(&path, &text).unwrap();
        let e = ModelManifest::load(&path).unwrap_err().to_string();
        assert!(e.contains("family `yolov8` needs `output.strides`"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
