//! Wiring the people's console into the pipeline: the hub is opened on the state database,
//! served on `[api] listen`, and fed by the stages (revisions from the commit stage, frames
//! from the rules stage through a preview thread, readings from the sensor stage); people's
//! status changes go back to the risk stage like the case system's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use chrono::{DateTime, Utc};
use skynet_core::{Detection, DeviceId, FrameImage, Shutdown, TrackedObject};
use skynet_detect::Zone;
use skynet_emit::CaseFeedback;
use skynet_serve::console::{
    Console, SensorRegistration, WHAT_IF_EXAMPLES, WhatIf, WhatIfError, WhatIfExample, WhatIfReport,
};

use super::{PipelineError, Services};
use crate::config::PipelineConfig;
use skynet_snapshot::{Annotations, boxes_on_image, render};

/// Opens the console when the config has `[api]`, and serves it.
pub(crate) fn start(
    config: &PipelineConfig,
    services: &Services,
) -> Result<Option<Arc<Console>>, PipelineError> {
    let Some(api) = &config.api else {
        return Ok(None);
    };
    let console = Console::open(
        api.clone(),
        &config.outbox,
        config.evidence.enabled.then(|| config.evidence.dir.clone()),
        services.health.clone(),
        Some(services.metrics.clone()),
    )
    .map_err(|e| PipelineError::Console(e.to_string()))?;
    console.set_grids(
        config
            .grids
            .grids()
            .iter()
            .map(|g| g.to_feature())
            .collect(),
    );
    for sensor in &config.sensors {
        console.register_sensor(SensorRegistration {
            id: sensor.spec.id.to_string(),
            grid: sensor.placement.grid.to_string(),
            owner: sensor.placement.owner,
            quantity: sensor.spec.quantity.clone(),
            unit: sensor.spec.unit.clone(),
        });
    }
    if let Some(path) = &config.record_observations {
        console.set_what_if(Arc::new(RecordedWhatIf {
            config: Arc::new(config.clone()),
            recording: path.clone(),
        }));
    }
    if let Some(live) = super::live::NodeLive::for_config(config) {
        console.set_live_video(Arc::new(live));
    }
    let console = Arc::new(console);
    services.serve_console(api.listen, Arc::clone(&console))?;
    console.spawn_health_watch(&services.runtime());
    console.spawn_audit_head_log(&services.runtime());
    Ok(Some(console))
}

/// The console's threshold what-if on the node's recording (see
/// [`crate::replay::threshold_what_if`]).
struct RecordedWhatIf {
    config: Arc<PipelineConfig>,
    recording: std::path::PathBuf,
}

impl WhatIf for RecordedWhatIf {
    fn thresholds(
        &self,
        camera: &DeviceId,
        current: &BTreeMap<String, f32>,
        proposed: &BTreeMap<String, f32>,
    ) -> Result<WhatIfReport, WhatIfError> {
        let (comparison, since, until) = crate::replay::threshold_what_if(
            &self.config,
            &self.recording,
            camera,
            current,
            proposed,
            Utc::now(),
        )
        .map_err(|e| {
            WhatIfError::Failed(format!(
                "reading the recorded observations {}: {e}",
                self.recording.display()
            ))
        })?;
        let examples = comparison
            .differences
            .iter()
            .take(WHAT_IF_EXAMPLES)
            .map(|d| {
                let i = d.incident();
                WhatIfExample {
                    change: d.kind(),
                    grid: i.grid.clone(),
                    category: i.category.clone(),
                    device: i.device.clone(),
                    first_seen: i.first_seen,
                    old_level: d.old_level().map(|l| l.as_str().to_string()),
                    new_level: d.new_level().map(|l| l.as_str().to_string()),
                }
            })
            .collect();
        Ok(WhatIfReport {
            added: comparison.count("added"),
            dropped: comparison.count("dropped"),
            changed: comparison.count("changed"),
            unchanged: comparison.unchanged,
            incidents: comparison.old_incidents,
            observations: comparison.old.observations + comparison.old.below_threshold,
            since,
            until,
            examples,
        })
    }
}

/// Status changes made in the console reach the risk stage through the same queue as the
/// case system's, and are applied exactly as those are.
pub(crate) fn connect_status(console: &Console, feedback: crossbeam_channel::Sender<CaseFeedback>) {
    console.connect_status(Box::new(move |status| {
        feedback
            .try_send(CaseFeedback::Console(status))
            .map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(_) => {
                    "the risk stage is busy; try again".to_string()
                }
                crossbeam_channel::TrySendError::Disconnected(_) => {
                    "the risk stage has stopped".to_string()
                }
            })
    }));
}

/// What the rules stage offers the preview thread: a camera's analysed frame.
pub(crate) struct PreviewFrame {
    camera: DeviceId,
    at: DateTime<Utc>,
    /// The camera's resolution, which the boxes are in.
    camera_size: (u32, u32),
    detections: Vec<Detection>,
    image: Arc<FrameImage>,
}

/// The rules stage's side: offers a camera's frame at most once per [`PREVIEW_EVERY`],
/// without ever waiting (a full queue drops the offer; the next frame comes soon). Frames in
/// between copy no image: only their boxes go to the browsers (SSE `detections`).
pub(crate) struct Preview {
    tx: crossbeam_channel::Sender<PreviewFrame>,
    /// Every analysed frame's boxes go to the browsers at once (SSE `detections`, drawn over
    /// a camera's live video), at the camera's analysis rate.
    console: Arc<Console>,
    offered: HashMap<DeviceId, Instant>,
    /// What the drawing thread draws on each camera's frames (a camera not in it gets no
    /// tile): the configured cameras, and those that join while running.
    views: Arc<RwLock<HashMap<DeviceId, CameraDrawing>>>,
}

