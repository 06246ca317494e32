//! The pipeline's saved state, as rows beside the revisions it led to.
//!
//! - `state` (key `pipeline`): the small part, rewritten on every commit: the state's
//!   version, each camera's clock, rule memories and the risk engine's global part.
//! - `state_cells` (one row per grid cell) and `state_ids` (one row per incident key's id
//!   bookkeeping): only the rows the engine changed are written, in the commit's own
//!   transaction, so a commit's cost follows what changed, not how many incidents are open.
//!   Rows are upserted in place: the tables stay one row per live key, the compact snapshot
//!   itself; the WAL is checkpointed on a timer ([`Outbox::checkpoint`]).
//!
//! A state that cannot be read is never dropped silently: the pipeline refuses to start and
//! `skynet state recover` ([`Outbox::close_lost_incidents`]) closes what it held downstream.

use rusqlite::{OptionalExtension, Transaction, params};
use skynet_core::{Incident, IncidentChange, IncidentState, IncidentStatus, RiskEvent};

use crate::{EmitError, Outbox, OutboxEvent};

/// The row tables (the `state` table itself is in the outbox's schema).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS state_cells (
    grid  TEXT PRIMARY KEY,
    body  TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state_ids (
    key   TEXT PRIMARY KEY,
    body  TEXT NOT NULL
) WITHOUT ROWID;
";

/// The `state` row that holds the pipeline's small part (and, in the old layout, the whole
/// state).
pub(crate) const PIPELINE_STATE: &str = "pipeline";

/// What one commit changes of the saved state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StateChanges {
    /// The pipeline's small part, as JSON: replaces the stored one.
    pub pipeline: String,
    /// Changed cells by id: the body, or `None` to delete the row.
    pub cells: Vec<(String, Option<String>)>,
    /// Changed incident-id rows by key: the body, or `None` to delete the row.
    pub ids: Vec<(String, Option<String>)>,
}

/// The saved state as stored, read back at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredState {
    /// The `pipeline` row; `None` when nothing was ever saved (or after a recovery).
    pub pipeline: Option<String>,
    pub cells: Vec<(String, String)>,
    pub ids: Vec<(String, String)>,
}

impl StoredState {
    pub fn is_empty(&self) -> bool {
        self.pipeline.is_none() && self.cells.is_empty() && self.ids.is_empty()
    }
}

/// Writes `changes` inside the commit's transaction.
pub(crate) fn write(
    tx: &Transaction<'_>,
    changes: &StateChanges,
    now: &str,
) -> rusqlite::Result<()> {
    write_pipeline(tx, &changes.pipeline, now)?;
    for (table, key_column, rows) in [
        ("state_cells", "grid", &changes.cells),
        ("state_ids", "key", &changes.ids),
    ] {
        for (key, body) in rows {
            match body {
                Some(body) => tx
                    .prepare_cached(&format!(
                        "INSERT INTO {table} ({key_column}, body) VALUES (?1, ?2)
                         ON CONFLICT({key_column}) DO UPDATE SET body = excluded.body"
                    ))?
                    .execute(params![key, body])?,
                None => tx
                    .prepare_cached(&format!("DELETE FROM {table} WHERE {key_column} = ?1"))?
                    .execute(params![key])?,
            };
        }
    }
    Ok(())
}

/// Writes the `pipeline` row (the whole state, in the old layout).
pub(crate) fn write_pipeline(tx: &Transaction<'_>, state: &str, now: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO state (key, value, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
    )?
    .execute(params![PIPELINE_STATE, state, now])?;
    Ok(())
}

/// Deletes the saved state: the next start is a fresh one.
fn clear(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM state_cells", [])?;
    tx.execute("DELETE FROM state_ids", [])?;
    tx.execute("DELETE FROM state WHERE key = ?1", [PIPELINE_STATE])?;
    Ok(())
}

/// The closing revision of an incident whose engine state was lost.
fn state_lost(mut incident: Incident) -> Incident {
    incident.revision = incident.revision.saturating_add(1);
    incident.status = IncidentStatus::Closed;
    incident.state = IncidentState::Closed;
    incident.change = IncidentChange::StateLost;
    incident
}

