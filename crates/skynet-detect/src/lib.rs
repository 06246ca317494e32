//! Detection stage: runs ONNX models through ONNX Runtime on frames, then applies each
//! camera's zones and rules to what was found.
//!
//! - [`manifest`]: what a model is (file, sha256, input layout, labels, post-processing family).
//! - [`runtime`]: finding and loading the ONNX Runtime shared library.
//! - [`preprocess`]: letterbox in; [`decode`] with one module per model family ([`yolox`],
//!   [`yolov8`], [`nms_inside`]): boxes out.
//! - [`detector`]: the [`Detector`] trait and its ONNX implementation.
//! - [`tracker`]: follows objects from frame to frame (ByteTrack-style), telling which stand still.
//! - [`zone`] and [`rules`]: per-camera polygons and lines, and the rules that turn tracks into
//!   evidence.

pub mod decode;
mod describe;
pub mod detector;
pub mod error;
pub mod filter;
pub mod interval;
pub mod manifest;
pub mod model_family;
pub mod nms_inside;
pub mod preprocess;
pub mod reorder;
pub mod rules;
pub mod runtime;
pub mod scheduler;
pub mod sensor_rules;
pub mod settings;
pub mod tracker;
pub mod yolov8;
pub mod yolox;
pub mod zone;

pub use decode::{BoxDecoder, DecodeParams};
pub use describe::describe_metrics;
pub use detector::{Detector, DetectorOptions, ExecutionProvider, OnnxDetector, TensorRtOptions};
pub use error::DetectError;
pub use filter::{ClassLimits, ClassLimitsTable, DetectionFilter, OwnerClasses};
pub use interval::{InferenceInterval, IntervalConfig};
pub use manifest::{ModelManifest, ModelPort};
pub use model_family::{ModelFamilies, ModelFamily};
pub use preprocess::ImageView;
pub use rules::{
    BuildRule, CameraRuleFamily, CameraRules, CrossingDirection, CrowdConfig, CrowdRule,
    DwellConfig, DwellRule, LineCrossingConfig, LineCrossingRule, Rule, RuleBuildContext,
    RuleContext, RuleHit, StationaryObjectConfig, StationaryObjectRule, ValidRule,
    ZoneIntrusionConfig, ZoneIntrusionRule, ZoneIntrusionSpec,
};
pub use runtime::OnnxRuntime;
pub use sensor_rules::{
    BuildSensorRule, Liveness, SENSOR_OFFLINE, SensorPlacement, SensorRuleContext,
    SensorRuleFamily, SensorRuleSettings, SensorRuleSpec, SensorRules,
};
pub use settings::{DetectPlan, DetectSettings, TensorRtSettings};
pub use tracker::{Tracker, TrackerSettings};
pub use zone::{Zone, ZoneError};

/// Every component kind of the detection stage, for the binary's registry.
pub fn register(registry: &mut skynet_core::Registry) {
    rules::register(registry);
    sensor_rules::register(registry);
    model_family::register(registry);
}
