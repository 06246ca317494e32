//! `[[platforms]] kind = "gb28181"` (issue 27) against the scripted lower platform of
//! tests/common/gb28181.rs: it REGISTERs (a wrong password gets 403, the right one 401 then
//! 200), answers the catalog query with a GB2312 body, answers the channel's INVITE and streams
//! `videotestsrc ! x264enc ! mpegpsmux` as RTP (PT 96, the SSRC of the INVITE's `y=`) over
//! UDP to the port of the INVITE's SDP; the channel's camera source decodes its frames.
//! When the stream stops, the stalled call is hung up (BYE) and the channel INVITEd again.
//! A lower platform whose keepalives stop goes offline (its call hung up, its channel's runs
//! failing) and comes back when it registers again (a new INVITE, frames again). With
//! `media_transport = "tcp-passive"` / `"tcp-active"` the same RTP comes over TCP (RFC 4571).
//! The whole pipeline (YOLOX nano, a zone rule, the outbox) over a channel streaming vtest.avi
//! finds the people on the walkway, as over RTSP, whether the config or the catalog's
//! position places the channel. A placed channel's `camera_offline` incident stays open
//! across a restart that places it again, and closes once its catalog no longer places it.

mod common;

use std::io::Read as _;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use skynet_core::{OverloadPolicy, Shutdown, Watermark, stage_queue};
use skynet_gb28181::manscdp::{self, CatalogItem};
use skynet_gb28181::rtp;
use skynet_gb28181::sip::{Message, Method};
use skynet_ingest::{CameraHealth, FrameDelivery, FrameOutput, SourceBuildContext, run_supervised};

use common::gb28181::{CHANNEL, DOMAIN, LOWER, Lower, ME, sdp_value};

/// Streams H.264 in MPEG-PS as RTP to `to` until `done`: each chunk of the muxer's output is
/// one RTP packet, the marker on a chunk that ends a read (the end of what the muxer wrote).
fn stream(to: SocketAddr, ssrc: u32, done: Arc<AtomicBool>) {
    stream_udp(TEST_PATTERN, to, ssrc, done);
}

/// The lower platform's camera: a live test pattern, H.264 in MPEG-PS.
const TEST_PATTERN: &[&str] = &[
    "videotestsrc",
    "is-live=true",
    "pattern=ball",
    "!",
    "video/x-raw,width=320,height=240,framerate=15/1",
    "!",
    "x264enc",
    "tune=zerolatency",
    "key-int-max=15",
    "!",
    "mpegpsmux",
];

/// As [`stream`], the MPEG-PS made by the GStreamer pipeline `source`.
fn stream_udp(source: &[&str], to: SocketAddr, ssrc: u32, done: Arc<AtomicBool>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    stream_to(
        source,
        move |pkt: &[u8]| {
            let _ = socket.send_to(pkt, to);
            true
        },
        ssrc,
        done,
    );
}

/// As [`stream_udp`], each RTP packet handed to `send` (false: the receiver has gone).
fn stream_to(
    source: &[&str],
    mut send: impl FnMut(&[u8]) -> bool,
    ssrc: u32,
    done: Arc<AtomicBool>,
) {
    let mut gst = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(source)
        .args(["!", "fdsink", "fd=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0");
    let mut out = gst.stdout.take().unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut seq, mut ts) = (0u16, 0u32);
    while !done.load(Ordering::Relaxed) {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunks: Vec<&[u8]> = buf[..n].chunks(1400).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let pkt = rtp::build_packet(96, seq, ts, ssrc, last, chunk);
            seq = seq.wrapping_add(1);
            if !send(&pkt) {
                done.store(true, Ordering::Relaxed);
            }
        }
        ts = ts.wrapping_add(6000);
    }
    let _ = gst.kill();
    let _ = gst.wait();
}

/// The tests of this file one at a time: they share the lower platform's and the channel's
/// ids, and so their metrics.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The endpoint and the media receiver record from their own threads: a global recorder,
/// one for the process, the one `skynet::pipeline::run` installs (and finds installed).
fn recorder() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        skynet_ingest::init().unwrap();
        skynet_serve::install_metrics().unwrap()
    })
}