impl Outbox {
    /// `PRAGMA quick_check`: `None` when the file is sound, else what SQLite found (the
    /// first few problems).
    pub fn quick_check(&self) -> Result<Option<String>, EmitError> {
        let mut stmt = self
            .conn()
            .prepare("PRAGMA quick_check(5)")
            .map_err(self.err())?;
        let found = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.err())?
            .collect::<Result<Vec<String>, _>>()
            .map_err(self.err())?;
        Ok((found != ["ok"]).then(|| found.join("; ")))
    }

    /// The saved state, as stored: the `pipeline` row and every cell and id row.
    pub fn load_state_rows(&self) -> Result<StoredState, EmitError> {
        let pipeline = self
            .conn()
            .query_row(
                "SELECT value FROM state WHERE key = ?1",
                [PIPELINE_STATE],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        let rows = |sql: &str| -> Result<Vec<(String, String)>, EmitError> {
            let mut stmt = self.conn().prepare(sql).map_err(self.err())?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.err())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(self.err())?;
            Ok(rows)
        };
        Ok(StoredState {
            pipeline,
            cells: rows("SELECT grid, body FROM state_cells")?,
            ids: rows("SELECT key, body FROM state_ids")?,
        })
    }

    /// Stores `events` and the state's changes in one transaction (see
    /// [`commit`](Self::commit)). Returns how many events were new.
    pub fn commit_state(
        &mut self,
        events: &[OutboxEvent],
        changes: &StateChanges,
    ) -> Result<usize, EmitError> {
        self.commit_with(events, |tx, now| write(tx, changes, now))
    }

    /// Checkpoints the WAL into the database file: `truncate` also empties the WAL file (it
    /// waits for readers, under the busy handler); otherwise only what no reader needs is
    /// copied, without waiting. Returns whether the checkpoint ran to the end.
    pub fn checkpoint(&self, truncate: bool) -> Result<bool, EmitError> {
        let mode = if truncate { "TRUNCATE" } else { "PASSIVE" };
        let busy: i64 = self
            .conn()
            .query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))
            .map_err(self.err())?;
        Ok(busy == 0)
    }

    /// `skynet state recover`: for every incident the history lists as not closed, commits a
    /// closing revision (status `closed`, change `state_lost`) that every sink then delivers,
    /// and deletes the saved state, all in one transaction: the next start is a fresh one
    /// and no incident stays open downstream for ever. Returns the closing revisions.
    pub fn close_lost_incidents(&mut self, node: &str) -> Result<Vec<Incident>, EmitError> {
        let open: Vec<Incident> = self.json_rows(
            "SELECT body FROM incidents WHERE status != 'closed' ORDER BY first_seen, id",
        )?;
        let closing: Vec<Incident> = open.into_iter().map(state_lost).collect();
        let events: Vec<OutboxEvent> = closing
            .iter()
            .map(|i| OutboxEvent::new(node, &RiskEvent::Incident(i.clone())))
            .collect();
        self.commit_with(&events, |tx, _| clear(tx))?;
        Ok(closing)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn changes(cells: &[(&str, Option<&str>)], ids: &[(&str, Option<&str>)]) -> StateChanges {
        let own = |rows: &[(&str, Option<&str>)]| {
            rows.iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect()
        };
        StateChanges {
            pipeline: r#"{"version":2}"#.into(),
            cells: own(cells),
            ids: own(ids),
        }
    }

    #[test]
    fn changes_upsert_and_delete_rows_and_read_back() {
        let mut outbox = Outbox::open(Path::new(":memory:")).unwrap();
        assert!(outbox.load_state_rows().unwrap().is_empty());
        outbox
            .commit_state(
                &[],
                &changes(
                    &[("G-1", Some("{\"a\":1}")), ("G-2", Some("{}"))],
                    &[("k1", Some("{}"))],
                ),
            )
            .unwrap();
        outbox
            .commit_state(
                &[],
                &changes(&[("G-1", Some("{\"a\":2}")), ("G-2", None)], &[]),
            )
            .unwrap();
        let stored = outbox.load_state_rows().unwrap();
        assert_eq!(stored.pipeline.as_deref(), Some(r#"{"version":2}"#));
        assert_eq!(stored.cells, vec![("G-1".into(), "{\"a\":2}".into())]);
        assert_eq!(stored.ids, vec![("k1".into(), "{}".into())]);
        assert_eq!(outbox.quick_check().unwrap(), None);
        assert!(outbox.checkpoint(false).is_ok());
    }

    #[test]
    fn recovery_closes_every_open_incident_once_and_clears_the_state() {
        let mut outbox = Outbox::open(Path::new(":memory:")).unwrap();
        let open = crate::test_support::incident(2, 0.5);
        let event = OutboxEvent::new("n1", &RiskEvent::Incident(open.clone()));
        outbox
            .commit_state(&[event], &changes(&[("G-1", Some("{}"))], &[]))
            .unwrap();
        let closed = outbox.close_lost_incidents("n1").unwrap();
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].id, open.id);
        assert_eq!(closed[0].revision, 3);
        assert_eq!(closed[0].change, IncidentChange::StateLost);
        assert_eq!(closed[0].status, IncidentStatus::Closed);
        assert!(outbox.load_state_rows().unwrap().is_empty());
        let history = outbox.incidents().unwrap();
        assert_eq!(history[0].revision, 3);
        assert_eq!(history[0].status, IncidentStatus::Closed);
        // Nothing is left open: a second recovery closes nothing.
        assert!(outbox.close_lost_incidents("n1").unwrap().is_empty());
    }
}
