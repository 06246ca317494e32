//! Object-level labels in MOTChallenge `gt.txt` form, scored against the detections.
//!
//! `gt.txt`: one box per line, `frame,id,bb_left,bb_top,bb_width,bb_height,conf,class,visibility`
//! (comma separated; the frame 1-based; the box in pixels; `visibility` may be left off).
//! Blank lines and lines starting with `#` are skipped. Errors name the file and the line.
//!
//! `class` is a 1-based index into the *model's* label list: 1 is its first label, `person`
//! for the COCO models, 3 is `car`, and so on. MOTChallenge's own class numbers agree only for
//! 1 (pedestrian); its others (2 person on vehicle, 3 car, 4 bicycle, 7 static person, ...)
//! do not follow COCO, so a file using them must be mapped to the model's numbers first. A
//! class outside the model's labels is an error naming the file and the line.
//!
//! A row with `conf` 0 is a region to ignore (MOTChallenge's static persons, distractors,
//! reflections...): it is kept as an *ignored* box ([`GtBox::ignored`]), whatever its class
//! (which must still be a whole number, but is not looked up, and the box ignores detections
//! of every class). It is not ground truth to find; see below for the detections on it.
//!
//! Scoring, per class that has ground truth, at IoU ≥ 0.5:
//! - detections of the class, over all frames, are taken by descending score (ties: frame,
//!   then the order within the frame); each takes the unmatched ground-truth box of its class
//!   and frame with the highest IoU, if that IoU is at least 0.5 (a true positive), else it is
//!   a false positive;
//! - except: a detection whose best match at IoU ≥ 0.5 is an ignored box of its frame (that
//!   box's IoU higher than any unmatched real box of its class; a tie goes to the real box) is
//!   neither: it is left out of the ranking and counted in `ignored` only. Ignored boxes are
//!   never used up; any number of detections may fall on one;
//! - precision = true positives / detections (1 when there are none), recall = true positives
//!   / ground-truth boxes, both over all detections (no score cut; ignored ones not counted);
//! - AP: all-point interpolated (VOC 2010 and later): the area under the precision–recall
//!   curve with precision made monotone (each point takes the best precision at any higher
//!   recall);
//! - detections of labels without ground truth are not scored; they are counted in
//!   `other_detections`. `map` is the mean AP over the scored classes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The IoU at which a detection matches a ground-truth box.
pub const IOU_THRESHOLD: f64 = 0.5;

/// Per-class figures on the detections at IoU 0.5.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ObjectReport {
    pub iou: f64,
    pub per_class: BTreeMap<String, ClassFigures>,
    /// Mean AP over `per_class` (0 when empty).
    #[serde(default)]
    pub map: f64,
    /// Detections of labels that have no ground truth (not scored), by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other_detections: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassFigures {
    pub ground_truth: usize,
    pub detections: usize,
    /// Detections that matched a ground-truth box.
    #[serde(default)]
    pub true_positives: usize,
    /// Detections on an ignored box (`conf` 0): neither true nor false positives, and not in
    /// `detections`.
    #[serde(default)]
    pub ignored: usize,
    pub precision: f64,
    pub recall: f64,
    pub ap: f64,
}

/// One ground-truth box of `gt.txt`, or a region to ignore (`conf` 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GtBox {
    /// 1-based frame number.
    pub frame: u64,
    /// The track id.
    pub id: i64,
    /// The model's label for `class`; empty for an ignored box (which applies to every
    /// class).
    pub label: String,
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
    /// 1 when the column is left off.
    pub visibility: f32,
    /// Its line in the file (1-based).
    pub line: usize,
    /// A `conf` 0 row: a region whose detections are neither true nor false positives.
    #[serde(default)]
    pub ignored: bool,
}

/// A frame's detections; `frame` is 1-based, as in `gt.txt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameDetections {
    pub frame: u64,
    pub boxes: Vec<DetectedBox>,
}

/// One detection, in pixels (`x`, `y` the top-left corner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectedBox {
    pub label: String,
    pub score: f32,
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

/// A `gt.txt` file or line that cannot be taken (see [`crate::InputError`]).
pub type ObjectError = crate::InputError;