#[test]
fn a_lower_platform_registers_and_its_channel_is_decoded() {
    let _serial = serial();
    let metrics = recorder();
    // A wrong password first (403), then the right one; the password comes through `${VAR}`.
    let h = start_harness(
        "password = \"${SKYNET_TEST_GB_PASSWORD_UNSET:-secret-pw}\"\nowner = \"city_management\"\n\
         keepalive_timeout_s = 60\nstall_timeout_s = 3",
        |lower| assert_eq!(lower.register_with("wrong"), 403),
    );
    let camera = h
        .config
        .cameras
        .iter()
        .find(|c| c.id.as_str() == CHANNEL)
        .expect("the channel is a camera");
    assert_eq!(h.config.platforms.len(), 1);
    assert_eq!(camera.owner, skynet_core::OwnerKind::CityManagement);
    assert_eq!(camera.grid.as_str(), "G-0102");
    assert!(camera.is_live());

    // The channel's source INVITEs it (retried by the supervisor until the catalog is in).
    let lower = &h.lower;
    let invite = lower.next_request(Method::Invite);
    let sdp = String::from_utf8_lossy(&invite.body).to_string();
    assert!(sdp.contains("PS/90000"), "{sdp}");
    let (port, ssrc) = answer_invite(lower, &invite, "m=video 15060 RTP/AVP 96");
    assert_eq!(port, h.media);

    let done = Arc::new(AtomicBool::new(false));
    let streamer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || stream(SocketAddr::from(([127, 0, 0, 1], port)), ssrc, done))
    };
    let mut frames = 0;
    while frames < 10 {
        match h.rx.channel().recv_timeout(Duration::from_secs(20)) {
            Ok(frame) => {
                assert_eq!(frame.info.camera.as_str(), CHANNEL);
                assert_eq!((frame.image.width, frame.image.height), (320, 240));
                frames += 1;
            }
            Err(_) => break,
        }
    }
    // The channel stops sending: the stalled call is hung up and the channel INVITEd again.
    done.store(true, Ordering::Relaxed);
    streamer.join().unwrap();
    assert_eq!(frames, 10, "frames of the GB/T 28181 channel");
    let bye = lower.next_request(Method::Bye);
    assert_eq!(bye.call_id().unwrap(), invite.call_id().unwrap());
    lower.send(&Message::response_to(&bye, 200, "OK", None).to_bytes());
    let again = lower.next_request(Method::Invite);
    assert_ne!(again.call_id().unwrap(), invite.call_id().unwrap());
    // A malformed message is refused and counted by why.
    lower.send(b"NOT SIP AT ALL\r\n\r\n");
    wait_for("the refusal counted", || {
        metrics
            .render()
            .contains("skynet_sip_refused_total{reason=\"malformed SIP\"}")
    });
    let stats = h.finish();
    assert!(stats.decoded >= 10);
    let text = metrics.render();
    for line in [
        format!("skynet_platform_up{{platform=\"{LOWER}\"}} 1"),
        format!("skynet_platform_channels{{platform=\"{LOWER}\",status=\"unknown\"}} 1"),
        "skynet_sip_requests_total{method=\"REGISTER\",code=\"403\"} 1".to_string(),
        "skynet_sip_requests_total{method=\"REGISTER\",code=\"200\"} ".to_string(),
        format!("skynet_rtp_packets_lost_total{{camera=\"{CHANNEL}\"}}"),
    ] {
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
}

/// Answers an INVITE with the channel's SDP (`media` its `m=` line and any `a=` lines) and
/// takes its ACK: the port and the SSRC the offer named.
fn answer_invite(lower: &Lower, invite: &Message, media: &str) -> (u16, u32) {
    let sdp = String::from_utf8_lossy(&invite.body).to_string();
    let port: u16 = sdp_value(&sdp, "m=video ")
        .and_then(|m| m.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("m=video PORT");
    let ssrc_text = sdp_value(&sdp, "y=").expect("y= SSRC").to_string();
    let answer = format!(
        "v=0\r\no={CHANNEL} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{media}\r\na=rtpmap:96 PS/90000\r\na=sendonly\r\ny={ssrc_text}\r\n"
    );
    let ok = Message::response_to(invite, 200, "OK", Some("dev"))
        .with_body("application/sdp", answer.into_bytes());
    lower.send(&ok.to_bytes());
    lower.next_request(Method::Ack);
    (port, ssrc_text.parse().unwrap())
}

/// Polls `cond` until it holds (30 s at most).
fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    assert!(
        common::eventually(Duration::from_secs(30), cond),
        "waited 30 s for {what}"
    );
}

