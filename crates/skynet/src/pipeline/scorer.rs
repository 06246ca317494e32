//! The scorer role (`skynet run --role scorer`): grid cells owned by rendezvous hashing over
//! the live scorers, their evidence read from the bus, their state kept in KV for a
//! successor.
//!
//! ```text
//!  SKYNET_OBSERVATIONS ─► intake task (tokio): ordered consumer over `>`, keeps owned cells
//!        (ordered)          and their neighbours ─► bounded channel ─► rules + risk stage
//!  skynet_members ─► view of the scorers ─► ownership; a change: Rebuild through the same
//!        channel (so it lands between the old consumer's last message and the new one's first)
//!  rules + risk ─► commit (outbox) ─► cell saver thread ─► KV skynet_cells `cell.<grid>`
//!                                     (once every sink has delivered what the commit held)
//! ```
//!
//! - Ownership: the config's cells, [`skynet_cluster::Assignments`] over the live scorers.
//!   Observations of neighbours of owned cells are fed to the engine too (a fusion rule over
//!   neighbours works across scorer borders), but nothing is emitted for a cell this scorer
//!   does not own ([`ScorerCells::keep_owned`]) and no state of such a cell is saved.
//! - Cell state: after each commit, each owned cell whose rows (its cell row, its incident id
//!   rows) or applied stream sequence changed is saved as a [`CellRecord`]: the stream
//!   sequence applied for that cell, the engine's small global part, and the rows. It is
//!   saved only once every sink has delivered the revisions committed with it, so a
//!   successor re-emits (same ids: incident ids are deterministic and the cluster's name
//!   names them) what a dead scorer had not delivered; the NATS sink's `Nats-Msg-Id` (the
//!   CloudEvent id) dedups the re-emission in SKYNET_INCIDENTS.
//! - Failover: when ownership changes the stage rebuilds a fresh engine from the rows of
//!   the cells it owns now: its own latest rows for the cells it keeps, the KV's for the
//!   cells it takes, and the consumer restarts from the lowest point any of them needs
//!   (each cell skips what it has applied already).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use skynet_cluster::bus::{OBSERVATIONS_PREFIX, READINGS_PREFIX, cell_key};
use skynet_cluster::{Assignments, Role};
use skynet_core::{GridId, Observation, RiskEvent, Shutdown};
use skynet_emit::{CaseFeedback, StateChanges};
use skynet_risk::RiskEngine;
use skynet_risk::state::EngineRows;

use super::PipelineError;
use super::cluster::ClusterNode;
use super::sensors::{BusProgress, SensorRulesState};
use crate::config::PipelineConfig;

/// What the intake hands the rules-and-risk stage, in stream order.
#[derive(Debug)]
pub(crate) enum BusInput {
    /// An observation of an owned cell or of a neighbour of one, with its stream sequence.
    Observation {
        seq: u64,
        observation: Box<Observation>,
    },
    /// Everything of the stream up to `seq` that concerns this scorer has been handed on
    /// (the intake's `mark`-th position; the readings' stage gets the same): once the sensor
    /// stage has passed it too, committed and delivered, the scorer's floor (see [`Floor`]).
    Position { mark: u64, seq: u64 },
    /// Ownership changed: rebuild the engine for `owned`, taking `taken` (cells newly owned,
    /// as the KV had them; a cell the KV has nothing of starts empty). Positions up to
    /// `mark` concern the cells owned before.
    Rebuild {
        owned: BTreeSet<String>,
        taken: BTreeMap<String, CellRecord>,
        mark: u64,
    },
}

/// One cell's saved state in KV `skynet_cells` (`cell.<grid>`): the stream sequences applied
/// for it (its observations', its readings'), the engine's small global part (version,
/// node, clock), the engine's rows of the cell, and the memory of its sensors' rules. Its
/// JSON is read by other scorers (other builds in a rolling upgrade): fields change only
/// with care.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct CellRecord {
    /// The last SKYNET_OBSERVATIONS sequence whose observation for this cell the rows hold.
    pub seq: u64,
    /// The last sequence up to which every reading of this cell is in the rows and in
    /// `sensors` (a reading goes through the sensor stage first, so this may trail `seq`).
    /// `None`: a record of a build before readings had their own (`seq` counts for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readings: Option<u64>,
    /// The engine's meta row (`EngineRows::meta`) at the save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<String>,
    /// The cell's row (`None`: the engine holds nothing of the cell, or forgot it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<String>,
    /// The cell's incident-id rows, by key (the IncidentKey JSON).
    #[serde(default)]
    pub ids: BTreeMap<String, String>,
    /// The rules' memory of each of the cell's sensors that has some (a `for_s` streak, a
    /// rate window, flapping history), by sensor: a successor's sensor rules go on from it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sensors: BTreeMap<String, SensorRulesState>,
}

impl CellRecord {
    /// The sequence up to which the cell's readings are applied.
    pub(crate) fn readings_seq(&self) -> u64 {
        self.readings.unwrap_or(self.seq)
    }
}

/// A scorer's floor in KV `skynet_cells` (`scorer.<node>`): every cell in `cells` has its
/// state saved as of stream sequence `seq` (a cell without messages since its saved record
/// included). A successor taking one of these cells starts after the higher of the cell's
/// own saved sequence and the floor, so a quiet cell (never saved, or saved long ago) does
/// not make it replay the stream from its start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Floor {
    pub seq: u64,
    pub cells: Vec<String>,
}

/// The KV key of a scorer's floor.
fn floor_key(node: &str) -> String {
    format!("scorer.{node}")
}

/// What the saver gets of one stored commit.
#[derive(Debug)]
struct Stored {
    saves: Vec<(String, CellRecord)>,
    /// Events the commit stored with them (delivered first), and those of the commits
    /// folded into it: for the log when they are not delivered in time.
    events: usize,
    floor: Option<Floor>,
}

/// The owned cells whose records a commit changed (and the floor it reached), handed to the
/// saver once the commit is stored ([`CellSaves::stored`], called by the commit stage).
#[derive(Debug)]
pub(crate) struct CellSaves {
    stored: Stored,
    to: crossbeam_channel::Sender<Stored>,
}

impl CellSaves {
    /// The commit is stored in the outbox: the saver may write these once it is delivered.
    pub(crate) fn stored(self) {
        // Err: the saver has gone (shutdown); the successor replays from the last save.
        let _ = self.to.send(self.stored);
    }
}

/// The cluster's grid cells, as items of the assignment.
fn cell_ids(config: &PipelineConfig) -> Vec<String> {
    config.grids.ids()
}

/// The grid of a subject `<prefix>.<grid>[.<rest>]`.
fn subject_grid<'a>(subject: &'a str, prefix: &str) -> Option<(&'a str, Option<&'a str>)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    match rest.split_once('.') {
        Some((grid, tail)) => Some((grid, Some(tail))),
        None => Some((rest, None)),
    }
}

/// The incidents a cell's row holds (open, and closed within the cooldown): their ids. The
/// row is the engine's persisted JSON (`open` and `closed`: `[key, {"incident": {...}}]`
/// pairs); incident ids are UUIDs, so the cell cannot be read from the id itself.
fn incidents_of(cell: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(cell) else {
        return Vec::new();
    };
    ["open", "closed"]
        .iter()
        .filter_map(|k| value.get(*k)?.as_array())
        .flatten()
        .filter_map(|pair| pair.get(1)?.get("incident")?.get("id")?.as_str())
        .map(str::to_string)
        .collect()
}

/// The grid of an incident-id row's key (the IncidentKey JSON: `{"grid": ...}`).
fn id_row_grid(key: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Key {
        grid: String,
    }
    serde_json::from_str::<Key>(key).ok().map(|k| k.grid)
}

