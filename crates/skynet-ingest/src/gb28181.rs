//! `[[platforms]] kind = "gb28181"`: skynet as a GB/T 28181 upper platform.
//!
//! One [`Gb28181PlatformConfig`] is one SIP endpoint of skynet (its 20-digit `id`, `domain`,
//! `listen`): lower platforms (police, city platforms) REGISTER with it using `password`,
//! keep it informed with keepalives and answer its catalog queries (all in
//! [`skynet_gb28181::server`]). The endpoint is started once per platform, on the first
//! channel that needs it, on a thread of its own, and shared by that platform's channels.
//!
//! Each configured channel with a placement becomes a camera whose source
//! ([`ChannelSource`]) INVITEs the channel to a UDP port of `media_ports`, reassembles the
//! RTP/PS stream ([`MediaReceiver`]) and pipes the PS bytes into the RTSP camera's own
//! GStreamer path ([`GstSource`](crate::GstSource) reading `fd://N`: `mpegpsdemux`, the
//! same decoder choice, conversion, scaling, stall watchdog, health and metrics). A stream
//! that stops or stalls ends the run with an error, so the supervisor restarts it (a new
//! INVITE); the call is hung up (BYE) whenever a run ends. A platform that goes offline
//! (keepalive timeout) ends its channels' streams: the cameras then reconnect until it is
//! back, and go offline (the `camera_offline` incident) after their `offline_after_s`.

use std::collections::{HashMap, HashSet};
use std::io::Read as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::{
    Component, ComponentHealth, ComponentState, ConfigContext, DeviceId, Erase, Family, FieldError,
    OwnerKind, Secret, Shutdown, Watermark,
};
use skynet_gb28181::invite::MediaTransport;
use skynet_gb28181::manscdp::{self, ItemStatus};
use skynet_gb28181::registrar::{RegistrarConfig, RegistrarEvent};
use skynet_gb28181::rtp::{MediaReceiver, StreamDeframer};
use skynet_gb28181::server::{Command, Core, CoreConfig, Server, ServerEvent};
use skynet_gb28181::sip::Limits;

use crate::config::ReconnectConfig;
use crate::{
    BuildSource, FrameOutput, FrameSource, GstSourceConfig, IngestError, RetryPolicy,
    SourceBuildContext, SourceExit, SourceStats,
};

/// The family of `[[platforms]]` kinds: video platforms skynet takes cameras from.
pub struct PlatformFamily;

impl Family for PlatformFamily {
    const NAME: &'static str = "platform";
    type Context<'a> = ConfigContext;
    type Validated = dyn BuildPlatform;
}

impl<V: BuildPlatform + 'static> Erase<V> for PlatformFamily {
    fn erase(validated: V) -> Arc<dyn BuildPlatform> {
        Arc::new(validated)
    }
}

/// One configured channel of a platform, as the config gives it.
#[derive(Debug, Clone)]
pub struct ChannelEntry {
    /// The 20-digit channel id (the camera's id when it is analysed).
    pub id: String,
    /// The camera keys of a `[[platforms.channels]]` table (`grid`, `location`, `fps`,
    /// `rules`, ...) without `id`; `None` for a channel given by its id alone.
    pub camera: Option<toml::Table>,
}

impl ChannelEntry {
    /// Analysed: placed by a `grid` or a `location`.
    pub fn is_analysed(&self) -> bool {
        self.camera
            .as_ref()
            .is_some_and(|t| t.contains_key("grid") || t.contains_key("location"))
    }
}

/// A validated platform of any kind.
pub trait BuildPlatform: std::fmt::Debug + Send + Sync {
    /// skynet's id on the platform (unique among `[[platforms]]`).
    fn id(&self) -> &str;
    fn owner(&self) -> OwnerKind;
    /// Where it listens, for listings.
    fn listen(&self) -> String;
    /// `true`: every channel of the catalog is accepted (`channels = "all"`).
    fn all_channels(&self) -> bool;
    /// The configured channels.
    fn channels(&self) -> &[ChannelEntry];
    /// The source of an analysed channel.
    fn channel_source(&self, channel: &str) -> Arc<dyn BuildSource>;
    /// Starts the platform's endpoint (once; later calls return at once). The channels'
    /// sources start it too, on their first run.
    fn start(&self) -> Result<(), String>;
    /// Where the platform reports its state (`/readyz`, the console): the endpoint's start
    /// and its lower platforms going online and offline. Call before [`Self::start`].
    fn attach_health(&self, _health: ComponentHealth) {}
    /// What the platform knows now, for the console.
    fn live(&self) -> PlatformLive {
        PlatformLive::default()
    }
    /// The camera channels of the lower platforms' latest catalogs, by channel id.
    fn catalog(&self) -> Vec<CatalogChannel> {
        Vec::new()
    }
    /// Goes up whenever a catalog brings a change to [`Self::catalog`]: a cheap check of
    /// whether to read it again.
    fn catalog_generation(&self) -> u64 {
        0
    }
    /// Whether a channel may be placed by its catalog position: one the config wants and
    /// does not place (`channels = "all"`, or one listed without `grid` or `location`).
    fn places_by_catalog(&self) -> bool {
        self.max_catalog_cameras() > 0
            && (self.all_channels() || self.channels().iter().any(|c| !c.is_analysed()))
    }
    /// Whether `channel` may be placed by its catalog position.
    fn may_place(&self, channel: &str) -> bool {
        self.max_catalog_cameras() > 0
            && match self.channels().iter().find(|c| c.id == channel) {
                Some(configured) => !configured.is_analysed(),
                None => self.all_channels() && manscdp::is_gb_id(channel),
            }
    }
    /// At most this many channels are placed by their catalog position.
    fn max_catalog_cameras(&self) -> usize {
        0
    }
}

/// One camera channel of a lower platform's latest catalog.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CatalogChannel {
    /// The 20-digit channel id.
    pub id: String,
    /// The catalog's `Name`.
    pub name: String,
    /// The lower platform that listed it.
    pub lower: String,
    /// `online`, `offline` or `unknown`, as the catalog says.
    pub status: &'static str,
    /// The catalog's `Longitude`/`Latitude` (WGS 84 degrees); `None` when absent or 0.
    pub longitude: Option<f64>,
    pub latitude: Option<f64>,
    /// The config wants it: `channels = "all"`, or listed.
    pub wanted: bool,
}

/// A platform's live figures, for the console's Sources view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlatformLive {
    /// The lower platforms registered and online now.
    pub lower_online: Vec<String>,
    /// Camera channels in the lower platforms' latest catalogs.
    pub channels_listed: usize,
}

/// The health table's name of a platform: `platform <id>` (kind `platform`).
pub fn health_name(id: &str) -> String {
    format!("platform {id}")
}

