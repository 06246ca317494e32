//! Patrol rounds in the pipeline (issue 26): a patrol's cameras keep their queue, detection
//! input, clock and rules like any camera, but no source runs them all the time. The
//! patrol's scheduler (`skynet_ingest::patrol`) opens each in turn for a visit: its source
//! is built and run once (no retry within the round), analysed for `dwell_s`, and closed.
//!
//! - A camera that fails to open, or shows no frame within its connect timeout
//!   (`timeout_s`), is `offline` for the round; `offline_after_rounds` rounds offline in a
//!   row open `camera_offline`, and a checked round closes it. Between visits the camera is
//!   `stopped`, never offline by its `offline_after_s`.
//! - The rules stage counts each visit's frames and observations and keeps its last frame
//!   with pixels; the visit waits (bounded) for the frames it queued to be applied before it
//!   closes its look. That frame, annotated with its detections and with every privacy mask
//!   blurred, is the look's snapshot under `[evidence] dir`.
//! - Each finished round goes through the rules stage to the commit stage, as a
//!   `skynet.patrol_round.v1` event for every sink, and then to the console.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use crossbeam_channel::Sender;
use skynet_core::{
    AnalysedFrame, DeviceId, FrameImage, LookStatus, PatrolRound, Shutdown, patrol_snapshot_path,
};
use skynet_ingest::patrol::{PatrolCamera, PatrolConfig, PatrolScheduler, Visit, Visitor};
use skynet_ingest::{CameraHealth, FrameDelivery, FrameOutput, SourceBuildContext};

use super::{Counters, PipelineError};
use crate::config::{CameraSpec, PipelineConfig};

/// How long a closed visit waits for its frames to be analysed before its look is reported
/// with what was applied by then.
const ANALYSIS_WAIT: Duration = Duration::from_secs(5);
/// How often a visit looks for its first frame, the end of its dwell and the stop signal.
const VISIT_POLL: Duration = Duration::from_millis(20);

/// What a patrol tells the rules stage.
pub(crate) enum PatrolToRules {
    /// A visit of `camera` starts: its frames count from now.
    Begin { camera: DeviceId },
    /// A visit is closed: answer once its frames are applied.
    End(VisitEnd),
    /// A finished round: into the outbox.
    Round(PatrolRound),
}

/// A closed visit waiting for its report.
pub(crate) struct VisitEnd {
    pub camera: DeviceId,
    /// Event time of the last frame the visit queued for detection.
    pub until: Option<DateTime<Utc>>,
    /// Answer by then, whatever was applied.
    pub deadline: Instant,
    pub reply: Sender<VisitReport>,
}

impl VisitEnd {
    pub(crate) fn answer(self, report: VisitReport) {
        // The visit may have given up waiting: nobody to tell then.
        let _ = self.reply.send(report);
    }
}

/// What the rules stage saw of one visit.
#[derive(Debug, Default)]
pub(crate) struct VisitReport {
    pub frames: u64,
    pub observations: u64,
    /// The last applied frame that came with its pixels, for the snapshot.
    pub last: Option<(AnalysedFrame, Arc<FrameImage>)>,
}

/// A change to a patrol camera's `camera_offline` incident after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OfflineChange {
    /// Offline `offline_after_rounds` rounds in a row, the first starting at `since`.
    Declare { since: DateTime<Utc> },
    /// Checked again.
    Recover,
}

/// The rules stage's part of a patrol camera: the visit under way and its offline rounds.
#[derive(Debug)]
pub(crate) struct PatrolLooks {
    offline_after_rounds: u32,
    visit: Option<VisitReport>,
    ending: Option<VisitEnd>,
    /// Rounds offline in a row, and when the first of them started.
    offline_rounds: u32,
    offline_since: Option<DateTime<Utc>>,
    declared: bool,
}

