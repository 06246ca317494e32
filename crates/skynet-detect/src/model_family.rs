//! Model families: how a model's output tensor is laid out, and so checked and decoded.
//!
//! A manifest names its family (`[model] family = "yolox"`); each family is a kind of the
//! [`ModelFamilies`] component family, one module each ([`yolox`](crate::yolox),
//! [`yolov8`](crate::yolov8), [`nms_inside`](crate::nms_inside)), listed in [`register`].
//! A family has no keys of its own (its table is empty): what it reads is the manifest, so
//! its [`ModelFamily`] methods take the manifest. A new family is one module plus one line
//! in [`register`]; every registered family passes [`check_model_family`].

use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use serde::de::Error as _;
use skynet_core::{Detection, Erase, Registry};

use crate::decode::DecodeParams;
use crate::manifest::ModelManifest;
use crate::nms_inside::NmsInsideFamily;
use crate::preprocess::LetterboxGeometry;
use crate::yolov8::Yolov8Family;
use crate::yolox::YoloxFamily;

/// The model-family component family: kinds named by a manifest's `family`.
#[derive(Debug)]
pub struct ModelFamilies;

impl skynet_core::Family for ModelFamilies {
    const NAME: &'static str = "model family";
    type Context<'a> = ();
    type Validated = dyn ModelFamily;
}

impl<V: ModelFamily + 'static> Erase<V> for ModelFamilies {
    fn erase(validated: V) -> Arc<dyn ModelFamily> {
        Arc::new(validated)
    }
}

/// One model family: what it asks of a manifest, the output shape it expects, and its
/// decoder.
pub trait ModelFamily: std::fmt::Debug + Send + Sync {
    /// The `family` string (`nms-inside`).
    fn name(&self) -> &'static str;
    /// Checks the manifest keys the family depends on; the error is the reason shown.
    fn check_manifest(&self, _manifest: &ModelManifest) -> Result<(), String> {
        Ok(())
    }
    /// The number of values per output row.
    fn output_columns(&self, manifest: &ModelManifest) -> usize;
    /// Whether an output of `shape` (negative dimensions: left open by the model) fits the
    /// manifest; if not, what the manifest describes, for the message.
    fn check_output(&self, manifest: &ModelManifest, shape: &[i64]) -> Result<(), String>;
    /// The decoder for this manifest's model, made once per model.
    fn decoder(&self, manifest: &ModelManifest) -> Arc<dyn Decode>;
}

/// Decodes one model's output (see [`crate::decode`]).
pub trait Decode: std::fmt::Debug + Send + Sync {
    /// Output values per image, where the layout fixes it (`None` where the number of rows
    /// varies).
    fn values_per_image(&self) -> Option<usize>;
    /// The values of one image must be a whole number of these.
    fn row_len(&self) -> usize;
    /// Decodes the output of one image. Any values, of any length, give a result (values
    /// of the wrong length give none): the detector checks shapes before.
    fn decode(
        &self,
        output: &[f32],
        labels: &[String],
        params: &DecodeParams,
        geometry: LetterboxGeometry,
        source_size: (u32, u32),
    ) -> Vec<Detection>;
}

/// A dimension the model fixes must be the one the manifest expects.
pub fn agrees(dim: i64, expected: usize) -> bool {
    dim < 0 || dim as u64 == expected as u64
}

/// This crate's model families.
pub fn register(registry: &mut Registry) {
    registry
        .register::<ModelFamilies, YoloxFamily>()
        .register::<ModelFamilies, Yolov8Family>()
        .register::<ModelFamilies, NmsInsideFamily>();
}

/// This crate's families, for manifests (read by serde, with no registry at hand).
fn builtin() -> &'static (Registry, Vec<&'static str>) {
    static BUILTIN: OnceLock<(Registry, Vec<&'static str>)> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        let mut registry = Registry::default();
        register(&mut registry);
        let names = registry.names::<ModelFamilies>();
        (registry, names)
    })
}

/// A manifest's `family`: the family it names, found when the manifest is read.
#[derive(Clone)]
pub struct FamilyRef(Arc<dyn ModelFamily>);

impl FamilyRef {
    /// The family called `name`, if it is registered.
    pub fn named(name: &str) -> Option<Self> {
        let kind = builtin().0.kind::<ModelFamilies>(name)?;
        // A family's table is empty, so reading it fails only for a broken kind.
        kind.parse_example(&()).ok().map(Self)
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }
}

