//! Key-frame-only decoding (`keyframes_only`): a buffer probe on the video decoder's sink pad,
//! after the parser, drops every buffer flagged `DELTA_UNIT` while the mode is on, so only key
//! frames are decoded. It works the same for every decoder, hardware ones included. (libav's
//! `skip-frame` has no "non-key" value in GStreamer 1.22: only B-frames, IDCT or everything.)
//!
//! - Event clips and live view are teed off before the decoder (`graph.rs`), so they still get
//!   every encoded frame: only the decode path is thinned.
//! - `auto` measures the key-frame interval from the PTS of successive key frames (every frame
//!   passes while it measures) and turns the mode on while the camera's `fps` is at or below the
//!   key-frame rate, re-deciding at every key frame, so a changed GOP is followed. A switch only
//!   ever happens at a key frame, so the decoder never gets a delta frame without its reference.
//! - While on, the probe also holds the analysis rate itself, on the key frames' own times,
//!   before decoding (surplus key frames are never decoded), and the `videorate` after the
//!   decoder is relaxed to the stream's rate: it never duplicates (`drop-only`), but on its own
//!   grid it would drop a key frame that comes a little early (0.99 s after the last at 1 fps).
//! - Streams without delta flags (MJPEG: every frame is a key frame) decode as before; raw
//!   video has no decoder and no probe.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

use super::graph::Heartbeat;
use crate::config::KeyframesOnly;

/// What reaches a camera's decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeMode {
    /// Every frame.
    Full,
    /// Key frames only.
    Keyframes,
}

impl DecodeMode {
    /// The `mode` label of `skynet_camera_decode_mode`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Keyframes => "keyframes",
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Full => 1,
            Self::Keyframes => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Full),
            2 => Some(Self::Keyframes),
            _ => None,
        }
    }
}

/// `auto` counts a key-frame rate within this fraction above `fps` as "at or below": measured
/// intervals jitter by a few milliseconds on a network stream.
const RATE_TOLERANCE: f64 = 0.1;
/// The key-frame interval is the mean of this many last intervals.
const INTERVALS: usize = 3;

/// `auto`'s choice from the camera's `fps` (`None`: every frame is analysed) and the stream's
/// key-frame interval in seconds (`None`: not measured yet).
pub(crate) fn auto_mode(fps: Option<f64>, key_interval_s: Option<f64>) -> DecodeMode {
    match (fps, key_interval_s) {
        (Some(fps), Some(interval))
            if fps > 0.0 && interval > 0.0 && fps * interval <= 1.0 + RATE_TOLERANCE =>
        {
            DecodeMode::Keyframes
        }
        _ => DecodeMode::Full,
    }
}

/// At most `fps` frames a second on the frames' own times: a frame passes when it falls in a
/// later slot of a grid that starts at the first frame. A frame a quarter period early still
/// counts for its slot, so jitter loses nothing, and the long-run rate never exceeds `fps`.
#[derive(Debug)]
pub(crate) struct RateLimit {
    period_ns: f64,
    origin: Option<u64>,
    last_slot: u64,
    /// The last frame passed.
    last: u64,
}

impl RateLimit {
    pub(crate) fn new(fps: f64) -> Self {
        Self {
            period_ns: 1e9 / fps,
            origin: None,
            last_slot: 0,
            last: 0,
        }
    }

    fn reset(&mut self) {
        self.origin = None;
    }

    /// Whether the frame at `pts` (nanoseconds) passes.
    pub(crate) fn admit(&mut self, pts: u64) -> bool {
        match self.origin {
            Some(origin) if pts >= self.last => {
                let slot = ((pts - origin) as f64 / self.period_ns + 0.25).floor() as u64;
                if slot > self.last_slot {
                    self.last_slot = slot;
                    self.last = pts;
                    true
                } else {
                    false
                }
            }
            // The first frame, or time went back (a new segment): a new grid.
            _ => {
                self.origin = Some(pts);
                self.last_slot = 0;
                self.last = pts;
                true
            }
        }
    }
}

#[derive(Debug)]
struct GateState {
    mode: DecodeMode,
    last_key: Option<u64>,
    intervals: VecDeque<u64>,
    limit: Option<RateLimit>,
}

/// One connection's key-frame gate, shared by the decoder's probe (streaming thread) and the
/// pump (which reports the mode).
#[derive(Debug)]
pub(crate) struct KeyframeGate {
    setting: KeyframesOnly,
    fps: Option<f64>,
    state: Mutex<GateState>,
    /// The current mode, for the pump.
    mode: AtomicU8,
    /// Encoded frames kept from the decoder.
    dropped: AtomicU64,
    /// The analysis rate's caps filter after `videorate`, relaxed while key frames only.
    rate_filter: Option<(glib::WeakRef<gst::Element>, gst::Caps)>,
    heartbeat: Arc<Heartbeat>,
}

