//! The TOML config: assembly of the components it names, and error location.
//!
//! Parsing rejects unknown keys and wrong types. Each component kind (source, rule, sink)
//! owns its config type and validation in its stage crate; this module only finds the kind
//! in the [`Registry`](crate::components::Registry), hands it its table, and turns the
//! errors it returns into `file:line:column: message`, so `skynet check` points at the fix.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::locate::{ConfigError, Locator, nested, section, take_string};
use skynet_core::{ConfigContext, DeviceId, GridId, OwnerKind, Registry, validate_id};
use skynet_detect::{BuildRule, CameraRuleFamily};
use skynet_detect::{
    ClassLimitsTable, DetectSettings, DetectorOptions, IntervalConfig, ModelManifest, OwnerClasses,
    Zone, tracker::TrackerSettings,
};
use skynet_detect::{SensorPlacement, SensorRuleSettings, SensorRuleSpec};
use skynet_emit::{BuildSink, SinkFamily};
use skynet_emit::{CasesSettings, OutboxSettings};
use skynet_ingest::MotionConfig;
use skynet_ingest::gb28181::{BuildPlatform, PlatformFamily};
use skynet_ingest::sensor::{MqttConfig, MqttSettings, SensorSettings, SensorSpec};
use skynet_ingest::{BuildSource, CameraSourceFamily};
use skynet_risk::{GridMap, RiskConfig, RiskSettings};
use toml::Spanned;

use skynet_snapshot::{SnapshotConfig, SnapshotSettings};

// ---- The file as written -------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    node: NodeSection,
    #[serde(default)]
    metrics: MetricsSection,
    grids: GridsSection,
    /// `[detect]`, `[risk]` and `[outbox]` go to their stage crate's settings type.
    detect: Spanned<toml::Table>,
    risk: Option<Spanned<toml::Table>>,
    outbox: Option<Spanned<toml::Table>>,
    /// `[evidence]`: incident snapshots; every key has a default.
    evidence: Option<Spanned<toml::Table>>,
    /// Each table goes to the sink kind its `kind` names.
    #[serde(default)]
    sinks: Vec<Spanned<toml::Table>>,
    /// The common keys are read here; the rest goes to the camera's source kind.
    #[serde(default)]
    cameras: Vec<Spanned<toml::Table>>,
    /// The broker sensors publish to, and the sensor families' topics.
    mqtt: Option<Spanned<toml::Table>>,
    /// The sensor registry, each with its rules.
    #[serde(default)]
    sensors: Vec<Spanned<toml::Table>>,
    /// Where the case system's status events come from (NATS JetStream).
    cases: Option<Spanned<toml::Table>>,
    /// The people's console and its HTTP API.
    api: Option<Spanned<toml::Table>>,
    /// `[cluster]`: the NATS a city's nodes share.
    cluster: Option<Spanned<toml::Table>>,
    /// `[[patrols]]`: video rounds over the cameras that name them.
    #[serde(default)]
    patrols: Vec<Spanned<toml::Table>>,
    /// `[[platforms]]`: video platforms (GB/T 28181) whose channels become cameras; each
    /// table goes to the platform kind its `kind` names.
    #[serde(default)]
    platforms: Vec<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    #[serde(default = "default_node_name")]
    name: Spanned<String>,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: default_node_name(),
        }
    }
}

fn default_node_name() -> Spanned<String> {
    // Host names may hold characters ids may not: keep the safe ones.
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
                .take(128)
                .collect::<String>()
        })
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skynet".into());
    Spanned::new(0..0, host)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    /// `host:port` for `/metrics`, `/healthz` and `/readyz`; absent disables them.
    listen: Option<Spanned<String>>,
    /// A bearer token `/metrics` and `/readyz` require (`${VAR}` expanded); `/healthz`
    /// stays open. Or `auth_token_env`: the variable that holds it.
    auth_token: Option<Spanned<String>>,
    auth_token_env: Option<Spanned<String>>,
}

/// `[grids]`: polygon cells from a GeoJSON `file`, or H3 hexagons generated at
/// `h3_resolution` (for a city without a cell file), with the `kind` and `department` every
/// H3 cell gets. Exactly one of `file` and `h3_resolution`.
#[derive(Debug)]
enum GridsSection {
    File(Spanned<String>),
    H3 {
        resolution: Spanned<u8>,
        kind: Option<Spanned<String>>,
        department: Option<String>,
    },
}

/// Read by hand rather than derived: which keys may be given depends on the others, and a
/// derived error for an unknown key would list the H3 keys before `file`, the usual one.
/// Errors here are placed by toml: at the key for an unknown key, else at the table.
impl<'de> Deserialize<'de> for GridsSection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        enum Key {
            File,
            H3Resolution,
            Kind,
            Department,
        }
        impl<'de> Deserialize<'de> for Key {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let key = String::deserialize(deserializer)?;
                match key.as_str() {
                    "file" => Ok(Key::File),
                    "h3_resolution" => Ok(Key::H3Resolution),
                    "kind" => Ok(Key::Kind),
                    "department" => Ok(Key::Department),
                    other => Err(serde::de::Error::custom(format!(
                        "unknown field `{other}`, expected `file`, `h3_resolution`, `kind` or `department`"
                    ))),
                }
            }
        }

        struct Table;
        impl<'de> serde::de::Visitor<'de> for Table {
            type Value = GridsSection;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a table with `file`, or with `h3_resolution`")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<GridsSection, A::Error> {
                use serde::de::Error;
                let (mut file, mut resolution, mut kind, mut department) = (None, None, None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::File => file = Some(map.next_value()?),
                        Key::H3Resolution => resolution = Some(map.next_value()?),
                        Key::Kind => kind = Some(map.next_value()?),
                        Key::Department => department = Some(map.next_value()?),
                    }
                }
                const ONE_OF: &str = "`[grids]` needs exactly one of `file` (polygon cells from \
                    GeoJSON) or `h3_resolution` (H3 hexagons, 0 to 15)";
                match (file, resolution) {
                    (Some(_), Some(_)) => Err(A::Error::custom(format!("{ONE_OF}, not both"))),
                    (None, None) => Err(A::Error::custom(ONE_OF)),
                    (Some(_), None) if kind.is_some() || department.is_some() => {
                        Err(A::Error::custom(
                            "`kind` and `department` in `[grids]` are for H3 cells; a grid file \
                             gives each cell's in its feature's `properties`",
                        ))
                    }
                    (Some(file), None) => Ok(GridsSection::File(file)),
                    (None, Some(resolution)) => Ok(GridsSection::H3 {
                        resolution,
                        kind,
                        department,
                    }),
                }
            }
        }

        deserializer.deserialize_map(Table)
    }
}

