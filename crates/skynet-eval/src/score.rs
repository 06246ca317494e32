//! Incidents matched against labelled events.
//!
//! An incident matches a label when the camera (or, for a label on a cell, the grid) and the
//! category agree and the incident's `[first_seen, last_seen]` overlaps the labelled span
//! (both ends inclusive). A label on a camera matches an incident resting on that camera
//! (any of its `cameras`); a label on a grid matches an incident of that grid.
//!
//! Conventions:
//! - precision = matched incidents / incidents, 1 when there are no incidents; recall =
//!   matched labels / labels, 1 when there are no labels; F1 = 2PR / (P + R), 0 when P + R = 0.
//!   An incident matching several labels counts once; several incidents matching one label
//!   all count as matched (none is a false alarm).
//! - A label's detection delay is the earliest `opened_at` of its matching incidents minus
//!   the label's start, in seconds, signed: negative when the incident opened before the
//!   labelled start. The median of an even count is the mean of the middle two; the worst is
//!   the largest.
//! - Footage hours: the sum over the footage of last frame minus first frame. False alarms
//!   per hour are 0 when there are no footage hours.
//! - Slices: per category, the labels and incidents of that category over all the footage;
//!   per camera, the labels on that camera (labels on a grid count in no camera's slice), the
//!   incidents whose first camera it is, and that camera's footage hours. Whether a label or
//!   incident is matched is decided once, over everything.
//! - Lists are sorted: matches and misses by label line, false alarms by first seen then id.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::labels::{ResolvedLabel, Target};

/// An incident as evaluation sees it: its latest revision, and when it opened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalIncident {
    pub id: String,
    pub grid: String,
    pub category: String,
    /// Every camera whose evidence it rests on (the first one first).
    pub cameras: Vec<String>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The event time of its first revision: when an operator would have seen it.
    pub opened_at: DateTime<Utc>,
    /// The highest level it reached (`IV` to `I`).
    pub level: String,
}

/// One camera's footage in the run: where it is and the event times of its first and last
/// frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footage {
    pub camera: String,
    pub grid: String,
    pub first_frame: DateTime<Utc>,
    pub last_frame: DateTime<Utc>,
}

/// Precision, recall and the rest, for one slice (a category, a camera, or everything).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    pub labels: usize,
    pub incidents: usize,
    /// Labels at least one incident matched.
    pub matched_labels: usize,
    /// Incidents that matched at least one label.
    pub matched_incidents: usize,
    /// Incidents that matched no label.
    pub false_alarms: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub footage_hours: f64,
    pub false_alarms_per_hour: f64,
    /// Incident open minus label start, over the matched labels (seconds).
    pub delay_median_s: Option<f64>,
    pub delay_worst_s: Option<f64>,
}

/// What `skynet eval` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub overall: Figures,
    pub per_category: BTreeMap<String, Figures>,
    pub per_camera: BTreeMap<String, Figures>,
    pub matches: Vec<Match>,
    pub misses: Vec<Miss>,
    pub false_alarms: Vec<FalseAlarm>,
    /// Object-level figures, when `gt.txt` labels were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<crate::objects::ObjectReport>,
}

/// A matched label, with the incident that opened first among its matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match {
    /// The label's line in the labels file.
    pub label_line: usize,
    /// `camera ID` or `grid ID`.
    pub target: String,
    pub category: String,
    /// The matching incident that opened first (ties: the smallest id).
    pub incident: String,
    /// That incident's open minus the label's start (seconds; negative when it opened before).
    pub delay_s: f64,
    /// The label's other matching incidents, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_incidents: Vec<String>,
}

/// A label no incident matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Miss {
    pub label_line: usize,
    pub target: String,
    pub category: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// An incident that matched no label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FalseAlarm {
    pub incident: String,
    pub grid: String,
    /// Its first camera.
    pub camera: Option<String>,
    pub category: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// Scores `incidents` against `labels` over `footage`.
