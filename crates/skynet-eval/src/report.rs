//! `report.json` and `report.md`.

use std::fmt::Write as _;
use std::path::Path;

use crate::objects::ObjectReport;
use crate::score::{Figures, Report};

/// Writes `dir/report.json` (pretty) and `dir/report.md`, creating `dir`.
pub fn write(dir: &Path, report: &Report) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    json.push('\n');
    std::fs::write(dir.join("report.json"), json)?;
    std::fs::write(dir.join("report.md"), markdown(report))
}

/// The report as Markdown: the figures overall, per category and per camera, the matches,
/// misses and false alarms, and the object-level table when there is one.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    md.push_str("# Evaluation report\n\n");
    let o = &report.overall;
    let _ = writeln!(
        md,
        "{} labelled events, {} incidents, {} of footage.\n",
        o.labels,
        o.incidents,
        footage(o.footage_hours)
    );

    md.push_str("## Overall\n\n");
    figures_table(&mut md, "", [("all", o)]);

    md.push_str("\n## Per category\n\n");
    if report.per_category.is_empty() {
        md.push_str("(none)\n");
    } else {
        figures_table(
            &mut md,
            "Category",
            report.per_category.iter().map(|(k, f)| (k.as_str(), f)),
        );
    }

    md.push_str("\n## Per camera\n\n");
    if report.per_camera.is_empty() {
        md.push_str("(none)\n");
    } else {
        figures_table(
            &mut md,
            "Camera",
            report.per_camera.iter().map(|(k, f)| (k.as_str(), f)),
        );
        md.push_str(
            "\nA camera's slice: the labels on that camera (labels on a grid count only \
             overall and per category) and the incidents whose first camera it is.\n",
        );
    }

    let _ = writeln!(md, "\n## Matches ({})\n", report.matches.len());
    if report.matches.is_empty() {
        md.push_str("(none)\n");
    } else {
        md.push_str(
            "| Label line | Target | Category | Incident | Delay (s) | Also matched by |\n",
        );
        md.push_str("|---:|---|---|---|---:|---|\n");
        for m in &report.matches {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.1} | {} |",
                m.label_line,
                cell(&m.target),
                cell(&m.category),
                cell(&m.incident),
                m.delay_s,
                cell(&m.other_incidents.join(", "))
            );
        }
    }

    let _ = writeln!(md, "\n## Misses ({})\n", report.misses.len());
    if report.misses.is_empty() {
        md.push_str("(none)\n");
    } else {
        md.push_str("| Label line | Target | Category | Start | End |\n");
        md.push_str("|---:|---|---|---|---|\n");
        for m in &report.misses {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                m.label_line,
                cell(&m.target),
                cell(&m.category),
                time(&m.start),
                time(&m.end)
            );
        }
    }

    let _ = writeln!(md, "\n## False alarms ({})\n", report.false_alarms.len());
    if report.false_alarms.is_empty() {
        md.push_str("(none)\n");
    } else {
        md.push_str("| Incident | Grid | Camera | Category | First seen | Last seen |\n");
        md.push_str("|---|---|---|---|---|---|\n");
        for f in &report.false_alarms {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&f.incident),
                cell(&f.grid),
                cell(f.camera.as_deref().unwrap_or("–")),
                cell(&f.category),
                time(&f.first_seen),
                time(&f.last_seen)
            );
        }
    }

    if let Some(objects) = &report.objects {
        objects_section(&mut md, objects);
    }
    md
}

fn figures_table<'a>(
    md: &mut String,
    first: &str,
    rows: impl IntoIterator<Item = (&'a str, &'a Figures)>,
) {
    let _ = writeln!(
        md,
        "| {first} | Labels | Incidents | Matched labels | Matched incidents | False alarms | \
         Precision | Recall | F1 | Footage (h) | False alarms/h | Median delay (s) | \
         Worst delay (s) |"
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (name, f) in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {} | {:.2} | {} | {} |",
            cell(name),
            f.labels,
            f.incidents,
            f.matched_labels,
            f.matched_incidents,
            f.false_alarms,
            f.precision,
            f.recall,
            f.f1,
            hours(f.footage_hours),
            f.false_alarms_per_hour,
            delay(f.delay_median_s),
            delay(f.delay_worst_s)
        );
    }
}