/// The keys every `[[cameras]]` table has, whatever its source kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraCommon {
    id: String,
    owner: OwnerKind,
    /// The grid cell's id; or give `location` and the cell is looked up.
    grid: Option<String>,
    /// `[longitude, latitude]` of the camera.
    location: Option<[f64; 2]>,
    #[serde(default)]
    zones: Vec<ZoneSection>,
    #[serde(default)]
    rules: Vec<toml::Table>,
    /// Frames per second passed on for analysis; default: every frame.
    fps: Option<f64>,
    /// A live camera without frames for this long opens a `camera_offline` incident.
    #[serde(default = "default_offline_after")]
    offline_after_s: f64,
    /// Motion gating; on by default.
    #[serde(default)]
    motion: MotionConfig,
    /// Areas blurred in every evidence snapshot (windows of homes, a neighbour's garden):
    /// polygons of `[x, y]` fractions of the frame, origin top-left.
    #[serde(default)]
    privacy_masks: Vec<Vec<[f64; 2]>>,
    /// Per class, this camera's limits over `[detect.classes]`.
    #[serde(default)]
    classes: ClassLimitsTable,
    /// Detect every N-th frame, N adapting to motion; the tracker carries objects between.
    #[serde(default)]
    inference_interval: IntervalConfig,
    /// The tracker that follows this camera's objects for the rules.
    #[serde(default)]
    tracker: TrackerSettings,
    /// Event clips for this camera, over `[evidence] clips`.
    clips: Option<skynet_snapshot::ClipSettings>,
    /// The `[[patrols]] name` that visits this camera in rounds, instead of running it
    /// all the time.
    patrol: Option<String>,
}

fn default_offline_after() -> f64 {
    30.0
}

const CAMERA_COMMON_KEYS: [&str; 15] = [
    "id",
    "owner",
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
    "patrol",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneSection {
    name: String,
    /// Points as `[x, y]` fractions of the frame, origin top-left.
    polygon: Vec<[f64; 2]>,
}

// ---- The validated config the pipeline runs -------------------------------------------

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub source: PathBuf,
    pub node: String,
    pub metrics_listen: Option<SocketAddr>,
    /// `[metrics] auth_token` (or `auth_token_env`): the bearer `/metrics` and `/readyz`
    /// require.
    pub metrics_auth_token: Option<skynet_core::Secret>,
    pub onnxruntime: Option<PathBuf>,
    pub model: Arc<ModelManifest>,
    pub detector: DetectorOptions,
    pub workers: usize,
    pub queue: usize,
    /// `[detect.classes]`: every camera's per-class limits, under its own.
    pub classes: ClassLimitsTable,
    /// How long a batch waits to fill (`[detect] max_wait_ms`).
    pub batch_wait: std::time::Duration,
    pub grids: Arc<GridMap>,
    pub risk: RiskConfig,
    /// Every observation the engine takes is appended here (JSON Lines), for `skynet replay`.
    pub record_observations: Option<PathBuf>,
    pub outbox: PathBuf,
    pub outbox_retention: chrono::Duration,
    /// A sink this many events behind shows the lag alarm (`[outbox] lag_alarm_events`).
    pub outbox_lag_alarm_events: u64,
    /// A sink's undelivered events older than this move to its dead letters
    /// (`[outbox] max_lag_days`).
    pub outbox_max_lag: chrono::Duration,
    /// Free bytes below which `/readyz` says `degraded` (`[outbox] min_free_mb`).
    pub outbox_min_free_bytes: u64,
    pub sinks: Vec<SinkSpec>,
    pub cameras: Vec<CameraSpec>,
    /// The broker sensors publish to; `None` when the config has no `[mqtt]`.
    pub mqtt: Option<MqttConfig>,
    pub sensors: Vec<SensorConfig>,
    /// The case system's status feedback; `None` when the config has no `[cases]`.
    pub cases: Option<CasesSettings>,
    /// The console and its API; `None` when the config has no `[api]`.
    pub api: Option<skynet_serve::console::ApiConfig>,
    /// `[cluster]`; an empty `url` (the default) is a single node.
    pub cluster: skynet_cluster::ClusterConfig,
    /// `[evidence]`: where incident snapshots go, and how often they are taken.
    pub evidence: SnapshotConfig,
    /// `[[patrols]]`: video rounds over the cameras that name them (`patrol = "NAME"`).
    pub patrols: Vec<skynet_ingest::patrol::PatrolConfig>,
    /// `[[platforms]]`: their analysed channels are in `cameras` (id: the channel's id).
    pub platforms: Vec<PlatformSpec>,
    /// With `[[platforms]]`: the cameras of channels placed while running, by their
    /// catalog position.
    pub catalog_cameras: Option<Arc<CatalogCameras>>,
}

/// A configured platform: its kind and its validated config.
#[derive(Debug, Clone)]
pub struct PlatformSpec {
    pub kind: &'static str,
    pub config: Arc<dyn BuildPlatform>,
}

