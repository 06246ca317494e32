//! Snapshots in the rules stage: the latest analysed image of each camera, and a snapshot
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
    AnalysedFrame, Detection, DeviceId, EvidenceRef, FrameImage, Incident, IncidentStatus,
    RiskEvent, SourceKind, TrackedObject,
};
use skynet_detect::Zone;

use crate::draw::{Annotations, boxes_on_image, render};
use crate::settings::SnapshotConfig;
use crate::store::SnapshotStore;

/// The last frame of a camera that led to an observation, with its pixels.
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
struct LastSnapshot {
    detections: Vec<Detection>,
    frame_at: DateTime<Utc>,
}

pub struct SnapshotStage {
    store: SnapshotStore,
    cameras: BTreeMap<DeviceId, CameraView>,
    incidents: HashMap<String, LastSnapshot>,
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

impl SnapshotStage {
    /// Snapshots for `cameras` (each with its zones and privacy masks); `None` when
    /// `[evidence] enabled = false`.
    pub fn for_cameras(
        settings: &SnapshotConfig,
        cameras: impl Iterator<Item = (DeviceId, Vec<Zone>, Vec<Vec<[f64; 2]>>)>,
    ) -> Option<Self> {
        if !settings.enabled {
            return None;
        }
        let cameras = cameras
            .map(|(id, zones, privacy_masks)| {
                let view = CameraView {
                    zones,
                    privacy_masks,
                    latest: None,
                };
                (id, view)
            })
            .collect();
        Some(Self {
            store: SnapshotStore::new(settings),
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

    /// A camera that joined while running (a platform channel placed by its catalog
    /// position): its zones are drawn and its privacy masks blurred as a configured one's.
    pub fn add_camera(
        &mut self,
        id: DeviceId,
        zones: Vec<Zone>,
        privacy_masks: Vec<Vec<[f64; 2]>>,
    ) {
        self.cameras.entry(id).or_insert(CameraView {
            zones,
            privacy_masks,
            latest: None,
        });
    }

    /// Keeps `image` as the camera's latest, replacing the one before. The rules stage
    /// calls it for frames that led to an observation: only those can bring an incident
    /// new detections, also in a revision that comes out later (at a flush).
    pub fn remember(&mut self, frame: &AnalysedFrame, image: Arc<FrameImage>) {
        if let Some(view) = self.cameras.get_mut(&frame.info.camera) {
            view.latest = Some(Latest {
                at: frame.info.captured_at,
                camera_size: (frame.info.width, frame.info.height),
                // Rules report tracked objects (with their track ids); the raw detections are
                // kept too for rules that report those.
                detections: frame
                    .tracks
                    .iter()
                    .map(TrackedObject::as_detection)
                    .chain(frame.detections.iter().cloned())
                    .collect(),
                image,
            });
        }
    }

    /// Adds a snapshot to each incident revision whose detections are new since its last
    /// snapshot.
    pub fn attach(&mut self, events: &mut [RiskEvent]) {
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
        let boxes = boxes_on_image(&incident.detections, (cw, ch), &image);
        let annotations = Annotations {
            detections: &boxes,
            zones: &view.zones,
            privacy_masks: &view.privacy_masks,
        };
        // Whatever happens next, this revision's detections are dealt with: a failure is
        // not retried on every later revision.
        self.incidents.insert(
            incident.id.clone(),
            LastSnapshot {
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
                    start: None,
                    end: None,
                    duration_s: None,
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
    fn frame_of(&self, incident: &Incident) -> Option<(DeviceId, &Latest)> {
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use skynet_core::{BBox, ConfigContext, FrameInfo, PixelOrder};

    use super::*;
    use crate::settings::SnapshotSettings;

    fn stage_in(dir: &Path, max_per_s: f64) -> SnapshotStage {
        let settings = SnapshotSettings {
            dir: Some(dir.display().to_string()),
            max_per_s,
            ..SnapshotSettings::default()
        }
        .validate(&ConfigContext::new(Path::new("x.toml")))
        .unwrap();
        let masks = vec![vec![[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]];
        SnapshotStage::for_cameras(
            &settings,
            std::iter::once((DeviceId::new("cam"), Vec::new(), masks)),
        )
        .unwrap()
    }

    fn detection(x: f32) -> Detection {
        Detection {
            label: "person".into(),
            score: 0.9,
            bbox: BBox::new(x, 100.0, x + 50.0, 300.0),
            track: None,
        }
    }

    /// A 640x480 camera's frame at second `at`, analysed at 320x240.
    fn frame(at: i64, detections: Vec<Detection>) -> (AnalysedFrame, Arc<FrameImage>) {
        let info = FrameInfo {
            camera: DeviceId::new("cam"),
            seq: at as u64,
            captured_at: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(at),
            decoded_at: Instant::now(),
            skipped: 0,
            width: 640,
            height: 480,
        };
        let image = FrameImage {
            width: 320,
            height: 240,
            stride: 320 * 3,
            order: PixelOrder::Bgr,
            data: vec![128u8; 320 * 240 * 3].into(),
        };
        let frame = AnalysedFrame {
            info,
            detections,
            inference: Duration::ZERO,
            inferred: true,
            tracks: Vec::new(),
        };
        (frame, Arc::new(image))
    }

    fn revision(id: &str, revision: u32, detections: &[Detection]) -> RiskEvent {
        let incident = serde_json::json!({
            "id": id, "revision": revision, "status": "updated", "change": "evidence",
            "category": "restricted_area_intrusion", "level": "IV", "level_colour": "blue",
            "risk_score": 0.3, "confidence": 0.9, "grid": "G-1", "department": "d",
            "deadlines": {}, "camera": "cam", "owner": "police",
            "first_seen": "1970-01-01T00:00:00Z", "last_seen": "1970-01-01T00:00:00Z",
            "observations": 1, "detections": detections,
            "rule": {"name": "r", "kind": "zone_intrusion"}
        });
        RiskEvent::Incident(serde_json::from_value(incident).unwrap())
    }

    fn evidence(event: &RiskEvent) -> &[EvidenceRef] {
        &event.as_incident().unwrap().evidence
    }

    #[test]
    fn new_detections_get_one_snapshot_and_repeats_get_none() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = stage_in(dir.path(), 100.0);
        let seen = vec![detection(100.0)];
        let (f, image) = frame(0, vec![detection(100.0), detection(400.0)]);
        stage.remember(&f, image);

        let mut events = vec![revision("inc-1", 1, &seen)];
        stage.attach(&mut events);
        let taken = evidence(&events[0]);
        assert_eq!(taken.len(), 1);
        assert_eq!((taken[0].width, taken[0].height), (320, 240));
        assert_eq!(taken[0].frame_at, f.info.captured_at);
        let bytes = std::fs::read(dir.path().join("inc-1/1.jpg")).unwrap();
        assert_eq!(taken[0].sha256, crate::store::sha256_hex(&bytes));

        // The same detections in the next revision: nothing new to show.
        let mut events = vec![revision("inc-1", 2, &seen)];
        stage.attach(&mut events);
        assert!(evidence(&events[0]).is_empty());

        // New ones, but within min_interval_s of the last snapshot (event time).
        let (f, image) = frame(2, vec![detection(200.0)]);
        stage.remember(&f, image);
        let mut events = vec![revision("inc-1", 3, &[detection(200.0)])];
        stage.attach(&mut events);
        assert!(evidence(&events[0]).is_empty());
        // Later, they are taken.
        let (f, image) = frame(10, vec![detection(200.0)]);
        stage.remember(&f, image);
        let mut events = vec![revision("inc-1", 4, &[detection(200.0)])];
        stage.attach(&mut events);
        assert_eq!(evidence(&events[0]).len(), 1);

        // Detections of a frame no longer held: no snapshot of the wrong frame.
        let mut events = vec![revision("inc-2", 1, &[detection(10.0)])];
        stage.attach(&mut events);
        assert!(evidence(&events[0]).is_empty());
    }

    #[test]
    fn the_rate_cap_and_a_failing_store_never_hold_a_revision_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut stage = stage_in(dir.path(), 0.01);
        let (f, image) = frame(0, vec![detection(100.0)]);
        stage.remember(&f, image);
        let mut events = vec![
            revision("inc-1", 1, &[detection(100.0)]),
            revision("inc-2", 1, &[detection(100.0)]),
        ];
        stage.attach(&mut events);
        // One token: the first incident gets its snapshot, the second goes out without.
        assert_eq!(evidence(&events[0]).len(), 1);
        assert!(evidence(&events[1]).is_empty());

        // A directory that cannot be created (a file is in the way): logged and counted,
        // the revision goes on as it was.
        let blocked = dir.path().join("blocked");
        std::fs::write(&blocked, b"not a directory").unwrap();
        let mut failing = stage_in(&blocked, 100.0);
        let (f, image) = frame(0, vec![detection(100.0)]);
        failing.remember(&f, image);
        let mut events = vec![revision("inc-3", 1, &[detection(100.0)])];
        let before = events.clone();
        failing.attach(&mut events);
        assert_eq!(events, before);
    }
}
