//! What a camera keeps of the detector's output: the classes its owner looks for, and per
//! class a minimum score and a box-area range.
//!
//! The detector runs one threshold for every camera (one model call may serve several
//! cameras); this filter then applies each camera's own limits to the boxes in its pixels.
//! Configured as:
//!
//! ```toml
//! [detect.classes.person]          # for every camera
//! min_score = 0.4
//! min_area = 0.0002                # fraction of the frame
//!
//! [detect.owner_classes]           # the labels each owner's cameras look for
//! police = ["person", "car"]
//!
//! [[cameras]]
//!   [cameras.classes.car]          # this camera only, key by key over [detect.classes]
//!   max_area = 0.3
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::{Detection, DeviceId, FieldError, LiveThresholds, OwnerKind};

/// Limits for one class, as written; keys not given fall back to the wider table's, then to
/// no limit (score: the detector's threshold).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassLimits {
    /// Lowest score kept, 0 to 1.
    pub min_score: Option<f64>,
    /// Smallest box kept, as a fraction of the frame's area (0 to 1).
    pub min_area: Option<f64>,
    /// Largest box kept, as a fraction of the frame's area (0 to 1).
    pub max_area: Option<f64>,
}

impl ClassLimits {
    /// `self`'s keys where given, else `wider`'s.
    pub fn over(self, wider: ClassLimits) -> ClassLimits {
        ClassLimits {
            min_score: self.min_score.or(wider.min_score),
            min_area: self.min_area.or(wider.min_area),
            max_area: self.max_area.or(wider.max_area),
        }
    }
}

/// `classes` tables: label to limits.
pub type ClassLimitsTable = BTreeMap<String, ClassLimits>;

/// `[detect.owner_classes]`: per owner, the labels its cameras look for.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerClasses {
    pub police: Option<Vec<String>>,
    pub safety_production: Option<Vec<String>>,
    pub city_management: Option<Vec<String>>,
}

/// People and vehicles: what police and street cameras look for unless configured.
const PEOPLE_AND_VEHICLES: [&str; 6] = ["person", "bicycle", "car", "motorcycle", "bus", "truck"];

/// The COCO classes of general-purpose detectors. A model's labels outside this list are
/// what it was trained for specially (fire, smoke, helmets, spills): its hazard classes.
const GENERAL_PURPOSE: [&str; 80] = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
];

impl OwnerClasses {
    /// The labels `owner`'s cameras keep. Unconfigured: police and street (city-management)
    /// cameras look for people and vehicles; safety-production cameras for people and the
    /// hazard classes of the model (its labels that are not general-purpose COCO classes:
    /// none for YOLOX-Nano; `fire` and `smoke` for a fire model), as far as the model knows
    /// them.
    pub fn allowed(&self, owner: OwnerKind, model_labels: &[String]) -> Vec<String> {
        let configured = match owner {
            OwnerKind::Police => &self.police,
            OwnerKind::SafetyProduction => &self.safety_production,
            OwnerKind::CityManagement => &self.city_management,
        };
        if let Some(labels) = configured {
            return labels.clone();
        }
        let keep = |label: &str| match owner {
            OwnerKind::Police | OwnerKind::CityManagement => PEOPLE_AND_VEHICLES.contains(&label),
            OwnerKind::SafetyProduction => label == "person" || !GENERAL_PURPOSE.contains(&label),
        };
        model_labels
            .iter()
            .filter(|l| keep(l.as_str()))
            .cloned()
            .collect()
    }

    /// Every configured label is one the model detects; errors name the owner's key.
    pub fn validate(&self, model: &str, model_labels: &[String]) -> Result<(), FieldError> {
        for (key, labels) in [
            ("police", &self.police),
            ("safety_production", &self.safety_production),
            ("city_management", &self.city_management),
        ] {
            let Some(labels) = labels else { continue };
            let field = format!("owner_classes.{key}");
            if labels.is_empty() {
                return Err(FieldError::new(
                    field.as_str(),
                    format!("`{field}` is empty: that owner's cameras would detect nothing"),
                ));
            }
            if let Some(unknown) = labels.iter().find(|l| !model_labels.contains(l)) {
                return Err(FieldError::new(
                    field.as_str(),
                    format!("label `{unknown}` in `{field}` is not one model `{model}` detects"),
                ));
            }
        }
        Ok(())
    }
}

