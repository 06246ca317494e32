//! Sensor readings across the bus: validated at an edge, run through the sensor rules on the
//! scorer that owns the sensor's cell.
//!
//! ```text
//!  edge:   MQTT ($share/<cluster>-edges/<filter>) ─► validation ─► JetStream publish
//!            ▲            refused: dead-letter topic │   skynet.readings.<grid>.<sensor>
//!            └──── PUBACK after JetStream's ack ◄────┘   (raw payload, headers below)
//!  scorer: SKYNET_OBSERVATIONS ─► reading_input ─► SensorStage (validation, rules) ─► risk
//! ```
//!
//! The edge publishes a valid message *as it came* (its payload bytes), once on the subject
//! of each configured sensor it carries a reading of, with the headers
//! - `Skynet-Mqtt-Topic`: the MQTT topic (the scorer's validation needs it: the sensor may be
//!   named by it);
//! - `Skynet-Received-At`: when the edge received it (RFC 3339, microseconds): the scorer
//!   validates and times the readings as of then, so a reading without a time of its own
//!   gets the same time whichever scorer replays it;
//! - `Nats-Msg-Id`: the hex SHA-256 of the subject, the topic and the payload, and of the
//!   receipt time too unless every record carries an absolute time of its own. A payload
//!   whose records do is stored once however often the broker delivers it (to this edge
//!   or, after a crash, to another) within the stream's duplicate window; one without (no
//!   time, or a time relative to the receipt) would be the same bytes every time a steady
//!   sensor speaks, so its receipt makes it a new message.
//!
//! Acknowledgements: a message's MQTT ack goes only once JetStream has acked every publish
//! it led to, and in receipt order (refused and evidence-free messages too, behind those
//! before them), so the broker keeps, and sends again after a crash, whatever the bus may
//! not have. A publish that fails is retried with capped backoff (counted in
//! `skynet_bus_publish_retries_total{kind="reading"}`); the MQTT connection meanwhile stops
//! taking messages once [`WINDOW`] publishes wait, and the broker holds the rest.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use skynet_core::{Health, Shutdown};
use skynet_ingest::sensor::{
    MqttClient, MqttConfig, MqttMessage, PendingAck, RawTime, ReadingAcks, SensorIngest,
    TopicFamily, topic_capture,
};
use tokio::sync::mpsc;

use super::PipelineError;
use super::cluster::ClusterNode;
use super::sensors::{
    Refusals, SensorEvent, SensorFeed, SensorInput, SensorRulesState, SensorStage,
};
use crate::config::SensorConfig;

/// The header with the MQTT topic a reading came on.
pub const TOPIC_HEADER: &str = "Skynet-Mqtt-Topic";
/// The header with the edge's receipt time (RFC 3339).
pub const RECEIVED_AT_HEADER: &str = "Skynet-Received-At";
/// JetStream's de-duplication header.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// At most this many publishes wait for JetStream's ack at an edge (JetStream's own
/// client allows 5,000 in flight).
pub const WINDOW: usize = 1024;
/// Acknowledgements are handed to the MQTT connection in batches of at most this many (and
/// whenever the edge is about to wait).
const ACK_BATCH: usize = 512;
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
/// How long an edge that is stopping goes on publishing what it has taken.
const STOP_GRACE: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A reading taken off the bus, as the scorer's [`SensorStage`] processes it: the MQTT
/// message as the edge received it (no broker ack: the bus has its own), and the cell and
/// sensor its subject names (the only sensor whose records of it count), and its stream
/// sequence (the stage's checkpoints say how far each cell's readings are covered).
#[derive(Debug)]
pub struct BusReading {
    pub subject: String,
    pub grid: String,
    pub sensor: String,
    pub message: MqttMessage,
    /// Its SKYNET_OBSERVATIONS sequence (0 where none is known).
    pub seq: u64,
}

/// Why a message on a reading subject is not a reading.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadReading {
    #[error("not a reading subject (skynet.readings.<grid>.<sensor>)")]
    Subject,
    #[error("no `{0}` header")]
    MissingHeader(&'static str),
    #[error("the `{header}` header is not {expected}")]
    BadHeader {
        header: &'static str,
        expected: &'static str,
    },
}

