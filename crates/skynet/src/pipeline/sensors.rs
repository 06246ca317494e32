//! The sensor stage: MQTT messages in, evidence and device faults out to the risk stage.
//!
//! ```text
//!  MqttClient (tokio) ─► bounded queue ─► sensor thread: SensorIngest ─► SensorRules ─► risk
//!        ▲                                   │ refused payloads
//!        └──── dead-letter topic ◄───────────┘
//! ```
//!
//! Validation and rules run on their own thread, so the connection only moves bytes; a full
//! queue makes the connection hold messages back (the broker holds the rest), and a full
//! queue to the risk stage makes this thread wait: no reading that passed validation and no
//! evidence is dropped.
//!
//! Acknowledgements: each message's ack travels behind the evidence it gave, in a
//! [`SensorEvent::Checkpoint`] with the memory of the rules it changed. The risk stage puts
//! both into its next commit, and the commit stage acks once that commit is stored: a
//! reading is acknowledged to the broker only when its effect (or, for a reading that
//! changes nothing or is refused, everything received before it) is durable, in receipt
//! order. A checkpoint goes out when the queue runs empty and the last one is at least
//! [`CHECKPOINT_AFTER`] old, at least every [`CHECKPOINT_EVERY`] messages, before the thread
//! parks (nothing processed ever waits for more input), and at the end.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skynet_core::{DeviceFault, DeviceId, Health, Observation, Shutdown};
use skynet_detect::{Liveness, SensorRules};
use skynet_ingest::sensor::{
    AckSender, DeadLetters, MqttClient, MqttConfig, MqttMessage, ReadingAcks, Reject, Rejection,
    SensorIngest,
};
use tokio::sync::mpsc;

use super::PipelineError;
use super::readings::BusReading;
use crate::config::SensorConfig;

/// What the sensor stage hands the risk stage.
// Nearly every event is an observation: boxing them would add an allocation each.
// Not `Clone`: a checkpoint's acknowledgements are sent once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum SensorEvent {
    Observation(Observation),
    Fault(DeviceFault),
    Recovered {
        device: DeviceId,
        at: DateTime<Utc>,
    },
    /// Everything sent before this is the effect of the messages `acks` acknowledges: ack
    /// them once a commit made after it is stored. `rules`: the rules' memory of each
    /// sensor whose readings changed it since the last checkpoint (an empty map: nothing
    /// left to keep), for the saved state. `bus`: at a scorer, how far this covers the
    /// bus (empty otherwise).
    Checkpoint {
        acks: Option<ReadingAcks>,
        rules: Vec<(String, SensorRulesState)>,
        bus: BusProgress,
    },
}

/// What of the bus a scorer's sensor stage has processed by a checkpoint: everything it
/// sent before the checkpoint is the effect of these readings, so a commit made after the
/// checkpoint holds them, and a cell's saved sequence for readings may go up to here (and
/// never past a reading whose evidence is still on its way).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BusProgress {
    /// Each cell's highest reading sequence processed since the last checkpoint (refused
    /// ones included: their effect is nothing).
    pub cells: BTreeMap<String, u64>,
    /// The latest position marker passed since the last checkpoint
    /// ([`SensorInput::Position`]): `(mark, seq)`.
    pub position: Option<(u64, u64)>,
}

impl BusProgress {
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty() && self.position.is_none()
    }
}

/// One sensor's rules' memory, by rule name ([`skynet_detect::SensorRules::state`]).
pub type SensorRulesState = BTreeMap<String, serde_json::Value>;

/// A checkpoint goes out at least this often (in messages), even while the queue stays
/// full, so acknowledgements keep flowing under load.
pub const CHECKPOINT_EVERY: usize = 512;

/// While messages keep coming, a checkpoint goes out at most this often when the queue
/// runs empty: when the thread keeps up, the queue is empty after nearly every message, and a
/// checkpoint each (the rules' memory serialized, an event, an ack batch) would cost more
/// than the message. Far below the risk stage's wait for an ack commit (20 ms).
pub const CHECKPOINT_AFTER: Duration = Duration::from_millis(2);

