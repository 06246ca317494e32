//! Reading the incident history for people: filtered, paged lists of incidents, an
//! incident's revisions, and each cell's latest level. The console's API reads these.

use chrono::{DateTime, Utc};
use rusqlite::types::Value;
use skynet_core::{GridRisk, Incident};

use crate::{EmitError, INCIDENT_EVENT_TYPE, Outbox};

/// Which incidents to list. Empty lists and `None` mean "any"; results come newest
/// `last_seen` first.
#[derive(Debug, Clone, Default)]
pub struct IncidentQuery {
    pub states: Vec<String>,
    pub levels: Vec<String>,
    pub grids: Vec<String>,
    pub categories: Vec<String>,
    pub owners: Vec<String>,
    pub departments: Vec<String>,
    /// The districts (the events' `source` without `skynet/`, see
    /// [`crate::district_of_source`]).
    pub districts: Vec<String>,
    /// Last seen at or after.
    pub since: Option<DateTime<Utc>>,
    /// Last seen before.
    pub until: Option<DateTime<Utc>>,
    /// Only incidents not in a final state (verified, rejected, closed).
    pub active_only: bool,
    /// Earliest deadline first (dispatch until dispatched, then resolution; none last)
    /// instead of newest first; `after` does not apply.
    pub by_deadline: bool,
    /// The page: after this `(last_seen, id)` cursor, from the previous page's last row.
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// One page of incidents and the cursor of the next, when there may be more.
#[derive(Debug, Clone)]
pub struct IncidentPage {
    pub incidents: Vec<Incident>,
    pub next: Option<(String, String)>,
}

fn any_of(sql: &mut String, args: &mut Vec<Value>, column: &str, values: &[String]) {
    if values.is_empty() {
        return;
    }
    let marks = vec!["?"; values.len()].join(", ");
    sql.push_str(&format!(" AND {column} IN ({marks})"));
    args.extend(values.iter().map(|v| Value::Text(v.clone())));
}

impl Outbox {
    /// A page of incidents matching `query` (their latest revisions).
    pub fn query_incidents(&self, query: &IncidentQuery) -> Result<IncidentPage, EmitError> {
        let mut sql = String::from("SELECT body, last_seen, id FROM incidents WHERE 1 = 1");
        let mut args: Vec<Value> = Vec::new();
        any_of(&mut sql, &mut args, "level", &query.levels);
        any_of(&mut sql, &mut args, "grid", &query.grids);
        any_of(&mut sql, &mut args, "category", &query.categories);
        any_of(&mut sql, &mut args, "owner", &query.owners);
        // The state and department live in the body only (columns would need a migration
        // of every outbox in the field); the last_seen index bounds the scan per page.
        any_of(
            &mut sql,
            &mut args,
            "json_extract(body, '$.state')",
            &query.states,
        );
        any_of(
            &mut sql,
            &mut args,
            "json_extract(body, '$.department')",
            &query.departments,
        );
        if !query.districts.is_empty() {
            let marks = vec!["?"; query.districts.len()].join(", ");
            sql.push_str(&format!(
                " AND id IN (SELECT id FROM incident_districts WHERE district IN ({marks}))"
            ));
            args.extend(query.districts.iter().map(|v| Value::Text(v.clone())));
        }
        if query.active_only {
            sql.push_str(
                " AND coalesce(json_extract(body, '$.state'), 'open') NOT IN ('verified', 'rejected', 'closed')",
            );
        }
        if let Some(since) = query.since {
            sql.push_str(" AND last_seen >= ?");
            args.push(Value::Text(since.to_rfc3339()));
        }
        if let Some(until) = query.until {
            sql.push_str(" AND last_seen < ?");
            args.push(Value::Text(until.to_rfc3339()));
        }
        if let Some((last_seen, id)) = &query.after {
            sql.push_str(" AND (last_seen < ? OR (last_seen = ? AND id < ?))");
            args.extend([
                Value::Text(last_seen.clone()),
                Value::Text(last_seen.clone()),
                Value::Text(id.clone()),
            ]);
        }
        let limit = query.limit.clamp(1, 1000);
        // One more than asked: whether a next page exists without a second query.
        if query.by_deadline {
            sql.push_str(&format!(
                " ORDER BY coalesce(CASE WHEN coalesce(json_extract(body, '$.state'), 'open') IN ('open', 'acknowledged')
                     THEN json_extract(body, '$.deadlines.dispatch_by') END,
                   json_extract(body, '$.deadlines.resolve_by'), '9999') ASC, id LIMIT {}",
                limit + 1
            ));
        } else {
            sql.push_str(&format!(
                " ORDER BY last_seen DESC, id DESC LIMIT {}",
                limit + 1
            ));
        }
        let mut stmt = self.conn().prepare_cached(&sql).map_err(self.err())?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(self.err())?;
        let mut incidents = Vec::new();
        let mut cursor = None;
        for row in rows {
            let (body, last_seen, id) = row.map_err(self.err())?;
            if incidents.len() == limit {
                return Ok(IncidentPage {
                    incidents,
                    next: cursor,
                });
            }
            incidents.push(serde_json::from_str(&body)?);
            cursor = Some((last_seen, id));
        }
        Ok(IncidentPage {
            incidents,
            next: None,
        })
    }