impl Preview {
    /// A camera that joined while running: its tile is drawn with its zones and its privacy
    /// masks blurred, as a configured camera's.
    pub(crate) fn add_camera(&self, id: DeviceId, drawing: CameraDrawing) {
        self.views
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id)
            .or_insert(drawing);
    }
}

/// What is drawn on a camera's frames: its zones, and its privacy masks (blurred).
pub(crate) type CameraDrawing = (Vec<Zone>, Vec<Vec<[f64; 2]>>);

/// How often a camera's tile on the console changes: the scheduler's period, shared.
pub(crate) use skynet_detect::scheduler::PREVIEW_EVERY;

impl Preview {
    pub(crate) fn offer(&mut self, frame: &skynet_core::AnalysedFrame, image: &Arc<FrameImage>) {
        let camera = &frame.info.camera;
        let detections = if frame.tracks.is_empty() {
            frame.detections.clone()
        } else {
            frame
                .tracks
                .iter()
                .map(TrackedObject::as_detection)
                .collect()
        };
        self.console.publish_detections(
            camera,
            frame.info.captured_at,
            (frame.info.width, frame.info.height),
            &detections,
        );
        if self
            .offered
            .get(camera)
            .is_some_and(|at| at.elapsed() < PREVIEW_EVERY)
        {
            return;
        }
        self.offered.insert(camera.clone(), Instant::now());
        let _ = self.tx.try_send(PreviewFrame {
            camera: frame.info.camera.clone(),
            at: frame.info.captured_at,
            camera_size: (frame.info.width, frame.info.height),
            detections,
            image: Arc::clone(image),
        });
    }
}

/// Starts the thread that draws each camera's latest frame (boxes, zones, privacy masks
/// blurred) at most once a second and hands the JPEG to the console.
pub(crate) fn spawn_preview(
    config: &PipelineConfig,
    console: Arc<Console>,
    stop: Shutdown,
) -> Result<(Preview, JoinHandle<()>), PipelineError> {
    let (tx, rx) = crossbeam_channel::bounded::<PreviewFrame>(4);
    let views: HashMap<DeviceId, CameraDrawing> = config
        .cameras
        .iter()
        .map(|c| (c.id.clone(), (c.zones.clone(), c.privacy_masks.clone())))
        .collect();
    let views = Arc::new(RwLock::new(views));
    let drawn = Arc::clone(&views);
    let publisher = Arc::clone(&console);
    let handle = std::thread::Builder::new()
        .name("console-preview".into())
        .spawn(move || {
            loop {
                let frame = match rx.recv_timeout(super::POLL) {
                    Ok(frame) => frame,
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        if stop.is_triggered() {
                            return;
                        }
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                };
                let Some((zones, masks)) = drawn
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&frame.camera)
                    .cloned()
                else {
                    continue;
                };
                let boxes = boxes_on_image(&frame.detections, frame.camera_size, &frame.image);
                let annotations = Annotations {
                    detections: &boxes,
                    zones: &zones,
                    privacy_masks: &masks,
                };
                let jpeg = render(&frame.image, annotations).and_then(|rgb| {
                    let mut jpeg = Vec::new();
                    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 75)
                        .encode_image(&rgb)?;
                    Ok(jpeg)
                });
                match jpeg {
                    Ok(jpeg) => console.set_frame(&frame.camera, jpeg, frame.at),
                    Err(e) => {
                        metrics::counter!("skynet_console_preview_errors_total").increment(1);
                        tracing::debug!(camera = %frame.camera, error = %e, "preview frame not drawn");
                    }
                }
            }
        })
        .map_err(|source| PipelineError::Spawn {
            stage: "console-preview".into(),
            source,
        })?;
    Ok((
        Preview {
            tx,
            console: publisher,
            offered: HashMap::new(),
            views,
        },
        handle,
    ))
}

/// A `[[platforms]]` entry in the console's Sources view: its state is its health entry,
/// its figures are read from the platform when asked.
pub(crate) fn register_platform(
    console: &Console,
    platform: &crate::config::PlatformSpec,
    placed: &super::catalog::Placed,
) {
    let live = Arc::clone(&platform.config);
    let placed = placed.clone();
    console.register_platform(skynet_serve::console::PlatformRegistration {
        id: platform.config.id().to_string(),
        kind: platform.kind.to_string(),
        listen: platform.config.listen(),
        owner: platform.config.owner(),
        channels_analysed: platform
            .config
            .channels()
            .iter()
            .filter(|c| c.is_analysed())
            .count(),
        all_channels: platform.config.all_channels(),
        live: Box::new(move || {
            let now = live.live();
            let placed = placed.lock().unwrap_or_else(PoisonError::into_inner);
            let channels_placed = match placed.is_empty() {
                true => 0,
                false => live
                    .catalog()
                    .iter()
                    .filter(|c| placed.contains_key(&c.id))
                    .count(),
            };
            skynet_serve::console::PlatformFigures {
                lower_online: now.lower_online,
                channels_listed: now.channels_listed,
                channels_placed,
            }
        }),
    });
}
