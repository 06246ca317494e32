//! Case-status events (the case system's `acknowledged`, `resolved`, ...): checked, then
//! applied to the engine, counted by outcome.
//!
//! The intake is a chain of pure checks, each with its reason (the `reason` label of
//! `skynet_case_status_refused_total`):
//!
//! 1. `signature`: with a `[cases] secret`, the message carries `Skynet-Signature:
//!    sha256=<hex>`, the HMAC-SHA256 of its body, compared in constant time.
//! 2. `schema`: a structured-mode `skynet.case_status.v1` CloudEvent whose subject names its
//!    incident, with a valid `data`.
//! 3. `source`: its CloudEvent `source` is one of `[cases] sources`.
//! 4. `duplicate`: its id was applied already ([`AppliedEvents`], kept as long as the
//!    stream keeps events).
//! 5. `department`: its `department` is one the config knows, and its `assignee` a console
//!    user of that department whose scope allows the incident, owner too (when the console
//!    has users).
//! 6. `transition`: the incident is open and its lifecycle allows the change.
//!
//! A refused event changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use skynet_core::{CASE_STATUS_EVENT_TYPE, CaseStatus, RiskEvent, Secret};

use crate::{RiskEngine, RiskError};

/// The NATS header that carries a status event's signature.
pub const SIGNATURE_HEADER: &str = "Skynet-Signature";

/// Why a status event was refused: the `reason` label of
/// `skynet_case_status_refused_total`, and the reason of its dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// Its CloudEvent `source` is not one of `[cases] sources`.
    Source,
    /// No valid `Skynet-Signature` while `[cases] secret` is set.
    Signature,
    /// A department the config does not know, or an assignee who is not its user.
    Department,
    /// Its event id was applied already.
    Duplicate,
    /// Not a case-status CloudEvent (not JSON, another type, an unknown field or status, a
    /// subject that does not name its incident).
    Schema,
    /// The incident is not open (or unknown), or its state does not allow the change.
    Transition,
}

impl RefusalReason {
    pub const ALL: [Self; 6] = [
        Self::Source,
        Self::Signature,
        Self::Department,
        Self::Duplicate,
        Self::Schema,
        Self::Transition,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Source => "source",
            Self::Signature => "signature",
            Self::Department => "department",
            Self::Duplicate => "duplicate",
            Self::Schema => "schema",
            Self::Transition => "transition",
        }
    }
}

/// A refused status event: why, and a message for the log and the dead letter (never the
/// secret, never more than a bounded excerpt of the event).
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub message: String,
}

impl Refusal {
    fn new(reason: RefusalReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason.as_str(), self.message)
    }
}

/// Counts a refusal in `skynet_case_status_refused_total{reason}`.
pub fn count_refusal(reason: RefusalReason) {
    metrics::counter!("skynet_case_status_refused_total", "reason" => reason.as_str()).increment(1);
}

/// A status event read and checked as far as its bytes allow (signature, schema, source).
#[derive(Debug, Clone, PartialEq)]
pub struct CaseEvent {
    /// The CloudEvent `id`: applied at most once.
    pub id: String,
    /// The CloudEvent `source`: the actor of the audit log.
    pub source: String,
    pub status: CaseStatus,
}

#[derive(Deserialize)]
struct Envelope {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    data: CaseStatus,
}

/// Reads one status event: a structured-mode CloudEvent whose subject (`<prefix>.<incident>`)
/// names its incident. Checks the schema only (reason `schema`); never panics, whatever the
/// bytes (fuzzed: `fuzz/fuzz_targets/case_status.rs`).
pub fn parse_case_event(subject: &str, prefix: &str, payload: &[u8]) -> Result<CaseEvent, Refusal> {
    let schema = |message: String| Refusal::new(RefusalReason::Schema, message);
    let event: Envelope = serde_json::from_slice(payload)
        .map_err(|e| schema(format!("not a case-status CloudEvent: {e}")))?;
    if event.specversion != "1.0" {
        return Err(schema(format!(
            "specversion {} (expected 1.0)",
            bounded(&event.specversion)
        )));
    }
    if event.event_type != CASE_STATUS_EVENT_TYPE {
        return Err(schema(format!(
            "type `{}` (expected {CASE_STATUS_EVENT_TYPE})",
            bounded(&event.event_type)
        )));
    }
    // The CloudEvents spec: id and source are non-empty strings. Bounded so that one event
    // cannot make the remembered ids or the audit log large.
    for (field, value) in [("id", &event.id), ("source", &event.source)] {
        if value.is_empty() || value.chars().count() > 256 {
            return Err(schema(format!("`{field}` must be 1 to 256 characters")));
        }
    }
    event.data.validate().map_err(schema)?;
    let named = subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'));
    if named != Some(event.data.incident.as_str()) {
        return Err(schema(format!(
            "subject `{}` does not name incident `{}` (expected {prefix}.<incident>)",
            bounded(subject),
            bounded(&event.data.incident)
        )));
    }
    Ok(CaseEvent {
        id: event.id,
        source: event.source,
        status: event.data,
    })
}