    /// The latest revision of one incident.
    pub fn incident(&self, id: &str) -> Result<Option<Incident>, EmitError> {
        use rusqlite::OptionalExtension;
        let body: Option<String> = self
            .conn()
            .query_row("SELECT body FROM incidents WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(self.err())?;
        Ok(match body {
            Some(body) => Some(serde_json::from_str(&body)?),
            None => None,
        })
    }

    /// The district of each of `ids` that has one (incidents stored before districts were
    /// kept have none).
    pub fn incident_districts(
        &self,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, String>, EmitError> {
        let mut districts = std::collections::HashMap::new();
        // Bound parameters in chunks well under SQLite's limit.
        for chunk in ids.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let mut stmt = self
                .conn()
                .prepare_cached(&format!(
                    "SELECT id, district FROM incident_districts WHERE id IN ({marks})"
                ))
                .map_err(self.err())?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(chunk.iter()), |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(self.err())?;
            for row in rows {
                let (id, district) = row.map_err(self.err())?;
                districts.insert(id, district);
            }
        }
        Ok(districts)
    }

    /// An incident's revisions still in the outbox (retention prunes old ones), oldest first.
    pub fn incident_revisions(&self, id: &str) -> Result<Vec<Incident>, EmitError> {
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT json_extract(body, '$.data') FROM events WHERE subject = ?1 AND type = ?2 ORDER BY seq",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([id, INCIDENT_EVENT_TYPE], |r| r.get::<_, String>(0))
            .map_err(self.err())?;
        let mut revisions = Vec::new();
        for row in rows {
            revisions.push(serde_json::from_str(&row.map_err(self.err())?)?);
        }
        Ok(revisions)
    }

    /// Each cell's latest level change.
    pub fn latest_grid_risk(&self) -> Result<Vec<GridRisk>, EmitError> {
        self.json_rows(
            "SELECT g.body FROM grid_risk g
             JOIN (SELECT grid, max(revision) AS revision FROM grid_risk GROUP BY grid) latest
               ON g.grid = latest.grid AND g.revision = latest.revision",
        )
    }

    /// How many incidents in each cell are not in a final state; only those of `department`
    /// and `owner` when given.
    pub fn active_incidents_by_grid(
        &self,
        department: Option<&str>,
        owner: Option<&str>,
    ) -> Result<Vec<(String, u64)>, EmitError> {
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT grid, count(*) FROM incidents
                 WHERE coalesce(json_extract(body, '$.state'), 'open') NOT IN ('verified', 'rejected', 'closed')
                   AND status != 'closed'
                   AND (?1 IS NULL OR json_extract(body, '$.department') = ?1)
                   AND (?2 IS NULL OR owner = ?2)
                 GROUP BY grid",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map(rusqlite::params![department, owner], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(self.err())?;
        let mut counts = Vec::new();
        for row in rows {
            let (grid, n) = row.map_err(self.err())?;
            counts.push((grid, u64::try_from(n).unwrap_or(0)));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CloudEvent, OutboxEvent};
    use skynet_core::{IncidentState, RiskLevel};

    fn incident(id: &str, revision: u32, minute: u32, level: RiskLevel) -> Incident {
        let mut incident = crate::test_support::incident(revision, 0.5);
        incident.id = id.into();
        incident.level = level;
        incident.last_seen = format!("2026-11-27T10:{minute:02}:00Z").parse().unwrap();
        incident
    }

    #[test]
    fn each_incident_keeps_the_district_of_its_source_and_filters_by_it() {
        let mut outbox = Outbox::open(std::path::Path::new(":memory:")).unwrap();
        let events = [("north", "inc-n", 1), ("south", "inc-s", 2)]
            .map(|(district, id, minute)| {
                OutboxEvent::Incident(CloudEvent::incident(
                    district,
                    &incident(id, 1, minute, RiskLevel::II),
                ))
            })
            .to_vec();
        outbox.commit(&events, None).unwrap();
        let north = outbox
            .query_incidents(&IncidentQuery {
                districts: vec!["north".into()],
                limit: 10,
                ..IncidentQuery::default()
            })
            .unwrap();
        let ids: Vec<&str> = north.incidents.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["inc-n"]);
        let districts = outbox
            .incident_districts(&["inc-n", "inc-s", "inc-x"])
            .unwrap();
        assert_eq!(districts.len(), 2);
        assert_eq!(districts["inc-s"], "south");
        assert_eq!(crate::district_of_source("skynet/north"), "north");
    }

    #[test]
    fn incidents_filter_page_and_keep_their_revisions() {
        let mut outbox = Outbox::open(std::path::Path::new(":memory:")).unwrap();
        let mut events = Vec::new();
        for i in 0..5u32 {
            let level = if i % 2 == 0 {
                RiskLevel::II
            } else {
                RiskLevel::IV
            };
            events.push(OutboxEvent::Incident(CloudEvent::incident(
                "n",
                &incident(&format!("inc-{i}"), 1, i, level),
            )));
        }
        let mut later = incident("inc-0", 2, 30, RiskLevel::I);
        later.state = IncidentState::Dispatched;
        events.push(OutboxEvent::Incident(CloudEvent::incident("n", &later)));
        outbox.commit(&events, None).unwrap();

        let all = outbox
            .query_incidents(&IncidentQuery {
                limit: 2,
                ..IncidentQuery::default()
            })
            .unwrap();
        let ids: Vec<&str> = all.incidents.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["inc-0", "inc-4"], "newest first, latest revision");
        let next = outbox
            .query_incidents(&IncidentQuery {
                limit: 10,
                after: all.next.clone(),
                ..IncidentQuery::default()
            })
            .unwrap();
        let ids: Vec<&str> = next.incidents.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["inc-3", "inc-2", "inc-1"]);
        assert!(next.next.is_none());

