//! `[[cameras]] kind = "onvif"`: a camera found through its ONVIF (Profile S) device service.
//!
//! The source asks the device for its stream address, then plays it as an RTSP camera
//! ([`GstSourceConfig`]), user name and password given to the RTSP element as properties:
//!
//! 1. `GetSystemDateAndTime` (unauthenticated): the device clock's offset from ours;
//! 2. `GetCapabilities` (else `GetServices`, else the device URL itself): the media service;
//! 3. `GetProfiles`, then `GetStreamUri` (RTP-Unicast over RTSP) for the first profile or the
//!    configured one,
//!
//! each call but the first signed with a WS-UsernameToken whose `Created` is on the device's
//! clock (our time plus the offset), so a device whose clock is hours off still accepts it.
//! The address is resolved when the source first runs and again after each failure of the
//! stream, so a device that is down is retried with the camera's backoff, as an RTSP camera
//! is. Answers are read by local name (vendors' namespace prefixes differ) and capped in
//! size; the password never reaches a log, an error or a metric.

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Deserialize;
use sha1::{Digest as _, Sha1};
use skynet_core::config::check_range;
use skynet_core::{Component, ConfigContext, DeviceId, FieldError, Secret, Watermark, redact_uri};

use crate::config::{DecoderChoice, FrameDelivery, KeyframesOnly, ReconnectConfig, Transport};
use crate::{
    BuildSource, CameraSourceFamily, FrameOutput, FrameSource, GstSourceConfig, IngestError,
    RetryPolicy, SourceBuildContext, SourceExit, SourceStats,
};
use skynet_core::Shutdown;

/// The source part of a `[[cameras]]` table with `kind = "onvif"`. `Debug` never shows the
/// password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnvifSourceConfig {
    /// The device service, `http(s)://host[:port]/onvif/device_service`; may hold `${VAR}`,
    /// never a user name or password (those are `user` and `password`).
    pub url: String,
    /// User name on the device; may be `${VAR}`. Without one, requests are not signed.
    #[serde(default)]
    pub user: Option<Secret>,
    /// Password on the device; best given as `${VAR}`. Signs the ONVIF requests
    /// (WS-UsernameToken digest) and is given to the RTSP element as a property.
    #[serde(default)]
    pub password: Option<Secret>,
    /// The media profile's token; default: the device's first profile.
    #[serde(default)]
    pub profile: Option<String>,
    /// As for an RTSP camera: restart policy (a live camera is never given up on).
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// As for an RTSP camera: no frame for this long restarts the stream. Default 10.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_s: f64,
    /// RTSP lower transport: `tcp` (default), `udp` or `auto`.
    #[serde(default)]
    pub transport: Transport,
    /// RTSP jitter buffer, in milliseconds (0 to 10000). Default 200.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u32,
    /// Timeout of each ONVIF request and of the stream's connection, in seconds (0.5 to
    /// 600). Default 10.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// As for an RTSP camera: `auto`, `software` or a GStreamer decoder's name.
    #[serde(default)]
    pub decoder: DecoderChoice,
    /// Threads of a software decoder (0: one per core). Default 1.
    #[serde(default)]
    pub decode_threads: Option<u32>,
    /// As for an RTSP camera: `true`, `false` or `"auto"` (default): only key frames reach
    /// the decoder.
    #[serde(default)]
    pub keyframes_only: KeyframesOnly,
    /// The stream address the device gave last, shared by every source built from this
    /// config: a patrol's next visit (a fresh source each round) plays it at once instead of
    /// asking the device again, and asks only when it fails.
    #[serde(skip)]
    known_stream: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

fn default_stall_timeout() -> f64 {
    10.0
}

fn default_latency_ms() -> u32 {
    200
}

fn default_timeout() -> f64 {
    10.0
}

impl Component<CameraSourceFamily> for OnvifSourceConfig {
    const KIND: &'static str = "onvif";
    const EXAMPLE: &'static str = "url = \"http://192.0.2.10/onvif/device_service\"\nuser = \"viewer\"\npassword = \"${SKYNET_CAM_PASSWORD:-}\"";
    type Validated = Self;