/// Reads a MOTChallenge `gt.txt`; `labels` is the model's label list (class 1 is `labels[0]`).
pub fn parse_gt(path: &Path, labels: &[String]) -> Result<Vec<GtBox>, ObjectError> {
    let text = std::fs::read_to_string(path).map_err(|source| ObjectError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_gt_str(path, &text, labels)
}

/// Parses `gt.txt` text; errors name `path` and the line.
pub fn parse_gt_str(path: &Path, text: &str, labels: &[String]) -> Result<Vec<GtBox>, ObjectError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut boxes = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let parsed = parse_gt_line(trimmed, line, labels).map_err(|reason| ObjectError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        })?;
        boxes.push(parsed);
    }
    Ok(boxes)
}

fn parse_gt_line(text: &str, line: usize, labels: &[String]) -> Result<GtBox, String> {
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    if !(8..=9).contains(&fields.len()) {
        return Err(format!(
            "expected 9 comma-separated fields \
             (frame,id,bb_left,bb_top,bb_width,bb_height,conf,class,visibility), found {}",
            fields.len()
        ));
    }
    let number = |index: usize, name: &str| -> Result<f64, String> {
        let value: f64 = fields[index]
            .parse()
            .map_err(|_| format!("`{name}` is not a number ({:?})", fields[index]))?;
        if value.is_finite() {
            Ok(value)
        } else {
            Err(format!("`{name}` is not a finite number"))
        }
    };
    let integer = |index: usize, name: &str| -> Result<i64, String> {
        let value = number(index, name)?;
        if value.fract() != 0.0 || value.abs() > 9.0e15 {
            return Err(format!(
                "`{name}` is not a whole number ({})",
                fields[index]
            ));
        }
        Ok(value as i64)
    };
    let frame = integer(0, "frame")?;
    if frame < 1 {
        return Err(format!("`frame` is {frame}: frames count from 1"));
    }
    let id = integer(1, "id")?;
    let x = number(2, "bb_left")?;
    let y = number(3, "bb_top")?;
    let w = number(4, "bb_width")?;
    let h = number(5, "bb_height")?;
    if w < 0.0 || h < 0.0 {
        return Err(format!("negative box size ({w} x {h})"));
    }
    let conf = number(6, "conf")?;
    let visibility = if fields.len() == 9 {
        number(8, "visibility")?
    } else {
        1.0
    };
    let class = integer(7, "class")?;
    if conf == 0.0 {
        return Ok(GtBox {
            frame: frame as u64,
            id,
            label: String::new(),
            x: x as f32,
            y: y as f32,
            w: w as f32,
            h: h as f32,
            visibility: visibility as f32,
            line,
            ignored: true,
        });
    }
    let label = usize::try_from(class)
        .ok()
        .and_then(|c| c.checked_sub(1))
        .and_then(|i| labels.get(i))
        .ok_or_else(|| {
            format!(
                "class {class} is not in the model's labels (1 to {}, 1 = {})",
                labels.len(),
                labels.first().map_or("none", String::as_str)
            )
        })?;
    Ok(GtBox {
        frame: frame as u64,
        id,
        label: label.clone(),
        x: x as f32,
        y: y as f32,
        w: w as f32,
        h: h as f32,
        visibility: visibility as f32,
        line,
        ignored: false,
    })
}

/// Intersection over union of two boxes given as (left, top, width, height).
pub fn iou(a: (f32, f32, f32, f32), b: (f32, f32, f32, f32)) -> f64 {
    let (ax, ay, aw, ah) = (a.0 as f64, a.1 as f64, a.2 as f64, a.3 as f64);
    let (bx, by, bw, bh) = (b.0 as f64, b.1 as f64, b.2 as f64, b.3 as f64);
    let iw = ((ax + aw).min(bx + bw) - ax.max(bx)).max(0.0);
    let ih = ((ay + ah).min(by + bh) - ay.max(by)).max(0.0);
    let inter = iw * ih;
    let union = aw.max(0.0) * ah.max(0.0) + bw.max(0.0) * bh.max(0.0) - inter;
    if union > 0.0 { inter / union } else { 0.0 }
}

/// Scores one clip's detections against its ground truth.
pub fn score_objects(gt: &[GtBox], detections: &[FrameDetections]) -> ObjectReport {
    score_object_sets(&[(gt, detections)])
}

