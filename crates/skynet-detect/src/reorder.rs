//! Frame order after parallel inference: each camera's frames come back from the workers in
//! any order, and their dense dispatch numbers put them back. Nothing is guessed: a frame the
//! detector could not process still arrives (empty), and frames dropped under overload arrive
//! as a counted gap.

use std::collections::BTreeMap;

use crate::scheduler::Detected;

/// Restores each camera's order after parallel detection, by dispatch number.
#[derive(Debug, Default)]
pub struct Reorder {
    next: u64,
    waiting: BTreeMap<u64, Detected>,
}

impl Reorder {
    /// Takes one detected frame; returns those now in order.
    pub fn push(&mut self, detected: Detected) -> Vec<Detected> {
        if detected.dispatch < self.next {
            // Cannot happen with dense numbering; never apply a number twice.
            return Vec::new();
        }
        self.waiting.insert(detected.dispatch, detected);
        let mut ready = Vec::new();
        while let Some(d) = self.waiting.remove(&self.next) {
            self.next += 1;
            ready.push(d);
        }
        ready
    }

    /// At the end: what still waits, in order (a number is missing only when a detect worker
    /// died with that frame).
    pub fn drain(&mut self) -> Vec<Detected> {
        std::mem::take(&mut self.waiting).into_values().collect()
    }

    /// Nothing waits for an earlier frame.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use skynet_core::{AnalysedFrame, DeviceId, FrameInfo};

    use super::*;

    fn detected(dispatch: u64) -> Detected {
        Detected {
            camera: DeviceId::new("c"),
            dispatch,
            gap: 0,
            frame: Some(AnalysedFrame {
                info: FrameInfo {
                    camera: DeviceId::new("c"),
                    seq: dispatch,
                    captured_at: DateTime::<Utc>::UNIX_EPOCH,
                    decoded_at: Instant::now(),
                    skipped: 0,
                    width: 1,
                    height: 1,
                },
                detections: Vec::new(),
                inference: Duration::ZERO,
                inferred: true,
                tracks: Vec::new(),
            }),
            image: None,
        }
    }

    fn dispatches(ready: Vec<Detected>) -> Vec<u64> {
        ready.into_iter().map(|d| d.dispatch).collect()
    }

    #[test]
    fn a_late_arrival_waits_for_nothing_and_is_never_applied_late() {
        let mut r = Reorder::default();
        assert!(r.push(detected(1)).is_empty());
        assert!(r.push(detected(2)).is_empty());
        // However many wait behind it, 0 is never skipped: it is applied first when it comes.
        assert_eq!(dispatches(r.push(detected(0))), vec![0, 1, 2]);
        assert_eq!(dispatches(r.push(detected(3))), vec![3]);
    }

    proptest! {
        /// Workers finish in any order (each frame delayed by a random amount); the rules
        /// still see every frame exactly once, in order.
        #[test]
        fn reorder_restores_order_under_random_worker_delays(delays in proptest::collection::vec(0u32..50, 1..200)) {
            let mut arrivals: Vec<(u32, u64)> = delays
                .iter()
                .enumerate()
                .map(|(i, d)| (i as u32 + d, i as u64))
                .collect();
            arrivals.sort();
            let mut r = Reorder::default();
            let mut applied = Vec::new();
            for (_, dispatch) in arrivals {
                applied.extend(dispatches(r.push(detected(dispatch))));
            }
            applied.extend(dispatches(r.drain()));
            prop_assert_eq!(applied, (0..delays.len() as u64).collect::<Vec<_>>());
        }
    }
}
