//! Live view's cost and latency (issue 25, "Benchmarks"), on the `skynet` binary serving one
//! RTSP camera at `/api/v1/cameras/{id}/live.mp4`:
//!
//! - **CPU**: the skynet process's user + system time (`/proc/PID/stat` utime + stime) over
//!   `SKYNET_BENCH_LIVE_S` seconds (default 36) with 1 viewer, then over as long with 20
//!   viewers of the same camera, in the same run; both in % of one core, and their ratio.
//! - **Latency** (source to viewer): the camera is a GStreamer RTSP server of its own (below)
//!   whose `videotestsrc` switches between a black frame and noise every 1.7 s and prints the
//!   wall-clock time at which the first switched frame leaves the source (before x264); the
//!   first viewer parses each fragment's `trun` sample sizes (noise frames are tens of kB,
//!   black ones some hundred bytes) and notes the wall-clock time at which the fragment that
//!   holds the first switched frame is complete (its `mdat` read). Latency = that time - the
//!   switch's time: encode, RTSP over loopback, skynet's depayload, tee, mux and 1 s
//!   fragments, HTTP, everything but the viewer's decode and display. p50/p95 per phase.
//!
//! The bench runs the `skynet` binary beside it (`SKYNET_BIN` to name another one):
//! `cargo build -p skynet && cargo test -p skynet-tests --bench live --profile test`, or
//! `cargo build --release -p skynet && cargo bench -p skynet-tests --bench live`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{eventually, free_port, http_get, live_config_in, metric, terminate};

const PASSWORD: &str = "a long password for tests";
const VIEWERS: usize = 20;
/// Seconds between the source's switches (not a multiple of the 1 s GOP, so switches fall
/// at different places in the fragments).
const PERIOD_S: f64 = 1.7;
/// A frame above this many bytes is noise; black frames are far below.
const NOISE_BYTES: u32 = 3000;

const CAMERA: &str = r#"
import sys, time, signal
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer

port, period = sys.argv[1], float(sys.argv[2])
Gst.init(None)
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(
    "( videotestsrc name=src pattern=black is-live=true "
    "! video/x-raw,width=384,height=288,framerate=10/1 "
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=10 "
    "! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
factory.set_shared(True)
state = {"next": None, "noise": False, "pending": False}

def probe(pad, info, src):
    now = time.time()
    if state["pending"]:
        state["pending"] = False
        kind = "noise" if state["noise"] else "black"
        print(f"switch {kind} {now * 1000:.0f}", flush=True)
    if state["next"] is None:
        state["next"] = now + period
    elif now >= state["next"]:
        state["next"] += period
        state["noise"] = not state["noise"]
        # Read by the source's next frame, the one the next probe sees.
        Gst.util_set_object_arg(src, "pattern", "snow" if state["noise"] else "black")
        state["pending"] = True
    return Gst.PadProbeReturn.OK

def configure(factory, media):
    src = media.get_element().get_by_name("src")
    src.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, probe, src)

factory.connect("media-configure", configure)
server.get_mount_points().add_factory("/cam", factory)
if server.attach(None) == 0:
    sys.exit(f"could not listen on 127.0.0.1:{port}")
loop = GLib.MainLoop()
signal.signal(signal.SIGTERM, lambda *_: loop.quit())
print("ready", flush=True)
loop.run()
"#;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The process's user + system CPU seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / hz.max(1.0)
}