/// What the sensor thread receives: a message, or a tick for the liveness checks.
#[derive(Debug)]
pub enum SensorInput {
    Message(MqttMessage),
    Tick(DateTime<Utc>),
    /// A reading an edge validated and published on the bus (a scorer's input): validated
    /// again and run through the rules of its subject's sensor only, with no broker ack.
    Bus(BusReading),
    /// The grid cells whose sensors this process answers for (a scorer's owned cells), or
    /// `None`: every sensor (the default). Liveness is checked only for theirs, each from
    /// when its cell became this process's.
    Cells(Option<HashSet<String>>),
    /// Cells a scorer takes over: the rules of each of their sensors start afresh, with the
    /// memory their previous owner saved with the cell (`rules`, by sensor) where there is
    /// some. Sent before the cells' replayed readings; the next checkpoint carries the
    /// memory restored, so the cells' saved state has it even before a reading changes it.
    Restore {
        cells: BTreeSet<String>,
        rules: BTreeMap<String, SensorRulesState>,
    },
    /// The scorer's intake has handed on everything of the bus up to `seq` (its `mark`-th
    /// position): the next checkpoint carries it back ([`BusProgress::position`]).
    Position {
        mark: u64,
        seq: u64,
    },
}

impl From<MqttMessage> for SensorInput {
    fn from(message: MqttMessage) -> Self {
        Self::Message(message)
    }
}

/// Validation, rules and dead letters for every sensor: the thread's whole work, usable
/// without a broker (tests, the benchmark).
pub struct SensorStage {
    ingest: SensorIngest,
    /// Each sensor's place in `sensors`.
    index: HashMap<String, usize>,
    sensors: Vec<SensorSlot>,
    refusals: Refusals,
    latency: metrics::Histogram,
    /// Bus readings refused before validation (unknown sensor, another cell).
    bus_refused: metrics::Counter,
    /// The cells whose sensors' liveness this process checks; `None`: every sensor.
    cells: Option<HashSet<String>>,
    /// The console's sensor list: last readings and offline states.
    console: Option<Arc<skynet_serve::console::Console>>,
    /// Acknowledgements of the messages processed since the last checkpoint.
    acks: Option<ReadingAcks>,
    /// Messages processed since the last checkpoint.
    since_checkpoint: usize,
    /// Sensors (places in `sensors`) whose rules saw a reading since the last checkpoint.
    changed: Vec<usize>,
    /// When the last checkpoint went out.
    last_checkpoint: Instant,
    /// What of the bus was processed since the last checkpoint (a scorer's).
    bus: BusProgress,
}

/// One registered sensor's rules, and whether a reading changed them since the checkpoint
/// (a flag, so marking costs no lookup or allocation per message).
struct SensorSlot {
    id: String,
    rules: SensorRules,
    /// What its rules are made of (a cell taken over starts them afresh).
    config: SensorConfig,
    changed: bool,
    /// Its cell, and how often it should speak (`None`: never offline).
    grid: String,
    interval: Option<chrono::Duration>,
    /// When its cell became this process's (see [`SensorInput::Cells`]): liveness is judged
    /// from then, not from a reading another process had.
    owned_since: Option<DateTime<Utc>>,
}

/// Refused payloads: dead-lettered, and logged the first time and then at powers of two
/// per reason (a misbehaving publisher must not flood the log).
pub(crate) struct Refusals {
    dead_letters: Option<DeadLetters>,
    logged: HashMap<Reject, u64>,
}

impl Refusals {
    pub(crate) fn new(dead_letters: Option<DeadLetters>) -> Self {
        Self {
            dead_letters,
            logged: HashMap::new(),
        }
    }

    /// A message (`topic`, `payload`) had a record refused; `first` is the first refusal.
    pub(crate) fn refuse(&mut self, topic: &str, payload: &[u8], first: &Rejection) {
        if let Some(dead) = &self.dead_letters {
            dead.publish(payload);
        }
        let n = self.logged.entry(first.reason).or_default();
        *n += 1;
        if n.is_power_of_two() {
            let excerpt: String = String::from_utf8_lossy(payload).chars().take(160).collect();
            tracing::warn!(
                topic = %topic,
                reason = %first.reason,
                sensor = first.sensor.as_ref().map(|s| s.as_str()).unwrap_or("-"),
                payload = ?excerpt,
                refused_so_far = *n,
                dead_lettered = self.dead_letters.is_some(),
                "sensor payload refused"
            );
        }
    }
}

