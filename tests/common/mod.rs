//! What the cross-crate tests and the benchmarks share: the repository and the `skynet`
//! binary; the ONNX Runtime library, the model weights and the media that `scripts/setup.sh`
//! installs (falling back to ../shared where the machine has it); the demo config with its
//! outputs moved into a test's directory; and the brokers, servers and clients the tests run.
#![allow(dead_code)]

pub mod gb28181;
pub mod mosquitto;
pub mod nats_server;

// Not every test binary starts a NATS server of its own.
#[allow(unused_imports)]
pub use nats_server::PrivateNats;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use std::collections::BTreeMap;

/// The repository's root (this package lives in its tests/).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `skynet` binary under test: `SKYNET_BIN` when set, else the `skynet` in the target
/// directory of this test executable (target/<profile>/skynet beside target/<profile>/deps/).
/// Cargo builds it for `cargo test --workspace`, through the skynet package's own test
/// (tests/skynet_binary.rs); `CARGO_BIN_EXE_skynet` only exists inside that package.
pub fn skynet_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SKYNET_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let name = format!("skynet{}", std::env::consts::EXE_SUFFIX);
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join(&name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the skynet binary is not in a directory above {} (run `cargo test --workspace`, \
                 or `cargo build -p skynet` first, or set SKYNET_BIN)",
                exe.display()
            )
        })
}

fn shared() -> PathBuf {
    repo().join("../shared")
}

/// A media file (vtest.avi, dog.jpg).
pub fn media(name: &str) -> PathBuf {
    let candidates = [
        skynet::paths::data_dir().join("media").join(name),
        shared().join("media").join(name),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("test media {name} is missing (looked in {candidates:?}); run scripts/setup.sh")
        })
}

pub fn manifest_path() -> PathBuf {
    repo().join("models/yolox_nano.toml")
}

pub fn weight_dirs() -> Vec<PathBuf> {
    vec![
        skynet::paths::data_dir().join("models"),
        shared().join("models"),
    ]
}

pub fn runtime() -> skynet_detect::OnnxRuntime {
    skynet_detect::OnnxRuntime::init(None, &[skynet::paths::data_dir()])
        .unwrap_or_else(|e| panic!("{e}\n(the tests need what scripts/setup.sh installs)"))
}

/// A pipeline config over the first `frames` frames of vtest.avi with one zone rule.
pub fn vtest_config(dir: &Path, camera: &str, zone: &str, frames: u64) -> String {
    let esc = |p: &Path| p.display().to_string().replace('\\', "/");
    format!(
        r#"
[node]
name = "test-node"

[grids]
file = "{grids}"

[detect]
model = "{model}"
workers = 2

[risk]
half_life_s = 60
close_after_s = 120

[outbox]
path = "{dir}/outbox.sqlite"

[[sinks]]
kind = "jsonl"
path = "{dir}/incidents.jsonl"

[evidence]
dir = "{dir}/evidence"

[[cameras]]
id = "{camera}"
owner = "city_management"
uri = "{media}"
grid = "G-0102"
max_frames = {frames}

  [[cameras.zones]]
  name = "zone"
  polygon = {zone}

  [[cameras.rules]]
  name = "zone-rule"
  kind = "zone_intrusion"
  zone = "zone"
  labels = ["person"]
  min_frames = 3
  cooldown_s = 2.0
"#,
        grids = esc(&repo().join("configs/demo-grids.geojson")),
        model = esc(&manifest_path()),
        dir = esc(dir),
        media = esc(&media("vtest.avi")),
    )
}

/// Where people walk in vtest.avi (feet inside in 180 of the first 200 frames; see
/// tests/reference/vtest_zones.md).
pub const WALKWAY: &str = "[[0.30, 0.40], [0.60, 0.40], [0.80, 0.55], [0.45, 0.55]]";
/// A building wall no person box touches in any frame.
pub const NOBODY: &str = "[[0.42, 0.0], [0.74, 0.0], [0.74, 0.15], [0.42, 0.15]]";

/// Writes `text` as a config in `dir` and loads it, with the weights found as above.
pub fn pipeline_config(dir: &Path, text: &str) -> skynet::PipelineConfig {
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("write the config");
    let mut config = skynet::PipelineConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    config.detector.weight_dirs = weight_dirs();
    config
}

/// One detection of the Python onnxruntime reference on dog.jpg
/// (tests/fixtures/dog_expected.json, made by tests/reference/yolox_reference.py).
pub struct ReferenceDetection {
    pub label: String,
    pub score: f32,
    pub bbox: skynet_core::BBox,
}

