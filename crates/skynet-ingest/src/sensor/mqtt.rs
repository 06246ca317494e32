//! The MQTT connection of the sensor ingest stage (rumqttc on the tokio runtime).
//!
//! - A persistent session (`clean_session = false` by default) with QoS 1 subscriptions:
//!   what the broker queued while skynet was away arrives when it is back.
//! - Manual acknowledgements: a message is acknowledged (PUBACK) only once what it led to
//!   is committed ([`ReadingAcks`]), in receipt order. Until then the broker keeps it, and
//!   sends it again after a crash.
//! - The event loop never waits on a full queue: messages wait in a bounded backlog while
//!   keep-alive pings still go out, and the broker's in-flight window holds the rest.
//! - Reconnects by itself with capped exponential backoff; subscribes again whenever the
//!   broker does not have the session any more.
//! - A last will on the status topic (`offline`, retained); `online` once connected.
//! - Dead letters: a refused payload is published, as it came, to `deadletter_topic`, never
//!   blocking the feed (a full client queue drops the copy and counts it).
//! - `mqtts://` uses rustls, with the CA and client certificate from files.
//!
//! The password never reaches a log, an error or a metric: URLs are shown redacted.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Packet, QoS};
use serde::Deserialize;
use skynet_core::config::{ConfigContext, FieldError, MAX_SECONDS, check_range};
use skynet_core::{ComponentHealth, MaskedUri, Registry, Secret, Shutdown, TableError};
use skynet_mqtt::{MqttConnection, MqttConnectionKeys, MqttError, check_topic};
use tokio::sync::mpsc;

use super::formats::{FormatContext, PayloadFormatFamily};
use super::ingest::{IngestLimits, SensorFrom, TopicFamily, UnknownSensors};

/// The default dead-letter topic.
pub const DEFAULT_DEADLETTER_TOPIC: &str = "skynet/deadletter/sensors";

fn default_url() -> MaskedUri {
    "mqtt://127.0.0.1:1883".into()
}
fn default_qos() -> u8 {
    1
}
fn default_keep_alive() -> f64 {
    30.0
}
fn default_deadletter() -> String {
    DEFAULT_DEADLETTER_TOPIC.into()
}
fn default_max_payload() -> usize {
    64 * 1024
}
fn default_max_future() -> f64 {
    30.0
}
fn default_max_age() -> f64 {
    86_400.0
}
fn default_queue() -> usize {
    4096
}
fn default_initial_backoff() -> f64 {
    0.5
}
fn default_max_backoff() -> f64 {
    10.0
}
fn default_format() -> String {
    "senml".into()
}

/// The `[mqtt]` table as written. Its `Debug` hides the password (a [`Secret`]) and the
/// URL's credentials (a [`MaskedUri`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:port` or `mqtts://host:port`; `${VAR}` and `${VAR:-default}` expand.
    #[serde(default = "default_url")]
    pub url: MaskedUri,
    /// Names the persistent session; default `skynet-<node>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`); default: the
    /// system's roots.
    pub ca_file: Option<String>,
    /// PEM files of the client certificate and its key, for brokers that ask for one.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    #[serde(default = "default_qos")]
    pub qos: u8,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: f64,
    /// `false` keeps the session (and what the broker queues for it) across disconnects.
    #[serde(default)]
    pub clean_session: bool,
    /// Retained `online`/`offline` (the last will); default `skynet/status/<client_id>`.
    pub status_topic: Option<String>,
    #[serde(default = "default_deadletter")]
    pub deadletter_topic: String,
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
    #[serde(default = "default_max_future")]
    pub max_future_s: f64,
    #[serde(default = "default_max_age")]
    pub max_age_s: f64,
    /// `reject` (count and dead-letter) or `register` (as `unassigned`).
    #[serde(default)]
    pub unknown_sensors: UnknownSensorsSetting,
    /// Messages waiting for validation; when full, the broker waits (nothing is dropped): the
    /// connection stops taking messages, and the broker stops sending once its in-flight
    /// window (Mosquitto's `max_inflight_messages`) of unacknowledged ones is full.
    #[serde(default = "default_queue")]
    pub queue: usize,
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_s: f64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_s: f64,
    /// The sensor families: topic filters and payload formats.
    #[serde(default)]
    pub topics: Vec<TopicSettings>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownSensorsSetting {
    #[default]
    Reject,
    Register,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SensorFromSetting {
    Topic,
    Payload,
}

/// One `[[mqtt.topics]]` table: a family of sensors. The keys every payload format shares;
/// the rest of the table is the format kind's own keys, read and checked by that kind.
#[derive(Debug, Clone, Deserialize)]
pub struct TopicSettings {
    /// An MQTT topic filter; its first `+` (or `#`) names the sensor.
    pub pattern: String,
    /// The payload format kind (`senml`, `json`, ...: the registry's
    /// [`PayloadFormatFamily`]). Default `senml`.
    #[serde(default = "default_format")]
    pub format: String,
    /// Default: `topic` when the pattern has a wildcard, else `payload`.
    pub sensor_from: Option<SensorFromSetting>,
    /// The format kind's keys (unknown ones are refused by the kind).
    #[serde(flatten)]
    pub keys: toml::Table,
}

/// The validated `[mqtt]` table.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Broker, client id, credentials and certificates (shared with the MQTT sink).
    pub connection: MqttConnection,
    pub qos: QoS,
    pub clean_session: bool,
    pub status_topic: String,
    pub deadletter_topic: String,
    pub queue: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub families: Vec<TopicFamily>,
    pub limits: IngestLimits,
    /// Subscribe as a member of this shared-subscription group (`$share/<group>/<filter>`,
    /// which Mosquitto serves to 3.1.1 clients too): the broker hands each message to one
    /// member only. Not a key of `[mqtt]`: a cluster's edges set it ([`MqttConfig::shared`]).
    pub share_group: Option<String>,
}