    /// Pure: expands `${VAR}` in `url`, `user` and `password` and checks the keys; no request
    /// is made. Errors name the field and never hold the password.
    fn validate(mut self, cx: &ConfigContext) -> Result<Self, FieldError> {
        let raw = self.url.clone();
        let url = cx
            .expand("url", &raw)
            .map_err(|e| FieldError::new("url", e.message.replace(&raw, &redact_uri(&raw))))?;
        let shown = redact_uri(&url);
        let parsed = url::Url::parse(&url).map_err(|e| {
            FieldError::new(
                "url",
                format!("`url` ({shown}) is not a URL ({e}); give the device service, e.g. http://192.0.2.10/onvif/device_service"),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(FieldError::new(
                "url",
                format!("`url` ({shown}) must be http:// or https:// (the ONVIF device service)"),
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(FieldError::new(
                "url",
                format!("`url` ({shown}) has no host"),
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(FieldError::new(
                "url",
                format!(
                    "`url` ({shown}) must not hold a user name or password: give them as `user` and `password`"
                ),
            ));
        }
        self.url = url;
        for (field, value) in [("user", &mut self.user), ("password", &mut self.password)] {
            if let Some(raw) = value.as_mut() {
                // The error names the variable, never the value.
                *raw = cx
                    .expand(field, raw.expose())
                    .map_err(|e| FieldError::new(field, e.message.replace(raw.expose(), "…")))?
                    .into();
            }
        }
        if self.password.is_some() && self.user.is_none() {
            return Err(FieldError::new("password", "`password` needs a `user`"));
        }
        if let Some(token) = &self.profile
            && (token.is_empty() || token.len() > 64 || token.chars().any(char::is_control))
        {
            return Err(FieldError::new(
                "profile",
                "`profile` must be a profile token of 1 to 64 characters",
            ));
        }
        let r = &self.reconnect;
        check_range(
            "reconnect.initial_backoff_s",
            r.initial_backoff_s,
            0.01,
            3600.0,
        )?;
        check_range(
            "reconnect.max_backoff_s",
            r.max_backoff_s,
            r.initial_backoff_s,
            86_400.0,
        )?;
        if r.max_attempts.is_some() {
            return Err(FieldError::new(
                "reconnect.max_attempts",
                "`reconnect.max_attempts` applies only to files: a live camera is retried for as long as the process runs",
            ));
        }
        check_range("stall_timeout_s", self.stall_timeout_s, 0.5, 3600.0)?;
        check_range("timeout_s", self.timeout_s, 0.5, 600.0)?;
        if self.latency_ms > 10_000 {
            return Err(FieldError::new(
                "latency_ms",
                format!(
                    "`latency_ms` must be between 0 and 10000, got {}",
                    self.latency_ms
                ),
            ));
        }
        if let Some(threads) = self.decode_threads
            && threads > 256
        {
            return Err(FieldError::new(
                "decode_threads",
                format!("`decode_threads` must be between 0 and 256, got {threads}"),
            ));
        }
        if let DecoderChoice::Element(name) = &self.decoder
            && (name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
        {
            return Err(FieldError::new(
                "decoder",
                format!(
                    "`decoder` must be \"auto\", \"software\" or a GStreamer element name, got `{name}`"
                ),
            ));
        }
        Ok(self)
    }
}

impl BuildSource for OnvifSourceConfig {
    fn is_live(&self) -> bool {
        true
    }

    /// The device service's URL (it holds no credentials).
    fn display_uri(&self) -> String {
        redact_uri(&self.url)
    }

    fn retry_policy(&self) -> RetryPolicy {
        let r = &self.reconnect;
        let initial = seconds_or(r.initial_backoff_s, 1.0);
        RetryPolicy {
            initial,
            max: seconds_or(r.max_backoff_s, 30.0).max(initial),
            max_attempts: None,
            live: true,
        }
    }

    fn watermark(&self) -> Watermark {
        Watermark::new(true)
    }

    /// No request yet: the stream's address is asked for when the source runs, so a device
    /// that is down is retried like a camera that is.
    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Box<dyn FrameSource>, IngestError> {
        let mut source = OnvifSource {
            camera: cx.camera.clone(),
            delivery: cx.delivery.clone(),
            config: self.clone(),
            stream: None,
            stale: true,
            retired: SourceStats::default(),
        };
        let known = self
            .known_stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(uri) = known {
            // Played at once; a failure asks the device again.
            let rtsp = source.rtsp_config(&uri).build(cx)?;
            source.stream = Some((uri, rtsp));
            source.stale = false;
        }
        Ok(Box::new(source))
    }

    /// A visit's first frame may wait for the device's answers (up to five requests, each
    /// within `timeout_s`, the first visit only) and then the stream's: twice `timeout_s`.
    fn open_timeout(&self) -> Duration {
        seconds_or(self.timeout_s * 2.0, 20.0)
    }
}

/// Seconds as a `Duration`; `default` for a value no `Duration` can hold.
fn seconds_or(value: f64, default: f64) -> Duration {
    Duration::try_from_secs_f64(value)
        .or_else(|_| Duration::try_from_secs_f64(default))
        .unwrap_or(Duration::from_secs(1))
}

/// The running ONVIF camera: the RTSP source of the address the device gave, asked for again
/// after each failure.
struct OnvifSource {
    camera: DeviceId,
    delivery: FrameDelivery,
    config: OnvifSourceConfig,
    /// The stream address and its RTSP source.
    stream: Option<(String, Box<dyn FrameSource>)>,
    /// Ask the device again before the next run.
    stale: bool,
    /// What the RTSP sources of earlier addresses did.
    retired: SourceStats,
}

impl OnvifSource {
    fn rtsp_config(&self, uri: &str) -> GstSourceConfig {
        let c = &self.config;
        let mut rtsp = GstSourceConfig::new(uri);
        rtsp.reconnect = c.reconnect.clone();
        rtsp.stall_timeout_s = c.stall_timeout_s;
        rtsp.transport = c.transport;
        rtsp.latency_ms = c.latency_ms;
        rtsp.timeout_s = c.timeout_s;
        rtsp.user = c.user.clone();
        rtsp.password = c.password.clone();
        rtsp.decoder = c.decoder.clone();
        rtsp.decode_threads = c.decode_threads;
        rtsp.keyframes_only = c.keyframes_only;
        rtsp
    }

    /// Asks the device for the stream's address; builds a new RTSP source when it changed.
    fn refresh(&mut self, stop: &Shutdown) -> Result<(), IngestError> {
        let uri = resolve(&self.config, Some(stop)).map_err(|error| IngestError::Onvif {
            camera: self.camera.clone(),
            url: redact_uri(&self.config.url),
            error,
        })?;
        *self
            .config
            .known_stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(uri.clone());
        if self.stream.as_ref().is_some_and(|(known, _)| *known == uri) {
            return Ok(());
        }
        tracing::info!(
            camera = %self.camera,
            stream = %redact_uri(&uri),
            "ONVIF device gave its stream address"
        );
        let source = self.rtsp_config(&uri).build(&SourceBuildContext {
            camera: &self.camera,
            delivery: &self.delivery,
        })?;
        if let Some((_, old)) = self.stream.replace((uri, source)) {
            let stats = old.stats();
            self.retired.decoded += stats.decoded;
            self.retired.dropped += stats.dropped;
        }
        Ok(())
    }
}

impl FrameSource for OnvifSource {
    fn camera(&self) -> &DeviceId {
        &self.camera
    }

    fn stats(&self) -> SourceStats {
        let current = self
            .stream
            .as_ref()
            .map(|(_, s)| s.stats())
            .unwrap_or_default();
        SourceStats {
            decoded: self.retired.decoded + current.decoded,
            dropped: self.retired.dropped + current.dropped,
        }
    }

    fn run(&mut self, out: &FrameOutput, stop: &Shutdown) -> Result<SourceExit, IngestError> {
        if stop.is_triggered() {
            return Ok(SourceExit::Stopped);
        }
        if self.stale || self.stream.is_none() {
            match self.refresh(stop) {
                Ok(()) => self.stale = false,
                // A device service that does not answer while its stream might: the last
                // address is tried again, and the device asked again after its next failure.
                Err(e) if self.stream.is_some() && !stop.is_triggered() => {
                    tracing::warn!(
                        camera = %self.camera,
                        error = %e,
                        "ONVIF device did not give its stream address; trying the last one"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        let Some((_, source)) = self.stream.as_mut() else {
            return Ok(SourceExit::Stopped);
        };
        let result = source.run(out, stop);
        // The device may have moved the stream (a new address after a reboot).
        if !matches!(result, Ok(SourceExit::Stopped | SourceExit::FrameLimit)) {
            self.stale = true;
        }
        result
    }
}

/// Why an ONVIF device gave no stream address. No variant holds the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnvifError {
    /// HTTP 401/403, or a SOAP fault such as `ter:NotAuthorized`.
    #[error("the device refused the user name or password ({action}: {detail})")]
    Unauthorized {
        action: &'static str,
        detail: String,
    },
    #[error("{action}: no answer from the device: {reason}")]
    Unreachable {
        action: &'static str,
        reason: String,
    },
    #[error("{action}: the device answered HTTP {status}")]
    Http { action: &'static str, status: u16 },
    #[error("{action}: SOAP fault {code}: {reason}")]
    Fault {
        action: &'static str,
        code: String,
        reason: String,
    },
    #[error("{action}: the answer is not ONVIF SOAP: {reason}")]
    Malformed {
        action: &'static str,
        reason: String,
    },
    #[error("{action}: the answer is over {limit} bytes")]
    TooLarge { action: &'static str, limit: usize },
    #[error("the device has no media profile")]
    NoProfile,
    #[error("the device has no profile `{token}` (it has: {known})")]
    NoSuchProfile { token: String, known: String },
    #[error("the device's stream address `{uri}` is not rtsp:// with a host")]
    BadStreamUri { uri: String },
}

/// The largest answer read from a device: a profile list of a many-channel recorder fits.
const MAX_ANSWER: usize = 2 * 1024 * 1024;
/// Device-given text (fault reasons) kept in errors, in characters.
const MAX_DETAIL: usize = 200;

const DEVICE_NS: &str = "http://www.onvif.org/ver10/device/wsdl";
const MEDIA_NS: &str = "http://www.onvif.org/ver10/media/wsdl";
const SCHEMA_NS: &str = "http://www.onvif.org/ver10/schema";

/// One conversation with a device: its HTTP client, credentials and clock offset.
struct Device<'a> {
    client: reqwest::blocking::Client,
    user: Option<&'a Secret>,
    password: Option<&'a Secret>,
    /// The device's clock minus ours.
    offset: chrono::TimeDelta,
    /// The camera's shutdown: no request is started once it is triggered.
    stop: Option<&'a Shutdown>,
}

/// The RTSP address of the configured (or first) profile, through the steps in the module
/// docs. Blocking: up to five requests, each within the camera's `timeout_s`.
pub fn resolve_stream_uri(config: &OnvifSourceConfig) -> Result<String, OnvifError> {
    resolve(config, None)
}

/// As [`resolve_stream_uri`], giving up between requests once `stop` is triggered.
fn resolve(config: &OnvifSourceConfig, stop: Option<&Shutdown>) -> Result<String, OnvifError> {
    // One crypto provider for the process (ring), whichever crate asks first; reqwest is
    // built without one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let timeout = seconds_or(config.timeout_s, 10.0);
    let client = reqwest::blocking::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A redirect could carry the signed request elsewhere; a camera on the LAN is reached
        // directly, never through the environment's proxy.
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| OnvifError::Unreachable {
            action: "GetSystemDateAndTime",
            reason: chain(&e),
        })?;
    let device_url = url::Url::parse(&config.url).map_err(|e| OnvifError::Malformed {
        action: "GetSystemDateAndTime",
        reason: format!("the device URL: {e}"),
    })?;
    let mut device = Device {
        client,
        user: config.user.as_ref().filter(|u| !u.is_empty()),
        password: config.password.as_ref(),
        offset: chrono::TimeDelta::zero(),
        stop,
    };

    // 1. The device's clock, unauthenticated; a device that will not tell is taken as right.
    let body = device.call(
        &device_url,
        "GetSystemDateAndTime",
        DEVICE_NS,
        &format!("<tds:GetSystemDateAndTime xmlns:tds=\"{DEVICE_NS}\"/>"),
        false,
    );
    match body {
        Ok(body) => {
            if let Some(device_now) = device_time(&body) {
                device.offset = device_now - Utc::now();
            }
        }
        Err(e @ (OnvifError::Unreachable { .. } | OnvifError::TooLarge { .. })) => return Err(e),
        Err(e) => tracing::debug!(error = %e, "no device time; taking its clock as right"),
    }

    // 2. The media service.
    let media_url = same_host(device.media_service(&device_url)?, &device_url);

    // 3. Profiles, and the stream of the chosen one.
    let body = device.call(
        &media_url,
        "GetProfiles",
        MEDIA_NS,
        &format!("<trt:GetProfiles xmlns:trt=\"{MEDIA_NS}\"/>"),
        true,
    )?;
    let profiles = profiles(&body);
    let token = match &config.profile {
        Some(wanted) => {
            profiles
                .iter()
                .find(|p| p == &wanted)
                .ok_or_else(|| OnvifError::NoSuchProfile {
                    token: wanted.clone(),
                    known: profiles.join(", "),
                })?
        }
        None => profiles.first().ok_or(OnvifError::NoProfile)?,
    };
    let body = device.call(
        &media_url,
        "GetStreamUri",
        MEDIA_NS,
        &format!(
            "<trt:GetStreamUri xmlns:trt=\"{MEDIA_NS}\" xmlns:tt=\"{SCHEMA_NS}\"><trt:StreamSetup><tt:Stream>RTP-Unicast</tt:Stream><tt:Transport><tt:Protocol>RTSP</tt:Protocol></tt:Transport></trt:StreamSetup><trt:ProfileToken>{}</trt:ProfileToken></trt:GetStreamUri>",
            escape(token)
        ),
        true,
    )?;
    let uri = stream_uri(&body).ok_or_else(|| OnvifError::Malformed {
        action: "GetStreamUri",
        reason: "no MediaUri/Uri in the answer".into(),
    })?;
    check_stream_uri(&uri)?;
    Ok(same_stream_host(&uri, &device_url))
}

/// The address a device named for one of its services, on the configured device's host: the
/// signed requests (replayable against the device) never go to another host a device (or
/// whoever answers in its place) names, and a device behind NAT, naming its inside address,
/// is still reached. The scheme and port follow the configured URL's when the host differs.
fn same_host(named: url::Url, device: &url::Url) -> url::Url {
    if named.host_str() == device.host_str() {
        return named;
    }
    tracing::info!(named = %named.host_str().unwrap_or(""), "the device named a service on another host; asking the configured host instead");
    let mut pinned = device.clone();
    pinned.set_path(named.path());
    pinned.set_query(named.query());
    pinned
}

/// The stream address on the configured device's host (as [`same_host`]: the credentials
/// go to the RTSP server as properties, and never to another host a device names). The
/// RTSP port and path stay the device's.
fn same_stream_host(uri: &str, device: &url::Url) -> String {
    let (Ok(mut stream), Some(host)) = (url::Url::parse(uri), device.host_str()) else {
        return uri.to_string();
    };
    if stream.host_str() == Some(host) {
        return uri.to_string();
    }
    tracing::info!(named = %stream.host_str().unwrap_or(""), "the device named its stream on another host; playing it from the configured host instead");
    if stream.set_host(Some(host)).is_err() {
        return uri.to_string();
    }
    stream.to_string()
}

impl Device<'_> {
    /// The media service's address: from GetCapabilities, else GetServices, else the device
    /// service itself (many devices serve every service there). A refusal of the credentials
    /// ends it at once.
    fn media_service(&self, device_url: &url::Url) -> Result<url::Url, OnvifError> {
        let usable = |addr: Option<String>| {
            addr.and_then(|a| url::Url::parse(a.trim()).ok())
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        };
        match self.call(
            device_url,
            "GetCapabilities",
            DEVICE_NS,
            &format!(
                "<tds:GetCapabilities xmlns:tds=\"{DEVICE_NS}\"><tds:Category>Media</tds:Category></tds:GetCapabilities>"
            ),
            true,
        ) {
            Ok(body) => {
                if let Some(url) = usable(media_from_capabilities(&body)) {
                    return Ok(url);
                }
            }
            Err(e @ (OnvifError::Unauthorized { .. } | OnvifError::Unreachable { .. })) => {
                return Err(e);
            }
            Err(e) => tracing::debug!(error = %e, "GetCapabilities failed; trying GetServices"),
        }
        match self.call(
            device_url,
            "GetServices",
            DEVICE_NS,
            &format!(
                "<tds:GetServices xmlns:tds=\"{DEVICE_NS}\"><tds:IncludeCapability>false</tds:IncludeCapability></tds:GetServices>"
            ),
            true,
        ) {
            Ok(body) => {
                if let Some(url) = usable(media_from_services(&body)) {
                    return Ok(url);
                }
            }
            Err(e @ (OnvifError::Unauthorized { .. } | OnvifError::Unreachable { .. })) => {
                return Err(e);
            }
            Err(e) => tracing::debug!(error = %e, "GetServices failed; using the device URL"),
        }
        Ok(device_url.clone())
    }

    /// One SOAP 1.2 request; the answer's `Body`, or why there is none.
    fn call(
        &self,
        url: &url::Url,
        action: &'static str,
        namespace: &str,
        body: &str,
        signed: bool,
    ) -> Result<Element, OnvifError> {
        if self.stop.is_some_and(Shutdown::is_triggered) {
            return Err(OnvifError::Unreachable {
                action,
                reason: "the camera is stopping".into(),
            });
        }
        let header = match (signed, self.user) {
            (true, Some(user)) => {
                let created = (Utc::now() + self.offset).to_rfc3339_opts(SecondsFormat::Secs, true);
                let mut nonce = [0u8; 16];
                if getrandom::fill(&mut nonce).is_err() {
                    nonce.iter_mut().for_each(|b| *b = fastrand::u8(..));
                }
                let password = self.password.map(Secret::expose).unwrap_or_default();
                security_header(user.expose(), password, &created, &nonce)
            }
            _ => String::new(),
        };
        let envelope = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Header>{header}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
        );
        let response = self
            .client
            .post(url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("application/soap+xml; charset=utf-8; action=\"{namespace}/{action}\""),
            )
            .body(envelope)
            .send()
            .map_err(|e| OnvifError::Unreachable {
                action,
                reason: chain(&e),
            })?;
        let status = response.status();
        let mut bytes = Vec::new();
        response
            .take(MAX_ANSWER as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| OnvifError::Unreachable {
                action,
                reason: format!("reading the answer: {e}"),
            })?;
        if bytes.len() > MAX_ANSWER {
            return Err(OnvifError::TooLarge {
                action,
                limit: MAX_ANSWER,
            });
        }
        let text = String::from_utf8_lossy(&bytes);
        let scrub = |s: &str| self.scrub(s);
        interpret(action, status.as_u16(), &text, scrub)
    }

    /// Device-given text, shortened and without the password (should a device echo it).
    fn scrub(&self, text: &str) -> String {
        let mut text: String = text.trim().chars().take(MAX_DETAIL).collect();
        if let Some(password) = self.password.filter(|p| p.expose().len() >= 3) {
            text = text.replace(password.expose(), "…");
        }
        text
    }
}

/// What an HTTP answer means: the SOAP `Body` of a success, or the typed error of a fault or
/// a refusal. `scrub` cleans device-given text.
fn interpret(
    action: &'static str,
    status: u16,
    text: &str,
    scrub: impl Fn(&str) -> String,
) -> Result<Element, OnvifError> {
    let parsed = parse_xml(text);
    let body = parsed
        .as_ref()
        .ok()
        .filter(|root| root.name == "Envelope")
        .and_then(|envelope| envelope.child("Body"));
    if let Some(fault) = body.and_then(|b| b.child("Fault")).map(Fault::of) {
        let detail = scrub(&fault.describe());
        return Err(if fault.is_auth() || status == 401 || status == 403 {
            OnvifError::Unauthorized { action, detail }
        } else {
            OnvifError::Fault {
                action,
                code: scrub(&fault.codes.join(" / ")),
                reason: scrub(&fault.reason),
            }
        });
    }
    if status == 401 || status == 403 {
        return Err(OnvifError::Unauthorized {
            action,
            detail: format!("HTTP {status}"),
        });
    }
    if !(200..300).contains(&status) {
        return Err(OnvifError::Http { action, status });
    }
    match (&parsed, body) {
        (Ok(_), Some(body)) => Ok(body.clone()),
        (Ok(_), None) => Err(OnvifError::Malformed {
            action,
            reason: "no SOAP Envelope/Body".into(),
        }),
        (Err(reason), _) => Err(OnvifError::Malformed {
            action,
            reason: scrub(reason),
        }),
    }
}

/// The error and its causes, without the URL.
fn chain(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "could not connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The WS-Security header of one request (WS-UsernameToken with a password digest).
fn security_header(user: &str, password: &str, created: &str, nonce: &[u8]) -> String {
    format!(
        "<wsse:Security s:mustUnderstand=\"1\" xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" xmlns:wsu=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd\"><wsse:UsernameToken><wsse:Username>{}</wsse:Username><wsse:Password Type=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest\">{}</wsse:Password><wsse:Nonce EncodingType=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary\">{}</wsse:Nonce><wsu:Created>{}</wsu:Created></wsse:UsernameToken></wsse:Security>",
        escape(user),
        password_digest(nonce, created, password),
        BASE64.encode(nonce),
        escape(created),
    )
}

/// WS-UsernameToken's `PasswordDigest`: Base64(SHA-1(nonce + created + password)), the nonce
/// as raw bytes.
pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(nonce);
    sha.update(created.as_bytes());
    sha.update(password.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Text for an XML element or attribute.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn check_stream_uri(uri: &str) -> Result<(), OnvifError> {
    let ok = url::Url::parse(uri).is_ok_and(|u| {
        (u.scheme().eq_ignore_ascii_case("rtsp") || u.scheme().eq_ignore_ascii_case("rtsps"))
            && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if ok {
        Ok(())
    } else {
        Err(OnvifError::BadStreamUri {
            uri: redact_uri(uri).chars().take(MAX_DETAIL).collect(),
        })
    }
}

/// An XML element by local name (prefixes dropped): vendors name the same namespaces with
/// different prefixes, or none.
#[derive(Debug, Clone, Default, PartialEq)]
struct Element {
    name: String,
    attributes: Vec<(String, String)>,
    /// The element's own text (not its children's), entities resolved.
    text: String,
    children: Vec<Element>,
}

impl Element {
    fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The first element of this name at any depth, this one included (depth first).
    fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text_of(&self, child: &str) -> Option<&str> {
        self.child(child).map(|c| c.text.trim())
    }
}

/// Elements in one answer, at most: an answer is capped in bytes too.
const MAX_ELEMENTS: usize = 100_000;
const MAX_DEPTH: usize = 64;

/// The document's root element, its names local.
fn parse_xml(text: &str) -> Result<Element, String> {
    use quick_xml::events::{BytesStart, Event};

    fn element(start: &BytesStart<'_>) -> Result<Element, String> {
        let mut attributes = Vec::new();
        for attribute in start.attributes() {
            let attribute = attribute.map_err(|e| e.to_string())?;
            let value = attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| e.to_string())?;
            attributes.push((
                attribute.key.local_name().as_ref().to_string(),
                value.into_owned(),
            ));
        }
        Ok(Element {
            name: start.local_name().as_ref().to_string(),
            attributes,
            ..Element::default()
        })
    }

    let mut reader = quick_xml::Reader::from_str(text);
    // The document itself, holding the root element.
    let mut stack = vec![Element::default()];
    let mut count = 0usize;
    loop {
        let event = reader.read_event().map_err(|e| e.to_string())?;
        if matches!(event, Event::Start(_) | Event::Empty(_)) {
            count += 1;
            if count > MAX_ELEMENTS || stack.len() > MAX_DEPTH {
                return Err("too many or too deeply nested elements".into());
            }
        }
        let top = stack.len() - 1;
        match event {
            Event::Start(start) => stack.push(element(&start)?),
            Event::Empty(start) => {
                let e = element(&start)?;
                stack[top].children.push(e);
            }
            Event::End(_) => {
                if top == 0 {
                    return Err("an end tag without its start".into());
                }
                if let Some(done) = stack.pop() {
                    stack[top - 1].children.push(done);
                }
            }
            Event::Text(t) => stack[top].text.push_str(&t.xml10_content()),
            Event::CData(t) => stack[top].text.push_str(&t.xml10_content()),
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().map_err(|e| e.to_string())?
                } else {
                    match r.xml10_content().as_ref() {
                        "amp" => Some('&'),
                        "lt" => Some('<'),
                        "gt" => Some('>'),
                        "quot" => Some('"'),
                        "apos" => Some('\''),
                        other => return Err(format!("unknown entity `&{other};`")),
                    }
                };
                if let Some(c) = resolved {
                    stack[top].text.push(c);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if stack.len() != 1 {
        return Err("the document ends inside an element (truncated?)".into());
    }
    let document = stack.pop().unwrap_or_default();
    document
        .children
        .into_iter()
        .next()
        .ok_or_else(|| "no element".into())
}

/// A SOAP 1.2 (`Code/Value`, `Subcode/Value`, `Reason/Text`) or 1.1 (`faultcode`,
/// `faultstring`) fault.
#[derive(Debug, Default, PartialEq)]
struct Fault {
    codes: Vec<String>,
    reason: String,
}

impl Fault {
    fn of(fault: &Element) -> Self {
        let mut codes = Vec::new();
        let mut code = fault.child("Code");
        while let Some(c) = code {
            if let Some(value) = c.text_of("Value") {
                codes.push(value.to_string());
            }
            code = c.child("Subcode");
        }
        if let Some(value) = fault.text_of("faultcode") {
            codes.push(value.to_string());
        }
        let reason = fault
            .child("Reason")
            .and_then(|r| r.text_of("Text"))
            .or_else(|| fault.text_of("faultstring"))
            .unwrap_or_default()
            .to_string();
        Self { codes, reason }
    }

    /// The credentials were refused (`ter:NotAuthorized`, `wsse:FailedAuthentication`, ...).
    fn is_auth(&self) -> bool {
        let local = |code: &str| code.rsplit(':').next().unwrap_or(code).to_ascii_lowercase();
        self.codes.iter().any(|c| {
            matches!(
                local(c).as_str(),
                "notauthorized"
                    | "failedauthentication"
                    | "invalidsecuritytoken"
                    | "invalidsecurity"
            )
        }) || self.reason.to_ascii_lowercase().contains("not authorized")
    }

    fn describe(&self) -> String {
        let codes = self.codes.join(" / ");
        match (codes.is_empty(), self.reason.is_empty()) {
            (false, false) => format!("{codes}: {}", self.reason),
            (false, true) => codes,
            (true, false) => self.reason.clone(),
            (true, true) => "SOAP fault".into(),
        }
    }
}

/// The device's UTC time from a GetSystemDateAndTime answer (its local time when it gives no
/// UTC time).
fn device_time(body: &Element) -> Option<DateTime<Utc>> {
    let info = body.find("SystemDateAndTime")?;
    let at = info
        .child("UTCDateTime")
        .or_else(|| info.child("LocalDateTime"))?;
    let number = |parent: &str, field: &str| -> Option<u32> {
        at.child(parent)?.text_of(field)?.parse().ok()
    };
    let year = i32::try_from(number("Date", "Year")?).ok()?;
    let date = NaiveDate::from_ymd_opt(year, number("Date", "Month")?, number("Date", "Day")?)?;
    let time = date.and_hms_opt(
        number("Time", "Hour")?,
        number("Time", "Minute")?,
        number("Time", "Second")?.min(59),
    )?;
    Some(time.and_utc())
}

/// `Capabilities/Media/XAddr` of a GetCapabilities answer.
fn media_from_capabilities(body: &Element) -> Option<String> {
    let media = body.find("Capabilities")?.child("Media")?;
    media.text_of("XAddr").map(str::to_string)
}

/// The media (ver10) service's `XAddr` in a GetServices answer.
fn media_from_services(body: &Element) -> Option<String> {
    body.find("GetServicesResponse")?
        .children_named("Service")
        .find(|s| s.text_of("Namespace") == Some(MEDIA_NS))
        .and_then(|s| s.text_of("XAddr"))
        .map(str::to_string)
}

/// The profile tokens of a GetProfiles answer, in the device's order.
fn profiles(body: &Element) -> Vec<String> {
    body.find("GetProfilesResponse")
        .map(|r| {
            r.children_named("Profiles")
                .filter_map(|p| p.attribute("token"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `MediaUri/Uri` of a GetStreamUri answer.
fn stream_uri(body: &Element) -> Option<String> {
    body.find("MediaUri")?
        .text_of("Uri")
        .filter(|u| !u.is_empty())
        .map(str::to_string)
}

pub mod discovery;

#[cfg(test)]
mod tests;
