//! GB/T 28181 platforms in `/readyz` (issue 27): `skynet run` with two `[[platforms]]`
//! entries and no camera yet (`channels = "all"`: the model is loaded for the channels their
//! catalogs may place), one listening and one whose SIP port is already taken. Each is a
//! component `platform <id>` of kind `platform`: the first `up` (no channel the config
//! places waits for a lower platform), the second
//! `retrying` with why, which makes `/readyz` 503.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;

#[test]
fn each_platform_is_a_readyz_component_with_its_state_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let sip = free_port();
    // The second platform's SIP port, held here: its endpoint cannot bind.
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken_at = taken.local_addr().unwrap();
    let repo = repo();
    let text = format!(
        r#"
[node]
name = "platform-health"
[metrics]
listen = "{listen}"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[outbox]
path = "{out}/outbox.sqlite"

[[platforms]]
kind = "gb28181"
id = "34020000002000000001"
domain = "3402000000"
listen = "{sip}"
password = "pw"
owner = "police"
channels = "all"
media_ports = "31000-31010"

[[platforms]]
kind = "gb28181"
id = "34020000002000000003"
domain = "3402000000"
listen = "{taken_at}"
password = "pw"
owner = "police"
channels = "all"
media_ports = "31020-31030"
"#,
        grids = repo.join("configs/city-grids.geojson").display(),
        model = repo.join("models/yolox_nano.toml").display(),
        out = dir.path().display(),
    );
    let config = dir.path().join("skynet.toml");
    std::fs::write(&config, text).unwrap();
    let (mut child, log) = spawn_logged(&config, &[]);
    let mut last = String::new();
    let shown = eventually(Duration::from_secs(60), || {
        last = http_get(listen, "/readyz").unwrap_or_default();
        last.contains("\"platform 34020000002000000003\"")
            && last.contains("endpoint failed to bind")
            && last.contains("0 lower platform(s) online")
    });
    let (status, text) = terminate(&mut child, &log);
    assert!(shown, "/readyz:\n{last}\nlog:\n{text}");
    drop(taken);
    assert!(last.starts_with("HTTP/1.1 503"), "{last}");
    let body = &last[last.find("\r\n\r\n").unwrap() + 4..];
    // (The body may be chunked: take the JSON object within.)
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    let component = |name: &str| {
        report["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["component"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} not in {report}"))
    };
    let listening = component("platform 34020000002000000001");
    assert_eq!(listening["kind"], "platform");
    assert_eq!(listening["state"], "up", "{listening}");
    let failed = component("platform 34020000002000000003");
    assert_eq!(failed["kind"], "platform");
    assert_eq!(failed["state"], "retrying", "{failed}");
    let reason = failed["reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("endpoint failed to bind {taken_at}")),
        "{reason}"
    );
    assert!(!reason.contains("pw\""), "{reason}");
    assert!(status.success(), "{text}");
}
