//! Multi-object tracking on one camera, of the ByteTrack kind (Zhang et al., 2022).
//!
//! Each frame, every track's box is predicted by a constant-velocity Kalman filter over
//! (centre x, centre y, aspect w/h, height), then matched to the detections by IoU in two
//! stages: confident detections first (against tracked and lost tracks), then the weak ones
//! (against the tracks still unmatched), which keeps a partly hidden object on its track
//! instead of dropping it. Each stage is an optimal assignment (Kuhn-Munkres, from the
//! `pathfinding` crate), and a detection only ever matches a track of its own label.
//!
//! Unlike ByteTrack, time is event time, not frame counts: frames may be skipped by an
//! inference interval or motion gating, so prediction runs over the real time step and a
//! track is lost after `lost_after_s` seconds without a detection. A frame the detector did not
//! run on (`inferred == false`) only moves the tracks along their prediction: nothing is
//! matched, lost or removed on it.
//!
//! Sparse frames (a camera decoding key frames only, one a second or less) are far apart by
//! design, not a lost object: the time a track is kept without a detection is at least
//! [`SPARSE_FRAMES_KEPT`] times the recent frame interval (the median of the last few), and
//! prediction runs over that longer span too. At 10 frames/s that is 0.3 s, below the default
//! `lost_after_s`, so normal frame rates behave exactly as before.
//!
//! The tracker also tells when an object stands still ([`TrackedObject::stationary_since`]), so
//! rules can say "a car has been parked here for 5 minutes" once instead of "a car is here" at
//! every frame.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use pathfinding::prelude::{Matrix, kuhn_munkres};
use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::{AnalysedFrame, BBox, Detection, FieldError, TrackedObject};

/// A camera's tracker settings (`tracker = { ... }` in its `[[cameras]]` table).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrackerSettings {
    /// Detections at or above this score take part in the first (confident) matching stage.
    pub high_score: f32,
    /// Detections from this score up to `high_score` only keep existing tracks alive (second
    /// stage); below it they are ignored. The stage only sees what the detector passes, so set
    /// the detector's threshold at or below this to use it.
    pub low_score: f32,
    /// An unmatched detection starts a new track only from this score.
    pub new_track_score: f32,
    /// Least IoU between a track's predicted box and a detection for a match (first stage and
    /// new tracks).
    pub match_iou: f32,
    /// Least IoU for a match in the low-score stage: stricter, as weak detections are often
    /// false ones.
    pub low_match_iou: f32,
    /// Detections in a row a new track needs before it is confirmed and gets an id.
    pub min_hits: u32,
    /// A track not detected for this long (event time) is dropped; until then it can be found
    /// again under its id. Must exceed the time between detector runs.
    /// At sparse frame rates the tracker keeps a track for at least [`SPARSE_FRAMES_KEPT`]
    /// frame intervals.
    pub lost_after_s: f64,
    /// An object whose box centre stayed within `stationary_max_shift` of its size for this
    /// long is stationary.
    pub stationary_window_s: f64,
    /// How far the box centre may wander, as a fraction of the box's size (the square root of
    /// its area), for the object to count as standing still.
    pub stationary_max_shift: f32,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        // ByteTrack's published defaults (track_thresh 0.5, det_thresh 0.6, 0.5 IoU for the
        // second stage), with its 30-frame buffer as 1.5 s so that a detector running every
        // 3rd frame at 10 frames/s still has margin. Its first-stage IoU of 0.2 is 0.1 here:
        // on vtest.avi that broke fewer tracks (fragmentation 10 against 14 with the detector
        // at every frame, 19 against 30 at every 3rd) with no more jumps (tests/tracking_vtest.rs).
        Self {
            high_score: 0.5,
            low_score: 0.1,
            new_track_score: 0.6,
            match_iou: 0.1,
            low_match_iou: 0.5,
            min_hits: 2,
            lost_after_s: 1.5,
            stationary_window_s: 5.0,
            stationary_max_shift: 0.25,
        }
    }
}

impl TrackerSettings {
    /// The longest `lost_after_s` and `stationary_window_s`: an hour.
    pub const MAX_SECONDS: f64 = 3600.0;

    /// Range checks; the error names the key.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_range("high_score", f64::from(self.high_score), 0.0, 1.0)?;
        check_range("low_score", f64::from(self.low_score), 0.0, 1.0)?;
        if self.low_score > self.high_score {
            return Err(FieldError::new(
                "low_score",
                format!(
                    "`low_score` ({}) must not exceed `high_score` ({})",
                    self.low_score, self.high_score
                ),
            ));
        }
        check_range(
            "new_track_score",
            f64::from(self.new_track_score),
            f64::from(self.high_score),
            1.0,
        )
        .map_err(|e| {
            FieldError::new(
                e.field,
                format!(
                    "`new_track_score` must be between `high_score` ({}) and 1, got {}",
                    self.high_score, self.new_track_score
                ),
            )
        })?;
        positive_at_most("match_iou", f64::from(self.match_iou), 1.0)?;
        positive_at_most("low_match_iou", f64::from(self.low_match_iou), 1.0)?;
        check_range("min_hits", f64::from(self.min_hits), 1.0, 100.0)?;
        positive_at_most("lost_after_s", self.lost_after_s, Self::MAX_SECONDS)?;
        positive_at_most(
            "stationary_window_s",
            self.stationary_window_s,
            Self::MAX_SECONDS,
        )?;
        positive_at_most(
            "stationary_max_shift",
            f64::from(self.stationary_max_shift),
            10.0,
        )?;
        Ok(())
    }
}