fn objects_section(md: &mut String, objects: &ObjectReport) {
    let _ = writeln!(
        md,
        "\n## Objects (IoU {}; mAP {:.3})\n",
        objects.iou, objects.map
    );
    if objects.per_class.is_empty() {
        md.push_str("(no ground truth)\n");
    } else {
        md.push_str(
            "| Class | Ground truth | Detections | True positives | On ignored boxes | Precision | \
             Recall | AP |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for (class, c) in &objects.per_class {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
                cell(class),
                c.ground_truth,
                c.detections,
                c.true_positives,
                c.ignored,
                c.precision,
                c.recall,
                c.ap
            );
        }
    }
    if !objects.other_detections.is_empty() {
        let others: Vec<String> = objects
            .other_detections
            .iter()
            .map(|(label, n)| format!("{} {n}", cell(label)))
            .collect();
        let _ = writeln!(
            md,
            "\nDetections of classes without ground truth (not scored): {}.",
            others.join(", ")
        );
    }
}

/// Footage in words (the report and `skynet eval`'s line): hours from one hour up, else minutes and seconds (a short clip does not
/// read "0.00 hours").
pub fn footage(hours: f64) -> String {
    if !hours.is_finite() || hours <= 0.0 {
        return "0 s".to_string();
    }
    if hours >= 1.0 {
        return format!("{hours:.2} hours");
    }
    let seconds = hours * 3600.0;
    if seconds < 60.0 {
        return format!("{seconds:.1} s");
    }
    let whole = seconds.round() as u64;
    format!("{} min {} s", whole / 60, whole % 60)
}

/// Hours for a table cell: two decimals from one hour up, else three significant digits
/// (0.0125 for 45 s).
fn hours(value: f64) -> String {
    if !value.is_finite() || value <= 0.0 || value >= 1.0 {
        return format!("{value:.2}");
    }
    let decimals = (2 - value.log10().floor() as i64).clamp(2, 12) as usize;
    format!("{value:.decimals$}")
}

