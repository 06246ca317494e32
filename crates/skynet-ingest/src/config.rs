//! The source's own part of a `[[cameras]]` table. The binary keeps the keys every camera has
//! (id, owner, grid, ...) and hands the rest here, so a new source kind brings its own keys
//! and checks without the binary knowing them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};
use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::{
    Component, ConfigContext, Credentials, DeviceId, Erase, Family, FieldError, MaskedUri,
    Registry, Secret, Watermark, redact_uri, split_credentials,
};

use crate::{FrameSource, GstSource, GstSourceOptions, IngestError, RetryPolicy};

/// The source part of a `[[cameras]]` table (the binary strips the common keys id, owner,
/// grid, location, zones, rules before deserialising the rest into this). `Debug` shows the
/// URI without credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GstSourceConfig {
    /// `rtsp://`, `http(s)://`, `file://` or a local path (relative to the config file). May
    /// contain `${VAR}` and credentials (`rtsp://user:pass@host/...`).
    pub uri: MaskedUri,
    /// Stop after this many frames (1..=10^12), counted over the source's whole life.
    #[serde(default)]
    pub max_frames: Option<u64>,
    /// Pace a file at its frame rate, as a live camera.
    #[serde(default)]
    pub realtime: bool,
    /// Event time of a file's first frame (RFC 3339, e.g. "2026-01-01T08:00:00Z"); default: the
    /// file's modification time, or for a `realtime` file the time it starts (it plays as a
    /// live camera). Frame time = start_at + PTS, so replaying the same file with the same
    /// `start_at` gives the same times, paced or not. Network streams are timed by the wall
    /// clock.
    #[serde(default, deserialize_with = "deserialize_start_at")]
    pub start_at: Option<DateTime<Utc>>,
    /// Restart policy.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// A network stream that delivers no frame for this long (connected or not) is restarted:
    /// a server that stops sending without closing the connection is caught too.
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_s: f64,
    /// Play a file again from the start when it ends, its timeline going on. Default false.
    #[serde(default, rename = "loop")]
    pub loop_file: bool,
    /// RTSP lower transport: `tcp` (default: passes NAT and firewalls, no loss), `udp`, or
    /// `auto` (UDP, falling back to TCP).
    #[serde(default)]
    pub transport: Transport,
    /// RTSP jitter buffer, in milliseconds (0 to 10000). Default 200.
    #[serde(default = "default_latency_ms")]
    pub latency_ms: u32,
    /// Connection and read timeout of network streams, in seconds (0.5 to 600). Default 10.
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
    /// User name for the camera; may be `${VAR}`. Overrides one in `uri`.
    #[serde(default)]
    pub user: Option<Secret>,
    /// Password for the camera; best given as `${VAR}`, so it stays out of the file. Given to
    /// the source element as a property, never put in a URI, log, error or metric.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `auto` (default: a hardware decoder when one is installed, else software), `software`,
    /// or a GStreamer decoder's name (`nvh264dec`, `vah264dec`, ...) to prefer. A hardware
    /// decoder that fails falls back to software.
    #[serde(default)]
    pub decoder: DecoderChoice,
    /// Threads of a software decoder (0: one per core). Default: 1 for a live camera (it
    /// decodes at its own rate, and many cameras share the cores; each thread holds frames),
    /// 0 for a file (replayed as fast as possible).
    #[serde(default)]
    pub decode_threads: Option<u32>,
    /// Key-frame-only decoding: `"auto"` (default), `true` or `false`. When on, only key
    /// frames reach the decoder (the rest of the encoded stream is dropped before it; event
    /// clips and live view still get every frame). `"auto"` turns it on while the camera's
    /// `fps` is at or below the key-frame rate measured on the stream.
    #[serde(default)]
    pub keyframes_only: KeyframesOnly,
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

/// RTSP lower transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
    Auto,
}

