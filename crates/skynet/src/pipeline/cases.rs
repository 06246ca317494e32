//! The risk stage's desk for status changes: the case system's events (checked before
//! anything is applied: signature, schema, source, id not applied before, department,
//! transition; see `skynet_risk::case_status`) and people's changes from the console.
//!
//! What a commit must record goes with it ([`CaseCommit`]): the ids applied (so a redelivered
//! event is never applied again, even after a restart) and the refused events as dead
//! letters (sink `cases`), in the same transaction as the revisions; after it, the applied
//! events go to the console's audit log with the case system (the event's `source`) as actor.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skynet_core::{CaseStatus, RiskEvent};
use skynet_emit::{
    CaseAck, CaseFeedback, CaseMessage, CaseRecord, Outbox, excerpt, refused_letter,
};
use skynet_risk::RiskEngine;
use skynet_risk::case_status::{
    AppliedEvents, CaseIntake, CaseOutcome, KnownUser, KnownUsers, Refusal, RefusalReason,
    apply_case_status, check_assignment, count_refusal,
};
use skynet_serve::console::{Console, ConsoleStore};

use super::PipelineError;
use crate::config::PipelineConfig;

/// How often applied ids past the stream's age are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// How long the console's users are taken as read before they are read again.
const USERS_EVERY: Duration = Duration::from_secs(5);

/// An applied case-system event, for the console's audit log.
#[derive(Debug, Clone)]
pub(crate) struct CaseAudit {
    /// The CloudEvent `source`: the actor.
    pub source: String,
    pub event_id: String,
    pub status: CaseStatus,
}

/// What the next commit records of status events, with the revisions they caused.
#[derive(Debug, Default)]
pub(crate) struct CaseCommit {
    pub records: Vec<CaseRecord>,
    /// Applied ids older than this are deleted from the outbox.
    pub forget_before: Option<DateTime<Utc>>,
    pub audits: Vec<CaseAudit>,
}

impl CaseCommit {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.forget_before.is_none() && self.audits.is_empty()
    }
}

/// The `[cases]` part: what is accepted, and what was applied.
struct CaseSystem {
    intake: CaseIntake,
    applied: AppliedEvents,
    /// The console's users (the state database), for the assignee check.
    users: Option<ConsoleStore>,
    known_users: KnownUsers,
    users_read: Option<Instant>,
    last_prune: Option<Instant>,
}

pub(crate) struct CaseDesk {
    rx: crossbeam_channel::Receiver<CaseFeedback>,
    /// `None` without `[cases]`: only the console's changes come.
    system: Option<CaseSystem>,
    pending: CaseCommit,
    acks: Vec<CaseAck>,
}

/// Every department the config names: `[risk] default_department`, the categories' and the
/// cells'.
pub(crate) fn known_departments(config: &PipelineConfig) -> BTreeSet<String> {
    std::iter::once(config.risk.default_department.clone())
        .chain(
            config
                .risk
                .categories
                .values()
                .filter_map(|c| c.department.clone()),
        )
        .chain(
            config
                .grids
                .grids()
                .iter()
                .filter_map(|g| g.department.clone()),
        )
        .collect()
}

/// The CloudEvent sources a desk takes: `[cases] sources`, and in a cluster the consoles'
/// (`--role console`) only when `[cases] secret` is set. Without a secret nothing is signed,
/// and `source` is a claim anyone who can publish on the subject makes: an unsigned
/// `skynet-console` event would move incidents on with nobody behind it.
fn intake_sources(config: &PipelineConfig, cases: &skynet_emit::CasesSettings) -> BTreeSet<String> {
    let mut sources: BTreeSet<String> = cases.sources.iter().cloned().collect();
    if !config.cluster.is_single_node() {
        if cases.secret.as_ref().is_some_and(|s| !s.is_empty()) {
            sources.insert(super::city_console::CONSOLE_CASE_SOURCE.to_string());
        } else {
            tracing::warn!(
                source = super::city_console::CONSOLE_CASE_SOURCE,
                "[cases] has no secret: the consoles' status changes are refused (set [cases] secret, SKYNET_CASES_SECRET in the city configs)"
            );
        }
    }
    sources
}