impl MqttConfig {
    /// The same connection, subscribed as a member of the shared-subscription `group`: each
    /// message goes to one of the group's connections (the cluster's edges share the
    /// sensors' messages this way).
    pub fn shared(mut self, group: impl Into<String>) -> Self {
        self.share_group = Some(group.into());
        self
    }

    /// The filter to subscribe to for `pattern`: itself, or its shared form.
    pub fn subscription(&self, pattern: &str) -> String {
        match &self.share_group {
            Some(group) => format!("$share/{group}/{pattern}"),
            None => pattern.to_string(),
        }
    }
}

impl TopicSettings {
    fn validate(&self, i: usize, formats: &Registry) -> Result<TopicFamily, FieldError> {
        let field = |k: &str| format!("topics[{i}].{k}");
        check_topic(&field("pattern"), &self.pattern, true)?;
        let has_wildcard = self.pattern.split('/').any(|l| l == "+" || l == "#");
        let sensor_from = match self.sensor_from {
            Some(SensorFromSetting::Topic) if !has_wildcard => {
                return Err(FieldError::new(
                    field("sensor_from"),
                    format!(
                        "`sensor_from = \"topic\"` needs a `+` or `#` in the pattern `{}`",
                        self.pattern
                    ),
                ));
            }
            Some(SensorFromSetting::Topic) => SensorFrom::Topic,
            Some(SensorFromSetting::Payload) => SensorFrom::Payload,
            None if has_wildcard => SensorFrom::Topic,
            None => SensorFrom::Payload,
        };
        let kind = formats
            .lookup::<PayloadFormatFamily>(&self.format)
            .map_err(|message| FieldError::new(field("format"), message))?;
        let format = (kind.parse)(self.keys.clone(), &FormatContext { sensor_from })
            .map_err(|e| topic_error(i, e))?;
        Ok(TopicFamily {
            pattern: self.pattern.clone(),
            format,
            sensor_from,
        })
    }
}

/// A format kind's refusal of its keys, named in the `[[topics]]` table (`topics[1].unit`),
/// as the binary locates it.
fn topic_error(i: usize, error: TableError) -> FieldError {
    let field = |k: &str| format!("topics[{i}].{k}");
    match error {
        TableError::Field(e) => FieldError::new(field(&e.field), e.message),
        TableError::Serde(e) => {
            let e = skynet_core::locate::serde_field_error(&e);
            FieldError::new(field(&e.field), e.message)
        }
    }
}

