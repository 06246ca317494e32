//! Risk stage: where the grid cells are, how evidence raises a cell's risk, and when that
//! becomes an incident.
//!
//! - [`GridMap`] reads the city's grid cells from GeoJSON (with `geojson`, as `geo` shapes)
//!   and places cameras and sensors.
//! - [`RiskEngine`] is the stage trait; [`GridRiskEngine`] turns [`skynet_core::Observation`]s
//!   from every source into one risk level per cell (saturating per category, capped at each
//!   category's ceiling, fused across kinds and by fusion rules, with hysteresis) and into
//!   incidents per cell and category with departments, deadlines and a lifecycle. It takes
//!   time only from its inputs, so a replay is exact. Its state survives a restart as rows:
//!   [`RiskEngine::take_changes`] gives the cells and incident ids changed since the last
//!   commit, [`RiskEngine::restore_rows`] reads them back; [`RiskEngine::snapshot`] and
//!   [`RiskEngine::restore`] take and restore the whole state at once.

pub mod case_status;
mod describe;
mod engine;
pub mod fusion_rules;
mod grid;
pub mod recorder;
mod settings;
pub mod state;

pub use describe::describe_metrics;
pub use engine::{
    DEVICE_FAULT_KIND, DeviceInfo, FUSION_KIND, GridRiskEngine, LevelThresholds, RiskConfig,
    RiskContext, RiskEngine, RiskError,
};
pub use fusion_rules::{FusionContext, FusionRuleFamily};
pub use grid::{CellInfo, Grid, GridError, GridMap};
pub use settings::{
    CategoryPolicy, Condition, FusionRule, FusionScope, FusionSettings, GridKindPolicy,
    LevelDeadlines, LevelSettings, RiskSettings,
};

/// Every component kind of the risk stage, for the binary's registry.
pub fn register(registry: &mut skynet_core::Registry) {
    fusion_rules::register(registry);
}