impl CaseDesk {
    /// The desk for `config`: with `[cases]`, the ids applied within `max_age_days` are read
    /// from the outbox, so an event delivered again after a restart is still refused.
    pub(crate) fn new(
        config: &PipelineConfig,
        rx: crossbeam_channel::Receiver<CaseFeedback>,
    ) -> Result<Self, PipelineError> {
        let system = match &config.cases {
            None => None,
            Some(cases) => {
                let keep = chrono::Duration::try_milliseconds(
                    (cases.max_age_days * 86_400_000.0).ceil() as i64,
                )
                .unwrap_or(chrono::Duration::MAX);
                let since = Utc::now().checked_sub_signed(keep);
                let applied = Outbox::open(&config.outbox)?.applied_case_events(since)?;
                tracing::debug!(ids = applied.len(), "case status ids applied before");
                // The users table is the console's; it exists (empty) without `[api]` too.
                let users = match ConsoleStore::open(&config.outbox) {
                    Ok(store) => Some(store),
                    Err(e) => {
                        tracing::warn!(error = %e, "the console's users cannot be read; assignees are not checked");
                        None
                    }
                };
                Some(CaseSystem {
                    intake: CaseIntake {
                        subject_prefix: cases.subject_prefix.clone(),
                        sources: intake_sources(config, cases),
                        secret: cases.secret.clone(),
                        departments: known_departments(config),
                    },
                    applied: AppliedEvents::new(keep, applied),
                    users,
                    known_users: KnownUsers::new(),
                    users_read: None,
                    last_prune: None,
                })
            }
        };
        Ok(Self {
            rx,
            system,
            pending: CaseCommit::default(),
            acks: Vec::new(),
        })
    }

    /// Whether the next commit has something to answer or record, even with no revision.
    pub(crate) fn has_pending(&self) -> bool {
        !self.acks.is_empty() || !self.pending.is_empty()
    }

    /// What the next commit takes: the answers to JetStream and the records.
    pub(crate) fn take_commit(&mut self) -> (Vec<CaseAck>, CaseCommit) {
        (
            std::mem::take(&mut self.acks),
            std::mem::take(&mut self.pending),
        )
    }