impl MqttSettings {
    /// Checks the table; `node` names the default client id, and `formats` holds the
    /// payload format kinds the topics may name.
    pub fn validate(
        &self,
        cx: &ConfigContext,
        node: &str,
        formats: &Registry,
    ) -> Result<MqttConfig, FieldError> {
        let connection = MqttConnectionKeys {
            url: &self.url,
            client_id: self.client_id.as_deref(),
            username: self.username.as_deref(),
            password: self.password.as_ref().map(Secret::expose),
            ca_file: self.ca_file.as_deref(),
            cert_file: self.cert_file.as_deref(),
            key_file: self.key_file.as_deref(),
            keep_alive_s: self.keep_alive_s,
        }
        .validate(cx, &format!("skynet-{node}"))?;
        let client_id = &connection.client_id;
        let qos = match self.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            q => {
                return Err(FieldError::new(
                    "qos",
                    format!("`qos` must be 0, 1 or 2, got {q}"),
                ));
            }
        };
        let status_topic = match &self.status_topic {
            Some(t) => cx.expand("status_topic", t)?,
            None => format!("skynet/status/{client_id}"),
        };
        check_topic("status_topic", &status_topic, false)?;
        let deadletter_topic = cx.expand("deadletter_topic", &self.deadletter_topic)?;
        check_topic("deadletter_topic", &deadletter_topic, false)?;
        if !(64..=16 * 1024 * 1024).contains(&self.max_payload_bytes) {
            return Err(FieldError::new(
                "max_payload_bytes",
                "`max_payload_bytes` must be between 64 and 16777216",
            ));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            return Err(FieldError::new(
                "queue",
                "`queue` must be between 1 and 1000000",
            ));
        }
        let max_future =
            skynet_core::config::seconds_in("max_future_s", self.max_future_s, 0.0, MAX_SECONDS)?;
        let max_age =
            skynet_core::config::seconds_in("max_age_s", self.max_age_s, 1.0, MAX_SECONDS)?;
        let initial_backoff =
            check_range("initial_backoff_s", self.initial_backoff_s, 0.01, 3600.0)?;
        let max_backoff =
            check_range("max_backoff_s", self.max_backoff_s, initial_backoff, 3600.0)?;
        if self.topics.is_empty() {
            return Err(FieldError::new(
                "topics",
                "no sensor topics: add a [[mqtt.topics]] table, like pattern = \"skynet/sensors/+\"",
            ));
        }
        let families = self
            .topics
            .iter()
            .enumerate()
            .map(|(i, t)| t.validate(i, formats))
            .collect::<Result<Vec<_>, _>>()?;
        // skynet's own topics must not come back to it: a dead letter it read again would
        // be refused again, for ever.
        for (field, topic) in [
            ("deadletter_topic", &deadletter_topic),
            ("status_topic", &status_topic),
        ] {
            if let Some(f) = families
                .iter()
                .find(|f| super::ingest::topic_capture(&f.pattern, topic).is_some())
            {
                return Err(FieldError::new(
                    field,
                    format!(
                        "`{field}` `{topic}` matches the sensor topics `{}`: skynet would read its own messages",
                        f.pattern
                    ),
                ));
            }
        }
        Ok(MqttConfig {
            connection,
            qos,
            clean_session: self.clean_session,
            status_topic,
            deadletter_topic,
            queue: self.queue,
            initial_backoff: Duration::from_secs_f64(initial_backoff),
            max_backoff: Duration::from_secs_f64(max_backoff),
            families,
            limits: IngestLimits {
                max_payload_bytes: self.max_payload_bytes,
                max_future,
                max_age,
                unknown_sensors: match self.unknown_sensors {
                    UnknownSensorsSetting::Reject => UnknownSensors::Reject,
                    UnknownSensorsSetting::Register => UnknownSensors::Register,
                },
            },
            share_group: None,
        })
    }
}

/// One message from the broker, with its arrival time.
#[derive(Debug, Clone)]
pub struct MqttMessage {
    pub topic: String,
    pub payload: bytes::Bytes,
    pub at: DateTime<Utc>,
    pub received_at: Instant,
    /// Its place in the broker's in-flight window (QoS 1 and 2): the broker holds the
    /// message, and sends it again after a crash, until this is acknowledged.
    pub ack: Option<PendingAck>,
}

/// A received QoS 1 (or 2) message not yet acknowledged to the broker: its packet id on the
/// connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAck {
    /// Which connection (counted from 1): a packet id means something only on its own
    /// connection, and the broker sends unacknowledged messages again after a reconnect.
    connection: u64,
    pkid: u16,
    qos: QoS,
}

/// Where acknowledgements go: to the MQTT connection, which sends them in the order they
/// come. Unbounded, but never long: the broker stops sending at its in-flight window (and a
/// packet id is 16 bits), so at most that many acknowledgements are ever outstanding.
#[derive(Debug, Clone)]
pub struct AckSender(mpsc::UnboundedSender<Vec<PendingAck>>);

