//! Risk stage: where the grid cells are, how evidence raises a cell's risk, and when that
//! becomes an incident.
//!
//! - [`GridMap`] reads the city's grid cells from GeoJSON and places cameras and sensors.
//! - [`RiskEngine`] is the stage trait; [`GridRiskEngine`] fuses evidence per cell with
//!   exponential decay and runs each incident's lifecycle (opened, escalated, closed).

mod engine;
mod grid;

pub use engine::{GridRiskEngine, LevelThresholds, RiskConfig, RiskEngine};
pub use grid::{Grid, GridError, GridMap};