/// The engine meta's clock, to pick the latest of several.
fn meta_clock(meta: &str) -> Option<DateTime<Utc>> {
    #[derive(Deserialize)]
    struct Clock {
        clock: Option<DateTime<Utc>>,
    }
    serde_json::from_str::<Clock>(meta)
        .ok()
        .and_then(|c| c.clock)
}

fn refused(kind: &'static str) {
    metrics::counter!("skynet_bus_refused_total", "kind" => kind).increment(1);
}

/// The rules-and-risk stage's side: which cells it owns, what it applied of each, and the
/// latest rows of each (the mirror a commit updates and a rebuild restores from).
pub(crate) struct ScorerCells {
    owned: BTreeSet<String>,
    /// Each owned cell's record as of the last commit, with the sequence applied since.
    cells: BTreeMap<String, CellRecord>,
    /// Owned cells changed since the last commit.
    dirty: BTreeSet<String>,
    /// The engine's meta row at the last commit.
    meta: Option<String>,
    saver: crossbeam_channel::Sender<Stored>,
    /// The intake's last [`BusInput::Position`] since the rebuild (`(mark, seq)`), the
    /// last the sensor stage passed (`readings`: only with a sensor stage, whose readings
    /// must be covered too), and whether the next commit carries the floor.
    position: Option<(u64, u64)>,
    sensor_position: Option<(u64, u64)>,
    readings: bool,
    /// Positions up to this mark concern the cells owned before the last rebuild.
    rebuilt_at: u64,
    floor_due: bool,
    /// Each configured sensor's cell: its rules' memory is saved with it.
    sensor_grids: BTreeMap<String, String>,
    /// Makes a fresh engine (a rebuild).
    new_engine: Box<dyn Fn() -> Box<dyn RiskEngine> + Send>,
    lag: BTreeMap<String, metrics::Gauge>,
    applied: metrics::Counter,
    /// Each owned cell's incident ids, and all of them for the case-status filter.
    incidents_by_cell: BTreeMap<String, Vec<String>>,
    incidents: Arc<RwLock<HashSet<String>>>,
}

impl ScorerCells {
    pub(crate) fn is_owned(&self, grid: &str) -> bool {
        self.owned.contains(grid)
    }

    /// Whether to apply message `seq` of `grid`: a neighbour's always (its state is not
    /// this scorer's to keep), an owned cell's only past what it applied.
    pub(crate) fn accept(&mut self, seq: u64, grid: &str) -> bool {
        let Some(record) = self.cells.get_mut(grid) else {
            return !self.owned.contains(grid);
        };
        if seq <= record.seq {
            return false;
        }
        record.seq = seq;
        self.dirty.insert(grid.to_string());
        true
    }

    /// An observation of an owned cell goes to the engine: counted in
    /// `skynet_bus_applied_total{kind="observation"}` (a message replayed after a handover
    /// counts again), and logged at debug with its stream sequence, so an audit (or a test)
    /// can tell which messages were applied, each once, against what the edges published.
    pub(crate) fn applied(&self, seq: u64, grid: &str) {
        self.applied.increment(1);
        tracing::debug!(seq, grid, "bus observation applied");
    }

    /// The intake has handed on everything up to `seq`: the next commit carries the floor
    /// (once the sensor stage has passed it too).
    pub(crate) fn position(&mut self, mark: u64, seq: u64) {
        if mark > self.rebuilt_at {
            self.position = Some((mark, seq));
            self.floor_due = true;
        }
    }

    /// A sensor stage checkpoint: the memory of the rules that changed goes with their
    /// sensors' cells, and each cell's readings are applied up to the sequence it covers
    /// (the evidence it sent before is in the engine now, the next commit holds it).
    pub(crate) fn sensor_checkpoint(
        &mut self,
        rules: &[(String, SensorRulesState)],
        bus: BusProgress,
    ) {
        for (sensor, state) in rules {
            let Some(record) = self
                .sensor_grids
                .get(sensor)
                .and_then(|grid| self.cells.get_mut(grid))
            else {
                continue;
            };
            let changed = if state.is_empty() {
                record.sensors.remove(sensor).is_some()
            } else {
                record
                    .sensors
                    .insert(sensor.clone(), state.clone())
                    .as_ref()
                    != Some(state)
            };
            if changed && let Some(grid) = self.sensor_grids.get(sensor) {
                self.dirty.insert(grid.clone());
            }
        }
        for (grid, seq) in bus.cells {
            if let Some(record) = self.cells.get_mut(&grid)
                && seq > record.readings_seq()
            {
                record.readings = Some(seq);
                self.dirty.insert(grid);
            }
        }
        if let Some((mark, seq)) = bus.position
            && mark > self.rebuilt_at
        {
            self.sensor_position = Some((mark, seq));
            self.floor_due = true;
        }
    }

    /// How far the floor may go: the intake's last position that both the bus's path and
    /// (with sensors) the sensor stage's have passed.
    fn reached(&self) -> Option<u64> {
        if !self.readings {
            return self.position.map(|(_, seq)| seq);
        }
        match (self.position, self.sensor_position) {
            (Some(bus), Some(sensors)) => Some(if bus.0 <= sensors.0 { bus.1 } else { sensors.1 }),
            _ => None,
        }
    }

    /// `skynet_cluster_observation_lag_seconds{grid}`: how far behind the observation's
    /// own time its cell's evidence is applied.
    pub(crate) fn record_lag(&mut self, grid: &str, at: DateTime<Utc>) {
        let lag = (Utc::now() - at).num_milliseconds() as f64 / 1000.0;
        self.lag
            .entry(grid.to_string())
            .or_insert_with(|| {
                metrics::gauge!("skynet_cluster_observation_lag_seconds", "grid" => grid.to_string())
            })
            .set(lag.max(0.0));
    }

    /// Drops the revisions of cells this scorer does not own (neighbours fed for fusion).
    pub(crate) fn keep_owned(&self, events: &mut Vec<RiskEvent>) {
        events.retain(|e| {
            let grid: &GridId = match e {
                RiskEvent::Incident(i) => &i.grid,
                RiskEvent::GridRisk(g) => &g.grid,
                // A node's own, never a cell's.
                RiskEvent::PatrolRound(_) => return true,
            };
            self.owned.contains(grid.as_str())
        });
    }

