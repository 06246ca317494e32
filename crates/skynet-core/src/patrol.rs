//! Patrol rounds (視頻輪巡): a patrol visits each of its cameras in turn, looks for a few
//! seconds, and reports the round. These are the round's types as every stage sees them:
//! the scheduler (skynet-ingest) fills them, the outbox emits them as
//! `skynet.patrol_round.v1`, the console shows them.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{DeviceId, GridId, OwnerKind};

/// The CloudEvent type of a finished round.
pub const PATROL_ROUND_EVENT_TYPE: &str = "skynet.patrol_round.v1";

/// One finished round of a patrol: `data` of a `skynet.patrol_round.v1` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatrolRound {
    /// `[[patrols]] name`.
    pub patrol: String,
    /// The round's number: rounds start on multiples of `every_s` since the Unix epoch and
    /// this is that multiple (a round that starts late, after one that overran, takes the
    /// next number not yet used), so a restart never reuses an id (see [`PatrolRound::id`]).
    pub round: u64,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    /// Every camera of the patrol, in visiting order.
    pub cameras: Vec<PatrolLook>,
}

/// What one camera showed in one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatrolLook {
    pub id: DeviceId,
    pub grid: GridId,
    pub owner: OwnerKind,
    pub status: LookStatus,
    /// Frames analysed during the visit.
    pub frames: u64,
    /// Observations the camera's rules made during the visit.
    pub observations: u64,
    /// The annotated JPEG of the visit (privacy masks blurred): `[evidence] url_base`
    /// followed by its path; `None` when no frame came or evidence is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// When the visit began (the camera's source was built and started) and ended (it was
    /// closed, or found offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<DateTime<Utc>>,
}

/// How a camera's visit went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookStatus {
    /// Opened, and frames came and were analysed.
    Checked,
    /// Could not be opened, or showed no frame within its timeout.
    Offline,
    /// Could not be run at all (its source could not be built), or failed after it opened.
    Failed,
}

impl LookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checked => "checked",
            Self::Offline => "offline",
            Self::Failed => "failed",
        }
    }
}

impl PatrolRound {
    /// Stable per patrol and round: `<patrol>/<round>` (the event id; a redelivered event
    /// deduplicates downstream).
    pub fn id(&self) -> String {
        format!("{}/{}", self.patrol, self.round)
    }
}

/// Where a round's snapshot of a camera lies, relative to `[evidence] dir` (and, after
/// `[evidence] url_base`, the event's `snapshot`): `patrol/<patrol>/<round>/<camera>.jpg`.
/// Patrol names and camera ids are validated ids, so the path has no `..` or separators of
/// their making.
pub fn snapshot_path(patrol: &str, round: u64, camera: &DeviceId) -> String {
    format!("patrol/{patrol}/{round}/{camera}.jpg")
}