pub fn dog_reference() -> Vec<ReferenceDetection> {
    let text = std::fs::read_to_string(repo().join("tests/fixtures/dog_expected.json"))
        .expect("the dog.jpg fixture");
    let expected: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    expected["detections"]
        .as_array()
        .expect("a detections array")
        .iter()
        .map(|e| {
            let b: Vec<f32> = e["box"]
                .as_array()
                .expect("a box")
                .iter()
                .map(|v| v.as_f64().expect("a number") as f32)
                .collect();
            ReferenceDetection {
                label: e["label"].as_str().expect("a label").to_string(),
                score: e["score"].as_f64().expect("a score") as f32,
                bbox: skynet_core::BBox::new(b[0], b[1], b[2], b[3]),
            }
        })
        .collect()
}

/// The detection in `got` of the reference's label that overlaps it best matches it: IoU at
/// least 0.9 and score within 0.02. `what` names the detector in messages.
pub fn assert_matches_reference(
    got: &[skynet_core::Detection],
    want: &ReferenceDetection,
    what: &str,
) {
    let label = &want.label;
    let best = got
        .iter()
        .filter(|d| &d.label == label)
        .max_by(|a, b| a.bbox.iou(&want.bbox).total_cmp(&b.bbox.iou(&want.bbox)))
        .unwrap_or_else(|| panic!("{what}: expected a {label}, got {got:?}"));
    assert!(
        best.bbox.iou(&want.bbox) >= 0.9,
        "{what} {label}: IoU {} for {:?} vs {:?}",
        best.bbox.iou(&want.bbox),
        best.bbox,
        want.bbox
    );
    assert!(
        (best.score - want.score).abs() <= 0.02,
        "{what} {label}: score {} vs {}",
        best.score,
        want.score
    );
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A loopback address for a server the test starts: see [`nats_server::spare_port`] for why
/// it is not simply `bind(0)`.
pub fn free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], nats_server::spare_port()))
}

/// The demo config with its outputs in `dir`, `camera` settings added to the demo camera,
/// `listen` for the HTTP endpoint, and `more` appended.
pub fn config_in(dir: &Path, camera: &str, listen: SocketAddr, more: &str) -> PathBuf {
    let demo = std::fs::read_to_string(repo().join("configs/demo.toml")).unwrap();
    let config = demo
        .replace("\"../models/", &format!("\"{}/models/", repo().display()))
        .replace(
            "\"demo-grids.geojson\"",
            &format!("\"{}/configs/demo-grids.geojson\"", repo().display()),
        )
        .replace(
            "listen = \"127.0.0.1:9464\"",
            &format!("listen = \"{listen}\""),
        )
        .replace("../var/demo/", "./")
        .replace(
            "uri = \"${SKYNET_DATA_DIR}/media/vtest.avi\"",
            &format!("uri = \"${{SKYNET_DATA_DIR}}/media/vtest.avi\"\n{camera}"),
        );
    let path = dir.join("skynet.toml");
    std::fs::write(&path, format!("{config}\n{more}")).unwrap();
    path
}

/// As [`config_in`], without the demo's file camera: only the `cameras` given.
pub fn live_config_in(dir: &Path, listen: SocketAddr, cameras: &str) -> PathBuf {
    let path = config_in(dir, "", listen, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = text.split("\n[[cameras]]").next().unwrap().to_string();
    std::fs::write(&path, format!("{head}\n{cameras}")).unwrap();
    path
}

pub fn spawn_run(config: &Path, extra: &[&str], stdout: Stdio) -> Child {
    spawn_run_with_env(config, extra, stdout, &[])
}

/// As [`spawn_run`], with environment variables set for the process.
pub fn spawn_run_with_env(
    config: &Path,
    extra: &[&str],
    stdout: Stdio,
    env: &[(&str, String)],
) -> Child {
    Command::new(skynet_bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(repo())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("skynet starts")
}

/// Runs `skynet run` with its stderr read as it comes (a pipe nobody reads would block its
/// logging); the log so far is in the returned buffer.
pub fn spawn_logged(
    config: &Path,
    extra: &[&str],
) -> (Child, std::sync::Arc<std::sync::Mutex<String>>) {
    spawn_logged_with_env(config, extra, &[])
}

/// As [`spawn_logged`], with environment variables set for the process.
pub fn spawn_logged_with_env(
    config: &Path,
    extra: &[&str],
    env: &[(&str, String)],
) -> (Child, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = spawn_run_with_env(config, extra, Stdio::null(), env);
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut stderr = child.stderr.take().unwrap();
    let sink = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, log)
}

/// SIGTERM, as a supervisor stops it; returns how it exited and everything it logged.
pub fn terminate(
    child: &mut Child,
    log: &std::sync::Arc<std::sync::Mutex<String>>,
) -> (std::process::ExitStatus, String) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    // The reader thread takes the last lines once the pipe closes, then ends and drops its
    // handle on the log: wait for that (a condition, with a deadline for a loaded machine),
    // not for a fixed time.
    eventually(Duration::from_secs(30), || {
        std::sync::Arc::strong_count(log) == 1
    });
    let text = log.lock().unwrap().clone();
    (status, text)
}

pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

/// Polls until `check` holds, for up to `within`.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub fn stored_events(dir: &Path) -> Vec<skynet_emit::CloudEvent> {
    skynet_emit::Outbox::open(&dir.join("outbox.sqlite"))
        .and_then(|o| o.events())
        .unwrap_or_default()
}

/// GStreamer's RTSP server serving vtest.avi on `port`, from tests/support/rtsp_camera.py.
pub struct RtspCamera {
    pub child: Child,
    // Kept open: the camera's stdout must not break under it.
    _stdout: std::process::ChildStdout,
}

impl RtspCamera {
    pub fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// With more arguments for rtsp_camera.py (`--user NAME --password PW`, `--still`).
    pub fn start_with(port: u16, extra: &[&str]) -> Self {
        let video = skynet::paths::data_dir().join("media/vtest.avi");
        let mut child = Command::new("/usr/bin/python3")
            .arg(repo().join("tests/support/rtsp_camera.py"))
            .args([&port.to_string(), video.to_str().unwrap()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the RTSP camera starts (python3-gi and gir1.2-gst-rtsp-server-1.0, from scripts/setup.sh)");
        let mut stdout = child.stdout.take().unwrap();
        let mut ready = [0u8; 6];
        stdout
            .read_exact(&mut ready)
            .expect("the RTSP camera says it is ready");
        assert_eq!(&ready, b"ready\n");
        Self {
            child,
            _stdout: stdout,
        }
    }

    /// Gone at once, like a camera that loses power.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtspCamera {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

/// The `X-Skynet-Signature` a webhook receiver expects for `body`: `sha256=` and the hex
/// HMAC-SHA256 under `secret`.
pub fn webhook_signature(secret: &str, body: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// A validator for one of the published schemas in `schemas/`.
pub fn published_schema(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo().join("schemas").join(name)).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Why `value` does not validate, with where (empty when it does).
pub fn schema_errors(validator: &jsonschema::Validator, value: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect()
}

/// Every message in `stream`, as (Nats-Msg-Id, subject, headers, body), read with an
/// ephemeral ordered consumer.
pub async fn read_stream(
    url: &str,
    stream: &str,
) -> Vec<(String, String, BTreeMap<String, String>, serde_json::Value)> {
    let client = async_nats::connect(url).await.unwrap();
    read_stream_in(&jetstream::new(client), stream, Duration::from_secs(10)).await
}

/// [`read_stream`] through a JetStream context of the caller's (its credentials, its
/// domain), waiting at most `within` for each message.
pub async fn read_stream_in(
    js: &jetstream::Context,
    stream: &str,
    within: Duration,
) -> Vec<(String, String, BTreeMap<String, String>, serde_json::Value)> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < total {
        let message = tokio::time::timeout(within, messages.next())
            .await
            .expect("the stream's messages come")
            .unwrap()
            .unwrap();
        let headers: BTreeMap<String, String> = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|(k, v)| {
                (
                    k.to_string(),
                    v.first().map(|v| v.to_string()).unwrap_or_default(),
                )
            })
            .collect();
        let id = headers.get("Nats-Msg-Id").cloned().unwrap_or_default();
        out.push((
            id,
            message.subject.to_string(),
            headers,
            serde_json::from_slice(&message.payload).unwrap(),
        ));
    }
    out
}

/// Deletes the named streams on `url` when dropped, so a failing test leaves nothing on the
/// session's server either.
pub struct StreamsCleanup {
    pub url: String,
    pub streams: Vec<String>,
}

impl Drop for StreamsCleanup {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let names: Vec<&str> = self.streams.iter().map(String::as_str).collect();
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(5), delete_streams(&self.url, &names))
                .await;
        });
    }
}

pub async fn delete_streams(url: &str, streams: &[&str]) {
    let Ok(client) = async_nats::connect(url).await else {
        return;
    };
    let js = jetstream::new(client);
    for stream in streams {
        let _ = js.delete_stream(stream).await;
    }
}

/// A multi-threaded tokio runtime of two workers, as the binary's delivery runtime.
pub fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Incident `inc-<n>`, opened, `gas_leak` in grid `G-<n mod 7>`.
pub fn incident(n: u32) -> skynet_core::RiskEvent {
    incident_revision(&format!("inc-{n}"), 1, &format!("G-{:02}", n % 7))
}

