//! Risk stage: where the grid cells are, how evidence raises a cell's risk, and when that
//! becomes an incident.
//!
//! - [`GridMap`] reads the city's grid cells from GeoJSON (with `geojson`, as `geo` shapes)
//!   and places cameras and sensors.
//! - [`RiskEngine`] is the stage trait; [`GridRiskEngine`] fuses evidence per cell with
//!   exponential decay and runs each incident's lifecycle (opened, escalated, updated, closed)
//!   on each camera's own event clock. Its state survives a restart through
//!   [`RiskEngine::snapshot`] and [`RiskEngine::restore`].

mod engine;
mod grid;
mod settings;

pub use engine::{
    DEVICE_FAULT_KIND, GridRiskEngine, LevelThresholds, RiskConfig, RiskEngine, RiskError,
};
pub use grid::{Grid, GridError, GridMap};
pub use settings::{LevelSettings, RiskSettings};
