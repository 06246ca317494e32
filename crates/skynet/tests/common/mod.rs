//! What the binary's tests share: the repository, output as text, and the demo config with
//! its outputs moved into a test's directory.
#![allow(dead_code)]

pub mod mosquitto;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
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
    Command::new(env!("CARGO_BIN_EXE_skynet"))
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
    // The reader thread takes the last lines once the pipe closes.
    std::thread::sleep(Duration::from_millis(200));
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

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use std::collections::BTreeMap;

/// A nats-server of the test's own, on a spare port, with its store in `dir`.
pub struct PrivateNats {
    port: u16,
    dir: PathBuf,
    pub child: Option<Child>,
}

impl PrivateNats {
    pub fn start(dir: &Path) -> Self {
        let mut server = Self {
            port: free_port().port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn resume(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup.sh installs it)");
        self.child = Some(child);
        assert!(
            eventually(Duration::from_secs(10), || TcpStream::connect((
                "127.0.0.1",
                self.port
            ))
            .is_ok()),
            "nats-server did not start on {}",
            self.port
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every message in `stream`, as (Nats-Msg-Id, subject, headers, body), read with an
/// ephemeral ordered consumer.
pub async fn read_stream(
    url: &str,
    stream: &str,
) -> Vec<(String, String, BTreeMap<String, String>, serde_json::Value)> {
    let client = async_nats::connect(url).await.unwrap();
    let js = jetstream::new(client);
    let mut stream = js.get_stream(stream).await.unwrap();
    let total = stream.info().await.unwrap().state.messages;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
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

/// A multi-threaded runtime of two workers, as the binary's delivery runtime.
pub fn runtime() -> tokio::runtime::Runtime {
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
