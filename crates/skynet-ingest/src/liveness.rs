//! Camera liveness: a live camera without frames for its `offline_after_s` is declared
//! offline (a `camera_offline` device fault, which the risk stage turns into an incident),
//! and running again once frames flow.

use chrono::{DateTime, Utc};
use skynet_core::{DeviceFault, DeviceId, GridId, OwnerKind, SourceKind};

use crate::{CameraEvent, CameraState};

/// The category of the incident a camera without frames for `offline_after_s` opens.
pub const CAMERA_OFFLINE: &str = "camera_offline";

/// Watches one live camera for being offline longer than its `offline_after_s`.
#[derive(Debug, Clone)]
pub struct OfflineWatch {
    after: chrono::Duration,
    grid: GridId,
    owner: OwnerKind,
    /// When frames stopped (its last frame, or the start when none came yet); `None` while
    /// frames flow.
    since: Option<DateTime<Utc>>,
    /// Its fault incident has been opened (and not yet closed).
    declared: bool,
}

impl OfflineWatch {
    /// Watches from now: until its first frame, the camera counts as stopped since the start.
    pub fn new(after: chrono::Duration, grid: GridId, owner: OwnerKind) -> Self {
        Self {
            after,
            grid,
            owner,
            since: Some(Utc::now()),
            declared: false,
        }
    }

    /// Applies a state change of the camera. True when it runs again: then its
    /// `camera_offline` incident closes, also one opened by the process before a restart.
    pub fn on_event(&mut self, event: &CameraEvent) -> bool {
        match event.state {
            CameraState::Running => {
                self.since = None;
                self.declared = false;
                true
            }
            // Shutting down is not going offline.
            CameraState::Stopped if event.reason.is_none() => {
                self.since = None;
                false
            }
            _ => {
                if self.since.is_none() {
                    self.since = Some(event.last_frame_at.unwrap_or(event.at));
                }
                false
            }
        }
    }

    /// The fault to declare at `now`: once, when the camera's frames have stopped for
    /// `offline_after_s` or longer.
    pub fn due(&mut self, camera: &DeviceId, now: DateTime<Utc>) -> Option<DeviceFault> {
        let since = self.since?;
        if self.declared || now.signed_duration_since(since) < self.after {
            return None;
        }
        self.declared = true;
        tracing::warn!(camera = %camera, since = %since, "camera offline");
        Some(DeviceFault {
            camera: camera.clone(),
            source: SourceKind::Camera,
            grid: self.grid.clone(),
            owner: self.owner,
            category: CAMERA_OFFLINE.into(),
            since,
            at: now,
        })
    }
}