/// Which video decoder a camera uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DecoderChoice {
    /// Hardware when present, else software.
    #[default]
    Auto,
    Software,
    /// This GStreamer element, when it can decode the stream.
    Element(String),
}

impl<'de> Deserialize<'de> for DecoderChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Ok(match name.as_str() {
            "auto" => Self::Auto,
            "software" => Self::Software,
            _ => Self::Element(name),
        })
    }
}

/// `keyframes_only` of a `[[cameras]]` table: `true`, `false` or `"auto"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KeyframesOnly {
    /// On while the camera's `fps` is at or below the stream's measured key-frame rate.
    #[default]
    Auto,
    /// Always: only key frames are decoded.
    On,
    /// Never: every frame is decoded.
    Off,
}

impl<'de> Deserialize<'de> for KeyframesOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, Visitor};

        struct Choice;
        impl Visitor<'_> for Choice {
            type Value = KeyframesOnly;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }

            fn visit_bool<E: de::Error>(self, on: bool) -> Result<Self::Value, E> {
                Ok(if on {
                    KeyframesOnly::On
                } else {
                    KeyframesOnly::Off
                })
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                match s {
                    "auto" => Ok(KeyframesOnly::Auto),
                    _ => Err(E::custom(format!(
                        "`keyframes_only` must be true, false or \"auto\", got \"{s}\""
                    ))),
                }
            }
        }
        d.deserialize_any(Choice)
    }
}

/// How frames leave a source: what the pipeline asks of every source kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FrameDelivery {
    /// Frames per second passed on for analysis (the camera's `fps`); `None`: every frame.
    pub fps: Option<f64>,
    /// The largest image the detector needs; bigger frames are scaled down to fit, keeping
    /// their aspect ratio, in the same step as the colour conversion.
    pub max_size: Option<(u32, u32)>,
    /// Event clips: the ring a live camera's encoded stream fills (`clips.rs`); `None`: off.
    pub clip_ring: Option<crate::clips::EncodedRing>,
}

/// How a failed source is restarted: waits double from `initial_backoff_s` up to
/// `max_backoff_s`, with jitter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    /// First wait after a failure, in seconds (0.01 to 3600). Default 1.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_s: f64,
    /// Longest wait, in seconds (`initial_backoff_s` to 86400). Default 30.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_s: f64,
    /// Failures in a row (without a frame in between) before a file is given up. Default 3.
    /// Files only: a live camera is retried for as long as the process runs.
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// An RFC 3339 string, or a TOML date-time literal (`start_at = 2026-01-01T08:00:00Z`), which
/// serde sees as a one-entry map holding the same text.
fn deserialize_start_at<'de, D>(d: D) -> Result<Option<DateTime<Utc>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::{self, MapAccess, Visitor};

    struct Rfc3339;
    impl<'de> Visitor<'de> for Rfc3339 {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 date and time with an offset, e.g. \"2026-01-01T08:00:00Z\"")
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    E::custom(format!(
                        "`{s}` is not an RFC 3339 date and time with an offset ({e}), e.g. \"2026-01-01T08:00:00Z\""
                    ))
                })
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            match map.next_entry::<String, String>()? {
                Some((_, text)) => self.visit_str(&text),
                None => Err(de::Error::invalid_type(de::Unexpected::Map, &self)),
            }
        }
    }
    d.deserialize_any(Rfc3339).map(Some)
}

fn default_initial_backoff() -> f64 {
    1.0
}

fn default_max_backoff() -> f64 {
    30.0
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial_backoff_s: default_initial_backoff(),
            max_backoff_s: default_max_backoff(),
            max_attempts: None,
        }
    }
}

/// Retries of a file when `max_attempts` is not set: a file that fails is usually broken, so
/// retrying for ever would only hide it.
const FILE_MAX_ATTEMPTS: u32 = 3;
const MAX_FRAMES_LIMIT: u64 = 1_000_000_000_000;