/// Acknowledgements of received messages, in receipt order, that travel with the data they
/// led to and are sent once that data is durable ([`ReadingAcks::ack`]). Dropping them
/// without acking leaves the messages with the broker, which sends them again on the next
/// start.
#[derive(Debug)]
pub struct ReadingAcks {
    to: AckSender,
    acks: Vec<PendingAck>,
}

impl ReadingAcks {
    pub fn new(to: AckSender) -> Self {
        Self {
            to,
            acks: Vec::new(),
        }
    }

    /// Room for `n` acknowledgements from the start (a batch about as large as the last).
    pub fn with_capacity(to: AckSender, n: usize) -> Self {
        Self {
            to,
            acks: Vec::with_capacity(n),
        }
    }

    /// Where these go (for the next batch).
    pub fn sender(&self) -> AckSender {
        self.to.clone()
    }

    pub fn push(&mut self, ack: PendingAck) {
        self.acks.push(ack);
    }

    /// How many messages this acknowledges.
    pub fn len(&self) -> usize {
        self.acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.acks.is_empty()
    }

    /// Hands the acknowledgements to the connection (which sends them in order). Once the
    /// connection has stopped, nothing is sent: the broker keeps the messages.
    pub fn ack(self) {
        if !self.acks.is_empty() {
            let _ = self.to.0.send(self.acks);
        }
    }
}

/// Publishes refused payloads to the dead-letter topic without ever waiting.
#[derive(Clone)]
pub struct DeadLetters {
    client: AsyncClient,
    topic: String,
    published: metrics::Counter,
    dropped: metrics::Counter,
}

impl DeadLetters {
    /// Queues a copy of `payload`; when the client's queue is full the copy is dropped and
    /// counted (`skynet_sensor_deadletter_dropped_total`): the feed never waits for it.
    pub fn publish(&self, payload: &[u8]) {
        match self.client.try_publish(
            self.topic.clone(),
            QoS::AtLeastOnce,
            false,
            payload.to_vec(),
        ) {
            Ok(()) => self.published.increment(1),
            Err(_) => self.dropped.increment(1),
        }
    }
}

/// At most this many messages wait in the connection for room in the consumer's queue. At
/// QoS 1 the broker's in-flight window (and the 16-bit packet id) keeps the backlog well below
/// it; at QoS 0 the broker has no window, so at this size the connection stops reading until
/// the queue has room (TCP then holds the broker back, as before manual acknowledgements).
const MAX_BACKLOG: usize = 65_536;

/// How long one turn of writing acknowledgements may wait for the socket (rumqttc's own
/// default for a flush); what was not written by then waits for the next turn.
const ACK_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes the waiting acknowledgements into the connection's write buffer and flushes once;
/// returns how many were written. Through the client's request queue (`try_ack`) each would
/// be one turn of the event loop with a write and a flush of its own: a system call and a
/// 4-byte TCP segment per message, on this side and on the broker's, which cost more than
/// the rest of a message's handling (the broker's own acknowledgements on receipt go out in
/// batches of up to 10 per read). Without a connection (lost, not yet back) they are dropped:
/// the broker sends those messages again on the next connection, which has its own packet ids.
async fn write_acks(eventloop: &mut EventLoop, to_ack: &mut VecDeque<PendingAck>) -> usize {
    if eventloop.network.is_none() {
        to_ack.clear();
        return 0;
    }
    // `handle_outgoing_packet` queues an `Outgoing` event per acknowledgement for `poll` to
    // return; nobody reads those, so they are taken out again.
    let events = eventloop.state.events.len();
    let mut written = 0;
    let result = tokio::time::timeout(ACK_WRITE_TIMEOUT, async {
        while let Some(ack) = to_ack.front() {
            let request = match ack.qos {
                QoS::AtMostOnce => None,
                QoS::AtLeastOnce => Some(rumqttc::Request::PubAck(rumqttc::PubAck::new(ack.pkid))),
                QoS::ExactlyOnce => Some(rumqttc::Request::PubRec(rumqttc::PubRec::new(ack.pkid))),
            };
            if let Some(request) = request
                && let Some(packet) = eventloop.state.handle_outgoing_packet(request)?
                && let Some(network) = eventloop.network.as_mut()
            {
                network.write(packet).await?;
            }
            to_ack.pop_front();
            written += 1;
        }
        match eventloop.network.as_mut() {
            Some(network) => network.flush().await,
            None => Ok(()),
        }
    })
    .await;
    eventloop.state.events.truncate(events);
    match result {
        Ok(Ok(())) => {}
        // The connection is failing: the event loop sees it on its next turn and reconnects;
        // the broker sends again what these would have acknowledged.
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "acknowledgements not written; the connection is failing");
            to_ack.clear();
            return 0;
        }
        // What was written goes out with the next flush; the rest waits for the next turn.
        Err(_) => tracing::warn!(
            waiting = to_ack.len(),
            "acknowledgements wait: the broker does not take them"
        ),
    }
    written
}

