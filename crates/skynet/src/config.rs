//! The TOML config and its validation.
//!
//! Parsing rejects unknown keys and wrong types; validation then checks what TOML cannot
//! (polygons, references between zones and rules, grid placement, the model). Every error
//! names the file, line and column, so `skynet check` points the user at the fix.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use skynet_core::{CameraId, GridId, OwnerKind, RiskLevel};
use skynet_detect::{DetectorOptions, ExecutionProvider, ModelManifest, Zone, ZoneIntrusionSpec};
use skynet_risk::{GridMap, LevelThresholds, RiskConfig};
use toml::Spanned;

use crate::paths;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

// ---- The file as written -------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    node: NodeSection,
    #[serde(default)]
    metrics: MetricsSection,
    grids: GridsSection,
    detect: DetectSection,
    #[serde(default)]
    risk: RiskSection,
    #[serde(default)]
    outbox: OutboxSection,
    #[serde(default)]
    sinks: Vec<SinkSection>,
    cameras: Vec<CameraSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    #[serde(default = "default_node_name")]
    name: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        Self {
            name: default_node_name(),
        }
    }
}

fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "skynet".into())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    /// `host:port` for the Prometheus endpoint; absent disables it.
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridsSection {
    file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetectSection {
    /// A manifest path (`.toml`) or a model name looked up in the model directories.
    model: Spanned<String>,
    #[serde(default = "default_threshold")]
    threshold: Spanned<f32>,
    #[serde(default = "default_nms_iou")]
    nms_iou: Spanned<f32>,
    #[serde(default = "default_workers")]
    workers: Spanned<usize>,
    #[serde(default = "one")]
    intra_threads: usize,
    #[serde(default = "default_providers")]
    execution_providers: Vec<ExecutionProvider>,
    /// Frames waiting per camera before the oldest is dropped (live) or the source waits (files).
    #[serde(default = "default_queue")]
    queue: Spanned<usize>,
    /// Path of libonnxruntime.so; otherwise ORT_DYLIB_PATH, then where set-up put it.
    onnxruntime: Option<Spanned<String>>,
}

fn default_threshold() -> Spanned<f32> {
    Spanned::new(0..0, 0.3)
}
fn default_nms_iou() -> Spanned<f32> {
    Spanned::new(0..0, 0.45)
}
fn default_workers() -> Spanned<usize> {
    Spanned::new(0..0, 2)
}
fn default_queue() -> Spanned<usize> {
    Spanned::new(0..0, 4)
}
fn one() -> usize {
    1
}
fn default_providers() -> Vec<ExecutionProvider> {
    vec![ExecutionProvider::Cpu]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RiskSection {
    #[serde(default = "default_half_life")]
    half_life_s: Spanned<f64>,
    #[serde(default = "default_close_after")]
    close_after_s: Spanned<f64>,
    #[serde(default = "default_open_at")]
    open_at: RiskLevel,
    #[serde(default)]
    levels: Option<Spanned<LevelsSection>>,
}

impl Default for RiskSection {
    fn default() -> Self {
        Self {
            half_life_s: default_half_life(),
            close_after_s: default_close_after(),
            open_at: default_open_at(),
            levels: None,
        }
    }
}

fn default_half_life() -> Spanned<f64> {
    Spanned::new(0..0, 60.0)
}
fn default_close_after() -> Spanned<f64> {
    Spanned::new(0..0, 120.0)
}
fn default_open_at() -> RiskLevel {
    RiskLevel::IV
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LevelsSection {
    iv: f32,
    iii: f32,
    ii: f32,
    i: f32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxSection {
    #[serde(default = "default_outbox_path")]
    path: Spanned<String>,
    /// Days a delivered event stays in the outbox; the incident history is kept.
    #[serde(default = "default_retain_days")]
    retain_days: Spanned<f64>,
}

impl Default for OutboxSection {
    fn default() -> Self {
        Self {
            path: default_outbox_path(),
            retain_days: default_retain_days(),
        }
    }
}

fn default_retain_days() -> Spanned<f64> {
    Spanned::new(0..0, 7.0)
}

fn default_outbox_path() -> Spanned<String> {
    Spanned::new(0..0, "${SKYNET_DATA_DIR}/outbox.sqlite".into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Jsonl,
    Stdout,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkSection {
    kind: Spanned<SinkKind>,
    name: Option<String>,
    path: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraSection {
    id: Spanned<String>,
    owner: OwnerKind,
    /// `rtsp://`, `http(s)://`, `file://` or a local path.
    uri: Spanned<String>,
    /// The grid cell's id; or give `location` and the cell is looked up.
    grid: Option<Spanned<String>>,
    /// `[longitude, latitude]` of the camera.
    location: Option<Spanned<[f64; 2]>>,
    max_frames: Option<u64>,
    /// Pace a file source at its frame rate, as a live camera.
    #[serde(default)]
    realtime: bool,
    #[serde(default)]
    zones: Vec<ZoneSection>,
    #[serde(default)]
    rules: Vec<RuleSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneSection {
    name: Spanned<String>,
    /// Points as `[x, y]` fractions of the frame, origin top-left.
    polygon: Spanned<Vec<[f64; 2]>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    ZoneIntrusion,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    name: Spanned<String>,
    kind: RuleKind,
    zone: Spanned<String>,
    #[serde(default = "default_labels")]
    labels: Spanned<Vec<String>>,
    #[serde(default = "default_min_score")]
    min_score: Spanned<f32>,
    #[serde(default = "default_min_frames")]
    min_frames: u32,
    #[serde(default = "default_cooldown")]
    cooldown_s: Spanned<f64>,
    #[serde(default = "default_category")]
    category: String,
    #[serde(default = "default_weight")]
    weight: Spanned<f32>,
}

fn default_labels() -> Spanned<Vec<String>> {
    Spanned::new(0..0, vec!["person".into()])
}
fn default_min_score() -> Spanned<f32> {
    Spanned::new(0..0, 0.5)
}
fn default_min_frames() -> u32 {
    3
}
fn default_cooldown() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}
fn default_category() -> String {
    "restricted_area_intrusion".into()
}
fn default_weight() -> Spanned<f32> {
    Spanned::new(0..0, 0.3)
}

// ---- The validated config the pipeline runs -------------------------------------------

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    pub source: PathBuf,
    pub node: String,
    pub metrics_listen: Option<SocketAddr>,
    pub onnxruntime: Option<PathBuf>,
    pub model: Arc<ModelManifest>,
    pub detector: DetectorOptions,
    pub workers: usize,
    pub queue: usize,
    pub grids: Arc<GridMap>,
    pub risk: RiskConfig,
    pub outbox: PathBuf,
    pub outbox_retention: chrono::Duration,
    pub sinks: Vec<SinkSpec>,
    pub cameras: Vec<CameraSpec>,
}

#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub kind: SinkKind,
    pub name: String,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct CameraSpec {
    pub id: CameraId,
    pub owner: OwnerKind,
    pub uri: String,
    pub grid: GridId,
    pub max_frames: Option<u64>,
    pub realtime: bool,
    pub rules: Vec<RuleSpec>,
}

impl CameraSpec {
    /// Live streams lose stale frames under overload; files replayed as fast as possible wait.
    pub fn is_live(&self) -> bool {
        let is_file = self.uri.starts_with("file://") || !self.uri.contains("://");
        self.realtime || !is_file
    }
}

/// A rule as configured; each run builds fresh rule state from it.
#[derive(Debug, Clone)]
pub enum RuleSpec {
    ZoneIntrusion(ZoneIntrusionSpec),
}

impl RuleSpec {
    pub fn name(&self) -> &str {
        match self {
            Self::ZoneIntrusion(spec) => &spec.name,
        }
    }
}

/// Turns byte offsets into `file:line:column` errors.
struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Resolves a path-like value: `${VAR}` expanded, then relative to the config file.
    fn path(&self, value: &Spanned<String>) -> Result<PathBuf, ConfigError> {
        let expanded =
            paths::expand_vars(value.get_ref()).map_err(|m| self.error(value.span(), m))?;
        let p = PathBuf::from(expanded);
        Ok(if p.is_absolute() {
            p
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        })
    }
}

impl PipelineConfig {
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
        validate(&at, file)
    }

    pub fn rule_count(&self) -> usize {
        self.cameras.iter().map(|c| c.rules.len()).sum()
    }
}

fn validate(at: &Locator<'_>, file: ConfigFile) -> Result<PipelineConfig, ConfigError> {
    let metrics_listen = match &file.metrics.listen {
        None => None,
        Some(listen) => Some(listen.get_ref().parse::<SocketAddr>().map_err(|e| {
            at.error(
                listen.span(),
                format!("`listen` must be host:port, like 127.0.0.1:9464: {e}"),
            )
        })?),
    };

    let d = &file.detect;
    let model = Arc::new(load_model(at, &d.model)?);
    for (name, value) in [("threshold", &d.threshold), ("nms_iou", &d.nms_iou)] {
        if !(0.0..=1.0).contains(value.get_ref()) {
            return Err(at.error(
                value.span(),
                format!("`{name}` must be between 0 and 1, got {}", value.get_ref()),
            ));
        }
    }
    for (name, value) in [("workers", &d.workers), ("queue", &d.queue)] {
        if *value.get_ref() == 0 {
            return Err(at.error(value.span(), format!("`{name}` must be at least 1")));
        }
    }
    let onnxruntime = d.onnxruntime.as_ref().map(|p| at.path(p)).transpose()?;
    let detector = DetectorOptions {
        threshold: *d.threshold.get_ref(),
        nms_iou: *d.nms_iou.get_ref(),
        intra_threads: d.intra_threads.max(1),
        execution_providers: d.execution_providers.clone(),
        weight_dirs: vec![paths::data_dir().join("models")],
    };

    let grids_path = at.path(&file.grids.file)?;
    let grids =
        GridMap::load(&grids_path).map_err(|e| at.error(file.grids.file.span(), e.to_string()))?;

    let risk = validate_risk(at, &file.risk, &file.node.name)?;
    let outbox = at.path(&file.outbox.path)?;
    let retain = &file.outbox.retain_days;
    if !(retain.get_ref().is_finite() && *retain.get_ref() > 0.0) {
        return Err(at.error(
            retain.span(),
            "`retain_days` must be a positive number of days",
        ));
    }
    let outbox_retention = chrono::Duration::seconds((retain.get_ref() * 86_400.0) as i64);
    let sinks = validate_sinks(at, &file.sinks)?;

    if file.cameras.is_empty() {
        return Err(at.error(0..0, "no cameras: add at least one [[cameras]] table"));
    }
    let mut cameras: Vec<CameraSpec> = Vec::with_capacity(file.cameras.len());
    for camera in &file.cameras {
        let spec = validate_camera(at, camera, &grids, model.as_ref())?;
        if cameras.iter().any(|c| c.id == spec.id) {
            return Err(at.error(
                camera.id.span(),
                format!("camera id `{}` is used twice", spec.id),
            ));
        }
        cameras.push(spec);
    }

    Ok(PipelineConfig {
        source: at.path.to_path_buf(),
        node: file.node.name.clone(),
        metrics_listen,
        onnxruntime,
        model,
        detector,
        workers: *d.workers.get_ref(),
        queue: *d.queue.get_ref(),
        grids: Arc::new(grids),
        risk,
        outbox,
        outbox_retention,
        sinks,
        cameras,
    })
}

fn load_model(at: &Locator<'_>, model: &Spanned<String>) -> Result<ModelManifest, ConfigError> {
    let value = model.get_ref();
    let manifest_path = if value.ends_with(".toml") {
        at.path(model)?
    } else {
        let config_dir = at.path.parent().unwrap_or(Path::new("."));
        let dirs = [
            config_dir.join("../models"),
            config_dir.join("models"),
            paths::data_dir().join("models"),
        ];
        let file = format!("{value}.toml");
        match dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
            Some(p) => p,
            None => {
                let looked = dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(at.error(
                    model.span(),
                    format!("unknown model `{value}`: no manifest {file} in {looked}"),
                ));
            }
        }
    };
    if !manifest_path.is_file() {
        return Err(at.error(
            model.span(),
            format!(
                "unknown model: manifest {} does not exist",
                manifest_path.display()
            ),
        ));
    }
    ModelManifest::load(&manifest_path).map_err(|e| at.error(model.span(), e.to_string()))
}

fn validate_risk(
    at: &Locator<'_>,
    risk: &RiskSection,
    node: &str,
) -> Result<RiskConfig, ConfigError> {
    let seconds = |v: &Spanned<f64>, name: &str| {
        if v.get_ref().is_finite() && *v.get_ref() > 0.0 {
            Ok(chrono::Duration::milliseconds(
                (v.get_ref() * 1000.0) as i64,
            ))
        } else {
            Err(at.error(
                v.span(),
                format!("`{name}` must be a positive number of seconds"),
            ))
        }
    };
    let thresholds = match &risk.levels {
        None => LevelThresholds::default(),
        Some(levels) => {
            let l = levels.get_ref();
            let t = LevelThresholds {
                iv: l.iv,
                iii: l.iii,
                ii: l.ii,
                i: l.i,
            };
            t.validate().map_err(|m| at.error(levels.span(), m))?;
            t
        }
    };
    Ok(RiskConfig {
        node: node.to_string(),
        half_life: seconds(&risk.half_life_s, "half_life_s")?,
        close_after: seconds(&risk.close_after_s, "close_after_s")?,
        thresholds,
        open_at: risk.open_at,
        ..RiskConfig::default()
    })
}

fn validate_sinks(at: &Locator<'_>, sinks: &[SinkSection]) -> Result<Vec<SinkSpec>, ConfigError> {
    let mut specs: Vec<SinkSpec> = Vec::new();
    for sink in sinks {
        let kind = *sink.kind.get_ref();
        let name = sink.name.clone().unwrap_or_else(|| match kind {
            SinkKind::Jsonl => "jsonl".into(),
            SinkKind::Stdout => "stdout".into(),
        });
        let path = match (kind, &sink.path) {
            (SinkKind::Jsonl, Some(p)) => Some(at.path(p)?),
            (SinkKind::Jsonl, None) => {
                return Err(at.error(sink.kind.span(), "a `jsonl` sink needs a `path`"));
            }
            (SinkKind::Stdout, Some(p)) => {
                return Err(at.error(p.span(), "a `stdout` sink takes no `path`"));
            }
            (SinkKind::Stdout, None) => None,
        };
        if specs.iter().any(|s| s.name == name) {
            return Err(at.error(
                sink.kind.span(),
                format!("two sinks are named `{name}`: give each a distinct `name`"),
            ));
        }
        specs.push(SinkSpec { kind, name, path });
    }
    Ok(specs)
}

fn validate_camera(
    at: &Locator<'_>,
    camera: &CameraSection,
    grids: &GridMap,
    model: &ModelManifest,
) -> Result<CameraSpec, ConfigError> {
    let id = camera.id.get_ref().trim();
    if id.is_empty() || id.contains(char::is_whitespace) {
        return Err(at.error(
            camera.id.span(),
            "camera `id` must be non-empty, without spaces",
        ));
    }
    let grid = match (&camera.grid, &camera.location) {
        (Some(grid), _) => match grids.get(grid.get_ref()) {
            Some(g) => g.id.clone(),
            None => {
                return Err(at.error(
                    grid.span(),
                    format!(
                        "unknown grid `{}`; the grid file has: {}",
                        grid.get_ref(),
                        grids.ids().join(", ")
                    ),
                ));
            }
        },
        (None, Some(location)) => {
            let [lon, lat] = *location.get_ref();
            match grids.locate(lon, lat) {
                Some(g) => g.id.clone(),
                None => {
                    return Err(at.error(
                        location.span(),
                        format!("location [{lon}, {lat}] is outside every grid cell"),
                    ));
                }
            }
        }
        (None, None) => {
            return Err(at.error(
                camera.id.span(),
                format!("camera `{id}` needs a `grid` or a `location`"),
            ));
        }
    };
    let uri = if camera.uri.get_ref().contains("://") {
        paths::expand_vars(camera.uri.get_ref()).map_err(|m| at.error(camera.uri.span(), m))?
    } else {
        at.path(&camera.uri)?.to_string_lossy().into_owned()
    };

    let mut zones: Vec<Zone> = Vec::new();
    for zone in &camera.zones {
        let z = Zone::new(zone.name.get_ref(), zone.polygon.get_ref()).map_err(|e| {
            at.error(
                zone.polygon.span(),
                format!("invalid polygon for zone `{}`: {e}", zone.name.get_ref()),
            )
        })?;
        if zones.iter().any(|other| other.name == z.name) {
            return Err(at.error(
                zone.name.span(),
                format!("zone `{}` is defined twice on camera `{id}`", z.name),
            ));
        }
        zones.push(z);
    }

    let mut rules = Vec::new();
    for rule in &camera.rules {
        let Some(zone) = zones.iter().find(|z| z.name == *rule.zone.get_ref()) else {
            let known: Vec<&str> = zones.iter().map(|z| z.name.as_str()).collect();
            return Err(at.error(
                rule.zone.span(),
                format!(
                    "unknown zone `{}`; camera `{id}` has: {}",
                    rule.zone.get_ref(),
                    known.join(", ")
                ),
            ));
        };
        if let Some(unknown) = rule
            .labels
            .get_ref()
            .iter()
            .find(|l| !model.labels.contains(l))
        {
            return Err(at.error(
                rule.labels.span(),
                format!(
                    "label `{unknown}` is not one model `{}` detects",
                    model.model.name
                ),
            ));
        }
        if rules
            .iter()
            .any(|r: &RuleSpec| r.name() == rule.name.get_ref())
        {
            return Err(at.error(
                rule.name.span(),
                format!(
                    "rule `{}` is defined twice on camera `{id}`",
                    rule.name.get_ref()
                ),
            ));
        }
        let min_score = *rule.min_score.get_ref();
        if !(0.0..=1.0).contains(&min_score) {
            return Err(at.error(
                rule.min_score.span(),
                format!("`min_score` must be between 0 and 1, got {min_score}"),
            ));
        }
        let cooldown_s = *rule.cooldown_s.get_ref();
        if !(cooldown_s.is_finite() && cooldown_s >= 0.0) {
            return Err(at.error(
                rule.cooldown_s.span(),
                format!(
                    "`cooldown_s` must be zero or a positive number of seconds, got {cooldown_s}"
                ),
            ));
        }
        let weight = *rule.weight.get_ref();
        if !(weight > 0.0 && weight <= 1.0) {
            return Err(at.error(
                rule.weight.span(),
                format!("`weight` must be in (0, 1], got {weight}"),
            ));
        }
        let spec = ZoneIntrusionSpec {
            name: rule.name.get_ref().clone(),
            zone: zone.clone(),
            labels: rule.labels.get_ref().clone(),
            min_score,
            min_frames: rule.min_frames.max(1),
            cooldown: chrono::Duration::milliseconds((cooldown_s * 1000.0) as i64),
            category: rule.category.clone(),
            weight,
        };
        rules.push(match rule.kind {
            RuleKind::ZoneIntrusion => RuleSpec::ZoneIntrusion(spec),
        });
    }

    Ok(CameraSpec {
        id: CameraId::new(id),
        owner: camera.owner,
        uri,
        grid,
        max_frames: camera.max_frames,
        realtime: camera.realtime,
        rules,
    })
}
