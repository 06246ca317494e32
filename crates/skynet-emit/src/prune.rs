//! Retention and disk: what the outbox keeps, and the free space under it.
//!
//! Pruning runs on a thread of its own with its own connection, never on the commit thread,
//! and deletes in batches of [`PRUNE_BATCH`] rows, each its own short transaction, so a
//! commit waits at most for one batch. It removes, past `[outbox] retain_days`:
//! - events every sink has taken;
//! - closed incidents (by last seen); open ones stay however old;
//! - a cell's superseded risk levels (its latest level stays);
//! - dead letters not queued for a replay.
//!
//! The case status ids (`case_events`) are not pruned here: the commit forgets them once
//! the case stream no longer holds their events, which is what keeps a replayed status
//! refused.
//!
//! A sink that stays down would hold the events it lacks for ever. After `[outbox]
//! max_lag_days` its backlog older than that moves to its dead letters (replayable with
//! `skynet outbox replay`), its cursor moves past it, and pruning goes on.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use skynet_core::{ComponentHealth, ComponentState};

use crate::{EmitError, Outbox};

/// Rows per delete, each its own transaction.
pub const PRUNE_BATCH: usize = 1000;
/// How often the pruner runs.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// How often the free space is looked at.
const DISK_EVERY: Duration = Duration::from_secs(10);
/// The health detail of a disk below `[outbox] min_free_mb`.
pub const DEGRADED: &str = "degraded";

/// What the pruner keeps, and for whom.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// `[outbox] retain_days`.
    pub retention: chrono::Duration,
    /// `[outbox] max_lag_days`.
    pub max_lag: chrono::Duration,
    /// Every configured sink: an event stays until each has taken it (or given it up).
    pub sinks: Vec<String>,
    /// `[outbox] min_free_mb`, in bytes.
    pub min_free_bytes: u64,
}

/// What one pruning pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub events: usize,
    pub incidents: usize,
    pub grid_risk: usize,
    pub dead_letters: usize,
    /// Per sink: undelivered events moved to its dead letters after `max_lag_days`.
    pub abandoned: Vec<(String, usize)>,
}

impl Pruned {
    fn total(&self) -> usize {
        self.events
            + self.incidents
            + self.grid_risk
            + self.dead_letters
            + self.abandoned.iter().map(|(_, n)| n).sum::<usize>()
    }
}

/// `now - d`, or `None` when that is before anything chrono represents (nothing is that
/// old: never prune rather than overflow).
fn before(now: DateTime<Utc>, d: chrono::Duration) -> Option<DateTime<Utc>> {
    now.checked_sub_signed(d)
}