/// A connected (or connecting) MQTT client: hand [`MqttClient::run`] to the runtime.
pub struct MqttClient {
    config: MqttConfig,
    client: AsyncClient,
    eventloop: EventLoop,
    acks: mpsc::UnboundedReceiver<Vec<PendingAck>>,
    /// Given out by [`MqttClient::ack_sender`]; dropped when `run` starts, so the connection
    /// sees when every sender has gone.
    ack_sender: Option<AckSender>,
}

impl MqttClient {
    /// Builds the client (reads the certificate files); connecting happens in `run`.
    /// Acknowledgements are manual: a message is acknowledged when its [`ReadingAcks`] are
    /// acked, not when it arrives.
    pub fn new(config: MqttConfig) -> Result<Self, MqttError> {
        let mut options = config.connection.options()?;
        options
            .set_clean_session(config.clean_session)
            .set_max_packet_size(config.limits.max_payload_bytes + 64 * 1024, 1024 * 1024)
            .set_manual_acks(true)
            .set_last_will(LastWill::new(
                config.status_topic.clone(),
                "offline",
                QoS::AtLeastOnce,
                true,
            ));
        // Our own publishes (status, dead letters): the client-to-broker window. The
        // broker-to-client window is the broker's setting (Mosquitto's
        // `max_inflight_messages`); MQTT 3.1.1 gives the client no say in it.
        options.set_inflight(1000);
        let (client, eventloop) = AsyncClient::new(options, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Self {
            config,
            client,
            eventloop,
            acks: rx,
            ack_sender: Some(AckSender(tx)),
        })
    }

    pub fn dead_letters(&self) -> DeadLetters {
        DeadLetters {
            client: self.client.clone(),
            topic: self.config.deadletter_topic.clone(),
            published: metrics::counter!("skynet_sensor_deadletter_total"),
            dropped: metrics::counter!("skynet_sensor_deadletter_dropped_total"),
        }
    }

    /// Where the consumer sends acknowledgements (see [`ReadingAcks`]). Take it before `run`.
    pub fn ack_sender(&self) -> Option<AckSender> {
        self.ack_sender.clone()
    }

