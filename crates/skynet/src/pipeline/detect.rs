//! Detection in the pipeline: the inference scheduler is
//! [`skynet_detect::scheduler`]; here the pipeline's totals are counted for it. `run`
//! spawns its workers.

use std::sync::atomic::Ordering;

pub(crate) use skynet_detect::scheduler::{CameraInput, Detected, FrameCounts, InferenceWorker};

use super::Counters;

impl FrameCounts for Counters {
    fn analysed(&self) {
        self.analysed.fetch_add(1, Ordering::Relaxed);
    }

    fn inferred(&self) {
        self.inferred.fetch_add(1, Ordering::Relaxed);
    }
}