    /// Takes a commit's state changes into the mirror; returns the owned cells to save once
    /// the commit is stored.
    pub(crate) fn record(&mut self, state: &StateChanges, events: usize) -> Option<CellSaves> {
        #[derive(Deserialize)]
        struct Small<'a> {
            #[serde(borrow)]
            engine: &'a serde_json::value::RawValue,
        }
        match serde_json::from_str::<Small<'_>>(&state.pipeline) {
            Ok(small) => self.meta = Some(small.engine.get().to_string()),
            Err(e) => tracing::error!(error = %e, "the pipeline state has no engine part"),
        }
        let mut reindex = false;
        for (grid, body) in &state.cells {
            if let Some(record) = self.cells.get_mut(grid) {
                record.cell = body.clone();
                self.dirty.insert(grid.clone());
                let ids = body.as_deref().map(incidents_of).unwrap_or_default();
                self.incidents_by_cell.insert(grid.clone(), ids);
                reindex = true;
            }
        }
        if reindex {
            self.publish_incidents();
        }
        for (key, body) in &state.ids {
            let Some(grid) = id_row_grid(key) else {
                continue;
            };
            if let Some(record) = self.cells.get_mut(&grid) {
                match body {
                    Some(body) => record.ids.insert(key.clone(), body.clone()),
                    None => record.ids.remove(key),
                };
                self.dirty.insert(grid);
            }
        }
        let floor = match (self.floor_due, self.reached()) {
            (true, Some(seq)) => Some(Floor {
                seq,
                cells: self.owned.iter().cloned().collect(),
            }),
            _ => None,
        };
        self.floor_due = false;
        if self.dirty.is_empty() && floor.is_none() {
            return None;
        }
        let saves = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter_map(|grid| {
                let mut record = self.cells.get(&grid)?.clone();
                record.meta.clone_from(&self.meta);
                Some((grid, record))
            })
            .collect();
        Some(CellSaves {
            stored: Stored {
                saves,
                events,
                floor,
            },
            to: self.saver.clone(),
        })
    }

    /// A fresh engine for `owned`: the cells kept from the mirror (committed just before),
    /// the cells taken from `taken`. A row that does not restore is logged and its cell
    /// starts empty; the others go on.
    pub(crate) fn rebuild(
        &mut self,
        owned: BTreeSet<String>,
        taken: BTreeMap<String, CellRecord>,
        mark: u64,
    ) -> Box<dyn RiskEngine> {
        let mut cells: BTreeMap<String, CellRecord> = BTreeMap::new();
        for grid in &owned {
            let record = match (self.cells.remove(grid), taken.get(grid)) {
                (Some(kept), _) => kept,
                (None, Some(saved)) => saved.clone(),
                (None, None) => CellRecord {
                    readings: Some(0),
                    ..CellRecord::default()
                },
            };
            cells.insert(grid.clone(), record);
        }
        let dropped = self.cells.len();
        // The latest clock of the engine and of the records taken over.
        let meta = self
            .meta
            .iter()
            .chain(cells.values().filter_map(|r| r.meta.as_ref()))
            .max_by_key(|m| meta_clock(m))
            .cloned();
        let mut engine = (self.new_engine)();
        if let Some(meta) = &meta {
            let rows = |cells: &BTreeMap<String, CellRecord>| EngineRows {
                meta: meta.clone(),
                cells: cells
                    .iter()
                    .filter_map(|(g, r)| Some((g.clone(), r.cell.clone()?)))
                    .collect(),
                ids: cells
                    .values()
                    .flat_map(|r| r.ids.iter().map(|(k, v)| (k.clone(), v.clone())))
                    .collect(),
            };
            if let Err(e) = engine.restore_rows(&rows(&cells)) {
                tracing::error!(error = %e, "the cells' saved rows do not restore together; restoring them one by one");
                engine = (self.new_engine)();
                let mut good = BTreeMap::new();
                for (grid, record) in &cells {
                    let mut one = (self.new_engine)();
                    let single = BTreeMap::from([(grid.clone(), record.clone())]);
                    match one.restore_rows(&rows(&single)) {
                        Ok(()) => {
                            good.insert(grid.clone(), record.clone());
                        }
                        Err(e) => {
                            tracing::error!(grid = %grid, error = %e, "a cell's saved state does not restore; it starts empty")
                        }
                    }
                }
                if let Err(e) = engine.restore_rows(&rows(&good)) {
                    tracing::error!(error = %e, "the cells' saved rows do not restore; starting empty");
                    engine = (self.new_engine)();
                }
            }
        }
        tracing::info!(
            owned = owned.len(),
            taken = taken.len(),
            dropped,
            open_incidents = engine.open_incidents(),
            "scorer cells rebuilt"
        );
        self.incidents_by_cell = cells
            .iter()
            .map(|(g, r)| {
                (
                    g.clone(),
                    r.cell.as_deref().map(incidents_of).unwrap_or_default(),
                )
            })
            .collect();
        self.cells = cells;
        self.owned = owned;
        self.dirty.clear();
        self.meta = meta;
        // Positions from before concern the cells owned before.
        self.position = None;
        self.sensor_position = None;
        self.rebuilt_at = self.rebuilt_at.max(mark);
        self.floor_due = false;
        self.publish_incidents();
        engine
    }

    /// The incident ids of the owned cells, for the case-status filter.
    fn publish_incidents(&self) {
        let all: HashSet<String> = self.incidents_by_cell.values().flatten().cloned().collect();
        *self
            .incidents
            .write()
            .unwrap_or_else(PoisonError::into_inner) = all;
    }
}

/// The intake's channel, for the rules-and-risk stage.
pub(crate) struct BusIntake {
    pub(crate) rx: crossbeam_channel::Receiver<BusInput>,
    pub(crate) cells: ScorerCells,
}

/// What runs for the scorer beside the stages.
pub(crate) struct Scorer {
    intake: tokio::task::JoinHandle<()>,
    saver: Option<JoinHandle<()>>,
    /// The cells owned now.
    #[allow(dead_code)] // for /readyz and the console's view of the cluster
    pub(crate) owned: Arc<RwLock<BTreeSet<String>>>,
    /// The incidents of the owned cells (open, or closed within the cooldown), as of the
    /// last commit: the case-status filter keeps the status events of these.
    pub(crate) incidents: Arc<RwLock<HashSet<String>>>,
}

impl Scorer {
    /// Stops the intake; waits (bounded) for the saver to write what was delivered. Call
    /// once the commit stage has ended.
    pub(crate) fn stop(mut self) {
        self.intake.abort();
        if let Some(saver) = self.saver.take() {
            let _ = saver.join();
        }
    }
}

/// How many inputs wait for the rules-and-risk stage at most (the intake waits beyond).
const BUS_QUEUE: usize = 4096;
/// A position goes to the stage at least every this many messages (and when quiet).
const POSITION_EVERY: usize = 1024;
/// How long the saver waits at shutdown for the sinks to deliver what was committed.
const SAVE_DRAIN: Duration = Duration::from_secs(10);

