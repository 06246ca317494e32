//! The MQTT sink: every event published at QoS 1 to `<topic_prefix>/incidents/<grid>/<category>`
//! or `<topic_prefix>/grid_risk/<grid>`, its body the stored CloudEvent JSON, unchanged
//! (structured mode: MQTT 3.1.1 has no user properties to carry `ce-*` attributes).
//!
//! A batch counts as delivered only once the broker has sent a PUBACK for every publish of
//! it. Publishes are pipelined: the whole batch (at most `max_in_flight` events, which is also
//! rumqttc's in-flight window) is handed to the client, then the acks are awaited. A batch a
//! disconnect interrupts fails as a whole and the worker retries it on a fresh connection:
//! at-least-once, so consumers deduplicate by the CloudEvent `id`.
//!
//! The connection (broker URL, credentials, TLS) is the code the sensor feed shares, in
//! [`skynet_mqtt::MqttConnectionKeys`]; nothing connects before the first delivery,
//! so skynet starts and commits while the broker is down.

use std::collections::HashSet;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use skynet_core::Component;
use skynet_core::{ConfigContext, FieldError, MaskedUri, Secret};
use skynet_mqtt::{MqttConnection, MqttConnectionKeys, check_topic};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{BuildSink, Envelope, IncidentSink, SinkBuildContext, SinkFamily};
use crate::{EmitError, StoredEvent};

/// MQTT's own limit on a packet (the remaining length field's largest value): rumqttc's
/// default outgoing limit (10 KiB) would make an incident with a long evidence list fail for
/// ever; the broker's own `message_size_limit` is the one that counts.
const MAX_PACKET_BYTES: usize = 268_435_455;

/// `kind = "mqtt"`. `Debug` shows no secret: the password is a [`Secret`], the URL a
/// [`MaskedUri`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// `mqtt://host:port` or `mqtts://host:port`; `${VAR}` expanded. A user name and password
    /// in it are used to log in and never shown.
    pub url: MaskedUri,
    /// Override the URL's credentials; `${VAR}` expanded.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// Default `skynet-<node>-sink-<name>`: unique per node and sink, since a broker drops a
    /// connection when another one logs in with the same id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// PEM files for `mqtts://`: the CA of the broker's certificate (default: the system's
    /// roots), and a client certificate and key for brokers that ask for one.
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default = "default_keep_alive_s")]
    pub keep_alive_s: f64,
    /// Topics are `<topic_prefix>/incidents/<grid>/<category>` and
    /// `<topic_prefix>/grid_risk/<grid>`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Publish retained: the broker keeps the last event of each topic for new subscribers.
    #[serde(default)]
    pub retain: bool,
    /// Publishes awaiting their PUBACK at once; also the most events in one batch.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long the broker may take to accept the connection, or to send the next PUBACK,
    /// before the batch is retried.
    #[serde(default = "default_ack_timeout_s")]
    pub ack_timeout_s: f64,
    /// Set by `validate`.
    #[serde(skip)]
    connection: Option<MqttConnection>,
    /// The node's name, from `validate`: the default client id is completed with the sink's
    /// name in `build`.
    #[serde(skip)]
    node: String,
}

const fn default_keep_alive_s() -> f64 {
    30.0
}
fn default_topic_prefix() -> String {
    "skynet".into()
}
const fn default_max_in_flight() -> usize {
    1000
}
const fn default_ack_timeout_s() -> f64 {
    10.0
}

impl MqttSinkConfig {
    /// A config with every default, for `url` (tests, examples); call `validate` before
    /// building it.
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: MaskedUri::new(url),
            username: None,
            password: None,
            client_id: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            keep_alive_s: default_keep_alive_s(),
            topic_prefix: default_topic_prefix(),
            retain: false,
            max_in_flight: default_max_in_flight(),
            ack_timeout_s: default_ack_timeout_s(),
            connection: None,
            node: String::new(),
        }
    }

    /// The client id the sink `name` connects with.
    pub fn client_id_for(&self, name: &str) -> String {
        match (&self.client_id, &self.connection) {
            (Some(_), Some(connection)) => connection.client_id.clone(),
            _ if self.node.is_empty() => format!("skynet-sink-{name}"),
            _ => format!("skynet-{}-sink-{name}", self.node),
        }
    }
}

impl Component<SinkFamily> for MqttSinkConfig {
    const KIND: &'static str = "mqtt";
    const EXAMPLE: &'static str = "url = \"mqtt://127.0.0.1:1883\"";
    type Validated = Self;

