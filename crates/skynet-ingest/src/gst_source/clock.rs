//! Event time: a file keeps its own timeline (from `start_at` or its modification time),
//! across restarts and loops; a live stream is timed by the wall clock of its capture, where
//! the stream gives it and it is believable, else by its arrival.

use std::time::Duration;

use chrono::{DateTime, Utc};
use gstreamer as gst;
use gstreamer::prelude::*;

use super::GstSource;
use crate::config::is_network_uri;

/// A live frame's time further than this from its arrival is not believed.
const MAX_CLOCK_SKEW_MS: i64 = 10_000;
/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
pub(super) const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

/// A file's timeline, fixed at its first connection and kept across restarts, so a restart
/// neither moves nor repeats event times.
#[derive(Debug, Clone, Copy)]
pub(super) struct FileClock {
    /// Event time of the first frame (of this pass, when looping).
    epoch: DateTime<Utc>,
    /// PTS of the first frame: some containers do not start at 0.
    first_pts: Option<gst::ClockTime>,
    /// PTS of the last frame delivered; a restart skips up to it.
    pub(super) last_pts: Option<gst::ClockTime>,
    /// Event time of the last frame delivered, and the step to the one before: where the
    /// next pass of a looped file starts.
    pub(super) last_time: Option<DateTime<Utc>>,
    step: chrono::Duration,
}

impl FileClock {
    /// The next pass of a looped file starts one frame after this one's last.
    pub(super) fn next_pass(&mut self) {
        if let Some(last) = self.last_time {
            let step = if self.step > chrono::Duration::zero() {
                self.step
            } else {
                chrono::Duration::milliseconds(40)
            };
            self.epoch = last + step;
        }
        self.first_pts = None;
        self.last_pts = None;
    }
}

impl GstSource {
    /// Fixes a file's timeline at its first connection (`uri` resolved); nothing for a
    /// network stream, which follows the wall clock.
    pub(super) fn start_file_clock(&mut self, uri: &str) {
        if !is_network_uri(&self.options.uri) && self.file_clock.is_none() {
            // A file paced like a live camera plays as if it were one: its frames are timed
            // from when it starts, beside the live sources it is fused with. Replayed as fast
            // as possible, it keeps the file's own time, so a replay is the same every run.
            let epoch = self
                .options
                .start_at
                .or_else(|| {
                    if self.options.realtime {
                        None
                    } else {
                        file_mtime(uri)
                    }
                })
                .unwrap_or_else(Utc::now);
            self.file_clock = Some(FileClock {
                epoch,
                first_pts: None,
                last_pts: None,
                last_time: None,
                step: chrono::Duration::zero(),
            });
        }
    }

    /// Event time of a frame with timestamp `pts` (running time), on a connection whose
    /// running time 0 was the wall-clock time `running_zero`; `reference` is the capture time
    /// the stream itself gave (an NTP reference timestamp meta).
    pub(super) fn event_time(
        &mut self,
        pts: Option<gst::ClockTime>,
        running_zero: DateTime<Utc>,
        reference: Option<DateTime<Utc>>,
    ) -> DateTime<Utc> {
        if let Some(clock) = &mut self.file_clock {
            let Some(pts) = pts else {
                return clock.last_time.unwrap_or(clock.epoch);
            };
            let first = *clock.first_pts.get_or_insert(pts);
            let at = offset_time(clock.epoch, pts.saturating_sub(first));
            if let Some(last) = clock.last_time
                && at > last
            {
                clock.step = at - last;
            }
            return at;
        }
        let now = Utc::now();
        let at = reference.or_else(|| pts.map(|pts| offset_time(running_zero, pts)));
        match at {
            // A camera clock far off (never set, wrong zone) must not move its frames hours
            // away: the arrival time is then the better guess.
            Some(at) if (at - now).num_milliseconds().abs() <= MAX_CLOCK_SKEW_MS => at,
            // Without a timestamp the arrival time is the best there is; a fixed fallback
            // would freeze the camera's time.
            _ => now,
        }
    }
}

/// The wall-clock time of a connection's running time 0. With the pipeline on the realtime
/// clock, that is the base time as a wall time: a frame's capture time is that plus its
/// timestamp (which, with RTCP sender reports, rtspsrc's NTP sync has set from the sender's
/// clock). Otherwise, now.
/// A live stream's buffer's event time, as [`GstSource::event_time`] gives it to decoded
/// frames: the sender's clock where given and believable, else the running time on the
/// realtime clock, else the arrival.
pub(crate) fn live_event_time(
    buffer: &gst::BufferRef,
    running_zero: DateTime<Utc>,
) -> DateTime<Utc> {
    let now = Utc::now();
    let at =
        reference_time(buffer).or_else(|| buffer.pts().map(|pts| offset_time(running_zero, pts)));
    match at {
        Some(at) if (at - now).num_milliseconds().abs() <= MAX_CLOCK_SKEW_MS => at,
        _ => now,
    }
}

pub(crate) fn running_zero(pipeline: &gst::Pipeline, realtime: bool) -> DateTime<Utc> {
    realtime
        .then(|| pipeline.base_time())
        .flatten()
        .and_then(|base| i64::try_from(base.nseconds()).ok())
        .map(DateTime::from_timestamp_nanos)
        .unwrap_or_else(Utc::now)
}

/// The capture time a stream gave for this buffer (an NTP reference timestamp meta, from an
/// RFC 7273 clock or, with GStreamer 1.24+, RTCP sender reports).
pub(super) fn reference_time(buffer: &gst::BufferRef) -> Option<DateTime<Utc>> {
    buffer
        .iter_meta::<gst::ReferenceTimestampMeta>()
        .find(|m| {
            m.reference()
                .structure(0)
                .is_some_and(|s| s.name() == "timestamp/x-ntp")
        })
        .and_then(|m| ntp_to_utc(m.timestamp()))
}

pub(super) fn ntp_to_utc(since_1900: gst::ClockTime) -> Option<DateTime<Utc>> {
    let unix = since_1900
        .nseconds()
        .checked_sub(NTP_UNIX_OFFSET_S * 1_000_000_000)?;
    Some(DateTime::from_timestamp_nanos(i64::try_from(unix).ok()?))
}

/// `base + offset`; the wall clock where that is beyond chrono's range (a corrupt timestamp),
/// so time goes on rather than stopping.
fn offset_time(base: DateTime<Utc>, offset: gst::ClockTime) -> DateTime<Utc> {
    chrono::Duration::from_std(Duration::from_nanos(offset.nseconds()))
        .ok()
        .and_then(|d| base.checked_add_signed(d))
        .unwrap_or_else(Utc::now)
}

/// A local file's modification time, when `uri` names one.
fn file_mtime(uri: &str) -> Option<DateTime<Utc>> {
    let (path, _) = gst::glib::filename_from_uri(uri).ok()?;
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(modified.into())
}
