//! The NATS JetStream sink: the production queue the city's case system consumes.
//!
//! Every event is published to a JetStream stream (created when missing) with its CloudEvent
//! id as `Nats-Msg-Id`, so the server drops a redelivered event within the stream's duplicate
//! window, and the batch is acknowledged in the outbox only once every publish is acked by
//! the stream. Publishes are pipelined: the whole batch is sent before the first ack is
//! awaited. The structured CloudEvent is the body; its attributes also go out as binary-mode
//! `ce-*` headers, so a consumer can route without parsing the body.
//!
//! The duplicate window defaults to an hour, longer than a restart with back-off or a
//! reboot, and an existing stream's window is brought to the configured one at connect.
//! An event the server will never take (its subject is one this user may not publish to, or
//! it is larger than the stream or server allows) goes to the dead letters, so the events
//! after it still flow; a stream that captures none of the sink's subjects shows the sink as
//! `refusing` and is retried.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishError, PublishErrorKind};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use skynet_core::Component;
use skynet_core::config::check_range;
use skynet_core::{ConfigContext, FieldError, MaskedUri, redact::redact_uri};

use super::{BuildSink, Delivery, Envelope, IncidentSink, Rejection, SinkBuildContext, SinkFamily};
use crate::{EmitError, StoredEvent};

/// The environment variables credentials come from, so they never sit in a config file.
pub const CREDS_ENV: &str = "SKYNET_NATS_CREDS";
pub const NKEY_ENV: &str = "SKYNET_NATS_NKEY";
pub const TOKEN_ENV: &str = "SKYNET_NATS_TOKEN";
pub const USER_ENV: &str = "SKYNET_NATS_USER";
pub const PASSWORD_ENV: &str = "SKYNET_NATS_PASSWORD";

/// JetStream's retention policies, as the config names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Kept until the stream's age or size limits; any number of consumers.
    #[default]
    Limits,
    /// Kept while a consumer has not acknowledged it.
    Interest,
    /// Removed once one consumer acknowledges it.
    Workqueue,
}

impl From<Retention> for stream::RetentionPolicy {
    fn from(r: Retention) -> Self {
        match r {
            Retention::Limits => Self::Limits,
            Retention::Interest => Self::Interest,
            Retention::Workqueue => Self::WorkQueue,
        }
    }
}

/// `kind = "nats"`. Its `Debug` shows the URL without credentials (a [`MaskedUri`]).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// `nats://host:4222` (or `tls://`); `${VAR}` expanded. A comma separates several servers.
    pub url: MaskedUri,
    #[serde(default = "default_stream")]
    pub stream: String,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long the stream keeps an event; 0 keeps it until the other limits remove it.
    #[serde(default = "default_max_age_days")]
    pub max_age_days: f64,
    /// The server drops an event whose `Nats-Msg-Id` it saw this recently. An hour by
    /// default: longer than a restart with back-off, so an event published just before a
    /// crash and again after it is stored once. An existing stream's window is updated to it.
    #[serde(default = "default_duplicate_window_s")]
    pub duplicate_window_s: f64,
    /// Subjects are `<prefix>.incidents.<grid>.<category>`, `<prefix>.grid_risk.<grid>` and
    /// `<prefix>.patrol_rounds.<patrol>`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// A `.creds` file (JWT and nkey seed); `${VAR}` expanded. `SKYNET_NATS_CREDS` also works.
    #[serde(default)]
    pub credentials: Option<String>,
    /// Events published before the first ack is awaited (one outbox batch).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long a publish may wait for its ack before the batch is retried.
    #[serde(default = "default_ack_timeout_s")]
    pub ack_timeout_s: f64,
}

fn default_stream() -> String {
    "SKYNET_INCIDENTS".into()
}
const fn default_replicas() -> usize {
    1
}
const fn default_max_age_days() -> f64 {
    30.0
}
const fn default_duplicate_window_s() -> f64 {
    // JetStream's own default of 120 s is shorter than a restart with back-off or a reboot.
    3600.0
}
fn default_subject_prefix() -> String {
    "skynet".into()
}
const fn default_max_in_flight() -> usize {
    4096
}
const fn default_ack_timeout_s() -> f64 {
    10.0
}