/// The camera keys a `[[platforms.channels]]` table may hold besides `id` (the owner is
/// the platform's; a patrol is not offered).
pub const CHANNEL_CAMERA_KEYS: [&str; 12] = [
    "grid",
    "location",
    "zones",
    "rules",
    "fps",
    "offline_after_s",
    "motion",
    "privacy_masks",
    "classes",
    "inference_interval",
    "tracker",
    "clips",
];

/// `channels`: `"all"`, or a list whose entries are channel ids or `{ id, grid, ... }` tables
/// (`[[platforms.channels]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ChannelsValue {
    All(String),
    List(Vec<ChannelValue>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ChannelValue {
    Id(String),
    Table(toml::Table),
}

/// A `[[platforms]]` table with `kind = "gb28181"`. `Debug` never shows the password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gb28181PlatformConfig {
    /// skynet's 20-digit SIP id.
    id: String,
    /// The SIP domain (digest realm); by custom the first 10 digits of `id`.
    domain: String,
    /// `host:port` of the SIP endpoint, UDP and TCP.
    listen: String,
    /// The password lower platforms register with; `${VAR}` expanded.
    password: Secret,
    owner: OwnerKind,
    channels: ChannelsValue,
    /// A lower platform silent this long goes offline. Default 180.
    #[serde(default = "default_keepalive_timeout")]
    keepalive_timeout_s: f64,
    /// The UDP ports the media is received on, `"FIRST-LAST"`.
    media_ports: String,
    /// The address lower platforms send media to; default: the `listen` host (required
    /// when that is `0.0.0.0` or `::`).
    #[serde(default)]
    media_ip: Option<String>,
    /// How the media comes: `"udp"` (default), `"tcp-passive"` (skynet listens on the media
    /// port, the lower platform connects) or `"tcp-active"` (skynet connects to the address
    /// of the 200 OK's SDP); over TCP the RTP is framed as RFC 4571.
    #[serde(default)]
    media_transport: MediaTransportKey,
    /// No frame for this long restarts a channel (a new INVITE). Default 10.
    #[serde(default = "default_stall_timeout")]
    stall_timeout_s: f64,
    /// As for an RTSP camera: the restart backoff of a channel.
    #[serde(default)]
    reconnect: ReconnectConfig,
    /// At most this many channels the config does not place are placed (and analysed) by
    /// their catalog position, in the order the catalogs bring them; those beyond are
    /// listed, not analysed; 0 places none. Default 16: about what a 2-core node analyses
    /// at 5 fps, where a city platform's catalog may hold thousands.
    #[serde(default = "default_max_catalog_cameras")]
    max_catalog_cameras: usize,
}

fn default_max_catalog_cameras() -> usize {
    16
}

/// `media_transport`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum MediaTransportKey {
    #[default]
    Udp,
    TcpPassive,
    TcpActive,
}

impl MediaTransportKey {
    fn sdp(self) -> MediaTransport {
        match self {
            Self::Udp => MediaTransport::Udp,
            Self::TcpPassive => MediaTransport::TcpPassive,
            Self::TcpActive => MediaTransport::TcpActive,
        }
    }
}

fn default_keepalive_timeout() -> f64 {
    180.0
}

fn default_stall_timeout() -> f64 {
    10.0
}

/// What validation found: the parsed keys and the runtime they share.
#[derive(Debug)]
struct Validated {
    listen: SocketAddr,
    media_ip: IpAddr,
    media_ports: (u16, u16),
    all: bool,
    channels: Vec<ChannelEntry>,
    keepalive_timeout: Duration,
    /// The running endpoint, started by the first channel that runs.
    /// (A failed start is tried again by the next caller.)
    runtime: Mutex<Option<Arc<Runtime>>>,
    next_port: AtomicU32,
    /// Where the platform's state is reported (set by the pipeline).
    health: Arc<OnceLock<ComponentHealth>>,
}

/// The platform, validated: what `build` and the listings use.
#[derive(Debug, Clone)]
pub struct Gb28181Platform {
    config: Gb28181PlatformConfig,
    inner: Arc<Validated>,
}

fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = s.split_once('-')?;
    let a: u16 = a.trim().parse().ok()?;
    let b: u16 = b.trim().parse().ok()?;
    (a > 0 && a <= b).then_some((a, b))
}

impl Component<PlatformFamily> for Gb28181PlatformConfig {
    const KIND: &'static str = "gb28181";
    const EXAMPLE: &'static str = "id = \"34020000002000000001\"\ndomain = \"3402000000\"\nlisten = \"127.0.0.1:5060\"\npassword = \"${SKYNET_GB_PASSWORD:-secret}\"\nowner = \"police\"\nchannels = \"all\"\nmedia_ports = \"30000-30100\"";
    type Validated = Gb28181Platform;

