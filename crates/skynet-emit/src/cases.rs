//! The loop back from the case system: `skynet.case_status.v1` CloudEvents on NATS subjects
//! `skynet.cases.<id>`, read from a JetStream stream with a durable pull consumer.
//!
//! The consumer only carries each message (its subject, body, `Skynet-Signature` header and
//! stream sequence) to the risk stage, which checks it (`skynet_risk::case_status`: the
//! signature, the schema, the `source`, the id not applied before, the department, the
//! transition) and applies it or refuses it. Either way the message is answered to
//! JetStream only once what it caused is committed to the outbox (the [`CaseAck`] travels
//! with the revision to the commit stage): an applied one is acknowledged, with its id kept
//! in the outbox's `case_events` so it is never applied again; a refused one is kept in the
//! dead letters (sink `cases`) and terminated, so JetStream does not redeliver it forever. A
//! process killed in between gets the message again at its next start.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use serde::Deserialize;
use skynet_core::{
    CaseStatus, ComponentHealth, ConfigContext, FieldError, MaskedUri, Secret, Shutdown, redact_uri,
};

use crate::DeadLetter;
use crate::sinks::nats::{check_name, check_subject_prefix, check_url, connect};

/// The NATS header of a status event's signature: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub const CASE_SIGNATURE_HEADER: &str = "Skynet-Signature";

/// The dead-letter sink name of refused status events.
pub const CASES_DEAD_LETTER_SINK: &str = "cases";

/// `[cases]` as written: where the case system's status events come from, and what is taken
/// from there. Its `Debug` shows the URL without credentials (a [`MaskedUri`]) and no secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesSettings {
    /// `nats://host:4222`; `${VAR}` expanded.
    pub url: MaskedUri,
    /// The stream that keeps status events until skynet has taken them (created when missing).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Status events come on `<subject_prefix>.<incident-id>`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// The durable consumer's name: JetStream remembers what it has taken across restarts.
    #[serde(default = "default_durable")]
    pub durable: String,
    /// A `.creds` file; `${VAR}` expanded. The environment also works, as for the NATS sink.
    #[serde(default)]
    pub credentials: Option<String>,
    /// How long the stream keeps a status event; applied event ids are remembered as long.
    #[serde(default = "default_max_age_days")]
    pub max_age_days: f64,
    /// The CloudEvent `source` values taken (the case system's); any other is refused.
    #[serde(default)]
    pub sources: Vec<String>,
    /// The HMAC-SHA256 key of `Skynet-Signature`; `${VAR}` expanded. Empty (or unset): no
    /// signature is asked for.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// The environment variable holding the secret, instead of `secret`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Not configurable: whether a durable consumer created now starts with the events
    /// published from then on (a cluster's scorer: its own durable is new when the node is,
    /// and the events already retained are its peers' business) instead of every event the
    /// stream retains (a single node, which must apply what came while it was away). An
    /// existing durable goes on from where it was either way.
    #[serde(skip)]
    pub deliver_new: bool,
}

fn default_stream() -> String {
    "SKYNET_CASES".into()
}
fn default_subject_prefix() -> String {
    "skynet.cases".into()
}
fn default_durable() -> String {
    "skynet".into()
}
const fn default_max_age_days() -> f64 {
    30.0
}

