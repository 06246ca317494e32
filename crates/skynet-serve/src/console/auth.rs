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

/// Failed logins, counted so that guessing slows down without locking anyone out (OWASP's
/// "device cookies"). A login is counted against the client's address and against the
/// account tried; one that presents a valid device cookie for the account (the browser
/// logged in as that user before) is counted against that device only, so someone guessing
/// at an account from many addresses cannot keep its owner out. Past a few free failures,
/// each further one doubles the wait before the next attempt on that key, up to a cap;
/// failures are forgotten [`FORGET_AFTER`] after the last. An attempt is counted before its
/// password is checked, so parallel requests cannot slip past the limit, and refunded when
/// it succeeds.
pub struct LoginLimiter {
    tables: Mutex<Tables>,
    /// Signs device cookies; kept in the state database so they outlive a restart.
    device_key: [u8; 32],
    /// Password checks for logins with a valid device cookie, beside the console's shared
    /// ones: a flood of guesses queued for those cannot make a known device wait.
    pub(crate) device_checks: tokio::sync::Semaphore,
    /// Password checks for logins from an address and at an account with no failures
    /// counted: someone logging in from a new browser does not queue behind guesses from
    /// addresses that have already failed (a botnet's fresh addresses still share it).
    pub(crate) clean_checks: tokio::sync::Semaphore,
}

/// When a key starts to wait, and how long at most.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Failures within the window that cost nothing.
    pub free: u32,
    /// The longest wait between attempts.
    pub cap: Duration,
}

/// One client address, whatever the names it tries.
pub const ADDRESS: Policy = Policy {
    free: 5,
    cap: Duration::from_secs(300),
};
/// One account, from every address without its device cookie.
pub const ACCOUNT: Policy = Policy {
    free: 10,
    cap: Duration::from_secs(300),
};
/// One device cookie (a browser the account logged in from before).
pub const DEVICE: Policy = Policy {
    free: 5,
    cap: Duration::from_secs(300),
};
/// Failures are forgotten this long after the last one on a key.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Keys tracked per kind (addresses, accounts, devices); past it, the key with the fewest
/// failures makes room, so an attacker filling the table forgets its own keys first.
pub const MAX_KEYS: usize = 10_000;

impl Policy {
    /// The wait after `failures`: none while free, then 1 s, doubling with each further
    /// failure, up to the cap.
    pub fn wait(self, failures: u32) -> Duration {
        if failures < self.free {
            return Duration::ZERO;
        }
        let doublings = (failures - self.free).min(30);
        Duration::from_secs(1u64 << doublings).min(self.cap)
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// One kind of key, bounded.
struct Table<K> {
    policy: Policy,
    entries: HashMap<K, Failures>,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn new(policy: Policy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
        }
    }

    /// How long `key` must still wait at `now`.
    fn wait(&mut self, key: &K, now: Instant) -> Duration {
        let Some(failures) = self.entries.get(key).copied() else {
            return Duration::ZERO;
        };
        let since = now.saturating_duration_since(failures.last);
        if since >= FORGET_AFTER {
            self.entries.remove(key);
            return Duration::ZERO;
        }
        self.policy.wait(failures.count).saturating_sub(since)
    }

    fn count(&mut self, key: K, now: Instant) {
        let failures = self.entry(key, now);
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
    }

    /// `key`'s entry, made (with no failures) when there is none: room is made first.
    fn entry(&mut self, key: K, now: Instant) -> &mut Failures {
        if !self.entries.contains_key(&key) && self.entries.len() >= MAX_KEYS {
            self.entries
                .retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
            if self.entries.len() >= MAX_KEYS
                && let Some(fewest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, f)| (f.count, f.last))
                    .map(|(k, _)| k.clone())
            {
                self.entries.remove(&fewest);
            }
        }
        self.entries.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        })
    }

    fn restart(&mut self, key: &K, now: Instant) {
        if let Some(failures) = self.entries.get_mut(key) {
            failures.last = now;
        }
    }

    fn refund(&mut self, key: &K, forgive: bool) {
        if let Some(failures) = self.entries.get_mut(key) {
            failures.count = if forgive {
                0
            } else {
                failures.count.saturating_sub(1)
            };
            if failures.count == 0 {
                self.entries.remove(key);
            }
        }
    }
}