/// The `Nats-Msg-Id` of a reading published on `subject`; `received_at`: the receipt time,
/// given when a reading of it took its time from the receipt (see the module's doc).
pub fn message_id(subject: &str, topic: &str, payload: &[u8], received_at: Option<&str>) -> String {
    let mut hash = Sha256::new();
    // Each part's length first: no two different splits hash alike.
    for part in [subject.as_bytes(), topic.as_bytes(), payload] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    if let Some(at) = received_at {
        hash.update(at.as_bytes());
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether every record of a message carries an absolute time of its own (its readings'
/// times then do not depend on when it was received).
pub fn has_own_times(families: &[TopicFamily], topic: &str, payload: &[u8]) -> bool {
    families
        .iter()
        .find(|f| topic_capture(&f.pattern, topic).is_some())
        .and_then(|f| f.format.parse(payload).ok())
        .is_some_and(|records| {
            !records.is_empty()
                && records
                    .iter()
                    .all(|(_, r)| matches!(r.time, Some(RawTime::Absolute(_))))
        })
}

/// The headers of a reading published on `subject` (see the module's doc); `timed`: every
/// record of the message carries an absolute time ([`has_own_times`]).
pub fn reading_headers(
    subject: &str,
    topic: &str,
    payload: &[u8],
    received_at: DateTime<Utc>,
    timed: bool,
) -> HeaderMap {
    let at = received_at.to_rfc3339_opts(SecondsFormat::Micros, true);
    let id = message_id(subject, topic, payload, (!timed).then_some(at.as_str()));
    let mut headers = HeaderMap::new();
    headers.insert(TOPIC_HEADER, topic);
    headers.insert(RECEIVED_AT_HEADER, at.as_str());
    headers.insert(MSG_ID_HEADER, id.as_str());
    headers
}

/// A message of the bus on a reading subject (`skynet.readings.<grid>.<sensor>`), back as
/// the MQTT message the edge validated: its topic and receipt time from the headers, no
/// broker ack, and sequence 0 (the caller sets it). Pure: whether the sensor is configured
/// here is the sensor stage's check.
pub fn reading_input(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
) -> Result<BusReading, BadReading> {
    let rest = subject
        .strip_prefix(skynet_cluster::bus::READINGS_PREFIX)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or(BadReading::Subject)?;
    let (grid, sensor) = rest.split_once('.').ok_or(BadReading::Subject)?;
    if grid.is_empty() || sensor.is_empty() || sensor.contains('.') {
        return Err(BadReading::Subject);
    }
    let header = |name: &'static str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
            .filter(|v| !v.is_empty())
            .ok_or(BadReading::MissingHeader(name))
    };
    let topic = header(TOPIC_HEADER)?;
    let at = DateTime::parse_from_rfc3339(header(RECEIVED_AT_HEADER)?)
        .map_err(|_| BadReading::BadHeader {
            header: RECEIVED_AT_HEADER,
            expected: "an RFC 3339 time",
        })?
        .with_timezone(&Utc);
    // The latency histogram measures from the edge's receipt (as far as the clocks agree).
    let age = (Utc::now() - at).to_std().unwrap_or_default();
    let received_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    Ok(BusReading {
        subject: subject.to_string(),
        grid: grid.to_string(),
        sensor: sensor.to_string(),
        message: MqttMessage {
            topic: topic.to_string(),
            payload,
            at,
            received_at,
            ack: None,
        },
        seq: 0,
    })
}

/// The scorer's way into its sensor stage: hands it the readings taken off the bus.
/// Cheap to clone; the stage's thread ends once every clone has gone (and the stop signal
/// has stopped its liveness ticks).
#[derive(Clone)]
pub struct BusReadings {
    tx: mpsc::Sender<SensorInput>,
    refused: metrics::Counter,
}

/// The sensor thread has gone (the pipeline is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the sensor stage has stopped")]
pub struct SensorStageGone;

impl BusReadings {
    /// Parses a message of a reading subject ([`reading_input`]), stream sequence `seq`, and
    /// queues it for the sensor stage, in the order given (give a cell's readings in stream
    /// order). A message
    /// that is not a reading, or whose sensor is not configured here or in another cell, is
    /// refused with a warning naming its subject and reason and counted in
    /// `skynet_bus_refused_total{kind="reading"}`: `Ok` all the same, nothing else stops.
    /// Waits while the stage's queue is full. `Err` only once the stage has gone.
    pub async fn send(
        &self,
        seq: u64,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: bytes::Bytes,
    ) -> Result<(), SensorStageGone> {
        match self.parse(subject, headers, payload) {
            Some(mut reading) => {
                reading.seq = seq;
                self.tx
                    .send(SensorInput::Bus(reading))
                    .await
                    .map_err(|_| SensorStageGone)
            }
            None => Ok(()),
        }
    }

    /// Cells taken over from another scorer: their sensors' rules go on from the memory
    /// saved with them (`rules`, by sensor; a sensor without any starts afresh). Send it
    /// before the cells' replayed readings.
    pub async fn restore(
        &self,
        cells: BTreeSet<String>,
        rules: std::collections::BTreeMap<String, SensorRulesState>,
    ) -> Result<(), SensorStageGone> {
        self.tx
            .send(SensorInput::Restore { cells, rules })
            .await
            .map_err(|_| SensorStageGone)
    }

    /// Everything of the bus up to `seq` has been handed on (the intake's `mark`-th
    /// position): the stage's next checkpoint says so once it has processed what came
    /// before.
    pub async fn position(&self, mark: u64, seq: u64) -> Result<(), SensorStageGone> {
        self.tx
            .send(SensorInput::Position { mark, seq })
            .await
            .map_err(|_| SensorStageGone)
    }

    /// The cells this scorer owns now (`None`: every cell). Liveness (`sensor_offline`) is
    /// judged only for their sensors, each from when its cell became this scorer's: a
    /// sensor of another scorer's cell is not declared offline here.
    pub async fn own_cells(&self, cells: Option<HashSet<String>>) -> Result<(), SensorStageGone> {
        self.tx
            .send(SensorInput::Cells(cells))
            .await
            .map_err(|_| SensorStageGone)
    }

    fn parse(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: bytes::Bytes,
    ) -> Option<BusReading> {
        match reading_input(subject, headers, payload) {
            Ok(reading) => Some(reading),
            Err(reason) => {
                self.refused.increment(1);
                tracing::warn!(subject = %subject, reason = %reason, "bus reading refused");
                None
            }
        }
    }
}

/// Starts the sensor stage of a scorer: the same validation and sensor rules as
/// [`super::sensors::start`], fed from the bus instead of MQTT (no connection, no broker
/// acks: the scorer keeps its own place in the stream). Events go to `events`, as from the
/// MQTT feed (observations, faults, recoveries, and checkpoints with the rules' memory and
/// no acks). `mqtt`: the config's `[mqtt]`, for its topic families and limits (nothing
/// connects). `restored`: the rules' memory to go on from.
///
/// Returns where to send the readings ([`BusReadings`]) and the feed: join its `thread`
/// before the risk stage stops (it ends once every [`BusReadings`] has been dropped and
/// `stop` is triggered); `wait_for_connection` returns at once.
#[allow(clippy::too_many_arguments)]
pub(crate) fn start_from_bus(
    runtime: &tokio::runtime::Handle,
    mqtt: &MqttConfig,
    sensors: &[SensorConfig],
    health: &Health,
    stop: &Shutdown,
    events: crossbeam_channel::Sender<SensorEvent>,
    console: Option<Arc<skynet_serve::console::Console>>,
    restored: std::collections::BTreeMap<String, SensorRulesState>,
) -> Result<(BusReadings, SensorFeed), PipelineError> {
    let stage = SensorStage::new(mqtt, sensors, None)
        .with_console(console)
        .with_restored(restored);
    let (tx, rx) = mpsc::channel::<SensorInput>(mqtt.queue);
    super::sensors::spawn_ticks(runtime, tx.clone(), stop);
    let thread = super::sensors::spawn_stage_thread(stage, rx, events, health)?;
    // No connection: the feed's wait for it is over at once.
    let (_, connection) = std::sync::mpsc::channel();
    tracing::info!(
        sensors = sensors.len(),
        "sensor rules starting on readings from the bus"
    );
    Ok((
        BusReadings {
            tx,
            refused: metrics::counter!("skynet_bus_refused_total", "kind" => "reading"),
        },
        SensorFeed::new(thread, connection),
    ))
}

/// Starts an edge's sensor feed: the MQTT connection (a member of the shared subscription
/// `$share/<cluster name>-edges/<filter>`) and the thread that validates each message and
/// publishes the valid ones on the bus (see the module's doc). Fails when the observation
/// stream cannot be opened.
pub(crate) fn start_edge(
    mqtt: &MqttConfig,
    sensors: &[SensorConfig],
    cluster: &ClusterNode,
    cluster_config: &skynet_cluster::ClusterConfig,
    health: &Health,
    stop: &Shutdown,
) -> Result<SensorFeed, PipelineError> {
    let runtime = cluster.runtime.clone();
    // The JetStream context starts a task of its own: on the runtime.
    let _entered = runtime.enter();
    runtime
        .block_on(skynet_cluster::bus::observation_stream(
            &cluster.client,
            cluster_config,
        ))
        .map_err(|e| PipelineError::Cluster(e.to_string()))?;
    let mqtt = mqtt
        .clone()
        .shared(format!("{}-edges", cluster_config.name));
    let client =
        MqttClient::new(mqtt.clone()).map_err(|e| PipelineError::Sensors(e.to_string()))?;
    let feed = EdgeFeed {
        families: mqtt.families.clone(),
        ingest: SensorIngest::new(
            mqtt.families.clone(),
            sensors.iter().map(|s| s.spec.clone()).collect(),
            mqtt.limits,
        ),
        grids: sensors
            .iter()
            .map(|s| (s.spec.id.to_string(), s.placement.grid.to_string()))
            .collect(),
        refusals: Refusals::new(Some(client.dead_letters())),
        js: cluster.jetstream(),
        acks: client.ack_sender().map(ReadingAcks::new),
        window: VecDeque::new(),
        in_flight: 0,
        stop: stop.clone(),
        give_up_at: None,
        health: health.register("sensors", "stage"),
        backoff: INITIAL_BACKOFF,
        failures: 0,
        published: metrics::counter!("skynet_bus_published_total", "kind" => "reading"),
        retries: metrics::counter!("skynet_bus_publish_retries_total", "kind" => "reading"),
    };
    let (tx, rx) = mpsc::channel::<MqttMessage>(mqtt.queue);
    let mqtt_health = health.register("mqtt", "source");
    tracing::info!(
        url = %mqtt.connection.display_url,
        group = mqtt.share_group.as_deref().unwrap_or("-"),
        sensors = sensors.len(),
        "edge sensor feed starting: valid readings go to the bus"
    );
    let (done, connection) = std::sync::mpsc::channel();
    let run = client.run(tx, stop.clone(), mqtt_health);
    runtime.spawn(async move {
        run.await;
        let _ = done.send(());
    });
    let thread = std::thread::Builder::new()
        .name("sensors-edge".into())
        .spawn(move || runtime.block_on(feed.run(rx)))
        .map_err(|source| PipelineError::Spawn {
            stage: "sensors".into(),
            source,
        })?;
    Ok(SensorFeed::new(thread, connection))
}

/// One message in receipt order, until every publish it led to is acked.
struct Held {
    ack: Option<PendingAck>,
    publishes: VecDeque<Publish>,
}

/// One publish of a reading; `ack`: JetStream's answer to come (`None`: not sent yet, or
/// its sending failed: sent again when it is the first to wait).
struct Publish {
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
    ack: Option<PublishAckFuture>,
}

/// The edge's sensor work: validation, publishing, acknowledgement in order.
struct EdgeFeed {
    families: Vec<TopicFamily>,
    ingest: SensorIngest,
    /// Each configured sensor's cell.
    grids: HashMap<String, String>,
    refusals: Refusals,
    js: async_nats::jetstream::Context,
    acks: Option<ReadingAcks>,
    window: VecDeque<Held>,
    /// Publishes in `window` not yet acked.
    in_flight: usize,
    stop: Shutdown,
    /// Set at the stop signal: past it, what the bus has not acknowledged is given up (the
    /// broker keeps it), so a bus that is down cannot hold the shutdown.
    give_up_at: Option<tokio::time::Instant>,
    health: skynet_core::ComponentHealth,
    backoff: Duration,
    /// Failed publishes in a row.
    failures: u64,
    published: metrics::Counter,
    retries: metrics::Counter,
}

impl EdgeFeed {
    async fn run(mut self, mut rx: mpsc::Receiver<MqttMessage>) {
        self.health.up();
        let mut open = true;
        loop {
            self.release();
            if self.stop.is_triggered() {
                let at = *self
                    .give_up_at
                    .get_or_insert_with(|| tokio::time::Instant::now() + STOP_GRACE);
                // Failing, or out of time: what is left stays with the broker.
                if self.failures > 0 || tokio::time::Instant::now() >= at {
                    break;
                }
            }
            // New messages first while there is room: their publishes go out while earlier
            // ones wait for their acks.
            if open && self.in_flight < WINDOW {
                match rx.try_recv() {
                    Ok(message) => {
                        self.accept(message).await;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            // About to wait: what can be acknowledged goes now.
            self.flush_acks();
            if !self.window.is_empty() {
                if !self.confirm_front().await {
                    break;
                }
            } else if open {
                match rx.recv().await {
                    Some(message) => self.accept(message).await,
                    None => open = false,
                }
            } else {
                break;
            }
        }
        self.release();
        self.flush_acks();
        if !self.window.is_empty() {
            tracing::warn!(
                messages = self.window.len(),
                "stopping with readings the bus has not acknowledged: not acknowledged to the broker, which sends them again"
            );
        }
        self.health.finished();
    }

    /// Validates one message and sends its publishes; it waits in the window either way.
    async fn accept(&mut self, message: MqttMessage) {
        let ingested = self.ingest.ingest(
            &message.topic,
            &message.payload,
            message.at,
            message.received_at,
        );
        if let Some(first) = ingested.rejected.first() {
            self.refusals
                .refuse(&message.topic, &message.payload, first);
        }
        let subjects: BTreeSet<String> = ingested
            .readings
            .iter()
            .filter_map(|r| {
                let sensor = r.sensor.as_str();
                // Unassigned sensors (`unknown_sensors = "register"`) have no cell, and no
                // rules anywhere.
                let grid = self.grids.get(sensor)?;
                Some(skynet_cluster::bus::reading_subject(grid, sensor))
            })
            .collect();
        let timed =
            !subjects.is_empty() && has_own_times(&self.families, &message.topic, &message.payload);
        let mut publishes = VecDeque::with_capacity(subjects.len());
        for subject in subjects {
            let headers = reading_headers(
                &subject,
                &message.topic,
                &message.payload,
                message.at,
                timed,
            );
            let mut publish = Publish {
                subject,
                headers,
                payload: message.payload.clone(),
                ack: None,
            };
            publish.ack = self.send(&publish).await;
            publishes.push_back(publish);
        }
        self.in_flight += publishes.len();
        self.window.push_back(Held {
            ack: message.ack,
            publishes,
        });
    }

    async fn send(&self, publish: &Publish) -> Option<PublishAckFuture> {
        let message = PublishMessage::build()
            .payload(publish.payload.clone())
            .headers(publish.headers.clone());
        match self.js.send_publish(publish.subject.clone(), message).await {
            Ok(ack) => Some(ack),
            Err(e) => {
                tracing::debug!(subject = %publish.subject, error = %e, "reading not sent; retried when its turn comes");
                None
            }
        }
    }

    /// Moves the messages whose publishes are all acked (from the front: receipt order)
    /// to the acknowledgements.
    fn release(&mut self) {
        while self.window.front().is_some_and(|h| h.publishes.is_empty()) {
            if let Some(held) = self.window.pop_front()
                && let (Some(ack), Some(acks)) = (held.ack, self.acks.as_mut())
            {
                acks.push(ack);
            }
        }
        if self.acks.as_ref().is_some_and(|a| a.len() >= ACK_BATCH) {
            self.flush_acks();
        }
    }

    fn flush_acks(&mut self) {
        if let Some(acks) = self.acks.as_mut()
            && !acks.is_empty()
        {
            let full =
                std::mem::replace(acks, ReadingAcks::with_capacity(acks.sender(), acks.len()));
            full.ack();
        }
    }

    /// Waits for the first waiting publish's ack; retries it after a failure. `false`: it
    /// failed while stopping, and everything still waiting is given up (unacknowledged, so
    /// the broker keeps it).
    async fn confirm_front(&mut self) -> bool {
        let Some(publish) = self
            .window
            .front_mut()
            .and_then(|h| h.publishes.front_mut())
        else {
            return true;
        };
        let error = match publish.ack.take() {
            Some(ack) => match ack.await {
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            },
            None => Some("not sent".to_string()),
        };
        let Some(error) = error else {
            if let Some(held) = self.window.front_mut() {
                held.publishes.pop_front();
            }
            self.in_flight -= 1;
            self.published.increment(1);
            if self.failures > 0 {
                self.failures = 0;
                self.backoff = INITIAL_BACKOFF;
                tracing::info!("the bus takes readings again");
                self.health.up();
            }
            return true;
        };
        let subject = publish.subject.clone();
        self.failures += 1;
        self.retries.increment(1);
        if self.failures == 1 || self.failures.is_power_of_two() {
            tracing::warn!(subject = %subject, error = %error, attempt = self.failures, retry_in_s = self.backoff.as_secs_f64(), "reading not acknowledged by JetStream; retrying");
        }
        self.health
            .retrying(format!("publishing readings to the bus: {error}"));
        if self.stop.is_triggered() {
            return false;
        }
        let until = tokio::time::Instant::now() + self.backoff;
        while tokio::time::Instant::now() < until {
            if self.stop.is_triggered() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50).min(self.backoff)).await;
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        // The same headers, so the same Nats-Msg-Id: stored once if the first got through.
        let ack = match self.window.front().and_then(|h| h.publishes.front()) {
            Some(publish) => self.send(publish).await,
            None => None,
        };
        if let Some(publish) = self
            .window
            .front_mut()
            .and_then(|h| h.publishes.front_mut())
        {
            publish.ack = ack;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-06T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn headers_carry_topic_receipt_and_a_deterministic_id() {
        let subject = skynet_cluster::bus::reading_subject("G-0201", "gas-07");
        let payload = br#"[{"n":"gas-07/co","v":3,"t":1800000000}]"#;
        let h = reading_headers(&subject, "skynet/sensors/gas-07", payload, at(), true);
        assert_eq!(
            h.get(TOPIC_HEADER).unwrap().as_str(),
            "skynet/sensors/gas-07"
        );
        assert_eq!(
            h.get(RECEIVED_AT_HEADER).unwrap().as_str(),
            "2026-12-06T10:00:00.123456Z"
        );
        let id = h.get(MSG_ID_HEADER).unwrap().as_str().to_string();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        // Timed: the same message received again (later, by another edge) has the same id.
        let later = at() + chrono::Duration::seconds(5);
        let again = reading_headers(&subject, "skynet/sensors/gas-07", payload, later, true);
        assert_eq!(again.get(MSG_ID_HEADER).unwrap().as_str(), id);
        // Untimed: the same bytes later are a new reading.
        let a = reading_headers(
            &subject,
            "skynet/sensors/gas-07",
            b"[{\"v\":3}]",
            at(),
            false,
        );
        let b = reading_headers(
            &subject,
            "skynet/sensors/gas-07",
            b"[{\"v\":3}]",
            later,
            false,
        );
        assert_ne!(
            a.get(MSG_ID_HEADER).unwrap().as_str(),
            b.get(MSG_ID_HEADER).unwrap().as_str()
        );
        // Another subject (another sensor of one pack) is another message.
        let other = skynet_cluster::bus::reading_subject("G-0201", "gas-08");
        let c = reading_headers(&other, "skynet/sensors/gas-07", payload, at(), true);
        assert_ne!(c.get(MSG_ID_HEADER).unwrap().as_str(), id);
    }

    #[test]
    fn a_bus_reading_comes_back_as_the_message_the_edge_validated() {
        let subject = skynet_cluster::bus::reading_subject("G-0201", "gas-07");
        let payload = bytes::Bytes::from_static(br#"[{"n":"co","v":3}]"#);
        let h = reading_headers(&subject, "skynet/sensors/gas-07", &payload, at(), false);
        let r = reading_input(&subject, Some(&h), payload.clone()).unwrap();
        assert_eq!((r.grid.as_str(), r.sensor.as_str()), ("G-0201", "gas-07"));
        assert_eq!(r.subject, subject);
        assert_eq!(r.message.topic, "skynet/sensors/gas-07");
        assert_eq!(r.message.payload, payload);
        assert_eq!(r.message.at, at());
        assert!(r.message.ack.is_none());
    }

    #[test]
    fn a_reading_without_its_headers_or_subject_is_refused() {
        let subject = skynet_cluster::bus::reading_subject("G-0201", "gas-07");
        let payload = bytes::Bytes::from_static(b"[]");
        assert_eq!(
            reading_input(&subject, None, payload.clone()).unwrap_err(),
            BadReading::MissingHeader(TOPIC_HEADER)
        );
        let mut h = HeaderMap::new();
        h.insert(TOPIC_HEADER, "skynet/sensors/gas-07");
        assert_eq!(
            reading_input(&subject, Some(&h), payload.clone()).unwrap_err(),
            BadReading::MissingHeader(RECEIVED_AT_HEADER)
        );
        h.insert(RECEIVED_AT_HEADER, "yesterday");
        assert!(matches!(
            reading_input(&subject, Some(&h), payload.clone()).unwrap_err(),
            BadReading::BadHeader { .. }
        ));
        let h = reading_headers(&subject, "t", b"[]", at(), true);
        for bad in [
            "skynet.observations.G-0201",
            "skynet.readings.G-0201",
            "skynet.readings.G-0201.a.b",
            "skynet.readingsX.G-0201.a",
        ] {
            assert_eq!(
                reading_input(bad, Some(&h), payload.clone()).unwrap_err(),
                BadReading::Subject,
                "{bad}"
            );
        }
        let e = BadReading::MissingHeader(TOPIC_HEADER).to_string();
        assert_eq!(e, "no `Skynet-Mqtt-Topic` header");
    }

    #[test]
    fn only_absolute_times_of_its_own_make_a_message_timed() {
        let config = city();
        let families = &config.mqtt.as_ref().unwrap().families;
        let topic = "skynet/sensors/gas-07";
        let timed = |payload: &str| has_own_times(families, topic, payload.as_bytes());
        assert!(timed(r#"[{"n":"gas-07/co","v":3,"t":1800000000}]"#));
        assert!(timed(
            r#"[{"bt":1800000000},{"n":"gas-07/co","v":3,"t":1}]"#
        ));
        // No time, or one relative to the receipt: the same bytes are a new reading later.
        assert!(!timed(r#"[{"n":"gas-07/co","v":3}]"#));
        assert!(!timed(r#"[{"n":"gas-07/co","v":3,"t":-5}]"#));
        assert!(!timed(
            r#"[{"n":"gas-07/co","v":3,"t":1800000000},{"n":"gas-07/co","v":4}]"#
        ));
        assert!(!timed("{not json"));
        assert!(!has_own_times(families, "elsewhere/x", b"[]"));
    }

    /// configs/city.toml: gas-07 (G-0201, CO above 50 ppm for 10 s is a `gas_leak`,
    /// offline after 30 s of silence) and gas-12 (G-0201).
    fn city() -> crate::config::PipelineConfig {
        crate::config::PipelineConfig::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/city.toml"),
        )
        .unwrap()
    }

    /// gas-07's reading `v` ppm measured at `t`, as an edge published it.
    fn published(sensor: &str, grid: &str, v: f64, t: DateTime<Utc>) -> BusReading {
        let subject = skynet_cluster::bus::reading_subject(grid, sensor);
        let topic = format!("skynet/sensors/{sensor}");
        let payload = format!(
            r#"[{{"n":"{sensor}/co","u":"ppm","v":{v},"t":{}}}]"#,
            t.timestamp_micros() as f64 / 1e6
        );
        let received = t + chrono::Duration::milliseconds(100);
        let headers = reading_headers(&subject, &topic, payload.as_bytes(), received, true);
        reading_input(&subject, Some(&headers), payload.into()).unwrap()
    }

    #[test]
    fn the_scorer_runs_the_sensor_rules_on_bus_readings_and_refuses_foreign_ones() {
        let config = city();
        let mut stage = SensorStage::new(config.mqtt.as_ref().unwrap(), &config.sensors, None);
        let mut events = Vec::new();
        let start = Utc::now() - chrono::Duration::seconds(60);
        for i in 0..8 {
            let at = start + chrono::Duration::seconds(2 * i);
            stage.process(
                SensorInput::Bus(published("gas-07", "G-0201", 60.0, at)),
                &mut |e| events.push(e),
            );
        }
        let leaks = events
            .iter()
            .filter(|e| matches!(e, SensorEvent::Observation(o) if o.category == "gas_leak"))
            .count();
        assert!(leaks >= 1, "{events:?}");
        // Unknown here, or in another cell than the subject says: refused, nothing emitted.
        let before = events.len();
        let at = start + chrono::Duration::seconds(20);
        for reading in [
            published("gas-99", "G-0201", 60.0, at),
            published("gas-07", "G-0999", 60.0, at),
        ] {
            stage.process(SensorInput::Bus(reading), &mut |e| events.push(e));
        }
        assert_eq!(events.len(), before);
        // A checkpoint carries the rules' memory and no acknowledgements.
        stage.checkpoint(&mut |e| events.push(e));
        assert!(matches!(
            events.last(),
            Some(SensorEvent::Checkpoint { acks: None, rules, .. }) if rules.iter().any(|(s, _)| s == "gas-07")
        ));
    }

    /// The rules' memory a checkpoint carries, restored in another stage (a successor
    /// taking the cell), goes on: a `for_s` streak begun at one scorer fires at the other
    /// once the whole 10 s have passed. Each checkpoint says how far each cell's readings
    /// (by stream sequence) and the intake's positions are covered.
    #[test]
    fn a_streak_goes_on_in_the_stage_that_takes_the_cell_over() {
        let config = city();
        let mqtt = config.mqtt.as_ref().unwrap();
        let start = Utc::now() - chrono::Duration::seconds(60);
        let leaks = |events: &[SensorEvent]| {
            events
                .iter()
                .filter(|e| matches!(e, SensorEvent::Observation(o) if o.category == "gas_leak"))
                .count()
        };
        let reading = |v: f64, s: i64, seq: u64| {
            let mut r = published("gas-07", "G-0201", v, start + chrono::Duration::seconds(s));
            r.seq = seq;
            SensorInput::Bus(r)
        };
        // Scorer A: 60 ppm for 4 s of the rule's 10.
        let mut a = SensorStage::new(mqtt, &config.sensors, None);
        let mut events = Vec::new();
        for (s, seq) in [(0, 3), (4, 7)] {
            a.process(reading(60.0, s, seq), &mut |e| events.push(e));
        }
        a.process(SensorInput::Position { mark: 1, seq: 8 }, &mut |e| {
            events.push(e)
        });
        a.checkpoint(&mut |e| events.push(e));
        assert_eq!(leaks(&events), 0);
        let Some(SensorEvent::Checkpoint { rules, bus, .. }) = events.pop() else {
            panic!("a checkpoint");
        };
        assert_eq!(
            bus.cells,
            std::collections::BTreeMap::from([("G-0201".to_string(), 7)])
        );
        assert_eq!(bus.position, Some((1, 8)));
        let saved: std::collections::BTreeMap<_, _> = rules.into_iter().collect();
        assert!(saved.contains_key("gas-07"), "{saved:?}");

        // Without the memory, 8 s more of 60 ppm is not enough.
        let mut fresh = SensorStage::new(mqtt, &config.sensors, None);
        let mut events = Vec::new();
        for (s, seq) in [(6, 9), (12, 10)] {
            fresh.process(reading(60.0, s, seq), &mut |e| events.push(e));
        }
        assert_eq!(leaks(&events), 0, "a streak of 6 s only");

        // Scorer B takes the cell with A's memory: the streak began at A's first reading.
        let mut b = SensorStage::new(mqtt, &config.sensors, None);
        let mut events = Vec::new();
        b.process(
            SensorInput::Restore {
                cells: BTreeSet::from(["G-0201".to_string()]),
                rules: saved,
            },
            &mut |e| events.push(e),
        );
        // The memory restored goes out with the next checkpoint, even before a reading.
        b.checkpoint(&mut |e| events.push(e));
        assert!(matches!(
            events.last(),
            Some(SensorEvent::Checkpoint { rules, .. }) if rules.iter().any(|(s, r)| s == "gas-07" && !r.is_empty())
        ));
        for (s, seq) in [(6, 9), (12, 10)] {
            b.process(reading(60.0, s, seq), &mut |e| events.push(e));
        }
        assert_eq!(leaks(&events), 1, "{events:?}");
    }

    #[test]
    fn a_scorer_judges_liveness_only_for_the_sensors_of_its_cells() {
        let config = city();
        let mut stage = SensorStage::new(config.mqtt.as_ref().unwrap(), &config.sensors, None);
        // The sensors declared offline by one input.
        let offline = |stage: &mut SensorStage, input: SensorInput| {
            let mut faults = Vec::new();
            stage.process(input, &mut |e| {
                if let SensorEvent::Fault(f) = e {
                    faults.push(f.camera.to_string());
                }
            });
            faults
        };
        let later = Utc::now() + chrono::Duration::hours(1);
        let cells = |c: &str| SensorInput::Cells(Some(HashSet::from([c.to_string()])));
        offline(&mut stage, cells("G-0301"));
        let faults = offline(&mut stage, SensorInput::Tick(later));
        assert!(!faults.contains(&"gas-07".to_string()), "{faults:?}");
        // G-0201 becomes this scorer's: its silent sensors go offline once their interval
        // has passed since then, not at once.
        offline(&mut stage, cells("G-0201"));
        let faults = offline(&mut stage, SensorInput::Tick(Utc::now()));
        assert!(faults.is_empty(), "{faults:?}");
        let faults = offline(&mut stage, SensorInput::Tick(later));
        assert!(faults.contains(&"gas-07".to_string()), "{faults:?}");
    }
}