impl SensorStage {
    pub fn new(
        mqtt: &MqttConfig,
        sensors: &[SensorConfig],
        dead_letters: Option<DeadLetters>,
    ) -> Self {
        let now = Utc::now();
        // One slot per sensor id (a later entry replaces an earlier one, as in a map).
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut slots: Vec<SensorSlot> = Vec::new();
        for s in sensors {
            let slot = SensorSlot {
                id: s.spec.id.to_string(),
                rules: SensorRules::new(s.placement.clone(), s.rules.clone(), now),
                config: s.clone(),
                changed: false,
                grid: s.placement.grid.to_string(),
                interval: s.placement.expected_interval,
                owned_since: None,
            };
            match index.get(&slot.id) {
                Some(&i) => slots[i] = slot,
                None => {
                    index.insert(slot.id.clone(), slots.len());
                    slots.push(slot);
                }
            }
        }
        Self {
            ingest: SensorIngest::new(
                mqtt.families.clone(),
                sensors.iter().map(|s| s.spec.clone()).collect(),
                mqtt.limits,
            ),
            index,
            sensors: slots,
            refusals: Refusals::new(dead_letters),
            latency: metrics::histogram!("skynet_sensor_latency_seconds"),
            bus_refused: metrics::counter!("skynet_bus_refused_total", "kind" => "reading"),
            cells: None,
            console: None,
            acks: None,
            since_checkpoint: 0,
            changed: Vec::new(),
            last_checkpoint: Instant::now(),
            bus: BusProgress::default(),
        }
    }

    /// Acknowledges each message through `to` once the checkpoint after it is committed.
    pub fn with_acks(mut self, to: Option<AckSender>) -> Self {
        self.acks = to.map(ReadingAcks::new);
        self
    }

    /// Gives each sensor's rules the memory saved before the last stop
    /// ([`PipelineState::sensor_rules`](skynet_risk::state::PipelineState)).
    pub fn with_restored(mut self, mut saved: BTreeMap<String, SensorRulesState>) -> Self {
        let mut restored = 0usize;
        for slot in &mut self.sensors {
            if let Some(state) = saved.remove(&slot.id) {
                slot.rules.restore(state);
                restored += 1;
            }
        }
        if restored > 0 {
            tracing::info!(
                sensors = restored,
                "sensor rules go on from the memory committed before the last stop"
            );
        }
        self
    }

    /// Messages processed since the last checkpoint.
    pub fn since_checkpoint(&self) -> usize {
        self.since_checkpoint
    }

    /// Whether a checkpoint is due after a message: every [`CHECKPOINT_EVERY`] messages,
    /// or when the queue ran empty (`queue_empty`) and the last one is [`CHECKPOINT_AFTER`]
    /// old. (Before parking, the caller checkpoints regardless.)
    pub fn checkpoint_due(&self, queue_empty: bool) -> bool {
        self.since_checkpoint >= CHECKPOINT_EVERY
            || (queue_empty && self.pending() && self.last_checkpoint.elapsed() >= CHECKPOINT_AFTER)
    }

    /// Whether anything waits for a checkpoint.
    fn pending(&self) -> bool {
        self.since_checkpoint > 0 || !self.changed.is_empty() || !self.bus.is_empty()
    }

    /// Sends what was processed since the last checkpoint to `emit`: the acknowledgements,
    /// behind the evidence, and the memory of the rules that changed. Nothing when nothing
    /// was processed.
    pub fn checkpoint(&mut self, emit: &mut impl FnMut(SensorEvent)) {
        if !self.pending() {
            return;
        }
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        let rules = self
            .changed
            .drain(..)
            .filter_map(|i| {
                let slot = self.sensors.get_mut(i)?;
                slot.changed = false;
                Some((slot.id.clone(), slot.rules.state()))
            })
            .collect();
        let acks = self.acks.as_mut().and_then(|pending| {
            // About as many as the last batch: no regrowing message by message.
            let fresh = ReadingAcks::with_capacity(pending.sender(), pending.len());
            let full = std::mem::replace(pending, fresh);
            (!full.is_empty()).then_some(full)
        });
        let bus = std::mem::take(&mut self.bus);
        emit(SensorEvent::Checkpoint { acks, rules, bus });
    }