/// The stream as the sink creates it.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamPlan {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: Retention,
    pub replicas: usize,
    pub max_age: Duration,
    pub duplicate_window: Duration,
}

impl StreamPlan {
    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            retention: self.retention.into(),
            num_replicas: self.replicas,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Component<SinkFamily> for NatsSinkConfig {
    const KIND: &'static str = "nats";
    const EXAMPLE: &'static str = "url = \"nats://127.0.0.1:4222\"";
    type Validated = Self;

    fn validate(mut self, cx: &ConfigContext) -> Result<Self, FieldError> {
        self.url = cx.expand("url", &self.url)?.into();
        check_url("url", &self.url)?;
        check_name("stream", &self.stream)?;
        if !(1..=5).contains(&self.replicas) {
            return Err(FieldError::new(
                "replicas",
                format!("{} replicas: JetStream allows 1 to 5", self.replicas),
            ));
        }
        check_range("max_age_days", self.max_age_days, 0.0, 36_525.0)?;
        check_range("duplicate_window_s", self.duplicate_window_s, 1.0, 86_400.0)?;
        check_range("ack_timeout_s", self.ack_timeout_s, 0.1, 600.0)?;
        if !(1..=100_000).contains(&self.max_in_flight) {
            return Err(FieldError::new(
                "max_in_flight",
                format!("{} is not within 1 to 100000", self.max_in_flight),
            ));
        }
        check_subject_prefix("subject_prefix", &self.subject_prefix)?;
        if let Some(path) = &self.credentials {
            let path = cx.resolve_path("credentials", path)?;
            self.credentials = Some(path.to_string_lossy().into_owned());
        }
        Ok(self)
    }
}

impl BuildSink for NatsSinkConfig {
    fn build(&self, cx: &SinkBuildContext<'_>) -> Result<Box<dyn IncidentSink>, EmitError> {
        let name = cx.name;
        // No connection yet: the process starts, and keeps committing, while NATS is down.
        Ok(Box::new(NatsSink::new(name, self.clone())))
    }
}

impl NatsSinkConfig {
    /// A config with every default, for `url` (tests, benchmarks, examples).
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: MaskedUri::new(url),
            stream: default_stream(),
            retention: Retention::default(),
            replicas: default_replicas(),
            max_age_days: default_max_age_days(),
            duplicate_window_s: default_duplicate_window_s(),
            subject_prefix: default_subject_prefix(),
            credentials: None,
            max_in_flight: default_max_in_flight(),
            ack_timeout_s: default_ack_timeout_s(),
        }
    }

    pub fn stream_plan(&self) -> StreamPlan {
        let max_age = Duration::from_secs_f64(self.max_age_days * 86_400.0);
        let mut duplicate_window = Duration::from_secs_f64(self.duplicate_window_s);
        // JetStream refuses a window longer than the stream keeps events (0: no age limit).
        if !max_age.is_zero() {
            duplicate_window = duplicate_window.min(max_age);
        }
        StreamPlan {
            name: self.stream.clone(),
            subjects: vec![
                format!("{}.incidents.>", self.subject_prefix),
                format!("{}.grid_risk.>", self.subject_prefix),
                format!("{}.patrol_rounds.>", self.subject_prefix),
            ],
            retention: self.retention,
            replicas: self.replicas,
            max_age,
            duplicate_window,
        }
    }
}