    fn validate(mut self, cx: &ConfigContext) -> Result<Self, FieldError> {
        self.node = cx.node.clone();
        // The sink's name is not known here: the default id is completed in `build`, from
        // ids and names that are already checked.
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
        .validate(cx, "skynet-sink")?;
        let prefix = cx.expand("topic_prefix", &self.topic_prefix)?;
        check_topic("topic_prefix", &prefix, false)?;
        if prefix.starts_with('$') || prefix.ends_with('/') {
            return Err(FieldError::new(
                "topic_prefix",
                format!(
                    "`topic_prefix` must not start with `$` (broker topics) or end with `/`, got `{prefix}`"
                ),
            ));
        }
        self.topic_prefix = prefix;
        // rumqttc numbers packets with u16 ids and keeps one slot per id in flight.
        if !(1..=u16::MAX as usize).contains(&self.max_in_flight) {
            return Err(FieldError::new(
                "max_in_flight",
                format!(
                    "`max_in_flight` must be between 1 and 65535, got {}",
                    self.max_in_flight
                ),
            ));
        }
        skynet_core::config::check_range("ack_timeout_s", self.ack_timeout_s, 0.1, 600.0)?;
        self.connection = Some(connection);
        Ok(self)
    }
}

impl BuildSink for MqttSinkConfig {
    fn build(&self, cx: &SinkBuildContext<'_>) -> Result<Box<dyn IncidentSink>, EmitError> {
        let name = cx.name;
        Ok(Box::new(MqttSink::new(name, self)?))
    }
}

/// What the connection's event loop reports to the sink.
#[derive(Debug)]
enum Progress {
    /// The broker accepted the connection (CONNACK).
    Connected,
    /// A QoS 1 publish went out with this packet id.
    Sent(u16),
    /// Its PUBACK came back.
    Acked(u16),
    /// The connection failed; the event loop has stopped.
    Lost(String),
}

/// One connection: the client that queues publishes and the task driving its event loop.
struct Link {
    client: AsyncClient,
    progress: mpsc::UnboundedReceiver<Progress>,
    driver: JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        // The event loop owns the socket: stopping the task closes the connection.
        self.driver.abort();
    }
}

/// Drives the event loop, passing on what tracks the batch, until the connection fails or
/// the sink drops the link. A failed connection is not retried here: the worker's backoff
/// decides when to try again, with a fresh connection and the whole batch.
async fn drive(mut eventloop: EventLoop, progress: mpsc::UnboundedSender<Progress>) {
    loop {
        let report = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => Progress::Connected,
            Ok(Event::Incoming(Packet::PubAck(ack))) => Progress::Acked(ack.pkid),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => Progress::Sent(pkid),
            Ok(_) => continue,
            Err(e) => {
                let _ = progress.send(Progress::Lost(e.to_string()));
                return;
            }
        };
        if progress.send(report).is_err() {
            return;
        }
    }
}

/// Publishes to an MQTT broker at QoS 1; see the module doc.
pub struct MqttSink {
    name: String,
    /// The URL without credentials, for logs and errors.
    shown_url: String,
    client_id: String,
    options: MqttOptions,
    topic_prefix: String,
    retain: bool,
    max_in_flight: usize,
    ack_timeout: Duration,
    /// None until the first delivery, and again after any failure: a new connection starts
    /// with no packet ids in flight, so acks of an abandoned batch cannot be miscounted.
    link: Option<Link>,
}

impl MqttSink {
    /// From a validated config; reads the certificate files, connects to nothing.
    pub fn new(name: impl Into<String>, config: &MqttSinkConfig) -> Result<Self, EmitError> {
        let name = name.into();
        let fail = |message: String| EmitError::Sink {
            sink: name.clone(),
            message,
        };
        let mut connection = config
            .connection
            .clone()
            .ok_or_else(|| fail("the config was not validated".into()))?;
        connection.client_id = config.client_id_for(&name);
        let mut options = connection.options().map_err(|e| fail(e.to_string()))?;
        let window = u16::try_from(config.max_in_flight.max(1))
            .map_err(|_| fail("`max_in_flight` is above 65535".into()))?;
        options
            // Nothing to resume: an interrupted batch is published again whole.
            .set_clean_session(true)
            .set_inflight(window)
            // The whole batch fits in the request queue, so queueing it never waits.
            .set_request_channel_capacity(config.max_in_flight + 16)
            .set_max_packet_size(64 * 1024, MAX_PACKET_BYTES);
        Ok(Self {
            shown_url: connection.display_url.clone(),
            client_id: connection.client_id,
            name,
            options,
            topic_prefix: config.topic_prefix.clone(),
            retain: config.retain,
            max_in_flight: config.max_in_flight.max(1),
            ack_timeout: Duration::from_secs_f64(config.ack_timeout_s),
            link: None,
        })
    }

