//! Each rule kind on scripted track sequences, through [`CameraRules::apply`] as the pipeline
//! calls it: exactly the expected observations, and nothing else.

use chrono::{DateTime, Utc};
use skynet_core::{BBox, Component, DeviceId, FrameInfo, GridId, OwnerKind, TrackedObject};

use super::*;

const W: f32 = 1000.0;
const H: f32 = 500.0;

fn t(ms: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms)
}

/// A track standing at `(x, y)` (frame fractions of its feet).
fn obj(id: u64, label: &str, x: f32, y: f32) -> TrackedObject {
    let (fx, fy) = (x * W, y * H);
    TrackedObject {
        id,
        label: label.into(),
        score: 0.8,
        bbox: BBox::new(fx - 10.0, fy - 40.0, fx + 10.0, fy),
        first_seen: t(0),
        stationary_since: None,
        detected: true,
    }
}

fn person(id: u64, x: f32, y: f32) -> TrackedObject {
    obj(id, "person", x, y)
}

fn frame(ms: i64, tracks: Vec<TrackedObject>) -> AnalysedFrame {
    AnalysedFrame {
        info: FrameInfo {
            camera: DeviceId::new("cam"),
            seq: (ms / 100) as u64,
            captured_at: t(ms),
            decoded_at: std::time::Instant::now(),
            skipped: 0,
            width: W as u32,
            height: H as u32,
        },
        detections: Vec::new(),
        inference: std::time::Duration::ZERO,
        inferred: true,
        tracks,
    }
}