/// The scripted lower platform's keepalives, every 500 ms while `alive`, until `quit`.
fn keepalives(
    lower: &Lower,
    alive: Arc<AtomicBool>,
    quit: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    let socket = lower.socket.try_clone().unwrap();
    let (server, via) = (lower.server, lower.via.clone());
    std::thread::spawn(move || {
        let mut sn = 1000;
        while !quit.load(Ordering::Relaxed) {
            if alive.load(Ordering::Relaxed) {
                sn += 1;
                let m = Message::request(Method::Message, format!("sip:{ME}@{DOMAIN}"))
                    .with_header("Via", format!("SIP/2.0/{via};branch=z9hG4bKk{sn}"))
                    .with_header("From", format!("<sip:{LOWER}@{DOMAIN}>;tag=79"))
                    .with_header("To", format!("<sip:{ME}@{DOMAIN}>"))
                    .with_header("Call-ID", format!("ka-{sn}"))
                    .with_header("CSeq", format!("{sn} MESSAGE"))
                    .with_body(
                        "Application/MANSCDP+xml",
                        manscdp::keepalive_notify(sn, LOWER),
                    );
                let _ = socket.send_to(&m.to_bytes(), server);
            }
            // The device's keepalive period.
            std::thread::sleep(Duration::from_millis(500));
        }
    })
}

/// A platform on spare ports with `extra` keys, its channel's camera running supervised, and
/// the lower platform registered with its catalog answered.
struct Harness {
    lower: Lower,
    rx: skynet_core::StageReceiver<skynet_core::Frame>,
    stop: Shutdown,
    health: CameraHealth,
    running: std::thread::JoinHandle<(
        Result<skynet_ingest::SourceExit, skynet_ingest::IngestError>,
        skynet_ingest::SourceStats,
    )>,
    media: u16,
    config: skynet::PipelineConfig,
    _dir: tempfile::TempDir,
}

fn harness(extra: &str) -> Harness {
    start_harness(extra, |_| {})
}

/// As [`harness`], `before_join` done by the lower platform before it registers and
/// answers the catalog. A `password` or `owner` in `extra` replaces the default.
fn start_harness(extra: &str, before_join: impl FnOnce(&mut Lower)) -> Harness {
    let password = match extra.contains("password") {
        true => "",
        false => "password = \"secret-pw\"\n",
    };
    let owner = match extra.contains("owner") {
        true => "",
        false => "owner = \"police\"\n",
    };
    let dir = tempfile::tempdir().unwrap();
    let sip = common::free_port();
    let media = common::free_port().port();
    let base = common::vtest_config(dir.path(), "unused", common::WALKWAY, 1);
    let head = base.split("\n[[cameras]]").next().unwrap();
    let text = format!(
        r#"{head}
[[platforms]]
kind = "gb28181"
id = "{ME}"
domain = "{DOMAIN}"
listen = "{sip}"
{password}{owner}media_ports = "{media}-{media}"
reconnect = {{ initial_backoff_s = 0.2, max_backoff_s = 1 }}
{extra}

  [[platforms.channels]]
  id = "{CHANNEL}"
  grid = "G-0102"
"#
    );
    let config = common::pipeline_config(dir.path(), &text);
    config.platforms[0].config.start().unwrap();
    let camera = config
        .cameras
        .iter()
        .find(|c| c.id.as_str() == CHANNEL)
        .expect("the channel is a camera");
    let mut lower = Lower::new(sip);
    before_join(&mut lower);
    lower.join("secret-pw");
    let delivery = FrameDelivery {
        max_size: Some((320, 240)),
        ..FrameDelivery::default()
    };
    let mut source = camera
        .source
        .build(&SourceBuildContext {
            camera: &camera.id,
            delivery: &delivery,
        })
        .unwrap();
    let (queue, rx) = stage_queue("frames", CHANNEL, 64, OverloadPolicy::DropOldest);
    let stop = Shutdown::new();
    let health = CameraHealth::detached(CHANNEL);
    let out = FrameOutput::new(queue, Watermark::new(true)).with_health(health.clone());
    let policy = camera.source.retry_policy();
    let running = {
        let (stop, health) = (stop.clone(), health.clone());
        std::thread::spawn(move || {
            let exit = run_supervised(source.as_mut(), &out, &stop, &health, &policy);
            (exit, source.stats())
        })
    };
    Harness {
        lower,
        rx,
        stop,
        health,
        running,
        media,
        config,
        _dir: dir,
    }
}

