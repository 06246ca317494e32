//! Hot reload (`skynet run`): SIGHUP, or with `--watch` a change of the config file, loads
//! the config again; the old and new files are diffed and only what changed is rebuilt.
//!
//! - Live: score thresholds (`[detect] threshold` upwards, `[detect.classes]`, a camera's
//!   `[cameras.classes]`: each camera's [`DetectionFilter`] in place, with the console's saved
//!   edits merged over them, under the console's threshold-write lock), a camera's rules and
//!   zones (rebuilt in the rules stage between frames; its tracker and each kept rule's
//!   memory go on), and a camera's source (`uri` and the other keys of its source kind, `fps`:
//!   that camera's source alone is restarted into the same queue and clock; the other cameras
//!   are not touched).
//! - Everything else needs a restart: such a reload is refused with the reason, counted as
//!   `outcome="error"`, and the running config goes on, as it does for an invalid file.
//! - A checked reload is applied thresholds, rules, sources: a later step that fails (a
//!   source that cannot be restarted included) leaves what was applied, counted as
//!   `outcome="error"` (`config reload partly applied`).
//! - A refusal's reason that may repeat a secret (`@`, `://`) is logged and audited as its
//!   location and key only (`scrub`).
//!
//! The file is polled (every second: its content's hash), not watched with inotify: an editor
//! that replaces the file, or a config map's symlink swap, is seen the same way. A change is
//! taken once the content has stayed the same for one poll (an editor's several writes make
//! one reload); a content already tried is not tried again.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use skynet_core::{DeviceId, Shutdown};
use skynet_detect::DetectionFilter;

use super::rules::RulesControl;
use super::{POLL, PipelineError, ReloadOptions};
use crate::config::{CameraSpec, PipelineConfig};

/// How often a watched file is read.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What of a changed camera table the reload applies, by key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CameraKey {
    /// `classes`: its score and area limits.
    Thresholds,
    /// `rules`, `zones`: its rules, rebuilt.
    Rules,
    /// Restart-only keys of every camera.
    Restart,
    /// `fps`, and every key of its source kind (`uri`, `realtime`, ...): its source restarted.
    Source,
}

fn camera_key(key: &str) -> CameraKey {
    match key {
        "classes" => CameraKey::Thresholds,
        "rules" | "zones" => CameraKey::Rules,
        // Where the camera is, whose it is, and what is built once around its queue.
        // Event clips: the ring is built with the source's delivery, the writer at start.
        "id" | "owner" | "grid" | "location" | "offline_after_s" | "motion" | "privacy_masks"
        | "inference_interval" | "tracker" | "clips" => CameraKey::Restart,
        // Patrols are set up at start (`[[patrols]]` itself is a restart-only section).
        "patrol" => CameraKey::Restart,
        _ => CameraKey::Source,
    }
}

/// What changed between two config files, by component.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct ConfigDiff {
    pub cameras_added: Vec<String>,
    pub cameras_removed: Vec<String>,
    /// Cameras whose source kind's keys or `fps` changed.
    pub camera_sources: Vec<String>,
    /// Cameras whose `[cameras.classes]` changed.
    pub camera_thresholds: Vec<String>,
    /// Cameras whose `rules` or `zones` changed.
    pub camera_rules: Vec<String>,
    /// Per camera, the changed keys that only a restart applies.
    pub camera_restart: BTreeMap<String, Vec<String>>,
    /// `[detect] threshold`.
    pub detect_threshold: bool,
    /// `[detect.classes]`.
    pub detect_classes: bool,
    /// The other `[detect]` keys that changed (model, workers, ...): restart-only.
    pub detect_restart: Vec<String>,
    /// `[risk]`: restart-only.
    pub risk: bool,
    /// The other top-level sections that changed (`outbox`, `sinks`, `api`, ...):
    /// restart-only.
    pub sections: Vec<String>,
    /// Old and new values of the changed score and area limits (plain numbers, never a
    /// string of the file: those may be secrets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<ValueChange>,
}

/// One changed score or area limit: `[detect] threshold` (`detect.threshold`),
/// `[detect.classes]` (`detect.classes.LABEL.KEY`) or a camera's `classes`
/// (`classes.LABEL.KEY` with its `camera`). `None`: not given on that side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ValueChange {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    pub key: String,
    pub old: Option<f64>,
    pub new: Option<f64>,
}

/// The keys of a class's limits whose values go into a diff.
const LIMIT_KEYS: [&str; 3] = ["min_score", "min_area", "max_area"];

/// A value as a plain number; anything else (a string above all) is never shown.
fn number(value: Option<&toml::Value>) -> Option<f64> {
    match value? {
        toml::Value::Float(f) => Some(*f),
        toml::Value::Integer(i) => Some(*i as f64),
        _ => None,
    }
}