        let filtered = outbox
            .query_incidents(&IncidentQuery {
                levels: vec!["II".into()],
                states: vec!["open".into()],
                limit: 10,
                ..IncidentQuery::default()
            })
            .unwrap();
        let ids: Vec<&str> = filtered.incidents.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["inc-4", "inc-2"]);
        let dispatched = outbox
            .query_incidents(&IncidentQuery {
                states: vec!["dispatched".into()],
                levels: vec!["I".into()],
                limit: 10,
                ..IncidentQuery::default()
            })
            .unwrap();
        assert_eq!(dispatched.incidents.len(), 1);

        let revisions = outbox.incident_revisions("inc-0").unwrap();
        assert_eq!(
            revisions.iter().map(|r| r.revision).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(outbox.incident("inc-0").unwrap().unwrap().revision, 2);
        assert!(outbox.incident("nope").unwrap().is_none());

        // Tickets: the earliest deadline first, dispatch until dispatched.
        let by_deadline = outbox
            .query_incidents(&IncidentQuery {
                by_deadline: true,
                active_only: true,
                limit: 10,
                ..IncidentQuery::default()
            })
            .unwrap();
        assert_eq!(by_deadline.incidents.len(), 5);
        assert_eq!(
            outbox.active_incidents_by_grid(None, None).unwrap(),
            [("G1".to_string(), 5)]
        );
        assert!(
            outbox
                .active_incidents_by_grid(Some("elsewhere"), None)
                .unwrap()
                .is_empty()
        );
    }
}
