//! Evidence in the rules stage: the latest analysed image of each camera, and a snapshot
//! for each incident revision that brings new detections.
//!
//! The snapshot is encoded and written before the revision goes to the commit stage, so the
//! revision can carry the file's SHA-256. That happens on the rules thread: incidents are
//! rare, and the cost is bounded by `min_interval_s` per incident and `max_per_s` overall.
//! Nothing here can hold an incident back: a snapshot that cannot be taken or written is
//! logged and counted, and the revision goes out without it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use skynet_core::{
    AnalysedFrame, CameraId, Detection, EvidenceRef, FrameImage, Incident, IncidentStatus,
    RiskEvent, SourceKind,
};
use skynet_detect::Zone;

use crate::config::PipelineConfig;
use crate::evidence::{Annotations, EvidenceStore, render};

/// The last frame of a camera that had detections, with its pixels.
struct Latest {
    at: DateTime<Utc>,
    /// The camera's resolution, which detection boxes are in.
    camera_size: (u32, u32),
    detections: Vec<Detection>,
    image: Arc<FrameImage>,
}

struct CameraView {
    zones: Vec<Zone>,
    privacy_masks: Vec<Vec<[f64; 2]>>,
    latest: Option<Latest>,
}

/// What was last snapshotted of an incident.
struct Taken {
    detections: Vec<Detection>,
    frame_at: DateTime<Utc>,
}

pub(crate) struct EvidenceStage {
    store: EvidenceStore,
    cameras: BTreeMap<CameraId, CameraView>,
    incidents: HashMap<String, Taken>,
    min_interval: chrono::Duration,
    max_per_s: f64,
    /// A token bucket for `max_per_s`: tokens now, and when they were counted.
    tokens: f64,
    refilled: Instant,
    written: metrics::Counter,
    errors: metrics::Counter,
}

#[derive(Debug, Clone, Copy)]
enum Skip {
    /// The incident had a snapshot less than `min_interval_s` (event time) before.
    IncidentInterval,
    /// More than `max_per_s` snapshots this second.
    RateLimit,
    /// No image of the frame the detections came from is held (an older frame's detections
    /// came out with a later revision).
    NoFrame,
}

impl Skip {
    fn reason(self) -> &'static str {
        match self {
            Self::IncidentInterval => "incident_interval",
            Self::RateLimit => "rate_limit",
            Self::NoFrame => "no_frame",
        }
    }
}

impl EvidenceStage {
    /// `None` when `[evidence] enabled = false`.
    pub(crate) fn new(config: &PipelineConfig) -> Option<Self> {
        let settings = &config.evidence;
        if !settings.enabled {
            return None;
        }
        let cameras = config
            .cameras
            .iter()
            .map(|c| {
                let view = CameraView {
                    zones: c.zones.clone(),
                    privacy_masks: c.privacy_masks.clone(),
                    latest: None,
                };
                (c.id.clone(), view)
            })
            .collect();
        Some(Self {
            store: EvidenceStore::new(settings),
            cameras,
            incidents: HashMap::new(),
            min_interval: settings.min_interval,
            max_per_s: settings.max_per_s,
            tokens: settings.max_per_s.max(1.0),
            refilled: Instant::now(),
            written: metrics::counter!("skynet_evidence_written_total"),
            errors: metrics::counter!("skynet_evidence_errors_total"),
        })
    }

    /// Keeps `image` as the camera's latest, replacing the one before.
    pub(crate) fn remember(&mut self, frame: &AnalysedFrame, image: Arc<FrameImage>) {
        if let Some(view) = self.cameras.get_mut(&frame.info.camera) {
            view.latest = Some(Latest {
                at: frame.info.captured_at,
                camera_size: (frame.info.width, frame.info.height),
                detections: frame.detections.clone(),
                image,
            });
        }
    }