    /// Pure: parses and checks the keys, expands `${VAR}` in `password`; binds nothing.
    fn validate(mut self, cx: &ConfigContext) -> Result<Gb28181Platform, FieldError> {
        if !manscdp::is_gb_id(&self.id) {
            return Err(FieldError::new(
                "id",
                format!("`id` must be a 20-digit GB/T 28181 id, got `{}`", self.id),
            ));
        }
        if self.domain.is_empty()
            || self.domain.len() > 64
            || !self
                .domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'))
        {
            return Err(FieldError::new(
                "domain",
                "`domain` must be 1 to 64 letters, digits, `.` or `-` (by custom the first 10 digits of `id`)",
            ));
        }
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            FieldError::new(
                "listen",
                format!(
                    "`listen` must be `host:port` with an IP address, got `{}`",
                    self.listen
                ),
            )
        })?;
        let password = cx.expand("password", self.password.expose()).map_err(|e| {
            FieldError::new("password", e.message.replace(self.password.expose(), "…"))
        })?;
        if password.is_empty() {
            return Err(FieldError::new("password", "`password` is empty"));
        }
        self.password = password.into();
        check_range(
            "keepalive_timeout_s",
            self.keepalive_timeout_s,
            5.0,
            86_400.0,
        )?;
        check_range("stall_timeout_s", self.stall_timeout_s, 0.5, 3600.0)?;
        let media_ports = parse_port_range(&self.media_ports).ok_or_else(|| {
            FieldError::new(
                "media_ports",
                format!(
                    "`media_ports` must be `FIRST-LAST`, two ports 1 to 65535 with FIRST <= LAST (e.g. \"30000-30100\"), got `{}`",
                    self.media_ports
                ),
            )
        })?;
        if (media_ports.0..=media_ports.1).contains(&listen.port()) {
            return Err(FieldError::new(
                "media_ports",
                format!("`media_ports` must not hold the SIP port {}", listen.port()),
            ));
        }
        let media_ip = match &self.media_ip {
            Some(ip) => ip.parse::<IpAddr>().map_err(|_| {
                FieldError::new(
                    "media_ip",
                    format!("`media_ip` must be an IP address, got `{ip}`"),
                )
            })?,
            None if listen.ip().is_unspecified() => {
                return Err(FieldError::new(
                    "media_ip",
                    "`listen` is on every address: give `media_ip`, the address lower platforms send the media to",
                ));
            }
            None => listen.ip(),
        };
        let (all, entries) = match &self.channels {
            ChannelsValue::All(s) if s == "all" => (true, Vec::new()),
            ChannelsValue::All(s) => {
                return Err(FieldError::new(
                    "channels",
                    format!(
                        "`channels` must be \"all\" or a list of channel ids or [[platforms.channels]] tables, got `{s}`"
                    ),
                ));
            }
            ChannelsValue::List(list) => (false, list.clone()),
        };
        let mut channels: Vec<ChannelEntry> = Vec::with_capacity(entries.len());
        for (n, entry) in entries.into_iter().enumerate() {
            let field = format!("channels[{n}]");
            let entry = match entry {
                ChannelValue::Id(id) => ChannelEntry { id, camera: None },
                ChannelValue::Table(mut table) => {
                    let id = match table.remove("id") {
                        Some(toml::Value::String(id)) => id,
                        _ => {
                            return Err(FieldError::new(
                                format!("{field}.id"),
                                "a channel needs its 20-digit `id`",
                            ));
                        }
                    };
                    if let Some(key) = table
                        .keys()
                        .find(|k| !CHANNEL_CAMERA_KEYS.contains(&k.as_str()))
                    {
                        return Err(FieldError::new(
                            format!("{field}.{key}"),
                            format!(
                                "unknown key `{key}` in a channel; a channel takes `id` and the camera keys {}",
                                CHANNEL_CAMERA_KEYS.join(", ")
                            ),
                        ));
                    }
                    ChannelEntry {
                        id,
                        camera: Some(table),
                    }
                }
            };
            if !manscdp::is_gb_id(&entry.id) {
                return Err(FieldError::new(
                    format!("{field}.id"),
                    format!("a channel id must have 20 digits, got `{}`", entry.id),
                ));
            }
            if channels.iter().any(|c| c.id == entry.id) {
                return Err(FieldError::new(
                    format!("{field}.id"),
                    format!("channel `{}` is listed twice", entry.id),
                ));
            }
            channels.push(entry);
        }
        let inner = Arc::new(Validated {
            listen,
            media_ip,
            media_ports,
            all,
            channels,
            keepalive_timeout: Duration::from_secs_f64(self.keepalive_timeout_s),
            runtime: Mutex::new(None),
            next_port: AtomicU32::new(0),
            health: Arc::default(),
        });
        Ok(Gb28181Platform {
            config: self,
            inner,
        })
    }
}

impl BuildPlatform for Gb28181Platform {
    fn id(&self) -> &str {
        &self.config.id
    }

    fn owner(&self) -> OwnerKind {
        self.config.owner
    }

    fn listen(&self) -> String {
        self.inner.listen.to_string()
    }

    fn all_channels(&self) -> bool {
        self.inner.all
    }

    fn max_catalog_cameras(&self) -> usize {
        self.config.max_catalog_cameras
    }

    fn channels(&self) -> &[ChannelEntry] {
        &self.inner.channels
    }

    fn start(&self) -> Result<(), String> {
        self.runtime().map(|_| ())
    }

    fn attach_health(&self, health: ComponentHealth) {
        let _ = self.inner.health.set(health);
    }

    fn live(&self) -> PlatformLive {
        let runtime = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        runtime.map_or_else(PlatformLive::default, |rt| rt.sink.live())
    }

    fn catalog(&self) -> Vec<CatalogChannel> {
        self.running_sink()
            .map_or_else(Vec::new, |sink| sink.catalog())
    }

    fn catalog_generation(&self) -> u64 {
        self.running_sink()
            .map_or(0, |sink| sink.generation.load(Ordering::Acquire))
    }

    fn channel_source(&self, channel: &str) -> Arc<dyn BuildSource> {
        Arc::new(ChannelConfig {
            platform: self.clone(),
            channel: channel.to_string(),
        })
    }
}

impl Gb28181Platform {
    /// The running endpoint's state, if it has started (never starts it).
    fn running_sink(&self) -> Option<Arc<EventSink>> {
        self.inner
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|rt| Arc::clone(&rt.sink))
    }

    /// The running endpoint, started on the first call.
    fn runtime(&self) -> Result<Arc<Runtime>, String> {
        let mut slot = self
            .inner
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(rt) = slot.as_ref() {
            return Ok(Arc::clone(rt));
        }
        let rt = match Runtime::start(&self.config, &self.inner) {
            Ok(rt) => Arc::new(rt),
            Err(e) => {
                if let Some(health) = self.inner.health.get() {
                    health.retrying(format!(
                        "endpoint failed to bind {}: {e}",
                        self.inner.listen
                    ));
                }
                return Err(e);
            }
        };
        rt.sink.report_health();
        *slot = Some(Arc::clone(&rt));
        Ok(rt)
    }

    /// A socket on a free port of `media_ports`, tried in turn from where the last left: UDP,
    /// or a TCP listener for `tcp-passive` (and, for `tcp-active`, the port the offer names).
    fn media_socket(&self) -> Result<MediaIn, String> {
        let (first, last) = self.inner.media_ports;
        let count = u32::from(last - first) + 1;
        let mut last_error = None;
        for _ in 0..count {
            let k = self.inner.next_port.fetch_add(1, Ordering::Relaxed) % count;
            let Ok(port) = u16::try_from(u32::from(first) + k) else {
                continue;
            };
            // On the SIP endpoint's address: `media_ip` is only what the SDP offers (behind
            // NAT it is no address of this host).
            let at = SocketAddr::new(self.inner.listen.ip(), port);
            let bound = match self.config.media_transport {
                MediaTransportKey::Udp => UdpSocket::bind(at).map(MediaIn::Udp),
                MediaTransportKey::TcpPassive => TcpListener::bind(at).map(MediaIn::Listen),
                MediaTransportKey::TcpActive => TcpListener::bind(at).map(MediaIn::Active),
            };
            match bound {
                Ok(socket) => return Ok(socket),
                Err(e) => last_error = Some(e),
            }
        }
        Err(format!(
            "no free port in media_ports {first}-{last} on {}{}",
            self.inner.listen.ip(),
            last_error.map_or(String::new(), |e| format!(" (last: {e})"))
        ))
    }
}

/// Where a call's media comes in.
enum MediaIn {
    Udp(UdpSocket),
    /// `tcp-passive`: the lower platform connects here.
    Listen(TcpListener),
    /// `tcp-active`: the port the offer names (held so that no other call takes it);
    /// skynet connects to the answer's address.
    Active(TcpListener),
    /// A TCP connection and the RFC 4571 deframer of its bytes.
    Tcp(TcpStream, StreamDeframer),
}

