//! `skynet platforms list` and `GET /platforms` (issue 27). Against a running node (`skynet
//! run` with a GB/T 28181 platform and `[metrics] auth_token`, a scripted lower platform
//! registering and answering the catalog): `/platforms` without the token is 401; the list
//! shows the platform with its state and lower platforms online, and the catalog's channels
//! with their status and whether they are analysed (the configured channel, its catalog
//! position inside a grid cell, placed there by the catalog and analysed; the other, with no
//! position, not); `--json` prints the node's JSON; a config with another token gets an
//! error that names `[metrics] auth_token`. With no node running: the config's view, and a
//! note on stderr that the node did not answer.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::gb28181::{CHANNEL, DOMAIN, LOWER, Lower, ME};
use common::*;
use skynet_gb28181::manscdp::{CatalogItem, ItemStatus};

/// In the catalog, not configured.
const OTHER: &str = "34020000001320000002";
/// Configured by its id and in the catalog with a position, beyond the platform's
/// `max_catalog_cameras = 1` (`CHANNEL`, first by id, is placed): listed, not analysed.
const THIRD: &str = "34020000001320000003";
const TOKEN: &str = "platforms-list-token-5f0c1d7e9a2b4c68";
/// `CHANNEL`'s catalog position: inside G-0102 of configs/city-grids.geojson (the config's
/// grids), so the running node places it there.
const G_0102_POSITION: (f64, f64) = (114.052, 22.5425);

/// The catalog the scripted lower platform answers with: `CHANNEL` online at
/// [`G_0102_POSITION`], `OTHER` offline with no position, `THIRD` online beside `CHANNEL`.
fn catalog() -> [CatalogItem; 3] {
    [
        CatalogItem {
            device_id: CHANNEL.into(),
            name: "东门".into(),
            parental: Some(false),
            status: ItemStatus::On,
            longitude: Some(G_0102_POSITION.0),
            latitude: Some(G_0102_POSITION.1),
            ..Default::default()
        },
        CatalogItem {
            device_id: OTHER.into(),
            name: "West".into(),
            parental: Some(false),
            status: ItemStatus::Off,
            ..Default::default()
        },
        CatalogItem {
            device_id: THIRD.into(),
            name: "North".into(),
            parental: Some(false),
            status: ItemStatus::On,
            longitude: Some(G_0102_POSITION.0),
            latitude: Some(G_0102_POSITION.1),
            ..Default::default()
        },
    ]
}