struct Tables {
    addresses: Table<IpAddr>,
    accounts: Table<String>,
    devices: Table<String>,
}

/// What one login attempt was counted against, to refund when it succeeds.
#[derive(Debug)]
#[must_use = "end the attempt with `succeeded` or `failed`"]
pub struct Attempt {
    address: Option<IpAddr>,
    account: Option<String>,
    device: Option<String>,
    /// A valid device cookie came with it.
    pub known_device: bool,
    /// Neither its address nor its account had failures counted.
    pub clean: bool,
}

impl LoginLimiter {
    /// `device_key` signs device cookies (see [`crate::console::store::ConsoleStore::secret_key`]).
    pub fn new(device_key: [u8; 32]) -> Self {
        Self {
            tables: Mutex::new(Tables {
                addresses: Table::new(ADDRESS),
                accounts: Table::new(ACCOUNT),
                devices: Table::new(DEVICE),
            }),
            device_key,
            device_checks: tokio::sync::Semaphore::new(1),
            clean_checks: tokio::sync::Semaphore::new(1),
        }
    }

    /// Counts an attempt on `account` (empty: a name no user can have, counted against the
    /// address only) from `client`, with `device`, the id of a device cookie already checked
    /// to be valid for `account`; or `Err(wait)` when one of its keys must wait.
    pub fn begin(
        &self,
        client: Option<IpAddr>,
        account: &str,
        device: Option<&str>,
    ) -> Result<Attempt, Duration> {
        let now = Instant::now();
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        let mut attempt = match device {
            // A known device answers for its own failures only.
            Some(device) => Attempt {
                address: None,
                account: None,
                device: Some(device.to_string()),
                known_device: true,
                clean: false,
            },
            None => Attempt {
                address: client,
                account: (!account.is_empty()).then(|| account.to_string()),
                device: None,
                known_device: false,
                clean: false,
            },
        };
        let mut wait = Duration::ZERO;
        if let Some(address) = &attempt.address {
            wait = wait.max(tables.addresses.wait(address, now));
        }
        if let Some(account) = &attempt.account {
            wait = wait.max(tables.accounts.wait(account, now));
        }
        if let Some(device) = &attempt.device {
            wait = wait.max(tables.devices.wait(device, now));
        }
        if !wait.is_zero() {
            // The address is no longer clean (it costs it no wait): a guesser slowed on an
            // account does not move on to the clean password check with fresh names.
            if let Some(address) = attempt.address {
                tables.addresses.entry(address, now);
            }
            // Whole seconds for Retry-After, never 0.
            return Err(Duration::from_secs(
                wait.as_secs_f64().ceil().max(1.0) as u64
            ));
        }
        // (`wait` above has dropped failures old enough to be forgotten.)
        attempt.clean = device.is_none()
            && attempt
                .address
                .is_none_or(|a| !tables.addresses.entries.contains_key(&a))
            && attempt
                .account
                .as_ref()
                .is_none_or(|a| !tables.accounts.entries.contains_key(a));
        if let Some(address) = attempt.address {
            tables.addresses.count(address, now);
        }
        if let Some(account) = &attempt.account {
            tables.accounts.count(account.clone(), now);
        }
        if let Some(device) = &attempt.device {
            tables.devices.count(device.clone(), now);
        }
        Ok(attempt)
    }

    /// The attempt's password was wrong: the wait runs from now, when the check ended (an
    /// argon2 check takes a while, more so under load).
    pub fn failed(&self, attempt: Attempt) {
        let now = Instant::now();
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(address) = &attempt.address {
            tables.addresses.restart(address, now);
        }
        if let Some(account) = &attempt.account {
            tables.accounts.restart(account, now);
        }
        if let Some(device) = &attempt.device {
            tables.devices.restart(device, now);
        }
    }

