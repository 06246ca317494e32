//! Who may do what: roles, their permissions, and the scope of an inspector.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use skynet_core::Incident;

/// The four kinds of people who use the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Command-center operators: every live alert; acknowledge, add notes.
    Operator,
    /// Safety-production inspectors: the incidents routed to their department (and owner);
    /// update their status.
    Inspector,
    /// Engineers: detections and source health; change thresholds.
    Engineer,
    /// Administrators: users and the audit log, and everything else.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [Self::Operator, Self::Inspector, Self::Engineer, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Operator => "operator",
            Self::Inspector => "inspector",
            Self::Engineer => "engineer",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn permissions(self) -> &'static [Permission] {
        use Permission::*;
        match self {
            Self::Operator => &[IncidentsRead, IncidentsAck, IncidentsNote, SourcesRead],
            Self::Inspector => &[IncidentsRead, IncidentsNote, IncidentsStatus, TicketsRead],
            Self::Engineer => &[IncidentsRead, SourcesRead, ThresholdsWrite],
            Self::Admin => &Permission::ALL,
        }
    }

    pub fn may(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

/// One thing a route needs. The console shows only what the caller's permissions allow;
/// the API checks them on every call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Permission {
    #[serde(rename = "incidents.read")]
    IncidentsRead,
    #[serde(rename = "incidents.ack")]
    IncidentsAck,
    #[serde(rename = "incidents.note")]
    IncidentsNote,
    #[serde(rename = "incidents.status")]
    IncidentsStatus,
    #[serde(rename = "tickets.read")]
    TicketsRead,
    #[serde(rename = "sources.read")]
    SourcesRead,
    #[serde(rename = "thresholds.write")]
    ThresholdsWrite,
    #[serde(rename = "audit.read")]
    AuditRead,
    #[serde(rename = "users.manage")]
    UsersManage,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Self::IncidentsRead,
        Self::IncidentsAck,
        Self::IncidentsNote,
        Self::IncidentsStatus,
        Self::TicketsRead,
        Self::SourcesRead,
        Self::ThresholdsWrite,
        Self::AuditRead,
        Self::UsersManage,
    ];
}

/// A console user. Inspectors are scoped by `department` and, when set, `owner`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub department: Option<String>,
    pub owner: Option<String>,
}

/// The incidents a user may see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// `None`: every department.
    pub department: Option<String>,
    pub owner: Option<String>,
}

impl Scope {
    pub fn allows(&self, department: &str, owner: &str) -> bool {
        self.department.as_deref().is_none_or(|d| d == department)
            && self.owner.as_deref().is_none_or(|o| o == owner)
    }

    pub fn allows_incident(&self, incident: &Incident) -> bool {
        self.allows(&incident.department, incident.owner.as_str())
    }
}

impl User {
    pub fn may(&self, permission: Permission) -> bool {
        self.role.may(permission)
    }

    /// Inspectors see their own department's incidents (and owner's, when set); an
    /// inspector without a department sees none rather than all.
    pub fn scope(&self) -> Scope {
        match self.role {
            Role::Inspector => Scope {
                department: Some(
                    self.department
                        .clone()
                        .unwrap_or_else(|| "\u{0}no department".into()),
                ),
                owner: self.owner.clone(),
            },
            _ => Scope::default(),
        }
    }
}

/// Login attempts, per name from one address and per address. A name is blocked only from
/// the address that failed with it (anyone can type a colleague's name: that must not lock
/// the colleague out everywhere); an address is blocked after more failures over any names.
/// An attempt is counted before its password is checked, so parallel requests cannot slip
/// past the limit, and refunded when it succeeds.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    attempts: Mutex<HashMap<String, Vec<Instant>>>,
}

/// Failed logins for one name from one address within [`WINDOW`].
pub const MAX_FAILURES: usize = 5;
/// Failed logins from one address, whatever the names, within [`WINDOW`].
pub const MAX_ADDRESS_FAILURES: usize = 20;
pub const WINDOW: Duration = Duration::from_secs(300);
/// Names and addresses tracked at once; past it, new ones wait for the window to pass.
const MAX_KEYS: usize = 10_000;