/// A config with one GB/T 28181 platform listing `CHANNEL` (by id alone: no cell in the
/// config, so placed by its catalog position, the model loaded then) and `[metrics] listen`
/// with `token`.
fn write_config(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    sip: SocketAddr,
    token: &str,
) -> std::path::PathBuf {
    let repo = repo();
    let text = format!(
        r#"
[node]
name = "platforms-cli"
[metrics]
listen = "{listen}"
auth_token = "{token}"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[outbox]
path = "{out}/outbox.sqlite"

[[platforms]]
kind = "gb28181"
id = "{ME}"
domain = "{DOMAIN}"
listen = "{sip}"
password = "pw"
owner = "police"
channels = ["{CHANNEL}", "{THIRD}"]
media_ports = "31040-31050"
max_catalog_cameras = 1
"#,
        grids = repo.join("configs/city-grids.geojson").display(),
        model = repo.join("models/yolox_nano.toml").display(),
        out = dir.display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `skynet platforms list --config CONFIG [extra]`: its exit success, stdout and stderr.
fn platforms_list(config: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(skynet_bin())
        .args(["platforms", "list", "--config", config.to_str().unwrap()])
        .args(extra)
        .current_dir(repo())
        .output()
        .expect("skynet runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn platforms_list_asks_the_running_node_and_platforms_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let sip = free_port();
    let config = write_config(dir.path(), "skynet.toml", listen, sip, TOKEN);
    let (mut child, log) = spawn_logged(&config, &[]);
    // Listing, its endpoint up and no lower platform yet: the SIP endpoint listens.
    let mut first = (false, String::new(), String::new());
    let listening = eventually(Duration::from_secs(60), || {
        first = platforms_list(&config, &[]);
        first.1.starts_with(&format!(
            "{ME}\tgb28181\t{sip}\tpolice\tup\t0 lower platform(s) online\n"
        ))
    });
    if !listening {
        let (_, text) = terminate(&mut child, &log);
        panic!(
            "no listing of the platform up:\n{}\n{}\nlog:\n{text}",
            first.1, first.2
        );
    }
    // The configured channel, before any catalog.
    assert!(
        first
            .1
            .contains(&format!("  {CHANNEL}\t-\tunlisted\t-\tanalysed no\t-\n")),
        "{}",
        first.1
    );
    // The route needs the token, as /metrics and /readyz do.
    let refused = http_get(listen, "/platforms").unwrap_or_default();

    // The lower platform registers and answers the catalog; it leaves the INVITE of the
    // placed channel's camera unanswered (the camera retries).
    let mut lower = Lower::new(sip);
    lower.join_with("pw", &catalog());
    let placed = format!("  {CHANNEL}\t东门\tonline\tG-0102\tanalysed yes\tcatalog\n");
    let mut last = (false, String::new(), String::new());
    let listed = eventually(Duration::from_secs(120), || {
        last = platforms_list(&config, &[]);
        last.1.contains(&format!("  {OTHER}\t"))
            && last.1.contains(&format!("  {THIRD}\tNorth"))
            && last.1.contains(&placed)
    });
    let json = platforms_list(&config, &["--json"]);
    // Another token: refused, and the error says which setting.
    let wrong = write_config(
        dir.path(),
        "wrong.toml",
        listen,
        sip,
        "another-token-8d1e2f3a4b5c6d7e",
    );
    let (wrong_ok, _, wrong_err) = platforms_list(&wrong, &[]);
    let (status, text) = terminate(&mut child, &log);
    assert!(status.success(), "{text}");

    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let (ok, stdout, stderr) = last;
    assert!(listed, "stdout:\n{stdout}\nstderr:\n{stderr}\nlog:\n{text}");
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("{ME}\tgb28181\t{sip}\tpolice\tup\t1 lower platform(s) online"),
        "{stdout}"
    );
    // Placed by its catalog position, in the cell holding it.
    assert!(
        lines.contains(
            &format!("  {CHANNEL}\t东门\tonline\tG-0102\tanalysed yes\tcatalog").as_str()
        ),
        "{stdout}"
    );
    assert!(
        lines.contains(&format!("  {OTHER}\tWest\toffline\t-\tanalysed no\t-").as_str()),
        "{stdout}"
    );
    // Beyond the platform's max_catalog_cameras: listed, not analysed, and said so.
    assert!(
        text.contains("max_catalog_cameras are placed") && text.contains(THIRD),
        "{text}"
    );
    assert!(
        lines.contains(&format!("  {THIRD}\tNorth\tonline\t-\tanalysed no\t-").as_str()),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("1 platform(s), from the node at {listen}")),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");

    let (ok, stdout, stderr) = json;
    assert!(ok, "{stderr}");
    let body: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let platform = &body["platforms"][0];
    assert_eq!(platform["id"], ME);
    assert_eq!(platform["kind"], "gb28181");
    assert_eq!(platform["state"], "up");
    assert_eq!(
        platform["lower_platforms_online"],
        serde_json::json!([LOWER])
    );
    let channel = platform["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == CHANNEL)
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(channel["lower"], LOWER);
    assert_eq!(channel["wanted"], true);
    assert_eq!(channel["analysed"], true);
    assert_eq!(channel["grid"], "G-0102");
    assert_eq!(channel["placed_by"], "catalog");
    let other = platform["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == OTHER)
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(other["wanted"], false);
    assert_eq!(other["analysed"], false);
    assert_eq!(other["placed_by"], serde_json::Value::Null);

    assert!(!wrong_ok);
    assert!(wrong_err.contains("401"), "{wrong_err}");
    assert!(wrong_err.contains("[metrics] auth_token"), "{wrong_err}");
    assert!(!wrong_err.contains("another-token"), "{wrong_err}");
}

#[test]
fn platforms_list_without_a_running_node_prints_the_configs_view_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on either.
    let listen = free_port();
    let sip = free_port();
    let config = write_config(dir.path(), "skynet.toml", listen, sip, TOKEN);
    let (ok, stdout, stderr) = platforms_list(&config, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{ME}\tgb28181\t{sip}\tpolice\t2 configured\n  {CHANNEL}\t-\tno\n  {THIRD}\t-\tno\n"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("the node at {listen} did not answer")),
        "{stderr}"
    );
    assert!(stderr.contains("config's view"), "{stderr}");
    // --json needs the node.
    let (ok, stdout, stderr) = platforms_list(&config, &["--json"]);
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("did not answer"), "{stderr}");
}
