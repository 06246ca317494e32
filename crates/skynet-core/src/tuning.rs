//! Detection thresholds that engineers change while skynet runs (from the console), read by
//! the detection filter on every frame.

use std::collections::BTreeMap;
use std::sync::{PoisonError, RwLock};

/// One camera's lowest kept score per label. The detector's own threshold is the floor: a
/// lower value could never take effect, since the model's output is cut there already.
#[derive(Debug)]
pub struct LiveThresholds {
    floor: f32,
    scores: RwLock<BTreeMap<String, f32>>,
}

impl LiveThresholds {
    /// `scores`: every label the camera keeps, with the score it starts at.
    pub fn new(floor: f32, scores: BTreeMap<String, f32>) -> Self {
        let scores = scores
            .into_iter()
            .map(|(label, score)| (label, score.max(floor)))
            .collect();
        Self {
            floor,
            scores: RwLock::new(scores),
        }
    }

    /// The lowest score for `label`, when the camera keeps that label at all.
    pub fn get(&self, label: &str) -> Option<f32> {
        self.read().get(label).copied()
    }

    /// Runs `f` with the table held once (a frame's detections checked in one go).
    pub fn with<R>(&self, f: impl FnOnce(&BTreeMap<String, f32>) -> R) -> R {
        f(&self.read())
    }

    pub fn snapshot(&self) -> BTreeMap<String, f32> {
        self.read().clone()
    }

    pub fn floor(&self) -> f32 {
        self.floor
    }

    /// Applies `changes` all or nothing; returns the table before. A label the camera does
    /// not keep, or a score outside `[floor, 1]`, refuses the whole change.
    pub fn set(&self, changes: &BTreeMap<String, f32>) -> Result<BTreeMap<String, f32>, String> {
        let mut scores = self.scores.write().unwrap_or_else(PoisonError::into_inner);
        for (label, &score) in changes {
            if !scores.contains_key(label) {
                let known: Vec<&str> = scores.keys().map(String::as_str).collect();
                return Err(format!(
                    "the camera does not look for `{}` (it looks for: {})",
                    label.escape_debug(),
                    known.join(", ")
                ));
            }
            if !(score.is_finite() && (self.floor..=1.0).contains(&score)) {
                return Err(format!(
                    "`{}` = {score} is outside [{}, 1] (the detector's threshold is the floor)",
                    label.escape_debug(),
                    self.floor
                ));
            }
        }
        let before = scores.clone();
        for (label, &score) in changes {
            scores.insert(label.clone(), score);
        }
        Ok(before)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, f32>> {
        self.scores.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_apply_all_or_nothing_within_the_floor() {
        let t = LiveThresholds::new(0.3, [("person".into(), 0.2), ("car".into(), 0.5)].into());
        // A start below the floor is raised to it.
        assert_eq!(t.get("person"), Some(0.3));
        let before = t.set(&[("person".into(), 0.6)].into()).unwrap();
        assert_eq!(before["person"], 0.3);
        assert_eq!(t.get("person"), Some(0.6));
        let refused = t.set(&[("car".into(), 0.9), ("dog".into(), 0.5)].into());
        assert!(refused.unwrap_err().contains("does not look for `dog`"));
        assert_eq!(t.get("car"), Some(0.5), "nothing applied");
        assert!(t.set(&[("car".into(), 0.1)].into()).is_err());
        assert!(t.set(&[("car".into(), f32::NAN)].into()).is_err());
    }
}