    /// Applies or refuses what came since the last call (a bounded batch); returns the
    /// revisions.
    pub(crate) fn take(&mut self, engine: &mut dyn RiskEngine) -> Vec<RiskEvent> {
        let events: Vec<CaseFeedback> = self.rx.try_iter().take(1024).collect();
        if events.is_empty() {
            return Vec::new();
        }
        let now = Utc::now();
        if let Some(system) = &mut self.system {
            system.refresh_users();
            if system.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                system.last_prune = Some(Instant::now());
                self.pending.forget_before = system.applied.prune(now);
            }
        }
        let mut revisions = Vec::new();
        for event in events {
            match event {
                CaseFeedback::Console(status) => {
                    let _span = tracing::info_span!("case_status", incident = %status.incident, from = "console").entered();
                    // Audited by the console's API, which asked for it.
                    if let CaseOutcome::Applied(changes) = apply_case_status(engine, &status) {
                        revisions.extend(changes);
                    }
                }
                CaseFeedback::Message(message) => {
                    revisions.extend(self.take_message(engine, *message, now));
                }
            }
        }
        revisions
    }

    fn take_message(
        &mut self,
        engine: &mut dyn RiskEngine,
        message: CaseMessage,
        now: DateTime<Utc>,
    ) -> Vec<RiskEvent> {
        let Some(system) = &mut self.system else {
            // Messages come only from the `[cases]` consumer.
            return Vec::new();
        };
        let event = match system.intake.check(
            &message.subject,
            &message.payload,
            message.signature.as_deref(),
        ) {
            Ok(event) => event,
            Err(refusal) => {
                let id = event_id(&message.payload);
                self.refuse(message, id.as_deref(), &refusal, true);
                return Vec::new();
            }
        };
        let _span = tracing::info_span!("case_status", incident = %event.status.incident, event = %event.id, source = %event.source).entered();
        if system.applied.contains(&event.id) {
            let refusal = Refusal {
                reason: RefusalReason::Duplicate,
                message: "this event id was applied already".into(),
            };
            self.refuse(message, Some(&event.id), &refusal, true);
            return Vec::new();
        }
        let now_in = engine.incident_department(&event.status.incident);
        let owner = engine.incident_owner(&event.status.incident);
        if let Err(refusal) = check_assignment(
            &event.status,
            &system.intake.departments,
            &system.known_users,
            now_in.as_deref(),
            owner.map(|o| o.as_str()),
        ) {
            self.refuse(message, Some(&event.id), &refusal, true);
            return Vec::new();
        }
        match apply_case_status(engine, &event.status) {
            CaseOutcome::Applied(changes) => {
                system.applied.insert(event.id.clone(), now);
                self.pending.records.push(CaseRecord::Applied {
                    id: event.id.clone(),
                    incident: event.status.incident.clone(),
                    at: now,
                });
                self.pending.audits.push(CaseAudit {
                    source: event.source,
                    event_id: event.id,
                    status: event.status,
                });
                self.acks.push(message.ack);
                changes
            }
            // Counted and logged where it was refused.
            CaseOutcome::Refused(refusal) => {
                self.refuse(message, Some(&event.id), &refusal, false);
                Vec::new()
            }
        }
    }

    /// Keeps a refused event in the dead letters (with the next commit), and terminates it
    /// once that is committed.
    fn refuse(&mut self, message: CaseMessage, id: Option<&str>, refusal: &Refusal, count: bool) {
        if count {
            count_refusal(refusal.reason);
            tracing::warn!(subject = %message.subject, event = id.unwrap_or(""), reason = refusal.reason.as_str(),
                error = %refusal.message, payload = %excerpt(&message.payload), "case status event refused");
        }
        let letter = refused_letter(&message, id, &refusal.to_string());
        self.pending.records.push(CaseRecord::Refused(letter));
        self.acks.push(message.ack.refused());
    }
}

impl CaseSystem {
    /// Reads the console's users again when the last read is old: users are added while
    /// skynet runs (`skynet users add`, the console).
    fn refresh_users(&mut self) {
        let Some(store) = &self.users else {
            return;
        };
        if self.users_read.is_some_and(|t| t.elapsed() < USERS_EVERY) {
            return;
        }
        self.users_read = Some(Instant::now());
        match store.users() {
            Ok(users) => {
                // The owner an assignee's scope is limited to, from the console's own rule
                // (`User::scope`: only inspectors are limited).
                self.known_users = users
                    .into_iter()
                    .map(|u| {
                        let owner = u.scope().owner;
                        (
                            u.name,
                            KnownUser {
                                department: u.department,
                                owner,
                            },
                        )
                    })
                    .collect();
            }
            Err(e) => {
                // The last list read stays in force.
                tracing::warn!(error = %e, "could not read the console's users");
            }
        }
    }
}

/// The `id` of an event refused before it was read, when its body has one (for the dead
/// letter and the log).
fn event_id(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<serde_json::Value>,
    }
    let id = serde_json::from_slice::<Id>(payload).ok()?.id?;
    id.as_str().map(|s| s.chars().take(256).collect())
}