impl GstSourceConfig {
    /// A config with every default, for `uri`.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: MaskedUri::new(uri),
            max_frames: None,
            realtime: false,
            start_at: None,
            reconnect: ReconnectConfig::default(),
            stall_timeout_s: default_stall_timeout(),
            loop_file: false,
            transport: Transport::default(),
            latency_ms: default_latency_ms(),
            timeout_s: default_timeout(),
            user: None,
            password: None,
            decoder: DecoderChoice::default(),
            decode_threads: None,
            keyframes_only: KeyframesOnly::default(),
        }
    }
}

/// The camera source family: the source part of a `[[cameras]]` table (`kind`, default
/// the first registered, plus the kind's keys; the keys every camera has are read by the
/// camera's own config). Every kind is a [`Component`] whose validated value is a
/// [`BuildSource`].
#[derive(Debug)]
pub struct CameraSourceFamily;

impl Family for CameraSourceFamily {
    const NAME: &'static str = "camera source";
    type Context<'a> = ConfigContext;
    type Validated = dyn BuildSource;
}

impl<V: BuildSource + 'static> Erase<V> for CameraSourceFamily {
    fn erase(validated: V) -> Arc<dyn BuildSource> {
        Arc::new(validated)
    }
}

/// What building a source may look at.
#[derive(Debug, Clone, Copy)]
pub struct SourceBuildContext<'a> {
    pub camera: &'a DeviceId,
    pub delivery: &'a FrameDelivery,
}

/// A validated camera source of any kind.
pub trait BuildSource: std::fmt::Debug + Send + Sync {
    /// Drops stale frames under overload rather than making the source wait.
    fn is_live(&self) -> bool;
    /// The source's address without credentials, for logs.
    fn display_uri(&self) -> String;
    fn retry_policy(&self) -> RetryPolicy;
    /// The source's event clock.
    fn watermark(&self) -> Watermark;
    /// The running source; called again by the supervisor after each failure.
    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Box<dyn FrameSource>, IngestError>;
    /// How long a patrol waits for the first frame of a visit before it calls the camera
    /// offline for the round (the source's connect timeout).
    fn open_timeout(&self) -> Duration {
        Duration::from_secs(10)
    }
    /// The recorded clip this source reads, when it reads one, and how many of its frames
    /// (`skynet eval --objects` decodes the same frames again, one by one).
    fn file_clip(&self) -> Option<(std::path::PathBuf, Option<u64>)> {
        None
    }
}

/// This crate's camera source kinds; the first is the default.
pub fn register(registry: &mut Registry) {
    registry.register::<CameraSourceFamily, GstSourceConfig>();
}

impl Component<CameraSourceFamily> for GstSourceConfig {
    const KIND: &'static str = "gstreamer";
    const EXAMPLE: &'static str = "uri = \"rtsp://127.0.0.1:8554/cam\"";
    // The checked config is the config itself, normalised (`${VAR}` expanded, paths made
    // absolute): building needs nothing validation found besides.
    type Validated = Self;