/// Connection options with credentials from `credentials` (a `.creds` file) or the
/// environment (`SKYNET_NATS_CREDS`, `SKYNET_NATS_NKEY`, `SKYNET_NATS_TOKEN`, or
/// `SKYNET_NATS_USER` with `SKYNET_NATS_PASSWORD`).
/// The connection's options and its credentials, first found of: the `credentials` file (or
/// its environment variable), an nkey seed, a token, a user and password from the environment,
/// and a `user:password@` written in the first server of `url` (async-nats reads the URL for
/// the address only, so without this such a URL would connect anonymously).
async fn connect_options(
    url: &str,
    credentials: Option<&str>,
) -> std::io::Result<async_nats::ConnectOptions> {
    let mut options = async_nats::ConnectOptions::new()
        .name("skynet")
        .connection_timeout(Duration::from_secs(5));
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let creds = credentials.map(str::to_string).or_else(|| env(CREDS_ENV));
    if let Some(path) = creds {
        options = options.credentials_file(path).await?;
    } else if let Some(seed) = env(NKEY_ENV) {
        options = options.nkey(seed);
    } else if let Some(token) = env(TOKEN_ENV) {
        options = options.token(token);
    } else if let (Some(user), Some(password)) = (env(USER_ENV), env(PASSWORD_ENV)) {
        options = options.user_and_password(user, password);
    } else if let Some((user, password)) = url_user_and_password(url) {
        options = options.user_and_password(user, password);
    }
    Ok(options)
}

/// The `user:password@` of the first server in `url` (percent-decoded), if it has one.
fn url_user_and_password(url: &str) -> Option<(String, String)> {
    let first = url.split(',').next()?.trim();
    let (_, credentials) = skynet_core::split_credentials(first);
    credentials.map(|c| (c.user, c.password.expose().to_string()))
}

/// Connects to `url` (servers separated by commas). Errors never carry the password a URL
/// may hold.
pub async fn connect(url: &str, credentials: Option<&str>) -> Result<async_nats::Client, String> {
    let options = connect_options(url, credentials)
        .await
        .map_err(|e| format!("NATS credentials: {e}"))?;
    connect_with(url, options).await
}

async fn connect_with(
    url: &str,
    options: async_nats::ConnectOptions,
) -> Result<async_nats::Client, String> {
    let servers: Vec<&str> = url.split(',').map(str::trim).collect();
    options
        .connect(servers.as_slice())
        .await
        .map_err(|e| format!("could not connect to {}: {e}", redact_uri(url)))
}

/// Checks a NATS `url` as the config gives it (several servers separated by commas).
pub fn check_url(field: &str, url: &str) -> Result<(), FieldError> {
    if url.trim().is_empty() {
        return Err(FieldError::new(
            field,
            format!("`{field}` must not be empty"),
        ));
    }
    for server in url.split(',') {
        let server = server.trim();
        let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
            .iter()
            .any(|s| server.starts_with(s))
            || !server.contains("://");
        if server.is_empty() || !scheme_ok {
            return Err(FieldError::new(
                field,
                format!(
                    "`{}` is not a NATS server address (nats://host:port or tls://host:port)",
                    redact_uri(server)
                ),
            ));
        }
    }
    Ok(())
}

/// A subject prefix: dot-separated tokens, none empty, no wildcards or spaces.
pub fn check_subject_prefix(field: &str, prefix: &str) -> Result<(), FieldError> {
    let plain = !prefix.is_empty()
        && prefix
            .split('.')
            .all(|t| !t.is_empty() && !t.contains(['*', '>', ' ']));
    if plain {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("`{prefix}` is not a plain NATS subject (dot-separated tokens, no wildcards)"),
        ))
    }
}

/// JetStream names: letters, digits, `_` and `-`.
pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("`{name}` may hold only letters, digits, `_` and `-`"),
        ))
    }
}

/// The subjects the server said this connection may not publish to. A publish refused for
/// permissions gets no ack (the server drops it and says so on the connection, as `-ERR
/// 'Permissions Violation for Publish to "<subject>"'`), so an ack that times out on such a
/// subject is a refusal for good, not an outage.
#[derive(Debug, Clone, Default)]
struct Denied(Arc<Mutex<HashSet<String>>>);

const PUBLISH_VIOLATION: &str = "permissions violation for publish to ";