/// A configured sensor: what validation needs, where it is, and its rules.
#[derive(Debug, Clone)]
pub struct SensorConfig {
    pub spec: SensorSpec,
    pub placement: SensorPlacement,
    pub rules: Vec<SensorRuleSpec>,
}

/// A configured sink: its unique name, its kind, and its validated config.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub name: String,
    pub kind: &'static str,
    pub config: Arc<dyn BuildSink>,
}

#[derive(Debug, Clone)]
pub struct CameraSpec {
    pub id: DeviceId,
    pub owner: OwnerKind,
    pub grid: GridId,
    /// The source kind's validated config.
    pub source: Arc<dyn BuildSource>,
    pub zones: Vec<Zone>,
    pub rules: Vec<Arc<dyn BuildRule>>,
    /// Frames per second passed on for analysis; `None`: every frame.
    pub fps: Option<f64>,
    /// A live camera without frames for this long is offline (a `camera_offline` incident).
    pub offline_after: std::time::Duration,
    pub motion: MotionConfig,
    /// Blurred in evidence snapshots: polygons of `[x, y]` fractions of the frame.
    pub privacy_masks: Vec<Vec<[f64; 2]>>,
    /// The labels the camera's owner looks for.
    pub allowed_classes: Vec<String>,
    /// This camera's per-class limits (over `[detect.classes]`, merged when the filter is
    /// built).
    pub classes: ClassLimitsTable,
    pub inference_interval: IntervalConfig,
    pub tracker: TrackerSettings,
    /// This camera's `clips` override; `None`: `[evidence] clips`.
    pub clips: Option<skynet_snapshot::ClipsConfig>,
    /// The patrol that visits this camera in rounds (`patrol = "NAME"`); `None`: it runs
    /// all the time.
    pub patrol: Option<String>,
}

impl CameraSpec {
    /// Live streams lose stale frames under overload; files replayed as fast as possible wait.
    pub fn is_live(&self) -> bool {
        self.source.is_live()
    }
}

impl PipelineConfig {
    /// Things that work but probably not as meant (`skynet check` prints them; they never
    /// stop a start): a patrol whose round cannot finish within its `every_s`, estimated as
    /// ⌈cameras / max_concurrent⌉ × (connect + dwell_s) with a connect of 0.5 s (measured by
    /// `benches/patrol.rs`).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        for patrol in &self.patrols {
            let cameras = self
                .cameras
                .iter()
                .filter(|c| c.patrol.as_deref() == Some(patrol.name.as_str()))
                .count();
            if cameras == 0 {
                warnings.push(format!(
                    "patrol `{}` has no cameras: none names it in `patrol`",
                    patrol.name
                ));
                continue;
            }
            let connect = skynet_ingest::patrol::ESTIMATED_CONNECT;
            let estimate = skynet_ingest::patrol::round_estimate(
                cameras,
                patrol.max_concurrent,
                connect,
                patrol.dwell(),
            );
            if estimate.as_secs_f64() > patrol.every_s {
                warnings.push(format!(
                    "patrol `{}`: a round of {cameras} camera(s) takes about {:.1} s \
                     (⌈{cameras} / max_concurrent {}⌉ × ({} s connect, estimated, + dwell_s {})), \
                     longer than every_s = {}: rounds will start late; raise max_concurrent or every_s, \
                     or lower dwell_s",
                    patrol.name,
                    estimate.as_secs_f64(),
                    patrol.max_concurrent,
                    connect.as_secs_f64(),
                    patrol.dwell_s,
                    patrol.every_s,
                ));
            }
        }
        warnings
    }

    /// What the risk engine knows of the city: the cells and every configured device.
    pub fn risk_context(&self) -> skynet_risk::RiskContext {
        let cameras = self.cameras.iter().map(|c| skynet_risk::DeviceInfo {
            source: skynet_core::SourceRef::camera(&c.id),
            grid: c.grid.clone(),
            owner: c.owner,
        });
        let sensors = self.sensors.iter().map(|s| skynet_risk::DeviceInfo {
            source: skynet_core::SourceRef::sensor(&DeviceId::new(s.placement.sensor.as_str())),
            grid: s.placement.grid.clone(),
            owner: s.placement.owner,
        });
        skynet_risk::RiskContext::new(self.grids.clone(), cameras.chain(sensors))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let at = Locator { path, text };
        let file: ConfigFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().to_string();
            at.error(e.span().unwrap_or(0..0), message)
        })?;
        validate(&at, file, &crate::components::registry())
    }

    pub fn rule_count(&self) -> usize {
        self.cameras.iter().map(|c| c.rules.len()).sum::<usize>()
            + self.sensors.iter().map(|s| s.rules.len()).sum::<usize>()
    }
}

fn id_error(at: &Locator<'_>, span: Range<usize>, what: &str, id: &str) -> Result<(), ConfigError> {
    validate_id(what, id).map_err(|m| at.error(span, m))
}

/// The fewest characters a `[metrics]` bearer token may have.
const MIN_METRICS_TOKEN: usize = 16;

