//! `skynet replay`: recorded observations through the same risk engine as `skynet run`.
//!
//! The input is JSON Lines, one observation per line in the public JSON form
//! (`schemas/observation.schema.json`). The output is the CloudEvents the engine emits,
//! incident revisions (`skynet.incident.v1`) and cell level changes (`skynet.grid_risk.v1`),
//! one per line. The engine takes time only from its inputs, so the same config and input
//! always give the same output, ids included: engineers try a change of weights on a
//! recorded day before they make it.
//!
//! A recording holds observations, not the wall clock that ticked between them live. Its
//! times are taken as true: before each observation the engine's clock follows to its time
//! ([`GridRiskEngine::follow`], without the live step bound), so what went quiet or fell due
//! in a gap (a night) happens first, at its own time. Incidents then come out as live:
//! evidence after a gap opens a new incident once the old one's cooldown has passed.

use std::io::{BufRead, Write};

use skynet_emit::OutboxEvent;
use skynet_risk::{GridRiskEngine, RiskEngine};

use crate::PipelineConfig;

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub observations: u64,
    /// Lines that were not valid observations (each reported to `refused`).
    pub refused: u64,
    pub events: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the observations: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing the events: {0}")]
    Write(#[source] std::io::Error),
    #[error("an event could not be serialised: {0}")]
    Serialise(#[source] serde_json::Error),
}

/// Feeds every observation of `input` through a fresh engine built from `config`, writes
/// each event to `output`, and reports each refused line (its number and why) to `refused`.
/// At the end of the input the engine flushes what open incidents learned since their last
/// revision, as `skynet run` does when it stops.
pub fn replay(
    config: &PipelineConfig,
    input: impl BufRead,
    mut output: impl Write,
    mut refused: impl FnMut(usize, String),
) -> Result<ReplayReport, ReplayError> {
    let mut engine = GridRiskEngine::new(config.risk.clone(), config.risk_context());
    let mut report = ReplayReport::default();
    let emit = |events: Vec<skynet_core::RiskEvent>,
                output: &mut dyn Write,
                report: &mut ReplayReport|
     -> Result<(), ReplayError> {
        for event in events {
            let line = OutboxEvent::new(&config.risk.node, &event)
                .to_json()
                .map_err(ReplayError::Serialise)?;
            writeln!(output, "{line}").map_err(ReplayError::Write)?;
            report.events += 1;
        }
        Ok(())
    };
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line = line.map_err(ReplayError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let mut observation: skynet_core::Observation = match serde_json::from_str(&line) {
            Ok(o) => o,
            Err(e) => {
                report.refused += 1;
                refused(number, format!("not an observation: {e}"));
                continue;
            }
        };
        let known = observation.validate().and_then(|()| {
            config
                .grids
                .cell(observation.grid.as_str())
                .ok_or_else(|| format!("unknown grid `{}`", observation.grid))
        });
        match known {
            // The cell's own id (an H3 index in any case becomes the map's lower case), as
            // the pipeline's devices have it.
            Ok(cell) => observation.grid = cell.id,
            Err(reason) => {
                report.refused += 1;
                refused(number, reason);
                continue;
            }
        }
        report.observations += 1;
        engine.follow(observation.at);
        let events = engine.observe(&observation);
        emit(events, &mut output, &mut report)?;
    }
    let events = engine.flush();
    emit(events, &mut output, &mut report)?;
    output.flush().map_err(ReplayError::Write)?;
    Ok(report)
}

/// `skynet replay --config NEW --compare OLD OBSERVATIONS`: the incidents the new config
/// would add, drop or change in level. (Skeleton: filled in by the what-if work.)
pub fn compare_cli(
    new: &std::path::Path,
    old: &std::path::Path,
    observations: &std::path::Path,
) -> anyhow::Result<std::process::ExitCode> {
    let _ = (new, old, observations);
    anyhow::bail!("skynet replay --compare: not built yet")
}