    /// The client id this sink connects with.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    fn error(&self, message: impl std::fmt::Display) -> EmitError {
        EmitError::Sink {
            sink: self.name.clone(),
            message: format!("MQTT {}: {message}", self.shown_url),
        }
    }

    /// The connection, made (and CONNACKed) if there is none or the last one was lost.
    async fn link(&mut self) -> Result<&mut Link, EmitError> {
        if let Some(link) = &mut self.link {
            // Anything reported between batches: only a loss matters (no publish is out).
            let alive = loop {
                match link.progress.try_recv() {
                    Ok(Progress::Lost(reason)) => {
                        tracing::warn!(sink = %self.name, url = %self.shown_url, error = %reason, "MQTT connection lost between batches");
                        break false;
                    }
                    Ok(_) => {}
                    Err(mpsc::error::TryRecvError::Empty) => break true,
                    Err(mpsc::error::TryRecvError::Disconnected) => break false,
                }
            };
            if !alive {
                self.link = None;
            }
        }
        if self.link.is_none() {
            let (client, eventloop) =
                AsyncClient::new(self.options.clone(), self.max_in_flight + 16);
            let (tx, progress) = mpsc::unbounded_channel();
            let mut link = Link {
                client,
                progress,
                driver: tokio::spawn(drive(eventloop, tx)),
            };
            // Dropping `link` on an early return stops the event loop.
            match tokio::time::timeout(self.ack_timeout, link.progress.recv()).await {
                Ok(Some(Progress::Connected)) => {}
                Ok(Some(Progress::Lost(reason))) => {
                    return Err(self.error(format!("cannot connect: {reason}")));
                }
                Ok(_) => return Err(self.error("cannot connect: the event loop stopped")),
                Err(_) => {
                    return Err(self.error(format!(
                        "no CONNACK within {} s",
                        self.ack_timeout.as_secs_f64()
                    )));
                }
            }
            tracing::info!(sink = %self.name, url = %self.shown_url, client_id = %self.client_id, "connected to the MQTT broker");
            self.link = Some(link);
        }
        self.link.as_mut().ok_or_else(|| EmitError::Sink {
            sink: self.name.clone(),
            message: "no MQTT connection".into(),
        })
    }

    /// Queues every publish of the batch, then waits for all their PUBACKs.
    async fn publish(&mut self, routed: Vec<(String, String)>) -> Result<(), EmitError> {
        let (retain, timeout) = (self.retain, self.ack_timeout);
        let total = routed.len();
        let link = self.link().await?;
        let queued: Result<(), String> = async {
            for (topic, body) in routed {
                match tokio::time::timeout(
                    timeout,
                    link.client.publish(topic, QoS::AtLeastOnce, retain, body),
                )
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("publish not queued: {e}")),
                    Err(_) => return Err("the client's queue did not take the publish".into()),
                }
            }
            Ok(())
        }
        .await;
        // Packet ids are unique among the publishes not yet acked (rumqttc waits for an
        // id's ack before using it again), so a set of them tracks the batch; every
        // publish reports its id once, in the order sent.
        let mut outstanding: HashSet<u16> = HashSet::new();
        let mut sent = 0usize;
        let waited: Result<(), String> = match queued {
            Err(e) => Err(e),
            Ok(()) => loop {
                if sent == total && outstanding.is_empty() {
                    break Ok(());
                }
                match tokio::time::timeout(timeout, link.progress.recv()).await {
                    Ok(Some(Progress::Sent(pkid))) => {
                        sent += 1;
                        outstanding.insert(pkid);
                    }
                    Ok(Some(Progress::Acked(pkid))) => {
                        outstanding.remove(&pkid);
                    }
                    Ok(Some(Progress::Connected)) => {}
                    Ok(Some(Progress::Lost(reason))) => {
                        break Err(format!("connection lost: {reason}"));
                    }
                    Ok(None) => break Err("the event loop stopped".into()),
                    Err(_) => {
                        break Err(format!("no PUBACK within {} s", timeout.as_secs_f64()));
                    }
                }
            },
        };
        waited.map_err(|message| {
            let acked = sent - outstanding.len();
            self.error(format!(
                "{message} ({acked} of {total} publishes acknowledged; the batch is retried whole)"
            ))
        })
    }
}

