//! Event clips in the rules stage (issue 25 part 1).
//!
//! A revision that opens (or reopens) an incident, or escalates it, on a camera with clips
//! on starts a clip: from `first_seen - pre_s` (from the keyframe at or before it) to
//! `post_s` after the incident's last evidence, at most `max_s` long. Later revisions of the
//! incident move its end (their `last_seen + post_s`) while it is still being waited for.
//!
//! The clip is cut on a thread of its own once the camera's buffer holds frames past the end
//! (event time; or 30 s of wall clock past it, with what there is), and written as
//! `<evidence dir>/<incident id>/<revision>.mp4`, named by the revision that started it.
//!
//! **How a revision carries it.** A revision's evidence must hold the file's SHA-256, and the
//! outbox sends each revision once, as it was committed: a revision is never changed after
//! it went out. So the finished clip is listed (`kind: "clip"`) on the incident's **first
//! revision committed after it is finished**: a later evidence revision, an escalation, or
//! the closing revision. A clip whose incident ended before it was finished stays on disk
//! (and in the metrics) but is listed on no revision; the log says so.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skynet_core::{DeviceId, EvidenceRef, IncidentChange, IncidentStatus, RiskEvent};
use skynet_ingest::clips::{EncodedRing, MaskBlur, write_clip, write_file_clip};
use skynet_snapshot::enforce_budget;
use skynet_snapshot::{ClipsConfig, SnapshotConfig};

/// How long past its end (wall clock) a clip waits for its camera's frames.
const WAIT_PAST_END: Duration = Duration::from_secs(30);
/// The ring holds this much more than `max_s`.
const RING_MARGIN: Duration = Duration::from_secs(5);

/// The ring a camera with `clips` should keep, or `None` when clips are off for it.
pub(crate) fn ring_for(
    evidence: &SnapshotConfig,
    camera: &crate::config::CameraSpec,
) -> Option<EncodedRing> {
    let clips = effective(evidence, camera)?;
    Some(EncodedRing::for_camera(
        &camera.id,
        clips.max + clips.pre + RING_MARGIN,
    ))
}

fn effective(evidence: &SnapshotConfig, camera: &crate::config::CameraSpec) -> Option<ClipsConfig> {
    let clips = camera.clips.unwrap_or(evidence.clips);
    (evidence.enabled && clips.enabled).then_some(clips)
}

struct Camera {
    clips: ClipsConfig,
    ring: EncodedRing,
    blur: Option<MaskBlur>,
}

/// A clip being waited for; its end moves with later revisions.
struct Job {
    incident: String,
    revision: u32,
    camera: DeviceId,
    start: DateTime<Utc>,
    /// `start + max_s`.
    limit: DateTime<Utc>,
    end: Mutex<DateTime<Utc>>,
    ring: EncodedRing,
    blur: Option<MaskBlur>,
    created: Instant,
}