/// `value` in (0, max].
fn positive_at_most(field: &str, value: f64, max: f64) -> Result<(), FieldError> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("`{field}` must be in (0, {max}], got {value}"),
        ))
    }
}

/// ByteTrack's noise model is per frame at about 30 frames/s; this tracker scales it by the
/// real time step, so its figures hold at any frame rate.
const REFERENCE_FRAME_S: f64 = 1.0 / 30.0;
/// ByteTrack's position and velocity noise, as fractions of the box height (per frame).
const STD_WEIGHT_POSITION: f64 = 1.0 / 20.0;
const STD_WEIGHT_VELOCITY: f64 = 1.0 / 160.0;

/// One coordinate of the state and its velocity, with their 2x2 covariance.
///
/// ByteTrack's 8-dimensional filter has diagonal noise and a transition that only couples each
/// coordinate with its own velocity, so its covariance stays block diagonal: four independent
/// 2x2 filters are the same filter, exactly, without a matrix library.
#[derive(Debug, Clone, Copy)]
struct Axis {
    x: f64,
    v: f64,
    p_xx: f64,
    p_xv: f64,
    p_vv: f64,
}

impl Axis {
    fn new(x: f64, std_x: f64, std_v: f64) -> Self {
        Self {
            x,
            v: 0.0,
            p_xx: std_x * std_x,
            p_xv: 0.0,
            p_vv: std_v * std_v,
        }
    }

    fn predict(&mut self, dt: f64, q_x: f64, q_v: f64) {
        self.x += self.v * dt;
        self.p_xx += 2.0 * dt * self.p_xv + dt * dt * self.p_vv + q_x;
        self.p_xv += dt * self.p_vv;
        self.p_vv += q_v;
    }

    fn update(&mut self, z: f64, r: f64) {
        let s = self.p_xx + r;
        if s <= 0.0 || !s.is_finite() {
            return;
        }
        let (k_x, k_v) = (self.p_xx / s, self.p_xv / s);
        let innovation = z - self.x;
        self.x += k_x * innovation;
        self.v += k_v * innovation;
        self.p_vv -= k_v * self.p_xv;
        self.p_xx *= 1.0 - k_x;
        self.p_xv *= 1.0 - k_x;
    }
}

/// Constant-velocity Kalman filter over (cx, cy, aspect, height), velocities per second.
#[derive(Debug, Clone, Copy)]
struct Motion {
    axes: [Axis; 4],
}

impl Motion {
    const CX: usize = 0;
    const CY: usize = 1;
    const ASPECT: usize = 2;
    const HEIGHT: usize = 3;

    fn measure(b: &BBox) -> [f64; 4] {
        let h = f64::from(b.height()).max(1.0);
        [
            f64::from(b.x1 + b.x2) / 2.0,
            f64::from(b.y1 + b.y2) / 2.0,
            f64::from(b.width()) / h,
            h,
        ]
    }

    fn new(b: &BBox) -> Self {
        let z = Self::measure(b);
        let h = z[Self::HEIGHT];
        // Per second: ByteTrack's per-frame velocity spread times the frame rate.
        let (pos, vel) = (
            2.0 * STD_WEIGHT_POSITION * h,
            10.0 * STD_WEIGHT_VELOCITY * h / REFERENCE_FRAME_S,
        );
        Self {
            axes: [
                Axis::new(z[0], pos, vel),
                Axis::new(z[1], pos, vel),
                Axis::new(z[2], 1e-2, 1e-5 / REFERENCE_FRAME_S),
                Axis::new(z[3], pos, vel),
            ],
        }
    }

    fn predict(&mut self, dt: f64, keep_size_rate: bool) {
        if !keep_size_rate {
            // As ByteTrack: a track out of sight stops growing or shrinking.
            self.axes[Self::HEIGHT].v = 0.0;
        }
        if dt <= 0.0 {
            return;
        }
        let h = self.axes[Self::HEIGHT].x.max(1.0);
        let steps = dt / REFERENCE_FRAME_S;
        let q_pos = (STD_WEIGHT_POSITION * h).powi(2) * steps;
        let q_vel = (STD_WEIGHT_VELOCITY * h / REFERENCE_FRAME_S).powi(2) * steps;
        for (i, axis) in self.axes.iter_mut().enumerate() {
            if i == Self::ASPECT {
                axis.predict(dt, 1e-4 * steps, 1e-10 / REFERENCE_FRAME_S.powi(2) * steps);
            } else {
                axis.predict(dt, q_pos, q_vel);
            }
        }
    }