fn delay(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.1}"))
}

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Text safe in a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{ResolvedLabel, Target};
    use crate::objects::{DetectedBox, FrameDetections, GtBox, score_objects};
    use crate::score::{EvalIncident, Footage, score};
    use chrono::{DateTime, Utc};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(&format!("2026-01-01T{s}Z"))
            .unwrap()
            .with_timezone(&Utc)
    }

    fn sample() -> Report {
        let labels = vec![
            ResolvedLabel {
                line: 1,
                target: Target::Camera("cam-a".into()),
                category: "intrusion".into(),
                start: t("00:01:00"),
                end: t("00:02:00"),
            },
            ResolvedLabel {
                line: 2,
                target: Target::Grid("g1".into()),
                category: "loitering".into(),
                start: t("00:10:00"),
                end: t("00:11:00"),
            },
        ];
        let incident = |id: &str, first: &str, last: &str| EvalIncident {
            id: id.into(),
            grid: "g1".into(),
            category: "intrusion".into(),
            cameras: vec!["cam-a".into()],
            first_seen: t(first),
            last_seen: t(last),
            opened_at: t(first),
            level: "III".into(),
        };
        let incidents = vec![
            incident("inc-1", "00:01:30", "00:01:40"),
            incident("inc|2", "00:30:00", "00:31:00"),
        ];
        let footage = vec![Footage {
            camera: "cam-a".into(),
            grid: "g1".into(),
            first_frame: t("00:00:00"),
            last_frame: t("02:00:00"),
        }];
        let mut report = score(&incidents, &labels, &footage);
        let gt = vec![GtBox {
            frame: 1,
            id: 1,
            label: "person".into(),
            x: 0.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
            visibility: 1.0,
            line: 1,
            ignored: false,
        }];
        let detections = vec![FrameDetections {
            frame: 1,
            boxes: vec![DetectedBox {
                label: "person".into(),
                score: 0.9,
                x: 0.0,
                y: 0.0,
                w: 10.0,
                h: 10.0,
            }],
        }];
        report.objects = Some(score_objects(&gt, &detections));
        report
    }

    #[test]
    fn markdown_has_every_table_and_list() {
        let md = markdown(&sample());
        for expected in [
            "# Evaluation report",
            "2 labelled events, 2 incidents, 2.00 hours of footage.",
            "## Overall",
            "| all | 2 | 2 | 1 | 1 | 1 | 0.500 | 0.500 | 0.500 | 2.00 | 0.50 | 30.0 | 30.0 |",
            "## Per category",
            "| intrusion | 1 | 2 | 1 | 1 | 1 | 0.500 | 1.000 | 0.667 | 2.00 | 0.50 | 30.0 | 30.0 |",
            "| loitering | 1 | 0 | 0 | 0 | 0 | 1.000 | 0.000 | 0.000 | 2.00 | 0.00 | – | – |",
            "## Per camera",
            "| cam-a | 1 | 2 | 1 | 1 | 1 | 0.500 | 1.000 | 0.667 | 2.00 | 0.50 | 30.0 | 30.0 |",
            "## Matches (1)",
            "| 1 | camera cam-a | intrusion | inc-1 | 30.0 |  |",
            "## Misses (1)",
            "| 2 | grid g1 | loitering | 2026-01-01T00:10:00.000Z | 2026-01-01T00:11:00.000Z |",
            "## False alarms (1)",
            "| inc\\|2 | g1 | cam-a | intrusion | 2026-01-01T00:30:00.000Z | 2026-01-01T00:31:00.000Z |",
            "## Objects (IoU 0.5; mAP 1.000)",
            "| person | 1 | 1 | 1 | 0 | 1.000 | 1.000 | 1.000 |",
        ] {
            assert!(md.contains(expected), "missing {expected:?} in\n{md}");
        }
    }

    #[test]
    fn short_footage_keeps_its_precision() {
        assert_eq!(footage(2.0), "2.00 hours");
        assert_eq!(footage(1.0), "1.00 hours");
        assert_eq!(footage(0.5), "30 min 0 s");
        assert_eq!(footage(754.4 / 3600.0), "12 min 34 s");
        assert_eq!(footage(45.0 / 3600.0), "45.0 s");
        assert_eq!(footage(0.0), "0 s");
        assert_eq!(hours(2.0), "2.00");
        assert_eq!(hours(0.5), "0.500");
        assert_eq!(hours(45.0 / 3600.0), "0.0125");
        assert_eq!(hours(0.0), "0.00");
        let mut report = sample();
        report.overall.footage_hours = 45.0 / 3600.0;
        let md = markdown(&report);
        assert!(
            md.contains("2 labelled events, 2 incidents, 45.0 s of footage."),
            "{md}"
        );
        assert!(md.contains("| 0.500 | 0.0125 | 0.50 |"), "{md}");
    }

    #[test]
    fn markdown_of_an_empty_report() {
        let md = markdown(&Report::default());
        assert!(md.contains("## Matches (0)\n\n(none)"), "{md}");
        assert!(!md.contains("## Objects"), "{md}");
    }

    #[test]
    fn writes_json_and_markdown() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("eval");
        let report = sample();
        write(&out, &report).unwrap();
        let json = std::fs::read_to_string(out.join("report.json")).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        assert_eq!(
            std::fs::read_to_string(out.join("report.md")).unwrap(),
            markdown(&report)
        );
    }
}