/// Checks a `classes` table: labels the model knows, values in range, and no minimum score
/// below the detector's threshold (the detector drops those boxes before any filter sees
/// them, so such a limit would silently do nothing). `table` names the key for messages.
pub fn validate_class_limits(
    table: &str,
    limits: &ClassLimitsTable,
    model: &str,
    model_labels: &[String],
    detector_threshold: f64,
) -> Result<(), FieldError> {
    for (label, l) in limits {
        let key = |k: &str| format!("{table}.{label}.{k}");
        if !model_labels.contains(label) {
            return Err(FieldError::new(
                table,
                format!("`{table}.{label}`: label `{label}` is not one model `{model}` detects"),
            ));
        }
        if let Some(score) = l.min_score {
            let field = key("min_score");
            check_range(&field, score, 0.0, 1.0)?;
            if score < detector_threshold {
                return Err(FieldError::new(
                    field.as_str(),
                    format!(
                        "`{field}` = {score} is below `[detect] threshold` = {detector_threshold}: \
                         the detector drops those boxes first; lower the threshold too"
                    ),
                ));
            }
        }
        for k in ["min_area", "max_area"] {
            let value = if k == "min_area" {
                l.min_area
            } else {
                l.max_area
            };
            if let Some(v) = value {
                check_range(&key(k), v, 0.0, 1.0)?;
            }
        }
        if let (Some(min), Some(max)) = (l.min_area, l.max_area)
            && min > max
        {
            return Err(FieldError::new(
                key("min_area").as_str(),
                format!(
                    "`{}` = {min} is larger than `{}` = {max}: no box would be kept",
                    key("min_area"),
                    key("max_area")
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a camera's limits merged over the global ones: each table may be fine alone and
/// still leave no box possible together (`min_area` from one above `max_area` from the
/// other).
pub fn check_merged(
    global: &ClassLimitsTable,
    camera: &ClassLimitsTable,
) -> Result<(), FieldError> {
    for (label, own) in camera {
        let merged = own.over(global.get(label).copied().unwrap_or_default());
        if let (Some(min), Some(max)) = (merged.min_area, merged.max_area)
            && min > max
        {
            return Err(FieldError::new(
                "classes",
                format!(
                    "`classes.{label}`: with `[detect.classes.{label}]` the camera's `min_area` is \
                     {min} and its `max_area` {max}: no box would be kept"
                ),
            ));
        }
    }
    Ok(())
}

/// One class's limits, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Limits {
    min_score: f32,
    min_area: f32,
    max_area: f32,
}

/// Each of `labels` with its limits: `camera_limits` over `global`, then no limit.
fn resolve<'a>(
    labels: impl Iterator<Item = &'a String>,
    global: &ClassLimitsTable,
    camera_limits: &ClassLimitsTable,
) -> BTreeMap<String, Limits> {
    labels
        .map(|label| {
            let wider = global.get(label).copied().unwrap_or_default();
            let l = camera_limits
                .get(label)
                .copied()
                .unwrap_or_default()
                .over(wider);
            let limits = Limits {
                min_score: l.min_score.unwrap_or(0.0) as f32,
                min_area: l.min_area.unwrap_or(0.0) as f32,
                max_area: l.max_area.unwrap_or(1.0) as f32,
            };
            (label.clone(), limits)
        })
        .collect()
}

/// A camera's detection filter, built from the validated config; a reload changes its
/// limits in place ([`reconfigure`](Self::reconfigure)).
#[derive(Debug)]
pub struct DetectionFilter {
    /// Allowed labels with their limits; a label absent here is not one the owner looks for.
    /// Behind a lock: a config reload changes the limits (never the labels) while running.
    classes: RwLock<BTreeMap<String, Limits>>,
    /// The lowest kept score per allowed label, which engineers may change while running.
    scores: Arc<LiveThresholds>,
    /// Dropped detections, by why: resolved once per camera.
    dropped_class: metrics::Counter,
    dropped_score: metrics::Counter,
    dropped_area: metrics::Counter,
}

impl DetectionFilter {
    /// `camera` limits over `global` ones, for the labels `allowed`; `floor` is the
    /// detector's threshold (nothing below it ever reaches the filter).
    pub fn new(
        camera: &DeviceId,
        allowed: &[String],
        global: &ClassLimitsTable,
        camera_limits: &ClassLimitsTable,
        floor: f32,
    ) -> Self {
        let classes = resolve(allowed.iter(), global, camera_limits);
        let counter = |reason: &'static str| metrics::counter!("skynet_detections_filtered_total", "camera" => camera.to_string(), "reason" => reason);
        let scores = classes
            .iter()
            .map(|(label, limits)| (label.clone(), limits.min_score))
            .collect();
        Self {
            scores: Arc::new(LiveThresholds::new(floor, scores)),
            classes: RwLock::new(classes),
            dropped_class: counter("class"),
            dropped_score: counter("score"),
            dropped_area: counter("area"),
        }
    }

    /// Whether the camera keeps detections of `label` at all.
    pub fn allows(&self, label: &str) -> bool {
        self.limits().contains_key(label)
    }

    fn limits(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Limits>> {
        self.classes.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// A config reload: the limits of the labels the camera keeps (the labels themselves
    /// stay), `camera_limits` over `global`, with `default_score` (the reloaded `[detect]
    /// threshold`, at or above the running detector's) as the lowest score of every label.
    /// The scores are set all or nothing, as a console edit is; returns the scores set.
    pub fn reconfigure(
        &self,
        global: &ClassLimitsTable,
        camera_limits: &ClassLimitsTable,
        default_score: f32,
    ) -> Result<BTreeMap<String, f32>, String> {
        let labels: Vec<String> = self.limits().keys().cloned().collect();
        let mut limits = resolve(labels.iter(), global, camera_limits);
        for l in limits.values_mut() {
            l.min_score = l.min_score.max(default_score);
        }
        let scores: BTreeMap<String, f32> = limits
            .iter()
            .map(|(label, l)| (label.clone(), l.min_score))
            .collect();
        self.scores.set(&scores)?;
        *self.classes.write().unwrap_or_else(PoisonError::into_inner) = limits;
        Ok(scores)
    }

    /// Keeps the detections the camera looks for; boxes in pixels of a `width` x `height`
    /// frame.
    pub fn apply(&self, detections: &mut Vec<Detection>, width: u32, height: u32) {
        let frame_area = (width.max(1) as f32) * (height.max(1) as f32);
        let classes = self.limits();
        self.scores.with(|scores| {
            detections.retain(|d| {
                let (Some(limits), Some(&min_score)) =
                    (classes.get(&d.label), scores.get(&d.label))
                else {
                    self.dropped_class.increment(1);
                    return false;
                };
                if d.score.is_nan() || d.score < min_score {
                    self.dropped_score.increment(1);
                    return false;
                }
                let area = d.bbox.area() / frame_area;
                if !(limits.min_area..=limits.max_area).contains(&area) {
                    self.dropped_area.increment(1);
                    return false;
                }
                true
            });
        });
    }

    /// The camera's score thresholds, to read and change while running.
    pub fn thresholds(&self) -> Arc<LiveThresholds> {
        Arc::clone(&self.scores)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skynet_core::BBox;

    fn labels() -> Vec<String> {
        ["person", "car", "dog", "backpack"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn d(label: &str, score: f32, side: f32) -> Detection {
        Detection::new(label, score, BBox::new(0.0, 0.0, side, side))
    }

    #[test]
    fn owners_default_to_the_classes_they_look_for() {
        let owners = OwnerClasses::default();
        assert_eq!(
            owners.allowed(OwnerKind::Police, &labels()),
            vec!["person", "car"]
        );
        assert_eq!(
            owners.allowed(OwnerKind::CityManagement, &labels()),
            vec!["person", "car"]
        );
        assert_eq!(
            owners.allowed(OwnerKind::SafetyProduction, &labels()),
            vec!["person"]
        );
        // A hazard model's own classes are what safety-production cameras look for.
        let fire_model: Vec<String> = ["fire", "smoke", "car"].map(String::from).to_vec();
        assert_eq!(
            owners.allowed(OwnerKind::SafetyProduction, &fire_model),
            vec!["fire", "smoke"]
        );
        assert!(owners.allowed(OwnerKind::Police, &fire_model) == vec!["car"]);
        let configured = OwnerClasses {
            safety_production: Some(vec!["person".into(), "backpack".into()]),
            ..OwnerClasses::default()
        };
        assert_eq!(
            configured.allowed(OwnerKind::SafetyProduction, &labels()),
            vec!["person", "backpack"]
        );
    }

    #[test]
    fn filter_applies_class_score_and_area_with_camera_over_global() {
        let global: ClassLimitsTable = [(
            "person".to_string(),
            ClassLimits {
                min_score: Some(0.5),
                min_area: Some(0.01),
                max_area: None,
            },
        )]
        .into();
        let camera: ClassLimitsTable = [(
            "person".to_string(),
            ClassLimits {
                min_score: Some(0.7),
                ..ClassLimits::default()
            },
        )]
        .into();
        let filter = DetectionFilter::new(
            &DeviceId::new("c"),
            &["person".to_string(), "car".to_string()],
            &global,
            &camera,
            0.0,
        );
        // 100x100 frame: 10x10 is 0.01 of it.
        let mut found = vec![
            d("person", 0.8, 20.0), // kept
            d("person", 0.6, 20.0), // camera min_score 0.7
            d("person", 0.9, 5.0),  // global min_area
            d("dog", 0.9, 20.0),    // not looked for
            d("car", 0.35, 90.0),   // no limits for car
            d("car", f32::NAN, 90.0),
        ];
        filter.apply(&mut found, 100, 100);
        let kept: Vec<(&str, f32)> = found.iter().map(|d| (d.label.as_str(), d.score)).collect();
        assert_eq!(kept, vec![("person", 0.8), ("car", 0.35)]);
        assert!(filter.allows("car") && !filter.allows("dog"));
    }

    /// A config reload changes the scores and areas in place, for the same labels, with the
    /// new `[detect] threshold` as every label's lowest score; the console's handle sees it.
    #[test]
    fn reconfigure_changes_the_limits_in_place() {
        let filter = DetectionFilter::new(
            &DeviceId::new("c"),
            &["person".to_string(), "car".to_string()],
            &ClassLimitsTable::new(),
            &ClassLimitsTable::new(),
            0.3,
        );
        let handle = filter.thresholds();
        let camera: ClassLimitsTable = [(
            "person".to_string(),
            ClassLimits {
                min_score: Some(0.7),
                min_area: Some(0.05),
                max_area: None,
            },
        )]
        .into();
        let scores = filter
            .reconfigure(&ClassLimitsTable::new(), &camera, 0.4)
            .unwrap();
        assert_eq!(
            scores,
            [("car".to_string(), 0.4), ("person".to_string(), 0.7)].into()
        );
        assert_eq!(handle.get("person"), Some(0.7));
        let mut found = vec![
            d("person", 0.8, 30.0), // kept
            d("person", 0.6, 30.0), // below 0.7 now
            d("person", 0.9, 10.0), // 0.01 of the frame: below min_area now
            d("car", 0.35, 30.0),   // below the new threshold
            d("car", 0.45, 30.0),   // kept
        ];
        filter.apply(&mut found, 100, 100);
        let kept: Vec<(&str, f32)> = found.iter().map(|d| (d.label.as_str(), d.score)).collect();
        assert_eq!(kept, vec![("person", 0.8), ("car", 0.45)]);
        // Below the running detector's threshold (the floor): refused, nothing changed.
        assert!(
            filter
                .reconfigure(&ClassLimitsTable::new(), &camera, 0.2)
                .is_err()
        );
        assert_eq!(handle.get("car"), Some(0.4));
    }

    #[test]
    fn errors_name_the_key() {
        let table = |l: ClassLimits| -> ClassLimitsTable { [("person".to_string(), l)].into() };
        let check = |t: &ClassLimitsTable| validate_class_limits("classes", t, "m", &labels(), 0.3);
        let err = check(&table(ClassLimits {
            min_score: Some(0.2),
            ..ClassLimits::default()
        }))
        .unwrap_err();
        assert_eq!(err.field, "classes.person.min_score");
        assert!(
            err.message.contains("below `[detect] threshold` = 0.3"),
            "{err}"
        );
        let err = check(&table(ClassLimits {
            min_area: Some(0.5),
            max_area: Some(0.1),
            ..ClassLimits::default()
        }))
        .unwrap_err();
        assert_eq!(err.field, "classes.person.min_area");
        let err = check(&table(ClassLimits {
            max_area: Some(1.5),
            ..ClassLimits::default()
        }))
        .unwrap_err();
        assert_eq!(err.field, "classes.person.max_area");
        let unknown: ClassLimitsTable = [("face".to_string(), ClassLimits::default())].into();
        assert!(
            check(&unknown)
                .unwrap_err()
                .message
                .contains("label `face`")
        );
        let owners = OwnerClasses {
            police: Some(vec!["face".into()]),
            ..OwnerClasses::default()
        };
        let err = owners.validate("m", &labels()).unwrap_err();
        assert_eq!(err.field, "owner_classes.police");
        let owners = OwnerClasses {
            police: Some(vec![]),
            ..OwnerClasses::default()
        };
        assert!(owners.validate("m", &labels()).is_err());
    }
}