impl std::ops::Deref for FamilyRef {
    type Target = dyn ModelFamily;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl std::fmt::Debug for FamilyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for FamilyRef {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for FamilyRef {}

impl<'de> Deserialize<'de> for FamilyRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::named(&name).ok_or_else(|| D::Error::unknown_variant(&name, &builtin().1))
    }
}

/// A family's table: it has no keys.
macro_rules! family_without_keys {
    ($ty:ident, $kind:literal) => {
        #[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $ty {}

        impl skynet_core::Component<$crate::model_family::ModelFamilies> for $ty {
            const KIND: &'static str = $kind;
            const EXAMPLE: &'static str = "";
            type Validated = $ty;
            fn validate(self, _cx: &()) -> Result<$ty, skynet_core::FieldError> {
                Ok(self)
            }
        }
    };
}
pub(crate) use family_without_keys;

/// The checks every registered family passes, on a manifest of the family's shape (a
/// manifest with `output.strides`, whose `family` the suite sets to the kind): the
/// manifest passes the family's own checks; the decoder's rows are `output_columns` long
/// and a fixed-size output is whole rows; model output is outside input, so an output of
/// zeros, or of NaN, infinities and huge values, of any length, never panics and never
/// gives a detection.
pub fn check_model_family(
    kind: &skynet_core::Kind<ModelFamilies>,
    manifest: &ModelManifest,
) -> Result<(), String> {
    let name = kind.name;
    let family = FamilyRef::named(name)
        .ok_or_else(|| format!("model family `{name}`: not found by its name"))?;
    if family.name() != name {
        return Err(format!(
            "model family `{name}`: calls itself `{}`",
            family.name()
        ));
    }
    let mut manifest = manifest.clone();
    manifest.model.family = family.clone();
    family
        .check_manifest(&manifest)
        .map_err(|e| format!("model family `{name}`: refuses a manifest with strides: {e}"))?;
    let decoder = crate::BoxDecoder::for_manifest(&manifest);
    let row = decoder.row_len();
    if row == 0 || row != family.output_columns(&manifest) {
        return Err(format!(
            "model family `{name}`: rows of {row} values, but `output_columns` says {}",
            family.output_columns(&manifest)
        ));
    }
    let whole = decoder.values_per_image().unwrap_or(row * 16);
    if !whole.is_multiple_of(row) {
        return Err(format!(
            "model family `{name}`: {whole} values per image are not whole rows of {row}"
        ));
    }
    let params = DecodeParams::default();
    let geometry = LetterboxGeometry {
        scale: 1.0,
        resized_width: manifest.input.width,
        resized_height: manifest.input.height,
    };
    let size = (manifest.input.width, manifest.input.height);
    let garbage = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        1e30,
    ];
    for len in [0, 1, row - 1, row, whole - 1, whole, whole + 1] {
        let zeros = vec![0.0f32; len];
        let junk: Vec<f32> = (0..len).map(|i| garbage[i % garbage.len()]).collect();
        for (what, output) in [("zeros", zeros), ("NaN, infinities and huge values", junk)] {
            let found = decoder.decode(&output, &manifest.labels, &params, geometry, size);
            if !found.is_empty() {
                return Err(format!(
                    "model family `{name}`: {len} values of {what} gave {} detections",
                    found.len()
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_registered_families() {
        let mut registry = Registry::default();
        crate::register(&mut registry);
        assert_eq!(
            registry.names::<ModelFamilies>(),
            ["yolox", "yolov8", "nms-inside"]
        );
        for name in registry.names::<ModelFamilies>() {
            assert_eq!(FamilyRef::named(name).map(|f| f.name()), Some(name));
        }
        let e = toml::from_str::<std::collections::BTreeMap<String, FamilyRef>>("f = \"yolo\"")
            .unwrap_err();
        assert!(
            e.message().contains(
                "unknown variant `yolo`, expected one of `yolox`, `yolov8`, `nms-inside`"
            ),
            "{e}"
        );
    }

    #[test]
    fn every_registered_model_family_passes_the_suite() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/yolox_nano.toml");
        let manifest = ModelManifest::load(&path).unwrap();
        let mut registry = Registry::default();
        crate::register(&mut registry);
        for kind in registry.kinds::<ModelFamilies>() {
            if let Err(e) = check_model_family(kind, &manifest) {
                panic!("{e}");
            }
        }
    }
}