/// Starts the scorer: the intake task and the cell saver. Returns them and the stage's side.
pub(crate) fn start(
    config: &PipelineConfig,
    node: &ClusterNode,
    shutdown: &Shutdown,
    readings: Option<super::readings::BusReadings>,
) -> Result<(Scorer, BusIntake), PipelineError> {
    if cell_ids(config).is_empty() {
        // H3 cells are not listed: nothing to share by rendezvous (yet).
        return Err(PipelineError::Cluster(format!(
            "a scorer shares the grid's listed cells, and [grids] has none ({}): use a grid \
             file of polygon cells",
            config.grids.describe()
        )));
    }
    let cluster_err = |e: skynet_cluster::ClusterError| PipelineError::Cluster(e.to_string());
    let (stream, kv) = node.runtime.block_on(async {
        let stream = skynet_cluster::bus::observation_stream(&node.client, &config.cluster)
            .await
            .map_err(cluster_err)?;
        let kv = skynet_cluster::bus::cells_bucket(&node.client, &config.cluster)
            .await
            .map_err(cluster_err)?;
        Ok::<_, PipelineError>((stream, kv))
    })?;
    let (tx, rx) = crossbeam_channel::bounded(BUS_QUEUE);
    // Unbounded on purpose, yet bounded in practice: the saver takes everything waiting
    // before each round of KV writes and folds it per cell (`enqueue`), so what waits here
    // is at most the commits of one round. A bounded queue would either stall the commit
    // stage while KV is slow, or have to drop a save, which a later floor would then claim
    // as written (a successor would skip that cell's observations).
    let (save_tx, save_rx) = crossbeam_channel::unbounded();
    let with_readings = readings.is_some();
    let owned = Arc::new(RwLock::new(BTreeSet::new()));
    let intake = Intake {
        node: node.membership.node().to_string(),
        view: node.membership.view(Role::Scorer),
        items: cell_ids(config),
        grids: Arc::clone(&config.grids),
        stream,
        kv: kv.clone(),
        tx,
        readings,
        skip_readings: BTreeMap::new(),
        marks: 0,
        owned: Arc::clone(&owned),
        shutdown: shutdown.clone(),
    };
    let intake = node.runtime.spawn(intake.run());
    let saver = Saver {
        node: node.membership.node().to_string(),
        kv,
        runtime: node.runtime.clone(),
        outbox: config.outbox.clone(),
        sinks: config.sinks.iter().map(|s| s.name.clone()).collect(),
        owned: Arc::clone(&owned),
    };
    let saver = std::thread::Builder::new()
        .name("cell-saver".into())
        .spawn(move || saver.run(&save_rx))
        .map_err(|source| PipelineError::Spawn {
            stage: "cell-saver".into(),
            source,
        })?;
    let (risk, context) = (config.risk.clone(), config.risk_context());
    let incidents = Arc::new(RwLock::new(HashSet::new()));
    let cells = ScorerCells {
        owned: BTreeSet::new(),
        cells: BTreeMap::new(),
        dirty: BTreeSet::new(),
        meta: None,
        saver: save_tx,
        position: None,
        sensor_position: None,
        readings: with_readings,
        rebuilt_at: 0,
        floor_due: false,
        sensor_grids: config
            .sensors
            .iter()
            .map(|s| (s.spec.id.to_string(), s.placement.grid.to_string()))
            .collect(),
        new_engine: Box::new(move || {
            Box::new(skynet_risk::GridRiskEngine::new(
                risk.clone(),
                context.clone(),
            )) as Box<dyn RiskEngine>
        }),
        lag: BTreeMap::new(),
        applied: metrics::counter!("skynet_bus_applied_total", "kind" => "observation"),
        incidents_by_cell: BTreeMap::new(),
        incidents: Arc::clone(&incidents),
    };
    Ok((
        Scorer {
            intake,
            saver: Some(saver),
            owned,
            incidents,
        },
        BusIntake { rx, cells },
    ))
}

/// The intake task's parts.
struct Intake {
    node: String,
    view: tokio::sync::watch::Receiver<skynet_cluster::View>,
    items: Vec<String>,
    grids: Arc<skynet_risk::GridMap>,
    stream: jetstream::stream::Stream,
    kv: jetstream::kv::Store,
    tx: crossbeam_channel::Sender<BusInput>,
    /// Where readings of owned cells go (the sensor stage, `readings.rs`); `None` without
    /// `[mqtt]` sensors in the config.
    readings: Option<super::readings::BusReadings>,
    /// Each owned cell's readings at or below this were applied already: by the cell's
    /// previous owner (a taken cell's saved sequence for readings) or handed to this
    /// scorer's sensor stage before a rebuild (a kept cell). Observations are skipped so
    /// in the stage, with the rows.
    skip_readings: BTreeMap<String, u64>,
    /// Positions handed on so far (each a mark: see [`BusInput::Position`]).
    marks: u64,
    owned: Arc<RwLock<BTreeSet<String>>>,
    shutdown: Shutdown,
}

type Messages = jetstream::consumer::pull::Ordered;