impl Job {
    fn end(&self) -> DateTime<Utc> {
        *self.end.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) struct ClipStage {
    cameras: BTreeMap<DeviceId, Camera>,
    /// Clips being waited for, by incident.
    pending: HashMap<String, Arc<Job>>,
    /// Finished clips not yet listed on a revision, by incident.
    finished: HashMap<String, Vec<EvidenceRef>>,
    jobs: crossbeam_channel::Sender<Arc<Job>>,
    done: crossbeam_channel::Receiver<(String, Option<EvidenceRef>)>,
    max_per_s: f64,
    tokens: f64,
    refilled: Instant,
}

impl ClipStage {
    /// `None` when no camera has clips on.
    pub(crate) fn for_config(config: &crate::config::PipelineConfig) -> Option<Self> {
        let cameras: BTreeMap<DeviceId, Camera> = config
            .cameras
            .iter()
            .filter_map(|camera| {
                let clips = effective(&config.evidence, camera)?;
                let ring = ring_for(&config.evidence, camera)?;
                let blur = (!camera.privacy_masks.is_empty())
                    .then(|| mask_blur(camera.privacy_masks.clone()));
                Some((camera.id.clone(), Camera { clips, ring, blur }))
            })
            .collect();
        if cameras.is_empty() {
            return None;
        }
        let (jobs, job_rx) = crossbeam_channel::unbounded();
        let (done_tx, done) = crossbeam_channel::unbounded();
        let writer = Writer {
            dir: config.evidence.dir.clone(),
            url_base: {
                let mut base = config.evidence.url_base.clone();
                if !base.ends_with('/') {
                    base.push('/');
                }
                base
            },
            max_bytes: config.evidence.max_bytes,
        };
        let spawned = std::thread::Builder::new()
            .name("evidence-clips".into())
            .spawn(move || writer.run(job_rx, done_tx));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "the clip writer's thread could not start; no clips");
            return None;
        }
        Some(Self {
            cameras,
            pending: HashMap::new(),
            finished: HashMap::new(),
            jobs,
            done,
            max_per_s: config.evidence.max_per_s,
            tokens: config.evidence.max_per_s.max(1.0),
            refilled: Instant::now(),
        })
    }

    /// Lists finished clips on their incidents' revisions, moves the end of clips waited
    /// for, and starts clips for revisions that open or escalate an incident.
    pub(crate) fn attach(&mut self, events: &mut [RiskEvent]) {
        for (incident, evidence) in self.done.try_iter() {
            self.pending.remove(&incident);
            if let Some(evidence) = evidence {
                self.finished.entry(incident).or_default().push(evidence);
            }
        }
        for event in events {
            let RiskEvent::Incident(incident) = event else {
                continue;
            };
            if let Some(clips) = self.finished.remove(&incident.id) {
                incident.evidence.extend(clips);
            }
            let ended = incident.status == IncidentStatus::Closed || incident.state.is_final();
            let Some(camera) = self.cameras.get(&incident.camera) else {
                continue;
            };
            let (clips, ring, blur) = (camera.clips, camera.ring.clone(), camera.blur.clone());
            let post = chrono::Duration::from_std(clips.post).unwrap_or_default();
            if let Some(job) = self.pending.get(&incident.id) {
                let mut end = job.end.lock().unwrap_or_else(PoisonError::into_inner);
                *end = (*end).max(incident.last_seen + post).min(job.limit);
                continue;
            }
            let starts = matches!(
                incident.change,
                IncidentChange::Opened | IncidentChange::Escalated | IncidentChange::Reopened
            );
            if !starts || ended {
                continue;
            }
            if !self.take_token() {
                metrics::counter!("skynet_evidence_skipped_total", "reason" => "rate_limit")
                    .increment(1);
                continue;
            }
            let pre = chrono::Duration::from_std(clips.pre).unwrap_or_default();
            let max = chrono::Duration::from_std(clips.max).unwrap_or_default();
            let start = incident.first_seen - pre;
            let limit = start + max;
            let job = Arc::new(Job {
                incident: incident.id.clone(),
                revision: incident.revision,
                camera: incident.camera.clone(),
                start,
                limit,
                end: Mutex::new((incident.last_seen + post).min(limit)),
                ring,
                blur,
                created: Instant::now(),
            });
            if self.jobs.send(Arc::clone(&job)).is_ok() {
                self.pending.insert(incident.id.clone(), job);
            }
        }
    }

    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.max_per_s).min(self.max_per_s.max(1.0));
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Blurs `masks` in an RGB frame, as the snapshots do.
pub(crate) fn mask_blur(masks: Vec<Vec<[f64; 2]>>) -> MaskBlur {
    Arc::new(move |width, height, stride, data: &mut [u8]| {
        let row = width as usize * 3;
        if stride < row || data.len() < stride * (height as usize).saturating_sub(1) + row {
            return;
        }
        let mut packed = Vec::with_capacity(row * height as usize);
        for y in 0..height as usize {
            packed.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        let Some(mut image) = image::RgbImage::from_raw(width, height, packed) else {
            return;
        };
        skynet_snapshot::blur_polygons(&mut image, &masks);
        for (y, line) in image.as_raw().chunks_exact(row).enumerate() {
            data[y * stride..y * stride + row].copy_from_slice(line);
        }
    })
}

struct Writer {
    dir: PathBuf,
    url_base: String,
    max_bytes: Option<u64>,
}

impl Writer {
    fn run(
        self,
        jobs: crossbeam_channel::Receiver<Arc<Job>>,
        done: crossbeam_channel::Sender<(String, Option<EvidenceRef>)>,
    ) {
        let bytes = metrics::counter!("skynet_clip_bytes_total");
        let mut waiting: Vec<Arc<Job>> = Vec::new();
        loop {
            match jobs.recv_timeout(Duration::from_millis(200)) {
                Ok(job) => waiting.push(job),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
            let mut i = 0;
            while i < waiting.len() {
                let job = &waiting[i];
                let end = job.end();
                let span = (end - job.start).to_std().unwrap_or_default();
                let reached = job.ring.newest().is_some_and(|newest| newest >= end);
                let overdue = job.created.elapsed() > span + WAIT_PAST_END;
                if !(reached || overdue) {
                    i += 1;
                    continue;
                }
                let job = waiting.swap_remove(i);
                let evidence = self.write(&job, &bytes);
                if done.send((job.incident.clone(), evidence)).is_err() {
                    return;
                }
            }
        }
    }

    fn write(&self, job: &Job, bytes: &metrics::Counter) -> Option<EvidenceRef> {
        let end = job.end();
        let failed = |e: &dyn std::fmt::Display| {
            metrics::counter!("skynet_evidence_errors_total").increment(1);
            tracing::warn!(camera = %job.camera, incident = %job.incident, revision = job.revision, error = %e, "event clip not written");
            None
        };
        let safe = !job.incident.is_empty()
            && job.incident.len() <= 128
            && !job.incident.starts_with('.')
            && job
                .incident
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !safe {
            return failed(&"the incident id cannot name a directory");
        }
        let folder = self.dir.join(&job.incident);
        if let Err(e) = skynet_core::private_fs::create_private_dir(&folder) {
            return failed(&e);
        }
        let name = format!("{}.mp4", job.revision);
        let path = folder.join(&name);
        let written = match job.ring.file() {
            // A file camera: cut from the file itself (transcoded).
            Some((file, origin)) => write_file_clip(
                &file,
                origin,
                job.start.max(origin),
                end,
                &path,
                job.blur.clone(),
            ),
            None => match job.ring.extract(job.start, end) {
                Some((caps, units)) => write_clip(&caps, &units, &path, job.blur.clone()),
                None => {
                    return failed(&format!(
                        "the camera's buffer holds no H.264/H.265 video from {} to {end}",
                        job.start
                    ));
                }
            },
        };
        let clip = match written {
            Ok(clip) => clip,
            Err(e) => return failed(&e),
        };
        let data = match std::fs::read(&clip.path) {
            Ok(data) => data,
            Err(e) => return failed(&e),
        };
        metrics::counter!("skynet_clips_written_total", "camera" => job.camera.to_string())
            .increment(1);
        bytes.increment(data.len() as u64);
        if let Some(max) = self.max_bytes {
            let deleted = enforce_budget(&self.dir, max);
            if deleted > 0 {
                metrics::counter!("skynet_evidence_deleted_total").increment(deleted as u64);
                tracing::info!(deleted, "evidence over max_gb: oldest files removed");
            }
        }
        let duration = (clip.end - clip.start).num_milliseconds() as f64 / 1000.0;
        tracing::info!(camera = %job.camera, incident = %job.incident, revision = job.revision, start = %clip.start, end = %clip.end, bytes = data.len(), "event clip written");
        Some(EvidenceRef {
            kind: EvidenceRef::CLIP.into(),
            url: format!("{}{}/{name}", self.url_base, job.incident),
            sha256: skynet_snapshot::sha256_hex(&data),
            camera: job.camera.clone(),
            frame_at: clip.start,
            width: clip.width.max(1),
            height: clip.height.max(1),
            start: Some(clip.start),
            end: Some(clip.end),
            duration_s: Some(duration),
        })
    }
}