/// Revision `revision` of incident `id`, `gas_leak` in `grid`, about 1 KB.
pub fn incident_revision(id: &str, revision: u32, grid: &str) -> skynet_core::RiskEvent {
    skynet_core::RiskEvent::Incident(
        serde_json::from_value(serde_json::json!({
            "id": id, "revision": revision, "status": "opened", "state": "open",
            "change": "opened", "category": "gas_leak", "level": "II", "level_colour": "orange",
            "risk_score": 0.7, "confidence": 1.0, "grid": grid,
            "department": "fire", "deadlines": {}, "sensor": "gas-07", "owner": "safety_production",
            "first_seen": "2026-11-27T08:00:00Z", "last_seen": "2026-11-27T08:00:00Z",
            "observations": 1, "detections": [], "rule": {"name": "co-leak", "kind": "threshold"},
            // About 1 KB, as a real revision with its evidence.
            "note": "x".repeat(600),
        }))
        .unwrap(),
    )
}

/// [`incident_revision`]'s incident itself, for tests that publish it as a CloudEvent.
pub fn incident_body(id: &str, revision: u32, grid: &str) -> skynet_core::Incident {
    match incident_revision(id, revision, grid) {
        skynet_core::RiskEvent::Incident(incident) => incident,
        skynet_core::RiskEvent::GridRisk(_) | skynet_core::RiskEvent::PatrolRound(_) => {
            unreachable!("incident_revision makes incidents")
        }
    }
}

/// GET `path` of a console's API at `base` as the bearer of `token`: its JSON answer, or
/// None while the console is not up or answers an error (callers poll).
pub async fn console_get(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
) -> Option<serde_json::Value> {
    let answer = client
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .ok()?;
    if !answer.status().is_success() {
        return None;
    }
    serde_json::from_str(&answer.text().await.ok()?).ok()
}

/// Runs `skynet simulate sensors --scenario <scenario>` against the MQTT broker at `url`
/// for `seconds` at 10 readings/s, and asserts it succeeded.
pub fn simulate_sensors(url: &str, scenario: &str, seconds: u32) {
    let status = Command::new(skynet_bin())
        .args([
            "simulate",
            "sensors",
            "--url",
            url,
            "--rate",
            "10",
            "--duration",
            &seconds.to_string(),
            "--scenario",
            scenario,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "skynet simulate sensors --scenario {scenario}"
    );
}

/// The ids of every event in the committer's outbox.
pub fn outbox_ids(committer: &skynet_emit::Committer) -> std::collections::BTreeSet<String> {
    committer
        .outbox()
        .events()
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Decodes a video file (an MP4 clip, a live stream saved to a file) with GStreamer into
/// grey frames of `w` x `h` (scaled to it when its own size differs).
pub fn decode_grey(path: &Path, w: u32, h: u32) -> Vec<Vec<u8>> {
    let raw = path.with_extension("grey");
    let status = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", path.display()))
        .args([
            "!",
            "decodebin",
            "!",
            "videoconvert",
            "!",
            "videoscale",
            "!",
        ])
        .arg(format!("video/x-raw,format=GRAY8,width={w},height={h}"))
        .args(["!", "filesink"])
        .arg(format!("location={}", raw.display()))
        .status()
        .expect("gst-launch-1.0 runs");
    assert!(status.success(), "{} does not decode", path.display());
    let bytes = std::fs::read(&raw).unwrap();
    let frame = (w * h) as usize;
    assert!(
        bytes.len() >= frame && bytes.len().is_multiple_of(frame),
        "whole {w}x{h} frames"
    );
    bytes.chunks(frame).map(|c| c.to_vec()).collect()
}

/// Mean local variance of 8x8 tiles in the region (fractions of the frame): how blurred it
/// is (the snapshot, clip and live view tests' measure).
pub fn tile_variance(frame: &[u8], w: u32, region: (f64, f64, f64, f64)) -> f64 {
    let h = frame.len() as u32 / w;
    let (x0, y0) = ((region.0 * w as f64) as u32, (region.1 * h as f64) as u32);
    let (x1, y1) = ((region.2 * w as f64) as u32, (region.3 * h as f64) as u32);
    let (mut variance, mut tiles) = (0.0, 0.0);
    for ty in (y0..y1 - 7).step_by(8) {
        for tx in (x0..x1 - 7).step_by(8) {
            let values: Vec<f64> = (ty..ty + 8)
                .flat_map(|y| (tx..tx + 8).map(move |x| f64::from(frame[(y * w + x) as usize])))
                .collect();
            let mean = values.iter().sum::<f64>() / 64.0;
            variance += values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 64.0;
            tiles += 1.0;
        }
    }
    variance / tiles
}

/// `skynet.patrol_round.v1` events stored in the outbox at `outbox` so far (0 before it
/// exists).
pub fn patrol_rounds_stored(outbox: &Path) -> i64 {
    let Ok(db) =
        rusqlite::Connection::open_with_flags(outbox, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    db.query_row(
        "SELECT count(*) FROM events WHERE type = 'skynet.patrol_round.v1'",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}