impl std::fmt::Debug for VisitEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VisitEnd")
            .field("camera", &self.camera)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl PatrolLooks {
    /// For a camera that names a patrol.
    pub(crate) fn for_camera(config: &PipelineConfig, camera: &CameraSpec) -> Option<Self> {
        let name = camera.patrol.as_deref()?;
        let patrol = config.patrols.iter().find(|p| p.name == name)?;
        Some(Self {
            offline_after_rounds: patrol.offline_after_rounds.max(1),
            visit: None,
            ending: None,
            offline_rounds: 0,
            offline_since: None,
            declared: false,
        })
    }

    pub(crate) fn begin(&mut self) {
        if let Some(ending) = self.ending.take() {
            ending.answer(self.visit.take().unwrap_or_default());
        }
        self.visit = Some(VisitReport::default());
    }

    /// An applied frame of the camera, with the observations its rules made.
    pub(crate) fn frame(
        &mut self,
        frame: &AnalysedFrame,
        image: Option<&Arc<FrameImage>>,
        observations: usize,
    ) {
        let Some(visit) = self.visit.as_mut() else {
            return;
        };
        visit.frames += 1;
        visit.observations += observations as u64;
        if let Some(image) = image {
            visit.last = Some((frame.clone(), Arc::clone(image)));
        }
    }

    pub(crate) fn end(&mut self, end: VisitEnd) {
        if let Some(previous) = self.ending.replace(end) {
            previous.answer(VisitReport::default());
        }
    }

    /// Answers the ended visit once the camera's clock has reached its last queued frame,
    /// its wait is over, or `now` says so.
    pub(crate) fn answer_if_done(&mut self, clock: Option<DateTime<Utc>>, now: bool) {
        let Some(ending) = &self.ending else {
            return;
        };
        let applied = match (ending.until, clock) {
            (None, _) => true,
            (Some(until), Some(clock)) => clock >= until,
            (Some(_), None) => false,
        };
        if (applied || now || Instant::now() >= ending.deadline)
            && let Some(ending) = self.ending.take()
        {
            ending.answer(self.visit.take().unwrap_or_default());
        }
    }

    /// Counts a round's outcome for the camera; what it changes to its offline incident.
    pub(crate) fn after_round(
        &mut self,
        status: LookStatus,
        started: DateTime<Utc>,
    ) -> Option<OfflineChange> {
        match status {
            LookStatus::Checked => {
                self.offline_rounds = 0;
                self.offline_since = None;
                self.declared = false;
                // Also closes one opened before a restart (a no-op when none is open).
                Some(OfflineChange::Recover)
            }
            LookStatus::Offline => {
                self.offline_rounds = self.offline_rounds.saturating_add(1);
                let since = *self.offline_since.get_or_insert(started);
                if !self.declared && self.offline_rounds >= self.offline_after_rounds {
                    self.declared = true;
                    return Some(OfflineChange::Declare { since });
                }
                None
            }
            // Could not be run here: says nothing of the camera itself.
            LookStatus::Failed => None,
        }
    }
}

/// A patrol camera as `start_cameras` set it up: its spec, and its output into the
/// camera's queue and clock.
pub(crate) struct PatrolCameraRun {
    pub spec: CameraSpec,
    pub out: FrameOutput,
    pub health: CameraHealth,
}

/// Opens one camera of a patrol for a visit.
struct PipelineVisitor {
    patrol: PatrolConfig,
    cameras: Vec<PatrolCameraRun>,
    to_rules: Sender<PatrolToRules>,
    max_size: Option<(u32, u32)>,
    snapshots: Option<skynet_snapshot::SnapshotStore>,
    counters: Arc<Counters>,
}

impl Visitor for PipelineVisitor {
    fn visit(&self, round: u64, camera: usize, stop: &Shutdown) -> Visit {
        let Some(run) = self.cameras.get(camera) else {
            return Visit::not_checked(LookStatus::Failed);
        };
        let spec = &run.spec;
        if self
            .to_rules
            .send(PatrolToRules::Begin {
                camera: spec.id.clone(),
            })
            .is_err()
        {
            return Visit::not_checked(LookStatus::Failed);
        }
        let delivery = FrameDelivery {
            fps: spec.fps,
            max_size: self.max_size,
            clip_ring: None,
        };
        let cx = SourceBuildContext {
            camera: &spec.id,
            delivery: &delivery,
        };
        let status = match spec.source.build(&cx) {
            Err(e) => {
                tracing::error!(error = %e, "patrol camera could not be built");
                LookStatus::Failed
            }
            Ok(mut source) => {
                let status = self.run_once(source.as_mut(), run, stop);
                let stats = source.stats();
                self.counters
                    .decoded
                    .fetch_add(stats.decoded, std::sync::atomic::Ordering::Relaxed);
                self.counters
                    .dropped
                    .fetch_add(stats.dropped, std::sync::atomic::Ordering::Relaxed);
                status
            }
        };
        // Closed until the next round: stopped, not offline.
        run.health.stopped();
        let report = self.analysed(run);
        if status != LookStatus::Checked {
            return Visit::not_checked(status);
        }
        let snapshot = match (&self.snapshots, &report.last) {
            (Some(store), Some((frame, image))) => self.snapshot(store, spec, round, frame, image),
            _ => None,
        };
        Visit {
            status,
            frames: report.frames,
            observations: report.observations,
            snapshot,
        }
    }
}