/// The changed limits between two `classes` tables, as `{prefix}LABEL.KEY`.
fn limit_changes(
    camera: Option<&str>,
    prefix: &str,
    old: Option<&toml::Table>,
    new: Option<&toml::Table>,
) -> Vec<ValueChange> {
    let mut changes = Vec::new();
    for label in changed_keys(old, new) {
        let (was, now) = (
            old.and_then(|t| table(t, &label)),
            new.and_then(|t| table(t, &label)),
        );
        for key in LIMIT_KEYS {
            let (o, n) = (was.and_then(|t| t.get(key)), now.and_then(|t| t.get(key)));
            if o != n {
                changes.push(ValueChange {
                    camera: camera.map(str::to_string),
                    key: format!("{prefix}{label}.{key}"),
                    old: number(o),
                    new: number(n),
                });
            }
        }
    }
    changes
}

fn table<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Table> {
    t.get(key).and_then(toml::Value::as_table)
}

/// The keys whose values differ between `old` and `new` (absent on one side included).
fn changed_keys(old: Option<&toml::Table>, new: Option<&toml::Table>) -> Vec<String> {
    let empty = toml::Table::new();
    let (old, new) = (old.unwrap_or(&empty), new.unwrap_or(&empty));
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .cloned()
        .collect()
}

/// `[[cameras]]` by id.
fn cameras(t: &toml::Table) -> BTreeMap<String, &toml::Table> {
    t.get("cameras")
        .and_then(toml::Value::as_array)
        .map(|cameras| {
            cameras
                .iter()
                .filter_map(toml::Value::as_table)
                .filter_map(|c| Some((c.get("id")?.as_str()?.to_string(), c)))
                .collect()
        })
        .unwrap_or_default()
}

impl ConfigDiff {
    /// Compares two config files as written (both parsed as TOML; the new one validated).
    pub(crate) fn between(old: &toml::Table, new: &toml::Table) -> Self {
        let mut diff = ConfigDiff::default();
        for section in changed_keys(Some(old), Some(new)) {
            match section.as_str() {
                "cameras" => {}
                "risk" => diff.risk = true,
                "detect" => {
                    for key in changed_keys(table(old, "detect"), table(new, "detect")) {
                        let (old, new) = (table(old, "detect"), table(new, "detect"));
                        match key.as_str() {
                            "threshold" => {
                                diff.detect_threshold = true;
                                diff.values.push(ValueChange {
                                    camera: None,
                                    key: "detect.threshold".into(),
                                    old: number(old.and_then(|t| t.get("threshold"))),
                                    new: number(new.and_then(|t| t.get("threshold"))),
                                });
                            }
                            "classes" => {
                                diff.detect_classes = true;
                                diff.values.extend(limit_changes(
                                    None,
                                    "detect.classes.",
                                    old.and_then(|t| table(t, "classes")),
                                    new.and_then(|t| table(t, "classes")),
                                ));
                            }
                            _ => diff.detect_restart.push(key),
                        }
                    }
                }
                _ => diff.sections.push(section),
            }
        }
        let (before, after) = (cameras(old), cameras(new));
        for (id, camera) in &after {
            let Some(was) = before.get(id) else {
                diff.cameras_added.push(id.clone());
                continue;
            };
            let keys = changed_keys(Some(was), Some(camera));
            let has = |kind| keys.iter().any(|k| camera_key(k) == kind);
            if has(CameraKey::Source) {
                diff.camera_sources.push(id.clone());
            }
            if has(CameraKey::Thresholds) {
                diff.camera_thresholds.push(id.clone());
                diff.values.extend(limit_changes(
                    Some(id),
                    "classes.",
                    table(was, "classes"),
                    table(camera, "classes"),
                ));
            }
            if has(CameraKey::Rules) {
                diff.camera_rules.push(id.clone());
            }
            let restart: Vec<String> = keys
                .iter()
                .filter(|k| camera_key(k) == CameraKey::Restart)
                .cloned()
                .collect();
            if !restart.is_empty() {
                diff.camera_restart.insert(id.clone(), restart);
            }
        }
        diff.cameras_removed = before
            .keys()
            .filter(|id| !after.contains_key(*id))
            .cloned()
            .collect();
        diff
    }