/// Hands `input` to the stage, waiting while its queue is full (never dropping); false once
/// the stage has gone.
async fn send(tx: &crossbeam_channel::Sender<BusInput>, mut input: BusInput) -> bool {
    loop {
        match tx.try_send(input) {
            Ok(()) => return true,
            Err(crossbeam_channel::TrySendError::Full(back)) => {
                input = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => return false,
        }
    }
}

impl Intake {
    async fn run(mut self) {
        let mut assignments =
            Assignments::new(self.node.clone(), Role::Scorer, self.items.iter().cloned());
        let mut owned: BTreeSet<String> = BTreeSet::new();
        // The cells of the last rebuild handed on (`owned` is emptied to force a new one
        // when the consumer fails; the stage and the sensor stage still hold these).
        let mut held: BTreeSet<String> = BTreeSet::new();
        let mut watched: BTreeSet<String> = BTreeSet::new();
        let mut messages: Option<Messages> = None;
        // The last sequence handed on: a restart for a rebuild goes on after it.
        let mut last: u64 = 0;
        let mut unrouted_logged = false;
        // The last position sent to the stage, and messages read since.
        let (mut sent, mut since) = (0u64, 0usize);
        // The scorers of the last view: a cell taken now was one of theirs.
        let mut before: Vec<String> = Vec::new();
        // The first view: the member watch has read the bucket.
        let mut view_changed = true;
        loop {
            if self.shutdown.is_triggered() {
                return;
            }
            if view_changed {
                view_changed = false;
                let view = self.view.borrow_and_update().clone();
                // Not (yet) a live member as this node sees it: it owns nothing.
                let mine: BTreeSet<String> = assignments.update(&view).into_iter().collect();
                // Whose floors may cover the cells taken: the scorers seen before, those
                // now, and those that vanished (this node's own, after a restart).
                let previous: BTreeSet<String> = before
                    .iter()
                    .chain(&view.members)
                    .chain(&view.crashed)
                    .cloned()
                    .collect();
                if mine == owned && (messages.is_some() || mine.is_empty()) {
                    before.clone_from(&view.members);
                } else {
                    messages = None;
                    match self.rebuild(&owned, &mine, last, &previous).await {
                        Some((start, taken)) => {
                            // What the consumers so far handed on (of the cells kept).
                            let handed = if held.is_empty() { 0 } else { last };
                            before.clone_from(&view.members);
                            // The new consumer's messages from here on.
                            last = start - 1;
                            sent = last;
                            owned = mine;
                            watched = owned
                                .iter()
                                .flat_map(|g| self.grids.neighbours(g))
                                .map(|g| g.to_string())
                                .chain(owned.iter().cloned())
                                .collect();
                            *self.owned.write().unwrap_or_else(PoisonError::into_inner) =
                                owned.clone();
                            // A kept cell's readings up to `handed` went to the sensor stage
                            // already (the new consumer may start before that, for a taken
                            // cell): not again.
                            self.skip_readings.retain(|g, _| owned.contains(g));
                            for grid in owned.intersection(&held) {
                                let skip = self.skip_readings.entry(grid.clone()).or_default();
                                *skip = (*skip).max(handed);
                            }
                            // Cells new to the stages (the stage keeps its own rows of the
                            // others, and the sensor stage their rules' memory).
                            let fresh: BTreeMap<&String, &CellRecord> =
                                taken.iter().filter(|(g, _)| !held.contains(*g)).collect();
                            for (grid, record) in &fresh {
                                self.skip_readings
                                    .insert((*grid).clone(), record.readings_seq());
                            }
                            if let Some(readings) = &self.readings {
                                if readings
                                    .own_cells(Some(owned.iter().cloned().collect()))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                                // The taken cells' sensors go on from their saved memory,
                                // before any of their replayed readings.
                                if !fresh.is_empty()
                                    && readings
                                        .restore(
                                            fresh.keys().map(|g| (*g).clone()).collect(),
                                            fresh
                                                .values()
                                                .flat_map(|r| r.sensors.clone())
                                                .collect(),
                                        )
                                        .await
                                        .is_err()
                                {
                                    return;
                                }
                            }
                            drop(fresh);
                            held.clone_from(&owned);
                            if !send(
                                &self.tx,
                                BusInput::Rebuild {
                                    owned: owned.clone(),
                                    taken,
                                    mark: self.marks,
                                },
                            )
                            .await
                            {
                                return;
                            }
                            if !owned.is_empty() {
                                messages = self.consume(start).await;
                                if messages.is_none() {
                                    // Retried on the next view tick.
                                    owned.clear();
                                }
                            }
                        }
                        None => {
                            // The KV could not be read: tried again shortly.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            view_changed = true;
                            continue;
                        }
                    }
                }
            }
            let next = async {
                match &mut messages {
                    Some(m) => m.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.view.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    view_changed = true;
                }
                message = next => match message {
                    Some(Ok(message)) => {
                        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
                        last = last.max(seq);
                        if !self.take(&message, seq, &owned, &watched, &mut unrouted_logged).await {
                            return;
                        }
                        since += 1;
                        if since >= POSITION_EVERY && last > sent {
                            (sent, since) = (last, 0);
                            if !self.position(last).await {
                                return;
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "the observation stream's consumer failed; starting it again");
                        messages = None;
                        view_changed = true;
                        owned.clear();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    None => {
                        messages = None;
                        view_changed = true;
                        owned.clear();
                    }
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    // Quiet: where the stream is, for the floor.
                    if messages.is_some() && last > sent {
                        (sent, since) = (last, 0);
                        if !self.position(last).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The cells taken (newly owned) as the KV has them, and where the consumer starts:
    /// after what was handed on (for the cells kept), or after the lowest point a taken
    /// cell's state is saved at: its own record's sequence or, higher, the floor of a scorer
    /// of `previous` that lists it (a quiet cell). A taken cell's record carries that point
    /// as its sequence. `None`: the KV could not be read.
    async fn rebuild(
        &self,
        before: &BTreeSet<String>,
        now: &BTreeSet<String>,
        last: u64,
        previous: &BTreeSet<String>,
    ) -> Option<(u64, BTreeMap<String, CellRecord>)> {
        let taking: Vec<&String> = now.difference(before).collect();
        let mut floors: BTreeMap<&str, u64> = BTreeMap::new();
        if !taking.is_empty() {
            for node in previous {
                let key = floor_key(node);
                match self.kv.get(&key).await {
                    Ok(Some(bytes)) => match serde_json::from_slice::<Floor>(&bytes) {
                        Ok(floor) => {
                            for cell in floor.cells {
                                if let Some(grid) = taking.iter().find(|g| ***g == cell) {
                                    let at = floors.entry(grid.as_str()).or_default();
                                    *at = (*at).max(floor.seq);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(key = %key, error = %e, "a scorer's floor is not readable; ignored");
                        }
                    },
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e, "reading a scorer's floor failed");
                        return None;
                    }
                }
            }
        }
        let mut taken = BTreeMap::new();
        let mut start = last + 1;
        for grid in taking {
            let key = cell_key(grid);
            let mut record = match self.kv.get(&key).await {
                Ok(Some(bytes)) => match serde_json::from_slice::<CellRecord>(&bytes) {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::error!(key = %key, error = %e, "a cell's saved state is not readable; it starts empty");
                        CellRecord::default()
                    }
                },
                // Never saved: from the floor, or everything the stream still holds of it.
                Ok(None) => CellRecord::default(),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "reading a cell's saved state failed");
                    return None;
                }
            };
            let floor = floors.get(grid.as_str()).copied().unwrap_or(0);
            // A record of an older build: its readings are applied up to its `seq`.
            record.readings = Some(record.readings_seq().max(floor));
            record.seq = record.seq.max(floor);
            start = start.min(record.seq.min(record.readings_seq()) + 1);
            taken.insert(grid.clone(), record);
        }
        Some((start.max(1), taken))
    }

    /// Hands on a position: to the stage, and to the sensor stage (the floor waits for both
    /// to have passed it). False once either has gone.
    async fn position(&mut self, seq: u64) -> bool {
        self.marks += 1;
        let mark = self.marks;
        if let Some(readings) = &self.readings
            && readings.position(mark, seq).await.is_err()
        {
            return false;
        }
        send(&self.tx, BusInput::Position { mark, seq }).await
    }

    /// An ordered consumer over the whole stream from `start` (NATS 2.9: one filter
    /// subject per consumer, so everything is read and what matters kept).
    async fn consume(&self, start: u64) -> Option<Messages> {
        let config = jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        };
        let consumer = match self.stream.create_consumer(config).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "could not create the observation consumer");
                return None;
            }
        };
        match consumer.messages().await {
            Ok(m) => {
                tracing::info!(from = start, "reading the observation stream");
                Some(m)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the observation stream");
                None
            }
        }
    }

    /// One message: handed on when it concerns an owned cell or a neighbour of one; a
    /// malformed one is refused with a warning. False once the stage has gone.
    async fn take(
        &self,
        message: &jetstream::Message,
        seq: u64,
        owned: &BTreeSet<String>,
        watched: &BTreeSet<String>,
        unrouted_logged: &mut bool,
    ) -> bool {
        let subject = message.subject.as_str();
        if let Some((grid, rest)) = subject_grid(subject, OBSERVATIONS_PREFIX) {
            if rest.is_some() || !watched.contains(grid) {
                return true;
            }
            let observation = match serde_json::from_slice::<Observation>(&message.payload) {
                Ok(o) if o.grid.as_str() == grid => o,
                Ok(o) => {
                    refused("observation");
                    tracing::warn!(subject, seq, grid = %o.grid, "observation refused: its grid is not its subject's");
                    return true;
                }
                Err(e) => {
                    refused("observation");
                    tracing::warn!(subject, seq, error = %e, "observation refused: not an observation");
                    return true;
                }
            };
            return send(
                &self.tx,
                BusInput::Observation {
                    seq,
                    observation: Box::new(observation),
                },
            )
            .await;
        }
        if let Some((grid, _)) = subject_grid(subject, READINGS_PREFIX) {
            if !owned.contains(grid) || self.skip_readings.get(grid).is_some_and(|&s| seq <= s) {
                return true;
            }
            match &self.readings {
                // Refuses (warns and counts) a malformed one itself.
                Some(readings) => {
                    return readings
                        .send(
                            seq,
                            subject,
                            message.headers.as_ref(),
                            message.payload.clone(),
                        )
                        .await
                        .is_ok();
                }
                None => {
                    refused("reading");
                    if !*unrouted_logged {
                        *unrouted_logged = true;
                        tracing::warn!(
                            subject,
                            seq,
                            "a sensor reading on the bus, but this config has no [mqtt] sensors to run its rules"
                        );
                    }
                }
            }
        }
        true
    }
}

/// Writes the cells a stored commit changed to KV, once every sink has delivered that
/// commit's events.
struct Saver {
    node: String,
    kv: jetstream::kv::Store,
    runtime: tokio::runtime::Handle,
    outbox: std::path::PathBuf,
    sinks: Vec<String>,
    /// The cells owned now: a save of a cell that moved meanwhile is dropped, so it never
    /// overwrites what its new owner saved.
    owned: Arc<RwLock<BTreeSet<String>>>,
}

impl Saver {
    fn run(self, rx: &crossbeam_channel::Receiver<Stored>) {
        // Its own connection, to read the sinks' cursors.
        let outbox = match skynet_emit::Outbox::open_for_delivery(&self.outbox) {
            Ok(o) => Some(o),
            Err(e) => {
                tracing::error!(error = %e, "the cell saver cannot read the outbox; cells are saved as soon as committed");
                None
            }
        };
        // The saves queued, each with the outbox's newest event seq when its commit had
        // been stored: once every sink's cursor reaches it, the commit's events are
        // delivered. (Counting the commit's events would not do: the outbox skips an event
        // whose id it already holds, as after a replay, and such a count runs ahead.)
        let mut queue: VecDeque<(i64, Stored)> = VecDeque::new();
        let mut ready: BTreeMap<String, CellRecord> = BTreeMap::new();
        // The latest floor delivered, written after the cells saved with it.
        let mut floor: Option<Floor> = None;
        let mut closed_at: Option<Instant> = None;
        let mark = |outbox: &Option<skynet_emit::Outbox>| -> i64 {
            outbox
                .as_ref()
                .map_or(0, |o| o.last_seq().unwrap_or(i64::MAX))
        };
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(stored) => {
                    let at = mark(&outbox);
                    enqueue(&mut queue, at, stored);
                    // Everything that waits now, before looking at the cursors.
                    for stored in rx.try_iter() {
                        let at = mark(&outbox);
                        enqueue(&mut queue, at, stored);
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    closed_at.get_or_insert_with(Instant::now);
                }
            }
            // Delivery is in order per sink: the least cursor over the sinks.
            let delivered: i64 = match &outbox {
                None => i64::MAX,
                Some(o) => self
                    .sinks
                    .iter()
                    .map(|s| o.delivered_seq(s).unwrap_or(0))
                    .min()
                    .unwrap_or(i64::MAX),
            };
            while let Some((at, _)) = queue.front() {
                if *at > delivered {
                    break;
                }
                let Some((_, stored)) = queue.pop_front() else {
                    break;
                };
                ready.extend(stored.saves);
                if stored.floor.is_some() {
                    floor = stored.floor;
                }
            }
            if !ready.is_empty() {
                self.write(&mut ready);
            }
            if ready.is_empty()
                && let Some(f) = floor.take()
                && !self.write_floor(&f)
            {
                floor = Some(f);
            }
            if let Some(closed) = closed_at
                && (queue.is_empty() || closed.elapsed() >= SAVE_DRAIN)
            {
                if !ready.is_empty() {
                    tracing::warn!(
                        cells = ready.len(),
                        "cells not saved: KV did not take them in time; a successor replays them"
                    );
                }
                if !queue.is_empty() {
                    tracing::warn!(
                        commits = queue.len(),
                        events = queue.iter().map(|(_, s)| s.events).sum::<usize>(),
                        "cells not saved: their events were not delivered in time; a successor replays them"
                    );
                }
                return;
            }
        }
    }

    /// Writes this scorer's floor over the cells it still owns (a cell that moved meanwhile
    /// may not have had its last changes saved here). False: to be tried again.
    fn write_floor(&self, floor: &Floor) -> bool {
        let owned = self.owned.read().unwrap_or_else(PoisonError::into_inner);
        let floor = Floor {
            seq: floor.seq,
            cells: floor
                .cells
                .iter()
                .filter(|c| owned.contains(*c))
                .cloned()
                .collect(),
        };
        drop(owned);
        let key = floor_key(&self.node);
        let Ok(body) = serde_json::to_vec(&floor) else {
            return true;
        };
        match self.runtime.block_on(self.kv.put(&key, body.into())) {
            Ok(_) => {
                tracing::debug!(key = %key, seq = floor.seq, "floor saved");
                true
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e, "saving the floor failed; retrying");
                false
            }
        }
    }

    /// Writes the ready records; what fails stays for the next round.
    fn write(&self, ready: &mut BTreeMap<String, CellRecord>) {
        let records = std::mem::take(ready);
        for (grid, record) in records {
            let key = cell_key(&grid);
            if !self
                .owned
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&grid)
            {
                tracing::debug!(key = %key, "not saved: the cell moved to another scorer");
                continue;
            }
            let body = match serde_json::to_vec(&record) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(key = %key, error = %e, "a cell's state could not be serialised");
                    continue;
                }
            };
            match self.runtime.block_on(self.kv.put(&key, body.into())) {
                Ok(_) => tracing::debug!(key = %key, seq = record.seq, "cell saved"),
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "saving a cell failed; retrying");
                    ready.insert(grid, record);
                }
            }
        }
    }
}