/// Writes the applied case-system events to the console's audit log, the case system (the
/// event's `source`) as actor. After the commit: an entry never tells of a change that was
/// not stored. Without `[api]`, the audit log of the same state database is written.
pub(crate) fn audit(console: Option<&Console>, outbox: &Path, audits: &[CaseAudit]) {
    if audits.is_empty() {
        return;
    }
    let opened;
    let store = match console {
        Some(console) => console.store(),
        None => match ConsoleStore::open(outbox) {
            Ok(store) => {
                opened = store;
                &opened
            }
            Err(e) => {
                tracing::warn!(error = %e, "the audit log cannot be opened; case status changes not audited");
                return;
            }
        },
    };
    for audit in audits {
        let after = serde_json::json!({
            "event": audit.event_id,
            "status": audit.status.status,
            "department": audit.status.department,
            "assignee": audit.status.assignee,
            "note": audit.status.note,
            "at": audit.status.at,
        });
        if let Err(e) = store.audit(
            &audit.source,
            "case_system",
            "incident.status",
            &audit.status.incident,
            None,
            Some(&after),
        ) {
            tracing::warn!(error = %e, incident = %audit.status.incident, "could not write a case status change to the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config of a cluster's scorer with `[cases]` and the given `secret` line.
    fn scorer_config(dir: &Path, secret: &str) -> PipelineConfig {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let esc = |p: &Path| p.display().to_string().replace('\\', "/");
        let text = format!(
            r#"
[node]
name = "scorer-1"

[cluster]
url = "nats://127.0.0.1:4222"

[grids]
file = "{grids}"

[detect]
model = "{model}"

[outbox]
path = "{dir}/outbox.sqlite"

[cases]
url = "nats://127.0.0.1:4222"
sources = ["case-system"]
{secret}

[[cameras]]
id = "cam-1"
owner = "police"
uri = "rtsp://127.0.0.1:9/cam"
grid = "G-0101"
"#,
            grids = esc(&repo.join("configs/demo-grids.geojson")),
            model = esc(&repo.join("models/yolox_nano.toml")),
            dir = esc(dir),
        );
        let path = dir.join("scorer.toml");
        std::fs::write(&path, &text).unwrap();
        PipelineConfig::parse(&path, &text).unwrap()
    }

    /// A status change as a console sends it: (subject, body).
    fn console_event(config: &PipelineConfig) -> (String, Vec<u8>) {
        let status = CaseStatus {
            incident: "inc-1".into(),
            status: skynet_core::IncidentState::Acknowledged,
            department: None,
            assignee: None,
            note: None,
            at: Utc::now(),
        };
        let settings = config.cases.clone().unwrap();
        let (subject, body, _) =
            super::super::city_console::case_status_event(&settings, "console-1", &status).unwrap();
        (subject, body)
    }

    /// A scorer with no `[cases] secret` takes no event as the console's: unsigned, its
    /// `source` is only a claim.
    #[test]
    fn a_scorer_without_a_cases_secret_refuses_an_unsigned_console_event() {
        let dir = tempfile::tempdir().unwrap();
        let config = scorer_config(dir.path(), "");
        let (_tx, rx) = crossbeam_channel::unbounded();
        let desk = CaseDesk::new(&config, rx).unwrap();
        let intake = &desk.system.as_ref().unwrap().intake;
        assert!(intake.secret.is_none());
        let (subject, body) = console_event(&config);
        let refusal = intake
            .check(&subject, &body, None)
            .expect_err("an unsigned console event is refused");
        assert_eq!(refusal.reason, RefusalReason::Source, "{refusal:?}");
        assert!(intake.sources.contains("case-system"));
    }

    /// With a secret, a console's event is taken when signed with it, and refused unsigned.
    #[test]
    fn a_scorer_with_a_cases_secret_takes_the_console_s_signed_events_only() {
        let dir = tempfile::tempdir().unwrap();
        let config = scorer_config(dir.path(), r#"secret = "a-shared-cases-secret""#);
        let (_tx, rx) = crossbeam_channel::unbounded();
        let desk = CaseDesk::new(&config, rx).unwrap();
        let intake = &desk.system.as_ref().unwrap().intake;
        let (subject, body) = console_event(&config);
        assert!(intake.check(&subject, &body, None).is_err(), "unsigned");
        let signature = format!(
            "sha256={}",
            skynet_risk::case_status::sign(b"a-shared-cases-secret", &body)
        );
        let event = intake
            .check(&subject, &body, Some(&signature))
            .expect("a signed console event is taken");
        assert_eq!(
            event.source,
            super::super::city_console::CONSOLE_CASE_SOURCE
        );
    }

    #[test]
    fn the_id_of_a_refused_body_is_read_when_it_has_one() {
        assert_eq!(event_id(br#"{"id":"e-7","x":1}"#).as_deref(), Some("e-7"));
        assert_eq!(event_id(br#"{"id":7}"#), None);
        assert_eq!(event_id(b"{not json"), None);
    }
}