fn zones() -> Vec<Zone> {
    vec![
        Zone::new("left", &[[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]).unwrap(),
        Zone::new("right", &[[0.5, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 1.0]]).unwrap(),
    ]
}

/// A rule of kind `C` from its TOML table (without `kind`), validated as the binary does.
fn configure<C: Component<CameraRuleFamily>>(table: &str) -> Result<C::Validated, FieldError> {
    let config: C = toml::from_str(table).map_err(|e| FieldError::new("<toml>", e.to_string()))?;
    let (zones, labels) = (
        zones(),
        ["person", "car", "backpack", "handbag", "suitcase"].map(String::from),
    );
    config.validate(&RuleContext {
        camera: "cam",
        zones: &zones,
        model: "m",
        labels: &labels,
        allowed: None,
    })
}

fn camera(rule: Box<dyn Rule>) -> CameraRules {
    CameraRules {
        camera: DeviceId::new("cam"),
        grid: GridId::new("G-0101"),
        owner: OwnerKind::Police,
        rules: vec![rule],
    }
}

fn rules<C: Component<CameraRuleFamily>>(table: &str) -> CameraRules
where
    C::Validated: BuildRule,
{
    let cam = DeviceId::new("cam");
    camera(
        configure::<C>(table)
            .unwrap()
            .build(&RuleBuildContext { camera: &cam }),
    )
}

/// (time in ms, track ids) of each observation.
type Seen = Vec<(i64, Vec<u64>)>;

fn run(rules: &mut CameraRules, frames: impl IntoIterator<Item = AnalysedFrame>) -> Seen {
    let mut seen = Vec::new();
    for f in frames {
        for o in rules.apply(&f) {
            assert_eq!(
                o.at, f.info.captured_at,
                "an observation is at its frame's time"
            );
            assert!(o.validate().is_ok(), "{o:?}");
            let ids: Vec<u64> = o
                .evidence
                .detections
                .iter()
                .map(|d| d.track.expect("evidence carries track ids"))
                .collect();
            for d in &o.evidence.detections {
                let track = f.tracks.iter().find(|t| Some(t.id) == d.track).unwrap();
                assert_eq!(d.bbox, track.bbox, "evidence carries the track's box");
            }
            seen.push(((o.at - t(0)).num_milliseconds(), ids));
        }
    }
    seen
}

/// Frames every 100 ms from `from_ms` up to (not including) `to_ms`, tracks by `at(ms)`.
fn frames(
    from_ms: i64,
    to_ms: i64,
    at: impl Fn(i64) -> Vec<TrackedObject>,
) -> impl Iterator<Item = AnalysedFrame> {
    (from_ms..to_ms)
        .step_by(100)
        .map(move |ms| frame(ms, at(ms)))
}

// ---- zone_intrusion ----

#[test]
fn zone_intrusion_fires_on_tracks_after_min_frames_then_per_cooldown() {
    let mut r = rules::<ZoneIntrusionConfig>(
        "name = \"z\"\nzone = \"left\"\nmin_frames = 3\ncooldown_s = 1.0\n",
    );
    // A person walks in the left half for 2.5 s; another stays in the right half.
    let seen = run(
        &mut r,
        frames(0, 2500, |_| vec![person(1, 0.2, 0.5), person(2, 0.8, 0.5)]),
    );
    assert_eq!(seen, vec![(200, vec![1]), (1200, vec![1]), (2200, vec![1])]);
}

#[test]
fn zone_intrusion_inertia_is_per_track_frames_in_a_row() {
    let mut r = rules::<ZoneIntrusionConfig>("name = \"z\"\nzone = \"left\"\nmin_frames = 3\n");
    // Two tracks take turns in the zone, neither 3 frames in a row: nothing.
    let seen = run(
        &mut r,
        frames(0, 1000, |ms| {
            vec![person(1 + (ms / 100 % 2) as u64, 0.2, 0.5)]
        }),
    );
    assert_eq!(seen, vec![]);
}

#[test]
fn a_stationary_track_in_the_zone_alerts_once_not_forever() {
    let mut r = rules::<ZoneIntrusionConfig>(
        "name = \"z\"\nzone = \"left\"\nlabels = [\"car\"]\nmin_frames = 1\ncooldown_s = 1.0\n",
    );
    let car = |ms: i64| {
        let mut c = obj(7, "car", 0.3, 0.5);
        // Parked: stationary from 500 ms on, for a minute; then drives off at 60.5 s.
        if (500..60_500).contains(&ms) {
            c.stationary_since = Some(t(0));
        }
        vec![c]
    };
    let seen = run(&mut r, frames(0, 62_000, car));
    // While it moves: once per cooldown; parked: nothing more; moving again: alerts again.
    assert_eq!(
        seen,
        vec![(0, vec![7]), (60_500, vec![7]), (61_500, vec![7])]
    );
}

#[test]
fn a_car_that_parks_before_its_first_alert_alerts_once() {
    let mut r = rules::<ZoneIntrusionConfig>(
        "name = \"z\"\nzone = \"left\"\nlabels = [\"car\"]\nmin_frames = 1\ncooldown_s = 1.0\n",
    );
    let seen = run(
        &mut r,
        frames(0, 30_000, |_| {
            let mut c = obj(3, "car", 0.3, 0.5);
            c.stationary_since = Some(t(0));
            vec![c]
        }),
    );
    assert_eq!(seen, vec![(0, vec![3])]);
}

// ---- dwell ----

#[test]
fn dwell_fires_once_per_track_and_visit() {
    let mut r = rules::<DwellConfig>("name = \"d\"\nzone = \"left\"\nmin_dwell_s = 5\n");
    let scene = |ms: i64| {
        let mut v = Vec::new();
        // Track 1 loiters from 0 to 12 s, but steps out for a second at 8 s (within the grace).
        if ms < 12_000 {
            let x = if (8_000..9_000).contains(&ms) {
                0.7
            } else {
                0.2
            };
            v.push(person(1, x, 0.5));
        }
        // Track 2 passes through in 3 s: no hit.
        if ms < 3_000 {
            v.push(person(2, 0.3, 0.5));
        }
        // Track 1 comes back after 6 s away: a new visit, a new clock.
        if (18_000..25_000).contains(&ms) {
            v.push(person(1, 0.2, 0.6));
        }
        v
    };
    let seen = run(&mut r, frames(0, 26_000, scene));
    assert_eq!(seen, vec![(5_000, vec![1]), (23_000, vec![1])]);
}

#[test]
fn dwell_ignores_other_labels_and_other_zones() {
    let mut r = rules::<DwellConfig>("name = \"d\"\nzone = \"left\"\nmin_dwell_s = 1\n");
    let seen = run(
        &mut r,
        frames(0, 5_000, |_| {
            vec![obj(1, "car", 0.2, 0.5), person(2, 0.9, 0.5)]
        }),
    );
    assert_eq!(seen, vec![]);
}

// ---- line_crossing ----

/// A horizontal line across the middle of the frame, drawn left to right: its right is below.
const LINE: &str = "name = \"l\"\nline = [[0.2, 0.5], [0.8, 0.5]]\n";

/// A track walking `ys` (one y per frame) at x.
fn walk(id: u64, x: f32, ys: &[f32]) -> Vec<AnalysedFrame> {
    ys.iter()
        .enumerate()
        .map(|(i, &y)| frame(i as i64 * 100, vec![person(id, x, y)]))
        .collect()
}

fn directions(rules: &mut CameraRules, frames: Vec<AnalysedFrame>) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for f in frames {
        for o in rules.apply(&f) {
            out.push((
                (o.at - t(0)).num_milliseconds(),
                o.evidence.extra["direction"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

#[test]
fn line_crossing_up_the_image_is_in_and_down_is_out() {
    let mut r = rules::<LineCrossingConfig>(LINE);
    let up = walk(1, 0.5, &[0.8, 0.7, 0.6, 0.45, 0.3]);
    assert_eq!(directions(&mut r, up), vec![(300, "in".to_string())]);
    let mut r = rules::<LineCrossingConfig>(LINE);
    let down = walk(2, 0.5, &[0.3, 0.45, 0.55, 0.7]);
    assert_eq!(directions(&mut r, down), vec![(200, "out".to_string())]);
    // The same line drawn right to left swaps them.
    let mut r = rules::<LineCrossingConfig>("name = \"l\"\nline = [[0.8, 0.5], [0.2, 0.5]]\n");
    let up = walk(1, 0.5, &[0.8, 0.3]);
    assert_eq!(directions(&mut r, up), vec![(100, "out".to_string())]);
    // A vertical line drawn top to bottom: its right is the image's left.
    let mut r = rules::<LineCrossingConfig>("name = \"l\"\nline = [[0.5, 0.0], [0.5, 1.0]]\n");
    let rightwards: Vec<AnalysedFrame> = [0.3, 0.45, 0.6]
        .iter()
        .enumerate()
        .map(|(i, &x)| frame(i as i64 * 100, vec![person(1, x, 0.5)]))
        .collect();
    assert_eq!(
        directions(&mut r, rightwards),
        vec![(200, "in".to_string())]
    );
}

#[test]
fn jitter_on_the_line_is_one_crossing_not_many() {
    let mut r = rules::<LineCrossingConfig>(LINE);
    // Feet wobble within 0.5 ± 0.008 (inside the default dead band of 0.01) on the way up.
    let ys = [0.7, 0.508, 0.492, 0.507, 0.493, 0.506, 0.3, 0.2];
    assert_eq!(
        directions(&mut r, walk(1, 0.5, &ys)),
        vec![(600, "in".to_string())]
    );
    // There and back again is two crossings.
    let mut r = rules::<LineCrossingConfig>(LINE);
    let ys = [0.7, 0.4, 0.6];
    assert_eq!(
        directions(&mut r, walk(1, 0.5, &ys)),
        vec![(100, "in".to_string()), (200, "out".to_string())]
    );
}

#[test]
fn crossings_beyond_the_segment_do_not_count() {
    let mut r = rules::<LineCrossingConfig>(LINE);
    assert_eq!(directions(&mut r, walk(1, 0.9, &[0.8, 0.2])), vec![]);
    assert_eq!(directions(&mut r, walk(2, 0.1, &[0.2, 0.8])), vec![]);
}

#[test]
fn direction_picks_which_crossings_are_observed() {
    let mut r = rules::<LineCrossingConfig>(&format!("{LINE}direction = \"out\"\n"));
    let ys = [0.7, 0.3, 0.7, 0.3];
    assert_eq!(
        directions(&mut r, walk(1, 0.5, &ys)),
        vec![(200, "out".to_string())]
    );
    let mut r = rules::<LineCrossingConfig>(&format!("{LINE}direction = \"in\"\n"));
    assert_eq!(
        directions(&mut r, walk(1, 0.5, &ys)),
        vec![(100, "in".to_string()), (300, "in".to_string())]
    );
}

#[test]
fn each_track_crosses_on_its_own() {
    let mut r = rules::<LineCrossingConfig>(LINE);
    // Two people cross in opposite directions in the same frames; a car is not a label.
    let scene = |ms: i64| {
        let k = ms as f32 / 1000.0;
        vec![
            person(1, 0.4, 0.8 - k),
            person(2, 0.6, 0.2 + k),
            obj(3, "car", 0.5, 0.8 - k),
        ]
    };
    let seen = run(&mut r, frames(0, 600, scene));
    assert_eq!(seen, vec![(400, vec![1]), (400, vec![2])]);
}

#[test]
fn line_crossing_config_errors_name_the_field() {
    let cases = [
        (
            "line = [[0.2, 0.5], [1.2, 0.5]]",
            "line",
            "point 2 (1.2, 0.5) is outside the frame",
        ),
        ("line = [[0.2, 0.5], [0.2, 0.5]]", "line", "the same"),
        (
            "line = [[0.2, 0.5], [0.8, 0.5]]\ndirection = \"up\"",
            "<toml>",
            "unknown variant `up`",
        ),
        (
            "line = [[0.2, 0.5], [0.8, 0.5]]\nlabels = [\"face\"]",
            "labels",
            "label `face`",
        ),
        (
            "line = [[0.2, 0.5], [0.8, 0.5]]\ndead_band = 0.9",
            "dead_band",
            "between 0 and 0.5",
        ),
        ("line = [[0.2, 0.5]]", "<toml>", "line"),
    ];
    for (extra, field, message) in cases {
        let err = configure::<LineCrossingConfig>(&format!("name = \"l\"\n{extra}\n")).unwrap_err();
        assert_eq!(err.field, field, "{extra}: {err:?}");
        assert!(err.message.contains(message), "{extra}: {}", err.message);
    }
}

// ---- crowd ----

fn crowd_of(n: u64, ms: i64) -> Vec<TrackedObject> {
    let _ = ms;
    (0..n)
        .map(|i| person(i + 1, 0.1 + i as f32 * 0.05, 0.5))
        .collect()
}

#[test]
fn crowd_fires_once_per_gathering() {
    let mut r =
        rules::<CrowdConfig>("name = \"c\"\nzone = \"left\"\nmin_count = 3\nmin_duration_s = 2\n");
    let scene = |ms: i64| match ms {
        // 3 people from 0 to 5 s: one hit at 2 s.
        0..5_000 => crowd_of(3, ms),
        // One leaves for a second: the same gathering.
        5_000..6_000 => crowd_of(2, ms),
        6_000..10_000 => crowd_of(4, ms),
        // Two leave for 4 s: over; then 3 again for 3 s: a new one, a hit at 16 s.
        10_000..14_000 => crowd_of(1, ms),
        14_000..17_000 => crowd_of(3, ms),
        // Three people, but one in the other zone: never a crowd.
        _ => vec![
            person(1, 0.1, 0.5),
            person(2, 0.2, 0.5),
            person(3, 0.9, 0.5),
        ],
    };
    let seen = run(&mut r, frames(0, 25_000, scene));
    assert_eq!(seen, vec![(2_000, vec![1, 2, 3]), (16_000, vec![1, 2, 3])]);
}

#[test]
fn a_restored_crowd_rule_keeps_its_gathering() {
    let table = "name = \"c\"\nzone = \"left\"\nmin_count = 2\nmin_duration_s = 2\n";
    let mut before = rules::<CrowdConfig>(table);
    assert_eq!(
        run(&mut before, frames(0, 1_000, |ms| crowd_of(2, ms))),
        vec![]
    );
    let mut after = rules::<CrowdConfig>(table);
    after.restore(before.state());
    // The gathering began at 0 s, before the restart: it fires at 2 s, not 3 s.
    let seen = run(&mut after, frames(1_000, 5_000, |ms| crowd_of(2, ms)));
    assert_eq!(seen, vec![(2_000, vec![1, 2])]);
    // Once fired, a restored rule does not fire again for the same gathering.
    let mut again = rules::<CrowdConfig>(table);
    again.restore(after.state());
    assert_eq!(
        run(&mut again, frames(5_000, 8_000, |ms| crowd_of(2, ms))),
        vec![]
    );
}

// ---- stationary_object ----

#[test]
fn a_bag_left_still_fires_once_after_min_stationary_s() {
    let mut r = rules::<StationaryObjectConfig>("name = \"s\"\nmin_stationary_s = 10\n");
    let scene = |ms: i64| {
        let mut bag = obj(5, "suitcase", 0.4, 0.8);
        // Still from 3 s to 20 s (the tracker says so from 8 s on, after its window);
        // carried off and put down again at 25 s.
        bag.stationary_since = match ms {
            8_000..20_000 => Some(t(3_000)),
            30_000.. => Some(t(25_000)),
            _ => None,
        };
        // A person standing still is not a bag; a moving backpack is not still.
        let mut p = person(6, 0.3, 0.5);
        p.stationary_since = Some(t(0));
        vec![bag, p, obj(7, "backpack", 0.1 + ms as f32 / 100_000.0, 0.5)]
    };
    let seen = run(&mut r, frames(0, 40_000, scene));
    assert_eq!(seen, vec![(13_000, vec![5]), (35_000, vec![5])]);
}

#[test]
fn stationary_object_only_in_its_zone() {
    let mut r = rules::<StationaryObjectConfig>(
        "name = \"fire-lane\"\nzone = \"right\"\nlabels = [\"car\"]\nmin_stationary_s = 1\n",
    );
    let scene = |_| {
        let mut inside = obj(1, "car", 0.8, 0.5);
        let mut outside = obj(2, "car", 0.2, 0.5);
        inside.stationary_since = Some(t(0));
        outside.stationary_since = Some(t(0));
        vec![inside, outside]
    };
    let seen = run(&mut r, frames(0, 5_000, scene));
    assert_eq!(seen, vec![(1_000, vec![1])]);
}

#[test]
fn configs_take_their_defaults_and_refuse_bad_values() {
    let d = configure::<DwellConfig>("name = \"d\"\nzone = \"left\"\n").unwrap();
    let d = d.config();
    assert_eq!((d.min_dwell_s, d.category.as_str()), (60.0, "loitering"));
    let c = configure::<CrowdConfig>("name = \"c\"\nzone = \"left\"\n").unwrap();
    let c = c.config();
    assert_eq!((c.min_count, c.min_duration_s), (5, 10.0));
    assert_eq!(c.labels, vec!["person".to_string()]);
    let s = configure::<StationaryObjectConfig>("name = \"s\"\n").unwrap();
    let s = s.config();
    assert_eq!(
        s.labels,
        ["backpack", "handbag", "suitcase"].map(String::from)
    );
    assert_eq!(
        (s.min_stationary_s, s.category.as_str()),
        (60.0, "abandoned_object")
    );
    let l = configure::<LineCrossingConfig>(LINE).unwrap();
    let l = l.config();
    assert_eq!((l.direction, l.dead_band), (CrossingDirection::Both, 0.01));

    let err =
        configure::<DwellConfig>("name = \"d\"\nzone = \"left\"\nmin_dwell_s = -1\n").unwrap_err();
    assert_eq!(err.field, "min_dwell_s");
    let err = configure::<CrowdConfig>("name = \"c\"\nzone = \"mid\"\n").unwrap_err();
    assert_eq!(err.field, "zone");
    let err =
        configure::<CrowdConfig>("name = \"c\"\nzone = \"left\"\nmin_count = 0\n").unwrap_err();
    assert_eq!(err.field, "min_count");
    let err = configure::<StationaryObjectConfig>("name = \"s\"\nzone = \"mid\"\n").unwrap_err();
    assert_eq!(err.field, "zone");
    let err = configure::<StationaryObjectConfig>("name = \"s\"\nweight = 0\n").unwrap_err();
    assert_eq!(err.field, "weight");
    let err =
        configure::<DwellConfig>("name = \"d\"\nzone = \"left\"\nmin_dwel_s = 1\n").unwrap_err();
    assert!(
        err.message.contains("unknown field `min_dwel_s`"),
        "{err:?}"
    );
}