impl CasesSettings {
    pub fn validate(&mut self, cx: &ConfigContext) -> Result<(), FieldError> {
        self.url = cx.expand("url", &self.url)?.into();
        check_url("url", &self.url)?;
        check_name("stream", &self.stream)?;
        check_name("durable", &self.durable)?;
        check_subject_prefix("subject_prefix", &self.subject_prefix)?;
        skynet_core::config::check_range("max_age_days", self.max_age_days, 0.0, 36_525.0)?;
        if let Some(path) = &self.credentials {
            let path = cx.resolve_path("credentials", path)?;
            self.credentials = Some(path.to_string_lossy().into_owned());
        }
        if self.sources.is_empty() {
            return Err(FieldError::new(
                "sources",
                "list the CloudEvent `source` values of the case system, like `sources = [\"case-system\"]`: events from any other source are refused",
            ));
        }
        for (i, source) in self.sources.iter().enumerate() {
            if source.trim().is_empty() || source.chars().count() > 256 {
                return Err(FieldError::new(
                    format!("sources[{i}]"),
                    "a source is 1 to 256 characters",
                ));
            }
        }
        self.secret = cx.secret(self.secret.take(), self.secret_env.as_deref())?;
        // An empty secret (`${SKYNET_CASES_SECRET:-}` unset) asks for no signature.
        self.secret = self.secret.take().filter(|s| !s.is_empty());
        // A placeholder copied from an example is known to everyone who read it (as for the
        // metrics token). The message does not show the value.
        if self.secret.as_ref().is_some_and(|s| {
            s.expose()
                .trim()
                .to_ascii_uppercase()
                .starts_with("REPLACE")
        }) {
            return Err(FieldError::new(
                "secret",
                "a placeholder from an example: give a random secret, like the output of `openssl rand -hex 32` (SKYNET_CASES_SECRET in the city configs)",
            ));
        }
        Ok(())
    }

    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: MaskedUri::new(url),
            stream: default_stream(),
            subject_prefix: default_subject_prefix(),
            durable: default_durable(),
            credentials: None,
            max_age_days: default_max_age_days(),
            sources: vec!["case-system".into()],
            secret: None,
            secret_env: None,
            deliver_new: false,
        }
    }

    fn filter(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

/// Answers a status event to JetStream once what it caused is committed: acknowledged when
/// applied, terminated when refused (so it is not redelivered). Dropped without
/// [`ack`](Self::ack), the event comes again later.
pub struct CaseAck {
    acker: Option<(jetstream::message::Acker, tokio::runtime::Handle)>,
    terminate: bool,
    /// When JetStream stored the event (`None`: not known, or not from JetStream).
    published: Option<chrono::DateTime<chrono::Utc>>,
}

impl std::fmt::Debug for CaseAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.terminate {
            "CaseAck(term)"
        } else {
            "CaseAck"
        })
    }
}

impl CaseAck {
    /// Sends the answer without waiting (callable from any thread). A lost ack only means
    /// the event comes again, and is then refused as a duplicate.
    pub fn ack(mut self) {
        if let Some((acker, runtime)) = self.acker.take() {
            let kind = if self.terminate {
                AckKind::Term
            } else {
                AckKind::Ack
            };
            runtime.spawn(async move {
                if let Err(e) = acker.ack_with(kind).await {
                    tracing::debug!(error = %e, "could not answer a case status event; it will come again");
                }
            });
        }
    }

    /// Not for this process now, perhaps later (a cluster's scorer that does not hold the
    /// event's incident yet): JetStream delivers it again after `delay`. Without an answer
    /// it would come again only after the consumer's `ack_wait`.
    pub fn retry_in(mut self, delay: Duration) {
        if let Some((acker, runtime)) = self.acker.take() {
            runtime.spawn(async move {
                if let Err(e) = acker.ack_with(AckKind::Nak(Some(delay))).await {
                    tracing::debug!(error = %e, "could not defer a case status event; it comes again after ack_wait");
                }
            });
        }
    }

    /// How long ago JetStream stored the event (`None`: not known).
    pub fn age(&self) -> Option<Duration> {
        self.published
            .map(|at| (chrono::Utc::now() - at).to_std().unwrap_or_default())
    }

    /// The ack of an event JetStream stored at `published` (tests).
    pub fn published_at(mut self, published: chrono::DateTime<chrono::Utc>) -> Self {
        self.published = Some(published);
        self
    }

    /// The event was refused: once its dead letter is committed, JetStream is told not to
    /// deliver it again.
    pub fn refused(mut self) -> Self {
        self.terminate = true;
        self
    }

    /// An ack that does nothing (tests, and events that came without JetStream).
    pub fn none() -> Self {
        Self {
            acker: None,
            terminate: false,
            published: None,
        }
    }
}

/// A status event as it came from the stream, not yet checked.
#[derive(Debug)]
pub struct CaseMessage {
    pub subject: String,
    pub payload: bytes::Bytes,
    /// The `Skynet-Signature` header, when the message has one.
    pub signature: Option<String>,
    /// Its sequence in the stream: the `seq` of its dead letter, if refused.
    pub stream_seq: u64,
    pub ack: CaseAck,
}