/// How long a scorer waits for a status event's incident to come into its cells, from
/// `[cluster] failover_s`: each such event is deferred (nak'ed, delivered again after
/// `retry`) until it is `give_up` old, and only then dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CaseWait {
    pub(crate) retry: Duration,
    pub(crate) give_up: Duration,
}

impl CaseWait {
    /// A third of `failover_s` between tries; dropped after three times `failover_s`: a dead
    /// owner's cells have moved by then (its heartbeat lapses within `failover_s`), and a
    /// rebalance moves them at once. The intake checks no age of its own on an event.
    pub(crate) fn of(failover: Duration) -> Self {
        Self {
            retry: (failover / 3).max(Duration::from_millis(100)),
            give_up: failover * 3,
        }
    }
}

/// Queues a stored commit's saves behind `at`, keeping the queue bounded by the cells
/// rather than by the commits while a sink is down: a cell saved by a later commit is taken
/// out of the earlier ones (it is then saved at the later, more conservative point), and
/// commits left with nothing to save are folded into the new one.
fn enqueue(queue: &mut VecDeque<(i64, Stored)>, at: i64, stored: Stored) {
    let cells: BTreeSet<&str> = stored.saves.iter().map(|(c, _)| c.as_str()).collect();
    let mut moved = false;
    for (_, earlier) in queue.iter_mut() {
        let before = earlier.saves.len();
        earlier.saves.retain(|(c, _)| !cells.contains(c.as_str()));
        moved |= earlier.saves.len() != before;
    }
    // An earlier floor counted on the cells it was committed with being saved before it;
    // one of them now waits for this later commit, so no earlier floor holds any more
    // (and a floor of this commit supersedes them anyway).
    if moved || stored.floor.is_some() {
        for (_, earlier) in queue.iter_mut() {
            earlier.floor = None;
        }
    }
    let mut events = stored.events;
    queue.retain(|(_, s)| {
        let keep = !s.saves.is_empty() || s.floor.is_some();
        if !keep {
            events += s.events;
        }
        keep
    });
    queue.push_back((at, Stored { events, ..stored }));
}

/// The case-status feedback of a scorer: each scorer reads every status event (its own
/// durable consumer), and passes on only those of incidents in cells it owns. The others
/// are not its own *now*: their owner may just have died or be handing the cell over, and
/// the scorer taking the cell must still see the event (a status change acknowledged and
/// dropped by every scorer in that moment would be lost). So each is deferred (JetStream
/// delivers it again after `wait.retry`) and dropped (acknowledged, ignored) only once it
/// is older than `wait.give_up`: by then its owner has it, or no scorer knows the incident
/// any more (closed past the cooldown).
pub(crate) fn filter_case_feedback(
    from: crossbeam_channel::Receiver<CaseFeedback>,
    to: crossbeam_channel::Sender<CaseFeedback>,
    incidents: Arc<RwLock<HashSet<String>>>,
    wait: CaseWait,
) -> Result<JoinHandle<()>, PipelineError> {
    let deferred = metrics::counter!("skynet_case_status_not_owned_total", "outcome" => "deferred");
    let dropped = metrics::counter!("skynet_case_status_not_owned_total", "outcome" => "dropped");
    std::thread::Builder::new()
        .name("case-filter".into())
        .spawn(move || {
            for feedback in from {
                if let CaseFeedback::Message(message) = &feedback
                    && let Some(incident) = case_incident(&message.payload)
                    && !incidents
                        .read()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(&incident)
                {
                    if let CaseFeedback::Message(message) = feedback {
                        // An age not known counts as new: deferred, never dropped unseen.
                        let age = message.ack.age().unwrap_or_default();
                        if age < wait.give_up {
                            tracing::debug!(incident = %incident, seq = message.stream_seq, age = ?age, "case status of an incident not in this scorer's cells; deferred");
                            deferred.increment(1);
                            message.ack.retry_in(wait.retry);
                        } else {
                            tracing::debug!(incident = %incident, seq = message.stream_seq, age = ?age, "case status of an incident no cell of this scorer took; dropped");
                            dropped.increment(1);
                            message.ack.ack();
                        }
                    }
                    continue;
                }
                if to.send(feedback).is_err() {
                    return;
                }
            }
        })
        .map_err(|source| PipelineError::Spawn {
            stage: "case-filter".into(),
            source,
        })
}

