//! GB/T 28181 (issue 27), each figure against a baseline measured in the same run:
//!
//! - `catalog`: a 10,000-channel catalog as lower platforms send it, GB2312 (GBK on the
//!   wire): `SumNum` 10000 in 500 messages of 20 items (as WVP and Hikvision platforms
//!   split it), and one body of 10,000 items. Time to decode, parse and assemble it (best of
//!   `SKYNET_BENCH_RUNS`, default 5), items/s, and memory: bytes allocated at the peak and
//!   held by the assembled catalog, per item (a counting global allocator). Baseline: the
//!   same catalog in UTF-8, the cost of GB2312 decoding.
//!
//! - `channels`: CPU per channel at 5 frames/s analysis over GB/T 28181 against the same
//!   clip over RTSP, one after the other in this process: `SKYNET_BENCH_CHANNELS` (default
//!   4) channels of a scripted lower platform in this bench (it REGISTERs, answers the
//!   catalog and each INVITE, and streams the 1080p H.264 clip through `mpegpsmux` in real
//!   time as RTP over UDP), then as many RTSP cameras of the tests' RTSP server. The figure
//!   is this process's user + system CPU over `SKYNET_BENCH_CPU_SECONDS` (default 30) after
//!   10 s to settle, less the CPU of the lower platform's RTP sender threads (the RTSP
//!   server is a process of its own); detection is a null detector on both sides.
//!
//! `SKYNET_BENCH_PART=catalog|channels` picks one part.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use skynet::{RunOptions, Services, pipeline};
use skynet_core::{Detection, Shutdown};
use skynet_detect::{DetectError, Detector, ImageView};
use skynet_gb28181::manscdp::{self, Body, Catalog, CatalogAssembler, CatalogItem, ItemStatus};
use skynet_gb28181::sip::{Limits, Message, Method};
use skynet_gb28181::{digest, rtp};

use common::gb28181::{DOMAIN, LOWER, ME, sdp_value};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support.rs"]
mod support;

/// Counts the bytes live on the heap and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                    - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const ITEMS: usize = 10_000;

fn main() {
    let part = std::env::var("SKYNET_BENCH_PART").unwrap_or_else(|_| "all".into());
    println!("skynet GB/T 28181 benchmark");
    if part == "all" || part == "catalog" {
        catalog();
    }
    if part == "all" || part == "channels" {
        channels();
    }
}

/// A platform's tree: 10 business groups ("215"), 100 NVRs ("118") and the rest cameras
/// ("132") with names in Chinese, a maker, coordinates and a status, as real catalogs have.
fn items() -> Vec<CatalogItem> {
    let roads = ["解放路", "人民路", "长江路", "黄山路", "望江路"];
    (0..ITEMS)
        .map(|n| {
            let (kind, parent) = if n < 10 {
                ("215", None)
            } else if n < 110 {
                ("118", Some(format!("3402000000215{:07}", n % 10)))
            } else {
                ("132", Some(format!("3402000000118{:07}", 10 + n % 100)))
            };
            CatalogItem {
                device_id: format!("3402000000{kind}{n:07}"),
                name: format!("{}与{}路口{n}号", roads[n % 5], roads[(n / 5) % 5]),
                manufacturer: Some("Hikvision".into()),
                model: None,
                civil_code: Some("340200".into()),
                parental: Some(kind != "132"),
                parent_id: parent,
                longitude: Some(117.2272 + n as f64 * 1e-5),
                latitude: Some(31.8206 + n as f64 * 1e-5),
                status: if n % 7 == 0 {
                    ItemStatus::Off
                } else {
                    ItemStatus::On
                },
            }
        })
        .collect()
}