    fn update(&mut self, b: &BBox) {
        let z = Self::measure(b);
        let r_pos = (STD_WEIGHT_POSITION * self.axes[Self::HEIGHT].x.max(1.0)).powi(2);
        for (i, axis) in self.axes.iter_mut().enumerate() {
            axis.update(z[i], if i == Self::ASPECT { 1e-2 } else { r_pos });
        }
    }

    fn bbox(&self) -> BBox {
        let h = self.axes[Self::HEIGHT].x.max(1.0);
        let w = self.axes[Self::ASPECT].x.max(0.0) * h;
        let (cx, cy) = (self.axes[Self::CX].x, self.axes[Self::CY].x);
        BBox::new(
            (cx - w / 2.0) as f32,
            (cy - h / 2.0) as f32,
            (cx + w / 2.0) as f32,
            (cy + h / 2.0) as f32,
        )
    }
}

/// Tells when a track's box stops moving, and when it moves off again.
#[derive(Debug, Clone, Default)]
struct Stillness {
    /// Box centres over the last window, thinned to about [`Self::SAMPLES`] per window.
    samples: VecDeque<(DateTime<Utc>, f32, f32)>,
    since: Option<DateTime<Utc>>,
    /// The mean centre while still: moving this far (not from frame to frame) ends it, so a
    /// slow creep ends it too.
    anchor: (f32, f32),
}

impl Stillness {
    const SAMPLES: i32 = 32;