impl LoginLimiter {
    fn keys(name: &str, addr: Option<IpAddr>) -> Vec<(String, usize)> {
        let addr = addr.map_or_else(|| "-".to_string(), |a| a.to_string());
        vec![
            (format!("pair:{addr}|{name}"), MAX_FAILURES),
            (format!("addr:{addr}"), MAX_ADDRESS_FAILURES),
        ]
    }

    /// Counts an attempt, or `Err(wait)` when this name from this address (or the address)
    /// must wait before trying again.
    pub fn begin(&self, name: &str, addr: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let keys = Self::keys(name, addr);
        let mut wait: Option<Duration> = None;
        for (key, limit) in &keys {
            if let Some(times) = attempts.get_mut(key) {
                times.retain(|t| now.duration_since(*t) < WINDOW);
                if times.len() >= *limit
                    && let Some(oldest) = times.first()
                {
                    let left = WINDOW.saturating_sub(now.duration_since(*oldest));
                    wait = Some(wait.map_or(left, |w| w.max(left)));
                }
            }
        }
        if let Some(wait) = wait {
            return Err(wait.max(Duration::from_secs(1)));
        }
        if keys.iter().any(|(key, _)| !attempts.contains_key(key)) && attempts.len() >= MAX_KEYS {
            attempts.retain(|_, times| {
                times
                    .last()
                    .is_some_and(|t| now.duration_since(*t) < WINDOW)
            });
            if attempts.len() >= MAX_KEYS {
                return Err(WINDOW);
            }
        }
        for (key, _) in keys {
            attempts.entry(key).or_default().push(now);
        }
        Ok(())
    }

    /// The attempt succeeded: it does not count, and the name's failures from this address
    /// are forgiven.
    pub fn succeeded(&self, name: &str, addr: Option<IpAddr>) {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let mut keys = Self::keys(name, addr).into_iter();
        if let Some((pair, _)) = keys.next() {
            attempts.remove(&pair);
        }
        for (key, _) in keys {
            if let Some(times) = attempts.get_mut(&key) {
                times.pop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_carry_exactly_their_permissions() {
        assert!(Role::Operator.may(Permission::IncidentsAck));
        assert!(!Role::Operator.may(Permission::IncidentsStatus));
        assert!(Role::Inspector.may(Permission::IncidentsStatus));
        assert!(!Role::Inspector.may(Permission::IncidentsAck));
        assert!(Role::Engineer.may(Permission::ThresholdsWrite));
        assert!(!Role::Engineer.may(Permission::AuditRead));
        assert!(Permission::ALL.iter().all(|p| Role::Admin.may(*p)));
    }

    #[test]
    fn inspectors_see_their_department_and_owner_only() {
        let inspector = User {
            name: "i".into(),
            role: Role::Inspector,
            department: Some("emergency".into()),
            owner: Some("safety_production".into()),
        };
        let scope = inspector.scope();
        assert!(scope.allows("emergency", "safety_production"));
        assert!(!scope.allows("emergency", "police"));
        assert!(!scope.allows("streets", "safety_production"));
        let no_department = User {
            department: None,
            owner: None,
            ..inspector
        };
        assert!(!no_department.scope().allows("emergency", "police"));
    }

    #[test]
    fn repeated_failures_block_the_name_from_that_address_then_the_address() {
        let limiter = LoginLimiter::default();
        let attacker: IpAddr = "10.0.0.1".parse().unwrap();
        let colleague: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(limiter.begin("op", Some(attacker)).is_ok());
        }
        assert!(limiter.begin("op", Some(attacker)).is_err());
        // The operator logs in from their own desk all the same.
        assert!(limiter.begin("op", Some(colleague)).is_ok());
        limiter.succeeded("op", Some(colleague));
        // Many names from one address block the address.
        for n in 0..(MAX_ADDRESS_FAILURES - MAX_FAILURES) {
            assert!(limiter.begin(&format!("user{n}"), Some(attacker)).is_ok());
        }
        assert!(limiter.begin("someone-else", Some(attacker)).is_err());
        // A success is not counted against the address.
        for _ in 0..(MAX_ADDRESS_FAILURES * 2) {
            assert!(limiter.begin("op", Some(colleague)).is_ok());
            limiter.succeeded("op", Some(colleague));
        }
    }
}
