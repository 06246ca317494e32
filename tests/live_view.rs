//! Live view (issue 25 part 2) on the `skynet` binary: an RTSP camera (the tests' own
//! server) served as fragmented MP4 at `/api/v1/cameras/{id}/live.mp4`: `ftyp`, `moov` and
//! fragments that decode; a reader that stops reading is dropped while another keeps
//! receiving; an inspector of another owner gets 404; a camera with privacy masks is
//! transcoded at `live.masked_width` with its masks blurred.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{RtspCamera, eventually, free_port, http_get, live_config_in, metric, terminate};

const PASSWORD: &str = "a long password for tests";

fn skynet(args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(common::skynet_bin())
        .args(args)
        .current_dir(common::repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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

/// A user and an API token for them.
fn token(config: &Path, user: &str, extra: &[&str]) -> String {
    let config = config.to_str().unwrap();
    let mut add = vec!["users", "add", user];
    add.extend_from_slice(extra);
    add.extend_from_slice(&["--config", config]);
    skynet(&add, &format!("{PASSWORD}\n"));
    skynet(&["users", "token", user, "--config", config], "")
}

/// A GET of live.mp4: the status line and headers, and the stream after them.
struct Live {
    stream: TcpStream,
    head: String,
    /// Body bytes read with the head (still chunked).
    rest: Vec<u8>,
}

fn open_live(api: SocketAddr, camera: &str, token: &str, small_buffer: bool) -> Live {
    let stream = TcpStream::connect(api).unwrap();
    if small_buffer {
        // A reader that stops reading fills its socket soon.
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 4096;
        // SAFETY: a valid socket and an int option of the right size.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = stream.try_clone().unwrap();
    write!(
        s,
        "GET /api/v1/cameras/{camera}/live.mp4 HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "closed before the headers: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(chunk[0]);
    }
    Live {
        stream,
        head: String::from_utf8_lossy(&buf).into_owned(),
        rest: Vec::new(),
    }
}

impl Live {
    fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Reads raw bytes; `None` at the end.
    fn fill(&mut self) -> Option<()> {
        let mut buf = [0u8; 16384];
        match self.stream.read(&mut buf) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.rest.extend_from_slice(&buf[..n]);
                Some(())
            }
        }
    }

    /// The next chunk of the chunked body; `None` at its end.
    fn chunk(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(line) = self.rest.windows(2).position(|w| w == b"\r\n") {
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&self.rest[..line]).trim(), 16)
                        .ok()?;
                if size == 0 {
                    return None;
                }
                let start = line + 2;
                while self.rest.len() < start + size + 2 {
                    self.fill()?;
                }
                let data = self.rest[start..start + size].to_vec();
                self.rest.drain(..start + size + 2);
                return Some(data);
            }
            self.fill()?;
        }
    }
}