pub fn score(incidents: &[EvalIncident], labels: &[ResolvedLabel], footage: &[Footage]) -> Report {
    // Labels in line order (then target, category, start) so that every list is stable.
    let mut labels: Vec<&ResolvedLabel> = labels.iter().collect();
    labels.sort_by(|a, b| {
        (a.line, a.target.to_string(), &a.category, a.start).cmp(&(
            b.line,
            b.target.to_string(),
            &b.category,
            b.start,
        ))
    });
    let mut incidents: Vec<&EvalIncident> = incidents.iter().collect();
    incidents.sort_by(|a, b| (a.first_seen, &a.id).cmp(&(b.first_seen, &b.id)));

    // For each label, the indices of the incidents that match it.
    let label_matches: Vec<Vec<usize>> = labels
        .iter()
        .map(|label| {
            incidents
                .iter()
                .enumerate()
                .filter(|(_, incident)| matches(incident, label))
                .map(|(i, _)| i)
                .collect()
        })
        .collect();
    let mut incident_matched = vec![false; incidents.len()];
    for &i in label_matches.iter().flatten() {
        incident_matched[i] = true;
    }
    // Each label's delay (the earliest opening among its matches), when matched.
    let delays: Vec<Option<(f64, usize)>> = labels
        .iter()
        .zip(&label_matches)
        .map(|(label, found)| {
            found
                .iter()
                .min_by(|&&a, &&b| {
                    (incidents[a].opened_at, &incidents[a].id)
                        .cmp(&(incidents[b].opened_at, &incidents[b].id))
                })
                .map(|&i| (seconds_between(label.start, incidents[i].opened_at), i))
        })
        .collect();

    let figures = |label_in: &dyn Fn(&ResolvedLabel) -> bool,
                   incident_in: &dyn Fn(&EvalIncident) -> bool,
                   footage_hours: f64| {
        let mut f = Figures {
            footage_hours,
            ..Figures::default()
        };
        let mut slice_delays = Vec::new();
        for (label, delay) in labels.iter().zip(&delays) {
            if label_in(label) {
                f.labels += 1;
                if let Some((delay, _)) = delay {
                    f.matched_labels += 1;
                    slice_delays.push(*delay);
                }
            }
        }
        for (incident, matched) in incidents.iter().zip(&incident_matched) {
            if incident_in(incident) {
                f.incidents += 1;
                if *matched {
                    f.matched_incidents += 1;
                }
            }
        }
        f.false_alarms = f.incidents - f.matched_incidents;
        f.precision = ratio_or_one(f.matched_incidents, f.incidents);
        f.recall = ratio_or_one(f.matched_labels, f.labels);
        f.f1 = if f.precision + f.recall > 0.0 {
            2.0 * f.precision * f.recall / (f.precision + f.recall)
        } else {
            0.0
        };
        f.false_alarms_per_hour = if footage_hours > 0.0 {
            f.false_alarms as f64 / footage_hours
        } else {
            0.0
        };
        slice_delays.sort_by(f64::total_cmp);
        f.delay_median_s = median(&slice_delays);
        f.delay_worst_s = slice_delays.last().copied();
        f
    };

    let total_hours: f64 = footage.iter().map(hours).sum();
    let overall = figures(&|_| true, &|_| true, total_hours);

    let categories: std::collections::BTreeSet<&str> = labels
        .iter()
        .map(|l| l.category.as_str())
        .chain(incidents.iter().map(|i| i.category.as_str()))
        .collect();
    let per_category = categories
        .into_iter()
        .map(|category| {
            let f = figures(
                &|l| l.category == category,
                &|i| i.category == category,
                total_hours,
            );
            (category.to_string(), f)
        })
        .collect();

    let cameras: std::collections::BTreeSet<&str> = footage
        .iter()
        .map(|f| f.camera.as_str())
        .chain(labels.iter().filter_map(|l| match &l.target {
            Target::Camera(c) => Some(c.as_str()),
            Target::Grid(_) => None,
        }))
        .chain(
            incidents
                .iter()
                .filter_map(|i| i.cameras.first().map(String::as_str)),
        )
        .collect();
    let per_camera = cameras
        .into_iter()
        .map(|camera| {
            let camera_hours: f64 = footage
                .iter()
                .filter(|f| f.camera == camera)
                .map(hours)
                .sum();
            let f = figures(
                &|l| matches!(&l.target, Target::Camera(c) if c == camera),
                &|i| i.cameras.first().is_some_and(|c| c == camera),
                camera_hours,
            );
            (camera.to_string(), f)
        })
        .collect();

    let mut matches_list = Vec::new();
    let mut misses = Vec::new();
    for ((label, found), delay) in labels.iter().zip(&label_matches).zip(&delays) {
        match delay {
            Some((delay_s, first)) => {
                let mut other_incidents: Vec<String> = found
                    .iter()
                    .filter(|&&i| i != *first)
                    .map(|&i| incidents[i].id.clone())
                    .collect();
                other_incidents.sort();
                matches_list.push(Match {
                    label_line: label.line,
                    target: label.target.to_string(),
                    category: label.category.clone(),
                    incident: incidents[*first].id.clone(),
                    delay_s: *delay_s,
                    other_incidents,
                });
            }
            None => misses.push(Miss {
                label_line: label.line,
                target: label.target.to_string(),
                category: label.category.clone(),
                start: label.start,
                end: label.end,
            }),
        }
    }
    let false_alarms = incidents
        .iter()
        .zip(&incident_matched)
        .filter(|(_, matched)| !**matched)
        .map(|(incident, _)| FalseAlarm {
            incident: incident.id.clone(),
            grid: incident.grid.clone(),
            camera: incident.cameras.first().cloned(),
            category: incident.category.clone(),
            first_seen: incident.first_seen,
            last_seen: incident.last_seen,
        })
        .collect();

    Report {
        overall,
        per_category,
        per_camera,
        matches: matches_list,
        misses,
        false_alarms,
        objects: None,
    }
}