impl PipelineVisitor {
    /// Runs the source once: offline when no frame comes within its connect timeout (or it
    /// fails first), else analysed for `dwell_s`; failed when it ends before then.
    fn run_once(
        &self,
        source: &mut dyn skynet_ingest::FrameSource,
        run: &PatrolCameraRun,
        stop: &Shutdown,
    ) -> LookStatus {
        let connection = run.out.for_connection();
        let close = Shutdown::new();
        let timeout = run.spec.source.open_timeout();
        // The source's own logs carry the visit's patrol, round and camera too.
        let span = tracing::Span::current();
        std::thread::scope(|scope| {
            let runner = scope.spawn(|| {
                let _entered = span.enter();
                source.run(&connection, &close)
            });
            let opened = Instant::now();
            let open = loop {
                if connection.has_sent() {
                    break true;
                }
                if runner.is_finished() || stop.is_triggered() || opened.elapsed() >= timeout {
                    break false;
                }
                std::thread::sleep(VISIT_POLL);
            };
            let mut ended_early = false;
            if open {
                let until = Instant::now() + self.patrol.dwell();
                loop {
                    let now = Instant::now();
                    if now >= until || stop.is_triggered() {
                        break;
                    }
                    if runner.is_finished() {
                        ended_early = true;
                        break;
                    }
                    std::thread::sleep(VISIT_POLL.min(until - now));
                }
            }
            close.trigger();
            let result = runner.join();
            match (open, &result) {
                (false, Ok(Err(e))) => {
                    tracing::info!(error = %e, "patrol camera offline this round");
                    LookStatus::Offline
                }
                (false, _) => {
                    tracing::info!(
                        timeout_s = timeout.as_secs_f64(),
                        "patrol camera showed no frame in time; offline this round"
                    );
                    LookStatus::Offline
                }
                (true, Err(_)) => LookStatus::Failed,
                (true, Ok(Err(e))) if ended_early => {
                    tracing::warn!(error = %e, "patrol camera failed during its visit");
                    LookStatus::Failed
                }
                (true, Ok(Ok(exit))) if ended_early => {
                    tracing::warn!(?exit, "patrol camera's stream ended during its visit");
                    LookStatus::Failed
                }
                (true, _) => LookStatus::Checked,
            }
        })
    }

    /// The rules stage's report of the visit, once the frames it queued are applied
    /// (bounded).
    fn analysed(&self, run: &PatrolCameraRun) -> VisitReport {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let end = VisitEnd {
            camera: run.spec.id.clone(),
            until: run.out.last_queued(),
            deadline: Instant::now() + ANALYSIS_WAIT,
            reply,
        };
        if self.to_rules.send(PatrolToRules::End(end)).is_err() {
            return VisitReport::default();
        }
        answer
            .recv_timeout(ANALYSIS_WAIT + Duration::from_secs(1))
            .unwrap_or_default()
    }

    /// The look's annotated JPEG, privacy masks blurred: `[evidence] url_base` + its path.
    fn snapshot(
        &self,
        store: &skynet_snapshot::SnapshotStore,
        spec: &CameraSpec,
        round: u64,
        frame: &AnalysedFrame,
        image: &FrameImage,
    ) -> Option<String> {
        let detections: Vec<skynet_core::Detection> = frame
            .tracks
            .iter()
            .map(|t| t.as_detection())
            .chain(frame.detections.iter().cloned())
            .collect();
        let boxes = skynet_snapshot::boxes_on_image(
            &detections,
            (frame.info.width, frame.info.height),
            image,
        );
        let annotations = skynet_snapshot::Annotations {
            detections: &boxes,
            zones: &spec.zones,
            privacy_masks: &spec.privacy_masks,
        };
        let path = patrol_snapshot_path(&self.patrol.name, round, &spec.id);
        let stored = skynet_snapshot::render(image, annotations)
            .and_then(|rgb| store.encode(&rgb))
            .and_then(|jpeg| store.write_at(&path, &jpeg));
        match stored {
            Ok(stored) => Some(stored.url),
            Err(e) => {
                metrics::counter!("skynet_evidence_errors_total").increment(1);
                tracing::error!(error = %e, "patrol snapshot failed; the look goes out without it");
                None
            }
        }
    }
}