impl Outbox {
    /// Runs `sql` (a DELETE of up to `?2`-limit rows, with `?1` the cutoff) until it deletes
    /// nothing; each run its own transaction. Returns how many rows went.
    fn delete_in_batches(
        &self,
        sql: &str,
        cutoff: &dyn rusqlite::ToSql,
    ) -> Result<usize, EmitError> {
        let mut total = 0;
        loop {
            let n = self
                .conn()
                .prepare_cached(sql)
                .and_then(|mut stmt| stmt.execute(params![cutoff, PRUNE_BATCH as i64]))
                .map_err(self.err())?;
            total += n;
            if n < PRUNE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Moves `sink`'s undelivered events stored more than `max_lag` before `now` to its dead
    /// letters and its cursor past them, oldest first, in batches. Returns how many moved.
    pub fn abandon_backlog(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        max_lag: chrono::Duration,
    ) -> Result<usize, EmitError> {
        // Nothing is older than the calendar reaches back.
        let Some(cutoff) = before(now, max_lag) else {
            return Ok(0);
        };
        let reason = format!(
            "not delivered within [outbox] max_lag_days ({} days): moved from the sink's backlog so that pruning goes on",
            max_lag.num_seconds() as f64 / 86_400.0
        );
        let cutoff = cutoff.to_rfc3339();
        let mut moved = 0;
        loop {
            let tx = Transaction::new_unchecked(self.conn(), TransactionBehavior::Immediate)
                .map_err(self.err())?;
            let after: i64 = tx
                .query_row(
                    "SELECT delivered_seq FROM sink_cursors WHERE sink = ?1",
                    [sink],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err())?
                .unwrap_or(0);
            // Oldest first, and only up to the first event that is not old enough: the
            // cursor never passes an event that is kept.
            let rows: Vec<(i64, String, String, String)> = {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT seq, id, body, stored_at FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    )
                    .map_err(self.err())?;
                let rows = stmt
                    .query_map(params![after, PRUNE_BATCH as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .map_err(self.err())?;
                rows.collect::<Result<_, _>>().map_err(self.err())?
            };
            let old: Vec<_> = rows
                .iter()
                .take_while(|(_, _, _, stored_at)| *stored_at < cutoff)
                .collect();
            let Some(last) = old.last().map(|r| r.0) else {
                return Ok(moved);
            };
            let at = now.to_rfc3339();
            for (seq, id, body, _) in &old {
                tx.prepare_cached(
                    "INSERT INTO dead_letters (sink, seq, id, status, reason, at, body, replay)
                     VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, 0)
                     ON CONFLICT(sink, seq) DO NOTHING",
                )
                .and_then(|mut stmt| stmt.execute(params![sink, seq, id, reason, at, body]))
                .map_err(self.err())?;
            }
            tx.execute(
                "INSERT INTO sink_cursors (sink, delivered_seq) VALUES (?1, ?2)
                 ON CONFLICT(sink) DO UPDATE SET delivered_seq = max(delivered_seq, excluded.delivered_seq)",
                params![sink, last],
            )
            .map_err(self.err())?;
            tx.commit().map_err(self.err())?;
            moved += old.len();
            if old.len() < rows.len() || rows.len() < PRUNE_BATCH {
                return Ok(moved);
            }
        }
    }

    /// One pruning pass as of `now` (see the module doc). Each step goes in batches.
    pub fn prune_history(
        &self,
        options: &PruneOptions,
        now: DateTime<Utc>,
    ) -> Result<Pruned, EmitError> {
        let mut pruned = Pruned::default();
        for sink in &options.sinks {
            let n = self.abandon_backlog(sink, now, options.max_lag)?;
            if n > 0 {
                pruned.abandoned.push((sink.clone(), n));
            }
        }
        let Some(cutoff) = before(now, options.retention) else {
            return Ok(pruned);
        };
        let cutoff = cutoff.to_rfc3339();
        let mut delivered_by_all = i64::MAX;
        for sink in &options.sinks {
            let seq: Option<i64> = self
                .conn()
                .query_row(
                    "SELECT delivered_seq FROM sink_cursors WHERE sink = ?1",
                    [sink],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.err())?;
            delivered_by_all = delivered_by_all.min(seq.unwrap_or(0));
        }
        // Bound by seq as well as by time: the cursor of every sink.
        let events = format!(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events
                 WHERE seq <= {delivered_by_all} AND stored_at < ?1 ORDER BY seq LIMIT ?2)"
        );
        pruned.events = self.delete_in_batches(&events, &cutoff)?;
        pruned.incidents = self.delete_in_batches(
            "DELETE FROM incidents WHERE id IN (SELECT id FROM incidents
                 WHERE status = 'closed' AND last_seen < ?1 LIMIT ?2)",
            &cutoff,
        )?;
        // The districts of incidents no longer kept.
        self.delete_in_batches(
            "DELETE FROM incident_districts WHERE id IN (SELECT d.id FROM incident_districts d
                 WHERE ?1 IS NOT NULL AND NOT EXISTS (SELECT 1 FROM incidents i WHERE i.id = d.id)
                 LIMIT ?2)",
            &cutoff,
        )?;
        // A cell's latest level stays: the map shows it however old.
        pruned.grid_risk = self.delete_in_batches(
            "DELETE FROM grid_risk WHERE rowid IN (SELECT g.rowid FROM grid_risk g
                 WHERE g.at < ?1
                   AND g.revision < (SELECT max(h.revision) FROM grid_risk h WHERE h.grid = g.grid)
                 LIMIT ?2)",
            &cutoff,
        )?;
        pruned.dead_letters = self.delete_in_batches(
            "DELETE FROM dead_letters WHERE rowid IN (SELECT rowid FROM dead_letters
                 WHERE at < ?1 AND replay = 0 LIMIT ?2)",
            &cutoff,
        )?;
        Ok(pruned)
    }

    /// Test support: caps the outbox at `pages` pages on this connection (SQLite's
    /// `max_page_count`), so a test can fill the "disk" and free it again. Returns the cap
    /// in force. Not for production use.
    #[doc(hidden)]
    pub fn set_max_page_count(&self, pages: u64) -> Result<u64, EmitError> {
        self.conn()
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(self.err())
    }

    /// Test support: the pages the outbox file holds now.
    #[doc(hidden)]
    pub fn page_count(&self) -> Result<u64, EmitError> {
        self.conn()
            .query_row("PRAGMA page_count", [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(self.err())
    }
}

impl EmitError {
    /// The outbox refused a write because its disk (or its page cap) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            EmitError::Outbox { source: rusqlite::Error::SqliteFailure(e, _), .. }
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// Free bytes for an unprivileged writer on the filesystem holding `path` (or its nearest
/// existing parent).
pub fn disk_free_bytes(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = path;
    while !at.exists() {
        at = match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if at == Path::new(".") {
            break;
        }
    }
    let c_path = std::ffi::CString::new(at.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable
    // memory of the right type; statvfs fills it in or returns -1.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// Looks at the free space under the outbox and shows it: `skynet_disk_free_bytes`, and
/// the `disk` component's detail `degraded` (with `/readyz` saying so) below the minimum.
pub struct DiskWatch {
    path: PathBuf,
    min_free_bytes: u64,
    health: ComponentHealth,
    gauge: metrics::Gauge,
    low: Option<bool>,
}

impl DiskWatch {
    pub fn new(path: &Path, min_free_bytes: u64, health: ComponentHealth) -> Self {
        Self {
            path: path.to_path_buf(),
            min_free_bytes,
            health,
            gauge: metrics::gauge!("skynet_disk_free_bytes"),
            low: None,
        }
    }

    /// Measures once and updates the gauge and health.
    pub fn check(&mut self) {
        match disk_free_bytes(&self.path) {
            Ok(free) => {
                self.gauge.set(free as f64);
                let low = free < self.min_free_bytes;
                if self.low == Some(low) {
                    return;
                }
                self.low = Some(low);
                if low {
                    let reason = format!(
                        "{} MiB free on the outbox's filesystem, below [outbox] min_free_mb = {}",
                        free >> 20,
                        self.min_free_bytes >> 20
                    );
                    tracing::error!(path = %self.path.display(), free_bytes = free, "{reason}");
                    // Still up: commits go on while there is room. The detail is the alarm.
                    self.health.set(ComponentState::Up, Some(reason));
                    self.health.describe(Some(DEGRADED), None);
                } else {
                    if self.low.is_some() {
                        tracing::info!(path = %self.path.display(), free_bytes = free, "free space on the outbox's filesystem is back above [outbox] min_free_mb");
                    }
                    self.health.up();
                    self.health.describe(None, None);
                }
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "could not read the free space of the outbox's filesystem");
                // Unknown is not a failure of the process.
                if self.low.is_none() {
                    self.health.up();
                }
            }
        }
    }
}

/// The running pruner thread; [`stop`](Self::stop) (or dropping it) ends it.
pub struct Pruner {
    stop: Option<crossbeam_channel::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl Pruner {
    /// Ends the thread (within the batch it may be running) and waits for it.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        // Dropping the sender wakes the thread's wait.
        self.stop.take();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Starts the pruner: its own thread and outbox connection, a pass at once and then every
/// ten minutes, and the disk watch every ten seconds. The first disk reading is taken
/// before this returns, so `/readyz` never shows the disk as starting.
pub fn spawn_pruner(
    outbox_path: &Path,
    options: PruneOptions,
    health: ComponentHealth,
) -> std::io::Result<Pruner> {
    let mut disk = DiskWatch::new(outbox_path, options.min_free_bytes, health);
    disk.check();
    let path = outbox_path.to_path_buf();
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let handle = std::thread::Builder::new()
        .name("outbox-prune".into())
        .spawn(move || {
            let mut outbox: Option<Outbox> = None;
            let mut last_prune: Option<Instant> = None;
            loop {
                if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(Instant::now());
                    if outbox.is_none() {
                        outbox = Outbox::open(&path)
                            .inspect_err(|e| tracing::warn!(error = %e, "the pruner could not open the outbox"))
                            .ok();
                    }
                    if let Some(db) = &outbox {
                        prune_once(db, &options);
                    }
                }
                disk.check();
                if let Err(crossbeam_channel::RecvTimeoutError::Disconnected) =
                    stopped.recv_timeout(DISK_EVERY)
                {
                    return;
                }
            }
        })?;
    Ok(Pruner {
        stop: Some(stop),
        handle: Some(handle),
    })
}

/// One pass, logged and counted; a failure is logged and tried again next time.
pub fn prune_once(outbox: &Outbox, options: &PruneOptions) {
    match outbox.prune_history(options, Utc::now()) {
        Ok(pruned) => {
            for (sink, n) in &pruned.abandoned {
                metrics::counter!("skynet_sink_backlog_abandoned_total", "sink" => sink.clone())
                    .increment(*n as u64);
                metrics::counter!("skynet_sink_dead_letters_total", "sink" => sink.clone())
                    .increment(*n as u64);
                tracing::error!(sink = %sink, events = n, max_lag_days = options.max_lag.num_seconds() as f64 / 86_400.0,
                    "sink stayed behind past [outbox] max_lag_days: its oldest undelivered events moved to its dead letters (`skynet outbox dead-letters`, `skynet outbox replay`)");
            }
            if pruned.total() > 0 {
                metrics::counter!("skynet_outbox_pruned_total", "table" => "events")
                    .increment(pruned.events as u64);
                metrics::counter!("skynet_outbox_pruned_total", "table" => "incidents")
                    .increment(pruned.incidents as u64);
                metrics::counter!("skynet_outbox_pruned_total", "table" => "grid_risk")
                    .increment(pruned.grid_risk as u64);
                metrics::counter!("skynet_outbox_pruned_total", "table" => "dead_letters")
                    .increment(pruned.dead_letters as u64);
                tracing::info!(
                    events = pruned.events,
                    incidents = pruned.incidents,
                    grid_risk = pruned.grid_risk,
                    dead_letters = pruned.dead_letters,
                    "pruned the outbox past [outbox] retain_days"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not prune the outbox; trying again later"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CloudEvent, DeadLetter, OutboxEvent};

    fn incident(id: &str, revision: u32, closed: bool) -> OutboxEvent {
        let mut incident = crate::test_support::incident(revision, 0.5);
        incident.id = id.into();
        incident.last_seen = Utc::now();
        if closed {
            incident.status = skynet_core::IncidentStatus::Closed;
        }
        OutboxEvent::Incident(CloudEvent::incident("n1", &incident))
    }

    fn options(sinks: &[&str]) -> PruneOptions {
        PruneOptions {
            retention: chrono::Duration::days(7),
            max_lag: chrono::Duration::days(14),
            sinks: sinks.iter().map(|s| s.to_string()).collect(),
            min_free_bytes: 0,
        }
    }

    fn count(outbox: &Outbox, table: &str) -> i64 {
        outbox
            .conn()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn history_past_retention_goes_in_batches_and_open_incidents_and_latest_levels_stay() {
        let mut outbox = Outbox::open(Path::new(":memory:")).unwrap();
        // More events than one batch: three closed incidents, one still open.
        let mut events: Vec<OutboxEvent> = (1..=PRUNE_BATCH as u32 + 500)
            .map(|r| incident("inc-old", r, r > PRUNE_BATCH as u32))
            .collect();
        events.push(incident("inc-open", 1, false));
        events.push(incident("inc-closed", 1, true));
        let change = |revision: u64| {
            let at =
                Utc::now() - chrono::Duration::days(1) + chrono::Duration::seconds(revision as i64);
            OutboxEvent::new(
                "n1",
                &skynet_core::RiskEvent::GridRisk(skynet_core::GridRisk {
                    id: format!("g-{revision}"),
                    grid: skynet_core::GridId::new("G1"),
                    name: None,
                    kind: None,
                    revision,
                    level: Some(skynet_core::RiskLevel::III),
                    level_colour: None,
                    previous_level: None,
                    score: 0.5,
                    at,
                    categories: Default::default(),
                    incidents: Vec::new(),
                }),
            )
        };
        events.extend((1..=3).map(change));
        outbox.commit(&events, None).unwrap();
        let last = events.len() as i64;
        outbox.acknowledge("a", last).unwrap();
        outbox.acknowledge("b", last - 3).unwrap();
        outbox
            .acknowledge_with_dead_letters(
                "a",
                last,
                &[DeadLetter {
                    sink: "a".into(),
                    seq: 1,
                    id: "inc-old/1".into(),
                    status: Some(400),
                    reason: "bad".into(),
                    at: Utc::now(),
                    body: "{}".into(),
                    replay: false,
                }],
            )
            .unwrap();

        // Nothing is old enough yet.
        assert_eq!(
            outbox
                .prune_history(&options(&["a", "b"]), Utc::now())
                .unwrap(),
            Pruned::default()
        );

        // A month on: what both sinks took goes; b's three remain.
        let later = Utc::now() + chrono::Duration::days(30);
        let patient = PruneOptions {
            max_lag: chrono::Duration::days(60),
            ..options(&["a", "b"])
        };
        let pruned = outbox.prune_history(&patient, later).unwrap();
        assert_eq!(pruned.events, events.len() - 3);
        assert_eq!(pruned.incidents, 2, "the two closed incidents");
        assert_eq!(pruned.grid_risk, 2, "all but the cell's latest level");
        assert_eq!(pruned.dead_letters, 1);
        assert!(pruned.abandoned.is_empty());
        assert_eq!(outbox.pending("b", 10).unwrap().len(), 3);
        let ids: Vec<String> = outbox
            .incidents()
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["inc-open"]);
        assert_eq!(outbox.latest_grid_risk().unwrap()[0].revision, 3);
        assert_eq!(count(&outbox, "dead_letters"), 0);
    }

    #[test]
    fn a_dead_sink_gives_up_its_backlog_to_dead_letters_after_max_lag_and_pruning_goes_on() {
        let mut outbox = Outbox::open(Path::new(":memory:")).unwrap();
        let events: Vec<OutboxEvent> = (1..=5).map(|r| incident("inc-1", r, false)).collect();
        outbox.commit(&events, None).unwrap();
        outbox.acknowledge("live", 5).unwrap();
        outbox.acknowledge("dead", 2).unwrap();
        // A dead letter queued for replay is kept however old.
        let options = options(&["live", "dead"]);

        // Within max_lag: retention prunes only what both took.
        let in_a_week = Utc::now() + chrono::Duration::days(8);
        let pruned = outbox.prune_history(&options, in_a_week).unwrap();
        assert_eq!((pruned.events, pruned.abandoned.len()), (2, 0));
        assert_eq!(outbox.pending("dead", 10).unwrap().len(), 3);

        // Past max_lag: the dead sink's three move to its dead letters, with the reason.
        let in_a_month = Utc::now() + chrono::Duration::days(15);
        let pruned = outbox.prune_history(&options, in_a_month).unwrap();
        assert_eq!(pruned.abandoned, [("dead".to_string(), 3)]);
        assert_eq!(pruned.events, 3);
        assert!(outbox.pending("dead", 10).unwrap().is_empty());
        let letters = outbox.dead_letters(Some("dead")).unwrap();
        assert_eq!(letters.iter().map(|l| l.seq).collect::<Vec<_>>(), [3, 4, 5]);
        assert!(
            letters[0].reason.contains("max_lag_days"),
            "{}",
            letters[0].reason
        );
        assert_eq!(letters[0].status, None);
        assert!(letters[0].body.contains("inc-1/3") || letters[0].body.contains("\"revision\":3"));
        // A replay asked for keeps a letter past retention.
        outbox.request_replay(Some("dead"), None).unwrap();
        let much_later = Utc::now() + chrono::Duration::days(60);
        let pruned = outbox.prune_history(&options, much_later).unwrap();
        assert_eq!(pruned.dead_letters, 0);
        assert_eq!(outbox.dead_letters(Some("dead")).unwrap().len(), 3);
    }

    #[test]
    fn free_space_is_read_and_a_low_disk_shows_degraded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(disk_free_bytes(dir.path()).unwrap() > 0);
        // A path not yet created is measured on its nearest parent.
        assert!(disk_free_bytes(&dir.path().join("a/b/outbox.sqlite")).unwrap() > 0);
        let health = ComponentHealth::detached("disk", "storage");
        let mut watch = DiskWatch::new(&dir.path().join("outbox.sqlite"), u64::MAX, health.clone());
        watch.check();
        let status = health.status().unwrap();
        assert_eq!(status.state, ComponentState::Up);
        assert_eq!(status.detail.as_deref(), Some(DEGRADED));
        assert!(status.reason.unwrap().contains("min_free_mb"));
        watch.min_free_bytes = 0;
        watch.check();
        let status = health.status().unwrap();
        assert_eq!((status.state, status.detail), (ComponentState::Up, None));
    }

    #[test]
    fn a_full_page_cap_is_a_disk_full_error_and_the_committed_rows_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(&dir.path().join("outbox.sqlite")).unwrap();
        outbox.commit(&[incident("inc-1", 1, false)], None).unwrap();
        let pages = outbox.page_count().unwrap();
        assert_eq!(outbox.set_max_page_count(pages).unwrap(), pages);
        let big: Vec<OutboxEvent> = (2..200).map(|r| incident("inc-1", r, false)).collect();
        let e = outbox.commit(&big, None).unwrap_err();
        assert!(e.is_disk_full(), "{e}");
        assert_eq!(outbox.events().unwrap().len(), 1);
        outbox.set_max_page_count(pages * 1000).unwrap();
        assert_eq!(outbox.commit(&big, None).unwrap(), big.len());
    }
}