    pub(crate) fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }

    /// Why this change cannot be applied while running, one reason per change; empty when
    /// it can.
    pub(crate) fn needs_restart(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        for section in &self.sections {
            let name = match section.as_str() {
                "sinks" | "cameras" | "sensors" => format!("[[{section}]]"),
                _ => format!("[{section}]"),
            };
            reasons.push(format!("changing {name} needs a restart"));
        }
        for key in &self.detect_restart {
            reasons.push(format!("changing [detect] {key} needs a restart"));
        }
        if self.risk {
            reasons.push("changing [risk] needs a restart".into());
        }
        for id in &self.cameras_added {
            reasons.push(format!("adding camera `{id}` needs a restart"));
        }
        for id in &self.cameras_removed {
            reasons.push(format!("removing camera `{id}` needs a restart"));
        }
        for (id, keys) in &self.camera_restart {
            reasons.push(format!(
                "changing {} of camera `{id}` needs a restart",
                keys.iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        reasons
    }

    /// One line for the log.
    pub(crate) fn summary(&self) -> String {
        let mut parts = Vec::new();
        let list = |what: &str, ids: &[String]| {
            (!ids.is_empty()).then(|| format!("{what}: {}", ids.join(", ")))
        };
        parts.extend(list("cameras added", &self.cameras_added));
        parts.extend(list("cameras removed", &self.cameras_removed));
        parts.extend(list("camera sources", &self.camera_sources));
        parts.extend(list("camera thresholds", &self.camera_thresholds));
        parts.extend(list("camera rules", &self.camera_rules));
        for (id, keys) in &self.camera_restart {
            parts.push(format!("camera {id}: {}", keys.join(", ")));
        }
        if self.detect_threshold {
            parts.push("[detect] threshold".into());
        }
        if self.detect_classes {
            parts.push("[detect.classes]".into());
        }
        parts.extend(list("[detect]", &self.detect_restart));
        if self.risk {
            parts.push("[risk]".into());
        }
        parts.extend(list("sections", &self.sections));
        let values: Vec<String> = self
            .values
            .iter()
            .map(|v| {
                let shown =
                    |n: Option<f64>| n.map_or_else(|| "none".to_string(), |n| n.to_string());
                let camera = v
                    .camera
                    .as_ref()
                    .map(|c| format!("{c} "))
                    .unwrap_or_default();
                format!("{camera}{} {} -> {}", v.key, shown(v.old), shown(v.new))
            })
            .collect();
        parts.extend(list("values", &values));
        if parts.is_empty() {
            "nothing changed".into()
        } else {
            parts.join("; ")
        }
    }
}

// ---- Restarting one camera's source ----------------------------------------------------

/// The reload's side of a camera's source thread: a new spec to run, and its stop signal.
pub(crate) struct SourceRestart {
    specs: crossbeam_channel::Sender<CameraSpec>,
    stop: Arc<Mutex<Shutdown>>,
}

/// The source thread's side: the stop signal of its current run, and what to run next.
pub(crate) struct SourceRestarted {
    specs: crossbeam_channel::Receiver<CameraSpec>,
    stop: Arc<Mutex<Shutdown>>,
    global: Shutdown,
}

/// A camera source with a stop signal of its own: triggered by a restart, or (by the reload
/// thread) when the pipeline stops.
pub(crate) fn source_restart(global: &Shutdown) -> (SourceRestart, SourceRestarted) {
    let (specs, specs_rx) = crossbeam_channel::bounded(4);
    let stop = Arc::new(Mutex::new(Shutdown::new()));
    (
        SourceRestart {
            specs,
            stop: Arc::clone(&stop),
        },
        SourceRestarted {
            specs: specs_rx,
            stop,
            global: global.clone(),
        },
    )
}

impl SourceRestart {
    /// Stops the running source; its thread starts `spec` into the same queue. `Err`: the
    /// camera's thread has ended (a file that finished).
    fn restart(&self, spec: CameraSpec) -> Result<(), String> {
        self.specs.try_send(spec).map_err(|e| match e {
            crossbeam_channel::TrySendError::Disconnected(_) => {
                "its source has ended; the new source starts with the next start".to_string()
            }
            crossbeam_channel::TrySendError::Full(_) => {
                "restarts of its source are still waiting".to_string()
            }
        })?;
        self.stop();
        Ok(())
    }

    fn stop(&self) {
        self.stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .trigger();
    }
}

impl SourceRestarted {
    /// The stop signal of the run about to start.
    pub(crate) fn stop(&self) -> Shutdown {
        self.stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After a run ended: the spec to run next (the latest sent), with a fresh stop signal;
    /// `None` when nothing was sent or the pipeline stops.
    pub(crate) fn next(&self) -> Option<CameraSpec> {
        let spec = self.specs.try_iter().last()?;
        let mut stop = self.stop.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked under the lock: the reload thread triggers the stop signal in it once the
        // pipeline stops, so a run started here is always stopped.
        if self.global.is_triggered() {
            return None;
        }
        *stop = Shutdown::new();
        Some(spec)
    }
}

// ---- The reload thread -------------------------------------------------------------------

/// A running camera as a reload changes it.
pub(crate) struct CameraHandle {
    pub id: DeviceId,
    pub filter: Arc<DetectionFilter>,
    /// `None`: its source cannot be restarted alone (an edge's camera).
    pub restart: Option<SourceRestart>,
}

/// What the reload thread needs.
pub(crate) struct Reloader {
    pub options: ReloadOptions,
    /// The config the pipeline started with.
    pub running: PipelineConfig,
    pub cameras: Vec<CameraHandle>,
    pub rules: crossbeam_channel::Sender<RulesControl>,
    pub console: Option<Arc<skynet_serve::console::Console>>,
    pub shutdown: Shutdown,
}

/// The running reload thread.
pub(crate) struct Running {
    stop: Shutdown,
    handle: JoinHandle<()>,
}

impl Running {
    /// Stops the thread (and with it every camera's own stop signal) and waits for it.
    pub(crate) fn stop(self) {
        self.stop.trigger();
        let _ = self.handle.join();
    }
}

fn hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// The outcome of one reload: applied, refused with the reason (nothing applied), or
/// partly applied (what was applied before the failure stays).
enum Outcome {
    Applied(ConfigDiff),
    Refused(String, Option<ConfigDiff>),
    Partial(String, ConfigDiff),
}

/// Why applying a checked reload failed.
enum ApplyError {
    /// Before anything was applied.
    Nothing(String),
    /// After some of it was.
    Partly(String),
}

/// A refusal's reason as the log and the audit log get it: a config error that may repeat
/// a value of the file with a secret in it (a URL's `user:password@`) keeps only where it
/// is and which key, and points at `skynet check` for the rest.
fn scrub(reason: &str) -> String {
    if !(reason.contains('@') || reason.contains("://")) {
        return reason.to_string();
    }
    // `file:line:col: message`: the location is kept.
    let location = reason
        .match_indices(": ")
        .map(|(i, _)| &reason[..i])
        .find(|head| {
            let mut parts = head.rsplitn(3, ':');
            let (col, line) = (parts.next(), parts.next());
            parts.next().is_some()
                && [col, line].iter().all(|p| {
                    p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                })
                && !head.contains('@')
                && !head.contains("://")
        });
    // The first `key` quoted in the message, when it looks like a key and nothing else.
    let key = reason.split('`').skip(1).step_by(2).find(|k| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-[]".contains(&b))
    });
    let what = match key {
        Some(key) => format!("invalid value for `{key}`"),
        None => "invalid value".to_string(),
    };
    match location {
        Some(location) => format!("{location}: {what} (details on `skynet check`)"),
        None => format!("{what} (details on `skynet check`)"),
    }
}

/// A camera's `classes` with the console's saved scores over their `min_score`, as one table
/// to apply at once. Edits for labels the camera does not keep, or out of `[floor, 1]`, are
/// left out and returned (the file's value stays for those).
fn merge_saved(
    camera_limits: &skynet_detect::filter::ClassLimitsTable,
    saved: &BTreeMap<String, f32>,
    known: &BTreeMap<String, f32>,
    floor: f32,
) -> (skynet_detect::filter::ClassLimitsTable, Vec<String>) {
    let mut merged = camera_limits.clone();
    let mut skipped = Vec::new();
    for (label, &score) in saved {
        if !(known.contains_key(label) && score.is_finite() && (floor..=1.0).contains(&score)) {
            skipped.push(label.clone());
            continue;
        }
        merged.entry(label.clone()).or_default().min_score = Some(f64::from(score));
    }
    (merged, skipped)
}

struct State {
    reloader: Reloader,
    /// The file as last applied.
    table: toml::Table,
    /// The threshold the running detector drops boxes below (fixed until a restart).
    detector_threshold: f32,
}

/// Starts the reload thread. It also hands the pipeline's stop signal to every camera with
/// one of its own, so it runs until the pipeline stops or [`Running::stop`].
pub(crate) fn start(reloader: Reloader) -> Result<Running, PipelineError> {
    let stop = Shutdown::new();
    let path = reloader.options.config_path.clone();
    let running = match &reloader.options.running_text {
        Some(text) => Ok(text.clone()),
        None => std::fs::read_to_string(&path),
    };
    let table = match running
        .map_err(|e| e.to_string())
        .and_then(|text| toml::from_str::<toml::Table>(&text).map_err(|e| e.to_string()))
    {
        Ok(table) => table,
        Err(e) => {
            // Changed since the start: the first reload compares with nothing and is refused.
            tracing::warn!(config = %path.display(), error = %e, "hot reload: the config file cannot be read again; a reload needs a restart");
            toml::Table::new()
        }
    };
    let state = State {
        detector_threshold: reloader.running.detector.threshold,
        reloader,
        table,
    };
    let own_stop = stop.clone();
    let handle = std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || state.run(&own_stop))
        .map_err(|source| PipelineError::Spawn {
            stage: "reload".into(),
            source,
        })?;
    Ok(Running { stop, handle })
}

/// However the thread ends (or if it never started), every camera with a stop signal of its
/// own is stopped with it: nothing else would stop them.
impl Drop for State {
    fn drop(&mut self) {
        for camera in &self.reloader.cameras {
            if let Some(restart) = &camera.restart {
                restart.stop();
            }
        }
    }
}

impl State {
    fn run(mut self, stop: &Shutdown) {
        let path = self.reloader.options.config_path.clone();
        let hup = Arc::new(AtomicBool::new(false));
        let registered = signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup))
            .map_err(|e| tracing::warn!(error = %e, "hot reload: SIGHUP cannot be caught; it stops the process"))
            .ok();
        for outcome in ["ok", "error"] {
            metrics::counter!("skynet_config_reloads_total", "outcome" => outcome).increment(0);
        }
        tracing::info!(config = %path.display(), watch = self.reloader.options.watch, "hot reload: SIGHUP reloads the config{}", if self.reloader.options.watch { ", and so does a change of the file" } else { "" });
        // A change made while the pipeline started is seen by the first watch.
        let mut tried = match &self.reloader.options.running_text {
            Some(text) => Some(hash(text)),
            None => std::fs::read_to_string(&path).ok().map(|t| hash(&t)),
        };
        let mut pending: Option<u64> = None;
        let mut last_watch = Instant::now();
        while !stop.is_triggered() && !self.reloader.shutdown.is_triggered() {
            std::thread::sleep(POLL);
            if hup.swap(false, Ordering::Relaxed) {
                pending = None;
                tried = self.reload_guarded(&path, "SIGHUP");
                continue;
            }
            if !self.reloader.options.watch || last_watch.elapsed() < WATCH_EVERY {
                continue;
            }
            last_watch = Instant::now();
            // Unreadable for a moment (being replaced): looked at again next time.
            let Some(now) = std::fs::read_to_string(&path).ok().map(|t| hash(&t)) else {
                continue;
            };
            if Some(now) == tried {
                pending = None;
            } else if pending == Some(now) {
                // The same for a whole poll: the writes are done.
                pending = None;
                tried = self.reload_guarded(&path, "file changed");
            } else {
                pending = Some(now);
            }
        }
        // The pipeline stops: so does every camera with its own stop signal (`Drop`).
        if let Some(id) = registered {
            signal_hook::low_level::unregister(id);
        }
    }

    /// One reload; a panic in it is logged and counted, never the end of the thread (which
    /// must still hand the stop signal to the cameras). Returns the hash of the text tried.
    fn reload_guarded(&mut self, path: &Path, trigger: &str) -> Option<u64> {
        let text = std::fs::read_to_string(path);
        let tried = text.as_ref().ok().map(|t| hash(t));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &text {
            Ok(text) => self.reload(path, text),
            Err(e) => Outcome::Refused(format!("cannot read {}: {e}", path.display()), None),
        }))
        .unwrap_or_else(|panic| {
            Outcome::Refused(
                format!(
                    "the reload panicked: {}",
                    super::panic_message(panic.as_ref())
                ),
                None,
            )
        });
        self.report(path, trigger, outcome);
        tried
    }

    fn reload(&mut self, path: &Path, text: &str) -> Outcome {
        let new = match PipelineConfig::parse(path, text) {
            Ok(config) => config,
            Err(e) => return Outcome::Refused(e.to_string(), None),
        };
        let table: toml::Table = match toml::from_str(text) {
            Ok(table) => table,
            Err(e) => return Outcome::Refused(e.to_string(), None),
        };
        let diff = ConfigDiff::between(&self.table, &table);
        if diff.is_empty() {
            // Comments or layout only.
            self.table = table;
            return Outcome::Applied(diff);
        }
        let mut reasons = diff.needs_restart();
        if diff.detect_threshold && new.detector.threshold < self.detector_threshold {
            reasons.push(format!(
                "lowering [detect] threshold below {} (the running detector's) needs a restart",
                self.detector_threshold
            ));
        }
        for id in &diff.camera_sources {
            let (Some(old), Some(spec)) = (self.running_camera(id), new_camera(&new, id)) else {
                continue;
            };
            if old.is_live() != spec.is_live() {
                reasons.push(format!(
                    "switching camera `{id}` between a live stream and a file replay needs a restart"
                ));
            } else if !old.is_live() {
                // Its frames would come again from the file's start, older than its clock.
                reasons.push(format!(
                    "changing the source of camera `{id}`, a file replayed at full speed, needs a restart"
                ));
            }
            if self.handle(id).is_none_or(|h| h.restart.is_none()) {
                reasons.push(format!(
                    "changing the source of camera `{id}` needs a restart here (an edge's camera runs under its lease, a patrol's is opened by its patrol)"
                ));
            }
        }
        if !reasons.is_empty() {
            return Outcome::Refused(reasons.join("; "), Some(diff));
        }
        match self.apply(&diff, &new) {
            Ok(()) => {}
            Err(ApplyError::Nothing(e)) => return Outcome::Refused(e, Some(diff)),
            // Only what could not be checked before fails here; what was applied stays.
            Err(ApplyError::Partly(e)) => return Outcome::Partial(e, diff),
        }
        self.table = table;
        self.reloader.running = new;
        Outcome::Applied(diff)
    }

    fn running_camera(&self, id: &str) -> Option<&CameraSpec> {
        new_camera(&self.reloader.running, id)
    }

    fn handle(&self, id: &str) -> Option<&CameraHandle> {
        self.reloader.cameras.iter().find(|c| c.id.as_str() == id)
    }

    fn apply(&mut self, diff: &ConfigDiff, new: &PipelineConfig) -> Result<(), ApplyError> {
        // Thresholds: every camera when [detect] changed, else those whose own changed.
        let all = diff.detect_threshold || diff.detect_classes;
        let any = all || !diff.camera_thresholds.is_empty();
        if any {
            match &self.reloader.console {
                // Console threshold edits wait: read, merged and applied as one step, so a
                // change saved meanwhile is never lost from the running filter.
                Some(console) => console.with_threshold_writes(|| {
                    let saved = console.store().saved_thresholds().map_err(|e| {
                        ApplyError::Nothing(format!(
                            "the console's saved threshold changes cannot be read ({e}); applying the file's alone would undo them"
                        ))
                    })?;
                    self.apply_thresholds(all, diff, new, &saved)
                })?,
                None => self.apply_thresholds(all, diff, new, &[])?,
            }
        }
        let mut applied = any;
        let partly = |applied: bool, e: String| {
            if applied {
                ApplyError::Partly(e)
            } else {
                ApplyError::Nothing(e)
            }
        };
        for id in &diff.camera_rules {
            let Some(spec) = new_camera(new, id) else {
                continue;
            };
            self.reloader
                .rules
                .send_timeout(
                    RulesControl::Rebuild {
                        camera: spec.id.clone(),
                        rules: spec.rules.clone(),
                    },
                    Duration::from_secs(5),
                )
                .map_err(|_| partly(applied, "the rules stage has stopped".to_string()))?;
            applied = true;
        }
        let mut failed = Vec::new();
        for id in &diff.camera_sources {
            let (Some(handle), Some(spec)) = (self.handle(id), new_camera(new, id)) else {
                continue;
            };
            if let Some(restart) = &handle.restart {
                match restart.restart(spec.clone()) {
                    Ok(()) => applied = true,
                    Err(e) => {
                        tracing::warn!(camera = %id, "{e}");
                        failed.push(format!(
                            "the source of camera `{id}` was not restarted: {e}"
                        ));
                    }
                }
            }
        }
        if !failed.is_empty() {
            return Err(partly(applied, failed.join("; ")));
        }
        Ok(())
    }

    /// Each camera's thresholds from the file with the console's `saved` edits over them,
    /// applied at once.
    fn apply_thresholds(
        &self,
        all: bool,
        diff: &ConfigDiff,
        new: &PipelineConfig,
        saved: &[(String, BTreeMap<String, f32>)],
    ) -> Result<(), ApplyError> {
        let mut applied = false;
        for camera in &self.reloader.cameras {
            let id = camera.id.as_str();
            if !all && !diff.camera_thresholds.iter().any(|c| c == id) {
                continue;
            }
            let Some(spec) = new_camera(new, id) else {
                continue;
            };
            let live = camera.filter.thresholds();
            let edits: BTreeMap<String, f32> = saved
                .iter()
                .filter(|(c, _)| c == id)
                .flat_map(|(_, e)| e.clone())
                .collect();
            let (merged, skipped) =
                merge_saved(&spec.classes, &edits, &live.snapshot(), live.floor());
            for label in skipped {
                tracing::warn!(camera = %id, label = %label, "a saved console threshold no longer applies; the file's stays");
            }
            let scores = camera
                .filter
                .reconfigure(&new.classes, &merged, new.detector.threshold)
                .map_err(|e| {
                    let e = format!("camera `{id}`: {e}");
                    if applied {
                        ApplyError::Partly(e)
                    } else {
                        ApplyError::Nothing(e)
                    }
                })?;
            applied = true;
            // A saved edit below the reloaded `[detect] threshold` still wins (the console's
            // edits stay over the file's, see the README); still under the lock.
            let lower: BTreeMap<String, f32> = edits
                .iter()
                .filter(|(label, score)| scores.get(*label).is_some_and(|s| **score < *s))
                .map(|(l, s)| (l.clone(), *s))
                .collect();
            if !lower.is_empty()
                && let Err(e) = live.set(&lower)
            {
                tracing::warn!(camera = %id, error = %e, "a saved console threshold no longer applies; the file's stays");
            }
            tracing::info!(camera = %id, file = ?scores, now = ?live.snapshot(), "thresholds reloaded");
        }
        Ok(())
    }

    /// Logs, counts and audits one reload.
    fn report(&self, path: &Path, trigger: &str, outcome: Outcome) {
        let (label, diff, reason) = match &outcome {
            Outcome::Applied(diff) => {
                tracing::info!(config = %path.display(), trigger, changes = %diff.summary(), "config reloaded");
                ("ok", Some(diff), None)
            }
            Outcome::Refused(reason, diff) => {
                let reason = scrub(reason);
                tracing::error!(config = %path.display(), trigger, reason = %reason, "config reload refused; the running config goes on");
                ("error", diff.as_ref(), Some(reason))
            }
            Outcome::Partial(reason, diff) => {
                let reason = scrub(reason);
                tracing::error!(config = %path.display(), trigger, changes = %diff.summary(), reason = %reason, "config reload partly applied: what was applied before the failure stays; the next reload compares with the config last applied in full");
                ("error", Some(diff), Some(reason))
            }
        };
        metrics::counter!("skynet_config_reloads_total", "outcome" => label).increment(1);
        if let Some(console) = &self.reloader.console {
            let after = serde_json::json!({
                "outcome": label,
                "trigger": trigger,
                "reason": reason,
                "diff": diff,
            });
            if let Err(e) = console.store().audit(
                "reload",
                "system",
                "config_reload",
                &path.display().to_string(),
                None,
                Some(&after),
            ) {
                tracing::warn!(error = %e, "could not write the config reload to the audit log");
            }
        }
    }
}