/// The incident a status event names (`data.incident`), when it parses; one that does not
/// goes on to the stage, which refuses it with a dead letter.
fn case_incident(payload: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Event {
        data: Data,
    }
    #[derive(Deserialize)]
    struct Data {
        incident: String,
    }
    serde_json::from_slice::<Event>(payload)
        .ok()
        .map(|e| e.data.incident)
}

#[cfg(test)]
mod tests {

    fn stored(cells: &[&str], floor: Option<u64>, events: usize) -> Stored {
        Stored {
            saves: cells
                .iter()
                .map(|c| ((*c).to_string(), CellRecord::default()))
                .collect(),
            events,
            floor: floor.map(|seq| Floor {
                seq,
                cells: Vec::new(),
            }),
        }
    }

    #[test]
    fn queued_saves_fold_into_the_latest_per_cell_and_earlier_floors_give_way() {
        let mut queue = VecDeque::new();
        enqueue(&mut queue, 10, stored(&["A", "B"], Some(5), 2));
        enqueue(&mut queue, 20, stored(&["A"], None, 1));
        // B still waits behind 10; A moved to 20, so the floor of 10 no longer holds.
        assert_eq!(queue.len(), 2);
        assert_eq!(queue[0].1.saves.len(), 1);
        assert_eq!(queue[0].1.saves[0].0, "B");
        assert!(queue[0].1.floor.is_none());
        enqueue(&mut queue, 30, stored(&["B", "A"], Some(9), 1));
        // Everything folded into the last: one entry, its floor, every event counted.
        assert_eq!(queue.len(), 1);
        assert_eq!(queue[0].0, 30);
        assert_eq!(queue[0].1.floor.as_ref().map(|f| f.seq), Some(9));
        assert_eq!(queue[0].1.events, 4);
        // A commit that saves nothing keeps what waits (it is delivered in order after it).
        enqueue(&mut queue, 40, stored(&[], None, 3));
        assert_eq!(queue.len(), 2);
    }

    use super::*;

