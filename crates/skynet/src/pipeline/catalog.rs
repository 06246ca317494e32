//! Platform channels placed by their catalog position (issue 27).
//!
//! A `[[platforms]]` channel that the config does not place (`channels = "all"`, an id alone,
//! or a `[[platforms.channels]]` table without `grid` or `location`) becomes a camera when a
//! lower platform's catalog gives its `Longitude`/`Latitude` inside a grid cell. The camera
//! is made from the channel's table (its keys were checked at load) and started while the
//! node runs, the way a configured camera is at the start: its stage reaches the rules stage
//! first, then its source starts, then every detection worker takes its queue.
//!
//! A channel with neither a cell in the config nor a position in the catalog is listed (the
//! logs, `skynet platforms list`) and not analysed; so is one whose position is outside
//! every cell. A placed camera stays where it was placed until the next start: a catalog
//! that moves it is logged, and the camera's history (open incidents, rules' memory) stays
//! in its first cell.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use skynet_core::{DeviceId, GridId, Shutdown};

use super::rules::RulesControl;
use super::{CameraStarter, PipelineError, SourceThreads, detect};
use crate::config::{CatalogCameras, PlatformSpec};

/// How often the platforms' catalogs are checked for change (a counter read).
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// The channels placed by their catalog position: channel id to cell.
pub(crate) type Placed = Arc<Mutex<BTreeMap<String, GridId>>>;

/// What placing channels while running needs.
pub(super) struct CatalogPlacement {
    pub(super) platforms: Vec<PlatformSpec>,
    pub(super) cameras: Arc<CatalogCameras>,
    /// The cameras of the config (channels placed by it included).
    pub(super) configured: BTreeSet<DeviceId>,
    pub(super) starter: CameraStarter,
    pub(super) rules: crossbeam_channel::Sender<RulesControl>,
    /// One per detection worker: each serves every camera.
    pub(super) detectors: Vec<crossbeam_channel::Sender<detect::CameraInput>>,
    pub(super) placed: Placed,
    /// The cameras of the state before this start: a channel among them that the catalog
    /// does not place is gone for good (its offline incident closes).
    pub(super) restored: BTreeSet<String>,
    pub(super) shutdown: Shutdown,
}

/// The placing thread; [`Self::stop`] ends it and hands over the source threads it started.
pub(super) struct CatalogThread {
    stop: Shutdown,
    handle: JoinHandle<SourceThreads>,
}

impl CatalogThread {
    /// Stops placing (the detection workers' queues of new cameras close with it) and
    /// returns the source threads of the cameras placed.
    pub(super) fn stop(self) -> SourceThreads {
        self.stop.trigger();
        // (A panic of its own was logged when it happened.)
        self.handle.join().unwrap_or_default()
    }
}

pub(super) fn start(placement: CatalogPlacement) -> Result<CatalogThread, PipelineError> {
    let stop = Shutdown::new();
    let own = stop.clone();
    let handle = std::thread::Builder::new()
        .name("catalog-cameras".into())
        .spawn(move || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(placement, &own)))
                .unwrap_or_else(|panic| {
                    // No more channels are placed; those placed stop with the pipeline.
                    tracing::error!(cause = %super::panic_message(panic.as_ref()), "the catalog placement thread panicked: no more channels are placed");
                    Vec::new()
                })
        })
        .map_err(|source| PipelineError::Spawn {
            stage: "catalog-cameras".into(),
            source,
        })?;
    Ok(CatalogThread { stop, handle })
}

/// What became of a channel the config does not place, so each is logged once per change.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Placed(GridId),
    NoPosition,
    OutsideCells,
    /// The platform's `max_catalog_cameras` are placed already.
    OverLimit,
    Refused,
}

