//! The sensor stage: MQTT messages in, evidence and device faults out to the risk stage.
//!
//! ```text
//!  MqttClient (tokio) ─► bounded queue ─► sensor thread: SensorIngest ─► SensorRules ─► risk
//!        ▲                                   │ refused payloads
//!        └──── dead-letter topic ◄───────────┘
//! ```
//!
//! Validation and rules run on their own thread, so the connection only moves bytes; a full
//! queue makes the connection wait (the broker holds the rest), and a full queue to the risk
//! stage makes this thread wait: no reading that passed validation and no evidence is dropped.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use skynet_core::{DeviceFault, DeviceId, Health, Observation, Shutdown};
use skynet_detect::{Liveness, SensorRules};
use skynet_ingest::sensor::{
    DeadLetters, MqttClient, MqttConfig, MqttMessage, Reject, SensorIngest,
};
use tokio::sync::mpsc;

use super::PipelineError;
use crate::config::SensorConfig;

/// What the sensor stage hands the risk stage.
// Nearly every event is an observation: boxing them would add an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum SensorEvent {
    Observation(Observation),
    Fault(DeviceFault),
    Recovered { device: DeviceId, at: DateTime<Utc> },
}

/// What the sensor thread receives: a message, or a tick for the liveness checks.
#[derive(Debug)]
pub enum SensorInput {
    Message(MqttMessage),
    Tick(DateTime<Utc>),
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
    rules: HashMap<String, SensorRules>,
    dead_letters: Option<DeadLetters>,
    latency: metrics::Histogram,
    /// How many refusals of each reason were logged (first, then powers of two).
    logged: HashMap<Reject, u64>,
    /// The console's sensor list: last readings and offline states.
    console: Option<Arc<skynet_serve::console::Console>>,
}

impl SensorStage {
    pub fn new(
        mqtt: &MqttConfig,
        sensors: &[SensorConfig],
        dead_letters: Option<DeadLetters>,
    ) -> Self {
        let now = Utc::now();
        Self {
            ingest: SensorIngest::new(
                mqtt.families.clone(),
                sensors.iter().map(|s| s.spec.clone()).collect(),
                mqtt.limits,
            ),
            rules: sensors
                .iter()
                .map(|s| {
                    (
                        s.spec.id.to_string(),
                        SensorRules::new(s.placement.clone(), s.rules.clone(), now),
                    )
                })
                .collect(),
            dead_letters,
            latency: metrics::histogram!("skynet_sensor_latency_seconds"),
            logged: HashMap::new(),
            console: None,
        }
    }

    /// Shows each sensor's last reading and offline state on the console.
    pub fn with_console(mut self, console: Option<Arc<skynet_serve::console::Console>>) -> Self {
        self.console = console;
        self
    }

    /// Processes one input; each event goes to `emit` (which may block: nothing is dropped).
    pub fn process(&mut self, input: SensorInput, emit: &mut impl FnMut(SensorEvent)) {
        match input {
            SensorInput::Message(message) => self.message(&message, emit),
            SensorInput::Tick(now) => {
                for rules in self.rules.values_mut() {
                    match rules.check_liveness(now) {
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

    fn message(&mut self, message: &MqttMessage, emit: &mut impl FnMut(SensorEvent)) {
        let ingested = self.ingest.ingest(
            &message.topic,
            &message.payload,
            message.at,
            message.received_at,
        );
        if let Some(first) = ingested.rejected.first() {
            if let Some(dead) = &self.dead_letters {
                dead.publish(&message.payload);
            }
            let n = self.logged.entry(first.reason).or_default();
            *n += 1;
            if n.is_power_of_two() {
                let excerpt: String = String::from_utf8_lossy(&message.payload)
                    .chars()
                    .take(160)
                    .collect();
                tracing::warn!(
                    topic = %message.topic,
                    reason = %first.reason,
                    sensor = first.sensor.as_ref().map(|s| s.as_str()).unwrap_or("-"),
                    payload = ?excerpt,
                    refused_so_far = *n,
                    "sensor payload refused; sent to the dead-letter topic"
                );
            }
        }
        for reading in ingested.readings {
            let Some(rules) = self.rules.get_mut(reading.sensor.as_str()) else {
                continue;
            };
            let (observations, back) = rules.apply(&reading, message.at);
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
/// before parking.
fn next_input(rx: &mut mpsc::Receiver<SensorInput>) -> Option<SensorInput> {
    for _ in 0..32 {
        match rx.try_recv() {
            Ok(input) => return Some(input),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => std::thread::yield_now(),
        }
    }
    rx.blocking_recv()
}

/// How often liveness is checked.
const TICK: Duration = Duration::from_millis(500);

/// Starts the MQTT connection on the runtime and the sensor thread; events go to `events`.
pub fn start(
    runtime: &tokio::runtime::Handle,
    mqtt: &MqttConfig,
    sensors: &[SensorConfig],
    health: &Health,
    stop: &Shutdown,
    events: crossbeam_channel::Sender<SensorEvent>,
    console: Option<Arc<skynet_serve::console::Console>>,
) -> Result<JoinHandle<()>, PipelineError> {
    let client =
        MqttClient::new(mqtt.clone()).map_err(|e| PipelineError::Sensors(e.to_string()))?;
    let mut stage =
        SensorStage::new(mqtt, sensors, Some(client.dead_letters())).with_console(console);
    // One queue into the thread: the connection's messages in order, with liveness ticks
    // between them. The thread ends once both senders have gone.
    let (tx, mut rx) = mpsc::channel::<SensorInput>(mqtt.queue);
    let mqtt_health = health.register("mqtt", "source");
    tracing::info!(url = %mqtt.connection.display_url, sensors = sensors.len(), topics = mqtt.families.len(), "sensor ingest starting");
    runtime.spawn(client.run(tx.clone(), stop.clone(), mqtt_health));
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
    let stage_health = health.register("sensors", "stage");
    let events = Arc::new(events);
    std::thread::Builder::new()
        .name("sensors".into())
        .spawn(move || {
            stage_health.up();
            let mut emit = |event: SensorEvent| {
                // The risk stage has gone only when the pipeline is stopping.
                let _ = events.send(event);
            };
            while let Some(input) = next_input(&mut rx) {
                stage.process(input, &mut emit);
            }
            stage_health.finished();
        })
        .map_err(|source| PipelineError::Spawn {
            stage: "sensors".into(),
            source,
        })
}