    fn observe(&mut self, t: DateTime<Utc>, b: &BBox, window: chrono::Duration, max_shift: f32) {
        let centre = ((b.x1 + b.x2) / 2.0, (b.y1 + b.y2) / 2.0);
        let limit = max_shift * b.area().sqrt().max(1.0);
        let far = |a: (f32, f32), c: (f32, f32)| (a.0 - c.0).hypot(a.1 - c.1) > limit;
        if self.since.is_some() {
            if !far(self.anchor, centre) {
                return;
            }
            self.since = None;
            self.samples.clear();
        }
        let spacing = window / Self::SAMPLES;
        if self
            .samples
            .back()
            .is_none_or(|(last, _, _)| t - *last >= spacing)
        {
            self.samples.push_back((t, centre.0, centre.1));
        }
        // Keep one sample at or before the window's start, so a full window can be told.
        while self.samples.len() >= 2 && self.samples[1].0 <= t - window {
            self.samples.pop_front();
        }
        let Some(&(oldest, _, _)) = self.samples.front() else {
            return;
        };
        if oldest > t - window {
            return;
        }
        let n = self.samples.len() as f32 + 1.0;
        let (sx, sy) = self
            .samples
            .iter()
            .fold((centre.0, centre.1), |(x, y), s| (x + s.1, y + s.2));
        let mean = (sx / n, sy / n);
        if !far(mean, centre) && self.samples.iter().all(|s| !far(mean, (s.1, s.2))) {
            self.since = Some(oldest);
            self.anchor = mean;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TrackState {
    /// Seen fewer than `min_hits` times: no id yet, not reported.
    Tentative,
    /// Matched at the last frame the detector ran on.
    Tracked,
    /// Missed at the last detector run; kept for `lost_after_s` to be found again.
    Lost,
}

#[derive(Debug, Clone)]
struct Track {
    id: Option<u64>,
    label: String,
    score: f32,
    motion: Motion,
    state: TrackState,
    hits: u32,
    first_seen: Option<DateTime<Utc>>,
    last_detected: DateTime<Utc>,
    stillness: Stillness,
    detected: bool,
}

/// Follows one camera's objects from frame to frame; see the module docs.
pub struct Tracker {
    settings: TrackerSettings,
    tracks: Vec<Track>,
    next_id: u64,
    last_time: Option<DateTime<Utc>>,
    /// The last few steps between frames, in seconds.
    intervals: VecDeque<f64>,
    metrics: Option<TrackerMetrics>,
}

/// A track is kept for at least this many recent frame intervals without a detection.
pub const SPARSE_FRAMES_KEPT: f64 = 3.0;
/// The recent frame interval is the median of this many last steps: one stall of the stream
/// does not stretch it.
const INTERVALS_KEPT: usize = 5;

struct TrackerMetrics {
    camera: String,
    active: metrics::Gauge,
    started: metrics::Counter,
    dropped: metrics::Counter,
}

impl TrackerMetrics {
    fn new(camera: &str) -> Self {
        let camera = camera.to_string();
        Self {
            active: metrics::gauge!("skynet_tracks_active", "camera" => camera.clone()),
            started: metrics::counter!("skynet_tracks_started_total", "camera" => camera.clone()),
            dropped: metrics::counter!("skynet_tracker_rejected_detections_total", "camera" => camera.clone()),
            camera,
        }
    }
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("settings", &self.settings)
            .field("tracks", &self.tracks.len())
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

/// Pairs (track, detection) of the optimal assignment, by largest total IoU, among pairs of
/// the same label with IoU at least `min_iou`.
fn associate(
    tracks: &[Track],
    track_ix: &[usize],
    boxes: &[BBox],
    detections: &[Detection],
    det_ix: &[usize],
    min_iou: f32,
) -> Vec<(usize, usize)> {
    if track_ix.is_empty() || det_ix.is_empty() {
        return Vec::new();
    }
    // IoU as integers: the assignment needs an exactly ordered weight.
    const SCALE: f32 = 1_000_000.0;
    let weight = |t: usize, d: usize| -> i64 {
        let (track, det) = (&tracks[t], &detections[d]);
        if track.label != det.label {
            return 0;
        }
        let iou = boxes[t].iou(&det.bbox);
        if iou >= min_iou && iou > 0.0 {
            (iou * SCALE) as i64
        } else {
            0
        }
    };
    let weights: Vec<(usize, usize, i64)> = track_ix
        .iter()
        .flat_map(|&t| det_ix.iter().map(move |&d| (t, d)))
        .map(|(t, d)| (t, d, weight(t, d)))
        .collect();
    if weights.iter().all(|w| w.2 == 0) {
        return Vec::new();
    }
    let (rows, cols) = (track_ix.len(), det_ix.len());
    // Kuhn-Munkres assigns every row, so the shorter side goes in rows. A pair of weight 0
    // is no match: leaving it out costs the total nothing, so the optimum is the same.
    let pairs: Vec<(usize, usize)> = if rows <= cols {
        let m = Matrix::from_fn(rows, cols, |(r, c)| weights[r * cols + c].2);
        kuhn_munkres(&m).1.into_iter().enumerate().collect()
    } else {
        let m = Matrix::from_fn(cols, rows, |(c, r)| weights[r * cols + c].2);
        kuhn_munkres(&m)
            .1
            .into_iter()
            .enumerate()
            .map(|(c, r)| (r, c))
            .collect()
    };
    pairs
        .into_iter()
        .filter(|&(r, c)| weights[r * cols + c].2 > 0)
        .map(|(r, c)| (track_ix[r], det_ix[c]))
        .collect()
}

impl Tracker {
    pub fn new(settings: TrackerSettings) -> Tracker {
        Tracker {
            settings,
            tracks: Vec::new(),
            next_id: 1,
            last_time: None,
            intervals: VecDeque::with_capacity(INTERVALS_KEPT),
            metrics: None,
        }
    }

    pub fn settings(&self) -> &TrackerSettings {
        &self.settings
    }

    /// Drops every track and the frame-interval history, keeping the id counter: a camera
    /// seen again after a long gap (a patrol's next visit) starts afresh, and a new object
    /// never gets an id an earlier one had (rules keep per-track memory by id).
    pub fn forget(&mut self) {
        self.tracks.clear();
        self.last_time = None;
        self.intervals.clear();
        if let Some(m) = &self.metrics {
            m.active.set(0.0);
        }
    }

    /// Moves the tracks to this frame: predicts them, matches them to its detections when
    /// the detector ran on it, and starts, confirms, loses and drops tracks. Sets
    /// `frame.tracks` to the confirmed tracks in view (predicted ones with `detected == false`)
    /// and each matched detection's `track`.
    pub fn update(&mut self, frame: &mut AnalysedFrame) {
        let now = frame.info.captured_at;
        let camera = frame.info.camera.as_str();
        if self.metrics.as_ref().is_none_or(|m| m.camera != camera) {
            self.metrics = Some(TrackerMetrics::new(camera));
        }
        // Frames out of order (a clock step back) move nothing: prediction needs dt >= 0.
        let step = self.last_time.map_or(0.0, |last| {
            (now - last).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
        });
        if step > 0.0 {
            if self.intervals.len() == INTERVALS_KEPT {
                self.intervals.pop_front();
            }
            self.intervals.push_back(step);
        }
        let lost_after_s = self.lost_after_s();
        let lost_after = chrono::Duration::milliseconds((lost_after_s * 1000.0).round() as i64);
        let dt = step.clamp(0.0, lost_after_s);
        if self.last_time.is_none_or(|last| now > last) {
            self.last_time = Some(now);
        }
        for track in &mut self.tracks {
            track.motion.predict(dt, track.state == TrackState::Tracked);
            track.detected = false;
        }
        if frame.inferred {
            self.associate_frame(frame, now);
            // Time-based loss, counted only where the detector looked.
            self.tracks
                .retain(|t| t.state != TrackState::Lost || now - t.last_detected <= lost_after);
        }
        frame.tracks = self
            .tracks
            .iter()
            .filter(|t| t.state == TrackState::Tracked)
            .filter_map(|t| {
                Some(TrackedObject {
                    id: t.id?,
                    label: t.label.clone(),
                    score: t.score,
                    bbox: t.motion.bbox(),
                    first_seen: t.first_seen.unwrap_or(now),
                    stationary_since: t.stillness.since,
                    detected: t.detected,
                })
            })
            .collect();
        if let Some(m) = &self.metrics {
            m.active.set(frame.tracks.len() as f64);
        }
    }

    /// How long a track is kept without a detection: `lost_after_s`, or more at sparse frame
    /// rates ([`SPARSE_FRAMES_KEPT`] recent frame intervals), at most an hour.
    pub fn lost_after_s(&self) -> f64 {
        let mut steps: Vec<f64> = self.intervals.iter().copied().collect();
        steps.sort_by(f64::total_cmp);
        let interval = steps.get(steps.len() / 2).copied().unwrap_or(0.0);
        self.settings
            .lost_after_s
            .max((SPARSE_FRAMES_KEPT * interval).min(TrackerSettings::MAX_SECONDS))
    }

    fn associate_frame(&mut self, frame: &mut AnalysedFrame, now: DateTime<Utc>) {
        let s = self.settings.clone();
        let usable = |d: &Detection| {
            d.score.is_finite()
                && [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2]
                    .iter()
                    .all(|v| v.is_finite())
                && d.bbox.area() > 0.0
        };
        let mut high = Vec::new();
        let mut low = Vec::new();
        for (i, d) in frame.detections.iter().enumerate() {
            if !usable(d) {
                if let Some(m) = &self.metrics {
                    m.dropped.increment(1);
                }
            } else if d.score >= s.high_score {
                high.push(i);
            } else if d.score >= s.low_score {
                low.push(i);
            }
        }
        let boxes: Vec<BBox> = self.tracks.iter().map(|t| t.motion.bbox()).collect();
        let pool: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks[i].state != TrackState::Tentative)
            .collect();
        let dets = &frame.detections;

        // Stage 1: confident detections against every confirmed track, lost ones included.
        let first = associate(&self.tracks, &pool, &boxes, dets, &high, s.match_iou);
        let mut matched_track = vec![false; self.tracks.len()];
        let mut matched_det = vec![false; dets.len()];
        for &(t, d) in &first {
            matched_track[t] = true;
            matched_det[d] = true;
        }
        // Stage 2: weak detections keep tracks that were in view (not lost ones) going.
        let still_tracked: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&t| !matched_track[t] && self.tracks[t].state == TrackState::Tracked)
            .collect();
        let second = associate(
            &self.tracks,
            &still_tracked,
            &boxes,
            dets,
            &low,
            s.low_match_iou,
        );
        for &(t, d) in &second {
            matched_track[t] = true;
            matched_det[d] = true;
        }
        // Stage 3: new tracks waiting for confirmation take the confident detections left.
        let tentative: Vec<usize> = (0..self.tracks.len())
            .filter(|&i| self.tracks[i].state == TrackState::Tentative)
            .collect();
        let rest: Vec<usize> = high.iter().copied().filter(|&d| !matched_det[d]).collect();
        let third = associate(&self.tracks, &tentative, &boxes, dets, &rest, s.match_iou);
        for &(t, d) in &third {
            matched_track[t] = true;
            matched_det[d] = true;
        }

        let window = chrono::Duration::milliseconds((s.stationary_window_s * 1000.0) as i64);
        // Which detection got which id, set once the borrow of the detections ends.
        let mut assigned: Vec<(usize, u64)> = Vec::new();
        for &(t, d) in first.iter().chain(&second).chain(&third) {
            let det = &dets[d];
            let track = &mut self.tracks[t];
            track.motion.update(&det.bbox);
            track.score = det.score;
            track.hits = track.hits.saturating_add(1);
            track.last_detected = now;
            track.detected = true;
            match track.state {
                TrackState::Tentative if track.hits >= s.min_hits => {
                    track.id = Some(self.next_id);
                    self.next_id += 1;
                    track.first_seen = Some(now);
                    track.state = TrackState::Tracked;
                    if let Some(m) = &self.metrics {
                        m.started.increment(1);
                    }
                }
                TrackState::Tentative => {}
                TrackState::Tracked | TrackState::Lost => track.state = TrackState::Tracked,
            }
            if let Some(id) = track.id {
                assigned.push((d, id));
            }
            // The detector's box, not the filter's: the filter lags a start by a few frames.
            track
                .stillness
                .observe(now, &det.bbox, window, s.stationary_max_shift);
        }
        for (t, track) in self.tracks.iter_mut().enumerate() {
            if !matched_track[t] && track.state == TrackState::Tracked {
                track.state = TrackState::Lost;
            }
        }
        // A new track missed at its next detector run was most likely a false detection.
        let mut keep = matched_track.iter();
        self.tracks.retain(|t| {
            let matched = keep.next().copied().unwrap_or(false);
            t.state != TrackState::Tentative || matched
        });

        for &d in &high {
            if matched_det[d] || dets[d].score < s.new_track_score {
                continue;
            }
            let det = &dets[d];
            let mut track = Track {
                id: None,
                label: det.label.clone(),
                score: det.score,
                motion: Motion::new(&det.bbox),
                state: TrackState::Tentative,
                hits: 1,
                first_seen: None,
                last_detected: now,
                stillness: Stillness::default(),
                detected: true,
            };
            if s.min_hits <= 1 {
                track.id = Some(self.next_id);
                self.next_id += 1;
                track.first_seen = Some(now);
                track.state = TrackState::Tracked;
                assigned.push((d, self.next_id - 1));
                if let Some(m) = &self.metrics {
                    m.started.increment(1);
                }
            }
            track
                .stillness
                .observe(now, &det.bbox, window, s.stationary_max_shift);
            self.tracks.push(track);
        }

        for (d, id) in assigned {
            frame.detections[d].track = Some(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::{DeviceId, FrameInfo};

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms)
    }

    /// A frame at `ms` with the detector's findings, or a skipped one (`None`).
    fn frame(ms: i64, detections: Option<Vec<Detection>>) -> AnalysedFrame {
        AnalysedFrame {
            info: FrameInfo {
                camera: DeviceId::new("cam"),
                seq: (ms / 100) as u64,
                captured_at: at(ms),
                decoded_at: std::time::Instant::now(),
                skipped: 0,
                width: 1000,
                height: 600,
            },
            inferred: detections.is_some(),
            detections: detections.unwrap_or_default(),
            inference: std::time::Duration::ZERO,
            tracks: Vec::new(),
        }
    }

    /// A 40x100 box centred at (x, y).
    fn det(label: &str, score: f32, x: f32, y: f32) -> Detection {
        Detection::new(
            label,
            score,
            BBox::new(x - 20.0, y - 50.0, x + 20.0, y + 50.0),
        )
    }

    fn ids(frame: &AnalysedFrame) -> Vec<Option<u64>> {
        frame.detections.iter().map(|d| d.track).collect()
    }

    #[test]
    fn settings_default_from_an_empty_table_and_errors_name_the_key() {
        let s: TrackerSettings = toml::from_str("").unwrap();
        assert!(s.validate().is_ok());
        assert_eq!((s.high_score, s.min_hits, s.lost_after_s), (0.5, 2, 1.5));
        let s: TrackerSettings = toml::from_str("lost_after_s = 3.0\nmin_hits = 1").unwrap();
        assert_eq!((s.lost_after_s, s.min_hits, s.low_score), (3.0, 1, 0.1));
        let err = toml::from_str::<TrackerSettings>("lost_after = 3.0").unwrap_err();
        assert!(
            err.to_string().contains("unknown field `lost_after`"),
            "{err}"
        );
        let cases = [
            ("high_score = 1.5", "high_score"),
            ("low_score = 0.7", "low_score"),
            ("new_track_score = 0.4", "new_track_score"),
            ("match_iou = 0", "match_iou"),
            ("low_match_iou = nan", "low_match_iou"),
            ("min_hits = 0", "min_hits"),
            ("lost_after_s = 0", "lost_after_s"),
            ("stationary_window_s = -1", "stationary_window_s"),
            ("stationary_max_shift = inf", "stationary_max_shift"),
        ];
        for (table, key) in cases {
            let s: TrackerSettings = toml::from_str(table).unwrap();
            let err = s.validate().unwrap_err();
            assert_eq!(err.field, key, "{table}: {err:?}");
            assert!(err.message.contains(key), "{table}: {}", err.message);
        }
    }

    #[test]
    fn a_track_is_confirmed_after_min_hits_and_a_one_frame_blip_never_is() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        let mut f0 = frame(0, Some(vec![det("person", 0.9, 100.0, 300.0)]));
        tracker.update(&mut f0);
        assert!(f0.tracks.is_empty(), "not confirmed after one detection");
        assert_eq!(ids(&f0), vec![None]);
        let mut f1 = frame(
            100,
            Some(vec![
                det("person", 0.9, 105.0, 300.0),
                det("person", 0.9, 700.0, 300.0),
            ]),
        );
        tracker.update(&mut f1);
        assert_eq!(ids(&f1), vec![Some(1), None]);
        assert_eq!(f1.tracks.len(), 1);
        assert_eq!(f1.tracks[0].first_seen, at(100));
        // The blip at x = 700 is gone at the next run: it never gets an id.
        for ms in (200..1000).step_by(100) {
            let x = 100.0 + ms as f32 / 20.0;
            let mut f = frame(ms, Some(vec![det("person", 0.9, x, 300.0)]));
            tracker.update(&mut f);
            assert_eq!(ids(&f), vec![Some(1)]);
        }
        assert_eq!(tracker.next_id, 2);
    }

    /// Two people walk towards each other on nearly the same line and pass: each keeps its id.
    #[test]
    fn crossing_objects_keep_their_ids() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        let mut seen: Vec<(Option<u64>, Option<u64>)> = Vec::new();
        for i in 0..40 {
            let ms = i * 100;
            let a = 100.0 + 20.0 * i as f32;
            let b = 900.0 - 20.0 * i as f32;
            let mut f = frame(
                ms,
                Some(vec![
                    det("person", 0.9, a, 300.0),
                    det("person", 0.8, b, 320.0),
                ]),
            );
            tracker.update(&mut f);
            seen.push((f.detections[0].track, f.detections[1].track));
        }
        // Both confirmed at the second frame, then the same ids to the end, past the crossing
        // at frame 20 where the boxes overlap most.
        assert_eq!(seen[0], (None, None));
        assert!(
            seen[1..].iter().all(|&p| p == (Some(1), Some(2))),
            "{seen:?}"
        );
    }

    /// The detector runs every 3rd frame; in between the tracker predicts, and ids hold.
    #[test]
    fn a_skipped_frame_gap_keeps_ids_and_predicts_positions() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        let x_at = |i: i64| 100.0 + 5.0 * i as f32;
        for i in 0..60 {
            let inferred = i % 3 == 0;
            let d = vec![det("person", 0.9, x_at(i), 300.0)];
            let mut f = frame(i * 100, inferred.then_some(d));
            tracker.update(&mut f);
            if i < 3 {
                continue;
            }
            assert_eq!(f.tracks.len(), 1, "frame {i}: {:?}", f.tracks);
            let t = &f.tracks[0];
            assert_eq!(t.id, 1);
            assert_eq!(t.detected, inferred);
            let cx = (t.bbox.x1 + t.bbox.x2) / 2.0;
            if i > 12 {
                // The velocity is learnt: predictions are within a few pixels of the truth.
                assert!((cx - x_at(i)).abs() < 5.0, "frame {i}: {cx} vs {}", x_at(i));
            }
        }
    }

