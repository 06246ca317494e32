//! The loop back from the case system: `skynet.case_status.v1` CloudEvents on NATS subjects
//! `skynet.cases.<incident-id>`, read from a JetStream stream with a durable pull consumer.
//!
//! A status event is acknowledged to JetStream only once the revision it caused is committed
//! to the outbox (the [`CaseAck`] travels with the revision to the commit stage). A process
//! killed in between gets the event again at its next start, so no status is ever lost;
//! one applied twice is recognised as such and changes nothing. Events that can never be
//! applied (not JSON, not a case status, an unknown status) are logged with their subject
//! and an excerpt, counted, and terminated so JetStream does not redeliver them forever.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use serde::Deserialize;
use skynet_core::{
    CASE_STATUS_EVENT_TYPE, CaseStatus, ComponentHealth, ConfigContext, FieldError, MaskedUri,
    Shutdown, redact_uri,
};

use crate::sinks::nats::{check_name, check_subject_prefix, check_url, connect};

/// `[cases]` as written: where the case system's status events come from. Its `Debug`
/// shows the URL without credentials (a [`MaskedUri`]).
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
    /// How long the stream keeps a status event.
    #[serde(default = "default_max_age_days")]
    pub max_age_days: f64,
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
        }
    }

    fn filter(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }
}

/// Acknowledges a status event to JetStream once what it caused is committed. Dropped
/// without [`ack`](Self::ack), the event comes again later.
pub struct CaseAck {
    acker: Option<(jetstream::message::Acker, tokio::runtime::Handle)>,
}

impl std::fmt::Debug for CaseAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaseAck")
    }
}

impl CaseAck {
    /// Sends the ack without waiting (callable from any thread). A lost ack only means the
    /// event comes again, which changes nothing.
    pub fn ack(mut self) {
        if let Some((acker, runtime)) = self.acker.take() {
            runtime.spawn(async move {
                if let Err(e) = acker.ack().await {
                    tracing::debug!(error = %e, "could not acknowledge a case status event; it will come again");
                }
            });
        }
    }

    /// An ack that does nothing (tests, and events that came without JetStream).
    pub fn none() -> Self {
        Self { acker: None }
    }
}

/// One status event, checked, for the risk stage.
#[derive(Debug)]
pub struct CaseFeedback {
    pub status: CaseStatus,
    /// The CloudEvent id, for logs.
    pub event_id: String,
    pub ack: CaseAck,
}

#[derive(Deserialize)]
struct CaseEvent {
    specversion: String,
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    data: CaseStatus,
}

/// Why a status event was refused (the `reason` label of `skynet_case_status_rejected_total`).
#[derive(Debug, PartialEq)]
pub struct Refused {
    pub reason: &'static str,
    pub message: String,
}

/// Reads one status event: a structured-mode CloudEvent whose subject names its incident.
pub fn parse_case_event(
    subject: &str,
    prefix: &str,
    payload: &[u8],
) -> Result<(String, CaseStatus), Refused> {
    let event: CaseEvent = serde_json::from_slice(payload).map_err(|e| Refused {
        reason: "malformed",
        message: format!("not a case-status CloudEvent: {e}"),
    })?;
    if event.specversion != "1.0" {
        return Err(Refused {
            reason: "malformed",
            message: format!("specversion {} (expected 1.0)", event.specversion),
        });
    }
    if event.event_type != CASE_STATUS_EVENT_TYPE {
        return Err(Refused {
            reason: "wrong_type",
            message: format!(
                "type `{}` (expected {CASE_STATUS_EVENT_TYPE})",
                event.event_type
            ),
        });
    }
    event.data.validate().map_err(|message| Refused {
        reason: "invalid",
        message,
    })?;
    let named = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'));
    if named != Some(event.data.incident.as_str()) {
        return Err(Refused {
            reason: "wrong_subject",
            message: format!(
                "subject `{subject}` does not name incident `{}` (expected {prefix}.{})",
                event.data.incident, event.data.incident
            ),
        });
    }
    Ok((event.id, event.data))
}

/// At most this much of a refused payload goes into the log.
const EXCERPT: usize = 200;

fn excerpt(payload: &[u8]) -> String {
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
        let (message, acker) = message.split();
        let subject = message.subject.as_str();
        match parse_case_event(subject, &settings.subject_prefix, &message.payload) {
            Ok((event_id, status)) => {
                let span = tracing::info_span!("case_status", incident = %status.incident, status = status.status.as_str());
                let _entered = span.enter();
                let mut feedback = CaseFeedback {
                    status,
                    event_id,
                    ack: CaseAck {
                        acker: Some((acker, runtime.clone())),
                    },
                };
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
            Err(refused) => {
                metrics::counter!("skynet_case_status_rejected_total", "reason" => refused.reason)
                    .increment(1);
                tracing::warn!(subject, reason = refused.reason, error = %refused.message, payload = %excerpt(&message.payload),
                    "case status event refused");
                // Redelivering it would refuse it again.
                if let Err(e) = acker.ack_with(AckKind::Term).await {
                    tracing::debug!(error = %e, "could not terminate a refused case status event");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(subject_incident: &str, data: &str) -> (String, Vec<u8>) {
        (
            format!("skynet.cases.{subject_incident}"),
            format!(
                r#"{{"specversion":"1.0","id":"e1","source":"cases","type":"skynet.case_status.v1","data":{data}}}"#
            )
            .into_bytes(),
        )
    }

    #[test]
    fn a_case_status_event_is_read_and_bad_ones_are_refused_with_a_reason() {
        let (subject, payload) = event(
            "inc-1",
            r#"{"incident":"inc-1","status":"dispatched","department":"fire","assignee":"crew 7","note":"go","at":"2026-11-27T10:00:00Z"}"#,
        );
        let (id, status) = parse_case_event(&subject, "skynet.cases", &payload).unwrap();
        assert_eq!(id, "e1");
        assert_eq!(status.status, skynet_core::IncidentState::Dispatched);
        assert_eq!(status.assignee.as_deref(), Some("crew 7"));

        let refused = |subject: &str, payload: &[u8]| {
            parse_case_event(subject, "skynet.cases", payload)
                .unwrap_err()
                .reason
        };
        assert_eq!(refused("skynet.cases.x", b"{not json"), "malformed");
        let (s, p) = event(
            "inc-1",
            r#"{"incident":"inc-1","status":"open","at":"2026-11-27T10:00:00Z"}"#,
        );
        assert_eq!(refused(&s, &p), "invalid");
        let (s, p) = event(
            "inc-1",
            r#"{"incident":"inc-1","status":"fixed","at":"2026-11-27T10:00:00Z"}"#,
        );
        assert_eq!(refused(&s, &p), "malformed");
        let (s, p) = event(
            "inc-2",
            r#"{"incident":"inc-1","status":"resolved","at":"2026-11-27T10:00:00Z"}"#,
        );
        assert_eq!(refused(&s, &p), "wrong_subject");
        let (s, p) = event(
            "inc-1",
            r#"{"incident":"inc-1","status":"resolved","at":"2026-11-27T10:00:00Z","extra":1}"#,
        );
        assert_eq!(refused(&s, &p), "malformed");
        let wrong = br#"{"specversion":"1.0","id":"e","type":"skynet.incident.v1","data":{"incident":"inc-1","status":"resolved","at":"2026-11-27T10:00:00Z"}}"#;
        assert_eq!(refused("skynet.cases.inc-1", wrong), "wrong_type");
        assert!(excerpt(&[b'a'; 1000]).len() == EXCERPT);
    }
}
