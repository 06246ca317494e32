//! What the API and the live stream show: typed bodies shared by both.
//!
//! Every body is written through [`serde_json::Value`] (see [`json_text`] and the API's
//! `Reply`), whose maps keep their keys sorted: the bytes sent stay those the hand-built
//! `json!` bodies sent, whatever the order of a struct's fields or a flattened type's.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use skynet_core::{DeviceId, Incident, OwnerKind};

use super::auth::{Permission, Role, User};

/// A body as JSON text, keys sorted as the API writes them.
pub(crate) fn json_text<T: Serialize>(body: &T) -> String {
    serde_json::to_value(body)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "{}".into())
}

/// A user as the API shows it (`User` in openapi.json).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UserView {
    pub name: String,
    pub role: Role,
    pub department: Option<String>,
    pub owner: Option<String>,
    pub permissions: &'static [Permission],
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            name: user.name.clone(),
            role: user.role,
            department: user.department.clone(),
            owner: user.owner.clone(),
            permissions: user.role.permissions(),
        }
    }
}

/// Who acknowledged an incident, and when (`null` when the case system took it over).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AckView {
    pub by: Option<String>,
    pub at: Option<DateTime<Utc>>,
}

/// An incident as the API shows it (`IncidentView` in openapi.json): the revision, with who
/// acknowledged it and where its evidence images are served.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct IncidentView {
    #[serde(flatten)]
    pub incident: Incident,
    pub acknowledged: Option<AckView>,
    pub evidence_urls: Vec<String>,
    /// The district it comes from (its events' `source` without `skynet/`): the cluster's
    /// name, or a single node's name; `null` for an incident stored before districts were
    /// kept.
    pub district: Option<String>,
}

/// A camera with its health, counters and thresholds (`Camera` in openapi.json).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CameraView {
    pub fps: Option<f64>,
    pub id: DeviceId,
    pub grid: String,
    pub owner: OwnerKind,
    pub state: String,
    pub reason: Option<String>,
    pub retries: u32,
    pub since: Option<DateTime<Utc>>,
    pub last_frame_at: Option<DateTime<Utc>>,
    pub frames_decoded: u64,
    pub frames_dropped: u64,
    pub frames_skipped: u64,
    pub frames_analysed: u64,
    pub frame_url: Option<String>,
    pub frame_at: Option<DateTime<Utc>>,
    /// Live view is on on this node (`[api] live = { enabled = true }`): the console may ask
    /// for `/api/v1/cameras/{id}/live.mp4`.
    pub live: bool,
    pub thresholds: BTreeMap<String, f64>,
    pub threshold_floor: f64,
    /// In a cluster: the edge node running the camera (its lease), `null` while none does.
    /// Absent on a single node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Option<String>>,
}

/// A sensor with its state and last reading (`Sensor` in openapi.json).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SensorView {
    pub id: String,
    pub grid: String,
    pub owner: OwnerKind,
    pub quantity: String,
    pub unit: Option<String>,
    /// `waiting`, `ok` or `offline`.
    pub state: &'static str,
    pub offline_since: Option<DateTime<Utc>>,
    pub last_reading: Option<Reading>,
}

/// A video platform with its state and channels (`Platform` in openapi.json).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PlatformView {
    pub id: String,
    pub kind: String,
    pub listen: String,
    pub owner: OwnerKind,
    /// Its health state: `starting`, `up`, `retrying`, `down`.
    pub state: skynet_core::ComponentState,
    pub reason: Option<String>,
    pub lower_platforms_online: Vec<String>,
    pub channels_listed: usize,
    pub channels_analysed: usize,
    pub all_channels: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Reading {
    pub value: f64,
    pub unit: String,
    pub at: DateTime<Utc>,
}

/// A camera's or a sensor's view on the live stream, with which of the two it is.
#[derive(Debug, Serialize)]
pub(crate) struct SourceMessage<V> {
    #[serde(flatten)]
    pub view: V,
    /// `camera` or `sensor`.
    pub kind: &'static str,
}
