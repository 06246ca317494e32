//! The webhook sink: each event POSTed as a structured-mode CloudEvent, signed with
//! HMAC-SHA256 so the receiver knows it came from skynet and was not altered.
//!
//! An answer decides what happens to the event:
//! - 2xx: delivered.
//! - 400, 413 and 422: this one event is refused for good (malformed, too large, not
//!   acceptable); the worker keeps it in the outbox's dead letters so the events after it
//!   still flow.
//! - 401, 403, 404, 410 and any other 4xx: the destination refuses the sink itself (a rotated
//!   token, a moved endpoint), not the event. Every event would be refused alike, so none is
//!   dead-lettered: the sink shows the `refusing` state, raises its alarm and retries with the
//!   worker's backoff until the receiver takes events again.
//! - 5xx, 408, 429, a redirect, a refused connection or a timeout: tried again
//!   (`max_attempts` times at once, then with the worker's backoff, in order).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use sha2::Sha256;
use skynet_core::Component;
use skynet_core::config::check_range;
use skynet_core::redact::redact_uri;
use skynet_core::{ConfigContext, FieldError, MaskedUri, Secret};

use super::{BuildSink, Delivery, IncidentSink, Rejection, SinkBuildContext, SinkFamily};
use crate::{EmitError, StoredEvent};

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-skynet-signature";
/// Unix seconds when the request was made (informational: not part of the signature).
pub const TIMESTAMP_HEADER: &str = "x-skynet-timestamp";
/// The CloudEvent id, so a receiver can deduplicate without parsing the body. Not `ce-id`:
/// `ce-` headers mean binary mode to CloudEvents SDKs, and this is structured mode.
pub const EVENT_ID_HEADER: &str = "x-skynet-event-id";
const CONTENT_TYPE_CLOUDEVENTS: &str = "application/cloudevents+json";
/// What a refusal keeps of the response body.
const EXCERPT_BYTES: usize = 2048;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// A call hands back what it has done after this long, so a slow receiver's progress is
/// acknowledged as it goes (fewer events sent twice after a crash) and a long batch is not
/// taken for a stalled delivery.
const BATCH_BUDGET: Duration = Duration::from_secs(5);

/// `kind = "webhook"`. `Debug` shows no secret: the key and header values are [`Secret`]s,
/// the URL a [`MaskedUri`].
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSinkConfig {
    /// The endpoint, `http://` or `https://`; `${VAR}` expanded. A user name and password in
    /// it are sent as basic auth and never shown.
    pub url: MaskedUri,
    /// The HMAC-SHA256 key of `X-Skynet-Signature`; `${VAR}` expanded. One of `secret`
    /// and `secret_env` is required.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// The environment variable holding the key.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Seconds for one request, connection included.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Tries of one event before the worker's backoff takes over (1 to 100).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// More headers (`Authorization = "Bearer ${TOKEN}"`); values `${VAR}` expanded and
    /// never shown.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
}

const fn default_timeout_s() -> f64 {
    10.0
}
const fn default_max_attempts() -> u32 {
    3
}

/// Headers the sink sets itself; a config may not replace them.
const RESERVED: [&str; 6] = [
    "content-type",
    "content-length",
    "host",
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EVENT_ID_HEADER,
];

impl Component<SinkFamily> for WebhookSinkConfig {
    const KIND: &'static str = "webhook";
    const EXAMPLE: &'static str = "url = \"http://127.0.0.1:9/hook\"\nsecret = \"example-secret\"";
    type Validated = Self;