#[async_trait::async_trait]
impl IncidentSink for MqttSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn batch_size(&self) -> usize {
        self.max_in_flight
    }

    async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError> {
        if batch.is_empty() {
            return Ok(());
        }
        let routed = batch
            .iter()
            .map(|event| {
                let topic = Envelope::parse(event)?.address(&self.topic_prefix, '/');
                Ok((topic, event.body.clone()))
            })
            .collect::<Result<Vec<_>, EmitError>>()?;
        let result = self.publish(routed).await;
        if result.is_err() {
            // Start the retry on a fresh connection: see `link`.
            self.link = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Mosquitto of the test's own on a spare port (`/usr/sbin/mosquitto -c CONF`, which
    /// scripts/setup.sh installs), killed by its pid on drop: unit tests use no broker they
    /// did not start.
    struct PrivateMosquitto {
        port: u16,
        dir: std::path::PathBuf,
        child: std::process::Child,
    }

    impl PrivateMosquitto {
        fn start() -> Self {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let dir = std::env::temp_dir().join(format!(
                "skynet-emit-mosquitto-{}-{port}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"),
            )
            .unwrap();
            let child = std::process::Command::new("/usr/sbin/mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("mosquitto starts (scripts/setup.sh installs it)");
            let broker = Self { port, dir, child };
            // Ready when it accepts connections; a generous deadline, not a timing check.
            let until = std::time::Instant::now() + Duration::from_secs(30);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    std::time::Instant::now() < until,
                    "the private mosquitto listens on {port}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            broker
        }

        fn url(&self) -> String {
            format!("mqtt://127.0.0.1:{}", self.port)
        }
    }

    impl Drop for PrivateMosquitto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn parse(toml_text: &str) -> Result<MqttSinkConfig, String> {
        let config: MqttSinkConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let cx =
            ConfigContext::new(std::path::Path::new("/etc/skynet/skynet.toml")).with_node("n1");
        config
            .validate(&cx)
            .map_err(|e| format!("{}: {e}", e.field))
    }

    fn stored(seq: i64, id: &str, event_type: &str, grid: &str, category: &str) -> StoredEvent {
        let body = serde_json::json!({
            "specversion": "1.0", "id": id, "source": "skynet/n1", "type": event_type,
            "subject": id, "time": "2026-11-27T08:00:00Z", "datacontenttype": "application/json",
            "data": {"grid": grid, "category": category}
        });
        StoredEvent {
            seq,
            id: id.into(),
            body: body.to_string(),
        }
    }

    #[test]
    fn defaults_route_under_skynet_with_a_client_id_per_node_and_sink() {
        let config = parse(r#"url = "mqtt://127.0.0.1:1883""#).unwrap();
        assert_eq!(config.topic_prefix, "skynet");
        assert!(!config.retain);
        assert_eq!(config.client_id_for("city"), "skynet-n1-sink-city");
        let sink = MqttSink::new("city", &config).unwrap();
        assert_eq!(sink.client_id(), "skynet-n1-sink-city");
        assert_eq!(sink.batch_size(), 1000);
        let config = parse("url = \"mqtt://h\"\nclient_id = \"ops-1\"").unwrap();
        assert_eq!(MqttSink::new("x", &config).unwrap().client_id(), "ops-1");
    }

    #[test]
    fn topics_follow_the_prefix_and_the_route() {
        let config = parse("url = \"mqtt://h\"\ntopic_prefix = \"city/a\"").unwrap();
        let incident = stored(1, "i1", crate::INCIDENT_EVENT_TYPE, "G-0201", "gas leak");
        let risk = stored(2, "g1", crate::GRID_RISK_EVENT_TYPE, "G+1", "");
        let topic = |e: &StoredEvent| {
            Envelope::parse(e)
                .unwrap()
                .address(&config.topic_prefix, '/')
        };
        assert_eq!(topic(&incident), "city/a/incidents/G-0201/gas_leak");
        assert_eq!(topic(&risk), "city/a/grid_risk/G_1");
    }

    #[test]
    fn bad_values_name_their_key_and_never_show_a_password() {
        let cases = [
            (r#"url = "http://ops:hunter2@host""#, "url"),
            (r#"url = "mqtt://ops:hunter2@""#, "url"),
            ("url = \"mqtt://h\"\ntopic_prefix = \"a/+\"", "topic_prefix"),
            ("url = \"mqtt://h\"\ntopic_prefix = \"a/\"", "topic_prefix"),
            (
                "url = \"mqtt://h\"\ntopic_prefix = \"$SYS\"",
                "topic_prefix",
            ),
            ("url = \"mqtt://h\"\nmax_in_flight = 0", "max_in_flight"),
            ("url = \"mqtt://h\"\nmax_in_flight = 70000", "max_in_flight"),
            ("url = \"mqtt://h\"\nack_timeout_s = 0", "ack_timeout_s"),
            ("url = \"mqtt://h\"\nkeep_alive_s = 1", "keep_alive_s"),
            ("url = \"mqtt://h\"\nclient_id = \"a/b\"", "client_id"),
            ("url = \"mqtt://h\"\nca_file = \"/ca.pem\"", "ca_file"),
            (
                "url = \"mqtts://h\"\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"",
                "cert_file",
            ),
            ("url = \"mqtt://h\"\npassword = \"hunter2\"", "password"),
            (
                "url = \"mqtt://h\"\nusername = \"u\"\npassword = \"${SKYNET_SURELY_UNSET_PW}\"",
                "password",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.starts_with(&format!("{key}:")), "{text}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = parse("url = \"mqtt://h\"\nqos = 2").unwrap_err();
        assert!(err.contains("qos"), "{err}");
        let config = parse(r#"url = "mqtts://ops:hunter2@broker:8883""#).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn credentials_come_from_the_keys_or_the_url() {
        // SAFETY: no other test reads or writes this variable.
        unsafe { std::env::set_var("SKYNET_TEST_MQTT_SINK_PW", "s3cret") };
        let config = parse(
            "url = \"mqtt://h\"\nusername = \"ops\"\npassword = \"${SKYNET_TEST_MQTT_SINK_PW}\"",
        )
        .unwrap();
        let credentials = config.connection.as_ref().unwrap().credentials.clone();
        assert_eq!(credentials.as_ref().unwrap().password.expose(), "s3cret");
        assert!(!format!("{config:?}").contains("s3cret"));
        let sink = MqttSink::new("x", &config).unwrap();
        let login = sink.options.credentials().unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("ops", "s3cret")
        );
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_broker_that_is_not_there_fails_the_batch_without_showing_the_password() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = parse(&format!(
            "url = \"mqtt://ops:hunter2@127.0.0.1:{port}\"\nack_timeout_s = 2"
        ))
        .unwrap();
        let mut sink = MqttSink::new("down", &config).unwrap();
        let batch = [stored(1, "i1", crate::INCIDENT_EVENT_TYPE, "G", "c")];
        let err = runtime().block_on(sink.deliver(&batch)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, EmitError::Sink { .. }), "{text}");
        assert!(
            text.contains("down") && text.contains("cannot connect"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_batch_reaches_a_private_broker_at_qos_1() {
        let broker = PrivateMosquitto::start();
        let unique = format!("t{}x{}", std::process::id(), fastrand_suffix());
        let prefix = format!("skynet-test/{unique}");
        let mut config = parse(&format!(
            "url = \"{}\"\ntopic_prefix = \"{prefix}\"\nmax_in_flight = 7",
            broker.url()
        ))
        .unwrap();
        config.client_id = None;
        let mut sink = MqttSink::new(format!("unit{unique}"), &config).unwrap();
        let batch: Vec<StoredEvent> = (0..20)
            .map(|i| {
                stored(
                    i,
                    &format!("e{i}"),
                    crate::INCIDENT_EVENT_TYPE,
                    "G-1",
                    "fire",
                )
            })
            .collect();
        runtime().block_on(async {
            // Subscribe first: the broker keeps nothing for a subscriber that is not there.
            let mut options = MqttOptions::new(format!("sub-{unique}"), "127.0.0.1", broker.port);
            options.set_max_packet_size(1 << 20, 1 << 20);
            let (client, mut eventloop) = AsyncClient::new(options, 100);
            client
                .subscribe(format!("{prefix}/#"), QoS::AtLeastOnce)
                .await
                .unwrap();
            loop {
                if let Event::Incoming(Packet::SubAck(_)) = eventloop.poll().await.unwrap() {
                    break;
                }
            }
            // Batches at most the in-flight window, as the worker hands them.
            for chunk in batch.chunks(sink.batch_size()) {
                sink.deliver(chunk).await.unwrap();
            }
            let mut got = Vec::new();
            while got.len() < batch.len() {
                let event = tokio::time::timeout(Duration::from_secs(60), eventloop.poll())
                    .await
                    .expect("the published events arrive")
                    .unwrap();
                if let Event::Incoming(Packet::Publish(p)) = event {
                    got.push((p.topic, String::from_utf8(p.payload.to_vec()).unwrap()));
                }
            }
            for ((topic, body), event) in got.iter().zip(&batch) {
                assert_eq!(topic, &format!("{prefix}/incidents/G-1/fire"));
                assert_eq!(body, &event.body, "the body is the stored CloudEvent");
            }
        });
    }

    /// A few digits that differ between runs, so parallel runs use their own topics.
    fn fastrand_suffix() -> u32 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default()
    }
}