/// One thread per patrol with cameras, running its rounds until `shutdown`. Returned as
/// source threads (named after the patrol): the pipeline drains once they end.
pub(crate) fn start(
    config: &PipelineConfig,
    cameras: Vec<PatrolCameraRun>,
    to_rules: &Sender<PatrolToRules>,
    shutdown: &Shutdown,
    counters: &Arc<Counters>,
) -> Result<Vec<(DeviceId, JoinHandle<bool>)>, PipelineError> {
    let mut by_patrol: Vec<(PatrolConfig, Vec<PatrolCameraRun>)> = config
        .patrols
        .iter()
        .map(|p| (p.clone(), Vec::new()))
        .collect();
    for camera in cameras {
        // Validation made sure each names a configured patrol.
        if let Some((_, runs)) = by_patrol
            .iter_mut()
            .find(|(p, _)| camera.spec.patrol.as_deref() == Some(p.name.as_str()))
        {
            camera.health.stopped();
            runs.push(camera);
        }
    }
    let mut threads = Vec::new();
    for (patrol, runs) in by_patrol {
        if runs.is_empty() {
            tracing::warn!(patrol = %patrol.name, "patrol has no cameras; not run");
            continue;
        }
        let scheduler = PatrolScheduler::new(
            patrol.clone(),
            runs.iter()
                .map(|r| PatrolCamera {
                    id: r.spec.id.clone(),
                    grid: r.spec.grid.clone(),
                    owner: r.spec.owner,
                })
                .collect(),
        );
        let visitor = PipelineVisitor {
            patrol: patrol.clone(),
            cameras: runs,
            to_rules: to_rules.clone(),
            max_size: Some((config.model.input.width, config.model.input.height)),
            snapshots: config
                .evidence
                .enabled
                .then(|| skynet_snapshot::SnapshotStore::new(&config.evidence)),
            counters: Arc::clone(counters),
        };
        let (stop, to_rules) = (shutdown.clone(), to_rules.clone());
        let name = patrol.name.clone();
        let handle = std::thread::Builder::new()
            .name(format!("patrol-{name}"))
            .spawn(move || {
                tracing::info!(patrol = %name, cameras = scheduler.cameras().len(), every_s = scheduler.config().every_s, "patrol started");
                scheduler.run(&visitor, &stop, |round| {
                    // Err: the rules stage has gone; it reports its own failure.
                    let _ = to_rules.send(PatrolToRules::Round(round));
                });
                true
            })
            .map_err(|source| PipelineError::Spawn {
                stage: format!("patrol {}", patrol.name),
                source,
            })?;
        threads.push((DeviceId::new(patrol.name.as_str()), handle));
    }
    Ok(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn looks(after: u32) -> PatrolLooks {
        PatrolLooks {
            offline_after_rounds: after,
            visit: None,
            ending: None,
            offline_rounds: 0,
            offline_since: None,
            declared: false,
        }
    }

    #[test]
    fn rounds_offline_in_a_row_open_camera_offline_once_and_a_checked_round_closes_it() {
        let mut l = looks(2);
        let t = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        assert_eq!(
            l.after_round(LookStatus::Offline, t(60)),
            None,
            "one is not enough"
        );
        assert_eq!(
            l.after_round(LookStatus::Offline, t(120)),
            Some(OfflineChange::Declare { since: t(60) })
        );
        assert_eq!(
            l.after_round(LookStatus::Offline, t(180)),
            None,
            "declared once"
        );
        assert_eq!(l.after_round(LookStatus::Failed, t(240)), None);
        assert_eq!(
            l.after_round(LookStatus::Checked, t(300)),
            Some(OfflineChange::Recover)
        );
        assert_eq!(
            l.after_round(LookStatus::Offline, t(360)),
            None,
            "the count starts over"
        );
    }

    #[test]
    fn an_ended_visit_is_answered_once_its_last_frame_is_applied() {
        let mut l = looks(2);
        l.begin();
        let (reply, answer) = crossbeam_channel::bounded(1);
        let until = DateTime::<Utc>::from_timestamp(100, 0).unwrap();
        l.end(VisitEnd {
            camera: DeviceId::new("c"),
            until: Some(until),
            deadline: Instant::now() + Duration::from_secs(60),
            reply,
        });
        l.answer_if_done(Some(until - chrono::Duration::seconds(1)), false);
        assert!(answer.try_recv().is_err(), "frames still in flight");
        l.answer_if_done(Some(until), false);
        assert_eq!(answer.try_recv().unwrap().frames, 0);
    }
}