impl Denied {
    /// Notes the subject of a publish permissions violation the server reported.
    fn note(&self, error: &async_nats::ServerError) {
        let async_nats::ServerError::Other(text) = error else {
            return;
        };
        let lower = text.to_ascii_lowercase();
        let Some(at) = lower.find(PUBLISH_VIOLATION) else {
            return;
        };
        let subject = text[at + PUBLISH_VIOLATION.len()..]
            .trim()
            .trim_matches('"');
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(subject.to_string());
    }

    fn contains(&self, subject: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(subject)
    }
}

/// Publishes to JetStream; see the module doc.
pub struct NatsSink {
    name: String,
    config: NatsSinkConfig,
    /// Set once connected and the stream is there; async-nats reconnects by itself after.
    context: Option<jetstream::Context>,
    /// What the current connection may not publish to.
    denied: Denied,
    duplicates: metrics::Counter,
}

/// One event of a batch on its way.
enum Sent<'a> {
    /// Published; its ack to come.
    Published(&'a StoredEvent, String, PublishAckFuture),
    /// Refused for good before it went out.
    Refused(Rejection),
}

impl NatsSink {
    pub fn new(name: impl Into<String>, config: NatsSinkConfig) -> Self {
        let name = name.into();
        let duplicates = metrics::counter!("skynet_sink_duplicates_total", "sink" => name.clone());
        Self {
            name,
            config,
            context: None,
            denied: Denied::default(),
            duplicates,
        }
    }

    fn error(&self, message: impl Into<String>) -> EmitError {
        EmitError::Sink {
            sink: self.name.clone(),
            message: message.into(),
        }
    }

    async fn context(&mut self) -> Result<jetstream::Context, EmitError> {
        if let Some(context) = &self.context {
            return Ok(context.clone());
        }
        let denied = Denied::default();
        let noted = denied.clone();
        let options = connect_options(&self.config.url, self.config.credentials.as_deref())
            .await
            .map_err(|e| self.error(format!("NATS credentials: {e}")))?
            .event_callback(move |event| {
                let noted = noted.clone();
                async move {
                    if let async_nats::Event::ServerError(error) = &event {
                        noted.note(error);
                    }
                }
            });
        let client = connect_with(&self.config.url, options)
            .await
            .map_err(|e| self.error(e))?;
        let context = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs_f64(self.config.ack_timeout_s))
            .ack_timeout(Duration::from_secs_f64(self.config.ack_timeout_s))
            .max_ack_inflight(self.config.max_in_flight.max(1))
            .build(client);
        let plan = self.config.stream_plan();
        let stream = context
            .get_or_create_stream(plan.config())
            .await
            .map_err(|e| self.error(format!("stream {}: {e}", plan.name)))?;
        let existing = stream.cached_info().config.clone();
        if existing.duplicate_window != plan.duplicate_window {
            // A stream made by an older version (JetStream's 120 s) or by hand: a redelivery
            // after a long outage would be stored twice.
            let mut config = existing.clone();
            config.duplicate_window = plan.duplicate_window;
            match context.update_stream(config).await {
                Ok(_) => tracing::info!(sink = %self.name, stream = %plan.name,
                    from_s = existing.duplicate_window.as_secs_f64(), to_s = plan.duplicate_window.as_secs_f64(),
                    "updated the stream's duplicate window"),
                Err(e) => tracing::warn!(sink = %self.name, stream = %plan.name, error = %e,
                    window_s = existing.duplicate_window.as_secs_f64(), wanted_s = plan.duplicate_window.as_secs_f64(),
                    "could not update the stream's duplicate window; events redelivered after it are stored twice"),
            }
        }
        let mut subjects = existing.subjects.clone();
        let missing: Vec<String> = plan
            .subjects
            .iter()
            .filter(|wanted| !subjects.iter().any(|s| s == *wanted || s == ">"))
            .cloned()
            .collect();
        if !missing.is_empty() {
            // A stream made by an older version (before patrol rounds, say): the new event
            // types' subjects are added, or their events would find no stream.
            let mut config = context
                .get_stream(&plan.name)
                .await
                .map(|s| s.cached_info().config.clone())
                .unwrap_or(existing.clone());
            config.subjects.extend(missing.iter().cloned());
            match context.update_stream(config).await {
                Ok(info) => {
                    tracing::info!(sink = %self.name, stream = %plan.name, added = ?missing, "added subjects to the stream");
                    subjects = info.config.subjects.clone();
                }
                Err(e) => {
                    tracing::warn!(sink = %self.name, stream = %plan.name, error = %e, "could not add subjects to the stream")
                }
            }
        }
        for wanted in &plan.subjects {
            if !subjects.iter().any(|s| s == wanted || s == ">") {
                tracing::warn!(sink = %self.name, stream = %plan.name, subject = %wanted, existing = ?subjects,
                    "the existing stream does not capture this subject; its events will not be stored");
            }
        }
        tracing::info!(sink = %self.name, url = %redact_uri(&self.config.url), stream = %plan.name, "connected to NATS JetStream");
        self.context = Some(context.clone());
        self.denied = denied;
        Ok(context)
    }

    /// Why a failed publish of an event on `subject` will never succeed, if it will not: a
    /// subject this user may not publish to, or an event larger than allowed.
    fn refused_for_good(&self, e: &PublishError, subject: &str) -> Option<String> {
        match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => Some(e.to_string()),
            PublishErrorKind::TimedOut if self.denied.contains(subject) => Some(format!(
                "permissions violation: this user may not publish to {subject}"
            )),
            PublishErrorKind::Other => std::error::Error::source(e)
                .and_then(|s| s.downcast_ref::<jetstream::Error>())
                .filter(|s| s.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)
                .map(ToString::to_string),
            _ => None,
        }
    }
}