/// A status change for the risk stage.
#[derive(Debug)]
pub enum CaseFeedback {
    /// From the case system's stream: checked by the risk stage before anything is applied.
    Message(Box<CaseMessage>),
    /// From a person in the console, whose API has checked it and audits it.
    Console(CaseStatus),
}

/// What a commit records of the status events it answers, in the same transaction as the
/// revisions they caused.
#[derive(Debug, Clone, PartialEq)]
pub enum CaseRecord {
    /// Applied: the id is never applied again (kept `max_age_days`).
    Applied {
        id: String,
        incident: String,
        at: chrono::DateTime<chrono::Utc>,
    },
    /// Refused: kept in the dead letters (sink `cases`) with its reason.
    Refused(DeadLetter),
}

/// At most this much of a refused event's body is kept in its dead letter and the log: the
/// rest is not the case system's status, and a flood must not fill the disk.
pub const REFUSED_BODY_LIMIT: usize = 16 * 1024;

/// The dead letter of a refused status event: `reason` is `<reason>: <message>`.
pub fn refused_letter(message: &CaseMessage, id: Option<&str>, reason: &str) -> DeadLetter {
    let payload = &message.payload[..message.payload.len().min(REFUSED_BODY_LIMIT)];
    DeadLetter {
        sink: CASES_DEAD_LETTER_SINK.into(),
        seq: i64::try_from(message.stream_seq).unwrap_or(i64::MAX),
        id: id.unwrap_or_default().chars().take(256).collect(),
        status: None,
        reason: reason.chars().take(1000).collect(),
        at: chrono::Utc::now(),
        body: String::from_utf8_lossy(payload).into_owned(),
        replay: false,
    }
}

/// At most this much of a refused payload goes into the log.
const EXCERPT: usize = 200;

