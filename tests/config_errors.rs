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
        e.contains("bad.toml:35:13: invalid polygon for zone `zone`: the polygon crosses itself"),
        "{e}"
    );
    let text = valid().replace(common::WALKWAY, "[[0.2, 0.2], [0.8, 0.8]]");
    assert!(error_for(&text).contains("needs at least 3 points, got 2"));
    let text = valid().replace(common::WALKWAY, "[[0.2, 0.2], [0.8, 0.8], [640, 0.2]]");
    assert!(error_for(&text).contains("point 2 (640, 0.2) is outside the frame"));
}

#[test]
fn privacy_masks_and_evidence_settings_are_checked_where_written() {
    let with_masks = |masks: &str| {
        valid().replace(
            "max_frames = ",
            &format!("privacy_masks = {masks}\nmax_frames = "),
        )
    };
    let ok = with_masks("[[[0.0, 0.0], [0.3, 0.0], [0.3, 0.3]]]");
    let dir = tempfile::tempdir().unwrap();
    let config = common::pipeline_config(dir.path(), &ok);
    assert_eq!(
        config.cameras[0].privacy_masks,
        vec![vec![[0.0, 0.0], [0.3, 0.0], [0.3, 0.3]]]
    );
    // The same checks, and words, as motion masks.
    let text = with_masks("[[[0.0, 0.0], [0.3, 0.0], [0.3, 0.3]], [[0.1, 0.1], [0.2, 0.2]]]");
    let e = error_for(&text);
    let line = line_of(&text, "privacy_masks");
    assert!(
        e.starts_with(&format!(
            "bad.toml:{line}:17: privacy mask 2: a polygon needs at least 3 points, got 2"
        )),
        "{e}"
    );
    let e = error_for(&with_masks("[[[0.0, 0.0], [1.5, 0.0], [0.3, 0.3]]]"));
    assert!(
        e.contains("privacy mask 1: point 1 (1.5, 0) is outside the frame"),
        "{e}"
    );

    let evidence =
        |setting: &str| valid().replace("[evidence]\n", &format!("[evidence]\n{setting}\n"));
    let text = evidence("jpeg_quality = 0");
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!(
            "bad.toml:{}:16: `jpeg_quality` must be between 1 and 100",
            line_of(&text, "jpeg_quality")
        )),
        "{e}"
    );
    let text = evidence("url_base = \"evidence\"");
    assert!(error_for(&text).contains("`url_base` must be an absolute URL"));
    let text = evidence("keep_days = 3");
    assert!(error_for(&text).contains("unknown field `keep_days`"));
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

#[test]
fn ids_are_restricted_to_a_safe_alphabet() {
    let e = error_for(&valid().replace("id = \"cam\"", "id = \"cam/../x\""));
    assert!(e.contains("camera id `cam/../x` has `/`"), "{e}");
    let e = error_for(&valid().replace("name = \"test-node\"", "name = \"node 1\""));
    assert!(e.starts_with("bad.toml:3:8: node id"), "{e}");
    let e = error_for(&valid().replace("name = \"zone-rule\"", "name = \"zone{rule}\""));
    assert!(e.contains("rule id"), "{e}");
    let e = error_for(&valid().replace("kind = \"jsonl\"", "kind = \"jsonl\"\nname = \"a b\""));
    assert!(e.contains("sink id"), "{e}");
}

#[test]
fn a_huge_retention_is_refused_not_a_crash() {
    for days in ["1e8", "1e300", "inf", "nan", "-1", "0"] {
        let e = error_for(&valid().replace("[outbox]", &format!("[outbox]\nretain_days = {days}")));
        assert!(e.contains("`retain_days` must be between"), "{days}: {e}");
    }
}

#[test]
fn component_errors_point_at_their_key() {
    let e = error_for(&valid().replace("kind = \"jsonl\"", "kind = \"kafka\""));
    assert!(
        e.contains("unknown sink kind `kafka`; known kinds: jsonl, stdout"),
        "{e}"
    );
    let text = valid();
    let line = text
        .lines()
        .position(|l| l.contains("path = ") && l.contains("incidents.jsonl"))
        .unwrap()
        + 1;
    let e = error_for(&text.replace("path = \"", "pth = \""));
    assert!(e.contains("unknown field `pth`"), "{e}");
    let e = error_for(&text.replace("max_frames = 10", "max_frames = \"ten\""));
    assert!(e.contains("invalid type: string \"ten\""), "{e}");
    let frames_line = text
        .lines()
        .position(|l| l.starts_with("max_frames"))
        .unwrap()
        + 1;
    assert!(
        e.starts_with(&format!("bad.toml:{frames_line}:14: ")),
        "{e}"
    );
    let _ = line;
}

