//! A camera's health, modelled on gst-plugins-rs `fallbacksrc`: its state, last error, retry
//! count and last frame time, as metrics, as `/readyz` detail, and as events for later stages.
//!
//! ```text
//!  starting ──first frame──► running ──no frame for a while──► stalled
//!     │                        ▲  │                               │ watchdog
//!     │ fails                  │  │ fails / live stream ends      ▼
//!     └──────────────────► retrying ◄─────────────────────────────┘
//!  any state ──shutdown, file done, downstream gone──► stopped
//! ```
//!
//! Metrics: `skynet_camera_up{camera}` (1 while frames flow), `skynet_camera_state{camera,state}`
//! (1 for the current state, 0 for the others) and `skynet_camera_reconnects_total{camera}`.

use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::Serialize;
use skynet_core::{ComponentHealth, ComponentState, DeviceId};

/// Where a camera is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CameraState {
    /// Connecting for the first time.
    Starting,
    /// Frames flow.
    Running,
    /// Connected, but no frame for a while; the watchdog restarts it if none comes.
    Stalled,
    /// Failed; waiting to reconnect, or reconnecting.
    Retrying,
    /// Ended: shut down, a file played to its end, or given up on.
    Stopped,
}

impl CameraState {
    pub const ALL: [CameraState; 5] = [
        Self::Starting,
        Self::Running,
        Self::Stalled,
        Self::Retrying,
        Self::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stalled => "stalled",
            Self::Retrying => "retrying",
            Self::Stopped => "stopped",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }
}

impl std::fmt::Display for CameraState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change, for the stages after the camera (the offline check, the console).
#[derive(Debug, Clone, PartialEq)]
pub struct CameraEvent {
    pub camera: DeviceId,
    pub state: CameraState,
    pub at: DateTime<Utc>,
    /// The last error, for `retrying`, `stalled` and a `stopped` that was a failure.
    pub reason: Option<String>,
    /// The last frame's arrival time (wall clock), if any came.
    pub last_frame_at: Option<DateTime<Utc>>,
}

/// A camera's state, last error, retry count and last frame time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CameraStatus {
    pub state: CameraState,
    pub since: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed attempts since frames last flowed.
    pub retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_frame_at: Option<DateTime<Utc>>,
}

struct Shared {
    camera: DeviceId,
    component: ComponentHealth,
    /// The current state's index in `CameraState::ALL`: the per-frame path reads only this.
    state: AtomicU8,
    /// Arrival of the last frame, ms since the epoch (`i64::MIN`: none yet).
    last_frame_ms: AtomicI64,
    details: Mutex<CameraStatus>,
    events: Option<crossbeam_channel::Sender<CameraEvent>>,
    up: metrics::Gauge,
    states: [metrics::Gauge; 5],
    reconnects: metrics::Counter,
    events_dropped: metrics::Counter,
}

/// A camera's health handle; cheap to clone, shared by the supervisor and the frame path.
#[derive(Clone)]
pub struct CameraHealth {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CameraHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CameraHealth")
            .field("camera", &self.shared.camera)
            .field("status", &self.status())
            .finish()
    }
}

impl CameraHealth {
    /// Starts in `starting`. `component` is the camera's entry in the process health table
    /// (`/readyz`, `skynet_component_up`); `events` receives every state change.
    pub fn new(
        camera: DeviceId,
        component: ComponentHealth,
        events: Option<crossbeam_channel::Sender<CameraEvent>>,
    ) -> Self {
        let label = camera.to_string();
        let states = CameraState::ALL.map(|s| {
            metrics::gauge!("skynet_camera_state", "camera" => label.clone(), "state" => s.as_str())
        });
        let shared = Shared {
            up: metrics::gauge!("skynet_camera_up", "camera" => label.clone()),
            reconnects: metrics::counter!("skynet_camera_reconnects_total", "camera" => label.clone()),
            events_dropped: metrics::counter!("skynet_camera_events_dropped_total", "camera" => label),
            states,
            camera,
            component,
            state: AtomicU8::new(CameraState::Starting.index() as u8),
            last_frame_ms: AtomicI64::new(i64::MIN),
            details: Mutex::new(CameraStatus {
                state: CameraState::Starting,
                since: Utc::now(),
                last_error: None,
                retries: 0,
                last_frame_at: None,
            }),
            events,
        };
        let health = Self {
            shared: Arc::new(shared),
        };
        health.publish(CameraState::Starting);
        health.shared.component.describe(Some("starting"), None);
        health
    }

    /// A handle reporting into tables of its own: for tests and tools that run one camera.
    pub fn detached(camera: &str) -> Self {
        Self::new(
            DeviceId::new(camera),
            ComponentHealth::detached(camera, "source"),
            None,
        )
    }

    pub fn camera(&self) -> &DeviceId {
        &self.shared.camera
    }

    pub fn state(&self) -> CameraState {
        CameraState::ALL
            .get(usize::from(self.shared.state.load(Ordering::Relaxed)))
            .copied()
            .unwrap_or(CameraState::Starting)
    }

    pub fn status(&self) -> CameraStatus {
        let mut status = self.lock().clone();
        status.last_frame_at = self.last_frame_at();
        status
    }