impl Harness {
    /// Waits for `n` frames of the channel.
    fn frames(&self, n: usize) {
        for _ in 0..n {
            let frame = self
                .rx
                .channel()
                .recv_timeout(Duration::from_secs(20))
                .expect("a frame of the GB/T 28181 channel within 20 s");
            assert_eq!(frame.info.camera.as_str(), CHANNEL);
        }
    }

    /// Stops the channel's source: what it counted.
    fn finish(self) -> skynet_ingest::SourceStats {
        self.stop.trigger();
        let (exit, stats) = self.running.join().unwrap();
        assert!(exit.is_ok(), "{exit:?}");
        stats
    }
}

#[test]
fn a_silent_lower_platform_goes_offline_and_its_channel_comes_back_when_it_registers_again() {
    let _serial = serial();
    let metrics = recorder();
    let mut h = harness("keepalive_timeout_s = 5\nstall_timeout_s = 5");
    let up = |v: u8| format!("skynet_platform_up{{platform=\"{LOWER}\"}} {v}\n");
    let (alive, quit) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(false)),
    );
    let keeping = keepalives(&h.lower, Arc::clone(&alive), Arc::clone(&quit));
    let invite = h.lower.next_request(Method::Invite);
    let (port, ssrc) = answer_invite(&h.lower, &invite, "m=video 15060 RTP/AVP 96");
    assert_eq!(port, h.media);
    let done = Arc::new(AtomicBool::new(false));
    let streamer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || stream(SocketAddr::from(([127, 0, 0, 1], port)), ssrc, done))
    };
    h.frames(3);
    assert!(metrics.render().contains(&up(1)));

    // The keepalives stop (the media goes on): after keepalive_timeout_s the platform is
    // offline, its call hung up, and the channel's runs fail until it is back.
    alive.store(false, Ordering::Relaxed);
    let bye = h.lower.next_request(Method::Bye);
    assert_eq!(bye.call_id().unwrap(), invite.call_id().unwrap());
    h.lower
        .send(&Message::response_to(&bye, 200, "OK", None).to_bytes());
    done.store(true, Ordering::Relaxed);
    streamer.join().unwrap();
    assert!(metrics.render().contains(&up(0)), "{}", metrics.render());
    wait_for("the channel's run to fail: not registered", || {
        h.health
            .status()
            .last_error
            .is_some_and(|e| e.contains("not registered"))
    });
    assert_ne!(h.health.state(), skynet_ingest::CameraState::Running);

    // It registers again and keeps alive: up, INVITEd again, frames again.
    assert_eq!(h.lower.register_with("secret-pw"), 200);
    alive.store(true, Ordering::Relaxed);
    wait_for("skynet_platform_up 1", || metrics.render().contains(&up(1)));
    let again = h.lower.next_request(Method::Invite);
    assert_ne!(again.call_id().unwrap(), invite.call_id().unwrap());
    let (port, ssrc) = answer_invite(&h.lower, &again, "m=video 15060 RTP/AVP 96");
    while h.rx.channel().try_recv().is_ok() {}
    let done = Arc::new(AtomicBool::new(false));
    let streamer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || stream(SocketAddr::from(([127, 0, 0, 1], port)), ssrc, done))
    };
    h.frames(3);
    wait_for("the camera running", || {
        h.health.state() == skynet_ingest::CameraState::Running
    });
    done.store(true, Ordering::Relaxed);
    streamer.join().unwrap();
    quit.store(true, Ordering::Relaxed);
    keeping.join().unwrap();
    h.finish();
}

/// Streams the PS as RTP framed by RFC 4571 on `stream` until `done` or it closes.
fn stream_tcp(mut stream: std::net::TcpStream, ssrc: u32, done: Arc<AtomicBool>) {
    use std::io::Write as _;
    stream_to(
        TEST_PATTERN,
        move |pkt: &[u8]| stream.write_all(&rtp::frame_rfc4571(pkt)).is_ok(),
        ssrc,
        done,
    );
}