    #[test]
    fn a_long_gap_between_detector_runs_loses_nothing_when_within_lost_after_s() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        for i in 0..5 {
            let mut f = frame(i * 100, Some(vec![det("person", 0.9, 300.0, 300.0)]));
            tracker.update(&mut f);
        }
        // 1.2 s of skipped frames (a busy detector), then a run: the same object, the same id.
        for i in 5..17 {
            let mut f = frame(i * 100, None);
            tracker.update(&mut f);
            assert_eq!(f.tracks.len(), 1);
        }
        let mut f = frame(1700, Some(vec![det("person", 0.9, 300.0, 300.0)]));
        tracker.update(&mut f);
        assert_eq!(ids(&f), vec![Some(1)]);
    }

    /// A person partly hidden behind a post is detected with a low score for a while: the
    /// second stage keeps the track on it. Without that stage the track is lost meanwhile.
    #[test]
    fn the_low_score_stage_keeps_an_occluded_object() {
        let run = |settings: TrackerSettings| {
            let mut tracker = Tracker::new(settings);
            let mut out = Vec::new();
            for i in 0..30 {
                let score = if (10..20).contains(&i) { 0.3 } else { 0.9 };
                let x = 100.0 + 10.0 * i as f32;
                let mut f = frame(i * 100, Some(vec![det("person", score, x, 300.0)]));
                tracker.update(&mut f);
                out.push((f.detections[0].track, f.tracks.len()));
            }
            out
        };
        let with = run(TrackerSettings::default());
        assert!(with[1..].iter().all(|&o| o == (Some(1), 1)), "{with:?}");
        let without = run(TrackerSettings {
            low_score: 0.5,
            ..TrackerSettings::default()
        });
        assert!(
            without[10..20].iter().all(|&o| o == (None, 0)),
            "{without:?}"
        );
        // It is found again (a lost track is matched in the first stage) under its id.
        assert!(
            without[20..].iter().all(|&o| o == (Some(1), 1)),
            "{without:?}"
        );
    }

    #[test]
    fn a_track_gone_longer_than_lost_after_s_is_dropped_and_a_return_is_a_new_id() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        let here = || Some(vec![det("car", 0.9, 500.0, 300.0)]);
        for i in 0..3 {
            tracker.update(&mut frame(i * 100, here()));
        }
        // Not detected for 1 s: lost, not reported, but found again under its id.
        for i in 3..13 {
            let mut f = frame(i * 100, Some(Vec::new()));
            tracker.update(&mut f);
            assert!(f.tracks.is_empty());
        }
        let mut back = frame(1300, here());
        tracker.update(&mut back);
        assert_eq!(ids(&back), vec![Some(1)]);
        // Not detected for 2 s: dropped; the return is a new track.
        for i in 14..34 {
            tracker.update(&mut frame(i * 100, Some(Vec::new())));
        }
        let mut f = frame(3400, here());
        tracker.update(&mut f);
        let mut f = frame(3500, here());
        tracker.update(&mut f);
        assert_eq!(ids(&f), vec![Some(2)]);
    }

    /// Key frames only: one frame a second. A person missed on one frame (2 s without a
    /// detection, beyond `lost_after_s`) keeps the id; gone for several frames, the track is
    /// dropped. At 10 frames/s nothing changes.
    #[test]
    fn at_one_frame_a_second_a_track_keeps_its_id_across_a_missed_frame() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        let walking = |i: i64| Some(vec![det("person", 0.9, 300.0 + 20.0 * i as f32, 300.0)]);
        for i in 0..4 {
            tracker.update(&mut frame(i * 1000, walking(i)));
        }
        assert_eq!(tracker.lost_after_s(), 3.0);
        tracker.update(&mut frame(4000, Some(Vec::new())));
        let mut f = frame(5000, walking(5));
        tracker.update(&mut f);
        assert_eq!(ids(&f), vec![Some(1)]);
        for i in 6..11 {
            tracker.update(&mut frame(i * 1000, Some(Vec::new())));
        }
        let mut f = frame(11_000, walking(11));
        tracker.update(&mut f);
        tracker.update(&mut frame(12_000, walking(12)));
        let mut f = frame(13_000, walking(13));
        tracker.update(&mut f);
        assert_eq!(ids(&f), vec![Some(2)]);

        // 10 frames a second: `lost_after_s` as set; one stall does not stretch it.
        let mut tracker = Tracker::new(TrackerSettings::default());
        for i in 0..10 {
            tracker.update(&mut frame(i * 100, walking(0)));
        }
        tracker.update(&mut frame(5000, walking(0)));
        assert_eq!(tracker.lost_after_s(), 1.5);
    }

    /// A patrol's next visit, a minute later: the same box is a new object with a new id,
    /// and the minute is not taken for the interval between frames.
    #[test]
    fn forget_starts_afresh_without_reusing_an_id() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        let still = || Some(vec![det("person", 0.9, 300.0, 300.0)]);
        for i in 0..3 {
            tracker.update(&mut frame(i * 1000, still()));
        }
        tracker.forget();
        let mut f = frame(60_000, still());
        tracker.update(&mut f);
        tracker.update(&mut frame(61_000, still()));
        let mut f2 = frame(62_000, still());
        tracker.update(&mut f2);
        assert_eq!(ids(&f), vec![None], "not confirmed yet: a new object");
        assert_eq!(ids(&f2), vec![Some(2)]);
        assert_eq!(
            tracker.lost_after_s(),
            3.0,
            "one frame a second, not a minute"
        );
    }

    #[test]
    fn labels_are_kept_per_track() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        for i in 0..5 {
            let mut f = frame(
                i * 100,
                Some(vec![
                    det("person", 0.9, 300.0, 300.0),
                    det("bicycle", 0.9, 302.0, 300.0),
                ]),
            );
            tracker.update(&mut f);
            if i > 0 {
                assert_eq!(ids(&f), vec![Some(1), Some(2)]);
                let labels: Vec<&str> = f.tracks.iter().map(|t| t.label.as_str()).collect();
                assert_eq!(labels, vec!["person", "bicycle"]);
            }
        }
    }

    #[test]
    fn a_parked_object_becomes_stationary_and_moving_off_clears_it() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        let mut since = Vec::new();
        for i in 0..120 {
            // Parked (with a pixel or two of detector jitter) for 8 s, then drives off.
            let jitter = (i % 3) as f32 - 1.0;
            let x = if i < 80 {
                400.0 + jitter
            } else {
                400.0 + 15.0 * (i - 80) as f32
            };
            let mut f = frame(i * 100, Some(vec![det("car", 0.9, x, 300.0)]));
            tracker.update(&mut f);
            since.push(f.tracks.first().and_then(|t| t.stationary_since));
        }
        // Still for the 5 s window: stationary from then on, since its first sample.
        assert!(since[..49].iter().all(Option::is_none), "{since:?}");
        assert!(since[50..80].iter().all(|s| *s == Some(at(0))), "{since:?}");
        // Gone beyond a quarter of its size (16 px) within two frames of driving off.
        assert!(since[83..].iter().all(Option::is_none), "{since:?}");
    }

    #[test]
    fn bad_detections_are_skipped_not_tracked() {
        let mut tracker = Tracker::new(TrackerSettings::default());
        for i in 0..3 {
            let mut f = frame(
                i * 100,
                Some(vec![
                    Detection::new("person", f32::NAN, BBox::new(0.0, 0.0, 10.0, 10.0)),
                    Detection::new("person", 0.9, BBox::new(f32::NAN, 0.0, 10.0, 10.0)),
                    Detection::new("person", 0.9, BBox::new(10.0, 10.0, 10.0, 50.0)),
                ]),
            );
            tracker.update(&mut f);
            assert!(f.tracks.is_empty());
        }
    }
}
