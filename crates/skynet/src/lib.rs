//! The skynet application: reads a config, wires the stages together and runs them.
//!
//! - [`config`]: the TOML config, validated into a [`PipelineConfig`] with errors that name
//!   the file, line and column.
//! - [`pipeline`]: the threads and bounded queues from cameras to sinks.
//! - [`components`]: the registry of source, rule and sink kinds.
//! - [`paths`]: where set-up puts the runtime, models and media.
//! - [`memory`]: allocator settings that keep memory flat with many cameras.
//! - [`simulate`]: `skynet simulate sensors`, realistic MQTT sensor traffic.
//! - [`dead_letters`]: `skynet outbox dead-letters` and `skynet outbox replay`.
//! - [`false_alarms`]: `skynet outbox false-alarms`, the rates engineers tune against.
//! - [`replay`]: `skynet replay`, recorded observations through the risk engine.
//! - [`eval_cli`]: `skynet eval`, incidents scored against labelled events, and sweeps.
//! - [`sweep_cli`]: `skynet eval --sweep`, one `skynet eval` process per point of the grid.
//! - [`detect_cli`]: `skynet detect`, the detector and tracker on images and videos.
//! - [`users`]: `skynet users`, the console's users and API tokens.
//! - [`audit_cli`]: `skynet audit verify`, and the CLI's actor in the audit log.

pub mod audit_cli;
pub mod components;
pub mod config;
pub mod dead_letters;
mod describe;
pub mod detect_cli;
pub mod eval_cli;
pub mod false_alarms;
pub mod memory;
pub mod paths;
pub mod pipeline;
pub mod replay;
pub mod simulate;
pub mod sweep_cli;
pub mod users;

pub use config::PipelineConfig;
pub use describe::describe_metrics;
pub use pipeline::{PipelineError, ReloadOptions, RunOptions, RunSummary, Services};
pub use skynet_core::locate::ConfigError;