fn skynet(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(common::skynet_bin())
        .args(args)
        .current_dir(common::repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "skynet {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn token(config: &Path) -> String {
    let config = config.to_str().unwrap();
    skynet(
        &[
            "users", "add", "op", "--role", "operator", "--config", config,
        ],
        &format!("{PASSWORD}\n"),
    );
    skynet(&["users", "token", "op", "--config", config], "")
}

/// Opens live.mp4 and reads past the response head; the status and the body bytes read.
fn open_live(api: SocketAddr, token: &str) -> (TcpStream, u16) {
    let stream = TcpStream::connect(api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = stream.try_clone().unwrap();
    write!(
        s,
        "GET /api/v1/cameras/cam/live.mp4 HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (stream, status)
}

/// Removes the complete chunks of a chunked body from `raw` and appends their data to `body`.
fn dechunk(raw: &mut Vec<u8>, body: &mut Vec<u8>) {
    while let Some(line) = raw.windows(2).position(|w| w == b"\r\n") {
        let Ok(size) = usize::from_str_radix(String::from_utf8_lossy(&raw[..line]).trim(), 16)
        else {
            return;
        };
        let start = line + 2;
        if raw.len() < start + size + 2 {
            return;
        }
        body.extend_from_slice(&raw[start..start + size]);
        raw.drain(..start + size + 2);
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The children boxes of `b`: (type, body).
fn children(b: &[u8]) -> Vec<(&[u8], &[u8])> {
    let (mut out, mut at) = (Vec::new(), 0);
    while let Some(size) = be32(b, at) {
        let size = size as usize;
        if size < 8 || at + size > b.len() {
            break;
        }
        out.push((&b[at + 4..at + 8], &b[at + 8..at + size]));
        at += size;
    }
    out
}

/// The sample sizes of a `moof`'s first `trun`.
fn sample_sizes(moof: &[u8]) -> Vec<u32> {
    let Some((_, traf)) = children(moof).into_iter().find(|(k, _)| *k == b"traf") else {
        return Vec::new();
    };
    let Some((_, trun)) = children(traf).into_iter().find(|(k, _)| *k == b"trun") else {
        return Vec::new();
    };
    let (Some(flags), Some(count)) = (be32(trun, 0), be32(trun, 4)) else {
        return Vec::new();
    };
    let flags = flags & 0x00ff_ffff;
    let mut at = 8 + 4 * usize::from(flags & 1 != 0) + 4 * usize::from(flags & 4 != 0);
    let per = [0x100, 0x200, 0x400, 0x800]
        .iter()
        .filter(|f| flags & **f != 0)
        .count()
        * 4;
    if flags & 0x200 == 0 {
        return Vec::new();
    }
    let offset = 4 * usize::from(flags & 0x100 != 0);
    let mut sizes = Vec::new();
    for _ in 0..count {
        let Some(size) = be32(trun, at + offset) else {
            break;
        };
        sizes.push(size);
        at += per;
    }
    sizes
}

/// A switch seen by the viewer: the state it switched to, the wall-clock ms at which its
/// fragment was complete, and the phase (viewer count) then.
type Seen = (bool, f64, usize);

/// The first viewer: reads fragments and notes each black/noise switch's arrival.
fn watch(mut stream: TcpStream, stop: Arc<AtomicBool>, phase: Arc<AtomicUsize>) -> Vec<Seen> {
    let (mut raw, mut body, mut seen) = (Vec::new(), Vec::new(), Vec::new());
    let mut state: Option<bool> = None;
    let mut pending: Vec<u32> = Vec::new();
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::SeqCst) {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        raw.extend_from_slice(&buf[..n]);
        dechunk(&mut raw, &mut body);
        let mut used = 0;
        for (kind, inner) in children(&body) {
            used += inner.len() + 8;
            if kind == b"moof" {
                pending = sample_sizes(inner);
            } else if kind == b"mdat" {
                let at = now_ms();
                if pending.is_empty() {
                    pending.push(u32::try_from(inner.len()).unwrap_or(u32::MAX));
                }
                for size in pending.drain(..) {
                    let noise = size > NOISE_BYTES;
                    if state.is_some_and(|s| s != noise) {
                        seen.push((noise, at, phase.load(Ordering::SeqCst)));
                    }
                    state = Some(noise);
                }
            }
        }
        body.drain(..used);
    }
    seen
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let seconds: u64 = std::env::var("SKYNET_BENCH_LIVE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(36);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("camera.py");
    std::fs::write(&script, CAMERA).unwrap();
    let port = free_port().port();
    let mut camera = Command::new("/usr/bin/python3")
        .arg(&script)
        .args([port.to_string(), PERIOD_S.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 with GStreamer's RTSP server (scripts/setup.sh)");
    let mut lines = BufReader::new(camera.stdout.take().unwrap()).lines();
    assert_eq!(
        lines.next().and_then(Result::ok).as_deref(),
        Some("ready"),
        "the camera did not start"
    );
    let switches: Arc<Mutex<Vec<(bool, f64)>>> = Arc::default();
    {
        let switches = Arc::clone(&switches);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let mut words = line.split(' ').skip(1);
                if let (Some(kind), Some(ms)) = (words.next(), words.next())
                    && let Ok(ms) = ms.parse::<f64>()
                {
                    switches.lock().unwrap().push((kind == "noise", ms));
                }
            }
        });
    }

    let (listen, api) = (free_port(), free_port());
    let cameras = format!(
        r#"
[api]
listen = "{api}"
live = {{ enabled = true, max_viewers_per_camera = 32, max_viewers = 64 }}

[[cameras]]
id = "cam"
owner = "city_management"
uri = "rtsp://127.0.0.1:{port}/cam"
grid = "G-0102"
fps = 2.0
"#
    );
    let config = live_config_in(dir.path(), listen, &cameras);
    let token = token(&config);
    let (mut child, log) = common::spawn_logged(&config, &[]);
    let pid = child.id();
    assert!(
        eventually(Duration::from_secs(120), || {
            metric(
                &http_get(listen, "/metrics").unwrap_or_default(),
                "skynet_frames_decoded_total{camera=\"cam\"} ",
            ) > 0.0
        }),
        "the camera never decoded:\n{}",
        log.lock().unwrap()
    );
    println!(
        "skynet {}; camera 384x288 H.264 10 fps (black/noise every {PERIOD_S} s); {seconds} s per phase",
        common::skynet_bin().display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicUsize::new(1));
    let (stream, status) = open_live(api, &token);
    assert_eq!(status, 200, "the first viewer");
    let first = {
        let (stop, phase) = (Arc::clone(&stop), Arc::clone(&phase));
        std::thread::spawn(move || watch(stream, stop, phase))
    };
    // A few seconds for the viewer's muxer to settle.
    std::thread::sleep(Duration::from_secs(3));
    let span = |pid: u32| {
        let (cpu, at) = (cpu_seconds(pid), Instant::now());
        std::thread::sleep(Duration::from_secs(seconds));
        (cpu_seconds(pid) - cpu) / at.elapsed().as_secs_f64() * 100.0
    };
    let one = span(pid);

    let received = Arc::new(AtomicUsize::new(0));
    let others: Vec<_> = (1..VIEWERS)
        .map(|_| {
            let (mut stream, status) = open_live(api, &token);
            assert_eq!(status, 200, "another viewer");
            let (stop, received) = (Arc::clone(&stop), Arc::clone(&received));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => received.fetch_add(n, Ordering::SeqCst),
                    };
                }
            })
        })
        .collect();
    phase.store(VIEWERS, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(3));
    let before = received.load(Ordering::SeqCst);
    let many = span(pid);
    let rate = (received.load(Ordering::SeqCst) - before) as f64 / seconds as f64;
    stop.store(true, Ordering::SeqCst);
    let seen = first.join().unwrap();
    for other in others {
        let _ = other.join();
    }
    let (status, text) = terminate(&mut child, &log);
    let _ = camera.kill();
    let _ = camera.wait();
    assert!(status.success(), "{status:?}\n{text}");

    println!(
        "CPU of skynet: 1 viewer {one:.1} % of a core, {VIEWERS} viewers {many:.1} % ({:.2}x); \
         the other {} viewers received {:.0} kB/s each",
        many / one,
        VIEWERS - 1,
        rate / (VIEWERS - 1) as f64 / 1000.0
    );
    let switches = switches.lock().unwrap().clone();
    for viewers in [1, VIEWERS] {
        let mut latencies: Vec<f64> = seen
            .iter()
            .filter(|(_, _, p)| *p == viewers)
            .filter_map(|(noise, at, _)| {
                // The latest switch to that state before the arrival (same-state switches
                // are 2 * PERIOD_S apart).
                switches
                    .iter()
                    .filter(|(n, ms)| n == noise && ms <= at)
                    .map(|(_, ms)| at - ms)
                    .reduce(f64::min)
            })
            .collect();
        latencies.sort_by(f64::total_cmp);
        println!(
            "source-to-viewer latency with {viewers} viewer(s): p50 {:.0} ms, p95 {:.0} ms, \
             min {:.0} ms, max {:.0} ms over {} switches",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            latencies.first().copied().unwrap_or(f64::NAN),
            latencies.last().copied().unwrap_or(f64::NAN),
            latencies.len()
        );
    }
}