/// The complete top-level boxes of an MP4 byte stream: their types and the bytes they span.
fn boxes(bytes: &[u8]) -> (Vec<String>, usize) {
    let (mut kinds, mut at) = (Vec::new(), 0);
    while at + 8 <= bytes.len() {
        let size = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if size < 8 || at + size > bytes.len() {
            break;
        }
        kinds.push(String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned());
        at += size;
    }
    (kinds, at)
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

#[test]
fn a_camera_is_served_live_as_fragmented_mp4_and_a_slow_viewer_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let _camera = RtspCamera::start(port);
    let (listen, api) = (free_port(), free_port());
    let cameras = format!(
        r#"
[api]
listen = "{api}"
live = {{ enabled = true, max_viewers_per_camera = 3, max_viewers = 16 }}

[[cameras]]
id = "cam-live"
owner = "city_management"
uri = "rtsp://127.0.0.1:{port}/cam"
grid = "G-0102"
fps = 2.0
"#
    );
    let config = live_config_in(dir.path(), listen, &cameras);
    let operator = token(&config, "op", &["--role", "operator"]);
    let inspector = token(
        &config,
        "insp",
        &[
            "--role",
            "inspector",
            "--department",
            "police-dept",
            "--owner",
            "police",
        ],
    );
    let (mut child, log) = common::spawn_logged(&config, &[]);
    let metrics = || http_get(listen, "/metrics").unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(120), || {
            metric(
                &metrics(),
                "skynet_frames_decoded_total{camera=\"cam-live\"} ",
            ) > 0.0
        }),
        "the camera never decoded:\n{}",
        log.lock().unwrap()
    );

    // An inspector of another owner learns nothing of the camera.
    let other = open_live(api, "cam-live", &inspector, false);
    assert_eq!(other.status(), 404, "{}", other.head);

    // A viewer: ftyp, moov, then fragments of at most 1 s that decode.
    let mut viewer = open_live(api, "cam-live", &operator, false);
    assert_eq!(viewer.status(), 200, "{}", viewer.head);
    assert!(
        viewer
            .head
            .to_ascii_lowercase()
            .contains("content-type: video/mp4"),
        "{}",
        viewer.head
    );
    let mut body = Vec::new();
    let until = Instant::now() + Duration::from_secs(60);
    while count(&boxes(&body).0, "moof") < 5 && Instant::now() < until {
        body.extend(viewer.chunk().expect("the stream goes on"));
    }
    let (kinds, complete) = boxes(&body);
    assert_eq!(&kinds[..2], ["ftyp", "moov"], "{kinds:?}");
    assert!(count(&kinds, "moof") >= 4, "{kinds:?}");
    let file = dir.path().join("live.mp4");
    std::fs::write(&file, &body[..complete]).unwrap();
    let decoded = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", file.display()))
        .args([
            "!",
            "qtdemux",
            "!",
            "h264parse",
            "!",
            "avdec_h264",
            "!",
            "fakesink",
        ])
        .status()
        .unwrap();
    assert!(decoded.success(), "the live MP4 does not decode");

    // A reader that never reads after the headers is dropped; the first viewer keeps
    // receiving fragments meanwhile.
    let slow = open_live(api, "cam-live", &operator, true);
    assert_eq!(slow.status(), 200, "{}", slow.head);
    let fragments = Arc::new(AtomicUsize::new(0));
    let reading = {
        let fragments = Arc::clone(&fragments);
        let done = Arc::new(Mutex::new(false));
        let stop = Arc::clone(&done);
        let handle = std::thread::spawn(move || {
            let mut body = body;
            while !*stop.lock().unwrap() {
                let Some(chunk) = viewer.chunk() else { break };
                body.extend(chunk);
                fragments.store(count(&boxes(&body).0, "moof"), Ordering::SeqCst);
            }
        });
        (handle, done)
    };
    assert!(
        eventually(Duration::from_secs(120), || {
            metric(&metrics(), "skynet_live_dropped_viewers_total ") >= 1.0
        }),
        "the slow viewer was not dropped:\n{}",
        log.lock().unwrap()
    );
    let at_drop = fragments.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(30), || fragments.load(Ordering::SeqCst)
            >= at_drop + 2),
        "the other viewer stopped receiving fragments"
    );
    // The dropped viewer's slot is free again: one viewer watches.
    let viewers = || metric(&metrics(), "skynet_live_viewers{camera=\"cam-live\"} ");
    assert!(
        eventually(Duration::from_secs(30), || viewers() == 1.0),
        "viewers: {}",
        viewers()
    );
    // The camera's cap (3): two more are let in, the next is refused with Retry-After.
    let more: Vec<Live> = (0..2)
        .map(|_| open_live(api, "cam-live", &operator, false))
        .collect();
    assert!(more.iter().all(|l| l.status() == 200));
    let refused = open_live(api, "cam-live", &operator, false);
    assert_eq!(refused.status(), 429, "{}", refused.head);
    assert!(
        refused
            .head
            .to_ascii_lowercase()
            .contains("retry-after: 10"),
        "{}",
        refused.head
    );
    drop(more);
    assert!(
        eventually(Duration::from_secs(30), || viewers() == 1.0),
        "closed viewers still counted: {}",
        viewers()
    );
    *reading.1.lock().unwrap() = true;
    drop(slow);
    let (status, text) = terminate(&mut child, &log);
    assert!(status.success(), "{status:?}\n{text}");
    let _ = reading.0.join();
}

/// Reads a viewer until its body holds `moofs` fragments; the complete boxes' bytes.
fn fragments(viewer: &mut Live, moofs: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let until = Instant::now() + Duration::from_secs(90);
    while count(&boxes(&body).0, "moof") < moofs && Instant::now() < until {
        body.extend(viewer.chunk().expect("the stream goes on"));
    }
    let (kinds, complete) = boxes(&body);
    assert_eq!(&kinds[..2], ["ftyp", "moov"], "{kinds:?}");
    assert!(count(&kinds, "moof") >= moofs, "{kinds:?}");
    body.truncate(complete);
    body
}

/// The width in the `moov`'s visual sample entry (`avc1`).
fn avc1_width(body: &[u8]) -> u32 {
    let stsd = body
        .windows(4)
        .position(|w| w == b"stsd")
        .expect("a sample description");
    let at = stsd
        + body[stsd..]
            .windows(4)
            .position(|w| w == b"avc1")
            .expect("an avc1 sample entry");
    // size(4) type(4) reserved(6) index(2) predefined/reserved(16), then width, height.
    u32::from(u16::from_be_bytes([body[at + 28], body[at + 29]]))
}