impl MediaIn {
    fn local_port(&self) -> std::io::Result<u16> {
        match self {
            Self::Udp(s) => s.local_addr(),
            Self::Listen(l) | Self::Active(l) => l.local_addr(),
            Self::Tcp(s, _) => s.local_addr(),
        }
        .map(|a| a.port())
    }
}

/// How long a media socket blocks before the receiver checks whether its call is over.
const MEDIA_POLL: Duration = Duration::from_millis(200);
/// While media flows, a call's receiver checks whether its call has ended every this many
/// reads (about a second of a 1080p stream).
const ENDED_CHECK_EVERY: u32 = 256;

/// What one wait on a call's media gave.
enum Received {
    /// RTP packets (one datagram, or those a TCP read completed).
    Packets(Vec<Vec<u8>>),
    /// Nothing yet.
    Nothing,
    /// The media has ended (the TCP connection closed, or a socket error): why.
    Closed(String),
}

impl MediaIn {
    /// Waits up to [`MEDIA_POLL`] for media. `peer` is where `tcp-active` connects.
    fn receive(&mut self, buf: &mut [u8], peer: Option<SocketAddr>) -> Received {
        let timeout = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        };
        match self {
            Self::Udp(socket) => match socket.recv(buf) {
                Ok(n) => Received::Packets(vec![buf[..n].to_vec()]),
                Err(e) if timeout(&e) => Received::Nothing,
                Err(e) => Received::Closed(format!("UDP socket: {e}")),
            },
            Self::Listen(listener) => match listener.accept() {
                Ok((stream, from)) => {
                    tracing::debug!(from = %from, "GB/T 28181 media connection accepted");
                    self.connected(stream)
                }
                Err(e) if timeout(&e) => {
                    std::thread::sleep(Duration::from_millis(20));
                    Received::Nothing
                }
                Err(e) => Received::Closed(format!("accepting the media connection: {e}")),
            },
            Self::Active(_) => {
                let Some(peer) = peer else {
                    return Received::Closed("the answer named no address to connect to".into());
                };
                match TcpStream::connect_timeout(&peer, MEDIA_POLL) {
                    Ok(stream) => self.connected(stream),
                    Err(_) => {
                        std::thread::sleep(MEDIA_POLL);
                        Received::Nothing
                    }
                }
            }
            Self::Tcp(stream, deframer) => match stream.read(buf) {
                Ok(0) => Received::Closed("the media connection closed".into()),
                Ok(n) => {
                    if let Err(e) = deframer.push(&buf[..n]) {
                        return Received::Closed(format!("bad RFC 4571 framing: {e}"));
                    }
                    Received::Packets(std::iter::from_fn(|| deframer.next_packet()).collect())
                }
                Err(e) if timeout(&e) => Received::Nothing,
                Err(e) => Received::Closed(format!("media connection: {e}")),
            },
        }
    }

    fn connected(&mut self, stream: TcpStream) -> Received {
        // (An accepted stream must block, with the timeout, whatever its listener does.)
        if stream.set_nonblocking(false).is_err()
            || stream.set_read_timeout(Some(MEDIA_POLL)).is_err()
        {
            return Received::Closed("could not set the media connection's timeout".into());
        }
        *self = Self::Tcp(stream, StreamDeframer::default());
        Received::Nothing
    }

    /// Makes the socket wait at most [`MEDIA_POLL`].
    fn set_poll(&self) -> std::io::Result<()> {
        match self {
            Self::Udp(s) => s.set_read_timeout(Some(MEDIA_POLL)),
            Self::Listen(l) => l.set_nonblocking(true),
            Self::Active(_) => Ok(()),
            Self::Tcp(s, _) => s.set_read_timeout(Some(MEDIA_POLL)),
        }
    }
}

/// How an INVITE ended.
#[derive(Debug, Clone)]
enum Outcome {
    Playing {
        ssrc: Option<u32>,
        peer: Option<SocketAddr>,
    },
    Failed(u16),
}

/// What the endpoint knows, shared with the sources.
#[derive(Default)]
struct State {
    /// The lower platforms online.
    online: HashSet<String>,
    /// Each catalog channel's lower platform.
    channel_platform: HashMap<String, String>,
    /// INVITE outcomes by Call-ID, until the source takes them.
    outcomes: HashMap<String, Outcome>,
    /// Calls that ended (the lower platform's BYE, or its platform went offline).
    ended: HashSet<String>,
    /// The calls in progress: Call-ID to lower platform.
    calls: HashMap<String, String>,
    /// The lower platforms that went offline and why (until they are back).
    offline: HashMap<String, String>,
    /// Camera channels in each lower platform's latest catalog, by lower platform (kept
    /// while it is offline; its next full catalog replaces them).
    catalogs: HashMap<String, Vec<CatalogChannel>>,
}

/// A running endpoint: commands in, the state its events keep. Dropping it stops the
/// endpoint's thread.
struct Runtime {
    commands: tokio::sync::mpsc::Sender<Command>,
    sink: Arc<EventSink>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn status_label(status: ItemStatus) -> &'static str {
    match status {
        ItemStatus::On => "online",
        ItemStatus::Off => "offline",
        ItemStatus::Unknown => "unknown",
    }
}