mod ranges {
    use super::*;
    use proptest::prelude::*;

    fn accepted(text: &str) -> Result<(), String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        PipelineConfig::load(&path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn number() -> impl Strategy<Value = f64> {
        prop_oneof![
            -1e12..1e12f64,
            -10.0..200.0f64,
            Just(0.0),
            Just(1e300),
            Just(-1e300),
            Just(f64::MAX),
            Just(f64::MIN_POSITIVE),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any number in any of these settings is either accepted, when in range, or refused
        /// with a located error; never a panic or an overflow.
        #[test]
        fn every_number_is_range_checked_without_overflow(
            half_life in number(), close_after in number(), update_every in number(),
            retain in number(), threshold in number(), cooldown in number(), weight in number(),
            workers in -5i64..100, queue in -5i64..20_000,
        ) {
            let text = valid()
                .replace("half_life_s = 60", &format!("half_life_s = {half_life:?}"))
                .replace("close_after_s = 120", &format!("close_after_s = {close_after:?}\nupdate_every_s = {update_every:?}"))
                .replace("[outbox]", &format!("[outbox]\nretain_days = {retain:?}"))
                .replace("workers = 2", &format!("workers = {workers}\nthreshold = {threshold:?}\nqueue = {queue}"))
                .replace("cooldown_s = 2.0", &format!("cooldown_s = {cooldown:?}\nweight = {weight:?}"));
            let seconds = |s: f64| (0.001..=skynet_core::config::MAX_SECONDS).contains(&s);
            let in_range = seconds(half_life) && seconds(close_after) && seconds(update_every)
                && (1.0 / 24.0..=36_525.0).contains(&retain)
                && (0.0..=1.0).contains(&threshold)
                && (0.0..=86_400.0).contains(&cooldown)
                && weight as f32 > 0.0 && weight as f32 <= 1.0
                && (1..=64).contains(&workers)
                && (1..=10_000).contains(&queue);
            let result = accepted(&text);
            if in_range {
                prop_assert!(result.is_ok(), "{result:?}");
            } else {
                let e = result.err().unwrap_or_default();
                prop_assert!(e.contains(".toml:"), "refused without a location: {e}");
            }
        }
    }
}

/// configs/city.toml, with its relative paths made absolute so it loads from anywhere.
fn city() -> String {
    let repo = common::repo();
    std::fs::read_to_string(repo.join("configs/city.toml"))
        .unwrap()
        .replace(
            "\"city-grids.geojson\"",
            &format!("\"{}/configs/city-grids.geojson\"", repo.display()),
        )
        .replace("\"../models/", &format!("\"{}/models/", repo.display()))
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[test]
fn sensor_tables_are_checked_where_they_are_written() {
    let text = city().replace("kind = \"gas_co\"", "kind = \"gas_xx\"");
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!("bad.toml:{}:", line_of(&text, "gas_xx"))),
        "{e}"
    );
    assert!(e.contains("unknown variant `gas_xx`"), "{e}");

    let text = city().replace("clear = 35.0", "clear = 60.0");
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!("bad.toml:{}:", line_of(&text, "clear = 60.0"))),
        "{e}"
    );
    assert!(
        e.contains("`clear` (60) must be on the safe side of the limit (50)"),
        "{e}"
    );

    let text = city().replace("grid = \"G-0301\"", "grid = \"G-9999\"");
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!("bad.toml:{}:", line_of(&text, "G-9999"))),
        "{e}"
    );
    assert!(e.contains("unknown grid `G-9999`"), "{e}");

    let text = city().replace("id = \"gas-12\"", "id = \"gas-07\"");
    assert!(error_for(&text).contains("sensor id `gas-07` is used twice"));
    let text = city().replace("id = \"gas-12\"", "id = \"cam-safety-03\"");
    assert!(error_for(&text).contains("cameras and sensors share one namespace"));
}