/// Decodes, parses and assembles `bodies`; the catalog, the peak of bytes allocated above
/// what was live at the start, and the seconds.
fn assemble(bodies: &[Vec<u8>], limits: &manscdp::Limits) -> (Catalog, usize, f64) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let started = Instant::now();
    let mut assembler = CatalogAssembler::default();
    let mut done = None;
    for body in bodies {
        let Body::Catalog(part) = manscdp::parse(body, limits).expect("a catalog part") else {
            panic!("not a catalog");
        };
        if let Some(c) = assembler.push(part, started).expect("assembled") {
            done = Some(c);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let catalog = done.expect("the whole catalog");
    assert_eq!(catalog.items.len(), ITEMS);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    (catalog, peak, seconds)
}

fn catalog() {
    let runs: usize = std::env::var("SKYNET_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let all = items();
    let parts: Vec<Vec<u8>> = all
        .chunks(20)
        .map(|c| manscdp::catalog_response(1, LOWER, ITEMS as u32, c))
        .collect();
    let single = vec![manscdp::catalog_response(2, LOWER, ITEMS as u32, &all)];
    // The same text in UTF-8 (the declaration still says GB2312, as many devices send it).
    let utf8 = |bodies: &[Vec<u8>]| -> Vec<Vec<u8>> {
        bodies
            .iter()
            .map(|b| {
                manscdp::decode_body(
                    b,
                    &manscdp::Limits {
                        max_body: usize::MAX,
                        ..Default::default()
                    },
                )
                .expect("GB2312")
                .into_bytes()
            })
            .collect()
    };
    assert!(
        std::str::from_utf8(&parts[1]).is_err(),
        "GB2312 on the wire"
    );
    // One body of 10,000 items is over the default 1 MiB body limit: raised for it.
    let wide = manscdp::Limits {
        max_body: 8 * 1024 * 1024,
        ..Default::default()
    };
    let wire = |b: &[Vec<u8>]| b.iter().map(Vec::len).sum::<usize>();
    println!("  catalog of {ITEMS} items (10 groups, 100 NVRs, 9,890 cameras), best of {runs}:");
    println!(
        "    {:<44} {:>10} {:>9} {:>12} {:>12} {:>11} {:>11}",
        "form", "wire bytes", "ms", "items/s", "peak B/item", "held B/item", "wire B/item"
    );
    for (name, bodies, limits) in [
        (
            "GB2312, 500 messages of 20 (SumNum 10000)",
            parts.clone(),
            manscdp::Limits::default(),
        ),
        (
            "UTF-8, 500 messages of 20 (baseline)",
            utf8(&parts),
            manscdp::Limits::default(),
        ),
        ("GB2312, one body of 10,000", single.clone(), wide),
        ("UTF-8, one body of 10,000 (baseline)", utf8(&single), wide),
    ] {
        let mut best = f64::INFINITY;
        let mut peak = 0;
        let mut held = 0;
        for _ in 0..runs {
            let before = LIVE.load(Ordering::Relaxed);
            let (catalog, p, s) = assemble(&bodies, &limits);
            held = LIVE.load(Ordering::Relaxed) - before;
            assert_eq!(catalog.cameras().count(), ITEMS - 110);
            drop(catalog);
            peak = p;
            best = best.min(s);
        }
        println!(
            "    {name:<44} {:>10} {:>9.2} {:>12.0} {:>12.0} {:>11.0} {:>11.0}",
            wire(&bodies),
            best * 1e3,
            ITEMS as f64 / best,
            peak as f64 / ITEMS as f64,
            held as f64 / ITEMS as f64,
            wire(&bodies) as f64 / ITEMS as f64,
        );
    }
}

// ---- channels ----

const PASSWORD: &str = "bench-pw";

/// The 1080p clip of the patrol bench: 10 frames/s, a key frame every second, no B-frames.
fn clip() -> PathBuf {
    support::clip_1080p(
        &support::media_dir().join("vtest-1080p-gop1-nob.mp4"),
        &[],
        &["key-int-max=10".into(), "bframes=0".into()],
    )
}

fn channel_id(n: usize) -> String {
    format!("3402000000132{n:07}")
}

/// Finds nothing.
struct NullDetector;

impl Detector for NullDetector {
    fn detect(&mut self, _image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        Ok(Vec::new())
    }
}

/// This thread's CPU time in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Streams `clip` in MPEG-PS as RTP to `to` in real time until `done`, adding this thread's
/// CPU time to `cpu_ns` as it goes.
fn stream(clip: &Path, to: SocketAddr, ssrc: u32, done: &AtomicBool, cpu_ns: &AtomicU64) {
    let mut gst = Command::new("gst-launch-1.0")
        .args(["-q", "filesrc"])
        .arg(format!("location={}", clip.display()))
        .args([
            "!",
            "qtdemux",
            "!",
            "h264parse",
            "!",
            "identity",
            "sync=true",
            "!",
            "mpegpsmux",
            "!",
            "fdsink",
            "fd=1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("gst-launch-1.0");
    let mut out = gst.stdout.take().expect("stdout");
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut buf = vec![0u8; 64 * 1024];
    let (mut seq, mut ts) = (0u16, 0u32);
    let mut last = thread_cpu_ns();
    while !done.load(Ordering::Relaxed) {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunks: Vec<&[u8]> = buf[..n].chunks(1400).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let pkt = rtp::build_packet(96, seq, ts, ssrc, i + 1 == chunks.len(), chunk);
            let _ = socket.send_to(&pkt, to);
            seq = seq.wrapping_add(1);
        }
        ts = ts.wrapping_add(9000);
        let now = thread_cpu_ns();
        cpu_ns.fetch_add(now - last, Ordering::Relaxed);
        last = now;
    }
    let _ = gst.kill();
    let _ = gst.wait();
}

/// The scripted lower platform: REGISTERs (again until the endpoint listens), answers the
/// catalog query with `n` channels and every INVITE, streaming the clip to each.
fn lower_platform(
    lower: String,
    server: SocketAddr,
    n: usize,
    clip: PathBuf,
    done: Arc<AtomicBool>,
    cpu_ns: Arc<AtomicU64>,
) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let via = format!("UDP {}", socket.local_addr().expect("addr"));
    let recv = || -> Option<Message> {
        let mut buf = vec![0u8; 65_536];
        let n = socket.recv(&mut buf).ok()?;
        Message::parse(&buf[..n], &Limits::default()).ok()
    };
    let mut cseq = 0u32;
    let mut register = |auth: Option<String>| {
        cseq += 1;
        let mut m = Message::request(Method::Register, format!("sip:{ME}@{DOMAIN}"))
            .with_header("Via", format!("SIP/2.0/{via};rport;branch=z9hG4bK{cseq}"))
            .with_header("From", format!("<sip:{lower}@{DOMAIN}>;tag=77"))
            .with_header("To", format!("<sip:{lower}@{DOMAIN}>"))
            .with_header("Call-ID", "reg-1")
            .with_header("CSeq", format!("{cseq} REGISTER"))
            .with_header(
                "Contact",
                format!("<sip:{lower}@{}>", socket.local_addr().expect("addr")),
            )
            .with_header("Expires", "3600");
        if let Some(a) = auth {
            m = m.with_header("Authorization", a);
        }
        let _ = socket.send_to(&m.to_bytes(), server);
    };
    // Registered: a challenge, then the answer.
    loop {
        if done.load(Ordering::Relaxed) {
            return;
        }
        register(None);
        let Some(challenge) = recv() else { continue };
        let Some(h) = challenge.header("WWW-Authenticate").map(str::to_string) else {
            continue;
        };
        let nonce = h
            .split("nonce=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        register(Some(digest::authorization(
            &lower,
            DOMAIN,
            nonce,
            &format!("sip:{ME}@{DOMAIN}"),
            "REGISTER",
            PASSWORD,
            Some(("00000001", "c0ffee")),
        )));
        if recv().and_then(|m| m.status()) == Some(200) {
            break;
        }
    }
    let items: Vec<CatalogItem> = (0..n)
        .map(|i| CatalogItem {
            device_id: channel_id(i),
            name: format!("东门{i}"),
            parental: Some(false),
            status: ItemStatus::On,
            ..Default::default()
        })
        .collect();
    let mut streamers = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let Some(m) = recv() else { continue };
        match m.method() {
            Some(Method::Invite) => {
                let sdp = String::from_utf8_lossy(&m.body).to_string();
                let port: u16 = sdp_value(&sdp, "m=video ")
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|p| p.parse().ok())
                    .expect("m=video PORT");
                let ssrc_text = sdp_value(&sdp, "y=").expect("y= SSRC").to_string();
                let ssrc: u32 = ssrc_text.parse().expect("SSRC");
                let answer = format!(
                    "v=0\r\no={lower} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 15060 RTP/AVP 96\r\na=rtpmap:96 PS/90000\r\na=sendonly\r\ny={ssrc_text}\r\n"
                );
                let ok = Message::response_to(&m, 200, "OK", Some("dev"))
                    .with_body("application/sdp", answer.into_bytes());
                let _ = socket.send_to(&ok.to_bytes(), server);
                let (clip, done, cpu_ns) = (clip.clone(), Arc::clone(&done), Arc::clone(&cpu_ns));
                let to = SocketAddr::from(([127, 0, 0, 1], port));
                streamers.push(std::thread::spawn(move || {
                    stream(&clip, to, ssrc, &done, &cpu_ns)
                }));
            }
            Some(Method::Ack) | None => {}
            Some(_) => {
                let query = String::from_utf8_lossy(&m.body).contains("Catalog");
                let _ = socket.send_to(
                    &Message::response_to(&m, 200, "OK", Some("x")).to_bytes(),
                    server,
                );
                if query {
                    cseq += 1;
                    let body = manscdp::catalog_response(1, &lower, n as u32, &items);
                    let msg = Message::request(Method::Message, format!("sip:{ME}@{DOMAIN}"))
                        .with_header("Via", format!("SIP/2.0/{via};branch=z9hG4bKm{cseq}"))
                        .with_header("From", format!("<sip:{lower}@{DOMAIN}>;tag=78"))
                        .with_header("To", format!("<sip:{ME}@{DOMAIN}>"))
                        .with_header("Call-ID", format!("msg-{cseq}"))
                        .with_header("CSeq", format!("{cseq} MESSAGE"))
                        .with_body("Application/MANSCDP+xml", body);
                    let _ = socket.send_to(&msg.to_bytes(), server);
                }
            }
        }
    }
    for s in streamers {
        let _ = s.join();
    }
}