impl Runtime {
    fn start(config: &Gb28181PlatformConfig, v: &Validated) -> Result<Self, String> {
        let mut registrar = RegistrarConfig::new(config.domain.clone(), config.password.expose());
        registrar.keepalive_timeout = v.keepalive_timeout;
        let core = Core::new(CoreConfig {
            id: config.id.clone(),
            domain: config.domain.clone(),
            registrar,
            limits: Limits::default(),
            xml_limits: manscdp::Limits::default(),
            catalog_interval: Duration::from_secs(600),
        });
        let (cmd_tx, cmd_rx) = tokio::sync::mpsc::channel(64);
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel(256);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("GB/T 28181 platform {}: {e}", config.id))?;
        let server = runtime
            .block_on(Server::bind(v.listen, core))
            .map_err(|e| {
                format!(
                    "GB/T 28181 platform {}: cannot listen on {}: {e}",
                    config.id, v.listen
                )
            })?;
        tracing::info!(platform = %config.id, listen = %v.listen, "GB/T 28181 platform listening");
        let sink = Arc::new(EventSink {
            health: Arc::clone(&v.health),
            expects_lower: v.channels.iter().any(ChannelEntry::is_analysed),
            ..EventSink::default()
        });
        let stopped = Arc::clone(&v.health);
        let wiring = Wiring {
            platform: config.id.clone(),
            all: v.all,
            configured: v.channels.iter().map(|c| c.id.clone()).collect(),
        };
        let events = Arc::clone(&sink);
        std::thread::Builder::new()
            .name(format!("gb28181-{}", config.id))
            .spawn(move || {
                runtime.block_on(async move {
                    let handler = tokio::spawn(async move {
                        while let Some(ev) = ev_rx.recv().await {
                            events.handle(&wiring, ev);
                        }
                    });
                    if let Err(e) = server.run(ev_tx, cmd_rx, shutdown_rx).await {
                        tracing::error!(error = %e, "GB/T 28181 endpoint stopped");
                        if let Some(health) = stopped.get() {
                            health.down(format!("endpoint stopped: {e}"));
                        }
                    }
                    handler.abort();
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(Runtime {
            commands: cmd_tx,
            sink,
            shutdown: shutdown_tx,
        })
    }
}

/// Which channels the platform wants.
struct Wiring {
    platform: String,
    all: bool,
    configured: HashSet<String>,
}

/// The endpoint's events turned into state and metrics; the sources read the state.
#[derive(Default)]
struct EventSink {
    state: Mutex<State>,
    changed: Condvar,
    /// The platform's health entry, when the pipeline attached one.
    health: Arc<OnceLock<ComponentHealth>>,
    /// An analysed channel is configured: a lower platform is expected to register.
    expects_lower: bool,
    /// Goes up whenever a catalog changes [`Self::catalog`].
    generation: AtomicU64,
}

fn offline_reason(reason: &skynet_gb28181::registrar::OfflineReason) -> &'static str {
    use skynet_gb28181::registrar::OfflineReason;
    match reason {
        OfflineReason::Unregistered => "unregistered",
        OfflineReason::Expired => "registration expired",
        OfflineReason::KeepaliveTimeout => "keepalive timeout",
    }
}

impl EventSink {
    fn live(&self) -> PlatformLive {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut lower_online: Vec<String> = st.online.iter().cloned().collect();
        lower_online.sort();
        PlatformLive {
            lower_online,
            channels_listed: st.catalogs.values().map(Vec::len).sum(),
        }
    }

    /// Every lower platform's latest catalog channels, sorted by channel id (then lower
    /// platform, for a channel two lower platforms list).
    fn catalog(&self) -> Vec<CatalogChannel> {
        let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<CatalogChannel> = st.catalogs.values().flatten().cloned().collect();
        drop(st);
        all.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.lower.cmp(&b.lower)));
        all
    }

    /// The endpoint runs: the platform's state from its lower platforms. Up while every
    /// lower platform seen is online; retrying while one is offline; starting (not ready,
    /// as a camera that has not connected) while none has registered yet and an analysed
    /// channel waits for one, else up.
    fn report_health(&self) {
        let Some(health) = self.health.get() else {
            return;
        };
        let (state, reason, online) = {
            let st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let mut offline: Vec<(&String, &String)> = st.offline.iter().collect();
            offline.sort();
            let (state, reason) = match offline.first() {
                Some((id, why)) => (
                    ComponentState::Retrying,
                    Some(format!("lower platform {id} offline: {why}")),
                ),
                None if st.online.is_empty() && self.expects_lower => (
                    ComponentState::Starting,
                    Some("no lower platform registered yet".to_string()),
                ),
                None => (ComponentState::Up, None),
            };
            (state, reason, st.online.len())
        };
        let current = health.status();
        if current.as_ref().map(|c| (c.state, c.reason.as_ref())) != Some((state, reason.as_ref()))
        {
            health.set(state, reason);
        }
        let detail = format!("{online} lower platform(s) online");
        if current.and_then(|c| c.detail).as_deref() != Some(detail.as_str()) {
            health.describe(Some(&detail), None);
        }
    }
}

impl EventSink {
    fn handle(&self, w: &Wiring, ev: ServerEvent) {
        let registrar = matches!(ev, ServerEvent::Registrar(_));
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match ev {
            ServerEvent::Registrar(RegistrarEvent::Online { id }) => {
                tracing::info!(platform = %w.platform, lower = %id, "GB/T 28181 lower platform online");
                metrics::gauge!("skynet_platform_up", "platform" => id.clone()).set(1.0);
                st.offline.remove(&id);
                st.online.insert(id);
            }
            ServerEvent::Registrar(RegistrarEvent::Refreshed { .. }) => {}
            ServerEvent::Registrar(RegistrarEvent::Offline { id, reason }) => {
                tracing::warn!(platform = %w.platform, lower = %id, reason = ?reason, "GB/T 28181 lower platform offline");
                metrics::gauge!("skynet_platform_up", "platform" => id.clone()).set(0.0);
                st.online.remove(&id);
                st.offline
                    .insert(id.clone(), offline_reason(&reason).to_string());
                let gone: Vec<String> = st
                    .calls
                    .iter()
                    .filter(|(_, p)| **p == id)
                    .map(|(c, _)| c.clone())
                    .collect();
                for call in gone {
                    st.ended.insert(call);
                }
            }
            ServerEvent::Catalog { platform, catalog } => {
                let mut counts: HashMap<&'static str, u64> = HashMap::new();
                let mut channels: Vec<CatalogChannel> = Vec::new();
                for item in catalog.cameras() {
                    *counts.entry(status_label(item.status)).or_default() += 1;
                    let wanted = w.all || w.configured.contains(&item.device_id);
                    let analysed = w.configured.contains(&item.device_id);
                    // (Under the state's lock, for each of possibly thousands of items: the
                    // count below is logged at info.)
                    tracing::debug!(
                        platform = %w.platform,
                        lower = %platform,
                        channel = %item.device_id,
                        status = status_label(item.status),
                        wanted,
                        analysed,
                        "GB/T 28181 catalog channel"
                    );
                    if wanted {
                        st.channel_platform
                            .insert(item.device_id.clone(), platform.clone());
                    }
                    channels.push(catalog_channel(item, &platform, wanted));
                }
                channels.sort_by(|a, b| a.id.cmp(&b.id));
                channels.dedup_by(|a, b| a.id == b.id);
                if st.catalogs.get(&platform) != Some(&channels) {
                    st.catalogs.insert(platform.clone(), channels);
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                for status in ["online", "offline", "unknown"] {
                    metrics::gauge!("skynet_platform_channels", "platform" => platform.clone(), "status" => status)
                        .set(counts.get(status).copied().unwrap_or(0) as f64);
                }
            }
            ServerEvent::CatalogIncomplete {
                platform,
                got,
                sum_num,
            } => {
                tracing::warn!(lower = %platform, got, sum_num, "GB/T 28181 catalog incomplete");
            }
            ServerEvent::Request { method, code } => {
                metrics::counter!("skynet_sip_requests_total", "method" => method, "code" => code.to_string())
                    .increment(1);
            }
            ServerEvent::Refused { reason } => {
                tracing::debug!(reason, "SIP message refused");
                metrics::counter!("skynet_sip_requests_total", "method" => "unknown", "code" => "0")
                    .increment(1);
                // Why, by a fixed set of reasons (a stranger's message, a malformed one, a
                // connection over the limit, ...).
                metrics::counter!("skynet_sip_refused_total", "reason" => reason).increment(1);
            }
            ServerEvent::Playing {
                call_id, answer, ..
            } => {
                let peer = answer
                    .ip
                    .parse::<IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, answer.port));
                st.outcomes.insert(
                    call_id,
                    Outcome::Playing {
                        ssrc: answer.ssrc,
                        peer,
                    },
                );
            }
            ServerEvent::InviteFailed { call_id, code, .. } => {
                st.outcomes.insert(call_id, Outcome::Failed(code));
            }
            ServerEvent::Stopped { call_id, .. } => {
                st.ended.insert(call_id);
            }
        }
        drop(st);
        self.changed.notify_all();
        if registrar {
            self.report_health();
        }
    }
}