/// A printable excerpt of a payload, for the log.
pub fn excerpt(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(EXCERPT)]);
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Starts the consumer on `runtime`. It connects (and reconnects) with backoff, so the
/// process runs while NATS is down; status events go to `out` (waiting, never dropping,
/// when it is full) until `shutdown`.
pub fn spawn_case_consumer(
    runtime: &tokio::runtime::Handle,
    settings: CasesSettings,
    out: crossbeam_channel::Sender<CaseFeedback>,
    health: ComponentHealth,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let handle = runtime.clone();
    runtime.spawn(async move {
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_triggered() {
            match consume(&settings, &out, &health, &shutdown, &handle).await {
                Ok(()) => return,
                Err(e) => {
                    metrics::counter!("skynet_case_consumer_retries_total").increment(1);
                    tracing::warn!(url = %redact_uri(&settings.url), error = %e, retry_in = ?backoff, "case status consumer failed; will retry");
                    health.retrying(e);
                }
            }
            let until = tokio::time::Instant::now() + backoff;
            while tokio::time::Instant::now() < until && !shutdown.is_triggered() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    })
}

/// Runs until shutdown (`Ok`) or until the connection or consumer fails (`Err`).
async fn consume(
    settings: &CasesSettings,
    out: &crossbeam_channel::Sender<CaseFeedback>,
    health: &ComponentHealth,
    shutdown: &Shutdown,
    runtime: &tokio::runtime::Handle,
) -> Result<(), String> {
    let client = connect(&settings.url, settings.credentials.as_deref()).await?;
    let context = jetstream::new(client);
    let stream = context
        .get_or_create_stream(stream::Config {
            name: settings.stream.clone(),
            subjects: vec![settings.filter()],
            max_age: Duration::from_secs_f64(settings.max_age_days * 86_400.0),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("stream {}: {e}", settings.stream))?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &settings.durable,
            consumer::pull::Config {
                durable_name: Some(settings.durable.clone()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                filter_subject: settings.filter(),
                deliver_policy: if settings.deliver_new {
                    consumer::DeliverPolicy::New
                } else {
                    consumer::DeliverPolicy::All
                },
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("consumer {}: {e}", settings.durable))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("consumer {}: {e}", settings.durable))?;
    tracing::info!(stream = %settings.stream, durable = %settings.durable, "taking case status events");
    health.up();
    let received = metrics::counter!("skynet_case_status_received_total");
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                if shutdown.is_triggered() {
                    return Ok(());
                }
                continue;
            }
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(format!("consumer {}: {e}", settings.durable)),
            None => return Err("the consumer's message stream ended".into()),
        };
        received.increment(1);
        // The stream sequence: where a refused event's dead letter is kept; the time the
        // stream stored it: how long a scorer may wait for its incident's cell.
        let (stream_seq, published) = message
            .info()
            .map(|i| {
                let nanos = i64::try_from(i.published.unix_timestamp_nanos()).ok();
                (
                    i.stream_sequence,
                    nanos.map(chrono::DateTime::from_timestamp_nanos),
                )
            })
            .unwrap_or((0, None));
        let (message, acker) = message.split();
        let signature = message
            .headers
            .as_ref()
            .and_then(|h| h.get(CASE_SIGNATURE_HEADER))
            .map(|v| v.as_str().to_string());
        let mut feedback = CaseFeedback::Message(Box::new(CaseMessage {
            subject: message.subject.to_string(),
            payload: message.payload,
            signature,
            stream_seq,
            ack: CaseAck {
                acker: Some((acker, runtime.clone())),
                terminate: false,
                published,
            },
        }));
        // The risk stage is busy: wait (JetStream holds the rest), never drop.
        loop {
            match out.try_send(feedback) {
                Ok(()) => break,
                Err(crossbeam_channel::TrySendError::Full(back)) => {
                    feedback = back;
                    if shutdown.is_triggered() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<CasesSettings, FieldError> {
        let mut settings: CasesSettings =
            toml::from_str(text).map_err(|e| FieldError::new("", e.to_string()))?;
        settings.validate(&ConfigContext::new(std::path::Path::new("skynet.toml")))?;
        Ok(settings)
    }

    #[test]
    fn sources_are_required_and_the_secret_is_never_shown() {
        let e = settings("url = \"nats://127.0.0.1:4222\"").unwrap_err();
        assert!(e.to_string().contains("sources"), "{e}");
        let ok = settings("url = \"nats://127.0.0.1:4222\"\nsources = [\"case-system\"]\nsecret = \"k-secret-55\"").unwrap();
        assert_eq!(ok.secret.as_ref().map(Secret::expose), Some("k-secret-55"));
        assert!(!format!("{ok:?}").contains("k-secret-55"));
        let empty =
            settings("url = \"nats://127.0.0.1:4222\"\nsources = [\"case-system\"]\nsecret = \"\"")
                .unwrap();
        assert!(
            empty.secret.is_none(),
            "an empty secret asks for no signature"
        );
        let both = settings("url = \"nats://127.0.0.1:4222\"\nsources = [\"c\"]\nsecret = \"k\"\nsecret_env = \"X\"").unwrap_err();
        assert!(both.to_string().contains("secret_env"), "{both}");
        assert!(settings("url = \"nats://127.0.0.1:4222\"\nsources = [\"\"]").is_err());
    }

    #[test]
    fn a_placeholder_secret_from_an_example_is_refused_without_showing_it() {
        let e = settings(
            "url = \"nats://127.0.0.1:4222\"\nsources = [\"case-system\"]\nsecret = \"REPLACE-with-openssl-rand-hex-32\"",
        )
        .unwrap_err();
        let message = e.to_string();
        assert!(message.contains("placeholder"), "{message}");
        assert!(message.contains("SKYNET_CASES_SECRET"), "{message}");
        assert!(!message.contains("REPLACE-with"), "{message}");
    }

    #[test]
    fn a_refused_event_becomes_a_bounded_dead_letter_of_the_cases_sink() {
        let message = CaseMessage {
            subject: "skynet.cases.x".into(),
            payload: vec![b'a'; REFUSED_BODY_LIMIT * 2].into(),
            signature: None,
            stream_seq: 42,
            ack: CaseAck::none(),
        };
        let letter = refused_letter(
            &message,
            Some("e1"),
            "signature: no Skynet-Signature header",
        );
        assert_eq!(letter.sink, "cases");
        assert_eq!(letter.seq, 42);
        assert_eq!(letter.id, "e1");
        assert_eq!(letter.body.len(), REFUSED_BODY_LIMIT);
        assert!(letter.reason.starts_with("signature"));
        assert_eq!(excerpt(&[b'a'; 1000]).len(), EXCERPT);
        assert_eq!(format!("{:?}", CaseAck::none().refused()), "CaseAck(term)");
    }
}
