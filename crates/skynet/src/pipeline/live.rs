//! Live view in the pipeline (issue 25 part 2): with `[api] live = { enabled = true }`,
//! every live camera keeps an encoded ring (the clip ring, with or without clips), and the
//! console's `/api/v1/cameras/{id}/live.mp4` opens viewers on it (`skynet_ingest::live`).
//! A camera with privacy masks is transcoded with its masks blurred at
//! `[api] live.masked_width`, never remuxed.

use std::collections::BTreeMap;
use std::time::Duration;

use skynet_core::DeviceId;
use skynet_ingest::clips::EncodedRing;
use skynet_ingest::live::{Limits, Refused, Transcode, open_viewer};
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
    camera
        .is_live()
        .then(|| EncodedRing::for_camera(&camera.id, LIVE_KEEP))
}

/// The console's live view on this node's cameras.
pub(crate) struct NodeLive {
    limits: Limits,
    /// The cameras with privacy masks: how their viewers are transcoded.
    masked: BTreeMap<DeviceId, Transcode>,
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
                .map(|c| {
                    let transcode = Transcode {
                        width: live.masked_width,
                        blur: super::clips::mask_blur(c.privacy_masks.clone()),
                    };
                    (c.id.clone(), transcode)
                })
                .collect(),
        })
    }
}

impl LiveVideo for NodeLive {
    fn open(&self, camera: &DeviceId) -> Result<tokio::sync::mpsc::Receiver<Vec<u8>>, LiveRefusal> {
        // A masked camera is always transcoded with its masks blurred.
        let transcode = self.masked.get(camera).cloned();
        let ring = EncodedRing::existing(camera).ok_or(LiveRefusal::NotStreaming)?;
        open_viewer(&ring, camera, self.limits, transcode).map_err(|e| match e {
            Refused::NotStreaming => LiveRefusal::NotStreaming,
            Refused::CameraFull => LiveRefusal::CameraFull,
            Refused::NodeFull => LiveRefusal::NodeFull,
        })
    }
}