    /// Shows each sensor's last reading and offline state on the console.
    pub fn with_console(mut self, console: Option<Arc<skynet_serve::console::Console>>) -> Self {
        self.console = console;
        self
    }

    /// Processes one input; each event goes to `emit` (which may block: nothing is dropped).
    pub fn process(&mut self, input: SensorInput, emit: &mut impl FnMut(SensorEvent)) {
        match input {
            SensorInput::Bus(reading) => {
                // Processed either way: the cell's readings are covered up to here once the
                // evidence sent before the next checkpoint is committed.
                let covered = self.bus.cells.entry(reading.grid.clone()).or_default();
                *covered = (*covered).max(reading.seq);
                if let Some(reason) = self.foreign(&reading) {
                    self.bus_refused.increment(1);
                    tracing::warn!(subject = %reading.subject, reason = %reason, "bus reading refused");
                    return;
                }
                self.message(&reading.message, Some(&reading.sensor), emit);
                self.since_checkpoint += 1;
            }
            SensorInput::Restore { cells, rules } => self.restore_cells(&cells, rules),
            SensorInput::Position { mark, seq } => self.bus.position = Some((mark, seq)),
            SensorInput::Cells(cells) => {
                let now = Utc::now();
                for slot in &mut self.sensors {
                    let owned = cells.as_ref().is_none_or(|c| c.contains(&slot.grid));
                    slot.owned_since = match (owned, slot.owned_since) {
                        (false, _) => None,
                        (true, Some(since)) => Some(since),
                        (true, None) => Some(now),
                    };
                }
                self.cells = cells;
            }
            SensorInput::Message(message) => {
                self.message(&message, None, emit);
                self.since_checkpoint += 1;
                // Refused or evidence-free alike: acknowledged with the next checkpoint's
                // commit, in receipt order.
                if let (Some(ack), Some(pending)) = (message.ack, self.acks.as_mut()) {
                    pending.push(ack);
                }
            }
            SensorInput::Tick(now) => {
                for slot in &mut self.sensors {
                    if self.cells.is_some() {
                        // Another process's sensor, or one this process took over less
                        // than its interval ago: not judged here (yet).
                        let due = match (slot.owned_since, slot.interval) {
                            (Some(since), Some(interval)) => now - since >= interval,
                            _ => false,
                        };
                        if !due {
                            continue;
                        }
                    }
                    match slot.rules.check_liveness(now) {
                        Some(Liveness::Offline(fault)) => {
                            if let Some(console) = &self.console {
                                console.sensor_offline(fault.camera.as_str(), Some(fault.since));
                            }
                            emit(SensorEvent::Fault(fault))
                        }
                        Some(Liveness::Recovered { device, at }) => {
                            if let Some(console) = &self.console {
                                console.sensor_offline(device.as_str(), None);
                            }
                            emit(SensorEvent::Recovered { device, at })
                        }
                        None => {}
                    }
                }
            }
        }
    }

    /// The sensors of `cells` start afresh, each with its memory in `saved` where there is
    /// some (a scorer taking the cells over); marked changed, so the next checkpoint
    /// carries what they hold now. What this stage processed of those cells before (an
    /// earlier time it owned them) is forgotten.
    fn restore_cells(
        &mut self,
        cells: &BTreeSet<String>,
        mut saved: BTreeMap<String, SensorRulesState>,
    ) {
        let now = Utc::now();
        let mut restored = 0usize;
        for (i, slot) in self.sensors.iter_mut().enumerate() {
            if !cells.contains(&slot.grid) {
                continue;
            }
            slot.rules = SensorRules::new(
                slot.config.placement.clone(),
                slot.config.rules.clone(),
                now,
            );
            if let Some(state) = saved.remove(&slot.id) {
                slot.rules.restore(state);
                restored += 1;
            }
            if !slot.changed {
                slot.changed = true;
                self.changed.push(i);
            }
        }
        for grid in cells {
            self.bus.cells.remove(grid);
        }
        tracing::info!(
            cells = cells.len(),
            sensors = restored,
            "sensor rules of the cells taken over go on from their saved memory"
        );
    }

