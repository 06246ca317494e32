//! The saved state at start and at every commit.
//!
//! - At start: `PRAGMA quick_check`, then the `pipeline` row and the engine's rows (cells,
//!   incident ids) are read and restored. Anything unreadable (a damaged file, a row that is
//!   not JSON, another version, an inconsistent state) is [`PipelineError::State`]: nothing
//!   starts, since starting from nothing would leave the incidents that were open open
//!   downstream for ever. `skynet state recover` closes them and clears the state.
//! - The old layout (state version 1: the whole engine snapshot in the `pipeline` row) is
//!   still read, once: every row of it then counts as changed, so the first commit writes the
//!   rows and the small row of the new layout.
//! - At every commit: the small row, and only the engine rows changed since the last commit
//!   ([`changes`]).

use skynet_emit::{Outbox, StateChanges, StoredState};
use skynet_risk::state::{EngineRows, PipelineState};
use skynet_risk::{GridRiskEngine, RiskEngine};

use super::PipelineError;
use crate::config::PipelineConfig;

/// What a restart goes on from: the pipeline's small part and the engine, restored.
pub(crate) struct Restored {
    pub state: PipelineState,
    pub engine: Box<dyn RiskEngine>,
}

/// Reads and restores the saved state; `None` when there is none (a first start, or after
/// `skynet state recover`).
pub(crate) fn restore(
    config: &PipelineConfig,
    outbox: &Outbox,
) -> Result<Option<Restored>, PipelineError> {
    let unreadable = |cause: String| PipelineError::State {
        path: outbox.path().to_path_buf(),
        cause,
    };
    if let Some(problems) = outbox
        .quick_check()
        .map_err(|e| unreadable(e.to_string()))?
    {
        return Err(unreadable(format!("quick_check: {problems}")));
    }
    let stored = outbox
        .load_state_rows()
        .map_err(|e| unreadable(e.to_string()))?;
    if stored.is_empty() {
        return Ok(None);
    }
    let mut engine: Box<dyn RiskEngine> = Box::new(GridRiskEngine::new(
        config.risk.clone(),
        config.risk_context(),
    ));
    let state = read(stored, engine.as_mut()).map_err(unreadable)?;
    Ok(Some(Restored { state, engine }))
}

/// Parses the stored state and restores it into `engine` (a fresh one).
fn read(stored: StoredState, engine: &mut dyn RiskEngine) -> Result<PipelineState, String> {
    let Some(text) = stored.pipeline else {
        return Err(format!(
            "{} cell and {} id rows without the `pipeline` row that goes with them",
            stored.cells.len(),
            stored.ids.len()
        ));
    };
    let state = PipelineState::parse(&text).map_err(|e| format!("the `pipeline` row: {e}"))?;
    if state.version == PipelineState::VERSION_ONE_ROW {
        if !(stored.cells.is_empty() && stored.ids.is_empty()) {
            return Err("a state of the one-row layout beside rows of the new one".into());
        }
        engine.restore(&state.engine).map_err(|e| e.to_string())?;
        tracing::info!(
            "read a saved state of the one-row layout; the next commit writes it as rows"
        );
    } else {
        engine
            .restore_rows(&EngineRows {
                meta: state.engine.get().to_string(),
                cells: stored.cells,
                ids: stored.ids,
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(state)
}

/// The state to commit: `state` (whose `engine` is replaced by the engine's small part) and
/// the engine's rows changed since the last commit.
pub(crate) fn changes(engine: &mut dyn RiskEngine, mut state: PipelineState) -> StateChanges {
    let engine_changes = engine.take_changes();
    match serde_json::value::RawValue::from_string(engine_changes.meta) {
        Ok(meta) => state.engine = meta,
        // The engine writes its own JSON: this cannot happen. The rows still go out (they
        // must: the engine no longer counts them as changed); the next commit's small row
        // is right again.
        Err(e) => tracing::error!(error = %e, "the risk engine's state is not JSON"),
    }
    state.version = PipelineState::VERSION;
    let pipeline = serde_json::to_string(&state).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the pipeline state could not be serialised");
        String::new()
    });
    StateChanges {
        pipeline,
        cells: engine_changes.cells,
        ids: engine_changes.ids,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The demo's config (its outbox is not opened: the tests use one in memory).
    fn config() -> PipelineConfig {
        PipelineConfig::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo.toml"))
            .unwrap()
    }

    #[test]
    fn rows_round_trip_and_garbage_is_an_error_naming_the_file() {
        let config = config();
        let mut outbox = Outbox::open(Path::new(":memory:")).unwrap();
        assert!(restore(&config, &outbox).unwrap().is_none());
        let mut engine: Box<dyn RiskEngine> = Box::new(GridRiskEngine::new(
            config.risk.clone(),
            config.risk_context(),
        ));
        let empty = PipelineState {
            version: PipelineState::VERSION,
            cameras: Default::default(),
            rules: Default::default(),
            sensor_rules: Default::default(),
            engine: engine.snapshot(),
        };
        outbox
            .commit_state(&[], &changes(engine.as_mut(), empty))
            .unwrap();
        let restored = restore(&config, &outbox).unwrap().unwrap();
        assert_eq!(restored.engine.snapshot().get(), engine.snapshot().get());
        outbox
            .commit_state(
                &[],
                &StateChanges {
                    pipeline: "{not json".into(),
                    cells: Vec::new(),
                    ids: Vec::new(),
                },
            )
            .unwrap();
        let Err(e) = restore(&config, &outbox) else {
            panic!("garbage restored");
        };
        let message = e.to_string();
        assert!(message.contains(":memory:"), "{message}");
        assert!(message.contains("skynet state recover"), "{message}");
    }

    #[test]
    fn a_state_of_the_one_row_layout_is_read_once_and_written_as_rows() {
        let config = config();
        let mut engine = GridRiskEngine::new(config.risk.clone(), config.risk_context());
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let grid = skynet_core::GridId::new("G-0102");
        let leak = skynet_core::Observation {
            at,
            source: skynet_core::SourceRef::sensor(&skynet_core::DeviceId::new("gas-1")),
            grid: grid.clone(),
            category: "gas_leak".into(),
            weight: 1.0,
            confidence: 1.0,
            evidence: Default::default(),
        };
        engine.observe(&leak);
        assert_eq!(engine.open_incidents(), 1);
        let old = PipelineState {
            version: PipelineState::VERSION_ONE_ROW,
            cameras: Default::default(),
            rules: Default::default(),
            sensor_rules: Default::default(),
            engine: engine.snapshot(),
        };
        let mut outbox = Outbox::open(Path::new(":memory:")).unwrap();
        outbox
            .commit(&[], Some(&serde_json::to_string(&old).unwrap()))
            .unwrap();
        let mut restored = restore(&config, &outbox).unwrap().unwrap();
        assert_eq!(restored.engine.open_incidents(), 1);
        // The first commit writes every row, and the small row of the new layout.
        let first = changes(restored.engine.as_mut(), restored.state);
        assert_eq!(first.cells.len(), 1);
        assert_eq!(first.ids.len(), 1);
        outbox.commit_state(&[], &first).unwrap();
        let stored = outbox.load_state_rows().unwrap();
        let small = PipelineState::parse(stored.pipeline.as_deref().unwrap()).unwrap();
        assert_eq!(small.version, PipelineState::VERSION);
        let again = restore(&config, &outbox).unwrap().unwrap();
        assert_eq!(again.engine.snapshot().get(), engine.snapshot().get());
    }
}
