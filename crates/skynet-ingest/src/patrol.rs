//! Patrol rounds (視頻輪巡): the `[[patrols]]` table, and the scheduler that visits each of a
//! patrol's cameras in turn, at most `max_concurrent` at once, a new round every `every_s`.
//!
//! The scheduler knows nothing of how a camera is opened or analysed: a [`Visitor`] does
//! that (the pipeline's opens the camera's source, lets the rules look for `dwell_s` and
//! closes it). A camera that is offline ends its visit early and frees its slot at once, so
//! it never delays the others.
//!
//! Rounds are numbered by time: round `n` starts at `n × every_s` seconds after the Unix
//! epoch (the first at the next such instant after the start). A round that starts late,
//! after one that overran, takes the next number not yet used. A round's number is always at
//! most its start over `every_s`, so a restarted process never reuses an id.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::{
    DeviceId, FieldError, GridId, LookStatus, OwnerKind, PatrolLook, PatrolRound, Shutdown,
    validate_id,
};

/// The connect time [`round_estimate`] assumes: 0.5 s, what a visit took beyond its dwell
/// (connect, first key frame, close) in `benches/patrol.rs` (0.3 to 0.5 s on 1080p RTSP
/// cameras with a 1 s GOP, 16 open at once on 2 cores).
pub const ESTIMATED_CONNECT: Duration = Duration::from_millis(500);

/// One `[[patrols]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatrolConfig {
    /// What cameras name in their `patrol` key; an id (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// A round starts every this many seconds (1 to 86400).
    pub every_s: f64,
    /// How long each camera is analysed once open, in seconds (0.1 to 3600).
    pub dwell_s: f64,
    /// Cameras open at once (1 to 1024). Default 1.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Rounds in a row a camera must be offline before it opens `camera_offline` (1 to
    /// 1000); a checked round closes it. Default 2.
    #[serde(default = "default_offline_after_rounds")]
    pub offline_after_rounds: u32,
}

fn default_max_concurrent() -> usize {
    1
}

fn default_offline_after_rounds() -> u32 {
    2
}

impl PatrolConfig {
    /// Pure checks; errors name the field.
    pub fn validate(&self) -> Result<(), FieldError> {
        validate_id("patrol", &self.name).map_err(|m| FieldError::new("name", m))?;
        check_range("every_s", self.every_s, 1.0, 86_400.0)?;
        check_range("dwell_s", self.dwell_s, 0.1, 3600.0)?;
        if !(1..=1024).contains(&self.max_concurrent) {
            return Err(FieldError::new(
                "max_concurrent",
                format!(
                    "`max_concurrent` must be between 1 and 1024, got {}",
                    self.max_concurrent
                ),
            ));
        }
        if !(1..=1000).contains(&self.offline_after_rounds) {
            return Err(FieldError::new(
                "offline_after_rounds",
                format!(
                    "`offline_after_rounds` must be between 1 and 1000, got {}",
                    self.offline_after_rounds
                ),
            ));
        }
        Ok(())
    }

    pub fn every(&self) -> Duration {
        Duration::from_secs_f64(self.every_s.max(0.001))
    }

    pub fn dwell(&self) -> Duration {
        Duration::from_secs_f64(self.dwell_s.max(0.0))
    }

    /// `every_s` in whole milliseconds (at least 1), the unit rounds are numbered in.
    fn every_ms(&self) -> i64 {
        ((self.every_s * 1000.0).round() as i64).max(1)
    }

    /// When round `round` is due.
    pub fn round_start(&self, round: u64) -> DateTime<Utc> {
        let ms = i64::try_from(round)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.every_ms());
        DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The first round of a process started at `now`: the next multiple of `every_s` after
    /// it (never one an earlier process may have used).
    pub fn first_round(&self, now: DateTime<Utc>) -> u64 {
        let n = now.timestamp_millis().div_euclid(self.every_ms()) + 1;
        u64::try_from(n).unwrap_or(0)
    }
}