#[test]
fn media_over_tcp_passive_and_active_is_decoded() {
    let _serial = serial();
    recorder();
    // tcp-passive: skynet listens on the media port; the lower platform connects.
    let h = harness("media_transport = \"tcp-passive\"\nkeepalive_timeout_s = 60");
    let invite = h.lower.next_request(Method::Invite);
    let sdp = String::from_utf8_lossy(&invite.body).to_string();
    assert!(sdp.contains("TCP/RTP/AVP"), "{sdp}");
    assert!(sdp.contains("a=setup:passive"), "{sdp}");
    let (port, ssrc) = answer_invite(
        &h.lower,
        &invite,
        "m=video 15060 TCP/RTP/AVP 96\r\na=setup:active\r\na=connection:new",
    );
    assert_eq!(port, h.media);
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("skynet listens");
    let done = Arc::new(AtomicBool::new(false));
    let streamer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || stream_tcp(tcp, ssrc, done))
    };
    h.frames(5);
    done.store(true, Ordering::Relaxed);
    streamer.join().unwrap();
    h.finish();

    // tcp-active: skynet connects to the address of the answer's SDP.
    let h = harness("media_transport = \"tcp-active\"\nkeepalive_timeout_s = 60");
    let invite = h.lower.next_request(Method::Invite);
    let sdp = String::from_utf8_lossy(&invite.body).to_string();
    assert!(sdp.contains("TCP/RTP/AVP"), "{sdp}");
    assert!(sdp.contains("a=setup:active"), "{sdp}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = listener.local_addr().unwrap().port();
    let (_, ssrc) = answer_invite(
        &h.lower,
        &invite,
        &format!("m=video {ours} TCP/RTP/AVP 96\r\na=setup:passive\r\na=connection:new"),
    );
    listener.set_nonblocking(true).unwrap();
    let mut tcp = None;
    wait_for("skynet to connect", || {
        tcp = listener.accept().ok().map(|(s, _)| s);
        tcp.is_some()
    });
    let tcp = tcp.unwrap();
    tcp.set_nonblocking(false).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let streamer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || stream_tcp(tcp, ssrc, done))
    };
    h.frames(5);
    done.store(true, Ordering::Relaxed);
    streamer.join().unwrap();
    h.finish();
}

/// Issue 27's test: the whole pipeline (the real YOLOX nano detector, the zone rule, the
/// outbox) over a GB/T 28181 channel whose lower platform streams vtest.avi as PS over RTP
/// in real time finds the people on the walkway, as over RTSP: the zone rule's incident is
/// stored for the channel's camera (its 20-digit id).
#[test]
fn the_pipeline_finds_people_in_vtest_over_a_gb28181_channel() {
    finds_people_in_vtest(Placement::Config);
}

/// A channel the config does not place (its table has zones and rules, no `grid`) is placed
/// by its catalog position while running, and analysed as one the config places; a channel
/// with no position is listed, not analysed.
#[test]
fn a_channel_placed_by_its_catalog_position_is_analysed_while_running() {
    finds_people_in_vtest(Placement::Catalog);
}

/// Where the channel's cell comes from.
#[derive(PartialEq)]
enum Placement {
    /// `grid = "G-0102"` in its `[[platforms.channels]]` table.
    Config,
    /// Its catalog `Longitude`/`Latitude`, inside G-0102.
    Catalog,
}

/// Inside G-0102 of configs/demo-grids.geojson.
const G_0102_POSITION: (f64, f64) = (114.052, 22.5425);
/// A second channel of the catalog, with no position.
const UNPLACED: &str = "34020000001320000002";

