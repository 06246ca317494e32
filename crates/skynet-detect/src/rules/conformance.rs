//! The suite every camera rule kind passes, run on each registered kind's example table.
//!
//! A kind gets it by registering: the crate's tests run it over [`register`](super::register)'s
//! kinds, and a kind kept elsewhere (`examples/`) calls [`check_rule_kind`] on itself. The
//! promises are the ones the pipeline relies on:
//! - the example validates in a standard camera context;
//! - **determinism on replay**: two rules built from one config give the same observations
//!   for the same frames, so `skynet replay` of a recorded day matches what ran live;
//! - **state restore**: the state a rule saves survives its JSON round trip unchanged, and
//!   a rule restored from it goes on deterministically;
//! - **no output on an empty scene**: frames without objects never fire a rule;
//! - the example fires at least once on the busy scene, so the checks above are not vacuous.

use chrono::{DateTime, Utc};
use skynet_core::{
    AnalysedFrame, BBox, DeviceId, FrameInfo, GridId, Kind, Observation, OwnerKind, TrackedObject,
};

use super::{BuildRule, CameraRuleFamily, CameraRules, RuleBuildContext, RuleContext};
use crate::Zone;

/// The labels the standard context's model detects.
pub const LABELS: [&str; 5] = ["person", "car", "backpack", "handbag", "suitcase"];

/// The standard camera's zones: `left` and `right` halves of the frame.
pub fn zones() -> Vec<Zone> {
    [
        ("left", [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]),
        ("right", [[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]),
    ]
    .into_iter()
    .map(|(name, polygon)| Zone::new(name, &polygon).expect("the standard zones are valid"))
    .collect()
}

const WIDTH: f32 = 1000.0;
const HEIGHT: f32 = 500.0;
/// Frames of the busy scene: two minutes at 5 fps.
const FRAMES: i64 = 600;
const FRAME_MS: i64 = 200;

fn at(ms: i64) -> DateTime<Utc> {
    // A fixed start, so runs compare to the letter.
    DateTime::<Utc>::UNIX_EPOCH
        + chrono::Duration::days(20_000)
        + chrono::Duration::milliseconds(ms)
}

fn object(id: u64, label: &str, x: f32, y: f32, still_since: Option<i64>) -> TrackedObject {
    let (fx, fy) = (x * WIDTH, y * HEIGHT);
    TrackedObject {
        id,
        label: label.into(),
        score: 0.8,
        bbox: BBox::new(fx - 10.0, fy - 40.0, fx + 10.0, fy),
        first_seen: at(0),
        stationary_since: still_since.map(at),
        detected: true,
    }
}

fn frame(n: i64, tracks: Vec<TrackedObject>) -> AnalysedFrame {
    AnalysedFrame {
        info: FrameInfo {
            camera: DeviceId::new("cam"),
            seq: n as u64,
            captured_at: at(n * FRAME_MS),
            decoded_at: std::time::Instant::now(),
            skipped: 0,
            width: WIDTH as u32,
            height: HEIGHT as u32,
        },
        detections: Vec::new(),
        inference: std::time::Duration::ZERO,
        inferred: true,
        tracks,
    }
}

/// Two minutes of a busy scene: six people standing in the left zone, a suitcase left
/// there, a car parked on the right, and one person walking back and forth across the
/// middle of the frame.
pub fn busy_scene() -> Vec<AnalysedFrame> {
    (0..FRAMES)
        .map(|n| {
            let mut tracks: Vec<TrackedObject> = (0..6)
                .map(|i| object(i + 1, "person", 0.1 + 0.05 * i as f32, 0.6, Some(0)))
                .collect();
            tracks.push(object(10, "suitcase", 0.3, 0.8, Some(0)));
            tracks.push(object(11, "car", 0.8, 0.7, Some(0)));
            // Crosses x = 0.5 every 10 s.
            let phase = (n % 100) as f32 / 100.0;
            let x = if phase < 0.5 {
                0.2 + 1.2 * phase
            } else {
                0.8 - 1.2 * (phase - 0.5)
            };
            tracks.push(object(20, "person", x, 0.4, None));
            frame(n, tracks)
        })
        .collect()
}

/// The same two minutes with nobody in view.
pub fn empty_scene() -> Vec<AnalysedFrame> {
    (0..FRAMES).map(|n| frame(n, Vec::new())).collect()
}

fn camera_rules(rule: &dyn BuildRule) -> CameraRules {
    let camera = DeviceId::new("cam");
    CameraRules {
        rules: vec![rule.build(&RuleBuildContext { camera: &camera })],
        camera,
        grid: GridId::new("G-0101"),
        owner: OwnerKind::Police,
    }
}

/// The observations of `frames`, as JSON text (so runs compare to the letter).
fn run(rules: &mut CameraRules, frames: &[AnalysedFrame]) -> Vec<String> {
    frames
        .iter()
        .flat_map(|f| rules.apply(f))
        .map(|o: Observation| serde_json::to_string(&o).unwrap_or_else(|e| e.to_string()))
        .collect()
}

/// Runs the suite on one kind; the error says which promise it broke.
pub fn check_rule_kind(kind: &Kind<CameraRuleFamily>) -> Result<(), String> {
    let name = kind.name;
    let zones = zones();
    let labels = LABELS.map(String::from);
    let cx = RuleContext {
        camera: "cam",
        zones: &zones,
        model: "conformance",
        labels: &labels,
        allowed: None,
    };
    let rule = kind
        .parse_example(&cx)
        .map_err(|e| format!("rule kind `{name}`: its example does not validate: {e}"))?;
    let scene = busy_scene();

    let first = run(&mut camera_rules(rule.as_ref()), &scene);
    if first.is_empty() {
        return Err(format!(
            "rule kind `{name}`: its example never fires on the busy scene; make it fire so \
             the suite checks something"
        ));
    }
    let second = run(&mut camera_rules(rule.as_ref()), &scene);
    if first != second {
        return Err(format!(
            "rule kind `{name}`: two runs over the same frames differ (replay would not match \
             live): {} against {} observations",
            first.len(),
            second.len()
        ));
    }

    let silent = run(&mut camera_rules(rule.as_ref()), &empty_scene());
    if !silent.is_empty() {
        return Err(format!(
            "rule kind `{name}`: fired on an empty scene: {}",
            silent[0]
        ));
    }

    let (head, tail) = scene.split_at(scene.len() / 2);
    let mut before = camera_rules(rule.as_ref());
    run(&mut before, head);
    let saved = before.state();
    let text = serde_json::to_string(&saved).map_err(|e| e.to_string())?;
    let reread = serde_json::from_str(&text)
        .map_err(|e| format!("rule kind `{name}`: its saved state does not read back: {e}"))?;
    let mut restored = camera_rules(rule.as_ref());
    restored.restore(reread);
    if restored.state() != saved {
        return Err(format!(
            "rule kind `{name}`: a restored rule reports another state than the one saved"
        ));
    }
    let mut again = camera_rules(rule.as_ref());
    again.restore(saved);
    if run(&mut restored, tail) != run(&mut again, tail) {
        return Err(format!(
            "rule kind `{name}`: two rules restored from one state differ on the same frames"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use skynet_core::Registry;

    use super::*;

    #[test]
    fn every_registered_rule_kind_passes_the_suite() {
        let mut registry = Registry::default();
        crate::register(&mut registry);
        let kinds = registry.kinds::<CameraRuleFamily>();
        assert_eq!(kinds.len(), 5);
        for kind in kinds {
            if let Err(e) = check_rule_kind(kind) {
                panic!("{e}");
            }
        }
    }
}