/// How long a round of `cameras` takes at best: ⌈cameras / max_concurrent⌉ × (connect +
/// dwell).
pub fn round_estimate(
    cameras: usize,
    max_concurrent: usize,
    connect: Duration,
    dwell: Duration,
) -> Duration {
    let waves = cameras.div_ceil(max_concurrent.max(1));
    (connect + dwell) * u32::try_from(waves).unwrap_or(u32::MAX)
}

/// A camera of a patrol, as the round reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatrolCamera {
    pub id: DeviceId,
    pub grid: GridId,
    pub owner: OwnerKind,
}

/// What one visit showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visit {
    pub status: LookStatus,
    pub frames: u64,
    pub observations: u64,
    pub snapshot: Option<String>,
}

impl Visit {
    /// A visit that found the camera offline (or could not run it: `failed`).
    pub fn not_checked(status: LookStatus) -> Self {
        Self {
            status,
            frames: 0,
            observations: 0,
            snapshot: None,
        }
    }
}

/// Opens, analyses and closes one camera of a patrol. Called from several threads at once
/// (at most `max_concurrent`), each time for a different camera.
pub trait Visitor: Send + Sync {
    /// Visits camera `camera` (its index in the patrol) in round `round`; returns early when
    /// `stop` is triggered.
    fn visit(&self, round: u64, camera: usize, stop: &Shutdown) -> Visit;
}

/// Runs one patrol's rounds.
#[derive(Debug)]
pub struct PatrolScheduler {
    config: PatrolConfig,
    cameras: Vec<PatrolCamera>,
    rounds: metrics::Counter,
    active: metrics::Gauge,
    seconds: metrics::Histogram,
}

/// How often waits look at the stop signal.
const STOP_POLL: Duration = Duration::from_millis(50);

impl PatrolScheduler {
    pub fn new(config: PatrolConfig, cameras: Vec<PatrolCamera>) -> Self {
        let patrol = config.name.clone();
        Self {
            rounds: metrics::counter!("skynet_patrol_rounds_total", "patrol" => patrol.clone()),
            active: metrics::gauge!("skynet_patrol_active_cameras", "patrol" => patrol.clone()),
            seconds: metrics::histogram!("skynet_patrol_round_seconds", "patrol" => patrol),
            config,
            cameras,
        }
    }

    pub fn config(&self) -> &PatrolConfig {
        &self.config
    }

    pub fn cameras(&self) -> &[PatrolCamera] {
        &self.cameras
    }