fn finds_people_in_vtest(placement: Placement) {
    let _serial = serial();
    recorder();
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let sip = common::free_port();
    let media = common::free_port().port();
    let walkway = common::WALKWAY;
    let grid = match placement {
        Placement::Config => "grid = \"G-0102\"",
        Placement::Catalog => "",
    };
    let text = pipeline_with_platform(
        dir.path(),
        sip,
        media,
        &format!(
            r#"
  [[platforms.channels]]
  id = "{CHANNEL}"
  {grid}

    [[platforms.channels.zones]]
    name = "zone"
    polygon = {walkway}

    [[platforms.channels.rules]]
    name = "zone-rule"
    kind = "zone_intrusion"
    zone = "zone"
    labels = ["person"]
    min_frames = 3
    cooldown_s = 2.0

  [[platforms.channels]]
  id = "{UNPLACED}"
"#
        ),
    );
    let config = common::pipeline_config(dir.path(), &text);
    let placed_before = placed_total();
    match placement {
        Placement::Config => assert_eq!(config.cameras.len(), 1, "the channel is the only camera"),
        Placement::Catalog => assert!(config.cameras.is_empty(), "placed while running"),
    }
    let position = (placement == Placement::Catalog).then_some(G_0102_POSITION);
    let items = [
        CatalogItem {
            device_id: CHANNEL.into(),
            name: "东门".into(),
            parental: Some(false),
            longitude: position.map(|p| p.0),
            latitude: position.map(|p| p.1),
            ..Default::default()
        },
        CatalogItem {
            device_id: UNPLACED.into(),
            name: "西门".into(),
            parental: Some(false),
            ..Default::default()
        },
    ];
    // The endpoint listens before the lower platform registers (the pipeline's start of it
    // finds it running).
    config.platforms[0].config.start().unwrap();
    // As `skynet run` serves: channels are placed by their catalog only then.
    let options = skynet::RunOptions {
        wait_for_shutdown: true,
        ..Default::default()
    };
    let shutdown = options.shutdown.clone();
    let vtest = format!("location={}", common::media("vtest.avi").display());
    let vtest_ps: Vec<&str> = vec![
        "filesrc",
        &vtest,
        "!",
        "decodebin",
        "!",
        "videoconvert",
        "!",
        // In real time, as a camera sends it.
        "clocksync",
        "!",
        "x264enc",
        "tune=zerolatency",
        "key-int-max=10",
        "!",
        "mpegpsmux",
    ];
    let outbox = dir.path().join("outbox.sqlite");
    std::thread::scope(|scope| {
        let pipeline = scope.spawn(|| skynet::pipeline::run(&config, options));

        let mut lower = Lower::new(sip);
        lower.join_with("secret-pw", &items);
        let invite = lower.next_request(Method::Invite);
        // The placed channel's, never the one without a position.
        assert!(
            invite
                .header("Subject")
                .is_some_and(|s| s.starts_with(CHANNEL)),
            "{:?}",
            invite.header("Subject")
        );
        let (port, ssrc) = answer_invite(&lower, &invite, "m=video 15060 RTP/AVP 96");
        assert_eq!(port, media);
        let done = Arc::new(AtomicBool::new(false));
        let streamer = {
            let done = Arc::clone(&done);
            let to = SocketAddr::from(([127, 0, 0, 1], port));
            scope.spawn(move || stream_udp(&vtest_ps, to, ssrc, done))
        };

        // The zone rule's incident for the channel's camera (or the pipeline ended on its
        // own), then the pipeline stops.
        let found = common::eventually(Duration::from_secs(60), || {
            pipeline.is_finished()
                || common::stored_events(dir.path())
                    .iter()
                    .any(|e| e.data.camera.as_str() == CHANNEL)
        });
        shutdown.trigger();
        done.store(true, Ordering::Relaxed);
        streamer.join().unwrap();
        let summary = pipeline.join().unwrap().unwrap();
        assert!(found, "no incident of {CHANNEL} within 60 s: {summary:?}");
        assert!(summary.frames_analysed > 0, "{summary:?}");
    });

    let events = skynet_emit::Outbox::open(&outbox)
        .unwrap()
        .events()
        .unwrap();
    let incident = &events.first().expect("an incident").data;
    assert_eq!(incident.camera.as_str(), CHANNEL);
    assert_eq!(incident.category, "restricted_area_intrusion");
    assert_eq!(incident.grid.as_str(), "G-0102");
    assert_eq!(incident.owner, skynet_core::OwnerKind::CityManagement);
    assert_eq!(incident.rule.zone.as_deref(), Some("zone"));
    assert!(
        !incident.detections.is_empty()
            && incident
                .detections
                .iter()
                .all(|d| d.label == "person" && d.score >= 0.5),
        "{incident:#?}"
    );
    assert!(events.iter().all(|e| e.data.camera.as_str() == CHANNEL));
    if placement == Placement::Catalog {
        assert!(placed_total() > placed_before, "{}", placed_total());
    }
}