    /// The process health entry this camera reports into.
    pub fn component(&self) -> &ComponentHealth {
        &self.shared.component
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CameraStatus> {
        self.shared
            .details
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn last_frame_at(&self) -> Option<DateTime<Utc>> {
        match self.shared.last_frame_ms.load(Ordering::Relaxed) {
            i64::MIN => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    /// A frame arrived: records its time and, if frames were not flowing, moves to
    /// `running`. Cheap enough for every frame (two atomics when nothing changes).
    pub fn frame(&self) {
        let now = Utc::now();
        self.shared
            .last_frame_ms
            .store(now.timestamp_millis(), Ordering::Relaxed);
        if self.state() != CameraState::Running {
            self.set(CameraState::Running, None);
        }
    }

    /// Connected but quiet for a while.
    pub fn stalled(&self, reason: impl Into<String>) {
        if self.state() == CameraState::Running {
            self.set(CameraState::Stalled, Some(reason.into()));
        }
    }

    /// Failed; a reconnection follows.
    pub fn retrying(&self, reason: impl Into<String>) {
        self.set(CameraState::Retrying, Some(reason.into()));
    }

    /// A reconnection attempt starts.
    pub fn reconnecting(&self) {
        self.shared.reconnects.increment(1);
    }

    /// Ended normally (shutdown, end of a file, frame limit).
    pub fn stopped(&self) {
        self.set(CameraState::Stopped, None);
    }

    /// Ended by a failure it will not recover from (given up, or nothing reads it any more).
    pub fn failed(&self, reason: impl Into<String>) {
        self.set(CameraState::Stopped, Some(reason.into()));
    }

    fn publish(&self, state: CameraState) {
        let s = &self.shared;
        s.up.set(if state == CameraState::Running {
            1.0
        } else {
            0.0
        });
        for (gauge, candidate) in s.states.iter().zip(CameraState::ALL) {
            gauge.set(if candidate == state { 1.0 } else { 0.0 });
        }
    }

    fn set(&self, state: CameraState, reason: Option<String>) {
        let now = Utc::now();
        let last_frame_at = self.last_frame_at();
        let event = {
            let mut details = self.lock();
            let changed = details.state != state;
            if changed {
                details.since = now;
            }
            match state {
                CameraState::Running => details.retries = 0,
                CameraState::Retrying => details.retries = details.retries.saturating_add(1),
                _ => {}
            }
            if reason.is_some() || state == CameraState::Running {
                details.last_error.clone_from(&reason);
            }
            details.state = state;
            self.shared
                .state
                .store(state.index() as u8, Ordering::Relaxed);
            self.publish(state);
            // The process table follows, under the same lock so the two never disagree.
            let component = &self.shared.component;
            match (state, &reason) {
                (CameraState::Starting, _) => {}
                (CameraState::Running, _) => component.up(),
                (CameraState::Stalled, reason) => component.set(
                    ComponentState::Retrying,
                    reason.clone().or(Some("stalled".into())),
                ),
                (CameraState::Retrying, reason) => {
                    component.retrying(reason.clone().unwrap_or_default())
                }
                (CameraState::Stopped, Some(reason)) => component.down(reason.clone()),
                (CameraState::Stopped, None) => component.finished(),
            }
            component.describe(Some(state.as_str()), last_frame_at);
            changed.then(|| CameraEvent {
                camera: self.shared.camera.clone(),
                state,
                at: now,
                reason: reason.clone(),
                last_frame_at,
            })
        };
        let Some(event) = event else {
            return;
        };
        match &event.reason {
            Some(reason) => {
                tracing::info!(camera = %event.camera, state = %state, reason = %reason, "camera state")
            }
            None => tracing::info!(camera = %event.camera, state = %state, "camera state"),
        }
        if let Some(events) = &self.shared.events
            && events.try_send(event).is_err()
        {
            // Nobody reads, or far behind: the state itself is still in the table and the
            // metrics; only the notification is lost.
            self.shared.events_dropped.increment(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_life_of_a_camera_and_send_one_event_per_change() {
        let (tx, rx) = crossbeam_channel::bounded(16);
        let health = CameraHealth::new(
            DeviceId::new("cam-1"),
            ComponentHealth::detached("cam-1", "source"),
            Some(tx),
        );
        assert_eq!(health.state(), CameraState::Starting);
        health.frame();
        health.frame();
        assert_eq!(health.state(), CameraState::Running);
        assert!(health.status().last_frame_at.is_some());
        health.stalled("no frame for 2 s");
        health.retrying("stalled: no frame for 10 s");
        health.reconnecting();
        health.retrying("connection refused");
        assert_eq!(health.status().retries, 2);
        assert_eq!(
            health.status().last_error.as_deref(),
            Some("connection refused")
        );
        assert_eq!(
            health.component().status().unwrap().state,
            ComponentState::Retrying
        );
        health.frame();
        assert_eq!(health.status().retries, 0);
        assert_eq!(health.status().last_error, None);
        health.stopped();
        assert_eq!(
            health.component().status().unwrap().state,
            ComponentState::Finished
        );
        let states: Vec<CameraState> = rx.try_iter().map(|e| e.state).collect();
        assert_eq!(
            states,
            vec![
                CameraState::Running,
                CameraState::Stalled,
                CameraState::Retrying,
                CameraState::Running,
                CameraState::Stopped
            ]
        );
        // Stalled only follows running.
        health.stalled("x");
        assert_eq!(health.state(), CameraState::Stopped);
    }
}
