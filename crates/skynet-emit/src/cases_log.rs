//! The outbox's record of case status events: the ids applied (`case_events`, so that each
//! applies at most once, even when redelivered after a restart) and the refused ones (the
//! dead letters of sink `cases`). Both are written by the commit that answers the events, in
//! the same transaction as the revisions they caused.

use chrono::{DateTime, Utc};
use rusqlite::{Transaction, params};

use crate::cases::CaseRecord;
use crate::outbox::upsert_dead_letter;
use crate::{EmitError, Outbox};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS case_events (
    id        TEXT PRIMARY KEY,
    incident  TEXT NOT NULL,
    at        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS case_events_by_at ON case_events (at);
";

/// What the next commit writes of case status events.
#[derive(Debug, Default)]
pub(crate) struct StagedCases {
    records: Vec<CaseRecord>,
    /// Applied ids older than this are forgotten (the stream no longer holds their events).
    forget_before: Option<DateTime<Utc>>,
}

impl StagedCases {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.forget_before.is_none()
    }
}

/// Writes what is staged, inside the commit's transaction.
pub(crate) fn write(tx: &Transaction<'_>, staged: &StagedCases) -> rusqlite::Result<()> {
    for record in &staged.records {
        match record {
            CaseRecord::Applied { id, incident, at } => {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO case_events (id, incident, at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, incident, at.to_rfc3339()])?;
            }
            CaseRecord::Refused(letter) => {
                upsert_dead_letter(tx, letter)?;
            }
        }
    }
    if let Some(before) = staged.forget_before {
        tx.prepare_cached("DELETE FROM case_events WHERE at < ?1")?
            .execute([before.to_rfc3339()])?;
    }
    Ok(())
}

impl Outbox {
    /// Stages what the next [`commit`](Self::commit) records of case status events: applied
    /// ids and refused events, and the age past which applied ids are forgotten. Replaces
    /// what was staged before (a retried commit stages the same again); cleared once a
    /// commit succeeds.
    pub fn stage_cases(&mut self, records: Vec<CaseRecord>, forget_before: Option<DateTime<Utc>>) {
        self.staged_cases = StagedCases {
            records,
            forget_before,
        };
    }

    /// Whether the next commit has case records to write, even with no revision.
    pub fn has_staged_cases(&self) -> bool {
        !self.staged_cases.is_empty()
    }

    /// The ids of the case status events applied at or after `since`, with when.
    pub fn applied_case_events(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, EmitError> {
        let mut stmt = self
            .conn()
            .prepare("SELECT id, at FROM case_events WHERE at >= ?1")
            .map_err(self.err())?;
        let since = since.map(|t| t.to_rfc3339()).unwrap_or_default();
        let rows = stmt
            .query_map([since], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(self.err())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at) = row.map_err(self.err())?;
            // A time that does not parse (written by hand) counts as now: kept, not lost.
            let at = DateTime::parse_from_rfc3339(&at)
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_else(|_| Utc::now());
            out.push((id, at));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::cases::CASES_DEAD_LETTER_SINK;
    use crate::{DeadLetter, OutboxEvent};

    fn letter(seq: i64, reason: &str) -> DeadLetter {
        DeadLetter {
            sink: CASES_DEAD_LETTER_SINK.into(),
            seq,
            id: format!("e{seq}"),
            status: None,
            reason: reason.into(),
            at: Utc::now(),
            body: "{}".into(),
            replay: false,
        }
    }

    #[test]
    fn applied_ids_and_refusals_are_written_by_the_commit_and_only_when_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sqlite");
        let mut outbox = Outbox::open(&path).unwrap();
        let now = Utc::now();
        let old = now - chrono::Duration::days(40);
        outbox.stage_cases(
            vec![
                CaseRecord::Applied {
                    id: "old".into(),
                    incident: "inc-0".into(),
                    at: old,
                },
                CaseRecord::Applied {
                    id: "e1".into(),
                    incident: "inc-1".into(),
                    at: now,
                },
                CaseRecord::Refused(letter(
                    7,
                    "source: source `anyone` is not one of [cases] sources",
                )),
            ],
            None,
        );
        assert!(outbox.has_staged_cases());
        let none: &[OutboxEvent] = &[];
        outbox.commit(none, None).unwrap();
        assert!(!outbox.has_staged_cases(), "cleared once committed");
        let ids: Vec<String> = outbox
            .applied_case_events(None)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids.len(), 2);
        let letters = outbox.dead_letters(Some("cases")).unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].seq, 7);
        assert!(letters[0].reason.starts_with("source"));

        // Forgotten past the stream's age, in the next commit; a reopened outbox reads the rest.
        outbox.stage_cases(Vec::new(), Some(now - chrono::Duration::days(30)));
        outbox.commit(none, None).unwrap();
        drop(outbox);
        let outbox = Outbox::open(&path).unwrap();
        let left = outbox.applied_case_events(None).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, "e1");
        assert!(
            outbox
                .applied_case_events(Some(now + chrono::Duration::seconds(1)))
                .unwrap()
                .is_empty()
        );
        let _ = Path::new("");
    }
}