#[test]
fn a_masked_camera_is_served_transcoded_with_its_masks_blurred() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().port();
    let _camera = RtspCamera::start(port);
    let (listen, api) = (free_port(), free_port());
    // The same stream twice: one camera plain (remuxed), one with a mask over the left half.
    let cameras = format!(
        r#"
[api]
listen = "{api}"
live = {{ enabled = true, masked_width = 320 }}

[[cameras]]
id = "cam-plain"
owner = "city_management"
uri = "rtsp://127.0.0.1:{port}/cam"
grid = "G-0102"
fps = 2.0

[[cameras]]
id = "cam-masked"
owner = "city_management"
uri = "rtsp://127.0.0.1:{port}/cam"
grid = "G-0101"
fps = 2.0
privacy_masks = [[[0.05, 0.05], [0.45, 0.05], [0.45, 0.95], [0.05, 0.95]]]
"#
    );
    let config = live_config_in(dir.path(), listen, &cameras);
    let operator = token(&config, "op", &["--role", "operator"]);
    let (mut child, log) = common::spawn_logged(&config, &[]);
    let metrics = || http_get(listen, "/metrics").unwrap_or_default();
    assert!(
        eventually(Duration::from_secs(120), || {
            let m = metrics();
            ["cam-plain", "cam-masked"].iter().all(|c| {
                metric(
                    &m,
                    &format!("skynet_frames_decoded_total{{camera=\"{c}\"}} "),
                ) > 0.0
            })
        }),
        "the cameras never decoded:\n{}",
        log.lock().unwrap()
    );
    let (w, h) = (320, 240);
    let mut frames_of = Vec::new();
    for camera in ["cam-plain", "cam-masked"] {
        let mut viewer = open_live(api, camera, &operator, false);
        assert_eq!(viewer.status(), 200, "{camera}: {}", viewer.head);
        let body = fragments(&mut viewer, 3);
        drop(viewer);
        if camera == "cam-masked" {
            // Transcoded at live.masked_width (vtest.avi is 768 wide), not remuxed.
            assert_eq!(avc1_width(&body), 320, "{camera}: not transcoded");
        }
        let file = dir.path().join(format!("{camera}.mp4"));
        std::fs::write(&file, &body).unwrap();
        frames_of.push(common::decode_grey(&file, w, h));
    }
    // The mask's area: its detail blurred away in the masked camera's video, there in the
    // plain one's; outside the mask both keep it.
    let inside = (0.1, 0.1, 0.4, 0.9);
    let outside = (0.55, 0.1, 0.95, 0.9);
    let mean = |frames: &Vec<Vec<u8>>, region| {
        frames
            .iter()
            .map(|f| common::tile_variance(f, w, region))
            .sum::<f64>()
            / frames.len() as f64
    };
    let (plain, masked) = (mean(&frames_of[0], inside), mean(&frames_of[1], inside));
    assert!(
        plain > 20.0,
        "the plain camera's area has detail: {plain:.1}"
    );
    assert!(
        masked < plain * 0.2,
        "local variance in the mask {plain:.1} -> {masked:.1}: not blurred"
    );
    let (plain_out, masked_out) = (mean(&frames_of[0], outside), mean(&frames_of[1], outside));
    assert!(
        masked_out > plain_out * 0.5,
        "outside the mask {plain_out:.1} -> {masked_out:.1}"
    );
    let (status, text) = terminate(&mut child, &log);
    assert!(status.success(), "{status:?}\n{text}");
}

#[test]
fn live_view_is_off_by_default_and_bad_caps_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let load = |api: &str| {
        let path = common::config_in(dir.path(), "", free_port(), &format!("{api}\n"));
        skynet::PipelineConfig::load(&path)
    };
    let config = load("[api]\nlisten = \"127.0.0.1:0\"").unwrap();
    let live = config.api.unwrap().live;
    assert!(!live.enabled);
    assert_eq!((live.max_viewers_per_camera, live.max_viewers), (4, 16));
    assert_eq!(live.masked_width, 640);
    for bad in ["159", "3841"] {
        let e = load(&format!(
            "[api]\nlisten = \"127.0.0.1:0\"\nlive = {{ enabled = true, masked_width = {bad} }}"
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("live.masked_width"), "{e}");
    }
    let e = load("[api]\nlisten = \"127.0.0.1:0\"\nlive = { enabled = true, max_viewers = 0 }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("live.max_viewers"), "{e}");
    let e = load(
        "[api]\nlisten = \"127.0.0.1:0\"\nlive = { enabled = true, max_viewers = 2, max_viewers_per_camera = 3 }",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("live.max_viewers_per_camera"), "{e}");
    let e = load("[api]\nlisten = \"127.0.0.1:0\"\nlive = { enabled = true, viewers = 3 }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("viewers"), "{e}");
}