impl KeyframeGate {
    /// `rate_filter`: the caps filter that holds `videorate` at `fps`, and its caps.
    pub(crate) fn new(
        setting: KeyframesOnly,
        fps: Option<f64>,
        rate_filter: Option<(&gst::Element, gst::Caps)>,
        heartbeat: Arc<Heartbeat>,
    ) -> Self {
        let fps = fps.filter(|f| f.is_finite() && *f > 0.0);
        let mode = match setting {
            KeyframesOnly::On => DecodeMode::Keyframes,
            KeyframesOnly::Off | KeyframesOnly::Auto => DecodeMode::Full,
        };
        Self {
            setting,
            fps,
            state: Mutex::new(GateState {
                mode,
                last_key: None,
                intervals: VecDeque::with_capacity(INTERVALS),
                limit: fps.map(RateLimit::new),
            }),
            mode: AtomicU8::new(mode.code()),
            dropped: AtomicU64::new(0),
            rate_filter: rate_filter.map(|(e, caps)| (e.downgrade(), caps)),
            heartbeat,
        }
    }

    /// Whether the gate can ever drop a frame: not when off, nor in `auto` without an `fps`
    /// (every frame is analysed, so every frame is decoded).
    pub(crate) fn can_thin(&self) -> bool {
        match self.setting {
            KeyframesOnly::On => true,
            KeyframesOnly::Off => false,
            KeyframesOnly::Auto => self.fps.is_some(),
        }
    }

