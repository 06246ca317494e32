//! Bad configs give errors that name the file, line and column, and what is wrong.

mod common;

use std::path::Path;

use skynet::PipelineConfig;

fn error_for(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    match PipelineConfig::load(&path) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e
            .to_string()
            .replace(&path.display().to_string(), "bad.toml"),
    }
}

fn valid() -> String {
    let dir = std::env::temp_dir();
    common::vtest_config(&dir, "cam", common::WALKWAY, 10)
}

#[test]
fn the_valid_base_config_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, valid()).unwrap();
    let config = PipelineConfig::load(&path).unwrap();
    assert_eq!(config.cameras.len(), 1);
    assert_eq!(config.cameras[0].grid.as_str(), "G-0102");
}

#[test]
fn missing_file() {
    let e = PipelineConfig::load(Path::new("/nonexistent/skynet.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/nonexistent/skynet.toml") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn wrong_type() {
    let text = valid().replace("workers = 2", "workers = \"two\"");
    let e = error_for(&text);
    assert!(e.starts_with("bad.toml:10:11: "), "{e}");
    assert!(e.contains("invalid type: string \"two\""), "{e}");
}

#[test]
fn unknown_key() {
    let text = valid().replace("workers = 2", "workers = 2\nthreshhold = 0.4");
    let e = error_for(&text);
    assert!(
        e.starts_with("bad.toml:11:1: unknown field `threshhold`"),
        "{e}"
    );
}

#[test]
fn invalid_polygon() {
    let text = valid().replace(
        common::WALKWAY,
        "[[0.2, 0.2], [0.8, 0.8], [0.8, 0.2], [0.2, 0.8]]",
    );
    let e = error_for(&text);
    assert!(
        e.contains("bad.toml:32:13: invalid polygon for zone `zone`: the polygon crosses itself"),
        "{e}"
    );
    let text = valid().replace(common::WALKWAY, "[[0.2, 0.2], [0.8, 0.8]]");
    assert!(error_for(&text).contains("needs at least 3 points, got 2"));
    let text = valid().replace(common::WALKWAY, "[[0.2, 0.2], [0.8, 0.8], [640, 0.2]]");
    assert!(error_for(&text).contains("point 2 (640, 0.2) is outside the frame"));
}

#[test]
fn unknown_model() {
    let text = valid().replace(&common::manifest_path().display().to_string(), "yolov99");
    let e = error_for(&text);
    assert!(
        e.starts_with("bad.toml:9:9: unknown model `yolov99`: no manifest yolov99.toml in"),
        "{e}"
    );
    let text = valid().replace(
        &common::manifest_path().display().to_string(),
        "/nowhere/model.toml",
    );
    assert!(error_for(&text).contains("manifest /nowhere/model.toml does not exist"));
}

#[test]
fn references_and_placement_are_checked() {
    let e = error_for(&valid().replace("zone = \"zone\"", "zone = \"zoen\""));
    assert!(
        e.contains("unknown zone `zoen`; camera `cam` has: zone"),
        "{e}"
    );
    let e = error_for(&valid().replace("grid = \"G-0102\"", "grid = \"G-9999\""));
    assert!(
        e.contains("unknown grid `G-9999`; the grid file has: G-0101, G-0102, G-0201"),
        "{e}"
    );
    let e = error_for(&valid().replace("grid = \"G-0102\"", "location = [0.0, 0.0]"));
    assert!(
        e.contains("location [0, 0] is outside every grid cell"),
        "{e}"
    );
    let e = error_for(&valid().replace("labels = [\"person\"]", "labels = [\"face\"]"));
    assert!(
        e.contains("label `face` is not one model `yolox_nano` detects"),
        "{e}"
    );
    let e = error_for(&valid().replace("owner = \"city_management\"", "owner = \"army\""));
    assert!(e.contains("unknown variant `army`"), "{e}");
}

#[test]
fn rule_settings_are_checked() {
    let e = error_for(&valid().replace("min_frames = 3", "min_frames = 3\nmin_score = 5"));
    assert!(
        e.contains("`min_score` must be between 0 and 1, got 5"),
        "{e}"
    );
    let e = error_for(&valid().replace("cooldown_s = 2.0", "cooldown_s = -1.0"));
    assert!(
        e.contains("`cooldown_s` must be zero or a positive number of seconds"),
        "{e}"
    );
    let twice = format!(
        "{}\n  [[cameras.rules]]\n  name = \"zone-rule\"\n  kind = \"zone_intrusion\"\n  zone = \"zone\"\n",
        valid()
    );
    let e = error_for(&twice);
    assert!(
        e.contains("rule `zone-rule` is defined twice on camera `cam`"),
        "{e}"
    );
}