/// Scores several clips together (e.g. one per camera): frames are matched within a clip,
/// and the detections of all clips are ranked together for AP.
pub fn score_object_sets(sets: &[(&[GtBox], &[FrameDetections])]) -> ObjectReport {
    // Ground truth by (clip, frame, label); `true` once matched.
    type Key<'a> = (usize, u64, &'a str);
    let mut gt_by: HashMap<Key<'_>, Vec<(&GtBox, bool)>> = HashMap::new();
    // Ignored boxes by (clip, frame), for every class.
    let mut ignored_by: HashMap<(usize, u64), Vec<&GtBox>> = HashMap::new();
    let mut gt_count: BTreeMap<&str, usize> = BTreeMap::new();
    for (clip, (gt, _)) in sets.iter().enumerate() {
        for g in gt.iter() {
            if g.ignored {
                ignored_by.entry((clip, g.frame)).or_default().push(g);
                continue;
            }
            gt_by
                .entry((clip, g.frame, g.label.as_str()))
                .or_default()
                .push((g, false));
            *gt_count.entry(g.label.as_str()).or_default() += 1;
        }
    }
    // Detections by label, as (score, clip, frame, order within the frame, box).
    type Ranked<'a> = (f32, usize, u64, usize, &'a DetectedBox);
    let mut dets_by: BTreeMap<&str, Vec<Ranked<'_>>> = BTreeMap::new();
    let mut other_detections: BTreeMap<String, usize> = BTreeMap::new();
    for (clip, (_, dets)) in sets.iter().enumerate() {
        for fd in dets.iter() {
            for (order, d) in fd.boxes.iter().enumerate() {
                if gt_count.contains_key(d.label.as_str()) {
                    dets_by
                        .entry(d.label.as_str())
                        .or_default()
                        .push((d.score, clip, fd.frame, order, d));
                } else {
                    *other_detections.entry(d.label.clone()).or_default() += 1;
                }
            }
        }
    }

    let mut per_class = BTreeMap::new();
    for (&label, &ground_truth) in &gt_count {
        let mut dets = dets_by.remove(label).unwrap_or_default();
        dets.sort_by(|a, b| {
            b.0.total_cmp(&a.0)
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
                .then(a.3.cmp(&b.3))
        });
        let mut hits = Vec::with_capacity(dets.len());
        let mut ignored = 0usize;
        for &(_, clip, frame, _, d) in &dets {
            let d_box = (d.x, d.y, d.w, d.h);
            let best_ignored = ignored_by
                .get(&(clip, frame))
                .into_iter()
                .flatten()
                .map(|g| iou(d_box, (g.x, g.y, g.w, g.h)))
                .filter(|overlap| *overlap >= IOU_THRESHOLD)
                .max_by(f64::total_cmp);
            let mut best: Option<(usize, f64)> = None;
            if let Some(candidates) = gt_by.get(&(clip, frame, label)) {
                for (i, (g, taken)) in candidates.iter().enumerate() {
                    if *taken {
                        continue;
                    }
                    let overlap = iou(d_box, (g.x, g.y, g.w, g.h));
                    if overlap >= IOU_THRESHOLD && best.is_none_or(|(_, b)| overlap > b) {
                        best = Some((i, overlap));
                    }
                }
            }
            // The ignored box is its best match: out of the ranking (a tie goes to the real
            // box).
            if let Some(on_ignored) = best_ignored
                && best.is_none_or(|(_, b)| on_ignored > b)
            {
                ignored += 1;
                continue;
            }
            if let Some((i, _)) = best {
                if let Some(candidates) = gt_by.get_mut(&(clip, frame, label)) {
                    candidates[i].1 = true;
                }
                hits.push(true);
            } else {
                hits.push(false);
            }
        }
        let true_positives = hits.iter().filter(|h| **h).count();
        let detections = hits.len();
        per_class.insert(
            label.to_string(),
            ClassFigures {
                ground_truth,
                detections,
                true_positives,
                ignored,
                precision: if detections == 0 {
                    1.0
                } else {
                    true_positives as f64 / detections as f64
                },
                recall: true_positives as f64 / ground_truth as f64,
                ap: average_precision(&hits, ground_truth),
            },
        );
    }
    let map = if per_class.is_empty() {
        0.0
    } else {
        per_class.values().map(|c: &ClassFigures| c.ap).sum::<f64>() / per_class.len() as f64
    };
    ObjectReport {
        iou: IOU_THRESHOLD,
        per_class,
        map,
        other_detections,
    }
}

