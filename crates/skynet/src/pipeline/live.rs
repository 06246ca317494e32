//! Live view in the pipeline (issue 25 part 2): with `[api] live = { enabled = true }`,
//! every live camera without privacy masks keeps an encoded ring (the clip ring, with or
//! without clips), and the console's `/api/v1/cameras/{id}/live.mp4` opens viewers on it
//! (`skynet_ingest::live`).

use std::collections::BTreeSet;
use std::time::Duration;

use skynet_core::DeviceId;
use skynet_ingest::clips::EncodedRing;
use skynet_ingest::live::{Limits, Refused, open_viewer};
use skynet_serve::console::{LiveConfig, LiveRefusal, LiveVideo};

use crate::config::{CameraSpec, PipelineConfig};

/// What a camera's ring keeps for live view alone: the newest GOP, where a viewer starts.
const LIVE_KEEP: Duration = Duration::from_secs(2);

fn live_config(config: &PipelineConfig) -> Option<LiveConfig> {
    config.api.as_ref().map(|a| a.live).filter(|l| l.enabled)
}

/// The ring `camera` keeps for live view, when live view is on and the camera is served.
pub(crate) fn ring_for(config: &PipelineConfig, camera: &CameraSpec) -> Option<EncodedRing> {
    live_config(config)?;
    (camera.is_live() && camera.privacy_masks.is_empty())
        .then(|| EncodedRing::for_camera(&camera.id, LIVE_KEEP))
}

/// The console's live view on this node's cameras.
pub(crate) struct NodeLive {
    limits: Limits,
    masked: BTreeSet<DeviceId>,
}

impl NodeLive {
    /// `None` when live view is off.
    pub(crate) fn for_config(config: &PipelineConfig) -> Option<Self> {
        let live = live_config(config)?;
        Some(Self {
            limits: Limits {
                per_camera: live.max_viewers_per_camera,
                total: live.max_viewers,
            },
            masked: config
                .cameras
                .iter()
                .filter(|c| !c.privacy_masks.is_empty())
                .map(|c| c.id.clone())
                .collect(),
        })
    }
}

impl LiveVideo for NodeLive {
    fn open(&self, camera: &DeviceId) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, LiveRefusal> {
        if self.masked.contains(camera) {
            return Err(LiveRefusal::Masked);
        }
        let ring = EncodedRing::existing(camera).ok_or(LiveRefusal::NotStreaming)?;
        open_viewer(&ring, camera, self.limits).map_err(|e| match e {
            Refused::NotStreaming => LiveRefusal::NotStreaming,
            Refused::CameraFull => LiveRefusal::CameraFull,
            Refused::NodeFull => LiveRefusal::NodeFull,
        })
    }
}