/// Whether `incident` matches `label`: category, camera (or grid), and overlapping spans.
pub fn matches(incident: &EvalIncident, label: &ResolvedLabel) -> bool {
    let target = match &label.target {
        Target::Camera(camera) => incident.cameras.iter().any(|c| c == camera),
        Target::Grid(grid) => &incident.grid == grid,
    };
    target
        && incident.category == label.category
        && incident.first_seen <= label.end
        && label.start <= incident.last_seen
}

/// `to - from` in seconds (signed).
fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    let d = to - from;
    match d.num_microseconds() {
        Some(us) => us as f64 / 1e6,
        None => d.num_milliseconds() as f64 / 1e3,
    }
}

fn hours(f: &Footage) -> f64 {
    (seconds_between(f.first_frame, f.last_frame) / 3600.0).max(0.0)
}

fn ratio_or_one(numerator: usize, denominator: usize) -> f64 {
    if denominator == 0 {
        1.0
    } else {
        numerator as f64 / denominator as f64
    }
}

/// The median of sorted values (the mean of the middle two for an even count).
fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        None
    } else if n % 2 == 1 {
        Some(sorted[n / 2])
    } else {
        Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-01-01T{s}Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    fn label(line: usize, target: Target, category: &str, start: &str, end: &str) -> ResolvedLabel {
        ResolvedLabel {
            line,
            target,
            category: category.into(),
            start: t(start),
            end: t(end),
        }
    }

    fn incident(
        id: &str,
        category: &str,
        cameras: &[&str],
        first: &str,
        last: &str,
        opened: &str,
    ) -> EvalIncident {
        EvalIncident {
            id: id.into(),
            grid: "g1".into(),
            category: category.into(),
            cameras: cameras.iter().map(|c| c.to_string()).collect(),
            first_seen: t(first),
            last_seen: t(last),
            opened_at: t(opened),
            level: "III".into(),
        }
    }

    fn footage() -> Vec<Footage> {
        vec![
            Footage {
                camera: "cam-a".into(),
                grid: "g1".into(),
                first_frame: t("00:00:00"),
                last_frame: t("01:00:00"),
            },
            Footage {
                camera: "cam-b".into(),
                grid: "g1".into(),
                first_frame: t("00:00:00"),
                last_frame: t("00:30:00"),
            },
        ]
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn assert_figures(
        f: &Figures,
        counts: [usize; 5],
        prf: [f64; 3],
        hours: f64,
        per_hour: f64,
        delays: (Option<f64>, Option<f64>),
    ) {
        assert_eq!(
            [
                f.labels,
                f.incidents,
                f.matched_labels,
                f.matched_incidents,
                f.false_alarms
            ],
            counts,
            "{f:?}"
        );
        assert!(close(f.precision, prf[0]), "precision {f:?}");
        assert!(close(f.recall, prf[1]), "recall {f:?}");
        assert!(close(f.f1, prf[2]), "f1 {f:?}");
        assert!(close(f.footage_hours, hours), "hours {f:?}");
        assert!(close(f.false_alarms_per_hour, per_hour), "per hour {f:?}");
        assert_eq!((f.delay_median_s, f.delay_worst_s), delays, "{f:?}");
    }

    /// 2 labels, 3 incidents: one match on a camera (34 s late), one on a grid (opened 10 s
    /// before the labelled start, its last sighting touching the start), one false alarm.
    #[test]
    fn two_labels_three_incidents() {
        let labels = vec![
            label(
                1,
                Target::Camera("cam-a".into()),
                "intrusion",
                "00:01:00",
                "00:02:00",
            ),
            label(
                2,
                Target::Grid("g1".into()),
                "loitering",
                "00:10:00",
                "00:12:00",
            ),
        ];
        let incidents = vec![
            incident(
                "inc-3",
                "intrusion",
                &["cam-b", "cam-a"],
                "00:05:00",
                "00:06:00",
                "00:05:02",
            ),
            incident(
                "inc-1",
                "intrusion",
                &["cam-a"],
                "00:01:30",
                "00:03:00",
                "00:01:34",
            ),
            incident(
                "inc-2",
                "loitering",
                &["cam-b"],
                "00:09:00",
                "00:10:00",
                "00:09:50",
            ),
        ];
        let report = score(&incidents, &labels, &footage());

        assert_figures(
            &report.overall,
            [2, 3, 2, 2, 1],
            [2.0 / 3.0, 1.0, 0.8],
            1.5,
            1.0 / 1.5,
            (Some(12.0), Some(34.0)),
        );
        assert_eq!(
            report.per_category.keys().collect::<Vec<_>>(),
            ["intrusion", "loitering"]
        );
        assert_figures(
            &report.per_category["intrusion"],
            [1, 2, 1, 1, 1],
            [0.5, 1.0, 2.0 / 3.0],
            1.5,
            1.0 / 1.5,
            (Some(34.0), Some(34.0)),
        );
        assert_figures(
            &report.per_category["loitering"],
            [1, 1, 1, 1, 0],
            [1.0, 1.0, 1.0],
            1.5,
            0.0,
            (Some(-10.0), Some(-10.0)),
        );
        assert_eq!(
            report.per_camera.keys().collect::<Vec<_>>(),
            ["cam-a", "cam-b"]
        );
        assert_figures(
            &report.per_camera["cam-a"],
            [1, 1, 1, 1, 0],
            [1.0, 1.0, 1.0],
            1.0,
            0.0,
            (Some(34.0), Some(34.0)),
        );
        // The grid label counts in no camera's slice; inc-2 and inc-3 rest first on cam-b.
        assert_figures(
            &report.per_camera["cam-b"],
            [0, 2, 0, 1, 1],
            [0.5, 1.0, 2.0 / 3.0],
            0.5,
            2.0,
            (None, None),
        );

        assert_eq!(
            report.matches,
            vec![
                Match {
                    label_line: 1,
                    target: "camera cam-a".into(),
                    category: "intrusion".into(),
                    incident: "inc-1".into(),
                    delay_s: 34.0,
                    other_incidents: vec![],
                },
                Match {
                    label_line: 2,
                    target: "grid g1".into(),
                    category: "loitering".into(),
                    incident: "inc-2".into(),
                    delay_s: -10.0,
                    other_incidents: vec![],
                },
            ]
        );
        assert!(report.misses.is_empty());
        assert_eq!(
            report.false_alarms,
            vec![FalseAlarm {
                incident: "inc-3".into(),
                grid: "g1".into(),
                camera: Some("cam-b".into()),
                category: "intrusion".into(),
                first_seen: t("00:05:00"),
                last_seen: t("00:06:00"),
            }]
        );
        assert_eq!(report.objects, None);
    }

    /// Several incidents on one label, one incident on several labels, a label on an
    /// incident's second camera, a miss, a category mismatch and a sub-second delay.
    #[test]
    fn many_to_many_misses_and_second_cameras() {
        let labels = vec![
            label(
                7,
                Target::Camera("cam-b".into()),
                "intrusion",
                "00:20:00",
                "00:21:00",
            ),
            label(
                3,
                Target::Camera("cam-a".into()),
                "intrusion",
                "00:01:00",
                "00:02:00",
            ),
            label(
                4,
                Target::Camera("cam-a".into()),
                "intrusion",
                "00:02:30",
                "00:03:00",
            ),
            label(
                5,
                Target::Camera("cam-a".into()),
                "loitering",
                "00:01:00",
                "00:02:00",
            ),
        ];
        let incidents = vec![
            // On line 3 and (via its second camera) line 4.
            incident(
                "inc-b",
                "intrusion",
                &["cam-c", "cam-a"],
                "00:01:50",
                "00:02:40",
                "00:01:55",
            ),
            // On line 3, opened first.
            incident(
                "inc-a",
                "intrusion",
                &["cam-a"],
                "00:00:59",
                "00:01:00",
                "00:01:00.250",
            ),
        ];
        let report = score(&incidents, &labels, &footage());
        assert_figures(
            &report.overall,
            [4, 2, 2, 2, 0],
            [1.0, 0.5, 2.0 / 3.0],
            1.5,
            0.0,
            (Some((0.25 - 35.0) / 2.0), Some(0.25)),
        );
        assert_eq!(
            report
                .matches
                .iter()
                .map(|m| (
                    m.label_line,
                    m.incident.as_str(),
                    m.delay_s,
                    m.other_incidents.clone()
                ))
                .collect::<Vec<_>>(),
            vec![
                (3, "inc-a", 0.25, vec!["inc-b".to_string()]),
                (4, "inc-b", -35.0, vec![]),
            ]
        );
        // Delays: line 3 0.25 s, line 4 −35 s: median −17.375, worst 0.25.
        assert_eq!(report.overall.delay_median_s, Some((0.25 - 35.0) / 2.0));
        assert_eq!(report.overall.delay_worst_s, Some(0.25));
        assert_eq!(
            report
                .misses
                .iter()
                .map(|m| (m.label_line, m.target.as_str(), m.category.as_str()))
                .collect::<Vec<_>>(),
            vec![
                (5, "camera cam-a", "loitering"),
                (7, "camera cam-b", "intrusion")
            ]
        );
        // cam-c has no footage and no labels: its incident is matched, its hours 0.
        assert_figures(
            &report.per_camera["cam-c"],
            [0, 1, 0, 1, 0],
            [1.0, 1.0, 1.0],
            0.0,
            0.0,
            (None, None),
        );
        assert_figures(
            &report.per_camera["cam-a"],
            [3, 1, 2, 1, 0],
            [1.0, 2.0 / 3.0, 0.8],
            1.0,
            0.0,
            (Some((0.25 - 35.0) / 2.0), Some(0.25)),
        );
    }

    #[test]
    fn conventions_with_nothing_to_score() {
        let empty = score(&[], &[], &[]);
        assert_figures(
            &empty.overall,
            [0, 0, 0, 0, 0],
            [1.0, 1.0, 1.0],
            0.0,
            0.0,
            (None, None),
        );
        assert!(empty.per_category.is_empty() && empty.per_camera.is_empty());

        // Labels, no incidents: precision 1, recall 0, F1 0.
        let labels = vec![label(
            1,
            Target::Camera("cam-a".into()),
            "intrusion",
            "00:01:00",
            "00:02:00",
        )];
        let report = score(&[], &labels, &footage());
        assert_figures(
            &report.overall,
            [1, 0, 0, 0, 0],
            [1.0, 0.0, 0.0],
            1.5,
            0.0,
            (None, None),
        );

        // Incidents, no labels, no footage: recall 1, false alarms per hour 0.
        let incidents = vec![incident(
            "i",
            "intrusion",
            &[],
            "00:01:00",
            "00:02:00",
            "00:01:00",
        )];
        let report = score(&incidents, &[], &[]);
        assert_figures(
            &report.overall,
            [0, 1, 0, 0, 1],
            [0.0, 1.0, 0.0],
            0.0,
            0.0,
            (None, None),
        );
        assert!(report.per_camera.is_empty());
        assert_eq!(report.false_alarms[0].camera, None);
    }
}