/// A catalog's camera item as [`BuildPlatform::catalog`] lists it.
fn catalog_channel(item: &manscdp::CatalogItem, lower: &str, wanted: bool) -> CatalogChannel {
    // (0 is how many platforms write "no position".)
    let degrees = |v: Option<f64>| v.filter(|d| d.is_finite() && *d != 0.0);
    CatalogChannel {
        id: item.device_id.clone(),
        name: item.name.clone(),
        lower: lower.to_string(),
        status: status_label(item.status),
        longitude: degrees(item.longitude),
        latitude: degrees(item.latitude),
        wanted,
    }
}

/// A channel's source config: the platform and the channel.
#[derive(Debug, Clone)]
struct ChannelConfig {
    platform: Gb28181Platform,
    channel: String,
}

impl BuildSource for ChannelConfig {
    fn is_live(&self) -> bool {
        true
    }

    fn display_uri(&self) -> String {
        format!("gb28181://{}/{}", self.platform.config.id, self.channel)
    }

    fn retry_policy(&self) -> RetryPolicy {
        let r = &self.platform.config.reconnect;
        let initial =
            Duration::try_from_secs_f64(r.initial_backoff_s).unwrap_or(Duration::from_secs(1));
        RetryPolicy {
            initial,
            max: Duration::try_from_secs_f64(r.max_backoff_s)
                .unwrap_or(Duration::from_secs(30))
                .max(initial),
            max_attempts: None,
            live: true,
        }
    }

    fn watermark(&self) -> Watermark {
        Watermark::new(true)
    }

    fn build(&self, cx: &SourceBuildContext<'_>) -> Result<Box<dyn FrameSource>, IngestError> {
        Ok(Box::new(ChannelSource {
            camera: cx.camera.clone(),
            delivery: cx.delivery.clone(),
            config: self.clone(),
            stats: SourceStats::default(),
        }))
    }

    fn open_timeout(&self) -> Duration {
        Duration::from_secs(15)
    }
}

/// A running channel: one INVITE per run.
struct ChannelSource {
    camera: DeviceId,
    delivery: crate::FrameDelivery,
    config: ChannelConfig,
    stats: SourceStats,
}

/// How long an INVITE may take (its transaction gives up after 32 s).
const INVITE_TIMEOUT: Duration = Duration::from_secs(33);

impl ChannelSource {
    fn start_error(&self, reason: impl Into<String>) -> IngestError {
        IngestError::Start {
            camera: self.camera.clone(),
            uri: self.config.display_uri(),
            reason: reason.into(),
        }
    }