/// One side's figures: frames decoded per second per camera (min, mean) and this process's
/// CPU (cores) over the window, less the lower platform's senders.
struct Side {
    min_fps: f64,
    mean_fps: f64,
    cpu: f64,
    senders: f64,
}

fn env_f64(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_side(config_text: &str, ids: &[String], sender_cpu: Option<&AtomicU64>) -> Side {
    let settle = 10.0;
    let window = env_f64("SKYNET_BENCH_CPU_SECONDS", 30.0);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = common::pipeline_config(dir.path(), config_text);
    let services = Arc::new(Services::start(None).expect("services"));
    let shutdown = Shutdown::new();
    let options = RunOptions {
        shutdown: shutdown.clone(),
        services: Some(Arc::clone(&services)),
        detectors: Some(vec![Box::new(NullDetector) as Box<dyn Detector>]),
        wait_for_shutdown: true,
        ..Default::default()
    };
    let run = std::thread::spawn(move || pipeline::run(&config, options));
    let decoded = |metrics: &str| -> Vec<f64> {
        ids.iter()
            .map(|id| {
                let head = format!("skynet_frames_decoded_total{{camera=\"{id}\"");
                metrics
                    .lines()
                    .find(|l| l.starts_with(&head))
                    .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0.0)
            })
            .collect()
    };
    std::thread::sleep(Duration::from_secs_f64(settle));
    let senders = |c: Option<&AtomicU64>| c.map_or(0, |c| c.load(Ordering::Relaxed));
    let at = Instant::now();
    let (cpu0, send0) = (support::cpu_seconds("/proc/self/stat"), senders(sender_cpu));
    let before = decoded(&services.metrics.render());
    std::thread::sleep(Duration::from_secs_f64(window));
    let span = at.elapsed().as_secs_f64();
    let cpu = support::cpu_seconds("/proc/self/stat") - cpu0;
    let sent = (senders(sender_cpu) - send0) as f64 / 1e9;
    let after = decoded(&services.metrics.render());
    shutdown.trigger();
    let _ = run.join();
    let fps: Vec<f64> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) / span)
        .collect();
    Side {
        min_fps: fps.iter().copied().fold(f64::INFINITY, f64::min),
        mean_fps: fps.iter().sum::<f64>() / fps.len().max(1) as f64,
        cpu: (cpu - sent) / span,
        senders: sent / span,
    }
}

