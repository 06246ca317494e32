//! Keeps a source running: restarts it after failures with capped exponential backoff and
//! reports its state through [`ComponentHealth`].

use std::time::{Duration, Instant};

use skynet_core::Shutdown;

use crate::{CameraHealth, FrameOutput, FrameSource, IngestError, SourceExit};

/// How a source is restarted after a failure.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Wait after the first failure.
    pub initial: Duration,
    /// Longest wait: the waits double up to here.
    pub max: Duration,
    /// Failures in a row (without a frame in between) after which the source is given up;
    /// `None` retries for ever.
    pub max_attempts: Option<u32>,
    /// A live source's end of stream is a fault to retry; a file's is the end.
    pub live: bool,
}

/// How often a backoff wait looks at the stop signal, which is a plain flag.
const STOP_POLL: Duration = Duration::from_millis(20);

impl RetryPolicy {
    /// The wait after the `failures`-th failure in a row (from 1): `initial * 2^(failures-1)`,
    /// capped at `max`, then shortened by up to 20 % at random. The jitter keeps cameras that
    /// failed together (one recorder rebooting) from reconnecting in lockstep; it only
    /// shortens, so `max` stays a true bound and each wait is still longer than the one before
    /// until the cap.
    pub fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1);
        let nominal = if doublings >= 32 {
            self.max
        } else {
            self.initial
                .checked_mul(1u32 << doublings)
                .map_or(self.max, |d| d.min(self.max))
        };
        nominal.mul_f64(0.8 + 0.2 * fastrand::f64())
    }
}