/// A channel placed by its catalog position that goes offline (its INVITEs refused) opens
/// `camera_offline`; after a restart the incident stays open (the channel may be placed
/// again) until the catalog no longer places it (its position gone): then it closes.
#[test]
fn a_placed_channels_offline_incident_closes_when_the_catalog_no_longer_places_it() {
    let _serial = serial();
    recorder();
    let _ = common::runtime();
    let dir = tempfile::tempdir().unwrap();
    let sip = common::free_port();
    let media = common::free_port().port();
    let channel =
        format!("\n  [[platforms.channels]]\n  id = \"{CHANNEL}\"\n  offline_after_s = 1\n");
    let text = pipeline_with_platform(dir.path(), sip, media, &channel);
    let config = common::pipeline_config(dir.path(), &text);
    config.platforms[0].config.start().unwrap();
    let item = |position: Option<(f64, f64)>| CatalogItem {
        device_id: CHANNEL.into(),
        name: "东门".into(),
        parental: Some(false),
        longitude: position.map(|p| p.0),
        latitude: position.map(|p| p.1),
        ..Default::default()
    };
    let offline = |status: &str| {
        common::stored_events(dir.path()).iter().any(|e| {
            e.data.camera.as_str() == CHANNEL
                && e.data.category == "camera_offline"
                && format!("{:?}", e.data.status) == status
        })
    };
    // One run of the pipeline until `until` holds (or it ends): whether it held.
    let run_until = |until: &dyn Fn() -> bool| {
        let options = skynet::RunOptions {
            wait_for_shutdown: true,
            ..Default::default()
        };
        let stop = options.shutdown.clone();
        std::thread::scope(|scope| {
            let pipeline = scope.spawn(|| skynet::pipeline::run(&config, options));
            let held = common::eventually(Duration::from_secs(60), || {
                pipeline.is_finished() || until()
            });
            stop.trigger();
            pipeline.join().unwrap().unwrap();
            held && until()
        })
    };

    // The lower platform's catalog places the channel; every INVITE of it is refused.
    let mut lower = Lower::new(sip);
    lower.join_with("secret-pw", &[item(Some(G_0102_POSITION))]);
    let done = Arc::new(AtomicBool::new(false));
    let refusing = refuse_invites(&lower, Arc::clone(&done));
    assert!(
        run_until(&|| offline("Opened")),
        "no camera_offline for the placed channel"
    );

    // Restarted (the lower platform stays registered, its catalog as it was): placed again,
    // and its incident was not closed at the start.
    let placed_before = placed_total();
    assert!(
        run_until(&|| placed_total() > placed_before),
        "not placed again"
    );
    assert!(!offline("Closed"), "closed at the start");

    // Its catalog comes without the channel's position; restarted, it is not placed, and
    // its incident closes.
    lower.message(manscdp::catalog_response(2, LOWER, 1, &[item(None)]));
    assert!(
        run_until(&|| offline("Closed")),
        "the camera_offline incident did not close"
    );
    done.store(true, Ordering::Relaxed);
    refusing.join().unwrap();
    let revisions: Vec<String> = common::stored_events(dir.path())
        .iter()
        .filter(|e| e.data.category == "camera_offline")
        .map(|e| format!("{:?}", e.data.status))
        .collect();
    assert_eq!(revisions, ["Opened", "Closed"], "{revisions:?}");
}

/// The vtest config's pipeline without its camera, and a platform on `sip` whose media
/// comes to port `media`, with `channels` (its `[[platforms.channels]]` tables).
fn pipeline_with_platform(
    dir: &std::path::Path,
    sip: SocketAddr,
    media: u16,
    channels: &str,
) -> String {
    let base = common::vtest_config(dir, "unused", common::WALKWAY, 1);
    let head = base.split("\n[[cameras]]").next().unwrap();
    // (No keepalives come from the scripted lower platform in these tests.)
    format!(
        r#"{head}
[[platforms]]
kind = "gb28181"
id = "{ME}"
domain = "{DOMAIN}"
listen = "{sip}"
password = "secret-pw"
owner = "city_management"
keepalive_timeout_s = 600
media_ports = "{media}-{media}"
reconnect = {{ initial_backoff_s = 0.2, max_backoff_s = 1 }}
{channels}"#
    )
}

/// `skynet_platform_channels_placed_total` of the platform, in this process.
fn placed_total() -> f64 {
    let prefix = format!("skynet_platform_channels_placed_total{{platform=\"{ME}\"}} ");
    recorder()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Answers each INVITE with 404 and any other request with 200, until `done`.
fn refuse_invites(lower: &Lower, done: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let socket = lower.socket.try_clone().unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let server = lower.server;
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        while !done.load(Ordering::Relaxed) {
            let Ok(n) = socket.recv(&mut buf) else {
                continue;
            };
            let Ok(m) = Message::parse(&buf[..n], &skynet_gb28181::sip::Limits::default()) else {
                continue;
            };
            let answer = match m.method() {
                Some(Method::Invite) => Message::response_to(&m, 404, "Not Found", Some("r")),
                Some(Method::Ack) | None => continue,
                Some(_) => Message::response_to(&m, 200, "OK", Some("r")),
            };
            let _ = socket.send_to(&answer.to_bytes(), server);
        }
    })
}

