//! Event time per source.
//!
//! A source's watermark says "no frame older than this will follow". A file's watermark is the
//! time of its latest frame: it stands still while the file waits, so a replay gives the same
//! result at any speed. A live source's watermark moves with the wall clock while no frame
//! comes (the camera is quiet or gone), so its incidents still close on time.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use chrono::{DateTime, Utc};

#[derive(Debug)]
struct State {
    /// The source has ended: no frame will follow, and a live source stops moving.
    finished: bool,
    /// Event time of the newest frame, or of the start for a live source.
    event: Option<DateTime<Utc>>,
    /// When `event` was taken, for a live source's extrapolation.
    at: Instant,
    /// Event time of the first frame (`skynet eval` measures footage with it).
    first_frame: Option<DateTime<Utc>>,
    /// Event time of the newest frame (a live watermark moves on without frames).
    last_frame: Option<DateTime<Utc>>,
}

/// Shared between a source (which moves it) and the stages that read it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Watermark {
    live: bool,
    state: Arc<Mutex<State>>,
}

impl Watermark {
    /// A live source starts at the wall clock; a file starts with no time at all.
    pub fn new(live: bool) -> Self {
        Self {
            live,
            state: Arc::new(Mutex::new(State {
                finished: false,
                event: live.then(Utc::now),
                at: Instant::now(),
                first_frame: None,
                last_frame: None,
            })),
        }
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// A frame with event time `t` was produced. The watermark never moves back.
    pub fn observe(&self, t: DateTime<Utc>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.first_frame.is_none_or(|first| t < first) {
            s.first_frame = Some(t);
        }
        if s.last_frame.is_none_or(|last| t > last) {
            s.last_frame = Some(t);
        }
        let current = Self::extrapolate(self.live, &s);
        if current.is_none_or(|c| t >= c) {
            s.event = Some(t);
            s.at = Instant::now();
        }
    }

    /// The source has ended for good: the watermark stays where it is from now on, so a
    /// realtime file that ended does not go on closing its incidents by the wall clock.
    pub fn finish(&self) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.event = Self::extrapolate(self.live, &s);
        s.finished = true;
    }

    /// The source has ended for good (see [`finish`](Self::finish)).
    pub fn is_finished(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .finished
    }

    /// The event times of the earliest and the latest frame seen, when any was.
    pub fn frames_span(&self) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.first_frame.zip(s.last_frame)
    }

    /// No frame older than this will follow.
    pub fn current(&self) -> Option<DateTime<Utc>> {
        let s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        Self::extrapolate(self.live, &s)
    }

    fn extrapolate(live: bool, s: &State) -> Option<DateTime<Utc>> {
        let event = s.event?;
        if !live || s.finished {
            return Some(event);
        }
        let elapsed = chrono::Duration::from_std(s.at.elapsed()).unwrap_or_default();
        Some(event + elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_watermark_follows_frames_only() {
        let w = Watermark::new(false);
        assert_eq!(w.current(), None);
        let t = DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(10);
        w.observe(t);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(w.current(), Some(t));
        w.observe(t - chrono::Duration::seconds(1));
        assert_eq!(w.current(), Some(t), "never moves back");
    }

    #[test]
    fn a_finished_live_watermark_stands_still() {
        let w = Watermark::new(true);
        w.finish();
        let a = w.current();
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert_eq!(w.current(), a);
    }

    #[test]
    fn live_watermark_moves_with_the_wall_clock_while_quiet() {
        let w = Watermark::new(true);
        let a = w.current().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(w.current().unwrap() >= a + chrono::Duration::milliseconds(15));
    }
}
