//! `report.json` and `report.md`. (Skeleton: filled in by the scoring work.)

use std::path::Path;

use crate::score::Report;

/// Writes `dir/report.json` and `dir/report.md`.
pub fn write(dir: &Path, report: &Report) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json)?;
    std::fs::write(dir.join("report.md"), markdown(report))
}

pub fn markdown(report: &Report) -> String {
    let _ = report;
    String::new()
}