/// `[metrics] auth_token` or `auth_token_env`, never both, never empty, never short or a
/// placeholder. Errors name the key,
/// never the value.
fn metrics_token(
    at: &Locator<'_>,
    metrics: &MetricsSection,
) -> Result<Option<skynet_core::Secret>, ConfigError> {
    let token = match (&metrics.auth_token, &metrics.auth_token_env) {
        (None, None) => return Ok(None),
        (Some(_), Some(env)) => {
            return Err(at.error(
                env.span(),
                "give `auth_token` or `auth_token_env`, not both",
            ));
        }
        (Some(token), None) => (
            token.span(),
            skynet_core::config::expand_vars(token.get_ref())
                .map_err(|m| at.error(token.span(), m))?,
        ),
        (None, Some(env)) => (
            env.span(),
            std::env::var(env.get_ref()).map_err(|_| {
                at.error(
                    env.span(),
                    format!(
                        "`auth_token_env`: environment variable `{}` is not set",
                        env.get_ref()
                    ),
                )
            })?,
        ),
    };
    let (span, token) = token;
    let token = token.trim();
    if token.is_empty() {
        return Err(at.error(
            span,
            "`auth_token` is empty: leave it out for open metrics, or give a token",
        ));
    }
    // A short token can be guessed, and a placeholder copied from an example is known to
    // everyone who read it. Neither message shows the value.
    let key = if metrics.auth_token.is_some() {
        "`auth_token`".to_string()
    } else {
        format!(
            "`auth_token_env` (environment variable `{}`)",
            metrics
                .auth_token_env
                .as_ref()
                .map_or("", |env| env.get_ref())
        )
    };
    if token.to_ascii_uppercase().starts_with("REPLACE") {
        return Err(at.error(
            span,
            format!(
                "{key} is a placeholder from an example: give a random token, like the output of `openssl rand -hex 32`"
            ),
        ));
    }
    if token.chars().count() < MIN_METRICS_TOKEN {
        return Err(at.error(
            span,
            format!(
                "{key} is shorter than {MIN_METRICS_TOKEN} characters: give a random token, like the output of `openssl rand -hex 32`"
            ),
        ));
    }
    Ok(Some(skynet_core::Secret::from(token.to_string())))
}

