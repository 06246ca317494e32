//! Shared types of the skynet pipeline.
//!
//! Every stage speaks these types: a source produces [`Frame`]s, the detector turns them into
//! [`AnalysedFrame`]s, rules turn those into [`Observation`]s, the risk engine turns observations
//! into [`Incident`]s, and the emitters deliver incidents. The stage traits themselves live in the
//! stage crates, next to their typed errors.

pub mod component;
pub mod config;
pub mod geometry;
pub mod health;
pub mod ids;
pub mod incident;
pub mod locate;
pub mod patrol;
pub mod private_fs;
pub mod queue;
pub mod redact;
pub mod secret;
pub mod sensor;
pub mod shutdown;
pub mod terminal;
pub mod tuning;
pub mod vision;
pub mod watermark;

pub use component::{Component, Erase, Family, Kind, Registry, TableError};
pub use config::{ConfigContext, FieldError};
pub use geometry::{BBox, FramePolygonError, Point, check_frame_polygon, check_frame_polygons};
pub use health::{ComponentHealth, ComponentState, ComponentStatus, Health, HealthReport};
pub use ids::{DeviceId, GridId, OwnerKind, validate_id};
pub use incident::{
    CASE_STATUS_EVENT_TYPE, CASE_STATUSES, CaseStatus, Contribution, Deadlines, DeviceFault,
    Evidence, EvidenceRef, FaultEvidence, GridRisk, Incident, IncidentChange, IncidentState,
    IncidentStatus, Observation, RiskEvent, RiskLevel, RuleRef, SourceKind, SourceRef,
};
pub use patrol::{
    LookStatus, PATROL_ROUND_EVENT_TYPE, PatrolLook, PatrolRound,
    snapshot_path as patrol_snapshot_path,
};
pub use queue::{OverloadPolicy, QueueClosed, StageQueue, StageReceiver, stage_queue};
pub use redact::{Credentials, redact_uri, split_credentials};
pub use secret::{MaskedUri, Secret};
pub use sensor::{ReadingValue, SensorReading};
pub use shutdown::Shutdown;
pub use terminal::{escape_control, escape_control_lines, escape_json_controls};
pub use tuning::LiveThresholds;
pub use vision::{
    AnalysedFrame, Detection, Frame, FrameData, FrameImage, FrameInfo, ObjectsInView, PixelOrder,
    TrackedObject,
};
pub use watermark::Watermark;