    /// INVITEs the channel to `port`: its Call-ID, the SSRC the answer names and the
    /// answer's media address.
    fn invite(
        &self,
        rt: &Runtime,
        sink: &EventSink,
        port: u16,
        stop: &Shutdown,
    ) -> Result<(String, Option<u32>, Option<SocketAddr>), IngestError> {
        let lower = sink
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .channel_platform
            .get(&self.config.channel)
            .cloned()
            .ok_or_else(|| {
                self.start_error("the channel is in no registered platform's catalog (yet)")
            })?;
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        rt.commands
            .blocking_send(Command::Invite {
                platform: lower.clone(),
                channel: self.config.channel.clone(),
                media_ip: self.config.platform.inner.media_ip.to_string(),
                media_port: port,
                media: self.config.platform.config.media_transport.sdp(),
                reply: reply_tx,
            })
            .map_err(|_| self.start_error("the platform's endpoint has stopped"))?;
        let call_id =
            reply_rx.blocking_recv().ok().flatten().ok_or_else(|| {
                self.start_error(format!("lower platform {lower} is not registered"))
            })?;
        let deadline = Instant::now() + INVITE_TIMEOUT;
        let mut st = sink.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = st.outcomes.remove(&call_id) {
                return match outcome {
                    Outcome::Playing { ssrc, peer } => {
                        st.calls.insert(call_id.clone(), lower);
                        Ok((call_id, ssrc, peer))
                    }
                    Outcome::Failed(code) => {
                        Err(self.start_error(format!("INVITE answered {code}")))
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline || stop.is_triggered() {
                drop(st);
                let _ = rt.commands.blocking_send(Command::Bye { call_id });
                return Err(self.start_error("no answer to the INVITE"));
            }
            st = sink
                .changed
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(200)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl FrameSource for ChannelSource {
    fn camera(&self) -> &DeviceId {
        &self.camera
    }

    fn stats(&self) -> SourceStats {
        self.stats
    }

    fn run(&mut self, out: &FrameOutput, stop: &Shutdown) -> Result<SourceExit, IngestError> {
        if stop.is_triggered() {
            return Ok(SourceExit::Stopped);
        }
        let rt = self
            .config
            .platform
            .runtime()
            .map_err(|e| self.start_error(e))?;
        let sink = Arc::clone(&rt.sink);
        let socket = self
            .config
            .platform
            .media_socket()
            .map_err(|e| self.start_error(e))?;
        let port = socket
            .local_port()
            .map_err(|e| self.start_error(e.to_string()))?;
        let (call_id, ssrc, peer) = self.invite(&rt, &sink, port, stop)?;
        tracing::info!(camera = %self.camera, port, "GB/T 28181 channel playing");
        let result = self.play(out, stop, socket, (&call_id, ssrc, peer), &sink);
        let _ = rt.commands.blocking_send(Command::Bye {
            call_id: call_id.clone(),
        });
        let mut st = sink.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.calls.remove(&call_id);
        st.ended.remove(&call_id);
        drop(st);
        result
    }
}

impl ChannelSource {
    /// Receives the call's RTP into the PS pipe the GStreamer source reads, until that
    /// source returns.
    fn play(
        &mut self,
        out: &FrameOutput,
        stop: &Shutdown,
        mut socket: MediaIn,
        (call_id, ssrc, peer): (&str, Option<u32>, Option<SocketAddr>),
        sink: &Arc<EventSink>,
    ) -> Result<SourceExit, IngestError> {
        let (reader, mut writer) = std::io::pipe().map_err(|e| self.start_error(e.to_string()))?;
        use std::os::fd::AsRawFd as _;
        let uri = format!("fd://{}", reader.as_raw_fd());
        let mut gst = GstSourceConfig::new(uri);
        gst.stall_timeout_s = self.config.platform.config.stall_timeout_s;
        gst.reconnect = self.config.platform.config.reconnect.clone();
        let mut inner = gst.build(&SourceBuildContext {
            camera: &self.camera,
            delivery: &self.delivery,
        })?;
        socket
            .set_poll()
            .map_err(|e| self.start_error(e.to_string()))?;
        let done = Arc::new(AtomicBool::new(false));
        let receiver = {
            let done = Arc::clone(&done);
            let sink = Arc::clone(sink);
            let call_id = call_id.to_string();
            let lost = metrics::counter!("skynet_rtp_packets_lost_total", "camera" => self.camera.to_string());
            let camera = self.camera.clone();
            std::thread::Builder::new()
                .name(format!("rtp-{camera}"))
                .spawn(move || {
                    let mut media = MediaReceiver::new(ssrc, 64, 8 * 1024 * 1024);
                    let mut buf = vec![0u8; 65_536];
                    let mut lost_seen = 0;
                    // Whether the call has ended is asked of the shared state (its lock is
                    // the SIP handler's) when no media came within a poll, and every
                    // `ENDED_CHECK_EVERY` reads while media flows: not once per packet.
                    let mut reads = 0u32;
                    let mut check_ended = true;
                    while !done.load(Ordering::Relaxed) {
                        if check_ended
                            && sink
                                .state
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .ended
                                .contains(&call_id)
                        {
                            tracing::warn!(camera = %camera, "GB/T 28181 call ended by the lower platform");
                            break;
                        }
                        reads = reads.wrapping_add(1);
                        check_ended = reads.is_multiple_of(ENDED_CHECK_EVERY);
                        let packets = match socket.receive(&mut buf, peer) {
                            Received::Packets(p) => p,
                            Received::Nothing => {
                                check_ended = true;
                                continue;
                            }
                            Received::Closed(why) => {
                                // The run ends; the supervisor INVITEs the channel again.
                                tracing::warn!(camera = %camera, reason = %why, "GB/T 28181 media ended");
                                break;
                            }
                        };
                        let frames: Vec<_> = packets.iter().flat_map(|p| media.push(p)).collect();
                        let stats = media.stats();
                        if stats.lost > lost_seen {
                            lost.increment(stats.lost - lost_seen);
                            lost_seen = stats.lost;
                        }
                        for frame in frames {
                            if writer.write_all(&frame.data).is_err() {
                                return;
                            }
                        }
                    }
                    // Dropping the writer ends the PS stream: the source sees its end.
                })
                .map_err(|e| self.start_error(e.to_string()))?
        };
        let result = inner.run(out, stop);
        self.stats.decoded += inner.stats().decoded;
        self.stats.dropped += inner.stats().dropped;
        drop(inner);
        done.store(true, Ordering::Relaxed);
        // A writer blocked on a full pipe gets EPIPE once the read end is closed.
        drop(reader);
        let _ = receiver.join();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_gb28181::manscdp::{Catalog, CatalogItem};
    use skynet_gb28181::registrar::OfflineReason;

    const LOWER: &str = "34020000002000000002";
    const CAM: &str = "34020000001320000001";

    fn wiring(all: bool) -> Wiring {
        Wiring {
            platform: "34020000002000000001".into(),
            all,
            configured: [CAM.to_string()].into_iter().collect(),
        }
    }

    fn catalog(ids: &[&str]) -> ServerEvent {
        ServerEvent::Catalog {
            platform: LOWER.into(),
            catalog: Catalog {
                device_id: LOWER.into(),
                sn: 1,
                items: ids
                    .iter()
                    .map(|id| CatalogItem {
                        device_id: (*id).into(),
                        ..Default::default()
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn only_wanted_catalog_channels_are_routed_and_an_offline_platform_ends_its_calls() {
        let sink = EventSink::default();
        let other = "34020000001320000002";
        sink.handle(&wiring(false), catalog(&[CAM, other]));
        {
            let st = sink.state.lock().unwrap();
            assert_eq!(
                st.channel_platform.get(CAM).map(String::as_str),
                Some(LOWER)
            );
            // Listed, not configured: not INVITEd.
            assert!(!st.channel_platform.contains_key(other));
        }
        sink.handle(&wiring(true), catalog(&[CAM, other]));
        assert!(
            sink.state
                .lock()
                .unwrap()
                .channel_platform
                .contains_key(other)
        );

        sink.handle(
            &wiring(false),
            ServerEvent::Registrar(RegistrarEvent::Online { id: LOWER.into() }),
        );
        sink.state
            .lock()
            .unwrap()
            .calls
            .insert("call-1".into(), LOWER.into());
        sink.handle(
            &wiring(false),
            ServerEvent::Registrar(RegistrarEvent::Offline {
                id: LOWER.into(),
                reason: OfflineReason::KeepaliveTimeout,
            }),
        );
        let st = sink.state.lock().unwrap();
        assert!(!st.online.contains(LOWER));
        assert!(st.ended.contains("call-1"));
    }

    fn item(id: &str, name: &str, status: ItemStatus, position: Option<(f64, f64)>) -> CatalogItem {
        CatalogItem {
            device_id: id.into(),
            name: name.into(),
            status,
            longitude: position.map(|p| p.0),
            latitude: position.map(|p| p.1),
            ..Default::default()
        }
    }

    fn catalog_of(lower: &str, items: Vec<CatalogItem>) -> ServerEvent {
        ServerEvent::Catalog {
            platform: lower.into(),
            catalog: Catalog {
                device_id: lower.into(),
                sn: 1,
                items,
            },
        }
    }

    #[test]
    fn the_catalog_snapshot_keeps_each_lower_platforms_latest_channels_and_counts_changes() {
        let sink = EventSink::default();
        let w = wiring(false);
        let other_lower = "34020000002000000003";
        let cam2 = "34020000001320000002";
        let cam3 = "34020000001310000003";
        assert!(sink.catalog().is_empty());
        assert_eq!(sink.generation.load(Ordering::Acquire), 0);

        let first = vec![
            item(cam2, "Gate", ItemStatus::Off, Some((0.0, 0.0))),
            item(CAM, "Walkway", ItemStatus::On, Some((116.397, 39.909))),
            // A parent (a business group) is no camera.
            item("34020000002150000001", "Group", ItemStatus::On, None),
        ];
        sink.handle(&w, catalog_of(LOWER, first.clone()));
        assert_eq!(sink.generation.load(Ordering::Acquire), 1);
        assert_eq!(
            sink.catalog(),
            vec![
                CatalogChannel {
                    id: CAM.into(),
                    name: "Walkway".into(),
                    lower: LOWER.into(),
                    status: "online",
                    longitude: Some(116.397),
                    latitude: Some(39.909),
                    wanted: true,
                },
                CatalogChannel {
                    id: cam2.into(),
                    name: "Gate".into(),
                    lower: LOWER.into(),
                    status: "offline",
                    // 0, 0: no position.
                    longitude: None,
                    latitude: None,
                    wanted: false,
                },
            ]
        );

        // The periodic identical catalog changes nothing.
        sink.handle(&w, catalog_of(LOWER, first.into_iter().rev().collect()));
        assert_eq!(sink.generation.load(Ordering::Acquire), 1);

        // Another lower platform's catalog adds its channels, sorted in by id.
        sink.handle(
            &w,
            catalog_of(
                other_lower,
                vec![item(cam3, "Hall", ItemStatus::Unknown, None)],
            ),
        );
        assert_eq!(sink.generation.load(Ordering::Acquire), 2);
        let ids: Vec<(String, String)> = sink
            .catalog()
            .into_iter()
            .map(|c| (c.id, c.lower))
            .collect();
        assert_eq!(
            ids,
            vec![
                (cam3.to_string(), other_lower.to_string()),
                (CAM.to_string(), LOWER.to_string()),
                (cam2.to_string(), LOWER.to_string()),
            ]
        );
        assert_eq!(sink.live().channels_listed, 3);

        // A full catalog replaces that lower platform's list: a status change counts.
        sink.handle(
            &w,
            catalog_of(LOWER, vec![item(CAM, "Walkway", ItemStatus::Off, None)]),
        );
        assert_eq!(sink.generation.load(Ordering::Acquire), 3);
        let mine: Vec<CatalogChannel> = sink
            .catalog()
            .into_iter()
            .filter(|c| c.lower == LOWER)
            .collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].status, "offline");
        assert_eq!(mine[0].longitude, None);

        // Going offline keeps the list, as the catalog said.
        sink.handle(
            &w,
            ServerEvent::Registrar(RegistrarEvent::Offline {
                id: LOWER.into(),
                reason: OfflineReason::KeepaliveTimeout,
            }),
        );
        assert_eq!(sink.catalog().len(), 2);
        assert_eq!(sink.generation.load(Ordering::Acquire), 3);

        // `channels = "all"`: every channel is wanted.
        let all = EventSink::default();
        all.handle(
            &wiring(true),
            catalog_of(LOWER, vec![item(cam2, "Gate", ItemStatus::On, None)]),
        );
        assert!(all.catalog()[0].wanted);
    }

    #[test]
    fn the_platform_reports_its_lower_platforms_in_the_health_table() {
        let table = skynet_core::Health::new();
        let name = health_name("34020000002000000001");
        let sink = EventSink {
            health: Arc::default(),
            expects_lower: true,
            ..EventSink::default()
        };
        let _ = sink.health.set(table.register(name.as_str(), "platform"));
        let state = || table.state(&name, "platform").unwrap();
        sink.report_health();
        assert_eq!(state().state, ComponentState::Starting);
        assert_eq!(
            state().reason.as_deref(),
            Some("no lower platform registered yet")
        );
        assert!(!table.report().ready);
        let online = ServerEvent::Registrar(RegistrarEvent::Online { id: LOWER.into() });
        sink.handle(&wiring(false), online.clone());
        assert_eq!(state().state, ComponentState::Up);
        assert_eq!(
            state().detail.as_deref(),
            Some("1 lower platform(s) online")
        );
        assert!(table.report().ready);
        sink.handle(&wiring(false), catalog(&[CAM]));
        assert_eq!(sink.live().channels_listed, 1);
        assert_eq!(sink.live().lower_online, vec![LOWER.to_string()]);
        sink.handle(
            &wiring(false),
            ServerEvent::Registrar(RegistrarEvent::Offline {
                id: LOWER.into(),
                reason: OfflineReason::KeepaliveTimeout,
            }),
        );
        assert_eq!(state().state, ComponentState::Retrying);
        assert_eq!(
            state().reason,
            Some(format!("lower platform {LOWER} offline: keepalive timeout"))
        );
        assert!(!table.report().ready);
        sink.handle(&wiring(false), online);
        assert_eq!(state().state, ComponentState::Up);
    }

    #[test]
    fn an_endpoint_that_cannot_bind_is_retrying_with_the_reason() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let p = config(
            &Gb28181PlatformConfig::EXAMPLE
                .replace("${SKYNET_GB_PASSWORD:-secret}", "pw")
                .replace("127.0.0.1:5060", &format!("127.0.0.1:{port}")),
        )
        .unwrap();
        let table = skynet_core::Health::new();
        p.attach_health(table.register(health_name(p.id()), "platform"));
        assert!(p.start().is_err());
        let status = table.state(&health_name(p.id()), "platform").unwrap();
        assert_eq!(status.state, ComponentState::Retrying);
        let reason = status.reason.unwrap();
        assert!(
            reason.starts_with("endpoint failed to bind 127.0.0.1:"),
            "{reason}"
        );
        assert!(!reason.contains("pw"), "{reason}");
        assert_eq!(p.live(), PlatformLive::default());
        assert!(p.catalog().is_empty());
        assert_eq!(p.catalog_generation(), 0);
    }

    fn config(text: &str) -> Result<Gb28181Platform, FieldError> {
        let config: Gb28181PlatformConfig = toml::from_str(text).unwrap();
        config.validate(&ConfigContext::new(std::path::Path::new(
            "/etc/skynet/site.toml",
        )))
    }

    #[test]
    fn the_example_validates_and_the_password_never_shows() {
        let p = config(
            &Gb28181PlatformConfig::EXAMPLE.replace("${SKYNET_GB_PASSWORD:-secret}", "hunter2-pw"),
        )
        .unwrap();
        assert!(p.all_channels());
        assert_eq!(p.inner.media_ports, (30000, 30100));
        assert!(!format!("{p:?}").contains("hunter2-pw"));
        let e = config(&Gb28181PlatformConfig::EXAMPLE.replace("30000-30100", "30000-5060"))
            .unwrap_err();
        assert_eq!(e.field, "media_ports");
        let e = config(&Gb28181PlatformConfig::EXAMPLE.replace("30000-30100", "5000-6000"))
            .unwrap_err();
        assert!(e.message.contains("SIP port"), "{}", e.message);
    }
}