    fn validate(mut self, cx: &ConfigContext) -> Result<Self, FieldError> {
        let url = cx.expand("url", &self.url)?;
        // The message never repeats the URL as written: it may hold a password.
        let parsed = reqwest::Url::parse(&url).map_err(|e| {
            FieldError::new(
                "url",
                format!("`url` is not a URL ({e}): {}", redact_uri(&url)),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(FieldError::new(
                "url",
                format!(
                    "`url` must be http://host/... or https://host/..., got {}",
                    redact_uri(&url)
                ),
            ));
        }
        self.url = url.into();

        self.secret = cx.secret(self.secret.take(), self.secret_env.as_deref())?;
        if self.secret.is_none() {
            return Err(FieldError::new(
                "",
                "a webhook sink needs `secret` (or `secret_env`, the variable holding it): every request is signed",
            ));
        }
        if self.secret.as_ref().is_some_and(Secret::is_empty) {
            return Err(FieldError::new(
                if self.secret_env.is_some() {
                    "secret_env"
                } else {
                    "secret"
                },
                "the webhook secret is empty",
            ));
        }

        check_range("timeout_s", self.timeout_s, 0.1, 3600.0)?;
        if !(1..=100).contains(&self.max_attempts) {
            return Err(FieldError::new(
                "max_attempts",
                format!(
                    "`max_attempts` must be between 1 and 100, got {}",
                    self.max_attempts
                ),
            ));
        }
        let mut headers = BTreeMap::new();
        for (name, value) in std::mem::take(&mut self.headers) {
            let field = format!("headers.{name}");
            let parsed = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| FieldError::new(&field, format!("`{name}` is not a header name")))?;
            if RESERVED.contains(&parsed.as_str()) {
                return Err(FieldError::new(
                    &field,
                    format!("`{name}` is set by the webhook sink itself"),
                ));
            }
            let value = cx.expand(&field, value.expose())?;
            // The value is not repeated: it may be a token.
            HeaderValue::from_str(&value).map_err(|_| {
                FieldError::new(
                    &field,
                    format!("the value of header `{name}` is not valid in HTTP"),
                )
            })?;
            headers.insert(name, value.into());
        }
        self.headers = headers;
        Ok(self)
    }
}

impl BuildSink for WebhookSinkConfig {
    fn build(&self, cx: &SinkBuildContext<'_>) -> Result<Box<dyn IncidentSink>, EmitError> {
        let name = cx.name;
        Ok(Box::new(WebhookSink::new(name, self)?))
    }
}

/// POSTs each event to an HTTP endpoint, signed.
pub struct WebhookSink {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as it may be shown: without credentials.
    shown_url: String,
    /// Keyed once; cloned per request.
    mac: Hmac<Sha256>,
    headers: HeaderMap,
    max_attempts: u32,
}

/// One request's outcome.
enum Attempt {
    Taken,
    /// This event refused for good.
    Refused(Rejection),
    /// The destination refuses the sink as a whole (credentials, endpoint); why.
    Refusing(String),
    /// Worth trying again; why.
    Retry(String),
}

impl WebhookSink {
    /// From a validated config.
    pub fn new(name: impl Into<String>, config: &WebhookSinkConfig) -> Result<Self, EmitError> {
        let name = name.into();
        let fail = |message: String| EmitError::Sink {
            sink: name.clone(),
            message,
        };
        let url = reqwest::Url::parse(&config.url)
            .map_err(|e| fail(format!("`url` is not a URL: {e}")))?;
        let secret = config
            .secret
            .as_ref()
            .map(Secret::expose)
            .ok_or_else(|| fail("no secret: validate the config first".into()))?;
        let mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|_| fail("the secret cannot key HMAC-SHA256".into()))?;
        let mut headers = HeaderMap::new();
        for (key, value) in &config.headers {
            let key = HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| fail(format!("`{key}` is not a header name")))?;
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| fail(format!("the value of header `{key}` is not valid in HTTP")))?;
            // Kept out of hyper's debug output: it may be a token.
            value.set_sensitive(true);
            headers.insert(key, value);
        }
        // One crypto provider for the process (ring), whichever crate asks first; reqwest is
        // built without one, so there is no aws-lc to compile.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(config.timeout_s))
            .user_agent(concat!("skynet/", env!("CARGO_PKG_VERSION")))
            // A redirect is not followed: a POST turned into a GET would be "delivered"
            // nowhere. It is retried, so a wrong `url` shows in health, not as lost events.
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .build()
            .map_err(|e| fail(format!("could not build the HTTP client: {}", chain(&e))))?;
        Ok(Self {
            shown_url: redact_uri(url.as_str()),
            name,
            client,
            url,
            mac,
            headers,
            max_attempts: config.max_attempts,
        })
    }

    /// The hex HMAC-SHA256 of `body` under the sink's secret.
    fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(body);
        hex(&mac.finalize().into_bytes())
    }

    async fn post(&self, event: &StoredEvent) -> Attempt {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, CONTENT_TYPE_CLOUDEVENTS)
            .header(
                SIGNATURE_HEADER,
                format!("sha256={}", self.sign(event.body.as_bytes())),
            )
            .header(TIMESTAMP_HEADER, Utc::now().timestamp().to_string());
        // Event ids are plain ASCII; one that is not a valid header value goes without it.
        if let Ok(id) = HeaderValue::from_str(&event.id) {
            request = request.header(EVENT_ID_HEADER, id);
        }
        let mut response = match request.body(event.body.clone()).send().await {
            Ok(response) => response,
            // Connection refused, reset, timed out, TLS: all worth trying again.
            Err(e) => return Attempt::Retry(format!("POST {}: {}", self.shown_url, chain(&e))),
        };
        let status = response.status();
        // Read (a bounded part of) the body either way, so the connection can be reused.
        let excerpt = excerpt(&mut response).await;
        if status.is_success() {
            Attempt::Taken
        } else if refuses_the_event(status) {
            Attempt::Refused(Rejection {
                seq: event.seq,
                status: Some(status.as_u16()),
                reason: if excerpt.is_empty() {
                    status.canonical_reason().unwrap_or_default().to_string()
                } else {
                    excerpt
                },
            })
        } else if refuses_the_sink(status) {
            Attempt::Refusing(format!("POST {} answered {status}", self.shown_url))
        } else {
            Attempt::Retry(format!("POST {} answered {status}", self.shown_url))
        }
    }
}