/// Runs `source` until it ends for good: restarts it after failures with capped exponential
/// backoff and jitter, reporting through `health` (which `out` should carry, see
/// [`FrameOutput::with_health`], so frames mark the camera running): starting → running on
/// the first frame of each connection → retrying(reason) after a failure → stopped when a file
/// ends, the frame limit is reached or `stop` is triggered; stopped(reason) when it gives up
/// or the next stage has gone.
///
/// For a live source, end of stream is a fault (retried), not the end. A connection that
/// delivered a frame starts the backoff and the attempt count over. Stops within about 20 ms
/// of `stop` during a backoff wait (the source itself checks it every 100 ms). Never retries
/// when the downstream queue is closed: returns [`IngestError::DownstreamClosed`] at once.
///
/// Counts `skynet_source_errors_total{camera}` (each failure) and
/// `skynet_source_restarts_total{camera}` (each restart).
pub fn run_supervised(
    source: &mut dyn FrameSource,
    out: &FrameOutput,
    stop: &Shutdown,
    health: &CameraHealth,
    policy: &RetryPolicy,
) -> Result<SourceExit, IngestError> {
    let camera = source.camera().clone();
    let label = camera.to_string();
    let errors = metrics::counter!("skynet_source_errors_total", "camera" => label.clone());
    let restarts = metrics::counter!("skynet_source_restarts_total", "camera" => label);
    // Failures since the source last delivered a frame.
    let mut failures: u32 = 0;
    loop {
        let connection = out.for_connection();
        let result = source.run(&connection, stop);
        let error = match result {
            Ok(SourceExit::EndOfStream) if policy.live => IngestError::LiveStreamEnded {
                camera: camera.clone(),
            },
            Ok(exit) => {
                health.stopped();
                return Ok(exit);
            }
            Err(IngestError::DownstreamClosed) => {
                // Nothing reads this camera any more: a restart could not help.
                health.failed(IngestError::DownstreamClosed.to_string());
                return Err(IngestError::DownstreamClosed);
            }
            Err(e) => e,
        };
        if stop.is_triggered() {
            // A stream that fails or ends while the process stops is not a fault: tearing it
            // down can itself make it report an error.
            health.stopped();
            return Ok(SourceExit::Stopped);
        }
        errors.increment(1);
        if connection.has_sent() {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let reason = error.to_string();
        if policy.max_attempts.is_some_and(|max| failures > max) {
            tracing::error!(camera = %camera, error = %reason, failures, "source failed; giving up");
            health.failed(reason);
            return Err(error);
        }
        let wait = policy.backoff(failures);
        tracing::warn!(
            camera = %camera,
            error = %reason,
            failures,
            backoff_ms = wait.as_millis() as u64,
            "source failed; restarting after backoff"
        );
        health.retrying(reason);
        if !wait_unless_stopped(wait, stop) {
            health.stopped();
            return Ok(SourceExit::Stopped);
        }
        restarts.increment(1);
        health.reconnecting();
    }
}

/// Sleeps for `wait` in short slices; false when `stop` was triggered meanwhile.
fn wait_unless_stopped(wait: Duration, stop: &Shutdown) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if stop.is_triggered() {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(STOP_POLL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SourceStats;
    use skynet_core::{
        ComponentHealth, ComponentState, ComponentStatus, DeviceId, Frame, FrameImage, FrameInfo,
        OverloadPolicy, PixelOrder, StageReceiver, Watermark, stage_queue,
    };

    /// What one call of [`Scripted::run`] does.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        Fail,
        /// Sends this many frames, then ends as given.
        Frames(u64, SourceExit),
        /// Sends this many frames, then fails.
        FramesThenFail(u64),
        DownstreamGone,
    }

    /// A source that follows a script, one step per `run`, and records what it saw.
    struct Scripted {
        camera: DeviceId,
        steps: Vec<Step>,
        health: ComponentHealth,
        runs: Vec<(Instant, Option<ComponentStatus>)>,
        /// The health just after each run's first frame was sent.
        after_first_frame: Vec<Option<ComponentStatus>>,
        seq: u64,
    }

    impl Scripted {
        fn new(steps: Vec<Step>, health: &ComponentHealth) -> Self {
            Self {
                camera: DeviceId::new("cam-test"),
                steps,
                health: health.clone(),
                runs: Vec::new(),
                after_first_frame: Vec::new(),
                seq: 0,
            }
        }

        fn send(&mut self, out: &FrameOutput, n: u64) -> Result<(), IngestError> {
            for i in 0..n {
                out.send(frame(&self.camera, self.seq))?;
                self.seq += 1;
                if i == 0 {
                    self.after_first_frame.push(self.health.status());
                }
            }
            Ok(())
        }

        fn failure(&self) -> IngestError {
            IngestError::Start {
                camera: self.camera.clone(),
                uri: "rtsp://cam/x".into(),
                reason: "connection refused".into(),
            }
        }
    }

    impl FrameSource for Scripted {
        fn camera(&self) -> &DeviceId {
            &self.camera
        }

        fn run(&mut self, out: &FrameOutput, _stop: &Shutdown) -> Result<SourceExit, IngestError> {
            self.runs.push((Instant::now(), self.health.status()));
            let step = self
                .steps
                .get(self.runs.len() - 1)
                .copied()
                .unwrap_or(Step::Fail);
            match step {
                Step::Fail => Err(self.failure()),
                Step::Frames(n, exit) => {
                    self.send(out, n)?;
                    Ok(exit)
                }
                Step::FramesThenFail(n) => {
                    self.send(out, n)?;
                    Err(self.failure())
                }
                Step::DownstreamGone => Err(IngestError::DownstreamClosed),
            }
        }

        fn stats(&self) -> SourceStats {
            SourceStats {
                decoded: self.seq,
                dropped: 0,
            }
        }
    }

    fn frame(camera: &DeviceId, seq: u64) -> Frame {
        Frame {
            info: FrameInfo {
                camera: camera.clone(),
                seq,
                captured_at: chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(seq as i64),
                decoded_at: Instant::now(),
                skipped: 0,
                width: 1,
                height: 1,
            },
            image: FrameImage {
                width: 1,
                height: 1,
                stride: 3,
                order: PixelOrder::Bgr,
                data: vec![0u8, 0, 0].into(),
            },
        }
    }

    fn output(health: &CameraHealth, live: bool) -> (FrameOutput, StageReceiver<Frame>) {
        let (queue, rx) = stage_queue("frames", "cam-test", 64, OverloadPolicy::Block);
        let out = FrameOutput::new(queue, Watermark::new(live)).with_health(health.clone());
        (out, rx)
    }

    fn new_health() -> (CameraHealth, ComponentHealth) {
        let camera = CameraHealth::detached("cam-test");
        let component = camera.component().clone();
        (camera, component)
    }

    fn policy(initial_ms: u64, max_ms: u64, max_attempts: Option<u32>, live: bool) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(initial_ms),
            max: Duration::from_millis(max_ms),
            max_attempts,
            live,
        }
    }

    fn state(s: &Option<ComponentStatus>) -> (ComponentState, u32) {
        let s = s.as_ref().expect("registered");
        (s.state, s.retries)
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitter_only_shortens() {
        let p = policy(100, 1000, None, true);
        for _ in 0..50 {
            let waits: Vec<Duration> = (1..=8).map(|n| p.backoff(n)).collect();
            for (i, nominal) in [100u64, 200, 400, 800, 1000, 1000, 1000, 1000]
                .iter()
                .enumerate()
            {
                let nominal = Duration::from_millis(*nominal);
                assert!(
                    waits[i] <= nominal && waits[i] >= nominal.mul_f64(0.8),
                    "{waits:?}"
                );
            }
            assert!(waits[..4].windows(2).all(|w| w[1] > w[0]), "{waits:?}");
        }
        // No overflow however long it has failed.
        assert!(p.backoff(u32::MAX) <= Duration::from_secs(1));
        assert!(policy(100, 100_000_000_000, None, true).backoff(200) > Duration::ZERO);
    }

    #[test]
    fn a_failing_source_is_retried_with_capped_backoff_and_reports_retrying_then_up() {
        let (camera_health, health) = new_health();
        let steps = vec![
            Step::Fail,
            Step::Fail,
            Step::Fail,
            Step::Fail,
            Step::Fail,
            Step::Frames(3, SourceExit::EndOfStream),
        ];
        let mut source = Scripted::new(steps, &health);
        let (out, rx) = output(&camera_health, false);
        let p = policy(20, 80, Some(5), false);
        let exit = run_supervised(&mut source, &out, &Shutdown::new(), &camera_health, &p).unwrap();
        assert_eq!(exit, SourceExit::EndOfStream);
        assert_eq!(rx.channel().try_iter().count(), 3);

        // Before each run: starting, then retrying with one more retry each time.
        let seen: Vec<_> = source.runs.iter().map(|(_, s)| state(s)).collect();
        assert_eq!(seen[0], (ComponentState::Starting, 0));
        for (i, s) in seen.iter().enumerate().skip(1) {
            assert_eq!(*s, (ComponentState::Retrying, i as u32));
        }
        let reason = source.runs[1].1.as_ref().and_then(|s| s.reason.clone());
        assert!(reason.unwrap_or_default().contains("connection refused"));
        // Up as soon as the working connection delivered, finished when the file ended.
        assert_eq!(state(&source.after_first_frame[0]), (ComponentState::Up, 0));
        assert_eq!(state(&health.status()), (ComponentState::Finished, 0));

        // The waits grow, then stay at the cap (never above it; jitter takes off up to 20 %).
        let waits: Vec<Duration> = source.runs.windows(2).map(|w| w[1].0 - w[0].0).collect();
        let nominal = [20u64, 40, 80, 80, 80].map(Duration::from_millis);
        let slack = Duration::from_millis(150); // a loaded test machine oversleeps
        for (wait, nominal) in waits.iter().zip(nominal) {
            assert!(*wait >= nominal.mul_f64(0.8), "{waits:?}");
            assert!(*wait <= nominal + slack, "{waits:?}");
        }
    }

    #[test]
    fn a_source_that_keeps_failing_is_given_up_and_reported_down() {
        let (camera_health, health) = new_health();
        let mut source = Scripted::new(vec![], &health);
        let (out, _rx) = output(&camera_health, true);
        let err = run_supervised(
            &mut source,
            &out,
            &Shutdown::new(),
            &camera_health,
            &policy(1, 2, Some(2), true),
        )
        .unwrap_err();
        assert!(matches!(err, IngestError::Start { .. }), "{err}");
        assert_eq!(source.runs.len(), 3, "the first try and two retries");
        let status = health.status().unwrap();
        assert_eq!((status.state, status.retries), (ComponentState::Down, 2));
        assert!(
            status
                .reason
                .unwrap_or_default()
                .contains("connection refused")
        );
    }

    #[test]
    fn a_connection_that_delivered_starts_the_count_over() {
        let (camera_health, health) = new_health();
        let steps = vec![
            Step::Fail,
            Step::Fail,
            Step::FramesThenFail(2),
            Step::Fail,
            Step::Frames(1, SourceExit::FrameLimit),
        ];
        let mut source = Scripted::new(steps, &health);
        let (out, rx) = output(&camera_health, true);
        let exit = run_supervised(
            &mut source,
            &out,
            &Shutdown::new(),
            &camera_health,
            &policy(1, 2, Some(2), true),
        )
        .unwrap();
        assert_eq!(exit, SourceExit::FrameLimit);
        let seqs: Vec<u64> = rx.channel().try_iter().map(|f| f.info.seq).collect();
        assert_eq!(seqs, vec![0, 1, 2]);
        assert_eq!(state(&health.status()), (ComponentState::Finished, 0));
    }

    #[test]
    fn a_live_sources_end_of_stream_is_a_fault_and_a_files_is_the_end() {
        let (camera_health, health) = new_health();
        let ends = vec![Step::Frames(1, SourceExit::EndOfStream); 5];
        let mut live = Scripted::new(ends.clone(), &health);
        let (out, rx) = output(&camera_health, true);
        let err = run_supervised(
            &mut live,
            &out,
            &Shutdown::new(),
            &camera_health,
            &policy(1, 2, Some(0), true),
        )
        .unwrap_err();
        assert!(matches!(err, IngestError::LiveStreamEnded { .. }), "{err}");
        assert_eq!(state(&health.status()).0, ComponentState::Down);
        assert_eq!(rx.channel().try_iter().count(), 1);

        // Retried while attempts remain; each reconnection reports up again.
        let (camera_health, health) = new_health();
        let (out, _rx) = output(&camera_health, true);
        let mut live = Scripted::new(ends[..2].to_vec(), &health);
        let _ = run_supervised(
            &mut live,
            &out,
            &Shutdown::new(),
            &camera_health,
            &policy(1, 2, Some(1), true),
        );
        // Two ends, each after a frame (so the count starts over), then one plain failure
        // (retried once) and a second (given up).
        assert_eq!(live.runs.len(), 3);
        assert!(
            live.after_first_frame
                .iter()
                .all(|s| state(s).0 == ComponentState::Up)
        );

        let (camera_health, health) = new_health();
        let mut file = Scripted::new(ends, &health);
        let (out, _rx) = output(&camera_health, false);
        let exit = run_supervised(
            &mut file,
            &out,
            &Shutdown::new(),
            &camera_health,
            &policy(1, 2, Some(3), false),
        )
        .unwrap();
        assert_eq!(exit, SourceExit::EndOfStream);
        assert_eq!(file.runs.len(), 1);
        assert_eq!(state(&health.status()).0, ComponentState::Finished);
    }

    #[test]
    fn stop_interrupts_a_backoff_wait_promptly() {
        let (camera_health, health) = new_health();
        let mut source = Scripted::new(vec![], &health);
        let (out, _rx) = output(&camera_health, true);
        let stop = Shutdown::new();
        let trigger = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                stop.trigger();
                Instant::now()
            })
        };
        let exit = run_supervised(
            &mut source,
            &out,
            &stop,
            &camera_health,
            &policy(60_000, 60_000, None, true),
        )
        .unwrap();
        let returned = Instant::now();
        let triggered = trigger.join().unwrap();
        assert_eq!(exit, SourceExit::Stopped);
        // The backoff is 60 s: returning well before it ends shows the wait was
        // interrupted. The bound is that contract with room for a loaded machine, not a
        // latency check (how promptly is a matter for a bench).
        assert!(
            returned.duration_since(triggered) < Duration::from_secs(30),
            "took {:?}",
            returned.duration_since(triggered)
        );
        assert_eq!(source.runs.len(), 1);
        assert_eq!(state(&health.status()).0, ComponentState::Finished);
    }

    #[test]
    fn downstream_closed_is_not_retried() {
        // Reported by the source itself...
        let (camera_health, health) = new_health();
        let mut source = Scripted::new(vec![Step::DownstreamGone], &health);
        let (out, _rx) = output(&camera_health, true);
        let err = run_supervised(
            &mut source,
            &out,
            &Shutdown::new(),
            &camera_health,
            &policy(1, 2, None, true),
        )
        .unwrap_err();
        assert!(matches!(err, IngestError::DownstreamClosed));
        assert_eq!(source.runs.len(), 1);
        assert_eq!(state(&health.status()).0, ComponentState::Down);

        // ...or found when sending into a queue nobody reads.
        let (camera_health, health) = new_health();
        let mut source = Scripted::new(vec![Step::Frames(1, SourceExit::EndOfStream); 3], &health);
        let (out, rx) = output(&camera_health, true);
        drop(rx);
        let err = run_supervised(
            &mut source,
            &out,
            &Shutdown::new(),
            &camera_health,
            &policy(1, 2, None, true),
        )
        .unwrap_err();
        assert!(matches!(err, IngestError::DownstreamClosed));
        assert_eq!(source.runs.len(), 1);
    }

    #[test]
    fn frame_output_moves_the_watermark() {
        let (camera_health, _) = new_health();
        let (out, _rx) = output(&camera_health, false);
        assert_eq!(out.watermark().current(), None);
        let camera = DeviceId::new("cam-test");
        out.send(frame(&camera, 5)).unwrap();
        assert_eq!(
            out.watermark().current(),
            Some(chrono::DateTime::UNIX_EPOCH + chrono::Duration::seconds(5))
        );
        assert!(out.has_sent());
    }
}
