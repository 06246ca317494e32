//! The durable outbox and incident history, in SQLite.

use std::path::{Path, PathBuf};

use chrono::Utc;
use rusqlite::{Connection, OptionalExtension, params};

use crate::{CloudEvent, EmitError};

/// An event as stored: its place in the outbox and its JSON body, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: String,
    pub body: String,
}

pub struct Outbox {
    path: PathBuf,
    conn: Connection,
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
";

impl Outbox {
    /// Opens (creating if needed) the outbox at `path`; `:memory:` gives a throwaway one.
    pub fn open(path: &Path) -> Result<Self, EmitError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| EmitError::CreateDir {
                path: path.to_path_buf(),
                source,
            })?;
        }
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
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self {
            path: path.to_path_buf(),
            conn,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> EmitError + '_ {
        move |source| EmitError::Outbox {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores an event and updates the incident history, atomically. Returns false when an
    /// event with the same id was already stored (a replay), which changes nothing.
    pub fn append(&mut self, event: &CloudEvent) -> Result<bool, EmitError> {
        let body = serde_json::to_string(event)?;
        let incident = &event.data;
        let path = self.path.clone();
        let err = move |source| EmitError::Outbox {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(&err)?;
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO events (id, type, subject, time, body, stored_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![event.id, event.event_type, event.subject, event.time.to_rfc3339(), body, Utc::now().to_rfc3339()],
            )
            .map_err(&err)?
            == 1;
        tx.execute(
            "INSERT INTO incidents (id, revision, status, category, level, grid, camera, owner, first_seen, last_seen, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT(id) DO UPDATE SET revision = excluded.revision, status = excluded.status, level = excluded.level,
                 last_seen = excluded.last_seen, body = excluded.body
             WHERE excluded.revision > incidents.revision",
            params![
                incident.id,
                incident.revision,
                serde_json::to_value(incident.status)?.as_str().unwrap_or_default(),
                incident.category,
                incident.level.as_str(),
                incident.grid.as_str(),
                incident.camera.as_str(),
                incident.owner.as_str(),
                incident.first_seen.to_rfc3339(),
                incident.last_seen.to_rfc3339(),
                serde_json::to_string(incident)?,
            ],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(inserted)
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
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, id, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(self.err())?;
        let rows = stmt
            .query_map(params![after, limit as i64], |r| {
                Ok(StoredEvent {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    body: r.get(2)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
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

    /// Deletes events stored before `before` that every one of `sinks` has acknowledged,
    /// so the outbox stays bounded; the `incidents` history is kept. Returns how many went.
    pub fn prune(&self, sinks: &[&str], before: chrono::DateTime<Utc>) -> Result<usize, EmitError> {
        let mut delivered_by_all = i64::MAX;
        for sink in sinks {
            delivered_by_all = delivered_by_all.min(self.cursor(sink)?);
        }
        self.conn
            .execute(
                "DELETE FROM events WHERE seq <= ?1 AND stored_at < ?2",
                params![delivered_by_all, before.to_rfc3339()],
            )
            .map_err(self.err())
    }

    /// Every stored event, oldest first.
    pub fn events(&self) -> Result<Vec<CloudEvent>, EmitError> {
        self.json_rows("SELECT body FROM events ORDER BY seq")
    }

    /// The latest revision of every incident, most recently seen first.
    pub fn incidents(&self) -> Result<Vec<skynet_core::Incident>, EmitError> {
        self.json_rows("SELECT body FROM incidents ORDER BY last_seen DESC")
    }

    fn json_rows<T: serde::de::DeserializeOwned>(&self, sql: &str) -> Result<Vec<T>, EmitError> {
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