    /// Adds a snapshot to each incident revision whose detections are new since its last
    /// snapshot.
    pub(crate) fn attach(&mut self, events: &mut [RiskEvent]) {
        for event in events {
            let RiskEvent::Incident(incident) = event else {
                continue;
            };
            if incident.status == IncidentStatus::Closed || incident.state.is_final() {
                // Nothing new comes after; forget it.
                self.incidents.remove(&incident.id);
                continue;
            }
            if incident.detections.is_empty()
                || self
                    .incidents
                    .get(&incident.id)
                    .is_some_and(|t| t.detections == incident.detections)
            {
                continue;
            }
            match self.snapshot(incident) {
                Ok(Some(evidence)) => incident.evidence.push(evidence),
                Ok(None) => {}
                Err(skip) => {
                    metrics::counter!("skynet_evidence_skipped_total", "reason" => skip.reason())
                        .increment(1);
                    tracing::debug!(incident = %incident.id, revision = incident.revision, reason = skip.reason(), "no snapshot for this revision");
                }
            }
        }
    }

    fn snapshot(&mut self, incident: &Incident) -> Result<Option<EvidenceRef>, Skip> {
        let (camera, frame_at, (cw, ch), image) = {
            let (camera, latest) = self.frame_of(incident).ok_or(Skip::NoFrame)?;
            (
                camera,
                latest.at,
                latest.camera_size,
                Arc::clone(&latest.image),
            )
        };
        if let Some(taken) = self.incidents.get(&incident.id)
            && frame_at.signed_duration_since(taken.frame_at) < self.min_interval
        {
            return Err(Skip::IncidentInterval);
        }
        self.take_token()?;
        let view = self.cameras.get(&camera).ok_or(Skip::NoFrame)?;
        // Boxes are in the camera's pixels; the image may be smaller (scaled for the model).
        let sx = image.width as f32 / cw.max(1) as f32;
        let sy = image.height as f32 / ch.max(1) as f32;
        let boxes: Vec<Detection> = incident
            .detections
            .iter()
            .map(|d| Detection {
                bbox: d.bbox.scaled(sx, sy),
                ..d.clone()
            })
            .collect();
        let annotations = Annotations {
            detections: &boxes,
            zones: &view.zones,
            privacy_masks: &view.privacy_masks,
        };
        // Whatever happens next, this revision's detections are dealt with: a failure is
        // not retried on every later revision.
        self.incidents.insert(
            incident.id.clone(),
            Taken {
                detections: incident.detections.clone(),
                frame_at,
            },
        );
        let stored = render(&image, annotations)
            .and_then(|rgb| self.store.encode(&rgb))
            .and_then(|jpeg| self.store.write(&incident.id, incident.revision, &jpeg));
        match stored {
            Ok(stored) => {
                self.written.increment(1);
                Ok(Some(EvidenceRef {
                    kind: EvidenceRef::SNAPSHOT.into(),
                    url: stored.url,
                    sha256: stored.sha256,
                    camera,
                    frame_at,
                    width: image.width,
                    height: image.height,
                }))
            }
            Err(e) => {
                self.errors.increment(1);
                tracing::error!(camera = %camera, incident = %incident.id, revision = incident.revision, error = %e, "evidence snapshot failed; the revision goes out without it");
                Ok(None)
            }
        }
    }

    /// The camera, and its latest frame, whose detections the incident's are: the cameras
    /// the incident rests on, its own first.
    fn frame_of(&self, incident: &Incident) -> Option<(CameraId, &Latest)> {
        let contributing = incident
            .contributions
            .iter()
            .filter(|c| c.source.kind == SourceKind::Camera)
            .map(|c| &c.source.id);
        std::iter::once(&incident.camera)
            .chain(contributing)
            .find_map(|id| {
                let latest = self.cameras.get(id)?.latest.as_ref()?;
                let same_frame = incident
                    .detections
                    .iter()
                    .all(|d| latest.detections.contains(d));
                same_frame.then(|| (id.clone(), latest))
            })
    }

    fn take_token(&mut self) -> Result<(), Skip> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        // At most a second's worth banked, so a quiet hour does not allow a burst.
        self.tokens = (self.tokens + elapsed * self.max_per_s).min(self.max_per_s.max(1.0));
        if self.tokens < 1.0 {
            return Err(Skip::RateLimit);
        }
        self.tokens -= 1.0;
        Ok(())
    }
}