/// 400, 413 and 422: this request (this event) is wrong, and the same request would be
/// refused again; the next event may well be taken.
fn refuses_the_event(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNPROCESSABLE_ENTITY
    )
}

/// Any other 4xx but 408 (timeout) and 429 (too many requests): 401, 403, 404, 410 and the
/// like say the sink's credentials or URL are wrong, which an operator fixes; the event
/// itself is fine and is kept for then.
fn refuses_the_sink(status: StatusCode) -> bool {
    status.is_client_error()
        && !refuses_the_event(status)
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
}

/// Up to [`EXCERPT_BYTES`] of the response body, as text; the rest is not read.
async fn excerpt(response: &mut reqwest::Response) -> String {
    let mut buf = Vec::new();
    while buf.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    if text.len() > EXCERPT_BYTES {
        let mut end = EXCERPT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The error and its causes, without the URL (reqwest's own message carries it, with any
/// credentials; the callers add the redacted one).
fn chain(e: &reqwest::Error) -> String {
    let mut text = kind(e).to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What went wrong, in reqwest's own terms but without its message, which holds the URL.
fn kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_builder() {
        "bad request"
    } else if e.is_body() || e.is_decode() {
        "bad response body"
    } else {
        "request failed"
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

#[async_trait::async_trait]
impl IncidentSink for WebhookSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// All or nothing: a refusal for good is an error here. The worker calls
    /// [`deliver_batch`](IncidentSink::deliver_batch), which keeps refusals apart.
    async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError> {
        let delivery = self.deliver_batch(batch).await?;
        if let Some(refused) = delivery.rejected.first() {
            return Err(EmitError::Sink {
                sink: self.name.clone(),
                message: format!(
                    "the destination refused event seq {} for good ({})",
                    refused.seq,
                    refused.status.map_or("no status".into(), |s| s.to_string())
                ),
            });
        }
        if delivery.handled_through.is_some() {
            return Err(EmitError::Sink {
                sink: self.name.clone(),
                message: "only part of the batch was delivered".into(),
            });
        }
        Ok(())
    }

    /// One event at a time, in order: the receiver sees them in outbox order. An event that
    /// keeps failing ends the call there, with what came before it handled.
    async fn deliver_batch(&mut self, batch: &[StoredEvent]) -> Result<Delivery, EmitError> {
        let started = std::time::Instant::now();
        let mut rejected = Vec::new();
        for (i, event) in batch.iter().enumerate() {
            if i > 0 && started.elapsed() >= BATCH_BUDGET {
                return Ok(Delivery {
                    rejected,
                    handled_through: Some(batch[i - 1].seq),
                    ..Delivery::default()
                });
            }
            let mut wait = FIRST_RETRY;
            let mut attempt = 1;
            loop {
                match self.post(event).await {
                    Attempt::Taken => break,
                    Attempt::Refused(rejection) => {
                        rejected.push(rejection);
                        break;
                    }
                    // Not tried again at once: the worker backs off, so a receiver whose
                    // token was rotated is not hammered while an operator fixes it.
                    Attempt::Refusing(reason) => {
                        let message = format!("{reason} (event {})", event.id);
                        let Some(before) = i.checked_sub(1).map(|j| batch[j].seq) else {
                            return Err(EmitError::Refusing {
                                sink: self.name.clone(),
                                message,
                            });
                        };
                        return Ok(Delivery {
                            rejected,
                            handled_through: Some(before),
                            failure: Some(message),
                            refusing: true,
                        });
                    }
                    Attempt::Retry(reason) if attempt >= self.max_attempts => {
                        let Some(before) = i.checked_sub(1).map(|j| batch[j].seq) else {
                            return Err(EmitError::Sink {
                                sink: self.name.clone(),
                                message: format!(
                                    "{reason} (event {}, {attempt} attempt(s))",
                                    event.id
                                ),
                            });
                        };
                        // What came before is handled; this event comes first next time,
                        // after the worker has reported the failure and backed off.
                        tracing::warn!(sink = %self.name, event = %event.id, attempts = attempt, reason, "webhook delivery failed; handing back the rest of the batch");
                        return Ok(Delivery {
                            rejected,
                            handled_through: Some(before),
                            failure: Some(format!(
                                "{reason} (event {}, {attempt} attempt(s))",
                                event.id
                            )),
                            refusing: false,
                        });
                    }
                    Attempt::Retry(reason) => {
                        tracing::debug!(sink = %self.name, event = %event.id, attempt, reason, "webhook delivery failed; trying again");
                        tokio::time::sleep(wait).await;
                        wait = wait.saturating_mul(2).min(MAX_RETRY);
                        attempt += 1;
                    }
                }
            }
        }
        Ok(Delivery {
            rejected,
            ..Delivery::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};

    /// What the test receiver saw and how it answers.
    #[derive(Default)]
    struct Receiver {
        /// (event id header, body, signature valid)
        got: Vec<(String, String, bool)>,
        /// Answers in turn; once used up, 200.
        answers: Vec<(u16, String)>,
        /// Event ids always answered 500.
        failing: Vec<String>,
    }

    const SECRET: &str = "s3cr3t-key";

    /// A real HTTP server on 127.0.0.1, checking each signature as a receiver would.
    async fn serve(receiver: Arc<Mutex<Receiver>>) -> SocketAddr {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: AxumHeaders, body: String| {
                let receiver = Arc::clone(&receiver);
                async move {
                    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                    mac.update(body.as_bytes());
                    let expected = format!("sha256={}", hex(&mac.finalize().into_bytes()));
                    let header = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let valid = header(SIGNATURE_HEADER) == expected
                        && header("content-type") == CONTENT_TYPE_CLOUDEVENTS
                        && header(TIMESTAMP_HEADER).parse::<i64>().is_ok();
                    let id = header(EVENT_ID_HEADER);
                    let mut r = receiver.lock().unwrap();
                    r.got.push((id.clone(), body, valid));
                    let (status, text) = if r.failing.contains(&id) {
                        (500, String::new())
                    } else if r.answers.is_empty() {
                        (200, String::new())
                    } else {
                        r.answers.remove(0)
                    };
                    (AxumStatus::from_u16(status).unwrap(), text)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn config(url: &str) -> WebhookSinkConfig {
        let config: WebhookSinkConfig = serde_json::from_value(serde_json::json!({
            "url": url, "secret": SECRET, "timeout_s": 2.0, "max_attempts": 2,
            "headers": {"Authorization": "Bearer tok-123"}
        }))
        .unwrap();
        config
            .validate(&ConfigContext::new(Path::new("/etc/skynet/skynet.toml")))
            .unwrap()
    }

    fn event(seq: i64) -> StoredEvent {
        StoredEvent {
            seq,
            id: format!("inc/{seq}"),
            body: format!(r#"{{"id":"inc/{seq}","specversion":"1.0"}}"#),
        }
    }

    #[tokio::test]
    async fn each_event_is_posted_in_order_signed_with_the_secret() {
        let receiver = Arc::new(Mutex::new(Receiver::default()));
        let addr = serve(Arc::clone(&receiver)).await;
        let mut sink = WebhookSink::new("hook", &config(&format!("http://{addr}/hook"))).unwrap();
        let batch = [event(1), event(2), event(3)];
        assert_eq!(sink.deliver_batch(&batch).await.unwrap(), Delivery::all());
        let got = receiver.lock().unwrap().got.clone();
        assert_eq!(
            got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
            ["inc/1", "inc/2", "inc/3"]
        );
        assert!(
            got.iter().all(|g| g.2),
            "a signature did not verify: {got:?}"
        );
        assert_eq!(got[0].1, batch[0].body);
    }

    #[tokio::test]
    async fn a_4xx_is_refused_for_good_with_a_bounded_excerpt_and_the_rest_still_goes() {
        let receiver = Arc::new(Mutex::new(Receiver {
            answers: vec![(200, String::new()), (422, "é".repeat(3000))],
            ..Receiver::default()
        }));
        let addr = serve(Arc::clone(&receiver)).await;
        let mut sink = WebhookSink::new("hook", &config(&format!("http://{addr}/hook"))).unwrap();
        let delivery = sink
            .deliver_batch(&[event(1), event(2), event(3)])
            .await
            .unwrap();
        assert_eq!(delivery.handled_through, None);
        assert_eq!(delivery.rejected.len(), 1);
        let refused = &delivery.rejected[0];
        assert_eq!((refused.seq, refused.status), (2, Some(422)));
        assert!(refused.reason.len() <= EXCERPT_BYTES && refused.reason.starts_with("éé"));
        // No retry of a refusal: three requests for three events.
        assert_eq!(receiver.lock().unwrap().got.len(), 3);
        // Through `deliver`, all or nothing, a refusal is an error.
        receiver.lock().unwrap().answers = vec![(404, String::new())];
        assert!(sink.deliver(&[event(4)]).await.is_err());
    }

    #[tokio::test]
    async fn a_401_403_404_or_410_refuses_the_sink_not_the_event_and_is_not_retried_at_once() {
        let receiver = Arc::new(Mutex::new(Receiver::default()));
        let addr = serve(Arc::clone(&receiver)).await;
        let mut sink = WebhookSink::new("hook", &config(&format!("http://{addr}/hook"))).unwrap();
        for status in [401, 403, 404, 410] {
            receiver.lock().unwrap().answers = vec![(status, "token expired".into())];
            let e = sink.deliver_batch(&[event(1), event(2)]).await.unwrap_err();
            assert!(
                matches!(&e, EmitError::Refusing { message, .. } if message.contains(&status.to_string())),
                "{status}: {e}"
            );
        }
        // One request each: the worker's backoff does the retrying.
        assert_eq!(receiver.lock().unwrap().got.len(), 4);
        // Mid-batch: what came before is handled, nothing is a dead letter.
        receiver.lock().unwrap().answers = vec![(200, String::new()), (401, String::new())];
        let delivery = sink
            .deliver_batch(&[event(1), event(2), event(3)])
            .await
            .unwrap();
        assert_eq!(delivery.handled_through, Some(1));
        assert!(delivery.refusing && delivery.rejected.is_empty());
        assert!(delivery.failure.is_some());
        // 400, 413 and 422 refuse one event: dead letters, and the rest goes on.
        receiver.lock().unwrap().answers = vec![(400, String::new()), (413, String::new())];
        let delivery = sink
            .deliver_batch(&[event(1), event(2), event(3)])
            .await
            .unwrap();
        let refused: Vec<_> = delivery
            .rejected
            .iter()
            .map(|r| (r.seq, r.status))
            .collect();
        assert_eq!(refused, [(1, Some(400)), (2, Some(413))]);
        assert_eq!(delivery.handled_through, None);
    }

    #[tokio::test]
    async fn retryable_answers_are_tried_max_attempts_times_then_handed_back_in_order() {
        // 503 then 429: two attempts, the second also fails; then 200.
        let receiver = Arc::new(Mutex::new(Receiver {
            answers: vec![(503, String::new()), (429, String::new())],
            ..Receiver::default()
        }));
        let addr = serve(Arc::clone(&receiver)).await;
        let mut sink = WebhookSink::new("hook", &config(&format!("http://{addr}/hook"))).unwrap();
        let e = sink.deliver_batch(&[event(1)]).await.unwrap_err();
        assert!(e.to_string().contains("429"), "{e}");
        assert_eq!(
            sink.deliver_batch(&[event(1)]).await.unwrap(),
            Delivery::all()
        );

        // An event that keeps failing mid-batch: what came before is handled, it is not.
        receiver.lock().unwrap().failing = vec!["inc/3".into()];
        let delivery = sink
            .deliver_batch(&[event(2), event(3), event(4)])
            .await
            .unwrap();
        assert_eq!(delivery.handled_through, Some(2));
        let ids: Vec<String> = receiver
            .lock()
            .unwrap()
            .got
            .iter()
            .map(|g| g.0.clone())
            .collect();
        assert_eq!(ids, ["inc/1", "inc/1", "inc/1", "inc/2", "inc/3", "inc/3"]);
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable_and_its_error_shows_no_credentials() {
        // A port nobody listens on.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut sink = WebhookSink::new(
            "hook",
            &config(&format!("http://user:pa55word@{addr}/hook")),
        )
        .unwrap();
        let e = sink
            .deliver_batch(&[event(1)])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("could not connect") && e.contains(&addr.to_string()),
            "{e}"
        );
        assert!(!e.contains("pa55word") && !e.contains(SECRET), "{e}");
    }

    #[test]
    fn config_checks_the_url_the_secret_and_the_headers_and_never_shows_a_secret() {
        let cx = ConfigContext::new(Path::new("/etc/skynet/skynet.toml"));
        let parse = |v: serde_json::Value| {
            let c: WebhookSinkConfig = serde_json::from_value(v).unwrap();
            c.validate(&cx)
        };
        let ok = parse(serde_json::json!({"url": "https://u:pw-9@hooks.example/x", "secret": "k"}))
            .unwrap();
        assert_eq!((ok.timeout_s, ok.max_attempts), (10.0, 3));
        let shown = format!("{ok:?}");
        assert!(
            !shown.contains("pw-9") && !shown.contains("\"k\""),
            "{shown}"
        );
        assert_eq!(WebhookSinkConfig::KIND, "webhook");

        let field = |v| parse(v).unwrap_err().field;
        assert_eq!(
            field(serde_json::json!({"url": "ftp://h/x", "secret": "k"})),
            "url"
        );
        let e = parse(serde_json::json!({"url": "mqtt://u:pw-9@h", "secret": "k"})).unwrap_err();
        assert!(!e.message.contains("pw-9"), "{e}");
        assert_eq!(field(serde_json::json!({"url": "http://h/x"})), "");
        assert_eq!(
            field(serde_json::json!({"url": "http://h/x", "secret": "k", "secret_env": "X"})),
            "secret_env"
        );
        let e = parse(
            serde_json::json!({"url": "http://h/x", "secret_env": "SKYNET_TEST_UNSET_SECRET_9"}),
        )
        .unwrap_err();
        assert!(e.message.contains("SKYNET_TEST_UNSET_SECRET_9"), "{e}");
        assert_eq!(
            field(serde_json::json!({"url": "http://h/x", "secret": "k", "max_attempts": 0})),
            "max_attempts"
        );
        assert_eq!(
            field(serde_json::json!({"url": "http://h/x", "secret": "k", "timeout_s": 0})),
            "timeout_s"
        );
        assert_eq!(
            field(
                serde_json::json!({"url": "http://h/x", "secret": "k", "headers": {"X-Skynet-Signature": "x"}})
            ),
            "headers.X-Skynet-Signature"
        );
        let e = parse(serde_json::json!({"url": "http://h/x", "secret": "k", "headers": {"X-Token": "bad\nvalue-77"}}))
            .unwrap_err();
        assert!(!e.message.contains("value-77"), "{e}");
        assert!(
            serde_json::from_value::<WebhookSinkConfig>(
                serde_json::json!({"url": "http://h/x", "secret": "k", "retries": 1})
            )
            .is_err()
        );
    }

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let mut config = config("http://127.0.0.1:9/x");
        config.secret = Some("Jefe".into());
        let sink = WebhookSink::new("hook", &config).unwrap();
        assert_eq!(
            sink.sign(b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