#[test]
fn mqtt_tables_are_checked_where_they_are_written() {
    let text = city().replace(
        "deadletter_topic = \"skynet/deadletter/sensors\"",
        "deadletter_topic = \"skynet/sensors/dead\"",
    );
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!(
            "bad.toml:{}:",
            line_of(&text, "skynet/sensors/dead")
        )),
        "{e}"
    );
    assert!(e.contains("skynet would read its own messages"), "{e}");

    // The second [[mqtt.topics]] table, without its value pointer.
    let text = city().replace("  value_pointer = \"/level_cm\"\n", "");
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!(
            "bad.toml:{}:",
            line_of(&text, "vendor/hydro/+/telemetry") - 1
        )),
        "{e}"
    );
    assert!(
        e.contains("`format = \"json\"` needs `value_pointer`"),
        "{e}"
    );

    let text = city().replace("qos = 1", "qos = 5");
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!("bad.toml:{}:", line_of(&text, "qos = 5"))),
        "{e}"
    );

    let start = city().find("[mqtt]").unwrap();
    let end = city().find("[[sensors]]").unwrap();
    let text = format!("{}{}", &city()[..start], &city()[end..]);
    assert!(error_for(&text).contains("sensors publish over MQTT: add an [mqtt] table"));
}

#[test]
fn the_city_config_takes_its_defaults_and_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("city.toml");
    std::fs::write(&path, city()).unwrap();
    let config = PipelineConfig::load(&path).unwrap();
    let unset = |name: &str| std::env::var(name).map_or(true, |v| v.is_empty());
    // Where the environment leaves them unset, the defaults apply.
    let mqtt = config.mqtt.as_ref().unwrap();
    if unset("SKYNET_MQTT_URL") {
        assert_eq!(
            (mqtt.connection.host.as_str(), mqtt.connection.port),
            ("127.0.0.1", 1883)
        );
    }
    if unset("SKYNET_MQTT_USER") {
        assert!(mqtt.connection.credentials.is_none());
    }
    if unset("SKYNET_METRICS_LISTEN") {
        assert_eq!(config.metrics_listen.unwrap().to_string(), "127.0.0.1:9464");
    }
    if unset("SKYNET_API_LISTEN") {
        assert_eq!(
            config.api.as_ref().expect("[api]").listen.to_string(),
            "127.0.0.1:8080"
        );
    }
    if unset("SKYNET_STATE_DIR") {
        assert_eq!(config.outbox, dir.path().join("../var/city/outbox.sqlite"));
        assert_eq!(
            config.record_observations,
            Some(dir.path().join("../var/city/observations.jsonl"))
        );
        assert_eq!(config.evidence.dir, dir.path().join("../var/city/evidence"));
    }
    assert!(config.evidence.enabled && config.evidence.url_base.starts_with("file:///"));
    assert_eq!(config.cameras[0].privacy_masks.len(), 1);
    // Incidents go to the file and to NATS JetStream; case status comes back from NATS.
    let sinks: Vec<(&str, &str)> = config
        .sinks
        .iter()
        .map(|s| (s.kind, s.name.as_str()))
        .collect();
    assert_eq!(sinks, [("jsonl", "jsonl"), ("nats", "nats")]);
    let cases = config.cases.as_ref().expect("[cases]");
    assert_eq!(
        (cases.stream.as_str(), cases.subject_prefix.as_str()),
        ("SKYNET_CASES", "skynet.cases")
    );
    if unset("SKYNET_NATS_URL") {
        assert_eq!(cases.url.expose(), "nats://127.0.0.1:4222");
    }
    // The fusion rule the city runs on.
    let fusion = config
        .risk
        .fusion
        .iter()
        .find(|f| f.name() == "person-exposed-to-gas")
        .expect("the gas and person fusion rule");
    match fusion {
        skynet_risk::FusionRule::All {
            when,
            within,
            category,
            level,
            ..
        } => {
            assert_eq!(category, "person_exposed_to_gas");
            assert_eq!(*level, skynet_core::RiskLevel::I);
            assert_eq!(*within, chrono::Duration::seconds(300));
            assert_eq!(when[0].categories, vec!["gas_leak".to_string()]);
            assert_eq!(when[1].categories, vec!["person_present".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    let camera = &config.cameras[0];
    assert_eq!(
        (camera.id.as_str(), camera.grid.as_str()),
        ("cam-safety-03", "G-0201")
    );
    let gas = config
        .sensors
        .iter()
        .find(|s| s.spec.id.as_str() == "gas-07")
        .unwrap();
    assert_eq!(gas.placement.grid.as_str(), "G-0201");
    assert_eq!(gas.placement.owner.as_str(), "safety_production");
    assert_eq!(gas.rules[0].category, "gas_leak");
}

/// A grid file with errors: each names the feature (index and id) and the problem, at the
/// config's `[grids] file` line.
#[test]
fn a_grid_file_with_errors_names_the_feature_and_the_problem() {
    let cells =
        |features: &str| format!(r#"{{"type": "FeatureCollection", "features": [{features}]}}"#);
    let square = |id: &str, x: f64, kind: &str| {
        format!(
            r#"{{"type": "Feature", "properties": {{"id": "{id}"{kind}}}, "geometry": {{"type": "Polygon", "coordinates": [[[{x},0],[{x1},0],[{x1},1],[{x},1],[{x},0]]]}}}}"#,
            x1 = x + 1.0
        )
    };
    let cases = [
        (
            cells(&format!(
                "{},{}",
                square("A", 0.0, ""),
                square("B", 0.5, "")
            )),
            "feature 1 (`B`): overlaps feature 0 (`A`)",
        ),
        (
            cells(&square("A", 0.0, r#", "kind": 7"#)),
            "feature 0 (`A`): `properties.kind` must be a string",
        ),
        (
            cells(&square("A", 0.0, r#", "kind": "School Zone""#)),
            "feature 0 (`A`): `properties.kind`",
        ),
        (
            cells(
                r#"{"type": "Feature", "properties": {"id": "flat"}, "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,1],[2,2],[0,0]]]}}"#,
            ),
            "feature 0 (`flat`)",
        ),
        (cells(""), "has no features"),
    ];
    for (geojson, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let grids = dir.path().join("cells.geojson");
        std::fs::write(&grids, &geojson).unwrap();
        let demo = common::repo().join("configs/demo-grids.geojson");
        let text = valid().replace(
            &demo.display().to_string().replace('\\', "/"),
            &grids.display().to_string().replace('\\', "/"),
        );
        let e = error_for(&text);
        assert!(e.contains(expected), "{e}\n  expected: {expected}");
        assert!(e.contains("cells.geojson"), "names the grid file: {e}");
        let line = valid()
            .lines()
            .position(|l| l.starts_with("file = "))
            .unwrap()
            + 1;
        assert!(
            e.contains(&format!("bad.toml:{line}:")),
            "at the `file` line: {e}"
        );
    }
}

#[test]
fn class_limits_owner_classes_and_the_inference_interval_are_checked_where_written() {
    let cases = [
        (
            valid().replace(
                "workers = 2",
                "workers = 2\nclasses = { person = { min_score = 0.1 } }",
            ),
            "classes = ",
            "`classes.person.min_score` = 0.1 is below `[detect] threshold` = 0.3",
        ),
        (
            valid().replace("workers = 2", "workers = 2\nclasses = { face = {} }"),
            "classes = ",
            "label `face` is not one model `yolox_nano` detects",
        ),
        (
            valid().replace(
                "workers = 2",
                "workers = 2\nowner_classes = { police = [\"unicorn\"] }",
            ),
            "owner_classes",
            "label `unicorn` in `owner_classes.police`",
        ),
        (
            valid().replace(
                "max_frames = 10",
                "max_frames = 10\nclasses = { car = { min_area = 0.5, max_area = 0.1 } }",
            ),
            "classes = ",
            "`classes.car.min_area` = 0.5 is larger than `classes.car.max_area` = 0.1",
        ),
        (
            valid().replace(
                "max_frames = 10",
                "max_frames = 10\nclasses = { dog = { min_score = 0.5 } }",
            ),
            "classes = ",
            "`classes.dog`: camera `cam` does not look for `dog`",
        ),
        (
            valid()
                .replace(
                    "workers = 2",
                    "workers = 2\nclasses = { person = { min_area = 0.2 } }",
                )
                .replace(
                    "max_frames = 10",
                    "max_frames = 10\nclasses = { person = { max_area = 0.1 } }",
                ),
            "classes = { person = { max",
            "the camera's `min_area` is 0.2 and its `max_area` 0.1",
        ),
        (
            valid().replace(
                "max_frames = 10",
                "max_frames = 10\ninference_interval = { max = 0 }",
            ),
            "inference_interval",
            "`inference_interval.max` must be between 1 (every frame) and 30, got 0",
        ),
        (
            valid().replace(
                "max_frames = 10",
                "max_frames = 10\ninference_interval = { maximum = 3 }",
            ),
            "inference_interval",
            "unknown field `maximum`",
        ),
    ];
    for (text, key, message) in cases {
        let e = error_for(&text);
        let line = line_of(&text, key);
        assert!(e.starts_with(&format!("bad.toml:{line}:")), "{key}: {e}");
        assert!(e.contains(message), "{key}: {e}");
    }
}

#[test]
fn the_console_settings_are_checked_where_written() {
    let with_api = |api: &str| format!("{}\n[api]\n{api}\n", valid());
    let dir = tempfile::tempdir().unwrap();
    let config = common::pipeline_config(dir.path(), &with_api("listen = \"127.0.0.1:0\""));
    let api = config.api.expect("[api]");
    assert_eq!(api.session_ttl.as_secs(), 12 * 3600);
    assert!(!api.secure_cookie);
    let behind_tls = common::pipeline_config(
        dir.path(),
        &with_api("listen = \"127.0.0.1:0\"\nsecure_cookie = true"),
    );
    assert!(behind_tls.api.expect("[api]").secure_cookie);
    // A TLS proxy on the same host reaches a loopback listener: naming a proxy turns the
    // Secure cookie on by default, and writing it off still wins.
    let proxied = common::pipeline_config(
        dir.path(),
        &with_api("listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]"),
    );
    assert!(proxied.api.expect("[api]").secure_cookie);
    let proxied_off = common::pipeline_config(
        dir.path(),
        &with_api(
            "listen = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.1\"]\nsecure_cookie = false",
        ),
    );
    assert!(!proxied_off.api.expect("[api]").secure_cookie);
    let text = with_api("listen = \"localhost\"");
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!(
            "bad.toml:{}:",
            line_of(&text, "listen = \"localhost")
        )),
        "{e}"
    );
    assert!(e.contains("`listen` `localhost` must be host:port"), "{e}");
    let e = error_for(&with_api("listen = \"127.0.0.1:8080\"\nsession_ttl_s = 5"));
    assert!(e.contains("`session_ttl_s` = 5 must be between 60"), "{e}");
    let e = error_for(&with_api("listen = \"127.0.0.1:8080\"\nport = 80"));
    assert!(e.contains("unknown field `port`"), "{e}");
}

#[test]
fn the_metrics_token_is_read_from_the_config_or_the_environment_and_never_shown() {
    let with_metrics = |metrics: &str| {
        format!(
            "{}\n[metrics]\nlisten = \"127.0.0.1:0\"\n{metrics}\n",
            valid()
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let config = common::pipeline_config(dir.path(), &with_metrics(""));
    assert!(config.metrics_auth_token.is_none());
    let config = common::pipeline_config(
        dir.path(),
        &with_metrics("auth_token = \"s3cret-scrape-token-7f2a\""),
    );
    let token = config.metrics_auth_token.clone().expect("a token");
    assert_eq!(token.expose(), "s3cret-scrape-token-7f2a");
    assert!(!format!("{config:?}").contains("s3cret-scrape-token-7f2a"));
    // The variable named by auth_token_env must be set; the error names it, not a value.
    let e = error_for(&with_metrics(
        "auth_token_env = \"SKYNET_TEST_METRICS_TOKEN_UNSET_4b1d\"",
    ));
    assert!(e.contains("SKYNET_TEST_METRICS_TOKEN_UNSET_4b1d"), "{e}");
    let e = error_for(&with_metrics("auth_token = \"x\"\nauth_token_env = \"X\""));
    assert!(e.contains("not both"), "{e}");
    let e = error_for(&with_metrics("auth_token = \"  \""));
    assert!(e.contains("`auth_token` is empty"), "{e}");
    // A token that can be guessed, or the placeholder of an example, is refused naming the
    // key and never showing the value.
    let e = error_for(&with_metrics("auth_token = \"short-token-15c\""));
    assert!(
        e.contains("`auth_token` is shorter than 16 characters"),
        "{e}"
    );
    assert!(!e.contains("short-token-15c"), "{e}");
    let e = error_for(&with_metrics(
        "auth_token = \"REPLACE-WITH-A-RANDOM-TOKEN\"",
    ));
    assert!(e.contains("`auth_token` is a placeholder"), "{e}");
    assert!(!e.contains("REPLACE-WITH"), "{e}");
    let config = common::pipeline_config(
        dir.path(),
        &with_metrics("auth_token = \"0123456789abcdef\""),
    );
    assert_eq!(
        config.metrics_auth_token.expect("a token").expose(),
        "0123456789abcdef"
    );
}