fn run(mut p: CatalogPlacement, stop: &Shutdown) -> SourceThreads {
    let mut sources: SourceThreads = Vec::new();
    let mut seen: Vec<Option<u64>> = vec![None; p.platforms.len()];
    let mut outcomes: HashMap<String, Outcome> = HashMap::new();
    // Channels placed, per platform (its `max_catalog_cameras`).
    let mut placed = vec![0usize; p.platforms.len()];
    let stopping = |p: &CatalogPlacement| stop.is_triggered() || p.shutdown.is_triggered();
    while !stopping(&p) {
        for (i, platform) in p.platforms.clone().iter().enumerate() {
            let generation = platform.config.catalog_generation();
            if seen[i] == Some(generation) || !platform.config.places_by_catalog() {
                continue;
            }
            seen[i] = Some(generation);
            let limit = platform.config.max_catalog_cameras();
            for channel in platform.config.catalog() {
                let id = DeviceId::new(channel.id.as_str());
                if !channel.wanted || p.configured.contains(&id) {
                    continue;
                }
                if stopping(&p) {
                    return sources;
                }
                let was_placed = matches!(outcomes.get(&channel.id), Some(Outcome::Placed(_)));
                let outcome = match outcomes.get(&channel.id) {
                    Some(Outcome::Placed(_)) => {
                        place(&mut p, platform, &channel, &outcomes, &mut sources)
                    }
                    before if placed[i] >= limit => {
                        if before != Some(&Outcome::OverLimit) {
                            tracing::warn!(platform = %platform.config.id(), channel = %channel.id, max_catalog_cameras = limit, "the platform's max_catalog_cameras are placed: channel listed, not analysed");
                        }
                        Outcome::OverLimit
                    }
                    _ => place(&mut p, platform, &channel, &outcomes, &mut sources),
                };
                if !was_placed && matches!(outcome, Outcome::Placed(_)) {
                    placed[i] += 1;
                }
                if matches!(
                    outcome,
                    Outcome::NoPosition | Outcome::OutsideCells | Outcome::OverLimit
                ) && outcomes.get(&channel.id) != Some(&outcome)
                    && p.restored.contains(&channel.id)
                {
                    // A camera of it before a restart is gone for good.
                    let _ = p.rules.send(RulesControl::NotPlaced { camera: id });
                }
                if outcomes.get(&channel.id) != Some(&outcome) {
                    outcomes.insert(channel.id.clone(), outcome);
                }
            }
        }
        std::thread::sleep(CHECK_EVERY);
    }
    sources
}

/// Places one channel the config does not place, if its position allows; logs what became
/// of it when that changed.
fn place(
    p: &mut CatalogPlacement,
    platform: &PlatformSpec,
    channel: &skynet_ingest::gb28181::CatalogChannel,
    outcomes: &HashMap<String, Outcome>,
    sources: &mut SourceThreads,
) -> Outcome {
    let before = outcomes.get(&channel.id);
    let (Some(longitude), Some(latitude)) = (channel.longitude, channel.latitude) else {
        if let Some(Outcome::Placed(grid)) = before {
            // Placed before; the camera stays where it is.
            return Outcome::Placed(grid.clone());
        }
        if before != Some(&Outcome::NoPosition) {
            tracing::info!(platform = %platform.config.id(), channel = %channel.id, "channel has no cell in the config and no position in the catalog: listed, not analysed");
        }
        return Outcome::NoPosition;
    };
    let Some(grid) = p.cameras.cell_at(longitude, latitude) else {
        if let Some(Outcome::Placed(grid)) = before {
            return Outcome::Placed(grid.clone());
        }
        if before != Some(&Outcome::OutsideCells) {
            tracing::warn!(platform = %platform.config.id(), channel = %channel.id, longitude, latitude, "channel's catalog position is outside every grid cell: listed, not analysed");
        }
        return Outcome::OutsideCells;
    };
    match before {
        Some(Outcome::Placed(was)) if *was == grid => return Outcome::Placed(grid),
        Some(Outcome::Placed(was)) => {
            tracing::warn!(platform = %platform.config.id(), channel = %channel.id, was = %was, now = %grid, "channel's catalog position moved to another cell: it stays in its first until the next start");
            return Outcome::Placed(was.clone());
        }
        Some(Outcome::Refused) => return Outcome::Refused,
        _ => {}
    }
    let spec = match p.cameras.camera(platform, &channel.id, &grid) {
        Ok(spec) => spec,
        Err(error) => {
            tracing::error!(platform = %platform.config.id(), channel = %channel.id, %error, "channel cannot be a camera; the others go on");
            return Outcome::Refused;
        }
    };
    let watermark = spec.source.watermark();
    // The rules stage first: a frame never comes before its camera's stage.
    if p.rules
        .send(RulesControl::AddCamera {
            spec: Box::new(spec.clone()),
            watermark: watermark.clone(),
        })
        .is_err()
    {
        return Outcome::Refused;
    }
    let started = match p.starter.start(&spec, watermark, None) {
        Ok(started) => started,
        Err(error) => {
            tracing::error!(platform = %platform.config.id(), channel = %channel.id, %error, "channel's camera did not start; the others go on");
            // Its stage in the rules stage goes too: no offline watch for a camera that
            // never ran here.
            let _ = p.rules.send(RulesControl::NotPlaced {
                camera: spec.id.clone(),
            });
            return Outcome::Refused;
        }
    };
    for worker in &p.detectors {
        // A worker that has ended (the pipeline is stopping) takes no camera.
        let _ = worker.send(started.input.clone());
    }
    sources.extend(started.source);
    p.placed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(channel.id.clone(), grid.clone());
    metrics::counter!("skynet_platform_channels_placed_total", "platform" => platform.config.id().to_string())
        .increment(1);
    tracing::info!(platform = %platform.config.id(), lower = %channel.lower, channel = %channel.id, grid = %grid, longitude, latitude, "channel placed by its catalog position: analysed");
    Outcome::Placed(grid)
}