    /// The attempt's password was right: it does not count, and a device that logged in
    /// starts afresh.
    pub fn succeeded(&self, attempt: Attempt) {
        self.refund(attempt, true);
    }

    /// The attempt's password was never checked (no check free in time, or the check
    /// failed to run): it does not count, and forgives nothing either.
    pub fn cancelled(&self, attempt: Attempt) {
        self.refund(attempt, false);
    }

    /// Takes the attempt back from every table it was counted in; `forgive_device` also
    /// clears the device's earlier failures (it has just proved it knows the password).
    fn refund(&self, attempt: Attempt, forgive_device: bool) {
        let mut tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(address) = &attempt.address {
            tables.addresses.refund(address, false);
        }
        if let Some(account) = &attempt.account {
            tables.accounts.refund(account, false);
        }
        if let Some(device) = &attempt.device {
            tables.devices.refund(device, forgive_device);
        }
    }

    /// Keys tracked now, all kinds together (bounded by 3 × [`MAX_KEYS`]).
    pub fn tracked(&self) -> usize {
        let tables = self.tables.lock().unwrap_or_else(PoisonError::into_inner);
        tables.addresses.entries.len()
            + tables.accounts.entries.len()
            + tables.devices.entries.len()
    }

    /// A new device cookie value for `user`: `user|id|mac`, the id random and the mac an
    /// HMAC-SHA256 of both under the server's key, so it cannot be forged or moved to
    /// another user.
    pub fn issue_device(&self, user: &str) -> Option<String> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).ok()?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mac = self.device_mac(user, &id);
        Some(format!("{user}|{id}|{mac}"))
    }

    /// The device id in `cookie` when it was issued by this server for `user`.
    pub fn check_device<'a>(&self, cookie: &'a str, user: &str) -> Option<&'a str> {
        let mut parts = cookie.split('|');
        let (name, id, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || name != user || id.len() != 32 {
            return None;
        }
        use hmac::Mac;
        let mut check = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.device_key).ok()?;
        check.update(format!("{name}|{id}").as_bytes());
        let mac = decode_hex(mac)?;
        check.verify_slice(&mac).ok()?;
        Some(id)
    }

    fn device_mac(&self, user: &str, id: &str) -> String {
        use hmac::Mac;
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.device_key) else {
            return String::new();
        };
        mac.update(format!("{user}|{id}").as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

impl std::fmt::Debug for LoginLimiter {
    // The key stays out of every log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginLimiter")
            .field("tracked", &self.tracked())
            .finish_non_exhaustive()
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

    fn limiter() -> LoginLimiter {
        LoginLimiter::new([7; 32])
    }

    #[test]
    fn waits_start_after_the_free_failures_and_double_up_to_the_cap() {
        assert_eq!(ADDRESS.wait(ADDRESS.free - 1), Duration::ZERO);
        assert_eq!(ADDRESS.wait(ADDRESS.free), Duration::from_secs(1));
        assert_eq!(ADDRESS.wait(ADDRESS.free + 1), Duration::from_secs(2));
        assert_eq!(ADDRESS.wait(ADDRESS.free + 3), Duration::from_secs(8));
        assert_eq!(ADDRESS.wait(u32::MAX), ADDRESS.cap);
    }

    #[test]
    fn an_address_that_keeps_failing_waits_and_another_does_not() {
        let limiter = limiter();
        let attacker: IpAddr = "10.0.0.1".parse().unwrap();
        let colleague: IpAddr = "10.0.0.2".parse().unwrap();
        for n in 0..ADDRESS.free {
            assert!(
                limiter
                    .begin(Some(attacker), &format!("user{n}"), None)
                    .is_ok()
            );
        }
        let wait = limiter.begin(Some(attacker), "other", None).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // The colleague logs in all the same, and a success costs nothing: each attempt
        // is clean (nothing failed from there or at that account).
        for _ in 0..ADDRESS.free * 3 {
            let attempt = limiter.begin(Some(colleague), "op", None).unwrap();
            assert!(attempt.clean);
            limiter.succeeded(attempt);
        }
        // After a failure, an address's attempts are no longer clean.
        let attempt = limiter.begin(Some(colleague), "op", None).unwrap();
        limiter.failed(attempt);
        assert!(!limiter.begin(Some(colleague), "eng", None).unwrap().clean);
        // Nor after a 429, which costs the address no wait.
        for n in 0..ACCOUNT.free {
            let attempt = limiter
                .begin(Some(IpAddr::from([10, 9, 0, n as u8])), "victim", None)
                .unwrap();
            limiter.failed(attempt);
        }
        let other: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(limiter.begin(Some(other), "victim", None).is_err());
        let attempt = limiter.begin(Some(other), "fresh-name", None).unwrap();
        assert!(!attempt.clean);
    }

    #[test]
    fn an_account_guessed_from_many_addresses_waits_but_not_for_its_own_device() {
        let limiter = limiter();
        for n in 0..ACCOUNT.free {
            let address = IpAddr::from([10, 1, 0, n as u8]);
            assert!(limiter.begin(Some(address), "op", None).is_ok());
        }
        // A fresh address gets no further on that account.
        assert!(
            limiter
                .begin(Some("10.2.0.1".parse().unwrap()), "op", None)
                .is_err()
        );
        // Nor does a forged or another user's device cookie.
        let theirs = limiter.issue_device("eng").unwrap();
        assert_eq!(limiter.check_device(&theirs, "op"), None);
        let forged = format!("op|{}|{}", "0".repeat(32), "0".repeat(64));
        assert_eq!(limiter.check_device(&forged, "op"), None);
        // The owner's browser, which logged in before, is not held back.
        let cookie = limiter.issue_device("op").unwrap();
        let device = limiter.check_device(&cookie, "op").unwrap();
        let attempt = limiter.begin(None, "op", Some(device)).unwrap();
        limiter.succeeded(attempt);
        // A device has its own limit.
        for _ in 0..DEVICE.free {
            assert!(limiter.begin(None, "op", Some(device)).is_ok());
        }
        assert!(limiter.begin(None, "op", Some(device)).is_err());
        // Another key, with another key's mac, is refused.
        assert_eq!(LoginLimiter::new([8; 32]).check_device(&cookie, "op"), None);
    }

    #[test]
    fn an_attempt_never_checked_costs_nothing_and_forgives_nothing() {
        let limiter = limiter();
        let client: IpAddr = "10.3.0.1".parse().unwrap();
        let cookie = limiter.issue_device("op").unwrap();
        let device = limiter.check_device(&cookie, "op").unwrap().to_string();
        for _ in 0..DEVICE.free - 1 {
            limiter.failed(limiter.begin(None, "op", Some(&device)).unwrap());
        }
        // As many unchecked attempts as one likes (a login that found no password check
        // free): none of them counts.
        for _ in 0..ADDRESS.free * 3 {
            limiter.cancelled(limiter.begin(Some(client), "op", None).unwrap());
            limiter.cancelled(limiter.begin(None, "op", Some(&device)).unwrap());
        }
        assert!(limiter.begin(Some(client), "op", None).unwrap().clean);
        // The device's earlier failures still stand: one more and it waits.
        limiter.failed(limiter.begin(None, "op", Some(&device)).unwrap());
        assert!(limiter.begin(None, "op", Some(&device)).is_err());
    }

    #[test]
    fn memory_stays_bounded_and_the_heaviest_keys_stay() {
        let limiter = limiter();
        let target: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            let _ = limiter.begin(Some(target), "", None);
        }
        for n in 0..(MAX_KEYS as u32 + 500) {
            let _ = limiter.begin(Some(IpAddr::from(n.to_be_bytes())), "", None);
        }
        assert!(limiter.tracked() <= MAX_KEYS);
        let tables = limiter.tables.lock().unwrap();
        assert_eq!(tables.addresses.entries[&target].count, 3);
    }
}