    /// Visits every camera once, in order, at most `max_concurrent` at once. `None` when
    /// `stop` came before the round finished (an unfinished round is not reported).
    pub fn run_round(
        &self,
        round: u64,
        visitor: &dyn Visitor,
        stop: &Shutdown,
    ) -> Option<PatrolRound> {
        let patrol = self.config.name.as_str();
        let span = tracing::info_span!("patrol_round", patrol = %patrol, round);
        let _entered = span.enter();
        let started = Utc::now();
        let clock = Instant::now();
        let next = AtomicUsize::new(0);
        type Done = (Visit, DateTime<Utc>, DateTime<Utc>);
        let visits: Mutex<Vec<Option<Done>>> = Mutex::new(vec![None; self.cameras.len()]);
        let workers = self
            .config
            .max_concurrent
            .clamp(1, self.cameras.len().max(1));
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| {
                    loop {
                        if stop.is_triggered() {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(camera) = self.cameras.get(i) else {
                            return;
                        };
                        let span = tracing::info_span!("patrol_visit", patrol = %patrol, round, camera = %camera.id);
                        let _entered = span.enter();
                        self.active.increment(1.0);
                        let opened = Utc::now();
                        let visit = visitor.visit(round, i, stop);
                        let closed = Utc::now();
                        self.active.decrement(1.0);
                        tracing::debug!(status = visit.status.as_str(), frames = visit.frames, "visit done");
                        if let Some(slot) = visits
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_mut(i)
                        {
                            *slot = Some((visit, opened, closed));
                        }
                    }
                });
            }
        });
        if stop.is_triggered() {
            return None;
        }
        let visits = visits
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cameras: Vec<PatrolLook> = self
            .cameras
            .iter()
            .zip(visits)
            .map(|(camera, done)| {
                let (visit, opened, closed) = match done {
                    Some((visit, opened, closed)) => (visit, Some(opened), Some(closed)),
                    None => (Visit::not_checked(LookStatus::Failed), None, None),
                };
                metrics::counter!("skynet_patrol_cameras_total", "patrol" => patrol.to_string(), "status" => visit.status.as_str())
                    .increment(1);
                PatrolLook {
                    id: camera.id.clone(),
                    grid: camera.grid.clone(),
                    owner: camera.owner,
                    status: visit.status,
                    frames: visit.frames,
                    observations: visit.observations,
                    snapshot: visit.snapshot,
                    opened,
                    closed,
                }
            })
            .collect();
        self.rounds.increment(1);
        self.seconds.record(clock.elapsed().as_secs_f64());
        let finished = Utc::now();
        let offline = cameras
            .iter()
            .filter(|c| c.status != LookStatus::Checked)
            .count();
        tracing::info!(
            cameras = cameras.len(),
            offline,
            seconds = clock.elapsed().as_secs_f64(),
            "patrol round finished"
        );
        if clock.elapsed() > self.config.every() {
            tracing::warn!(
                seconds = clock.elapsed().as_secs_f64(),
                every_s = self.config.every_s,
                "the patrol round took longer than every_s: the next starts late"
            );
        }
        Some(PatrolRound {
            patrol: self.config.name.clone(),
            round,
            started,
            finished,
            cameras,
        })
    }

    /// Runs rounds until `stop`: each at its time, each finished round handed to `on_round`.
    /// After a round that overran, the next starts at once, numbered by the `every_s` slot it
    /// starts in: the slots the overrun covered are skipped, not run back to back to catch up.
    pub fn run(
        &self,
        visitor: &dyn Visitor,
        stop: &Shutdown,
        mut on_round: impl FnMut(PatrolRound),
    ) {
        let mut round = self.config.first_round(Utc::now());
        loop {
            let start = self.config.round_start(round);
            if !wait_until(start, stop) {
                return;
            }
            match self.run_round(round, visitor, stop) {
                Some(done) => on_round(done),
                None => return,
            }
            // The slot now is first_round(now) - 1: later than round + 1 after an overrun.
            round = (round + 1).max(self.config.first_round(Utc::now()).saturating_sub(1));
        }
    }
}