    /// Pure checks and normalisation: expands `${VAR}` in `uri`, resolves a relative path
    /// against the config file's directory and checks ranges. No file is opened. Errors name
    /// the field (`uri`, `max_frames`, `reconnect.max_backoff_s`, ...) and never contain the
    /// URI's user name or password.
    fn validate(mut self, cx: &ConfigContext) -> Result<Self, FieldError> {
        self.uri = normalise_uri(cx, &self.uri)?.into();

        if let Some(max) = self.max_frames
            && !(1..=MAX_FRAMES_LIMIT).contains(&max)
        {
            return Err(FieldError::new(
                "max_frames",
                format!("`max_frames` must be between 1 and {MAX_FRAMES_LIMIT}, got {max}"),
            ));
        }

        if let Some(start_at) = self.start_at {
            if is_network_uri(&self.uri) {
                // A network stream is timed by its own clock, not by a fixed start.
                return Err(FieldError::new(
                    "start_at",
                    "`start_at` applies only to files, not to network streams",
                ));
            }
            // Keeps start_at + PTS (at most 585 years) far from chrono's limits.
            if !(1970..=9999).contains(&start_at.year()) {
                return Err(FieldError::new(
                    "start_at",
                    format!("`start_at` must be between the years 1970 and 9999, got {start_at}"),
                ));
            }
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
        check_range("stall_timeout_s", self.stall_timeout_s, 0.5, 3600.0)?;
        check_range("timeout_s", self.timeout_s, 0.5, 600.0)?;
        if let Some(threads) = self.decode_threads
            && threads > 256
        {
            return Err(FieldError::new(
                "decode_threads",
                format!("`decode_threads` must be between 0 and 256, got {threads}"),
            ));
        }
        if self.latency_ms > 10_000 {
            return Err(FieldError::new(
                "latency_ms",
                format!(
                    "`latency_ms` must be between 0 and 10000, got {}",
                    self.latency_ms
                ),
            ));
        }
        let network = is_network_uri(&self.uri);
        if network && r.max_attempts.is_some() {
            return Err(FieldError::new(
                "reconnect.max_attempts",
                "`reconnect.max_attempts` applies only to files: a live camera is retried for as long as the process runs",
            ));
        }
        if network && self.loop_file {
            return Err(FieldError::new(
                "loop",
                "`loop` applies only to files: a live stream does not end",
            ));
        }
        for (field, value) in [("user", &mut self.user), ("password", &mut self.password)] {
            if let Some(raw) = value.as_mut() {
                // The error names the variable, never the value.
                *raw = cx
                    .expand(field, raw.expose())
                    .map_err(|e| FieldError::new(field, e.message.replace(raw.expose(), "…")))?
                    .into();
            }
        }
        if self.password.is_some()
            && self.user.is_none()
            && split_credentials(&self.uri).1.is_none()
        {
            return Err(FieldError::new(
                "password",
                "`password` needs a `user` (here or in `uri`)",
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

impl BuildSource for GstSourceConfig {
    /// Live (drops stale frames under overload): rtsp/http/other network streams, or realtime files. Files replayed as fast as
    /// possible are not.
    fn is_live(&self) -> bool {
        self.realtime || is_network_uri(&self.uri)
    }

    fn file_clip(&self) -> Option<(std::path::PathBuf, Option<u64>)> {
        let uri: &str = &self.uri;
        let path = match uri_scheme(uri) {
            None => std::path::PathBuf::from(uri),
            Some(scheme) if scheme.eq_ignore_ascii_case("file") => {
                url::Url::parse(uri).ok()?.to_file_path().ok()?
            }
            Some(_) => return None,
        };
        Some((path, self.max_frames))
    }

    /// The URI without credentials, for logs and errors.
    fn display_uri(&self) -> String {
        redact_uri(&self.uri)
    }

    /// The watermark this source's [`FrameOutput`](crate::FrameOutput) should carry: one that
    /// follows the wall clock for a network stream, and the frames only for a file, paced or
    /// not (a file keeps its own timeline, so its replays stay exact at any speed and load).
    fn watermark(&self) -> Watermark {
        Watermark::new(is_network_uri(&self.uri))
    }

    /// `timeout_s`.
    fn open_timeout(&self) -> Duration {
        seconds_or(self.timeout_s, default_timeout())
    }

    fn retry_policy(&self) -> RetryPolicy {
        // A file ends, paced or not; only a network stream's end is a fault.
        let live = is_network_uri(&self.uri);
        let r = &self.reconnect;
        let initial = seconds_or(r.initial_backoff_s, default_initial_backoff());
        RetryPolicy {
            initial,
            max: seconds_or(r.max_backoff_s, default_max_backoff()).max(initial),
            max_attempts: if live {
                None
            } else {
                r.max_attempts.or(Some(FILE_MAX_ATTEMPTS))
            },
            live,
        }
    }

    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Box<dyn FrameSource>, IngestError> {
        let (camera, delivery) = (cx.camera.clone(), cx.delivery);
        let network = is_network_uri(&self.uri);
        let (_, uri_credentials) = split_credentials(&self.uri);
        let credentials = match (&self.user, &self.password, uri_credentials) {
            (Some(user), password, from_uri) => Some(Credentials {
                user: user.expose().to_string(),
                password: password
                    .clone()
                    .or(from_uri.map(|c| c.password))
                    .unwrap_or_default(),
            }),
            (None, Some(password), Some(from_uri)) => Some(Credentials {
                user: from_uri.user,
                password: password.clone(),
            }),
            (None, _, from_uri) => from_uri,
        };
        let options = GstSourceOptions {
            max_frames: self.max_frames,
            realtime: self.realtime,
            start_at: self.start_at,
            stall_timeout: network.then(|| seconds_or(self.stall_timeout_s, 10.0)),
            loop_file: self.loop_file && !network,
            transport: self.transport,
            latency_ms: self.latency_ms,
            timeout: seconds_or(self.timeout_s, 10.0),
            credentials,
            decoder: self.decoder.clone(),
            fps: delivery.fps,
            max_size: delivery.max_size,
            clip_ring: delivery.clip_ring.clone(),
            keyframes_only: self.keyframes_only,
            decode_threads: self
                .decode_threads
                .unwrap_or(if self.is_live() { 1 } else { 0 }),
            ..GstSourceOptions::new(self.uri.expose())
        };
        // Fails now, not at the first connection, on a path that cannot be a URI.
        GstSource::resolve_uri(&camera, &self.uri)?;
        Ok(Box::new(GstSource::new(camera, options)))
    }
}

/// `${VAR}` expanded; a local path made absolute against the config file.
fn normalise_uri(cx: &ConfigContext, raw: &str) -> Result<String, FieldError> {
    // The expansion error quotes the value, which may hold a password.
    let expanded = cx
        .expand("uri", raw)
        .map_err(|e| FieldError::new("uri", e.message.replace(raw, &redact_uri(raw))))?;
    let shown = redact_uri(&expanded);
    if expanded.trim().is_empty() {
        return Err(FieldError::new("uri", "`uri` is empty"));
    }
    let Some(scheme) = uri_scheme(&expanded) else {
        let path = cx.resolve_path("uri", &expanded)?;
        return Ok(path.to_string_lossy().into_owned());
    };
    if scheme.eq_ignore_ascii_case("file") {
        return Ok(expanded);
    }
    let (_, credentials) = split_credentials(&expanded);
    // An `@` that the URL parser did not read as the end of user:password (a password with an
    // unencoded `/`, `?` or `#` ends the authority early) would leave the password in the URI.
    if credentials.is_none() && after_scheme(&expanded).contains('@') {
        // Not parseable as a URL, so the credentials could not be taken out: GStreamer would
        // get them in its URI and might echo them in an error.
        return Err(FieldError::new(
            "uri",
            format!(
                "the user name or password in `uri` ({shown}) must be percent-encoded: `/` as %2F, `@` as %40, `:` in the user name as %3A"
            ),
        ));
    }
    let authority = after_scheme(&expanded)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    // A device URI (`v4l2:///dev/video0`) names a path, not a host.
    if host.is_empty() && !scheme.eq_ignore_ascii_case("v4l2") {
        return Err(FieldError::new(
            "uri",
            format!("`uri` ({shown}) has no host"),
        ));
    }
    Ok(expanded)
}

fn after_scheme(uri: &str) -> &str {
    uri.split_once("://").map_or("", |(_, rest)| rest)
}

/// Seconds as a `Duration`; `default` for a value no `Duration` can hold, so a config that
/// skipped validation still cannot panic here.
fn seconds_or(value: f64, default: f64) -> Duration {
    Duration::try_from_secs_f64(value)
        .or_else(|_| Duration::try_from_secs_f64(default))
        .unwrap_or(Duration::from_secs(1))
}

/// The scheme of `scheme://...` as RFC 3986 defines one; `None` for a local path (also
/// `C:/video.avi`).
pub(crate) fn uri_scheme(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// A stream from the network (anything with a scheme but `file`).
pub(crate) fn is_network_uri(uri: &str) -> bool {
    uri_scheme(uri).is_some_and(|s| !s.eq_ignore_ascii_case("file"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cx() -> ConfigContext {
        ConfigContext::new(Path::new("/etc/skynet/site.toml"))
    }

    fn parse(text: &str) -> Result<GstSourceConfig, toml::de::Error> {
        toml::from_str(text)
    }

    fn validated(text: &str) -> Result<GstSourceConfig, FieldError> {
        parse(text).expect("parses").validate(&cx())
    }

    #[test]
    fn defaults_and_a_full_table() {
        let c = validated(r#"uri = "rtsp://cam/x""#).unwrap();
        assert_eq!(
            (c.reconnect.initial_backoff_s, c.reconnect.max_backoff_s),
            (1.0, 30.0)
        );
        assert!(c.is_live());
        let p = c.retry_policy();
        assert_eq!(
            (p.initial, p.max, p.max_attempts, p.live),
            (Duration::from_secs(1), Duration::from_secs(30), None, true)
        );

        let c = validated(
            r#"
            uri = "media/v.avi"
            max_frames = 10
            start_at = "2026-01-01T08:00:00Z"
            reconnect = { initial_backoff_s = 0.5, max_backoff_s = 4, max_attempts = 7 }
            "#,
        )
        .unwrap();
        assert!(!c.is_live());
        assert_eq!(
            c.start_at.unwrap().to_rfc3339(),
            "2026-01-01T08:00:00+00:00"
        );
        // A TOML date-time literal works as well as a string; a local time without offset does not.
        let literal = validated("uri = \"v.avi\"\nstart_at = 2026-01-01T09:00:00+01:00").unwrap();
        assert_eq!(literal.start_at, c.start_at);
        assert!(parse("uri = \"v.avi\"\nstart_at = 2026-01-01T08:00:00").is_err());
        assert!(parse("uri = \"v.avi\"\nstart_at = \"yesterday\"").is_err());
        let p = c.retry_policy();
        assert_eq!(
            (p.initial, p.max, p.max_attempts, p.live),
            (
                Duration::from_millis(500),
                Duration::from_secs(4),
                Some(7),
                false
            )
        );
        // A file gives up after 3 failures unless told otherwise.
        assert_eq!(
            validated(r#"uri = "v.avi""#)
                .unwrap()
                .retry_policy()
                .max_attempts,
            Some(3)
        );
    }

    #[test]
    fn keyframes_only_takes_true_false_or_auto() {
        let keyframes =
            |text: &str| parse(&format!("uri = \"v.avi\"\n{text}")).map(|c| c.keyframes_only);
        assert_eq!(keyframes("").unwrap(), KeyframesOnly::Auto);
        assert_eq!(
            keyframes("keyframes_only = \"auto\"").unwrap(),
            KeyframesOnly::Auto
        );
        assert_eq!(
            keyframes("keyframes_only = true").unwrap(),
            KeyframesOnly::On
        );
        assert_eq!(
            keyframes("keyframes_only = false").unwrap(),
            KeyframesOnly::Off
        );
        for bad in ["\"yes\"", "\"true\"", "1", "[]"] {
            let e = keyframes(&format!("keyframes_only = {bad}")).unwrap_err();
            assert!(
                e.to_string().contains("true, false or \"auto\""),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_errors() {
        let e = parse("uri = \"v.avi\"\nfiel = 1").unwrap_err();
        assert!(e.to_string().contains("unknown field `fiel`"), "{e}");
        let e = parse("uri = \"v.avi\"\nreconnect = { initial_backoff = 1 }").unwrap_err();
        assert!(e.to_string().contains("initial_backoff"), "{e}");
        assert!(parse("max_frames = 3").is_err(), "uri is required");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let c = validated(r#"uri = "media/v.avi""#).unwrap();
        assert_eq!(c.uri.expose(), "/etc/skynet/media/v.avi");
        let c = validated(r#"uri = "/srv/v.avi""#).unwrap();
        assert_eq!(c.uri.expose(), "/srv/v.avi");
        let c = validated(r#"uri = "${SKYNET_DATA_DIR}/media/v.avi""#).unwrap();
        assert!(
            c.uri.ends_with("/media/v.avi") && !c.uri.contains("${"),
            "{}",
            c.uri
        );
        // URIs stay as they are.
        let c = validated(r#"uri = "file:///srv/v.avi""#).unwrap();
        assert_eq!(c.uri.expose(), "file:///srv/v.avi");
        let c = validated(r#"uri = "rtsp://10.0.0.5:554/s1""#).unwrap();
        assert_eq!(c.uri.expose(), "rtsp://10.0.0.5:554/s1");
    }

    #[test]
    fn ranges_are_checked_and_name_the_field() {
        let field = |text: &str| validated(text).unwrap_err().field;
        assert_eq!(field("uri = \"v.avi\"\nmax_frames = 0"), "max_frames");
        assert_eq!(
            field("uri = \"v.avi\"\nmax_frames = 1000000000001"),
            "max_frames"
        );
        assert!(validated("uri = \"v.avi\"\nmax_frames = 1000000000000").is_ok());
        assert_eq!(
            field("uri = \"v.avi\"\nreconnect = { initial_backoff_s = 0.001 }"),
            "reconnect.initial_backoff_s"
        );
        assert_eq!(
            field("uri = \"v.avi\"\nreconnect = { initial_backoff_s = nan }"),
            "reconnect.initial_backoff_s"
        );
        assert_eq!(
            field("uri = \"v.avi\"\nreconnect = { initial_backoff_s = 5, max_backoff_s = 2 }"),
            "reconnect.max_backoff_s"
        );
        assert_eq!(
            field("uri = \"v.avi\"\nreconnect = { max_backoff_s = 1e6 }"),
            "reconnect.max_backoff_s"
        );
        assert_eq!(field("uri = \"\""), "uri");
        assert_eq!(field("uri = \"rtsp:///x\""), "uri");
        assert_eq!(field("uri = \"${SKYNET_SURELY_UNSET_VAR}/v.avi\""), "uri");
        assert_eq!(
            field("uri = \"v.avi\"\nstart_at = 1900-01-01T00:00:00Z"),
            "start_at"
        );
        // Live sources are timed by the wall clock.
        assert_eq!(
            field("uri = \"rtsp://cam/x\"\nstart_at = \"2026-01-01T08:00:00Z\""),
            "start_at"
        );
        assert_eq!(
            field("uri = \"v.avi\"\nrealtime = true\nstart_at = 1900-01-01T00:00:00Z"),
            "start_at"
        );
    }

    #[test]
    fn passwords_never_appear_in_messages() {
        for uri in [
            "rtsp://admin:s3cret@/x",
            "rtsp://admin:s3cret@cam/${SKYNET_SURELY_UNSET_VAR}",
            "rtsp://admin:s3cret@cam/${UNCLOSED",
            "rtsp://admin:s3/cret@cam/x",
            // Parses as host `admin`, port 2024: the `@` is in the path.
            "rtsp://admin:2024/s3cret@10.0.0.5/stream",
            "rtsp://admin:12#s3cret@cam/x",
        ] {
            let e = GstSourceConfig::new(uri).validate(&cx()).unwrap_err();
            assert_eq!(e.field, "uri");
            assert!(
                !e.message.contains("s3cret") && !e.message.contains("s3/cret"),
                "{uri}: {e}"
            );
            assert!(!format!("{e:?}").contains("s3cret"));
        }
        let c = GstSourceConfig::new("rtsp://admin:s3cret@cam:554/x")
            .validate(&cx())
            .unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert_eq!(c.display_uri(), "rtsp://cam:554/x");
    }

    #[test]
    fn live_means_network_or_realtime() {
        let live = |uri: &str, realtime: bool| {
            let mut c = GstSourceConfig::new(uri);
            c.realtime = realtime;
            c.is_live()
        };
        assert!(live("rtsp://cam/x", false));
        assert!(live("https://cam/x.m3u8", false));
        assert!(!live("file:///v.avi", false));
        assert!(!live("/v.avi", false));
        assert!(!live("C:/v.avi", false));
        assert!(live("/v.avi", true));
    }

    #[test]
    fn camera_keys_are_checked_and_credentials_come_from_the_environment() {
        let field = |text: &str| validated(text).unwrap_err().field;
        // A live camera is never given up on, and never ends.
        assert_eq!(
            field("uri = \"rtsp://cam/x\"\nreconnect = { max_attempts = 3 }"),
            "reconnect.max_attempts"
        );
        assert_eq!(field("uri = \"rtsp://cam/x\"\nloop = true"), "loop");
        assert_eq!(
            field("uri = \"rtsp://cam/x\"\nlatency_ms = 20000"),
            "latency_ms"
        );
        assert_eq!(field("uri = \"rtsp://cam/x\"\ntimeout_s = 0"), "timeout_s");
        assert_eq!(
            field("uri = \"rtsp://cam/x\"\ndecoder = \"nv h264\""),
            "decoder"
        );
        assert_eq!(
            field("uri = \"rtsp://cam/x\"\ndecode_threads = 1000"),
            "decode_threads"
        );
        assert_eq!(
            field("uri = \"rtsp://cam/x\"\npassword = \"pw\""),
            "password"
        );
        assert!(parse("uri = \"rtsp://cam/x\"\ntransport = \"sctp\"").is_err());

        let c = validated(
            "uri = \"rtsp://cam/x\"\ntransport = \"udp\"\ndecoder = \"software\"\nlatency_ms = 0",
        )
        .unwrap();
        assert_eq!(
            (c.transport, c.decoder.clone(), c.latency_ms),
            (Transport::Udp, DecoderChoice::Software, 0)
        );
        assert_eq!(
            validated("uri = \"v.avi\"\ndecoder = \"nvh264dec\"\nloop = true")
                .unwrap()
                .decoder,
            DecoderChoice::Element("nvh264dec".into())
        );
        // A device has no host.
        assert!(validated("uri = \"v4l2:///dev/video0\"").unwrap().is_live());

        // `${VAR}` in user and password; an unset one is named, its value never shown.
        let home = std::env::var("HOME").unwrap();
        let c =
            validated("uri = \"rtsp://cam/x\"\nuser = \"viewer\"\npassword = \"${HOME}\"").unwrap();
        assert_eq!(c.password.as_ref().map(Secret::expose), Some(home.as_str()));
        assert!(!format!("{c:?}").contains(&home));
        let e = validated(
            "uri = \"rtsp://cam/x\"\nuser = \"viewer\"\npassword = \"${SKYNET_SURELY_UNSET_PW}\"",
        )
        .unwrap_err();
        assert_eq!(e.field, "password");
        assert!(e.message.contains("SKYNET_SURELY_UNSET_PW"), "{e}");
        let e =
            validated("uri = \"rtsp://cam/x\"\nuser = \"v\"\npassword = \"s3cret${\"").unwrap_err();
        assert!(!e.message.contains("s3cret"), "{e}");
    }
}