    /// Why a bus reading is not this stage's to process: its sensor is not configured
    /// here, or is in another cell here than the subject says (the edge's config differs).
    fn foreign(&self, reading: &BusReading) -> Option<String> {
        let Some(&i) = self.index.get(&reading.sensor) else {
            return Some(format!("unknown sensor `{}`", reading.sensor));
        };
        let grid = &self.sensors[i].grid;
        (*grid != reading.grid).then(|| {
            format!(
                "sensor `{}` is in {grid} here, not {}",
                reading.sensor, reading.grid
            )
        })
    }

    /// Validates a message and runs its readings through their sensors' rules; `only`: the
    /// one sensor whose readings count (a bus reading's subject; the message's other
    /// records travel on their own subjects and were refused, if at all, at the edge).
    fn message(
        &mut self,
        message: &MqttMessage,
        only: Option<&str>,
        emit: &mut impl FnMut(SensorEvent),
    ) {
        let ingested = self.ingest.ingest(
            &message.topic,
            &message.payload,
            message.at,
            message.received_at,
        );
        let refused = ingested.rejected.iter().find(|r| match (only, &r.sensor) {
            (Some(only), Some(sensor)) => sensor.as_str() == only,
            _ => true,
        });
        if let Some(first) = refused {
            self.refusals
                .refuse(&message.topic, &message.payload, first);
        }
        for reading in ingested.readings {
            if only.is_some_and(|only| reading.sensor.as_str() != only) {
                continue;
            }
            let Some(&i) = self.index.get(reading.sensor.as_str()) else {
                continue;
            };
            let slot = &mut self.sensors[i];
            let (observations, back) = slot.rules.apply(&reading, message.at);
            if !slot.changed {
                slot.changed = true;
                self.changed.push(i);
            }
            if let Some(console) = &self.console {
                console.sensor_reading(
                    reading.sensor.as_str(),
                    reading.value,
                    reading.unit,
                    reading.at,
                );
            }
            if let Some(Liveness::Recovered { device, at }) = back {
                if let Some(console) = &self.console {
                    console.sensor_offline(device.as_str(), None);
                }
                emit(SensorEvent::Recovered { device, at });
            }
            for observation in observations {
                self.latency
                    .record(reading.received_at.elapsed().as_secs_f64());
                let _span = tracing::debug_span!("observe", sensor = %reading.sensor, grid = %observation.grid).entered();
                emit(SensorEvent::Observation(observation));
            }
        }
    }
}