/// Waits for the wall clock to reach `at`; false when `stop` came first.
fn wait_until(at: DateTime<Utc>, stop: &Shutdown) -> bool {
    loop {
        if stop.is_triggered() {
            return false;
        }
        let left = at.signed_duration_since(Utc::now());
        let Ok(left) = left.to_std() else {
            return true;
        };
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(STOP_POLL));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use super::*;

    fn config(every_s: f64, max_concurrent: usize) -> PatrolConfig {
        PatrolConfig {
            name: "p".into(),
            every_s,
            dwell_s: 0.1,
            max_concurrent,
            offline_after_rounds: 2,
        }
    }

    fn cameras(n: usize) -> Vec<PatrolCamera> {
        (0..n)
            .map(|i| PatrolCamera {
                id: DeviceId::new(format!("cam{i}")),
                grid: GridId::new("G1"),
                owner: OwnerKind::Police,
            })
            .collect()
    }

    /// Counts how many visits run at once, and which cameras were visited.
    #[derive(Default)]
    struct Fake {
        open: AtomicUsize,
        most: AtomicUsize,
        /// Camera indices that are offline: their visit returns at once.
        offline: Vec<usize>,
        dwell: Duration,
        visited: Mutex<Vec<(u64, usize, Instant, Instant)>>,
        calls: AtomicU64,
    }

    impl Visitor for Fake {
        fn visit(&self, round: u64, camera: usize, _stop: &Shutdown) -> Visit {
            let opened = Instant::now();
            self.calls.fetch_add(1, Ordering::Relaxed);
            let now = self.open.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let status = if self.offline.contains(&camera) {
                LookStatus::Offline
            } else {
                std::thread::sleep(self.dwell);
                LookStatus::Checked
            };
            self.open.fetch_sub(1, Ordering::SeqCst);
            self.visited
                .lock()
                .unwrap()
                .push((round, camera, opened, Instant::now()));
            Visit {
                status,
                frames: u64::from(status == LookStatus::Checked),
                observations: 0,
                snapshot: None,
            }
        }
    }

    #[test]
    fn never_more_than_max_concurrent_open_and_every_camera_visited_each_round() {
        let scheduler = PatrolScheduler::new(config(60.0, 2), cameras(6));
        let fake = Fake {
            dwell: Duration::from_millis(30),
            ..Fake::default()
        };
        let stop = Shutdown::new();
        for round in [7, 8] {
            let done = scheduler.run_round(round, &fake, &stop).expect("finished");
            assert_eq!(done.round, round);
            assert_eq!(done.patrol, "p");
            let ids: Vec<&str> = done.cameras.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(ids, ["cam0", "cam1", "cam2", "cam3", "cam4", "cam5"]);
            assert!(
                done.cameras
                    .iter()
                    .all(|c| c.status == LookStatus::Checked && c.frames == 1)
            );
            assert!(done.started <= done.finished);
        }
        assert_eq!(fake.most.load(Ordering::SeqCst), 2, "two at once, no more");
        assert_eq!(
            fake.calls.load(Ordering::Relaxed),
            12,
            "each camera once a round"
        );
    }

    #[test]
    fn one_at_a_time_when_max_concurrent_is_one() {
        let scheduler = PatrolScheduler::new(config(60.0, 1), cameras(4));
        let fake = Fake {
            dwell: Duration::from_millis(5),
            ..Fake::default()
        };
        scheduler.run_round(1, &fake, &Shutdown::new()).unwrap();
        assert_eq!(fake.most.load(Ordering::SeqCst), 1);
        let visited = fake.visited.lock().unwrap();
        let order: Vec<usize> = visited.iter().map(|v| v.1).collect();
        assert_eq!(order, [0, 1, 2, 3], "in visiting order");
    }

    #[test]
    fn an_offline_camera_does_not_delay_the_others() {
        // cam0 is offline: its slot frees at once, and cam2 opens before cam1 closes (with
        // two slots, an offline camera holding its slot for a dwell would make cam2 wait).
        let scheduler = PatrolScheduler::new(config(60.0, 2), cameras(3));
        let fake = Fake {
            dwell: Duration::from_millis(200),
            offline: vec![0],
            ..Fake::default()
        };
        let done = scheduler.run_round(1, &fake, &Shutdown::new()).unwrap();
        let statuses: Vec<LookStatus> = done.cameras.iter().map(|c| c.status).collect();
        assert_eq!(
            statuses,
            [
                LookStatus::Offline,
                LookStatus::Checked,
                LookStatus::Checked
            ]
        );
        let visited = fake.visited.lock().unwrap();
        let of = |i: usize| *visited.iter().find(|v| v.1 == i).unwrap();
        assert!(of(2).2 < of(1).3, "cam2 opened while cam1 was still open");
    }

    #[test]
    fn rounds_are_numbered_by_time_and_never_reuse_a_number() {
        let c = config(60.0, 1);
        let t = DateTime::<Utc>::from_timestamp(600, 0).unwrap();
        assert_eq!(c.first_round(t), 11, "the next start after now");
        assert_eq!(
            c.first_round(t + chrono::Duration::milliseconds(59_999)),
            11
        );
        assert_eq!(
            c.round_start(11),
            DateTime::<Utc>::from_timestamp(660, 0).unwrap()
        );
        let half = config(0.5 + 1.0, 1);
        assert_eq!(
            half.round_start(2),
            DateTime::<Utc>::from_timestamp(3, 0).unwrap()
        );
    }

    #[test]
    fn run_starts_rounds_on_their_multiples_and_a_late_round_takes_the_next_number() {
        // every_s = 1 s, visits of 1.2 s: each round overruns, so the next starts at once
        // with the next number.
        let scheduler = PatrolScheduler::new(config(1.0, 1), cameras(1));
        let fake = Arc::new(Fake {
            dwell: Duration::from_millis(1200),
            ..Fake::default()
        });
        let stop = Shutdown::new();
        let first = scheduler.config().first_round(Utc::now());
        let mut rounds = Vec::new();
        scheduler.run(fake.as_ref(), &stop, |r| {
            rounds.push((r.round, r.started));
            if rounds.len() == 2 {
                stop.trigger();
            }
        });
        assert_eq!(rounds.len(), 2);
        assert_eq!(rounds[0].0, first);
        assert_eq!(rounds[1].0, first + 1);
        assert!(rounds[0].1 >= scheduler.config().round_start(first));
        assert!(rounds[1].1 >= scheduler.config().round_start(first + 1));
    }

    #[test]
    fn after_a_long_overrun_the_next_round_takes_its_slot_instead_of_catching_up() {
        // every_s = 1 s, a visit of 2.5 s: the second round starts at once, numbered by the
        // slot it starts in (two past the first), not first + 1 followed by a burst.
        let scheduler = PatrolScheduler::new(config(1.0, 1), cameras(1));
        let fake = Arc::new(Fake {
            dwell: Duration::from_millis(2500),
            ..Fake::default()
        });
        let stop = Shutdown::new();
        let first = scheduler.config().first_round(Utc::now());
        let mut rounds = Vec::new();
        scheduler.run(fake.as_ref(), &stop, |r| {
            rounds.push((r.round, r.started, r.finished));
            if rounds.len() == 2 {
                stop.trigger();
            }
        });
        assert_eq!(rounds[0].0, first);
        assert!(rounds[1].0 >= first + 2, "{rounds:?}");
        // It started at once, in the slot its number names (its time is read just after
        // the number: up to a slot more on a loaded machine).
        let config = scheduler.config();
        assert!(rounds[1].1 >= config.round_start(rounds[1].0), "{rounds:?}");
        assert!(
            rounds[1].1 < config.round_start(rounds[1].0 + 2),
            "{rounds:?}"
        );
        assert!(rounds[0].1 >= scheduler.config().round_start(first));
    }

    #[test]
    fn a_stopped_round_is_not_reported() {
        let scheduler = PatrolScheduler::new(config(60.0, 1), cameras(2));
        let stop = Shutdown::new();
        stop.trigger();
        assert!(scheduler.run_round(1, &Fake::default(), &stop).is_none());
    }

    #[test]
    fn estimate_and_validation() {
        assert_eq!(
            round_estimate(6, 2, ESTIMATED_CONNECT, Duration::from_secs(3)),
            Duration::from_millis(10_500)
        );
        assert_eq!(
            round_estimate(7, 2, ESTIMATED_CONNECT, Duration::from_secs(1)),
            Duration::from_secs(6)
        );
        assert!(config(60.0, 2).validate().is_ok());
        assert_eq!(
            config(60.0, 0).validate().unwrap_err().field,
            "max_concurrent"
        );
        assert_eq!(config(0.2, 1).validate().unwrap_err().field, "every_s");
        let mut bad = config(60.0, 1);
        bad.name = "a b".into();
        assert_eq!(bad.validate().unwrap_err().field, "name");
        let parsed: PatrolConfig =
            toml::from_str("name = \"north\"\nevery_s = 60\ndwell_s = 3\nmax_concurrent = 20")
                .unwrap();
        assert_eq!(parsed.offline_after_rounds, 2);
        assert!(
            toml::from_str::<PatrolConfig>("name = \"n\"\nevery_s = 1\ndwell_s = 1\nx = 1")
                .is_err()
        );
    }
}
