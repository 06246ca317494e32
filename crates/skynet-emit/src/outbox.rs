//! The durable outbox and incident history, in SQLite.

use std::path::{Path, PathBuf};

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::{CloudEvent, EmitError, OutboxEvent};

fn incident_status(incident: &skynet_core::Incident) -> String {
    serde_json::to_value(incident.status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// An event as stored: its place in the outbox and its JSON body, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: String,
    pub body: String,
}

/// An event a sink's destination refused for good, kept with its body so that it outlives
/// the retention of delivered events and can be replayed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeadLetter {
    pub sink: String,
    /// The event's place in the outbox when it was refused.
    pub seq: i64,
    /// The CloudEvent id.
    pub id: String,
    /// The destination's status code (HTTP 400), if it gave one.
    pub status: Option<u16>,
    /// Why, as the destination said it (bounded).
    pub reason: String,
    pub at: chrono::DateTime<Utc>,
    /// The stored CloudEvent JSON.
    #[serde(skip)]
    pub body: String,
    /// Queued for delivery again (`skynet outbox replay`).
    pub replay: bool,
}

/// The outbox. One connection; open it again on the same path for another thread or task
/// (WAL lets readers run beside the one writer, and busy_timeout makes writers queue).
pub struct Outbox {
    path: PathBuf,
    conn: Connection,
    /// What the next commit records of case status events (see [`Outbox::stage_cases`]).
    pub(crate) staged_cases: crate::cases_log::StagedCases,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    time       TEXT NOT NULL,
    body       TEXT NOT NULL,
    stored_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_cursors (
    sink           TEXT PRIMARY KEY,
    delivered_seq  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (
    id          TEXT PRIMARY KEY,
    revision    INTEGER NOT NULL,
    status      TEXT NOT NULL,
    category    TEXT NOT NULL,
    level       TEXT NOT NULL,
    grid        TEXT NOT NULL,
    camera      TEXT NOT NULL,
    owner       TEXT NOT NULL,
    first_seen  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_by_grid ON incidents (grid, last_seen);
CREATE INDEX IF NOT EXISTS incidents_by_last_seen ON incidents (last_seen, id);
CREATE INDEX IF NOT EXISTS events_by_subject ON events (subject, seq);
CREATE TABLE IF NOT EXISTS grid_risk (
    id          TEXT PRIMARY KEY,
    grid        TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    at          TEXT NOT NULL,
    level       TEXT,
    score       REAL NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS grid_risk_by_grid ON grid_risk (grid, at);
CREATE TABLE IF NOT EXISTS dead_letters (
    sink        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    id          TEXT NOT NULL,
    status      INTEGER,
    reason      TEXT NOT NULL,
    at          TEXT NOT NULL,
    body        TEXT NOT NULL,
    replay      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, seq)
);
CREATE INDEX IF NOT EXISTS dead_letters_by_id ON dead_letters (id);
-- Each incident's district (its events' `source` without `skynet/`): a table of its own, so
-- outboxes in the field need no migration; rows without one show no district.
CREATE TABLE IF NOT EXISTS incident_districts (
    id          TEXT PRIMARY KEY,
    district    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS state (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
";

pub(crate) fn upsert_dead_letter(
    tx: &Transaction<'_>,
    letter: &DeadLetter,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "INSERT INTO dead_letters (sink, seq, id, status, reason, at, body, replay)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT(sink, seq) DO UPDATE SET status = excluded.status, reason = excluded.reason,
             at = excluded.at",
    )?
    .execute(params![
        letter.sink,
        letter.seq,
        letter.id,
        letter.status,
        letter.reason,
        letter.at.to_rfc3339(),
        letter.body,
        letter.replay,
    ])
}

use crate::state_store::PIPELINE_STATE;

/// Whether two stored bodies say the same thing: equal text, or equal JSON (so a change in
/// field order between versions is not taken for a conflict).
fn same_json(a: &str, b: &str) -> bool {
    a == b
        || matches!(
            (serde_json::from_str::<serde_json::Value>(a), serde_json::from_str::<serde_json::Value>(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

/// The busy handler: poll the lock every millisecond, give up after about 5 s.
fn wait_for_lock(attempts: i32) -> bool {
    if attempts >= 5_000 {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_millis(1));
    true
}

impl Outbox {
    /// A connection for a sink's cursor: its commits are not fsynced one by one (WAL with
    /// `synchronous=NORMAL`), since a cursor lost to a power cut only means events are
    /// delivered again, which consumers deduplicate; the commit stays fully durable.
    pub fn open_for_delivery(path: &Path) -> Result<Self, EmitError> {
        let outbox = Self::open(path)?;
        outbox
            .conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(outbox.err())?;
        Ok(outbox)
    }

    /// Opens (creating if needed) the outbox at `path`; `:memory:` gives a throwaway one.
    pub fn open(path: &Path) -> Result<Self, EmitError> {
        // The file holds the console's password and token hashes, notes and audit: owner
        // only, and its directory too when created here.
        skynet_core::private_fs::prepare_private_sqlite(path).map_err(|source| {
            EmitError::CreateDir {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let err = |source| EmitError::Outbox {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        // WAL with FULL sync: a committed incident survives a crash or power loss.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        // Writers (the commit and each sink's cursor) queue for the lock by polling every
        // millisecond, for up to 5 s. SQLite's own busy_timeout backs off to 100 ms sleeps,
        // which under steady commits and acks left a waiter sleeping through free windows
        // for most of a second (seen as a p99 commit-to-ack of 0.9 s in the delivery bench).
        conn.busy_handler(Some(wait_for_lock)).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.execute_batch(crate::state_store::SCHEMA)
            .map_err(err)?;
        conn.execute_batch(crate::cases_log::SCHEMA).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn,
            staged_cases: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn err(&self) -> impl Fn(rusqlite::Error) -> EmitError + '_ {
        move |source| EmitError::Outbox {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores an event and updates the incident history, atomically. Returns false when an
    /// event with the same id was already stored (a replay), which changes nothing.
    pub fn append(&mut self, event: &CloudEvent) -> Result<bool, EmitError> {
        Ok(self.commit(&[OutboxEvent::Incident(event.clone())], None)? == 1)
    }

    /// Stores `events`, updates the incident history and, when given, saves the pipeline
    /// `state`, all in one transaction: after a crash the engine state never runs ahead of
    /// (or behind) the events it produced. Returns how many events were new.
    ///
    /// An id that is already stored with the same body is a replay and changes nothing. An id
    /// stored with a different body is a bug upstream (an event id reused); the stored event
    /// is kept, since sinks may already have it, and the conflict is counted and logged.
    pub fn commit(
        &mut self,
        events: &[OutboxEvent],
        state: Option<&str>,
    ) -> Result<usize, EmitError> {
        self.commit_with(events, |tx, now| match state {
            Some(state) => crate::state_store::write_pipeline(tx, state, now),
            None => Ok(()),
        })
    }

    /// [`commit`](Self::commit), with `write_state` writing the state in the transaction.
    pub(crate) fn commit_with(
        &mut self,
        events: &[OutboxEvent],
        write_state: impl FnOnce(&Transaction<'_>, &str) -> rusqlite::Result<()>,
    ) -> Result<usize, EmitError> {
        // Serialise first, so a bad event fails the commit before the transaction starts.
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            let data = match event {
                OutboxEvent::Incident(e) => serde_json::to_string(&e.data)?,
                OutboxEvent::GridRisk(e) => serde_json::to_string(&e.data)?,
                OutboxEvent::PatrolRound(e) => serde_json::to_string(&e.data)?,
            };
            rows.push((event, event.to_json()?, data));
        }
        let path = self.path.clone();
        let err = move |source| EmitError::Outbox {
            path: path.clone(),
            source,
        };
        let now = Utc::now().to_rfc3339();
        // IMMEDIATE takes the write lock up front, under busy_timeout: a deferred transaction
        // that has to upgrade while a sink acknowledges could fail with SQLITE_BUSY at once.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let mut inserted = 0;
        let mut conflicts = Vec::new();
        for (event, body, data_body) in &rows {
            let new = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO events (id, type, subject, time, body, stored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![event.id(), event.event_type(), event.subject(), event.time().to_rfc3339(), body, now])
                })
                .map_err(&err)?
                == 1;
            if new {
                inserted += 1;
            } else {
                let stored: Option<String> = tx
                    .query_row("SELECT body FROM events WHERE id = ?1", [event.id()], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(&err)?;
                if stored.is_some_and(|stored| !same_json(&stored, body)) {
                    conflicts.push(event.id().to_string());
                }
                // A replay or a conflict: the history already has this revision.
                continue;
            }
            let incident = match event {
                OutboxEvent::Incident(e) => &e.data,
                // Stored for the sinks; no history of its own.
                OutboxEvent::PatrolRound(_) => continue,
                OutboxEvent::GridRisk(e) => {
                    // The cell's risk history, for charts.
                    let change = &e.data;
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO grid_risk (id, grid, revision, at, level, score, body)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            change.id,
                            change.grid.as_str(),
                            i64::try_from(change.revision).unwrap_or(i64::MAX),
                            change.at.to_rfc3339(),
                            change.level.map(|l| l.as_str()),
                            f64::from(change.score),
                            data_body,
                        ])
                    })
                    .map_err(&err)?;
                    continue;
                }
            };
            if let OutboxEvent::Incident(e) = event {
                tx.prepare_cached(
                    "INSERT INTO incident_districts (id, district) VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET district = excluded.district",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![incident.id, crate::district_of_source(&e.source)])
                })
                .map_err(&err)?;
            }
            let status = incident_status(incident);
            tx.prepare_cached(
                "INSERT INTO incidents (id, revision, status, category, level, grid, camera, owner, first_seen, last_seen, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(id) DO UPDATE SET revision = excluded.revision, status = excluded.status, level = excluded.level,
                     last_seen = excluded.last_seen, body = excluded.body
                 WHERE excluded.revision > incidents.revision",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    incident.id,
                    incident.revision,
                    status,
                    incident.category,
                    incident.level.as_str(),
                    incident.grid.as_str(),
                    incident.device().as_str(),
                    incident.owner.as_str(),
                    incident.first_seen.to_rfc3339(),
                    incident.last_seen.to_rfc3339(),
                    data_body,
                ])
            })
            .map_err(&err)?;
        }
        write_state(&tx, &now).map_err(&err)?;
        crate::cases_log::write(&tx, &self.staged_cases).map_err(&err)?;
        tx.commit().map_err(&err)?;
        self.staged_cases = Default::default();
        // Reported only once committed: a rolled-back commit conflicted with nothing.
        for id in &conflicts {
            metrics::counter!("skynet_outbox_conflicts_total").increment(1);
            tracing::error!(event = %id, "event id already stored with a different body; kept the stored event");
        }
        Ok(inserted)
    }

    /// The pipeline state saved by the last [`commit`](Self::commit) that carried one.
    pub fn load_state(&self) -> Result<Option<String>, EmitError> {
        self.conn
            .query_row(
                "SELECT value FROM state WHERE key = ?1",
                [PIPELINE_STATE],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    fn cursor(&self, sink: &str) -> Result<i64, EmitError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT delivered_seq FROM sink_cursors WHERE sink = ?1",
                [sink],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        Ok(seq.unwrap_or(0))
    }

    /// Up to `limit` events `sink` has not acknowledged, oldest first.
    pub fn pending(&self, sink: &str, limit: usize) -> Result<Vec<StoredEvent>, EmitError> {
        let after = self.cursor(sink)?;
        self.stored_events(
            "SELECT seq, id, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            &after,
            limit,
        )
    }

    /// Events as `sql` selects them (`seq, id, body`, with `?1` the key and `?2` the limit).
    fn stored_events(
        &self,
        sql: &str,
        key: &dyn rusqlite::ToSql,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, EmitError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.err())?;
        let rows = stmt
            .query_map(
                params![key, i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| {
                    Ok(StoredEvent {
                        seq: r.get(0)?,
                        id: r.get(1)?,
                        body: r.get(2)?,
                    })
                },
            )
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// The sequence number of the newest stored event (0: none): every event a commit
    /// stored before this call is at or below it.
    pub fn last_seq(&self) -> Result<i64, EmitError> {
        let seq: Option<i64> = self
            .conn
            .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))
            .map_err(self.err())?;
        Ok(seq.unwrap_or(0))
    }

    /// The sequence number up to which `sink` has taken every event (0: none yet).
    pub fn delivered_seq(&self, sink: &str) -> Result<i64, EmitError> {
        self.cursor(sink)
    }

    pub fn pending_count(&self, sink: &str) -> Result<u64, EmitError> {
        let after = self.cursor(sink)?;
        let n: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM events WHERE seq > ?1", [after], |r| {
                r.get(0)
            })
            .map_err(self.err())?;
        Ok(n as u64)
    }

    /// Records that `sink` has durably taken every event up to `seq`.
    pub fn acknowledge(&self, sink: &str, seq: i64) -> Result<(), EmitError> {
        self.conn
            .execute(
                "INSERT INTO sink_cursors (sink, delivered_seq) VALUES (?1, ?2)
                 ON CONFLICT(sink) DO UPDATE SET delivered_seq = max(delivered_seq, excluded.delivered_seq)",
                params![sink, seq],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Records that `sink` has handled every event up to `seq`, and keeps the events it
    /// refused for good in `dead_letters`, in one transaction: an event is never both behind
    /// the cursor and missing from the dead letters. A dead letter stored again (the batch
    /// was offered twice) is updated, keeping a replay already asked for.
    pub fn acknowledge_with_dead_letters(
        &self,
        sink: &str,
        seq: i64,
        dead: &[DeadLetter],
    ) -> Result<(), EmitError> {
        let tx = self.immediate()?;
        for letter in dead {
            upsert_dead_letter(&tx, letter).map_err(self.err())?;
        }
        tx.execute(
            "INSERT INTO sink_cursors (sink, delivered_seq) VALUES (?1, ?2)
             ON CONFLICT(sink) DO UPDATE SET delivered_seq = max(delivered_seq, excluded.delivered_seq)",
            params![sink, seq],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    /// Up to `limit` dead letters of `sink` queued for delivery again, oldest first.
    pub fn replays(&self, sink: &str, limit: usize) -> Result<Vec<StoredEvent>, EmitError> {
        self.stored_events(
            "SELECT seq, id, body FROM dead_letters WHERE sink = ?1 AND replay > 0 ORDER BY seq LIMIT ?2",
            &sink,
            limit,
        )
    }

    /// After a replay: the `delivered` dead letters of `sink` are gone, the `rejected` ones
    /// stay with their new reason and no longer queued. One transaction. Only the rows
    /// named are touched, and a replay asked for meanwhile is not lost: each request counts
    /// `replay` up (to 2 at most), and a delivery refused again counts it down by one.
    pub fn settle_replays(
        &self,
        sink: &str,
        delivered: &[i64],
        rejected: &[DeadLetter],
    ) -> Result<(), EmitError> {
        let tx = self.immediate()?;
        for seq in delivered {
            tx.execute(
                "DELETE FROM dead_letters WHERE sink = ?1 AND seq = ?2",
                params![sink, seq],
            )
            .map_err(self.err())?;
        }
        for letter in rejected {
            upsert_dead_letter(&tx, letter).map_err(self.err())?;
            tx.execute(
                "UPDATE dead_letters SET replay = max(replay - 1, 0) WHERE sink = ?1 AND seq = ?2",
                params![letter.sink, letter.seq],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())
    }

    /// The dead letters, of one sink or all, by sink and then in outbox order.
    pub fn dead_letters(&self, sink: Option<&str>) -> Result<Vec<DeadLetter>, EmitError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT sink, seq, id, status, reason, at, body, replay FROM dead_letters
                 WHERE ?1 IS NULL OR sink = ?1 ORDER BY sink, seq",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([sink], |r| {
                let at: String = r.get(5)?;
                Ok(DeadLetter {
                    sink: r.get(0)?,
                    seq: r.get(1)?,
                    id: r.get(2)?,
                    status: r.get(3)?,
                    reason: r.get(4)?,
                    // Written by this module as RFC 3339; a row edited by hand shows as 1970
                    // rather than hiding the others.
                    at: chrono::DateTime::parse_from_rfc3339(&at)
                        .map(|t| t.with_timezone(&Utc))
                        .unwrap_or_default(),
                    body: r.get(6)?,
                    replay: r.get(7)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    /// Queues dead letters for delivery again: those of `sink` (or every sink) with event
    /// id `id` (or every one). The sink's worker delivers them before its next events, even
    /// while skynet runs. Returns how many are queued.
    pub fn request_replay(&self, sink: Option<&str>, id: Option<&str>) -> Result<usize, EmitError> {
        self.conn
            .execute(
                "UPDATE dead_letters SET replay = min(replay + 1, 2)
                 WHERE (?1 IS NULL OR sink = ?1) AND (?2 IS NULL OR id = ?2)",
                params![sink, id],
            )
            .map_err(self.err())
    }

    /// A write transaction that takes the lock up front, under busy_timeout (see `commit`).
    fn immediate(&self) -> Result<Transaction<'_>, EmitError> {
        Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate).map_err(self.err())
    }

    /// The incident events still in the outbox, in order.
    pub fn events(&self) -> Result<Vec<CloudEvent>, EmitError> {
        self.json_rows("SELECT body FROM events WHERE type = 'skynet.incident.v1' ORDER BY seq")
    }

    /// A cell's level changes, oldest first (`skynet.grid_risk.v1` data), for charts.
    pub fn grid_risk_history(&self, grid: &str) -> Result<Vec<skynet_core::GridRisk>, EmitError> {
        let mut stmt = self
            .conn
            .prepare("SELECT body FROM grid_risk WHERE grid = ?1 ORDER BY at, revision")
            .map_err(self.err())?;
        let bodies = stmt
            .query_map([grid], |r| r.get::<_, String>(0))
            .map_err(self.err())?;
        let mut rows = Vec::new();
        for body in bodies {
            rows.push(serde_json::from_str(&body.map_err(self.err())?)?);
        }
        Ok(rows)
    }

    /// The latest revision of every incident, most recently seen first.
    pub fn incidents(&self) -> Result<Vec<skynet_core::Incident>, EmitError> {
        self.json_rows("SELECT body FROM incidents ORDER BY last_seen DESC")
    }

    pub(crate) fn json_rows<T: serde::de::DeserializeOwned>(
        &self,
        sql: &str,
    ) -> Result<Vec<T>, EmitError> {
        let mut stmt = self.conn.prepare(sql).map_err(self.err())?;
        let bodies = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.err())?;
        let mut rows = Vec::new();
        for body in bodies {
            rows.push(serde_json::from_str(&body.map_err(self.err())?)?);
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn event(revision: u32, risk_score: f32) -> CloudEvent {
        CloudEvent::incident("n1", &crate::test_support::incident(revision, risk_score))
    }

    #[test]
    fn state_is_committed_with_the_events_in_one_transaction_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let mut outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.load_state().unwrap(), None);
        let events = [event(1, 0.3), event(2, 0.4)];
        let wrapped = events.clone().map(OutboxEvent::Incident);
        assert_eq!(
            outbox
                .commit(&wrapped, Some(r#"{"open":["inc-1"]}"#))
                .unwrap(),
            2
        );
        drop(outbox);

        let mut outbox = Outbox::open(&path).unwrap();
        assert_eq!(
            outbox.load_state().unwrap().as_deref(),
            Some(r#"{"open":["inc-1"]}"#)
        );
        assert_eq!(outbox.events().unwrap(), events);
        assert_eq!(outbox.incidents().unwrap()[0].revision, 2);
        // State alone, and a commit without state keeps the last one.
        assert_eq!(outbox.commit(&[], Some("{}")).unwrap(), 0);
        assert_eq!(
            outbox
                .commit(&[OutboxEvent::Incident(event(3, 0.5))], None)
                .unwrap(),
            1
        );
        assert_eq!(outbox.load_state().unwrap().as_deref(), Some("{}"));
    }

    #[test]
    fn grid_risk_changes_are_delivered_and_kept_as_the_cells_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(&dir.path().join("outbox.sqlite")).unwrap();
        let change = |revision: u64, level: Option<skynet_core::RiskLevel>| skynet_core::GridRisk {
            id: format!("g-{revision}"),
            grid: skynet_core::GridId::new("G1"),
            name: Some("north".into()),
            kind: Some("school".into()),
            revision,
            level,
            level_colour: level.map(|l| l.colour().to_string()),
            previous_level: None,
            score: 0.5,
            at: chrono::DateTime::from_timestamp(1_800_000_000 + revision as i64, 0).unwrap(),
            categories: Default::default(),
            incidents: vec!["inc-1".into()],
        };
        let events = [
            OutboxEvent::new(
                "n1",
                &skynet_core::RiskEvent::GridRisk(change(1, Some(skynet_core::RiskLevel::III))),
            ),
            OutboxEvent::Incident(event(1, 0.5)),
            OutboxEvent::new("n1", &skynet_core::RiskEvent::GridRisk(change(2, None))),
        ];
        assert_eq!(outbox.commit(&events, None).unwrap(), 3);
        // Sinks get both kinds, in order.
        let pending = outbox.pending("s", 10).unwrap();
        assert_eq!(pending.len(), 3);
        let first: serde_json::Value = serde_json::from_str(&pending[0].body).unwrap();
        assert_eq!(first["type"], crate::GRID_RISK_EVENT_TYPE);
        assert_eq!(first["subject"], "G1");
        assert_eq!(first["data"]["level"], "III");
        // The history has the cell's changes; the incident history only incidents.
        let history = outbox.grid_risk_history("G1").unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1].level, None);
        assert_eq!(outbox.incidents().unwrap().len(), 1);
        assert_eq!(outbox.events().unwrap().len(), 1);
        // A replay stores nothing twice.
        assert_eq!(outbox.commit(&events, None).unwrap(), 0);
        assert_eq!(outbox.grid_risk_history("G1").unwrap().len(), 2);
    }

    /// Counts `skynet_outbox_conflicts_total` and nothing else.
    struct ConflictRecorder(Arc<AtomicU64>);

    impl metrics::Recorder for ConflictRecorder {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            key: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            if key.name() == "skynet_outbox_conflicts_total" {
                metrics::Counter::from_arc(self.0.clone())
            } else {
                metrics::Counter::noop()
            }
        }
        fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            metrics::Gauge::noop()
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn an_event_id_reused_with_different_content_is_counted_not_silently_ignored() {
        let mut outbox = Outbox::open(Path::new(":memory:")).unwrap();
        let conflicts = Arc::new(AtomicU64::new(0));
        let recorder = ConflictRecorder(conflicts.clone());
        let original_event = event(1, 0.3);
        let reused_event = event(1, 0.9);
        let original = OutboxEvent::Incident(original_event.clone());
        let reused = OutboxEvent::Incident(reused_event.clone());
        assert_eq!(original.id(), reused.id());
        metrics::with_local_recorder(&recorder, || {
            assert_eq!(
                outbox
                    .commit(std::slice::from_ref(&original), None)
                    .unwrap(),
                1
            );
            // A replay of the same event is not a conflict.
            assert_eq!(
                outbox
                    .commit(std::slice::from_ref(&original), None)
                    .unwrap(),
                0
            );
            assert_eq!(conflicts.load(Ordering::Relaxed), 0);
            assert_eq!(
                outbox.commit(std::slice::from_ref(&reused), None).unwrap(),
                0
            );
        });
        assert_eq!(conflicts.load(Ordering::Relaxed), 1);
        assert_eq!(outbox.events().unwrap(), vec![original_event.clone()]);
        assert_eq!(outbox.incidents().unwrap()[0], original_event.data);
        assert!(!outbox.append(&reused_event).unwrap());
    }

    fn letter(seq: i64, reason: &str) -> DeadLetter {
        DeadLetter {
            sink: "s".into(),
            seq,
            id: format!("inc-1/{seq}"),
            status: Some(400),
            reason: reason.into(),
            at: Utc::now(),
            body: format!("{{\"id\":\"inc-1/{seq}\"}}"),
            replay: false,
        }
    }

    #[test]
    fn dead_letters_move_with_the_cursor_and_a_settle_touches_only_the_rows_it_names() {
        let mut outbox = Outbox::open(Path::new(":memory:")).unwrap();
        for revision in 1..=3 {
            assert!(outbox.append(&event(revision, 0.3)).unwrap());
        }
        outbox
            .acknowledge_with_dead_letters("s", 3, &[letter(1, "bad"), letter(2, "bad")])
            .unwrap();
        assert!(outbox.pending("s", 10).unwrap().is_empty());
        assert_eq!(outbox.dead_letters(Some("s")).unwrap().len(), 2);
        assert!(outbox.dead_letters(Some("other")).unwrap().is_empty());

        // The same batch acknowledged again (a retry after a lost acknowledgement): no
        // second row, and a replay already asked for is kept.
        assert_eq!(
            outbox.request_replay(Some("s"), Some("inc-1/1")).unwrap(),
            1
        );
        outbox
            .acknowledge_with_dead_letters("s", 3, &[letter(1, "bad")])
            .unwrap();
        let rows = outbox.dead_letters(None).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].replay && !rows[1].replay);
        let replays = outbox.replays("s", 10).unwrap();
        assert_eq!(replays.iter().map(|e| e.seq).collect::<Vec<_>>(), [1]);
        assert_eq!(replays[0].body, letter(1, "").body);

        // Seq 2 is queued after the worker read its replays: settling seq 1 leaves it queued.
        outbox.request_replay(None, Some("inc-1/2")).unwrap();
        outbox.settle_replays("s", &[1], &[]).unwrap();
        let rows = outbox.dead_letters(None).unwrap();
        assert_eq!((rows.len(), rows[0].seq, rows[0].replay), (1, 2, true));
        // Refused again: kept with the new reason, no longer queued.
        outbox
            .settle_replays("s", &[], &[letter(2, "still bad")])
            .unwrap();
        let rows = outbox.dead_letters(None).unwrap();
        assert_eq!(
            (rows[0].reason.as_str(), rows[0].replay),
            ("still bad", false)
        );
        assert!(outbox.replays("s", 10).unwrap().is_empty());
    }
}
