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
        "{} labelled events, {} incidents, {:.2} hours of footage.\n",
        o.labels, o.incidents, o.footage_hours
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
            "| {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {} | {} |",
            cell(name),
            f.labels,
            f.incidents,
            f.matched_labels,
            f.matched_incidents,
            f.false_alarms,
            f.precision,
            f.recall,
            f.f1,
            f.footage_hours,
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
            "| Class | Ground truth | Detections | True positives | Precision | Recall | AP |\n",
        );
        md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
        for (class, c) in &objects.per_class {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:.3} | {:.3} | {:.3} |",
                cell(class),
                c.ground_truth,
                c.detections,
                c.true_positives,
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
