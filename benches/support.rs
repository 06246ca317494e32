//! What the camera benchmarks share: 1080p H.264 clips made from vtest.avi with x264enc, the
//! tests' RTSP server sending a clip as it is on many mounts, and CPU time read from /proc.
// Each benchmark uses its part.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common;

/// vtest.avi scaled to 1920x1080 and encoded with x264enc (`veryfast`, 4 Mbit/s, then
/// `x264`'s own settings: the GOP, B-frames) into an MP4 at `path`, `before_scale` elements
/// (each `!`-separated argument) between the decoder and the scaler. Made once: a clip
/// already at `path` is kept.
pub fn clip_1080p(path: &Path, before_scale: &[String], x264: &[String]) -> PathBuf {
    if path.exists() {
        return path.to_path_buf();
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("the clip's folder");
    }
    let partial = path.with_extension("mp4.part");
    println!(
        "  making the 1080p H.264 clip {} with x264enc (once)...",
        path.file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    let mut args: Vec<String> = vec!["600".into(), "gst-launch-1.0".into(), "-q".into()];
    args.push("filesrc".into());
    args.push(format!("location={}", common::media("vtest.avi").display()));
    args.extend(["!".into(), "decodebin".into(), "!".into()]);
    for element in before_scale {
        args.push(element.clone());
    }
    if !before_scale.is_empty() {
        args.push("!".into());
    }
    args.extend(
        [
            "videoconvert",
            "!",
            "videoscale",
            "!",
            "video/x-raw,width=1920,height=1080,format=I420",
            "!",
            "x264enc",
            "speed-preset=veryfast",
            "bitrate=4000",
        ]
        .map(String::from),
    );
    args.extend(x264.iter().cloned());
    args.extend(["!", "h264parse", "!", "mp4mux", "!", "filesink"].map(String::from));
    args.push(format!("location={}", partial.display()));
    let status = Command::new("timeout")
        .args(&args)
        .status()
        .expect("gst-launch-1.0 (gstreamer1.0-tools)");
    assert!(status.success(), "making the clip failed");
    std::fs::rename(&partial, path).expect("rename");
    path.to_path_buf()
}

/// Where clips made once are kept: target/bench-media.
pub fn media_dir() -> PathBuf {
    common::repo().join("target/bench-media")
}

/// GStreamer's RTSP server sending `clip` as it is (no re-encoding) on /cam0 .. /cam{n-1}.
pub struct H264Server {
    child: Child,
    _stdout: std::process::ChildStdout,
}

impl H264Server {
    pub fn start(port: u16, clip: &Path, mounts: usize) -> Self {
        let mut child = Command::new("/usr/bin/python3")
            .arg(common::repo().join("tests/support/rtsp_camera.py"))
            .args([&port.to_string(), clip.to_str().expect("path"), "--h264"])
            .args(["--mounts", &mounts.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tests/support/rtsp_camera.py (python3-gi, gir1.2-gst-rtsp-server-1.0)");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut ready = [0u8; 6];
        stdout.read_exact(&mut ready).expect("ready");
        Self {
            child,
            _stdout: stdout,
        }
    }

    /// The server's CPU seconds so far.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&format!("/proc/{}/stat", self.child.id()))
    }
}

impl Drop for H264Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of a process (all its threads), from its /proc stat file
/// (`/proc/self/stat`: this one).
pub fn cpu_seconds(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    let fields: Vec<&str> = text
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // After the name: state is field 3, utime 14 and stime 15 (1-based), in clock ticks.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf only reads a system setting.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz.max(1.0)
}