    #[test]
    fn subjects_name_their_grid() {
        assert_eq!(
            subject_grid("skynet.observations.G-0201", OBSERVATIONS_PREFIX),
            Some(("G-0201", None))
        );
        assert_eq!(
            subject_grid("skynet.readings.G-0201.gas-07", READINGS_PREFIX),
            Some(("G-0201", Some("gas-07")))
        );
        assert_eq!(subject_grid("skynet.other.G-0201", READINGS_PREFIX), None);
        assert_eq!(
            incidents_of(
                r#"{"open":[[["gas_leak",""],{"incident":{"id":"u-1"}}]],"closed":[[["smoke",""],{"incident":{"id":"u-2"}}]]}"#
            ),
            ["u-1", "u-2"]
        );
        assert_eq!(
            id_row_grid(r#"{"grid":"G-0102","category":"gas_leak","device":""}"#).as_deref(),
            Some("G-0102")
        );
        assert_eq!(
            case_incident(br#"{"id":"e","data":{"incident":"a/G-1/x//1","status":"ack"}}"#)
                .as_deref(),
            Some("a/G-1/x//1")
        );
    }

    fn cells(saver: crossbeam_channel::Sender<Stored>) -> ScorerCells {
        ScorerCells {
            owned: BTreeSet::new(),
            cells: BTreeMap::new(),
            dirty: BTreeSet::new(),
            meta: None,
            saver,
            position: None,
            sensor_position: None,
            readings: false,
            rebuilt_at: 0,
            floor_due: false,
            sensor_grids: BTreeMap::new(),
            new_engine: Box::new(|| {
                Box::new(skynet_risk::GridRiskEngine::new(
                    skynet_risk::RiskConfig::default(),
                    skynet_risk::RiskContext::default(),
                )) as Box<dyn RiskEngine>
            }),
            lag: BTreeMap::new(),
            applied: metrics::Counter::noop(),
            incidents_by_cell: BTreeMap::new(),
            incidents: Arc::default(),
        }
    }

    fn gas(grid: &str, at: DateTime<Utc>) -> Observation {
        Observation {
            at,
            source: skynet_core::SourceRef::sensor(&skynet_core::DeviceId::new("gas-1")),
            grid: GridId::new(grid),
            category: "gas_leak".into(),
            weight: 1.0,
            confidence: 1.0,
            evidence: Default::default(),
        }
    }

    /// A commit's state as `state::changes` makes it.
    fn commit(engine: &mut dyn RiskEngine) -> StateChanges {
        let state = skynet_risk::state::PipelineState {
            version: skynet_risk::state::PipelineState::VERSION,
            cameras: Default::default(),
            rules: Default::default(),
            sensor_rules: Default::default(),
            engine: serde_json::value::RawValue::NULL.to_owned(),
        };
        super::super::state::changes(engine, state)
    }

    #[test]
    fn owned_cells_are_saved_and_restored_and_neighbours_are_neither_emitted_nor_saved() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mut cells = cells(tx);
        let mut engine = cells.rebuild(BTreeSet::from(["G-1".to_string()]), BTreeMap::new(), 0);
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert!(cells.accept(5, "G-1"));
        let mut events = engine.observe(&gas("G-1", at));
        // A neighbour's evidence is applied whatever its sequence, and not emitted.
        assert!(cells.accept(6, "G-2"));
        events.extend(engine.observe(&gas("G-2", at)));
        assert!(
            !cells.accept(5, "G-1"),
            "a sequence applied already is skipped"
        );
        cells.keep_owned(&mut events);
        assert!(!events.is_empty());
        assert!(events.iter().all(|e| match e {
            RiskEvent::Incident(i) => i.grid.as_str() == "G-1",
            RiskEvent::GridRisk(g) => g.grid.as_str() == "G-1",
            RiskEvent::PatrolRound(_) => false,
        }));
        let id = events
            .iter()
            .find_map(|e| e.as_incident())
            .unwrap()
            .id
            .clone();
        let saves = cells
            .record(&commit(engine.as_mut()), events.len())
            .unwrap();
        assert_eq!(saves.stored.saves.len(), 1, "only the owned cell is saved");
        assert!(saves.stored.floor.is_none(), "no position yet");
        let (grid, record) = &saves.stored.saves[0];
        assert_eq!((grid.as_str(), record.seq), ("G-1", 5));
        assert!(record.cell.as_deref().is_some_and(|c| c.contains(&id)));
        assert_eq!(record.ids.len(), 1);
        assert!(record.meta.is_some());
        assert!(cells.incidents.read().unwrap().contains(&id));
        // A position: the next commit carries the floor over the owned cells, once.
        cells.position(1, 9);
        let floor = cells
            .record(&commit(engine.as_mut()), 0)
            .unwrap()
            .stored
            .floor;
        assert_eq!(
            floor,
            Some(Floor {
                seq: 9,
                cells: vec!["G-1".into()]
            })
        );
        assert!(cells.record(&commit(engine.as_mut()), 0).is_none());

        // Another scorer takes the cell from its saved record: the incident goes on.
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mut successor = super::tests::cells(tx);
        let engine = successor.rebuild(
            BTreeSet::from(["G-1".to_string()]),
            BTreeMap::from([(grid.clone(), record.clone())]),
            0,
        );
        assert_eq!(engine.open_incidents(), 1);
        assert!(engine.incident_owner(&id).is_some());
        assert!(!successor.accept(5, "G-1"));
        assert!(successor.accept(7, "G-1"));
        assert!(successor.incidents.read().unwrap().contains(&id));
    }

    #[test]
    fn status_events_of_incidents_not_in_the_scorers_cells_are_not_passed_on() {
        let (in_tx, in_rx) = crossbeam_channel::unbounded();
        let (out_tx, out_rx) = crossbeam_channel::unbounded();
        let incidents = Arc::new(RwLock::new(HashSet::from(["mine".to_string()])));
        let wait = CaseWait::of(Duration::from_secs(15));
        assert_eq!(
            (wait.retry, wait.give_up),
            (Duration::from_secs(5), Duration::from_secs(45))
        );
        let thread = filter_case_feedback(in_rx, out_tx, incidents, wait).unwrap();
        let message = |incident: &str, age_s: i64| {
            CaseFeedback::Message(Box::new(skynet_emit::CaseMessage {
                subject: format!("skynet.cases.{incident}"),
                payload: format!(r#"{{"id":"e","data":{{"incident":"{incident}"}}}}"#).into(),
                signature: None,
                stream_seq: 1,
                ack: skynet_emit::CaseAck::none()
                    .published_at(Utc::now() - chrono::Duration::seconds(age_s)),
            }))
        };
        // Deferred (its owner-to-be may take the cell yet), and dropped once too old:
        // neither is passed on (tests/cluster_scorer.rs sees them answered by JetStream).
        in_tx.send(message("theirs", 1)).unwrap();
        in_tx.send(message("theirs", 60)).unwrap();
        in_tx.send(message("mine", 60)).unwrap();
        // Not a status event: the stage refuses it with a dead letter.
        in_tx
            .send(CaseFeedback::Message(Box::new(skynet_emit::CaseMessage {
                subject: "skynet.cases.x".into(),
                payload: "garbage".into(),
                signature: None,
                stream_seq: 2,
                ack: skynet_emit::CaseAck::none(),
            })))
            .unwrap();
        drop(in_tx);
        thread.join().unwrap();
        let passed: Vec<String> = out_rx
            .iter()
            .map(|f| match f {
                CaseFeedback::Message(m) => m.subject,
                CaseFeedback::Console(_) => String::new(),
            })
            .collect();
        assert_eq!(passed, ["skynet.cases.mine", "skynet.cases.x"]);
    }

    #[test]
    fn a_cell_record_round_trips() {
        let record = CellRecord {
            seq: 42,
            meta: Some(r#"{"version":3,"node":"c","clock":null,"last_sweep":null}"#.into()),
            cell: Some("{}".into()),
            ids: BTreeMap::from([("k".into(), "v".into())]),
            readings: Some(40),
            sensors: BTreeMap::from([(
                "gas-07".into(),
                BTreeMap::from([(
                    "co-leak".into(),
                    serde_json::json!({"pending_since": "2026-12-06T10:00:00Z"}),
                )]),
            )]),
        };
        let text = serde_json::to_string(&record).unwrap();
        assert_eq!(serde_json::from_str::<CellRecord>(&text).unwrap(), record);
        // A record of an older build (no `readings`): its readings count as applied up to
        // its `seq`, as that build took them.
        let old: CellRecord = serde_json::from_str(r#"{"seq":42,"ids":{}}"#).unwrap();
        assert_eq!((old.readings, old.readings_seq()), (None, 42));
        assert!(old.sensors.is_empty());
    }

    /// A cell's readings are applied (and its saved sequence for them goes) only as far as
    /// a sensor stage checkpoint covers them, whatever its observations' sequence; its
    /// sensors' rules' memory goes with it; the floor waits for the sensor stage too.
    #[test]
    fn a_cells_readings_and_sensor_memory_are_saved_as_far_as_the_sensor_stage_covers_them() {
        let (tx, _rx) = crossbeam_channel::unbounded();
        let mut cells = cells(tx);
        cells.readings = true;
        cells.sensor_grids = BTreeMap::from([
            ("gas-1".to_string(), "G-1".to_string()),
            ("gas-2".to_string(), "G-2".to_string()),
        ]);
        let mut engine = cells.rebuild(BTreeSet::from(["G-1".to_string()]), BTreeMap::new(), 0);
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        // Reading 10 is on its way through the sensor stage; observation 11 is applied.
        assert!(cells.accept(11, "G-1"));
        engine.observe(&gas("G-1", at));
        let saves = cells.record(&commit(engine.as_mut()), 0).unwrap();
        let record = &saves.stored.saves[0].1;
        assert_eq!(record.seq, 11);
        assert_eq!(
            record.readings_seq(),
            0,
            "reading 10 is not applied until the sensor stage says so"
        );
        assert!(record.sensors.is_empty());
        // The checkpoint after reading 10 (and a neighbour's sensor, not saved here).
        let streak = BTreeMap::from([("co".to_string(), serde_json::json!({"active": true}))]);
        cells.sensor_checkpoint(
            &[
                ("gas-1".to_string(), streak.clone()),
                ("gas-2".to_string(), streak.clone()),
            ],
            BusProgress {
                cells: BTreeMap::from([("G-1".to_string(), 10), ("G-2".to_string(), 12)]),
                position: None,
            },
        );
        let saves = cells.record(&commit(engine.as_mut()), 0).unwrap();
        assert_eq!(saves.stored.saves.len(), 1);
        let (grid, record) = &saves.stored.saves[0];
        assert_eq!(
            (grid.as_str(), record.seq, record.readings),
            ("G-1", 11, Some(10))
        );
        assert_eq!(
            record.sensors,
            BTreeMap::from([("gas-1".to_string(), streak)])
        );
        // An empty memory: nothing left to keep.
        cells.sensor_checkpoint(
            &[("gas-1".to_string(), BTreeMap::new())],
            BusProgress::default(),
        );
        let saves = cells.record(&commit(engine.as_mut()), 0).unwrap();
        assert!(saves.stored.saves[0].1.sensors.is_empty());

        // The floor: the intake's position 20 is applied by the stage, but the sensor stage
        // has passed only position 1 (seq 15): the floor goes to 15, then to 20.
        cells.position(1, 15);
        cells.position(2, 20);
        assert!(
            cells.record(&commit(engine.as_mut()), 0).is_none(),
            "no floor before the sensor stage passes a position"
        );
        cells.sensor_checkpoint(
            &[],
            BusProgress {
                cells: BTreeMap::new(),
                position: Some((1, 15)),
            },
        );
        let floor = cells
            .record(&commit(engine.as_mut()), 0)
            .unwrap()
            .stored
            .floor;
        assert_eq!(floor.map(|f| f.seq), Some(15));
        cells.sensor_checkpoint(
            &[],
            BusProgress {
                cells: BTreeMap::new(),
                position: Some((2, 20)),
            },
        );
        let floor = cells
            .record(&commit(engine.as_mut()), 0)
            .unwrap()
            .stored
            .floor;
        assert_eq!(floor.map(|f| f.seq), Some(20));
        // After a rebuild, positions from before it do not count.
        let _engine = cells.rebuild(BTreeSet::from(["G-1".to_string()]), BTreeMap::new(), 2);
        cells.position(3, 30);
        cells.sensor_checkpoint(
            &[],
            BusProgress {
                cells: BTreeMap::new(),
                position: Some((2, 25)),
            },
        );
        assert!(cells.reached().is_none());
    }
}