/// The CloudEvents NATS binding's binary-mode attributes, and the id JetStream dedups by.
fn headers(event: &StoredEvent, envelope: &Envelope<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.id.as_str());
    headers.insert("ce-specversion", envelope.specversion.as_ref());
    headers.insert("ce-id", envelope.id.as_ref());
    headers.insert("ce-source", envelope.source.as_ref());
    headers.insert("ce-type", envelope.event_type.as_ref());
    headers.insert("ce-subject", envelope.subject.as_ref());
    headers.insert("ce-time", envelope.time.as_ref());
    headers.insert("content-type", "application/cloudevents+json");
    headers
}

#[async_trait::async_trait]
impl IncidentSink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn batch_size(&self) -> usize {
        self.config.max_in_flight
    }

    async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError> {
        let delivery = self.deliver_batch(batch).await?;
        if let Some(message) = delivery.failure {
            return Err(self.error(message));
        }
        match delivery.rejected.first() {
            None => Ok(()),
            Some(refused) => Err(self.error(format!(
                "event seq {} refused for good: {}",
                refused.seq, refused.reason
            ))),
        }
    }

    /// Publishes the whole batch, then awaits the acks in order. When one fails, what was
    /// acked before it is kept (handed back as handled) and the rest is offered again after
    /// the worker's backoff: a long outage after a partial batch then republishes only what
    /// the stream does not have, even past its duplicate window. An event refused for good
    /// is handed back as rejected (a dead letter) and the ones after it go on.
    async fn deliver_batch(&mut self, batch: &[StoredEvent]) -> Result<Delivery, EmitError> {
        let context = self.context().await?;
        let mut sent = Vec::with_capacity(batch.len());
        let mut failure = None;
        let mut refusing = false;
        for event in batch {
            let envelope = Envelope::parse(event)?;
            let subject = envelope.address(&self.config.subject_prefix, '.');
            let headers = headers(event, &envelope);
            match context
                .publish_with_headers(subject.clone(), headers, Bytes::from(event.body.clone()))
                .await
            {
                Ok(ack) => sent.push(Sent::Published(event, subject, ack)),
                Err(e) => match self.refused_for_good(&e, &subject) {
                    Some(reason) => sent.push(Sent::Refused(Rejection {
                        seq: event.seq,
                        status: None,
                        reason,
                    })),
                    None => {
                        failure = Some(format!("publish {}: {e}", event.id));
                        break;
                    }
                },
            }
        }
        let mut rejected = Vec::new();
        let mut handled: Option<i64> = None;
        for step in sent {
            match step {
                Sent::Refused(rejection) => {
                    handled = Some(rejection.seq);
                    rejected.push(rejection);
                }
                Sent::Published(event, subject, ack) => match ack.await {
                    Ok(ack) => {
                        if ack.duplicate {
                            // Stored before (a retried batch): the server kept one copy.
                            self.duplicates.increment(1);
                        }
                        handled = Some(event.seq);
                    }
                    Err(e) => match self.refused_for_good(&e, &subject) {
                        Some(reason) => {
                            handled = Some(event.seq);
                            rejected.push(Rejection {
                                seq: event.seq,
                                status: None,
                                reason,
                            });
                        }
                        None => {
                            // No stream captures the subject: every event would fail alike.
                            refusing = e.kind() == PublishErrorKind::StreamNotFound;
                            failure = Some(format!("no ack for {}: {e}", event.id));
                            break;
                        }
                    },
                },
            }
        }
        let Some(message) = failure else {
            return Ok(Delivery {
                rejected,
                ..Delivery::default()
            });
        };
        // Connect and look at the stream again next time (it may have been deleted).
        self.context = None;
        match handled {
            None if refusing => Err(EmitError::Refusing {
                sink: self.name.clone(),
                message,
            }),
            None => Err(self.error(message)),
            Some(through) => Ok(Delivery {
                rejected,
                handled_through: Some(through),
                failure: Some(message),
                refusing,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<NatsSinkConfig, String> {
        let config: NatsSinkConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        let cx = ConfigContext::new(std::path::Path::new("/etc/skynet/skynet.toml"));
        config
            .validate(&cx)
            .map_err(|e| format!("{}: {e}", e.field))
    }

    #[test]
    fn defaults_give_the_documented_stream_and_subjects() {
        let config = parse(r#"url = "nats://127.0.0.1:4222""#).unwrap();
        let plan = config.stream_plan();
        assert_eq!(plan.name, "SKYNET_INCIDENTS");
        assert_eq!(
            plan.subjects,
            [
                "skynet.incidents.>",
                "skynet.grid_risk.>",
                "skynet.patrol_rounds.>"
            ]
        );
        assert_eq!(plan.retention, Retention::Limits);
        assert_eq!(plan.replicas, 1);
        assert_eq!(plan.duplicate_window, Duration::from_secs(3600));
        // Never longer than the stream keeps events, which JetStream would refuse.
        let short = parse("url = \"nats://h\"\nmax_age_days = 0.01").unwrap();
        assert_eq!(
            short.stream_plan().duplicate_window,
            Duration::from_secs(864)
        );
    }

    #[test]
    fn bad_values_name_their_key_and_never_show_a_password() {
        let err = parse(r#"url = "http://user:hunter2@host""#).unwrap_err();
        assert!(err.contains("url"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let config = parse(r#"url = "nats://user:hunter2@host:4222""#).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        let err = parse("url = \"nats://h\"\nstream = \"a.b\"").unwrap_err();
        assert!(err.contains("stream"), "{err}");
        let err = parse("url = \"nats://h\"\nreplicas = 7").unwrap_err();
        assert!(err.contains("replicas"), "{err}");
        let err = parse("url = \"nats://h\"\nretention = \"forever\"").unwrap_err();
        assert!(err.contains("forever"), "{err}");
        let err = parse("url = \"nats://h\"\nsubject_prefix = \"a.*\"").unwrap_err();
        assert!(err.contains("subject_prefix"), "{err}");
    }

    #[test]
    fn a_user_and_password_in_the_url_log_in_when_nothing_else_is_configured() {
        assert_eq!(
            url_user_and_password("nats://skynet:p%40ss@nats:4222, nats://other:4222"),
            Some(("skynet".into(), "p@ss".into()))
        );
        assert_eq!(url_user_and_password("nats://nats:4222"), None);
    }
}