fn new_camera<'a>(config: &'a PipelineConfig, id: &str) -> Option<&'a CameraSpec> {
    config.cameras.iter().find(|c| c.id.as_str() == id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    const BASE: &str = r#"
[node]
name = "n"
[grids]
file = "g.geojson"
[detect]
model = "m.toml"
threshold = 0.3
[detect.classes.person]
min_score = 0.4
[outbox]
path = "o.sqlite"
[[sinks]]
kind = "stdout"
[[cameras]]
id = "a"
owner = "police"
grid = "G-1"
uri = "a.avi"
[cameras.classes.person]
min_score = 0.5
[[cameras.rules]]
name = "r"
kind = "zone_intrusion"
zone = "z"
[[cameras]]
id = "b"
owner = "police"
grid = "G-1"
uri = "b.avi"
"#;

    fn diff(new: &str) -> ConfigDiff {
        ConfigDiff::between(&parse(BASE), &parse(new))
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let d = diff(BASE);
        assert!(d.is_empty(), "{d:?}");
        assert!(d.needs_restart().is_empty());
        assert_eq!(d.summary(), "nothing changed");
    }

    #[test]
    fn a_cameras_threshold_is_live_and_names_that_camera_only() {
        let d = diff(&BASE.replace("min_score = 0.5", "min_score = 0.7"));
        assert_eq!(d.camera_thresholds, vec!["a"]);
        assert!(d.camera_sources.is_empty() && d.camera_rules.is_empty());
        assert!(d.needs_restart().is_empty(), "{:?}", d.needs_restart());
        let d = diff(&BASE.replace("threshold = 0.3", "threshold = 0.35"));
        assert!(d.detect_threshold && !d.detect_classes);
        assert!(d.needs_restart().is_empty());
        let d = diff(&BASE.replace("min_score = 0.4", "min_score = 0.45"));
        assert!(d.detect_classes && !d.detect_threshold);
    }

    #[test]
    fn rules_zones_and_sources_are_live_per_camera() {
        let d = diff(&BASE.replace("zone = \"z\"", "zone = \"y\""));
        assert_eq!(d.camera_rules, vec!["a"]);
        let d = diff(&BASE.replace("uri = \"b.avi\"", "uri = \"c.avi\""));
        assert_eq!(d.camera_sources, vec!["b"]);
        assert!(d.needs_restart().is_empty());
        let d = diff(&BASE.replace("uri = \"b.avi\"", "uri = \"b.avi\"\nfps = 5.0"));
        assert_eq!(d.camera_sources, vec!["b"]);
    }

    #[test]
    fn restart_only_changes_are_refused_with_the_reason() {
        let d = diff(&BASE.replace("path = \"o.sqlite\"", "path = \"p.sqlite\""));
        assert_eq!(d.sections, vec!["outbox"]);
        assert_eq!(d.needs_restart(), vec!["changing [outbox] needs a restart"]);
        let d = diff(&BASE.replace("kind = \"stdout\"", "kind = \"jsonl\""));
        assert_eq!(
            d.needs_restart(),
            vec!["changing [[sinks]] needs a restart"]
        );
        let d = diff(&BASE.replace("model = \"m.toml\"", "model = \"n.toml\"\nworkers = 4"));
        assert_eq!(
            d.needs_restart(),
            vec![
                "changing [detect] model needs a restart",
                "changing [detect] workers needs a restart"
            ]
        );
        let d = diff(&format!("{BASE}\n[risk]\nhalf_life_s = 30\n"));
        assert!(d.risk);
        assert_eq!(d.needs_restart(), vec!["changing [risk] needs a restart"]);
        let d = diff(&BASE.replace(
            "grid = \"G-1\"\nuri = \"b.avi\"",
            "grid = \"G-2\"\nuri = \"b.avi\"",
        ));
        assert_eq!(
            d.needs_restart(),
            vec!["changing `grid` of camera `b` needs a restart"]
        );
    }

    /// A restart stops the running source and hands its thread the new spec with a fresh
    /// stop signal; once the pipeline stops, nothing starts again.
    #[test]
    fn a_source_restart_stops_the_run_and_starts_the_next_unless_the_pipeline_stops() {
        let config = PipelineConfig::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/demo.toml"),
        )
        .unwrap();
        let spec = config.cameras[0].clone();
        let global = Shutdown::new();
        let (restart, restarted) = source_restart(&global);
        let first = restarted.stop();
        assert!(restarted.next().is_none(), "nothing sent: the thread ends");
        restart.restart(spec.clone()).unwrap();
        assert!(first.is_triggered(), "the running source is stopped");
        assert_eq!(restarted.next().map(|s| s.id), Some(spec.id.clone()));
        let second = restarted.stop();
        assert!(
            !second.is_triggered(),
            "the next run has a fresh stop signal"
        );
        global.trigger();
        restart.restart(spec.clone()).unwrap();
        assert!(second.is_triggered());
        assert!(restarted.next().is_none(), "the pipeline stops: no new run");
        drop(restarted);
        assert!(restart.restart(spec).is_err(), "the thread has ended");
    }

    #[test]
    fn the_diff_has_old_and_new_values_of_the_live_limits_only() {
        let d = diff(
            &BASE
                .replace("min_score = 0.5", "min_score = 0.99\nmax_area = 0.5")
                .replace("threshold = 0.3", "threshold = 0.35"),
        );
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json["values"],
            serde_json::json!([
                {"key": "detect.threshold", "old": 0.3, "new": 0.35},
                {"camera": "a", "key": "classes.person.min_score", "old": 0.5, "new": 0.99},
                {"camera": "a", "key": "classes.person.max_area", "old": null, "new": 0.5},
            ])
        );
        assert!(
            d.summary().contains(
                "values: detect.threshold 0.3 -> 0.35, a classes.person.min_score 0.5 -> 0.99"
            ),
            "{}",
            d.summary()
        );
        let d = diff(&BASE.replace("min_score = 0.4", "min_score = 0.45"));
        assert_eq!(
            serde_json::to_value(&d).unwrap()["values"],
            serde_json::json!([{"key": "detect.classes.person.min_score", "old": 0.4, "new": 0.45}])
        );
        // A string of the file never goes into the diff: only the changed key names.
        let d = diff(&BASE.replace(
            "kind = \"stdout\"",
            "kind = \"webhook\"\nurl = \"http://u:hunter2@x/\"",
        ));
        let json = serde_json::to_string(&d).unwrap();
        assert!(
            !json.contains("hunter2") && !json.contains("values"),
            "{json}"
        );
        assert!(!d.summary().contains("hunter2"));
    }

    #[test]
    fn saved_console_edits_are_merged_over_the_files_limits() {
        let mut file = skynet_detect::filter::ClassLimitsTable::new();
        file.insert(
            "person".into(),
            skynet_detect::filter::ClassLimits {
                min_score: Some(0.5),
                min_area: Some(0.01),
                max_area: None,
            },
        );
        let known: BTreeMap<String, f32> = [("person".into(), 0.5), ("car".into(), 0.3)].into();
        let saved: BTreeMap<String, f32> = [
            ("person".into(), 0.7),
            ("car".into(), 0.6),
            ("dog".into(), 0.6),
            ("bike".into(), 0.1),
        ]
        .into();
        let (merged, skipped) = merge_saved(&file, &saved, &known, 0.25);
        assert_eq!(merged["person"].min_score, Some(f64::from(0.7f32)));
        assert_eq!(
            merged["person"].min_area,
            Some(0.01),
            "the file's area stays"
        );
        assert_eq!(merged["car"].min_score, Some(f64::from(0.6f32)));
        assert_eq!(merged["car"].min_area, None);
        assert_eq!(
            skipped,
            vec!["bike", "dog"],
            "unknown label or below the floor"
        );
        assert!(!merged.contains_key("dog"));
        let (merged, skipped) = merge_saved(&file, &BTreeMap::new(), &known, 0.25);
        assert_eq!(merged, file);
        assert!(skipped.is_empty());
    }

    #[test]
    fn a_refusal_that_may_repeat_a_secret_keeps_only_where_and_which_key() {
        let reason = "/etc/skynet.toml:12:7: `url` = `htp//user:hunter2pass@example.com/x` is not an http:// or https:// URL";
        assert_eq!(
            scrub(reason),
            "/etc/skynet.toml:12:7: invalid value for `url` (details on `skynet check`)"
        );
        let reason = "/etc/skynet.toml:3:1: bad `sinks[0].url`: htp//u:p@x";
        assert_eq!(
            scrub(reason),
            "/etc/skynet.toml:3:1: invalid value for `sinks[0].url` (details on `skynet check`)"
        );
        assert_eq!(
            scrub("no location: u:p@x"),
            "invalid value (details on `skynet check`)"
        );
        let plain = "/etc/skynet.toml:3:1: `classes.person.min_score` = 1.5 is outside [0, 1]";
        assert_eq!(scrub(plain), plain);
    }

    #[test]
    fn cameras_added_or_removed_need_a_restart() {
        let more = format!(
            "{BASE}\n[[cameras]]\nid = \"c\"\nowner = \"police\"\ngrid = \"G-1\"\nuri = \"c.avi\"\n"
        );
        let d = diff(&more);
        assert_eq!(d.cameras_added, vec!["c"]);
        assert_eq!(d.needs_restart(), vec!["adding camera `c` needs a restart"]);
        let fewer = BASE.split("[[cameras]]\nid = \"b\"").next().unwrap();
        let d = diff(fewer);
        assert_eq!(d.cameras_removed, vec!["b"]);
        assert_eq!(
            d.needs_restart(),
            vec!["removing camera `b` needs a restart"]
        );
    }
}