fn validate(
    at: &Locator<'_>,
    file: ConfigFile,
    registry: &Registry,
) -> Result<PipelineConfig, ConfigError> {
    // `${SKYNET_NODE_NAME:-city-node}`: one config serves every process of a city.
    let node = skynet_core::config::expand_vars(file.node.name.get_ref())
        .map_err(|m| at.error(file.node.name.span(), m))?;
    id_error(at, file.node.name.span(), "node", &node)?;
    let metrics_listen = match &file.metrics.listen {
        None => None,
        Some(listen) => {
            let expanded = skynet_core::config::expand_vars(listen.get_ref())
                .map_err(|m| at.error(listen.span(), m))?;
            Some(expanded.parse::<SocketAddr>().map_err(|e| {
                at.error(
                    listen.span(),
                    format!(
                        "`listen` must be host:port, like 127.0.0.1:9464, got `{expanded}`: {e}"
                    ),
                )
            })?)
        }
    };

    let metrics_auth_token = metrics_token(at, &file.metrics)?;

    let cx = ConfigContext::new(at.path);
    let (detect, region) = section::<DetectSettings>(at, Some(&file.detect))?;
    let detect = detect
        .validate(&cx)
        .map_err(|e| at.field_error(&region, e))?;
    let model = Arc::new(detect.model);

    let grids = match &file.grids {
        GridsSection::File(path) => {
            let grids_path = at.path(path)?;
            GridMap::load(&grids_path).map_err(|e| at.error(path.span(), e.to_string()))?
        }
        GridsSection::H3 {
            resolution,
            kind,
            department,
        } => GridMap::h3(
            *resolution.get_ref(),
            kind.as_ref().map(|k| k.get_ref().clone()),
            department.clone(),
        )
        .map_err(|e| {
            let at_kind = matches!(
                e,
                skynet_risk::GridError::H3 {
                    setting: "kind",
                    ..
                }
            );
            let span = match kind {
                Some(kind) if at_kind => kind.span(),
                _ => resolution.span(),
            };
            at.error(span, e.to_string())
        })?,
    };

    let (risk, region) = section::<RiskSettings>(at, file.risk.as_ref())?;
    let record_observations = risk
        .record_path(&cx)
        .map_err(|e| at.field_error(&region, e))?;
    let risk = risk
        .validate(&node)
        .map_err(|e| at.field_error(&region, e))?;
    let (outbox, region) = section::<OutboxSettings>(at, file.outbox.as_ref())?;
    let outbox = outbox
        .validate(&cx)
        .map_err(|e| at.field_error(&region, e))?;
    let sinks = validate_sinks(at, &node, &file.sinks, registry)?;
    let (evidence, region) = section::<SnapshotSettings>(at, file.evidence.as_ref())?;
    let evidence = evidence
        .validate(&cx)
        .map_err(|e| at.field_error(&region, e))?;

    let mqtt = match &file.mqtt {
        None => None,
        Some(table) => {
            let (settings, region) = section::<MqttSettings>(at, Some(table))?;
            Some(settings.validate(&cx, &node, registry).map_err(|e| {
                let (region, e) = nested(at, &region, "mqtt.topics", e);
                at.field_error(&region, e)
            })?)
        }
    };
    let cluster = match &file.cluster {
        None => skynet_cluster::ClusterConfig::default(),
        Some(table) => {
            let (settings, region) = section::<skynet_cluster::ClusterConfig>(at, Some(table))?;
            settings
                .validate(&cx)
                .map_err(|e| at.field_error(&region, e))?
        }
    };
    let mut risk = risk;
    if !cluster.is_single_node() {
        // The node's name becomes its member key `<role>.<node>` in the cluster's KV.
        skynet_cluster::check_node_name("name", &node)
            .map_err(|e| at.error(file.node.name.span(), e.message))?;
        // Ids and the events' source name the cluster: any scorer makes the same ones.
        risk.node = cluster.name.clone();
    }
    let cases = match &file.cases {
        None => None,
        Some(table) => {
            let (mut settings, region) = section::<CasesSettings>(at, Some(table))?;
            settings
                .validate(&cx)
                .map_err(|e| at.field_error(&region, e))?;
            Some(settings)
        }
    };
    let api = match &file.api {
        None => None,
        Some(table) => {
            let (settings, region) =
                section::<skynet_serve::console::ApiSettings>(at, Some(table))?;
            Some(
                settings
                    .validate(&cx)
                    .map_err(|e| at.field_error(&region, e))?,
            )
        }
    };
    if file.cameras.is_empty() && file.sensors.is_empty() && file.platforms.is_empty() {
        return Err(at.error(
            0..0,
            "no cameras and no sensors: add a [[cameras]] or a [[sensors]] table",
        ));
    }
    if mqtt.is_none()
        && let Some(first) = file.sensors.first()
    {
        return Err(at.error(
            first.span(),
            "sensors publish over MQTT: add an [mqtt] table with the broker's url and the sensors' topics",
        ));
    }
    let patrols = validate_patrols(at, &file.patrols)?;
    let mut cameras: Vec<CameraSpec> = Vec::with_capacity(file.cameras.len());
    for camera in &file.cameras {
        let detect_cx = CameraDetectContext {
            model: model.as_ref(),
            classes: &detect.classes,
            threshold: f64::from(detect.options.threshold),
            owner_classes: &detect.owner_classes,
        };
        let spec = validate_camera(at, &cx, camera, &grids, &detect_cx, registry)?;
        if let Some(patrol) = &spec.patrol {
            let region = at.table_region(&camera.span());
            if !patrols.iter().any(|p| &p.name == patrol) {
                return Err(at.error(
                    at.value(&region, "patrol"),
                    format!(
                        "no `[[patrols]]` is named `{patrol}`{}",
                        match patrols.is_empty() {
                            true => String::new(),
                            false => format!(
                                " (patrols: {})",
                                patrols
                                    .iter()
                                    .map(|p| p.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        }
                    ),
                ));
            }
            if !spec.is_live() {
                return Err(at.error(
                    at.value(&region, "patrol"),
                    format!(
                        "camera `{}` is a file replayed as fast as possible: a patrol visits live cameras (rtsp/http, or a `realtime` file)",
                        spec.id
                    ),
                ));
            }
        }
        if cameras.iter().any(|c| c.id == spec.id) {
            let region = at.table_region(&camera.span());
            return Err(at.error(
                at.key(&region, "id"),
                format!("camera id `{}` is used twice", spec.id),
            ));
        }
        cameras.push(spec);
    }
    let platforms = validate_platforms(at, &cx, &file.platforms, registry)?;
    let detect_cx = CameraDetectContext {
        model: model.as_ref(),
        classes: &detect.classes,
        threshold: f64::from(detect.options.threshold),
        owner_classes: &detect.owner_classes,
    };
    for (platform, table) in platforms.iter().zip(&file.platforms) {
        let region = at.table_region(&table.span());
        let mut nth_table = 0;
        for channel in platform.config.channels() {
            let Some(camera_keys) = &channel.camera else {
                continue;
            };
            // `[[platforms.channels]]` tables are found in the text; inline ones point at
            // the platform.
            let header = at
                .sub_table(&region, "platforms.channels", nth_table)
                .map(|r| r.start..r.start + at.text[r].find('\n').unwrap_or(0))
                .unwrap_or(table.span());
            nth_table += 1;
            let placed = channel.is_analysed();
            // A table without a cell is placed later, by the catalog's position: its keys
            // are checked now (in some cell: where it lands changes nothing of theirs).
            let some_cell = grids
                .grids()
                .first()
                .map(|g| g.id.clone())
                .or_else(|| grids.locate(0.0, 0.0).map(|c| c.id));
            let grid = match (placed, &some_cell) {
                (true, _) => None,
                (false, Some(cell)) => Some(cell),
                (false, None) => continue,
            };
            let at_channel = ChannelAt { at, header };
            let spec = channel_camera(
                &at_channel,
                &cx,
                platform,
                &channel.id,
                Some(camera_keys),
                grid,
                &grids,
                &detect_cx,
                registry,
            )?;
            if !placed {
                continue;
            }
            if cameras.iter().any(|c| c.id == spec.id) {
                return Err(at.error(
                    at_channel.header,
                    format!("camera id `{}` is used twice", spec.id),
                ));
            }
            cameras.push(spec);
        }
    }
    let grids = Arc::new(grids);
    let catalog_cameras = (!platforms.is_empty()).then(|| {
        Arc::new(CatalogCameras {
            path: at.path.to_path_buf(),
            cx: cx.clone(),
            grids: Arc::clone(&grids),
            model: Arc::clone(&model),
            classes: detect.classes.clone(),
            threshold: f64::from(detect.options.threshold),
            owner_classes: detect.owner_classes.clone(),
        })
    });
    let mut sensors: Vec<SensorConfig> = Vec::with_capacity(file.sensors.len());
    for sensor in &file.sensors {
        let region = at.table_region(&sensor.span());
        let spec = validate_sensor(at, &region, sensor.get_ref(), &grids)?;
        let id = spec.spec.id.as_str();
        if sensors.iter().any(|s| s.spec.id == spec.spec.id) {
            return Err(at.error(
                at.value(&region, "id"),
                format!("sensor id `{id}` is used twice"),
            ));
        }
        if cameras.iter().any(|c| c.id.as_str() == id) {
            return Err(at.error(
                at.value(&region, "id"),
                format!(
                    "sensor id `{id}` is also a camera's: cameras and sensors share one namespace"
                ),
            ));
        }
        sensors.push(spec);
    }

    Ok(PipelineConfig {
        source: at.path.to_path_buf(),
        node,
        metrics_listen,
        metrics_auth_token,
        onnxruntime: detect.onnxruntime,
        model,
        detector: detect.options,
        workers: detect.workers,
        queue: detect.queue,
        classes: detect.classes,
        batch_wait: detect.max_wait,
        grids,
        risk,
        record_observations,
        outbox: outbox.path,
        outbox_retention: outbox.retention,
        outbox_lag_alarm_events: outbox.lag_alarm_events,
        outbox_max_lag: outbox.max_lag,
        outbox_min_free_bytes: outbox.min_free_bytes,
        sinks,
        cameras,
        mqtt,
        sensors,
        cases,
        api,
        cluster,
        evidence,
        patrols,
        platforms,
        catalog_cameras,
    })
}

/// Where a platform channel's camera keys are: the file and the channel's table header.
struct ChannelAt<'a> {
    at: &'a Locator<'a>,
    header: Range<usize>,
}

/// A platform channel's camera: its `[[platforms.channels]]` keys (if any) checked as a
/// camera's, with the platform's owner, in `grid` when given (else where its keys place
/// it), its source the platform's.
#[allow(clippy::too_many_arguments)]
fn channel_camera(
    place: &ChannelAt<'_>,
    cx: &ConfigContext,
    platform: &PlatformSpec,
    channel: &str,
    keys: Option<&toml::Table>,
    grid: Option<&GridId>,
    grids: &GridMap,
    detect: &CameraDetectContext<'_>,
    registry: &Registry,
) -> Result<CameraSpec, ConfigError> {
    let mut camera = keys.cloned().unwrap_or_default();
    camera.insert("id".into(), channel.into());
    camera.insert(
        "owner".into(),
        toml::Value::try_from(platform.config.owner())
            .unwrap_or_else(|_| toml::Value::String(String::new())),
    );
    if let Some(grid) = grid {
        camera.remove("location");
        camera.insert("grid".into(), grid.as_str().into());
    }
    // The common keys are checked as a camera's; the source is the platform's.
    camera.insert("kind".into(), "gstreamer".into());
    camera.insert("uri".into(), "fd://0".into());
    let mut spec = validate_camera(
        place.at,
        cx,
        &Spanned::new(place.header.clone(), camera),
        grids,
        detect,
        registry,
    )?;
    spec.source = platform.config.channel_source(channel);
    Ok(spec)
}

/// Builds, while running, the camera of a platform channel that the config does not place:
/// the catalog's `Longitude`/`Latitude` found a cell for it. Its keys are those of its
/// `[[platforms.channels]]` table (checked at load), else the defaults.
#[derive(Debug)]
pub struct CatalogCameras {
    path: PathBuf,
    cx: ConfigContext,
    grids: Arc<GridMap>,
    model: Arc<ModelManifest>,
    classes: skynet_detect::ClassLimitsTable,
    threshold: f64,
    owner_classes: skynet_detect::OwnerClasses,
}

impl CatalogCameras {
    /// The grid cell a catalog position falls in.
    pub fn cell_at(&self, longitude: f64, latitude: f64) -> Option<GridId> {
        self.grids.locate(longitude, latitude).map(|c| c.id)
    }

    /// Channel `channel` of `platform` as a camera in cell `grid`.
    pub fn camera(
        &self,
        platform: &PlatformSpec,
        channel: &str,
        grid: &GridId,
    ) -> Result<CameraSpec, ConfigError> {
        let keys = platform
            .config
            .channels()
            .iter()
            .find(|c| c.id == channel)
            .and_then(|c| c.camera.as_ref());
        // Errors name the channel (the text is its keys as a table).
        let path = self.path.with_file_name(format!(
            "{} (catalog channel {channel})",
            file_name(&self.path)
        ));
        let text = keys
            .map(|k| toml::to_string(k).unwrap_or_default())
            .unwrap_or_default();
        let at = Locator {
            path: &path,
            text: &text,
        };
        let place = ChannelAt {
            at: &at,
            header: 0..0,
        };
        let detect = CameraDetectContext {
            model: &self.model,
            classes: &self.classes,
            threshold: self.threshold,
            owner_classes: &self.owner_classes,
        };
        channel_camera(
            &place,
            &self.cx,
            platform,
            channel,
            keys,
            Some(grid),
            &self.grids,
            &detect,
            &crate::components::registry(),
        )
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `[[platforms]]`: each read by its kind; skynet's ids on them unique.
fn validate_platforms(
    at: &Locator<'_>,
    cx: &ConfigContext,
    tables: &[Spanned<toml::Table>],
    registry: &Registry,
) -> Result<Vec<PlatformSpec>, ConfigError> {
    let mut specs: Vec<PlatformSpec> = Vec::with_capacity(tables.len());
    for table in tables {
        let region = at.table_region(&table.span());
        let mut body = table.get_ref().clone();
        let Some(kind) = take_string(at, &region, &mut body, "kind")? else {
            return Err(at.error(
                region.start..region.start,
                format!(
                    "a platform needs a `kind`: one of {}",
                    registry.names::<PlatformFamily>().join(", ")
                ),
            ));
        };
        let kind = registry
            .lookup::<PlatformFamily>(&kind)
            .map_err(|m| at.error(at.key(&region, "kind"), m))?;
        let config = (kind.parse)(body, cx).map_err(|e| at.parse_error(&region, e))?;
        if specs.iter().any(|p| p.config.id() == config.id()) {
            return Err(at.error(
                at.value(&region, "id"),
                format!("two platforms have the id `{}`", config.id()),
            ));
        }
        if let Some(other) = specs.iter().find(|p| p.config.listen() == config.listen()) {
            return Err(at.error(
                at.value(&region, "listen"),
                format!(
                    "platform `{}` listens on {} too: give each its own `listen`",
                    other.config.id(),
                    config.listen()
                ),
            ));
        }
        specs.push(PlatformSpec {
            kind: kind.name,
            config,
        });
    }
    Ok(specs)
}

/// `[[patrols]]`: each checked, names unique.
fn validate_patrols(
    at: &Locator<'_>,
    tables: &[Spanned<toml::Table>],
) -> Result<Vec<skynet_ingest::patrol::PatrolConfig>, ConfigError> {
    let mut patrols: Vec<skynet_ingest::patrol::PatrolConfig> = Vec::with_capacity(tables.len());
    for table in tables {
        let region = at.table_region(&table.span());
        let patrol: skynet_ingest::patrol::PatrolConfig =
            toml::Value::Table(table.get_ref().clone())
                .try_into()
                .map_err(|e: toml::de::Error| at.serde_error(&region, &e))?;
        patrol.validate().map_err(|e| at.field_error(&region, e))?;
        if patrols.iter().any(|p| p.name == patrol.name) {
            return Err(at.error(
                at.value(&region, "name"),
                format!("two patrols are named `{}`", patrol.name),
            ));
        }
        patrols.push(patrol);
    }
    Ok(patrols)
}

/// The grid cell of a camera or sensor: named (`grid`), or looked up by `location`.
fn resolve_grid(
    at: &Locator<'_>,
    region: &Range<usize>,
    grids: &GridMap,
    what: &str,
    id: &str,
    grid: Option<&String>,
    location: Option<&[f64; 2]>,
) -> Result<GridId, ConfigError> {
    match (grid, location) {
        (Some(grid), _) => match grids.cell(grid) {
            // The cell's own id: for H3, the canonical spelling of the index given.
            Some(cell) => Ok(cell.id),
            None => Err(at.error(
                at.key(region, "grid"),
                match grids.h3_resolution() {
                    // H3 cells are not listed: say what a valid id looks like instead.
                    Some(resolution) => format!(
                        "grid `{grid}` is not an H3 cell index at resolution {resolution} (the \
                         `[grids]` `h3_resolution`): give the cell's index, 15 hex digits, or a \
                         `location`"
                    ),
                    None => format!(
                        "unknown grid `{grid}`; the grid file has: {}",
                        grids.ids().join(", ")
                    ),
                },
            )),
        },
        (None, Some([lon, lat])) => match grids.locate(*lon, *lat) {
            Some(cell) => Ok(cell.id),
            None if grids.is_h3() => Err(at.error(
                at.key(region, "location"),
                format!("location [{lon}, {lat}] is not a [longitude, latitude] on Earth"),
            )),
            None => Err(at.error(
                at.key(region, "location"),
                format!("location [{lon}, {lat}] is outside every grid cell"),
            )),
        },
        (None, None) => Err(at.error(
            at.key(region, "id"),
            format!("{what} `{id}` needs a `grid` or a `location`"),
        )),
    }
}

fn validate_sensor(
    at: &Locator<'_>,
    region: &Range<usize>,
    table: &toml::Table,
    grids: &GridMap,
) -> Result<SensorConfig, ConfigError> {
    let section: SensorSettings = toml::Value::Table(table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| at.serde_error(region, &e))?;
    let sensor = section.validate().map_err(|e| at.field_error(region, e))?;
    let id = sensor.spec.id.as_str();
    let grid = resolve_grid(
        at,
        region,
        grids,
        "sensor",
        id,
        sensor.grid.as_ref(),
        sensor.location.as_ref(),
    )?;
    let mut rules: Vec<SensorRuleSpec> = Vec::new();
    for (n, rule) in sensor.rules.iter().enumerate() {
        let rule_region = at
            .sub_table(region, "sensors.rules", n)
            .unwrap_or(region.clone());
        let settings: SensorRuleSettings = toml::Value::Table(rule.clone())
            .try_into()
            .map_err(|e: toml::de::Error| at.serde_error(&rule_region, &e))?;
        let built = settings
            .validate()
            .map_err(|e| at.field_error(&rule_region, e))?;
        if rules.iter().any(|r| r.name == built.name) {
            return Err(at.error(
                at.key(&rule_region, "name"),
                format!(
                    "rule `{}` is defined twice on sensor `{id}`: give each a distinct `name`",
                    built.name
                ),
            ));
        }
        rules.push(built);
    }
    Ok(SensorConfig {
        placement: SensorPlacement {
            sensor: sensor.spec.id.clone(),
            grid,
            owner: sensor.owner,
            expected_interval: sensor.expected_interval,
        },
        spec: sensor.spec,
        rules,
    })
}

fn validate_sinks(
    at: &Locator<'_>,
    node: &str,
    sinks: &[Spanned<toml::Table>],
    registry: &Registry,
) -> Result<Vec<SinkSpec>, ConfigError> {
    let cx = ConfigContext::new(at.path).with_node(node);
    let mut specs: Vec<SinkSpec> = Vec::new();
    for sink in sinks {
        let region = at.table_region(&sink.span());
        let mut table = sink.get_ref().clone();
        let Some(kind) = take_string(at, &region, &mut table, "kind")? else {
            return Err(at.error(
                region.start..region.start,
                format!(
                    "a sink needs a `kind`: one of {}",
                    registry.names::<SinkFamily>().join(", ")
                ),
            ));
        };
        let kind = registry
            .lookup::<SinkFamily>(&kind)
            .map_err(|m| at.error(at.key(&region, "kind"), m))?;
        let name =
            take_string(at, &region, &mut table, "name")?.unwrap_or_else(|| kind.name.to_string());
        validate_id("sink", &name).map_err(|m| at.error(at.key(&region, "name"), m))?;
        let config = (kind.parse)(table, &cx).map_err(|e| at.parse_error(&region, e))?;
        let kind = kind.name;
        if specs.iter().any(|s| s.name == name) {
            return Err(at.error(
                at.key(&region, "kind"),
                format!("two sinks are named `{name}`: give each a distinct `name`"),
            ));
        }
        specs.push(SinkSpec { name, kind, config });
    }
    Ok(specs)
}

/// What a camera's validation needs from `[detect]`.
struct CameraDetectContext<'a> {
    model: &'a ModelManifest,
    /// `[detect.classes]`, under each camera's own.
    classes: &'a ClassLimitsTable,
    threshold: f64,
    owner_classes: &'a OwnerClasses,
}

fn validate_camera(
    at: &Locator<'_>,
    cx: &ConfigContext,
    camera: &Spanned<toml::Table>,
    grids: &GridMap,
    detect: &CameraDetectContext<'_>,
    registry: &Registry,
) -> Result<CameraSpec, ConfigError> {
    let model = detect.model;
    let region = at.table_region(&camera.span());
    let mut common_table = toml::Table::new();
    let mut source_table = camera.get_ref().clone();
    for key in CAMERA_COMMON_KEYS {
        if let Some(v) = source_table.remove(key) {
            common_table.insert(key.to_string(), v);
        }
    }
    let kind = take_string(at, &region, &mut source_table, "kind")?
        .or_else(|| {
            registry
                .kinds::<CameraSourceFamily>()
                .first()
                .map(|k| k.name.to_string())
        })
        .unwrap_or_default();
    let common: CameraCommon = toml::Value::Table(common_table)
        .try_into()
        .map_err(|e: toml::de::Error| at.serde_error(&region, &e))?;
    let id = common.id.as_str();
    id_error(at, at.key(&region, "id"), "camera", id)?;
    if let Some(fps) = common.fps {
        check_range("fps", fps, 0.01, 1000.0).map_err(|e| at.field_error(&region, e))?;
    }
    check_range("offline_after_s", common.offline_after_s, 1.0, 86_400.0)
        .map_err(|e| at.field_error(&region, e))?;
    common
        .motion
        .validate()
        .map_err(|e| at.field_error(&region, e))?;
    // The same checks as motion masks and zones: 3 points or more, inside the frame.
    skynet_core::check_frame_polygons("privacy_masks", "privacy mask", &common.privacy_masks)
        .map_err(|e| at.field_error(&region, e))?;
    let clips = common
        .clips
        .map(|c| c.validate())
        .transpose()
        .map_err(|e| at.field_error(&region, e))?;
    skynet_detect::filter::validate_class_limits(
        "classes",
        &common.classes,
        &model.model.name,
        &model.labels,
        detect.threshold,
    )
    .map_err(|e| at.field_error(&region, e))?;
    skynet_detect::filter::check_merged(detect.classes, &common.classes)
        .map_err(|e| at.field_error(&region, e))?;
    common
        .inference_interval
        .validate()
        .map_err(|e| at.field_error(&region, e))?;
    common
        .tracker
        .validate()
        .map_err(|e| at.field_error(&region, e))?;
    let allowed_classes = detect.owner_classes.allowed(common.owner, &model.labels);
    if allowed_classes.is_empty() {
        return Err(at.error(
            at.value(&region, "owner"),
            format!(
                "camera `{id}` would detect nothing: model `{}` has none of the classes {} \
                 cameras look for; list them in `[detect.owner_classes] {}`",
                model.model.name, common.owner, common.owner
            ),
        ));
    }
    // Limits for a class the camera drops would never apply: most likely a typo or a
    // forgotten owner class.
    if let Some(label) = common
        .classes
        .keys()
        .find(|label| !allowed_classes.contains(label))
    {
        return Err(at.error(
            at.value(&region, "classes"),
            format!(
                "`classes.{label}`: camera `{id}` does not look for `{label}` (its owner's \
                 classes: {}); add it to `[detect.owner_classes] {}`",
                allowed_classes.join(", "),
                common.owner
            ),
        ));
    }

    let grid = resolve_grid(
        at,
        &region,
        grids,
        "camera",
        id,
        common.grid.as_ref(),
        common.location.as_ref(),
    )?;

    let source_kind = registry
        .lookup::<CameraSourceFamily>(&kind)
        .map_err(|m| at.error(at.key(&region, "kind"), m))?;
    let source = (source_kind.parse)(source_table, cx).map_err(|e| at.parse_error(&region, e))?;

    let mut zones: Vec<Zone> = Vec::new();
    for (n, zone) in common.zones.iter().enumerate() {
        let zone_region = at
            .sub_table(&region, "cameras.zones", n)
            .unwrap_or(region.clone());
        let z = Zone::new(&zone.name, &zone.polygon).map_err(|e| {
            at.error(
                at.value(&zone_region, "polygon"),
                format!("invalid polygon for zone `{}`: {e}", zone.name),
            )
        })?;
        if zones.iter().any(|other| other.name == z.name) {
            return Err(at.error(
                at.key(&zone_region, "name"),
                format!("zone `{}` is defined twice on camera `{id}`", z.name),
            ));
        }
        zones.push(z);
    }

    let labels = model.labels.clone();
    let rule_cx = skynet_detect::RuleContext {
        camera: id,
        zones: &zones,
        model: &model.model.name,
        labels: &labels,
        allowed: Some(&allowed_classes),
    };
    let mut rules: Vec<Arc<dyn BuildRule>> = Vec::new();
    for (n, rule) in common.rules.iter().enumerate() {
        let rule_region = at
            .sub_table(&region, "cameras.rules", n)
            .unwrap_or(region.clone());
        let mut table = rule.clone();
        let Some(kind) = take_string(at, &rule_region, &mut table, "kind")? else {
            return Err(at.error(
                rule_region.start..rule_region.start,
                format!(
                    "a rule needs a `kind`: one of {}",
                    registry.names::<CameraRuleFamily>().join(", ")
                ),
            ));
        };
        let rule_kind = registry
            .lookup::<CameraRuleFamily>(&kind)
            .map_err(|m| at.error(at.key(&rule_region, "kind"), m))?;
        let built =
            (rule_kind.parse)(table, &rule_cx).map_err(|e| at.parse_error(&rule_region, e))?;
        if rules.iter().any(|r| r.name() == built.name()) {
            return Err(at.error(
                at.key(&rule_region, "name"),
                format!("rule `{}` is defined twice on camera `{id}`", built.name()),
            ));
        }
        rules.push(built);
    }

    Ok(CameraSpec {
        id: DeviceId::new(id),
        owner: common.owner,
        grid,
        source,
        zones,
        rules,
        fps: common.fps,
        offline_after: std::time::Duration::from_secs_f64(common.offline_after_s),
        motion: common.motion,
        privacy_masks: common.privacy_masks,
        allowed_classes,
        classes: common.classes,
        inference_interval: common.inference_interval,
        tracker: common.tracker,
        clips,
        patrol: common.patrol,
    })
}
