//! Event clips' cost (issue 25 part 1), each against a baseline measured in the same run:
//!
//! - CPU of the process running one RTSP camera (the tests' server: 384x288 H.264, 10 fps)
//!   for `SKYNET_BENCH_CLIPS_S` seconds (default 20), detector doing nothing, clips off and
//!   clips on (the tee, parser and ring).
//! - Writing one clip from that camera's ring: remuxed as it is, and decoded, blurred in a
//!   half-frame privacy mask and re-encoded with x264 (a masked camera's clip).
//!
//! `cargo bench --bench clips`; `SKYNET_BENCH_CLIP=FILE.mp4` adds a camera sending that
//! H.264 MP4 as it is (a 1080p one: `target/bench-media/vtest-1080p.mp4`, which
//! `cargo bench --bench cameras` makes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use skynet::{RunOptions, pipeline};
use skynet_core::{Detection, DeviceId, Shutdown};
use skynet_detect::{DetectError, Detector, ImageView};
use skynet_ingest::clips::{EncodedRing, MaskBlur, write_clip};

#[path = "../tests/common/mod.rs"]
mod common;

struct Nothing;

impl Detector for Nothing {
    fn detect(&mut self, _image: &ImageView<'_>) -> Result<Vec<Detection>, DetectError> {
        Ok(Vec::new())
    }
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn run(port: u16, clips: bool, seconds: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let base = common::vtest_config(dir.path(), "unused", common::NOBODY, 1);
    let head = base.split("\n[[cameras]]").next().unwrap().replace(
        "[evidence]\n",
        &format!(
            "[evidence]\nclips = {{ enabled = {clips}, pre_s = 5, post_s = 10, max_s = 60 }}\n"
        ),
    );
    let text = format!(
        "{head}\n[[cameras]]\nid = \"cam\"\nowner = \"city_management\"\nuri = \"rtsp://127.0.0.1:{port}/cam\"\ngrid = \"G-0102\"\nfps = 5\n"
    );
    let config = common::pipeline_config(dir.path(), &text);
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let timer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(seconds));
        stop.trigger();
    });
    let before = cpu_seconds();
    pipeline::run(
        &config,
        RunOptions {
            shutdown,
            detectors: Some(vec![
                Box::new(Nothing) as Box<dyn Detector>,
                Box::new(Nothing) as Box<dyn Detector>,
            ]),
            ..RunOptions::default()
        },
    )
    .unwrap();
    timer.join().unwrap();
    cpu_seconds() - before
}

/// The tests' RTSP server; with `h264`, sending that MP4 as it is (no re-encoding).
fn server(port: u16, h264: Option<&std::path::Path>) -> std::process::Child {
    use std::io::Read;
    let mut command = std::process::Command::new("/usr/bin/python3");
    command.arg(common::repo().join("tests/support/rtsp_camera.py"));
    command.arg(port.to_string());
    match h264 {
        Some(clip) => command.arg(clip).arg("--h264"),
        None => command.arg(common::media("vtest.avi")),
    };
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("tests/support/rtsp_camera.py");
    let mut ready = [0u8; 6];
    child
        .stdout
        .take()
        .expect("stdout")
        .read_exact(&mut ready)
        .expect("ready");
    child
}

fn main() {
    let seconds: u64 = std::env::var("SKYNET_BENCH_CLIPS_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    // SKYNET_BENCH_CLIP: an H.264 MP4 (1080p, say) served as it is, beside the tests' camera.
    let big = std::env::var_os("SKYNET_BENCH_CLIP").map(std::path::PathBuf::from);
    let mut sources = vec![("384x288 H.264 (tests' camera)".to_string(), None)];
    if let Some(big) = &big {
        sources.push((big.display().to_string(), Some(big.as_path())));
    }
    for (name, h264) in sources {
        let port = common::free_port().port();
        let mut camera = server(port, h264);
        // Alternating, best of two each: the machine's noise is of the order of the cost.
        let (mut off, mut on) = (f64::MAX, f64::MAX);
        for _ in 0..2 {
            off = off.min(run(port, false, seconds));
            on = on.min(run(port, true, seconds));
        }
        println!(
            "one RTSP camera ({name}, 5 fps analysed), {seconds} s: CPU {off:.2} s clips off, {on:.2} s clips on ({:+.1} %)",
            (on / off - 1.0) * 100.0
        );
        let _ = camera.kill();
        let _ = camera.wait();
    }

    // The last camera's ring.
    let Some(ring) = EncodedRing::existing(&DeviceId::new("cam")) else {
        println!("no ring: clips were not on");
        return;
    };
    let now = chrono::Utc::now();
    let Some((caps, units)) = ring.extract(now - chrono::Duration::seconds(3600), now) else {
        println!("the ring is empty");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let masks = vec![vec![[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]];
    let blur: MaskBlur = Arc::new(move |w, h, stride, data: &mut [u8]| {
        let row = w as usize * 3;
        let mut packed = Vec::with_capacity(row * h as usize);
        for y in 0..h as usize {
            packed.extend_from_slice(&data[y * stride..y * stride + row]);
        }
        let mut image = image::RgbImage::from_raw(w, h, packed).unwrap();
        skynet_snapshot::blur_polygons(&mut image, &masks);
        for (y, line) in image.as_raw().chunks_exact(row).enumerate() {
            data[y * stride..y * stride + row].copy_from_slice(line);
        }
    });
    let span = (units.last().unwrap().at - units[0].at).num_milliseconds() as f64 / 1000.0;
    for (name, blur) in [("remux", None), ("masked (decode, blur, x264)", Some(blur))] {
        let (cpu, wall) = (cpu_seconds(), Instant::now());
        write_clip(&caps, &units, &dir.path().join("clip.mp4"), blur).unwrap();
        println!(
            "clip of {span:.1} s ({} units), {name}: {:.2} s wall, {:.2} CPU-s",
            units.len(),
            wall.elapsed().as_secs_f64(),
            cpu_seconds() - cpu
        );
    }
}