/// The next input, or `None` once every sender has gone. Under load the next message is
/// microseconds away, and parking the thread costs a system call on both sides for every
/// message: look again a few times (yielding the core, to the connection among others)
/// before parking. Before parking, what was processed goes out in a checkpoint: nothing
/// waits for acknowledgement while the thread sleeps.
fn next_input(
    rx: &mut mpsc::Receiver<SensorInput>,
    stage: &mut SensorStage,
    emit: &mut impl FnMut(SensorEvent),
) -> Option<SensorInput> {
    for _ in 0..32 {
        match rx.try_recv() {
            Ok(input) => return Some(input),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    stage.checkpoint(emit);
    rx.blocking_recv()
}

/// How often liveness is checked.
const TICK: Duration = Duration::from_millis(500);

/// The running sensor feed: the sensor thread and the MQTT connection's task.
pub struct SensorFeed {
    /// Ends once the connection has stopped taking messages (at the stop signal) and what it
    /// had queued is processed, or once the risk stage has gone.
    pub thread: Option<JoinHandle<()>>,
    connection: std::sync::mpsc::Receiver<()>,
}

impl SensorFeed {
    /// Waits (at most `within`) for the connection to finish: it ends once every
    /// acknowledgement handed out was sent or given up (the stage and every commit that
    /// carried them have gone), then says `offline` and disconnects.
    pub fn wait_for_connection(&self, within: Duration) -> bool {
        !matches!(
            self.connection.recv_timeout(within),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        )
    }
}

impl SensorFeed {
    /// A feed of `thread`, whose connection (if any) says on `connection` when it is done.
    pub(crate) fn new(thread: JoinHandle<()>, connection: std::sync::mpsc::Receiver<()>) -> Self {
        Self {
            thread: Some(thread),
            connection,
        }
    }
}

/// Starts the MQTT connection on the runtime and the sensor thread; events go to `events`.
/// `restored`: each sensor's rules' memory from the saved state.
#[allow(clippy::too_many_arguments)]
pub fn start(
    runtime: &tokio::runtime::Handle,
    mqtt: &MqttConfig,
    sensors: &[SensorConfig],
    health: &Health,
    stop: &Shutdown,
    events: crossbeam_channel::Sender<SensorEvent>,
    console: Option<Arc<skynet_serve::console::Console>>,
    restored: BTreeMap<String, SensorRulesState>,
) -> Result<SensorFeed, PipelineError> {
    let client =
        MqttClient::new(mqtt.clone()).map_err(|e| PipelineError::Sensors(e.to_string()))?;
    let stage = SensorStage::new(mqtt, sensors, Some(client.dead_letters()))
        .with_console(console)
        .with_acks(client.ack_sender())
        .with_restored(restored);
    // One queue into the thread: the connection's messages in order, with liveness ticks
    // between them. The thread ends once both senders have gone.
    let (tx, rx) = mpsc::channel::<SensorInput>(mqtt.queue);
    let mqtt_health = health.register("mqtt", "source");
    tracing::info!(url = %mqtt.connection.display_url, sensors = sensors.len(), topics = mqtt.families.len(), "sensor ingest starting");
    let (done, connection) = std::sync::mpsc::channel();
    let run = client.run(tx.clone(), stop.clone(), mqtt_health);
    runtime.spawn(async move {
        run.await;
        let _ = done.send(());
    });
    spawn_ticks(runtime, tx, stop);
    let thread = spawn_stage_thread(stage, rx, events, health)?;
    Ok(SensorFeed::new(thread, connection))
}

/// Sends a liveness tick into the thread's queue every [`TICK`] until `stop`.
pub(crate) fn spawn_ticks(
    runtime: &tokio::runtime::Handle,
    tx: mpsc::Sender<SensorInput>,
    stop: &Shutdown,
) {
    let stopping = stop.clone();
    runtime.spawn(async move {
        let mut interval = tokio::time::interval(TICK);
        loop {
            interval.tick().await;
            if stopping.is_triggered() || tx.send(SensorInput::Tick(Utc::now())).await.is_err() {
                return;
            }
        }
    });
}

/// The sensor thread: `stage` over what `rx` brings, until every sender has gone.
pub(crate) fn spawn_stage_thread(
    mut stage: SensorStage,
    mut rx: mpsc::Receiver<SensorInput>,
    events: crossbeam_channel::Sender<SensorEvent>,
    health: &Health,
) -> Result<JoinHandle<()>, PipelineError> {
    let stage_health = health.register("sensors", "stage");
    std::thread::Builder::new()
        .name("sensors".into())
        .spawn(move || {
            stage_health.up();
            let mut emit = |event: SensorEvent| {
                // The risk stage has gone only when the pipeline is stopping.
                let _ = events.send(event);
            };
            while let Some(input) = next_input(&mut rx, &mut stage, &mut emit) {
                stage.process(input, &mut emit);
                // While more waits, keep going (one checkpoint covers many messages), but
                // not for ever: acknowledgements must keep flowing under load.
                if stage.checkpoint_due(rx.is_empty()) {
                    stage.checkpoint(&mut emit);
                }
            }
            stage.checkpoint(&mut emit);
            stage_health.finished();
        })
        .map_err(|source| PipelineError::Spawn {
            stage: "sensors".into(),
            source,
        })
}