    pub(crate) fn mode(&self) -> DecodeMode {
        DecodeMode::from_code(self.mode.load(Ordering::Relaxed)).unwrap_or(DecodeMode::Full)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Puts the probe on `decoder`'s sink pad.
    pub(crate) fn attach(self: &Arc<Self>, decoder: &gst::Element) {
        if !self.can_thin() {
            return;
        }
        let Some(pad) = decoder.static_pad("sink") else {
            return;
        };
        if self.mode() == DecodeMode::Keyframes {
            self.relax_rate(DecodeMode::Keyframes);
        }
        let gate = Arc::clone(self);
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            let pass = match info.buffer() {
                Some(buffer) => gate.pass(buffer.flags(), buffer.pts().map(|t| t.nseconds())),
                None => true,
            };
            if pass {
                gst::PadProbeReturn::Ok
            } else {
                // Taken and dropped here: `Drop` leaves GStreamer 1.22 unreffing a pointer
                // gstreamer-rs has already cleared (a CRITICAL per frame; fixed in 1.24.8).
                drop(info.data.take());
                gst::PadProbeReturn::Handled
            }
        });
    }

    /// Whether an encoded frame with `flags` and `pts` goes on to the decoder.
    fn pass(&self, flags: gst::BufferFlags, pts: Option<u64>) -> bool {
        // The stream is alive whether or not this frame is decoded.
        self.heartbeat.beat();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if flags.contains(gst::BufferFlags::DELTA_UNIT) {
            if state.mode == DecodeMode::Keyframes {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            return true;
        }
        if let Some(pts) = pts {
            match state.last_key {
                Some(last) if pts > last => {
                    if state.intervals.len() == INTERVALS {
                        state.intervals.pop_front();
                    }
                    state.intervals.push_back(pts - last);
                }
                // Time went back (a new segment): measure again. The same time again (a
                // header buffer sharing its key frame's) measures nothing.
                Some(last) if pts < last => state.intervals.clear(),
                Some(_) => {}
                None => {}
            }
            state.last_key = Some(pts);
        }
        let mode = match self.setting {
            KeyframesOnly::On => DecodeMode::Keyframes,
            KeyframesOnly::Off => DecodeMode::Full,
            KeyframesOnly::Auto => {
                let interval = (!state.intervals.is_empty()).then(|| {
                    state.intervals.iter().sum::<u64>() as f64 / state.intervals.len() as f64 / 1e9
                });
                auto_mode(self.fps, interval)
            }
        };
        let switched = mode != state.mode;
        if switched {
            state.mode = mode;
            self.mode.store(mode.code(), Ordering::Relaxed);
            if let Some(limit) = &mut state.limit {
                limit.reset();
            }
        }
        let mut pass = true;
        if mode == DecodeMode::Keyframes
            && let (Some(limit), Some(pts)) = (&mut state.limit, pts)
        {
            pass = limit.admit(pts);
        }
        // GStreamer is called with the gate's lock released.
        drop(state);
        if switched {
            self.relax_rate(mode);
        }
        if !pass {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        pass
    }

    /// While key frames only, `videorate` takes the stream's own rate (the probe holds `fps`);
    /// otherwise it holds `fps` again. The caps filter asks `videorate` to renegotiate.
    fn relax_rate(&self, mode: DecodeMode) {
        let Some((filter, caps)) = &self.rate_filter else {
            return;
        };
        let Some(filter) = filter.upgrade() else {
            return;
        };
        let caps = match mode {
            DecodeMode::Keyframes => gst::Caps::builder("video/x-raw").build(),
            DecodeMode::Full => caps.clone(),
        };
        filter.set_property("caps", caps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn auto_decides_from_fps_and_the_key_frame_interval() {
        // A key frame every second: on at 1 fps and below, off above.
        assert_eq!(auto_mode(Some(1.0), Some(1.0)), DecodeMode::Keyframes);
        assert_eq!(auto_mode(Some(0.2), Some(1.0)), DecodeMode::Keyframes);
        assert_eq!(auto_mode(Some(2.0), Some(1.0)), DecodeMode::Full);
        // Jitter of a network stream is within the tolerance.
        assert_eq!(auto_mode(Some(1.0), Some(1.02)), DecodeMode::Keyframes);
        // A 4 s GOP at 1 fps would starve the analysis.
        assert_eq!(auto_mode(Some(1.0), Some(4.0)), DecodeMode::Full);
        // No fps: every frame is analysed; not measured yet: every frame passes.
        assert_eq!(auto_mode(None, Some(1.0)), DecodeMode::Full);
        assert_eq!(auto_mode(Some(1.0), None), DecodeMode::Full);
        assert_eq!(auto_mode(Some(0.0), Some(1.0)), DecodeMode::Full);
    }

    #[test]
    fn the_rate_limit_keeps_jittered_key_frames_and_never_exceeds_fps() {
        let mut limit = RateLimit::new(1.0);
        let jittered = [
            0,
            S - 10_000_000,
            2 * S + 5_000_000,
            3 * S - 8_000_000,
            4 * S,
        ];
        assert!(jittered.iter().all(|&t| limit.admit(t)));
        // Key frames every 0.5 s at 1 fps: one in two.
        let mut limit = RateLimit::new(1.0);
        let kept = (0..20).filter(|i| limit.admit(i * S / 2)).count();
        assert_eq!(kept, 10);
        // Every 0.8 s: 20 s of them give at most 21.
        let mut limit = RateLimit::new(1.0);
        let kept = (0..25).filter(|i| limit.admit(i * 8 * S / 10)).count();
        assert!(kept <= 21, "{kept}");
        // Time going back starts a new grid.
        assert!(limit.admit(S));
    }

    fn gate(setting: KeyframesOnly, fps: Option<f64>) -> KeyframeGate {
        KeyframeGate::new(setting, fps, None, Arc::new(Heartbeat::new()))
    }

    /// 10 frames a second, a key frame every `gop` frames, for `seconds`: which frames pass.
    fn run(gate: &KeyframeGate, gop: u64, seconds: u64) -> Vec<(u64, bool)> {
        (0..seconds * 10)
            .map(|i| {
                let flags = if i % gop == 0 {
                    gst::BufferFlags::empty()
                } else {
                    gst::BufferFlags::DELTA_UNIT
                };
                (i, gate.pass(flags, Some(i * S / 10)))
            })
            .collect()
    }

    #[test]
    fn auto_measures_first_then_passes_only_key_frames_and_follows_a_gop_change() {
        let g = gate(KeyframesOnly::Auto, Some(1.0));
        assert_eq!(g.mode(), DecodeMode::Full);
        let passed = run(&g, 10, 5);
        // The first GOP passes whole while the interval is measured; then key frames only.
        let kept: Vec<u64> = passed.iter().filter(|(_, p)| *p).map(|(i, _)| *i).collect();
        assert_eq!(kept[..10], (0..10).collect::<Vec<_>>()[..]);
        assert_eq!(kept[10..], [10, 20, 30, 40]);
        assert_eq!(g.mode(), DecodeMode::Keyframes);
        assert_eq!(g.dropped(), 36);
        // The GOP grows to 4 s: too few key frames for 1 fps, so full decoding again, from a
        // key frame on.
        let g = gate(KeyframesOnly::Auto, Some(1.0));
        run(&g, 10, 3);
        let mut switched = None;
        for i in 0..120u64 {
            let t = 3 * S + i * S / 10;
            let key = i % 40 == 0;
            let flags = if key {
                gst::BufferFlags::empty()
            } else {
                gst::BufferFlags::DELTA_UNIT
            };
            let pass = g.pass(flags, Some(t));
            if switched.is_none() && g.mode() == DecodeMode::Full {
                switched = Some(i);
                assert!(key && pass);
            }
        }
        assert_eq!(
            switched,
            Some(40),
            "full again at the second key frame 4 s on"
        );
    }

    #[test]
    fn on_off_and_auto_without_fps() {
        let g = gate(KeyframesOnly::On, None);
        assert_eq!(g.mode(), DecodeMode::Keyframes);
        let kept = run(&g, 10, 3).iter().filter(|(_, p)| *p).count();
        assert_eq!(kept, 3);
        // On with an fps below the key-frame rate: the rate is held before decoding.
        let g = gate(KeyframesOnly::On, Some(0.5));
        let kept: Vec<u64> = run(&g, 10, 6)
            .iter()
            .filter(|(_, p)| *p)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(kept, [0, 20, 40]);
        for setting in [KeyframesOnly::Off, KeyframesOnly::Auto] {
            let g = gate(setting, None);
            assert!(!g.can_thin());
            assert!(run(&g, 10, 3).iter().all(|(_, p)| *p));
            assert_eq!(g.mode(), DecodeMode::Full);
        }
        // MJPEG: every frame a key frame; nothing is lost at a rate the camera analyses.
        let g = gate(KeyframesOnly::Auto, None);
        assert!(run(&g, 1, 2).iter().all(|(_, p)| *p));
    }
}