    /// Runs the connection until `stop`: every message on the families' topics goes to
    /// `out` (as whatever the consumer's queue carries), in order.
    ///
    /// - While `out` is full, messages wait in a local backlog and the connection keeps
    ///   polling, so keep-alive pings go out; the broker stops sending once its in-flight
    ///   window of unacknowledged messages is full. Each message that had to wait is counted
    ///   in `skynet_sensor_queue_full_total`.
    /// - Acknowledgements from [`ReadingAcks`] are sent in the order they come; those of an
    ///   earlier connection are dropped (the broker sends those messages again).
    /// - At `stop`, messages not yet in `out` are dropped unacknowledged (the broker keeps
    ///   them) and `out` is closed; the connection goes on sending acknowledgements until
    ///   every [`AckSender`] has gone (what was taken is then acked or given up), then says
    ///   `offline` and disconnects.
    pub async fn run<T: From<MqttMessage> + Send>(
        self,
        out: mpsc::Sender<T>,
        stop: Shutdown,
        health: ComponentHealth,
    ) {
        let Self {
            config,
            client,
            mut eventloop,
            acks: mut ack_rx,
            ack_sender,
        } = self;
        drop(ack_sender);
        let url = config.connection.display_url.clone();
        let connected = metrics::gauge!("skynet_mqtt_connected");
        let reconnects = metrics::counter!("skynet_mqtt_reconnects_total");
        let received = metrics::counter!("skynet_mqtt_messages_total");
        let queue_full = metrics::counter!("skynet_sensor_queue_full_total");
        let acked = metrics::counter!("skynet_sensor_acked_total");
        let backlog_gauge = metrics::gauge!("skynet_mqtt_backlog");
        let depth =
            metrics::gauge!("skynet_queue_depth", "queue" => "sensor_messages", "stage" => "mqtt");
        let mut backoff = config.initial_backoff;
        let mut was_connected = false;
        let mut failures = 0u64;
        let mut out = Some(out);
        let mut backlog: std::collections::VecDeque<T> = std::collections::VecDeque::new();
        let mut to_ack: VecDeque<PendingAck> = VecDeque::new();
        let mut connection = 0u64;
        let mut acks_open = true;
        let mut stopping = false;
        connected.set(0.0);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if !stopping && stop.is_triggered() {
                stopping = true;
                if !backlog.is_empty() {
                    tracing::info!(
                        waiting = backlog.len(),
                        "sensor feed stopping: messages not yet taken stay with the broker"
                    );
                }
                backlog.clear();
                backlog_gauge.set(0.0);
                // Closing the queue lets the sensor stage drain what it holds, and end.
                out = None;
            }
            // Acknowledgements go straight into the connection's write buffer, all that wait
            // with one flush (see `write_acks`).
            if !to_ack.is_empty() {
                let written = write_acks(&mut eventloop, &mut to_ack).await;
                acked.increment(written as u64);
            }
            if stopping && !acks_open && to_ack.is_empty() {
                break;
            }
            // An owned handle for the wait on the queue, so the branches below may close it.
            let waiting_for_room = out.clone().filter(|_| !backlog.is_empty());
            let event = tokio::select! {
                batch = ack_rx.recv(), if acks_open => {
                    match batch {
                        Some(batch) => to_ack.extend(batch.into_iter().filter(|a| a.connection == connection)),
                        None => acks_open = false,
                    }
                    continue;
                }
                permit = async move {
                    match waiting_for_room {
                        Some(queue) => queue.reserve_owned().await.ok(),
                        None => std::future::pending().await,
                    }
                }, if !backlog.is_empty() => {
                    match (permit, backlog.pop_front()) {
                        (Some(permit), Some(item)) => {
                            permit.send(item);
                        }
                        // The consumer has gone: nothing more can be handed over.
                        _ => {
                            backlog.clear();
                            out = None;
                        }
                    }
                    backlog_gauge.set(backlog.len() as f64);
                    continue;
                }
                event = eventloop.poll(), if backlog.len() < MAX_BACKLOG => event,
                _ = tick.tick() => continue,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    received.increment(1);
                    // Stopping (or no consumer): not taken, so not acknowledged; the broker
                    // sends it again on the next start.
                    let Some(queue) = out.as_ref() else {
                        continue;
                    };
                    let ack = (p.qos != QoS::AtMostOnce).then_some(PendingAck {
                        connection,
                        pkid: p.pkid,
                        qos: p.qos,
                    });
                    let message = T::from(MqttMessage {
                        topic: p.topic,
                        payload: p.payload,
                        at: Utc::now(),
                        received_at: Instant::now(),
                        ack,
                    });
                    depth.set((queue.max_capacity() - queue.capacity()) as f64);
                    if !backlog.is_empty() {
                        queue_full.increment(1);
                        backlog.push_back(message);
                    } else {
                        match queue.try_send(message) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(message)) => {
                                queue_full.increment(1);
                                backlog.push_back(message);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => out = None,
                        }
                    }
                    backlog_gauge.set(backlog.len() as f64);
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    // A new connection: packet ids of the old one mean nothing here, and the
                    // broker sends its unacknowledged messages again.
                    connection += 1;
                    to_ack.clear();
                    backoff = config.initial_backoff;
                    connected.set(1.0);
                    if was_connected {
                        reconnects.increment(1);
                    }
                    was_connected = true;
                    failures = 0;
                    tracing::info!(url = %url, session_present = ack.session_present, "MQTT connected");
                    health.describe(Some(&format!("connected to {url}")), None);
                    health.up();
                    let _ = client.try_publish(
                        config.status_topic.clone(),
                        QoS::AtLeastOnce,
                        true,
                        "online",
                    );
                    // Subscribe on every connection, even when the broker says it kept the
                    // session: some brokers report a session they do not have (Mosquitto
                    // 2.0 with persistence, for a new client). A repeated subscription only
                    // replaces the old one; retained messages it brings again are refused
                    // as duplicates.
                    let filters: Vec<rumqttc::SubscribeFilter> = config
                        .families
                        .iter()
                        .map(|f| {
                            rumqttc::SubscribeFilter::new(
                                config.subscription(&f.pattern),
                                config.qos,
                            )
                        })
                        .collect();
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::error!(url = %url, error = %e, "MQTT subscribe could not be queued");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        tracing::error!(url = %url, "the broker refused a sensor topic subscription");
                        health.describe(Some("a subscription was refused"), None);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    connected.set(0.0);
                    failures += 1;
                    let reason = format!("MQTT {url}: {e}");
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(error = %reason, retry_in_s = backoff.as_secs_f64(), attempt = failures, "MQTT connection lost; reconnecting");
                    }
                    health.retrying(reason);
                    if stopping {
                        // Nothing more can be acknowledged on this connection.
                        break;
                    }
                    let until = tokio::time::Instant::now() + backoff;
                    while tokio::time::Instant::now() < until && !stop.is_triggered() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    backoff = (backoff * 2).min(config.max_backoff);
                }
            }
        }
        // A clean goodbye: offline (retained) first, then disconnect; a second at most. The
        // acknowledgements were flushed before (`write_acks`).
        connected.set(0.0);
        let _ = client.try_publish(
            config.status_topic.clone(),
            QoS::AtLeastOnce,
            true,
            "offline",
        );
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while eventloop.poll().await.is_ok() {}
        })
        .await;
        health.finished();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formats() -> Registry {
        let mut registry = Registry::default();
        super::super::formats::register(&mut registry);
        registry
    }

    fn settings(extra: &str) -> Result<MqttConfig, FieldError> {
        let text = format!("{extra}\n[[topics]]\npattern = \"skynet/sensors/+\"\n");
        let s: MqttSettings =
            toml::from_str(&text).map_err(|e| FieldError::new("", e.to_string()))?;
        s.validate(
            &ConfigContext::new(std::path::Path::new("/etc/skynet/x.toml")),
            "n1",
            &formats(),
        )
    }

    #[test]
    fn defaults_give_a_persistent_qos1_session() {
        let c = settings("").unwrap();
        let n = &c.connection;
        assert_eq!((n.host.as_str(), n.port, n.tls), ("127.0.0.1", 1883, false));
        assert_eq!(c.qos, QoS::AtLeastOnce);
        assert!(!c.clean_session);
        assert_eq!(n.client_id, "skynet-n1");
        assert_eq!(c.status_topic, "skynet/status/skynet-n1");
        assert_eq!(c.deadletter_topic, DEFAULT_DEADLETTER_TOPIC);
        assert_eq!(c.subscription("skynet/sensors/+"), "skynet/sensors/+");
        let c = c.shared("city-edges");
        assert_eq!(
            c.subscription("skynet/sensors/+"),
            "$share/city-edges/skynet/sensors/+"
        );
    }

    #[test]
    fn credentials_come_from_the_url_or_the_environment_and_stay_hidden() {
        let c = settings("url = \"mqtts://ops:s3cr%21t@broker.example:8884\"").unwrap();
        let credentials = c.connection.credentials.clone().unwrap();
        assert_eq!(
            (credentials.user.as_str(), credentials.password.expose()),
            ("ops", "s3cr!t")
        );
        assert!(
            !c.connection.display_url.contains("s3cr"),
            "{}",
            c.connection.display_url
        );
        assert!(!format!("{c:?}").contains("s3cr"));
        let s: MqttSettings = toml::from_str(
            "url = \"mqtts://ops:s3cr%21t@broker.example:8884\"\npassword = \"hunter2\"",
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("s3cr") && !shown.contains("hunter2"),
            "{shown}"
        );
        let e = settings("url = \"http://ops:s3cret@x\"").unwrap_err();
        assert!(!e.message.contains("s3cret"), "{e}");
        let c = settings("url = \"${SKYNET_SURELY_UNSET_MQTT:-mqtt://10.0.0.1:1999}\"").unwrap();
        assert_eq!(
            (c.connection.host.as_str(), c.connection.port),
            ("10.0.0.1", 1999)
        );
    }

    #[test]
    fn bad_tables_name_their_field() {
        assert_eq!(settings("qos = 3").unwrap_err().field, "qos");
        assert_eq!(
            settings("deadletter_topic = \"a/+\"").unwrap_err().field,
            "deadletter_topic"
        );
        assert_eq!(
            settings("ca_file = \"/ca.pem\"").unwrap_err().field,
            "ca_file"
        );
        assert_eq!(
            settings("deadletter_topic = \"skynet/sensors/dead\"")
                .unwrap_err()
                .field,
            "deadletter_topic"
        );
        // Each table with one bad `[[topics]]` entry, which the error names.
        let topic_error = |text: &str| {
            let s: MqttSettings = toml::from_str(text).unwrap();
            s.validate(
                &ConfigContext::new(std::path::Path::new("x")),
                "n",
                &formats(),
            )
            .unwrap_err()
            .field
        };
        assert_eq!(
            topic_error("[[topics]]\npattern = \"a/#/b\""),
            "topics[0].pattern"
        );
        assert_eq!(
            topic_error("[[topics]]\npattern = \"a/+\"\nformat = \"json\""),
            "topics[0].value_pointer"
        );
        assert_eq!(
            topic_error("[[topics]]\npattern = \"a/b\"\nformat = \"json\"\nvalue_pointer = \"/v\""),
            "topics[0].sensor_pointer"
        );
        assert_eq!(
            topic_error("[[topics]]\npattern = \"a/+\"\nformat = \"json\"\nvalue_pointer = \"v\""),
            "topics[0].value_pointer"
        );
    }

    #[test]
    fn each_format_checks_its_own_keys() {
        let refused = |text: &str| {
            let s: MqttSettings = toml::from_str(text).unwrap();
            s.validate(
                &ConfigContext::new(std::path::Path::new("x")),
                "n",
                &formats(),
            )
            .unwrap_err()
        };
        let e = refused("[[topics]]\npattern = \"a/+\"\nvalue_pointer = \"/v\"");
        assert_eq!(e.field, "topics[0].format");
        assert_eq!(
            e.message,
            "JSON pointers apply to `format = \"json\"` only; SenML names its own fields"
        );
        let e = refused("[[topics]]\npattern = \"a/+\"\nformat = \"xml\"");
        assert_eq!(e.field, "topics[0].format");
        assert!(
            e.message.contains("unknown payload format kind `xml`"),
            "{e}"
        );
        let e = refused(
            "[[topics]]\npattern = \"a/+\"\n[[topics]]\npattern = \"b/+\"\nformat = \"json\"\nvalue_pointer = \"/v\"\nunit = \"furlong\"",
        );
        assert_eq!(e.field, "topics[1].unit");
        assert_eq!(e.message, "unknown unit `furlong`");
        let e = refused("[[topics]]\npattern = \"a/+\"\nformat = \"json\"\nvalu_pointer = \"/v\"");
        assert_eq!(e.field, "topics[0].valu_pointer");
        assert!(e.message.contains("unknown field `valu_pointer`"), "{e}");
        let e = refused("[[topics]]\npattern = \"a/+\"\nformat = \"json\"\nvalue_pointer = 5");
        assert_eq!(e.field, "topics[0].value_pointer", "{e}");
        // SenML keeps reading (and ignoring) `time_format`, and checking `unit`, as the one
        // flat topic table did.
        let text = "[[topics]]\npattern = \"a/+\"\ntime_format = \"unix_ms\"\nunit = \"ppm\"";
        let s: MqttSettings = toml::from_str(text).unwrap();
        assert!(
            s.validate(
                &ConfigContext::new(std::path::Path::new("x")),
                "n",
                &formats()
            )
            .is_ok()
        );
        assert_eq!(
            refused("[[topics]]\npattern = \"a/+\"\nunit = \"furlong\"").field,
            "topics[0].unit"
        );
        // A JSON family reads its records through its mapping.
        let text = "[[topics]]\npattern = \"v/+\"\nformat = \"json\"\nvalue_pointer = \"/v\"\ntime_format = \"unix_ms\"\ntime_pointer = \"/t\"";
        let s: MqttSettings = toml::from_str(text).unwrap();
        let c = s
            .validate(
                &ConfigContext::new(std::path::Path::new("x")),
                "n",
                &formats(),
            )
            .unwrap();
        let records = c.families[0]
            .format
            .parse(br#"{"v":3,"t":1800000000000}"#)
            .unwrap();
        assert_eq!(
            records[0].1.time,
            Some(super::super::RawTime::Absolute(1.8e9))
        );
    }
}