/// All-point interpolated AP of ranked hits (`true` = true positive) against `ground_truth`
/// boxes.
pub fn average_precision(hits: &[bool], ground_truth: usize) -> f64 {
    if ground_truth == 0 || hits.is_empty() {
        return 0.0;
    }
    let mut recall = Vec::with_capacity(hits.len());
    let mut precision = Vec::with_capacity(hits.len());
    let mut tp = 0usize;
    for (rank, hit) in hits.iter().enumerate() {
        if *hit {
            tp += 1;
        }
        recall.push(tp as f64 / ground_truth as f64);
        precision.push(tp as f64 / (rank + 1) as f64);
    }
    // Monotone envelope: each precision is the best at any rank from there on.
    for i in (0..precision.len().saturating_sub(1)).rev() {
        precision[i] = precision[i].max(precision[i + 1]);
    }
    let mut ap = 0.0;
    let mut previous_recall = 0.0;
    for (r, p) in recall.iter().zip(&precision) {
        ap += (r - previous_recall) * p;
        previous_recall = *r;
    }
    ap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["person", "bicycle", "car"].map(String::from).to_vec()
    }

    fn path() -> &'static Path {
        Path::new("gt.txt")
    }

    fn det(label: &str, score: f32, x: f32, y: f32, w: f32, h: f32) -> DetectedBox {
        DetectedBox {
            label: label.into(),
            score,
            x,
            y,
            w,
            h,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    const GT: &str = "\
1,1,0,0,10,10,1,1,1
1,2,100,100,10,10,1,1,0.5

# a comment
2,1,0,0,10,10,1,1,1.0
2,3,50,50,20,20,1,3,1
2,4,200,200,10,10,0,99,1
3,1,0,0,10,10,1,1
";

    #[test]
    fn parses_gt_rows_and_keeps_ignored_ones() {
        let gt = parse_gt_str(path(), GT, &labels()).unwrap();
        let rows: Vec<_> = gt
            .iter()
            .map(|g| {
                (
                    g.line,
                    g.frame,
                    g.id,
                    g.label.as_str(),
                    g.x,
                    g.w,
                    g.visibility,
                    g.ignored,
                )
            })
            .collect();
        // Line 7 (`conf` 0) is an ignored box; its class (99) is not looked up.
        assert_eq!(
            rows,
            vec![
                (1, 1, 1, "person", 0.0, 10.0, 1.0, false),
                (2, 1, 2, "person", 100.0, 10.0, 0.5, false),
                (5, 2, 1, "person", 0.0, 10.0, 1.0, false),
                (6, 2, 3, "car", 50.0, 20.0, 1.0, false),
                (7, 2, 4, "", 200.0, 10.0, 1.0, true),
                (8, 3, 1, "person", 0.0, 10.0, 1.0, false),
            ]
        );
    }

    #[test]
    fn malformed_gt_lines_name_file_and_line() {
        let cases = [
            ("1,1,0,0,10,10,1", "expected 9 comma-separated fields"),
            ("1,1,0,0,10,10,1,1,1,1", "found 10"),
            ("0,1,0,0,10,10,1,1,1", "`frame` is 0"),
            ("1.5,1,0,0,10,10,1,1,1", "`frame` is not a whole number"),
            ("1,1,x,0,10,10,1,1,1", "`bb_left` is not a number"),
            ("1,1,0,0,-10,10,1,1,1", "negative box size"),
            (
                "1,1,0,0,10,10,1,0,1",
                "class 0 is not in the model's labels (1 to 3, 1 = person)",
            ),
            (
                "1,1,0,0,10,10,1,4,1",
                "class 4 is not in the model's labels",
            ),
            ("1,1,0,0,10,inf,1,1,1", "`bb_height` is not a finite number"),
            ("1,1,0,0,10,10,0,x,1", "`class` is not a number"),
        ];
        for (bad, expected) in cases {
            let text = format!("1,1,0,0,10,10,1,1,1\n{bad}\n");
            let err = parse_gt_str(path(), &text, &labels()).unwrap_err();
            let message = err.to_string();
            assert!(message.starts_with("gt.txt:2: "), "{bad}: {message}");
            assert!(
                message.contains(expected),
                "{bad}: {message} lacks {expected}"
            );
        }
        let err = parse_gt(Path::new("/nonexistent/gt.txt"), &labels()).unwrap_err();
        assert!(matches!(err, ObjectError::Read { .. }), "{err}");
    }

    #[test]
    fn iou_of_boxes() {
        assert!(close(
            iou((0.0, 0.0, 10.0, 10.0), (0.0, 0.0, 10.0, 10.0)),
            1.0
        ));
        assert!(close(
            iou((0.0, 0.0, 10.0, 10.0), (1.0, 0.0, 10.0, 10.0)),
            90.0 / 110.0
        ));
        assert!(close(
            iou((0.0, 0.0, 10.0, 10.0), (0.0, 5.0, 10.0, 10.0)),
            50.0 / 150.0
        ));
        assert!(close(
            iou((0.0, 0.0, 10.0, 10.0), (10.0, 0.0, 10.0, 10.0)),
            0.0
        ));
        assert!(close(iou((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)), 0.0));
    }

    #[test]
    fn all_point_ap_by_hand() {
        // Ranked T F T T F over 4 boxes: precision 1, .5, .667, .75, .6 at recall .25, .25,
        // .5, .75, .75; the envelope gives .25·1 + .25·.75 + .25·.75 = 0.625.
        assert!(close(
            average_precision(&[true, false, true, true, false], 4),
            0.625
        ));
        assert!(close(average_precision(&[true, true], 2), 1.0));
        assert!(close(average_precision(&[false, true], 1), 0.5));
        assert!(close(average_precision(&[], 3), 0.0));
        assert!(close(average_precision(&[true], 0), 0.0));
    }

    #[test]
    fn scores_per_class_with_greedy_matching() {
        let gt = parse_gt_str(path(), GT, &labels()).unwrap();
        let detections = vec![
            FrameDetections {
                frame: 1,
                boxes: vec![
                    det("person", 0.9, 0.0, 0.0, 10.0, 10.0),     // TP (gt 1)
                    det("person", 0.8, 1.0, 0.0, 10.0, 10.0),     // FP: gt 1 taken
                    det("person", 0.3, 100.0, 100.0, 10.0, 10.0), // TP (gt 2)
                ],
            },
            FrameDetections {
                frame: 2,
                boxes: vec![
                    det("person", 0.7, 50.0, 0.0, 10.0, 10.0), // FP: no overlap
                    det("person", 0.6, 0.0, 5.0, 10.0, 10.0),  // FP: IoU 1/3
                    det("car", 0.5, 50.0, 50.0, 20.0, 20.0),   // TP
                    det("bicycle", 0.4, 0.0, 0.0, 5.0, 5.0),   // no ground truth
                    det("person", 0.95, 200.0, 200.0, 10.0, 10.0), // on the ignored row
                ],
            },
        ];
        let report = score_objects(&gt, &detections);
        assert_eq!(report.iou, 0.5);
        assert_eq!(
            report.per_class.keys().collect::<Vec<_>>(),
            ["car", "person"]
        );
        // person, ranked (the .95 on the ignored row left out): .9 T, .8 F, .7 F, .6 F, .3 T
        // over 4 boxes (frame 3's unseen): precision at the hits 1/1 and 2/5 at recall 1/4
        // and 2/4: AP = 1/4·1 + 1/4·2/5.
        let person = &report.per_class["person"];
        assert_eq!(
            (
                person.ground_truth,
                person.detections,
                person.true_positives,
                person.ignored
            ),
            (4, 5, 2, 1)
        );
        assert!(close(person.precision, 2.0 / 5.0));
        assert!(close(person.recall, 0.5));
        assert!(close(person.ap, 0.25 + 0.25 * 0.4));
        let car = &report.per_class["car"];
        assert_eq!(
            (car.ground_truth, car.detections, car.true_positives),
            (1, 1, 1)
        );
        assert!(close(car.precision, 1.0) && close(car.recall, 1.0) && close(car.ap, 1.0));
        assert!(close(report.map, (0.35 + 1.0) / 2.0));
        assert_eq!(
            report.other_detections,
            BTreeMap::from([("bicycle".to_string(), 1)])
        );

        // No detections: precision 1 by convention, recall and AP 0.
        let empty = score_objects(&gt, &[]);
        let person = &empty.per_class["person"];
        assert_eq!(
            (person.precision, person.recall, person.ap),
            (1.0, 0.0, 0.0)
        );
    }

    #[test]
    fn detections_on_ignored_boxes_are_left_out_of_the_ranking() {
        // Frame 1: person A and an ignored region (class 7, outside the model's labels) beside
        // it. Frame 2: person B. Frame 3: person C and an ignored region on the same spot.
        // Frame 4: person D and an ignored region shifted by 1 px.
        let text = "\
1,1,0,0,10,10,1,1,1
1,9,20,0,10,10,0,7,1
2,2,0,0,10,10,1,1,1
3,3,0,0,10,10,1,1,1
3,9,0,0,10,10,0,8,1
4,4,0,0,10,10,1,1,1
4,9,1,0,10,10,0,12,1
";
        let gt = parse_gt_str(path(), text, &labels()).unwrap();
        let frame = |frame: u64, boxes: Vec<DetectedBox>| FrameDetections { frame, boxes };
        let detections = vec![
            frame(
                1,
                vec![
                    det("person", 0.9, 20.0, 0.0, 10.0, 10.0), // ignored
                    det("person", 0.8, 20.0, 0.0, 10.0, 10.0), // ignored again: not used up
                    det("person", 0.6, 0.0, 0.0, 10.0, 10.0),  // TP (A)
                    det("person", 0.5, 0.0, 0.0, 10.0, 10.0),  // FP: A taken
                ],
            ),
            frame(2, vec![det("person", 0.4, 0.0, 0.0, 10.0, 10.0)]), // TP (B)
            frame(
                3,
                vec![
                    det("person", 0.3, 0.0, 0.0, 10.0, 10.0), // TP (C): a tie goes to C
                    det("person", 0.2, 0.0, 0.0, 10.0, 10.0), // ignored: C taken
                ],
            ),
            // IoU 1 with the ignored region, 90/110 with D: ignored, D left unmatched.
            frame(4, vec![det("person", 0.1, 1.0, 0.0, 10.0, 10.0)]),
        ];
        let report = score_objects(&gt, &detections);
        let person = &report.per_class["person"];
        assert_eq!(
            (
                person.ground_truth,
                person.detections,
                person.true_positives,
                person.ignored
            ),
            (4, 4, 3, 4)
        );
        // Ranked: .6 T, .5 F, .4 T, .3 T over 4 boxes: precision 1, 1/2, 2/3, 3/4 at recall
        // 1/4, 1/4, 2/4, 3/4; the envelope gives 1/4·1 + 1/4·3/4 + 1/4·3/4 = 0.625.
        assert!(close(person.precision, 0.75));
        assert!(close(person.recall, 0.75));
        assert!(close(person.ap, 0.625));
        assert!(report.other_detections.is_empty());
    }

    #[test]
    fn clips_scored_together_match_only_within_a_clip() {
        let gt = parse_gt_str(path(), "1,1,0,0,10,10,1,1,1\n", &labels()).unwrap();
        let hit = vec![FrameDetections {
            frame: 1,
            boxes: vec![det("person", 0.5, 0.0, 0.0, 10.0, 10.0)],
        }];
        let none: Vec<GtBox> = Vec::new();
        // Clip 2 has no ground truth: its detection on frame 1 is a false positive ranked
        // above clip 1's hit.
        let miss = vec![FrameDetections {
            frame: 1,
            boxes: vec![det("person", 0.9, 0.0, 0.0, 10.0, 10.0)],
        }];
        let report = score_object_sets(&[(&gt, &hit), (&none, &miss)]);
        let person = &report.per_class["person"];
        assert_eq!(
            (
                person.ground_truth,
                person.detections,
                person.true_positives
            ),
            (1, 2, 1)
        );
        assert!(close(person.ap, 0.5));
    }
}