fn platform_config(platform: &str) -> String {
    let base = common::vtest_config(&std::env::temp_dir(), "cam", common::WALKWAY, 10);
    format!("{base}\n{platform}")
}

const PLATFORM: &str = r#"[[platforms]]
kind = "gb28181"
id = "34020000002000000001"
domain = "3402000000"
listen = "127.0.0.1:15060"
password = "pw"
owner = "police"
channels = ["34020000001320000009"]
keepalive_timeout_s = 60
media_ports = "30000-30100"
"#;

fn error_for(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    match skynet::PipelineConfig::load(&path) {
        Ok(_) => panic!("config was accepted:\n{text}"),
        Err(e) => e
            .to_string()
            .replace(&path.display().to_string(), "bad.toml"),
    }
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn platform_tables_are_checked_where_they_are_written() {
    // A channel given by its id alone is listed, not analysed: no camera for it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, platform_config(PLATFORM)).unwrap();
    let config = skynet::PipelineConfig::load(&path).unwrap();
    assert_eq!(config.platforms.len(), 1);
    assert_eq!(config.cameras.len(), 1);
    let channels = config.platforms[0].config.channels();
    assert_eq!(channels.len(), 1);
    assert!(!channels[0].is_analysed());

    let text = platform_config(&PLATFORM.replace("id = \"34020000002000000001\"", "id = \"3402\""));
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!("bad.toml:{}:6: ", line_of(&text, "id = \"3402\""))),
        "{e}"
    );
    assert!(e.contains("20-digit"), "{e}");

    let text = platform_config(&PLATFORM.replace("30000-30100", "30100-30000"));
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!("bad.toml:{}:15: ", line_of(&text, "media_ports"))),
        "{e}"
    );
    assert!(e.contains("FIRST <= LAST"), "{e}");

    let text = platform_config(&format!("{PLATFORM}media_transport = \"tcp\"\n"));
    let e = error_for(&text);
    assert!(
        e.starts_with(&format!("bad.toml:{}:", line_of(&text, "media_transport"))),
        "{e}"
    );
    assert!(e.contains("tcp-passive"), "{e}");

    let text = platform_config(&PLATFORM.replace("127.0.0.1:15060", "0.0.0.0:15060"));
    let e = error_for(&text);
    assert!(e.contains("media_ip"), "{e}");

    let text = platform_config(&PLATFORM.replace(
        "password = \"pw\"",
        "password = \"${SKYNET_TEST_UNSET_GB_PW}\"",
    ));
    let e = error_for(&text);
    assert!(e.contains("SKYNET_TEST_UNSET_GB_PW"), "{e}");

    let text = platform_config(&PLATFORM.replace(
        "channels = [\"34020000001320000009\"]",
        "channels = [\"34020000001320000009\", \"123\"]",
    ));
    let e = error_for(&text);
    assert!(e.contains("a channel id must have 20 digits"), "{e}");

    // Two platforms with one id.
    let second = PLATFORM.replace("15060", "15061");
    let text = platform_config(&format!("{PLATFORM}\n{second}"));
    let e = error_for(&text);
    assert!(e.contains("two platforms have the id"), "{e}");
    let second_id = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("id = \"34020000002000000001\""))
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert!(e.starts_with(&format!("bad.toml:{second_id}:6: ")), "{e}");

    // A placed channel whose grid is unknown points at its own table.
    let placed = format!(
        "{}\n  [[platforms.channels]]\n  id = \"34020000001320000001\"\n  grid = \"nowhere\"\n",
        PLATFORM.replace("channels = [\"34020000001320000009\"]\n", "")
    );
    let text = platform_config(&placed);
    let e = error_for(&text);
    assert!(e.contains("unknown grid `nowhere`"), "{e}");
    assert!(
        e.starts_with(&format!(
            "bad.toml:{}:",
            line_of(&text, "grid = \"nowhere\"")
        )),
        "{e}"
    );
    assert!(!e.contains("pw\""), "{e}");

    // A channel left to its catalog position has its keys checked at load all the same,
    // where they are written.
    let unplaced = format!(
        "{}\n  [[platforms.channels]]\n  id = \"34020000001320000001\"\n  fps = 0\n",
        PLATFORM.replace("channels = [\"34020000001320000009\"]\n", "")
    );
    let text = platform_config(&unplaced);
    let e = error_for(&text);
    assert!(e.contains("fps"), "{e}");
    assert!(
        e.starts_with(&format!("bad.toml:{}:", line_of(&text, "fps = 0"))),
        "{e}"
    );
}