fn base_config(dir: &Path) -> String {
    let mut text = common::vtest_config(dir, "unused", common::NOBODY, 1);
    text.truncate(text.find("[[cameras]]").expect("a camera table"));
    text
}

fn channels() {
    let n = env_f64("SKYNET_BENCH_CHANNELS", 4.0) as usize;
    let clip = clip();
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "  {n} channels of 1080p H.264 (10 frames/s, GOP 1 s) at 5 frames/s analysis, null detector:"
    );

    // GB/T 28181: a lower platform of `n` channels.
    let sip = common::free_port();
    // A range of its own, above the spare ports tests/common hands out and below the
    // kernel's ephemeral range (where an outgoing connection could hold one).
    let media: u16 = 31_100;
    let lower = LOWER.to_string();
    let mut text = base_config(dir.path());
    text.push_str(&format!(
        "\n[[platforms]]\nkind = \"gb28181\"\nid = \"{ME}\"\ndomain = \"{DOMAIN}\"\nlisten = \"{sip}\"\npassword = \"{PASSWORD}\"\nowner = \"police\"\nkeepalive_timeout_s = 600\nmedia_ports = \"{media}-{}\"\n",
        media + 2 * n as u16
    ));
    let ids: Vec<String> = (0..n).map(channel_id).collect();
    for id in &ids {
        text.push_str(&format!(
            "\n  [[platforms.channels]]\n  id = \"{id}\"\n  grid = \"G-0101\"\n  fps = 5\n"
        ));
    }
    let done = Arc::new(AtomicBool::new(false));
    let sender_cpu = Arc::new(AtomicU64::new(0));
    let platform = {
        let (clip, done, cpu) = (clip.clone(), Arc::clone(&done), Arc::clone(&sender_cpu));
        std::thread::spawn(move || lower_platform(lower, sip, n, clip, done, cpu))
    };
    let gb = run_side(&text, &ids, Some(&sender_cpu));
    done.store(true, Ordering::Relaxed);
    let _ = platform.join();

    // RTSP: the same clip on `n` mounts.
    let port = common::free_port().port();
    let server = support::H264Server::start(port, &clip, n);
    let mut text = base_config(dir.path());
    let ids: Vec<String> = (0..n).map(|i| format!("rtsp{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!(
            "\n[[cameras]]\nid = \"{id}\"\nowner = \"police\"\nuri = \"rtsp://127.0.0.1:{port}/cam{i}\"\ngrid = \"G-0101\"\nfps = 5\n"
        ));
    }
    let rtsp = run_side(&text, &ids, None);
    drop(server);

    println!(
        "    {:<12} {:>22} {:>16} {:>16} {:>20}",
        "transport", "decoded/s (min, mean)", "skynet CPU", "per channel", "channels per 2 cores"
    );
    for (name, side) in [("GB/T 28181", &gb), ("RTSP", &rtsp)] {
        let per = side.cpu / n as f64;
        println!(
            "    {name:<12} {:>10.2} {:>11.2} {:>14.1} % {:>14.2} % {:>20.0}",
            side.min_fps,
            side.mean_fps,
            side.cpu * 100.0,
            per * 100.0,
            2.0 * 0.8 / per.max(1e-6)
        );
    }
    println!(
        "    GB/T 28181 / RTSP CPU per channel: {:.2} (the lower platform's RTP senders, {:.1} % of a core, taken off)",
        gb.cpu / rtsp.cpu.max(1e-9),
        gb.senders * 100.0
    );
}