/// At most this many characters of an outside value go into a message.
const BOUNDED: usize = 120;

fn bounded(s: &str) -> String {
    s.chars()
        .take(BOUNDED)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The hex HMAC-SHA256 of `body` under `secret`, as `Skynet-Signature` carries it (after
/// `sha256=`): what a case system computes.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length: new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks `header` (the `Skynet-Signature` value, `sha256=<hex>`) against the HMAC-SHA256
/// of `body` under `secret`, in constant time (hmac's `verify_slice`).
pub fn verify_signature(secret: &Secret, body: &[u8], header: Option<&str>) -> Result<(), Refusal> {
    let refuse = |message: &str| Refusal::new(RefusalReason::Signature, message);
    let header = header.ok_or_else(|| refuse("no Skynet-Signature header"))?;
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or_else(|| refuse("the Skynet-Signature header is not `sha256=<hex>`"))?;
    let tag = decode_hex(hex).ok_or_else(|| refuse("the Skynet-Signature header is not hex"))?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| refuse("the secret cannot key HMAC-SHA256"))?;
    mac.update(body);
    mac.verify_slice(&tag)
        .map_err(|_| refuse("the signature does not match the body"))
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 128 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What the intake accepts: `[cases]` and the departments of the config.
#[derive(Debug, Clone, Default)]
pub struct CaseIntake {
    /// `[cases] subject_prefix`.
    pub subject_prefix: String,
    /// `[cases] sources`: the CloudEvent `source` values accepted.
    pub sources: BTreeSet<String>,
    /// `[cases] secret`: when set, every event must be signed with it.
    pub secret: Option<Secret>,
    /// Every department the config names (`[risk] default_department`, the categories' and
    /// the cells' departments).
    pub departments: BTreeSet<String>,
}

impl CaseIntake {
    /// Signature, schema and source, in that order: an unsigned event is refused before
    /// anything in it is believed.
    pub fn check(
        &self,
        subject: &str,
        payload: &[u8],
        signature: Option<&str>,
    ) -> Result<CaseEvent, Refusal> {
        if let Some(secret) = self.secret.as_ref().filter(|s| !s.is_empty()) {
            verify_signature(secret, payload, signature)?;
        }
        let event = parse_case_event(subject, &self.subject_prefix, payload)?;
        if !self.sources.contains(&event.source) {
            return Err(Refusal::new(
                RefusalReason::Source,
                format!(
                    "source `{}` is not one of [cases] sources",
                    bounded(&event.source)
                ),
            ));
        }
        Ok(event)
    }
}

/// A console user as an assignee: their department, and the owner their scope is limited
/// to (an inspector's `owner`; `None` when they see every owner).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnownUser {
    pub department: Option<String>,
    pub owner: Option<String>,
}

/// The console's users, by name: the assignees a status may name. Empty when the console
/// has no users (then any assignee is taken).
pub type KnownUsers = BTreeMap<String, KnownUser>;

/// The `department` check: a department must be one of `departments`; an assignee, when
/// `users` is not empty, a user of the department the incident will have (the event's, or
/// else `incident_department`, where it is now) whose scope allows the incident, its
/// `incident_owner` too. The same rule as the console API's (`check_assignee` in
/// skynet-serve's console/api/incidents.rs): this crate cannot use that one, skynet-serve
/// sits above it. Change both together.
pub fn check_assignment(
    status: &CaseStatus,
    departments: &BTreeSet<String>,
    users: &KnownUsers,
    incident_department: Option<&str>,
    incident_owner: Option<&str>,
) -> Result<(), Refusal> {
    let refuse = |message: String| Refusal::new(RefusalReason::Department, message);
    if let Some(department) = &status.department
        && !departments.contains(department)
    {
        return Err(refuse(format!(
            "department `{}` is not one the config knows",
            bounded(department)
        )));
    }
    let Some(assignee) = &status.assignee else {
        return Ok(());
    };
    if users.is_empty() {
        return Ok(());
    }
    let department = status.department.as_deref().or(incident_department);
    match users.get(assignee) {
        None => Err(refuse(format!(
            "assignee `{}` is not a console user",
            bounded(assignee)
        ))),
        Some(theirs) if department.is_some() && theirs.department.as_deref() != department => {
            Err(refuse(format!(
                "assignee `{}` is not a user of department `{}`",
                bounded(assignee),
                bounded(department.unwrap_or_default())
            )))
        }
        // An owner-limited assignee and an incident whose owner is not known (not open):
        // refused rather than taken, as the scope cannot be shown to allow it.
        Some(theirs) if theirs.owner.is_some() && theirs.owner.as_deref() != incident_owner => {
            Err(refuse(format!(
                "assignee `{}` is not a user of department `{}` who may see this incident (owner `{}`)",
                bounded(assignee),
                bounded(department.unwrap_or_default()),
                bounded(incident_owner.unwrap_or("unknown"))
            )))
        }
        Some(_) => Ok(()),
    }
}

/// The ids of the status events applied, with when: each applies at most once. Kept at
/// least as long as the stream keeps an event (`[cases] max_age_days`), since until then it
/// can be delivered again (a lost ack, a failover, a new durable).
#[derive(Debug, Clone)]
pub struct AppliedEvents {
    ids: HashMap<String, DateTime<Utc>>,
    keep: chrono::Duration,
}

impl AppliedEvents {
    /// `applied`: the ids remembered before (from the outbox), with when they were applied.
    pub fn new(
        keep: chrono::Duration,
        applied: impl IntoIterator<Item = (String, DateTime<Utc>)>,
    ) -> Self {
        Self {
            ids: applied.into_iter().collect(),
            keep,
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains_key(id)
    }

    pub fn insert(&mut self, id: String, at: DateTime<Utc>) {
        self.ids.insert(id, at);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Forgets ids applied before `now - keep`; returns that time (for the outbox's prune),
    /// or `None` when the calendar cannot go that far back.
    pub fn prune(&mut self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let before = now.checked_sub_signed(self.keep)?;
        self.ids.retain(|_, at| *at >= before);
        Some(before)
    }
}

/// What became of one status event. Whatever it is, the event is acknowledged to the case
/// system only once the next commit is made.
#[derive(Debug)]
pub enum CaseOutcome {
    /// Applied: these revisions result, and acknowledge it once committed.
    Applied(Vec<RiskEvent>),
    /// Refused by the engine (an unknown or closed incident, or a change its state does not
    /// allow: reason `transition`), logged and counted.
    Refused(Refusal),
}

/// Applies one status event to the engine; counts it in `skynet_case_status_applied_total`
/// or `skynet_case_status_refused_total`.
pub fn apply_case_status(engine: &mut dyn RiskEngine, status: &CaseStatus) -> CaseOutcome {
    match engine.feedback(status) {
        Ok(changes) => {
            metrics::counter!("skynet_case_status_applied_total", "status" => status.status.as_str())
                .increment(1);
            tracing::info!(status = status.status.as_str(), "case status applied");
            CaseOutcome::Applied(changes)
        }
        Err(e) => {
            let message = match &e {
                RiskError::UnknownIncident(id) => {
                    format!("incident {} is not open", bounded(id))
                }
                other => other.to_string(),
            };
            count_refusal(RefusalReason::Transition);
            tracing::warn!(reason = "transition", error = %message, "case status refused");
            CaseOutcome::Refused(Refusal::new(RefusalReason::Transition, message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: &str, subject_incident: &str, data: &str) -> (String, Vec<u8>) {
        (
            format!("skynet.cases.{subject_incident}"),
            format!(
                r#"{{"specversion":"1.0","id":"e1","source":"{source}","type":"skynet.case_status.v1","data":{data}}}"#
            )
            .into_bytes(),
        )
    }

    const DISPATCHED: &str = r#"{"incident":"inc-1","status":"dispatched","department":"fire","assignee":"crew 7","note":"go","at":"2026-11-27T10:00:00Z"}"#;

    fn intake(secret: Option<&str>) -> CaseIntake {
        CaseIntake {
            subject_prefix: "skynet.cases".into(),
            sources: ["case-system".to_string()].into(),
            secret: secret.map(Secret::from),
            departments: ["fire".to_string(), "patrol".to_string()].into(),
        }
    }

    #[test]
    fn a_case_status_event_is_read_and_bad_ones_are_refused_as_schema() {
        let (subject, payload) = event("case-system", "inc-1", DISPATCHED);
        let read = parse_case_event(&subject, "skynet.cases", &payload).unwrap();
        assert_eq!(read.id, "e1");
        assert_eq!(read.source, "case-system");
        assert_eq!(read.status.status, skynet_core::IncidentState::Dispatched);
        assert_eq!(read.status.assignee.as_deref(), Some("crew 7"));

        let reason = |subject: &str, payload: &[u8]| {
            parse_case_event(subject, "skynet.cases", payload)
                .unwrap_err()
                .reason
        };
        assert_eq!(
            reason("skynet.cases.x", b"{not json"),
            RefusalReason::Schema
        );
        for data in [
            r#"{"incident":"inc-1","status":"open","at":"2026-11-27T10:00:00Z"}"#,
            r#"{"incident":"inc-1","status":"fixed","at":"2026-11-27T10:00:00Z"}"#,
            r#"{"incident":"inc-1","status":"resolved","at":"2026-11-27T10:00:00Z","extra":1}"#,
        ] {
            let (s, p) = event("case-system", "inc-1", data);
            assert_eq!(reason(&s, &p), RefusalReason::Schema, "{data}");
        }
        let (s, p) = event(
            "case-system",
            "inc-2",
            r#"{"incident":"inc-1","status":"resolved","at":"2026-11-27T10:00:00Z"}"#,
        );
        assert_eq!(reason(&s, &p), RefusalReason::Schema);
        let wrong = br#"{"specversion":"1.0","id":"e","source":"s","type":"skynet.incident.v1","data":{"incident":"inc-1","status":"resolved","at":"2026-11-27T10:00:00Z"}}"#;
        assert_eq!(reason("skynet.cases.inc-1", wrong), RefusalReason::Schema);
        // The source is read, not ignored: one without it is not a CloudEvent.
        let sourceless = br#"{"specversion":"1.0","id":"e","type":"skynet.case_status.v1","data":{"incident":"inc-1","status":"resolved","at":"2026-11-27T10:00:00Z"}}"#;
        assert_eq!(
            reason("skynet.cases.inc-1", sourceless),
            RefusalReason::Schema
        );
        let (s, p) = event("", "inc-1", DISPATCHED);
        assert_eq!(reason(&s, &p), RefusalReason::Schema);
    }

    #[test]
    fn the_source_must_be_one_of_the_configured_sources() {
        let (s, p) = event("anyone", "inc-1", DISPATCHED);
        let refused = intake(None).check(&s, &p, None).unwrap_err();
        assert_eq!(refused.reason, RefusalReason::Source);
        assert!(refused.message.contains("anyone"));
        let (s, p) = event("case-system", "inc-1", DISPATCHED);
        assert_eq!(
            intake(None).check(&s, &p, None).unwrap().source,
            "case-system"
        );
    }

    #[test]
    fn with_a_secret_only_a_correct_signature_of_the_body_is_taken() {
        let secret = "s3cret-key-41";
        let (s, p) = event("case-system", "inc-1", DISPATCHED);
        let good = format!("sha256={}", sign(secret.as_bytes(), &p));
        let signed = intake(Some(secret));
        assert!(signed.check(&s, &p, Some(&good)).is_ok());
        let other_body = format!("sha256={}", sign(secret.as_bytes(), b"other"));
        let other_key = format!("sha256={}", sign(b"other-key", &p));
        let upper = good.to_uppercase().replace("SHA256=", "sha256=");
        for bad in [
            None,
            Some(""),
            Some("sha256="),
            Some("sha1=00"),
            Some("sha256=zz"),
            Some(other_body.as_str()),
            Some(other_key.as_str()),
            Some(&good[..good.len() - 2]),
        ] {
            let refused = signed.check(&s, &p, bad).unwrap_err();
            assert_eq!(refused.reason, RefusalReason::Signature, "{bad:?}");
            assert!(!refused.message.contains(secret));
        }
        // Hex is read in either case.
        assert!(signed.check(&s, &p, Some(&upper)).is_ok());
        // Unsigned garbage is a signature refusal: nothing unsigned is read.
        assert_eq!(
            signed.check(&s, b"{not json", None).unwrap_err().reason,
            RefusalReason::Signature
        );
        // An empty secret asks for no signature.
        assert!(intake(Some("")).check(&s, &p, None).is_ok());
        // The test vector of RFC 4231 (case 2), as the webhook sink's.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_department_must_be_known_and_an_assignee_a_user_of_it() {
        let departments: BTreeSet<String> = ["fire".into(), "patrol".into()].into();
        let status = |department: Option<&str>, assignee: Option<&str>| CaseStatus {
            incident: "inc-1".into(),
            status: skynet_core::IncidentState::Dispatched,
            department: department.map(str::to_string),
            assignee: assignee.map(str::to_string),
            note: None,
            at: Utc::now(),
        };
        let none = KnownUsers::new();
        let check = |s: &CaseStatus, users: &KnownUsers, now: Option<&str>| {
            check_assignment(s, &departments, users, now, Some("police")).map_err(|r| r.reason)
        };
        assert_eq!(
            check(&status(Some("fire"), Some("crew 7")), &none, None),
            Ok(())
        );
        assert_eq!(check(&status(None, None), &none, None), Ok(()));
        assert_eq!(
            check(&status(Some("nowhere"), None), &none, None),
            Err(RefusalReason::Department)
        );
        let user = |department: Option<&str>| KnownUser {
            department: department.map(str::to_string),
            owner: None,
        };
        let users: KnownUsers = [
            ("ana".to_string(), user(Some("fire"))),
            ("bo".to_string(), user(Some("patrol"))),
            ("admin".to_string(), user(None)),
        ]
        .into();
        assert_eq!(
            check(&status(Some("fire"), Some("ana")), &users, None),
            Ok(())
        );
        assert_eq!(
            check(&status(Some("fire"), Some("bo")), &users, None),
            Err(RefusalReason::Department)
        );
        assert_eq!(
            check(&status(Some("fire"), Some("crew 7")), &users, None),
            Err(RefusalReason::Department)
        );
        // No department in the event: the incident's own counts.
        assert_eq!(
            check(&status(None, Some("bo")), &users, Some("patrol")),
            Ok(())
        );
        assert_eq!(
            check(&status(None, Some("ana")), &users, Some("patrol")),
            Err(RefusalReason::Department)
        );
        assert_eq!(
            check(&status(Some("fire"), Some("admin")), &users, None),
            Err(RefusalReason::Department)
        );
    }

    #[test]
    fn an_assignee_whose_scope_excludes_the_incidents_owner_is_refused() {
        let departments: BTreeSet<String> = ["fire".into()].into();
        let status = |assignee: &str| CaseStatus {
            incident: "inc-1".into(),
            status: skynet_core::IncidentState::Dispatched,
            department: Some("fire".into()),
            assignee: Some(assignee.into()),
            note: None,
            at: Utc::now(),
        };
        // Both are fire's; the second sees only safety_production's incidents.
        let users: KnownUsers = [
            (
                "any".to_string(),
                KnownUser {
                    department: Some("fire".into()),
                    owner: None,
                },
            ),
            (
                "safety".to_string(),
                KnownUser {
                    department: Some("fire".into()),
                    owner: Some("safety_production".into()),
                },
            ),
        ]
        .into();
        let check = |who: &str, owner: Option<&str>| {
            check_assignment(&status(who), &departments, &users, None, owner).map_err(|r| r.reason)
        };
        assert_eq!(check("any", Some("police")), Ok(()));
        assert_eq!(check("safety", Some("safety_production")), Ok(()));
        assert_eq!(
            check("safety", Some("police")),
            Err(RefusalReason::Department)
        );
        // The owner not known (the incident is not open): not shown to be in scope.
        assert_eq!(check("safety", None), Err(RefusalReason::Department));
        assert_eq!(check("any", None), Ok(()));
    }

    #[test]
    fn applied_ids_are_remembered_for_the_stream_age_and_then_forgotten() {
        let now = Utc::now();
        let mut applied = AppliedEvents::new(
            chrono::Duration::days(30),
            [("old".to_string(), now - chrono::Duration::days(31))],
        );
        applied.insert("new".into(), now);
        assert!(applied.contains("old") && applied.contains("new"));
        let before = applied.prune(now).unwrap();
        assert_eq!(before, now - chrono::Duration::days(30));
        assert!(!applied.contains("old"));
        assert!(applied.contains("new"));
        let mut forever = AppliedEvents::new(chrono::Duration::MAX, []);
        assert_eq!(forever.prune(now), None);
    }

    #[test]
    fn reasons_are_the_documented_labels() {
        let labels: Vec<&str> = RefusalReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "source",
                "signature",
                "department",
                "duplicate",
                "schema",
                "transition"
            ]
        );
    }
}
