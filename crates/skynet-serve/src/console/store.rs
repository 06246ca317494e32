//! The console's own tables in the state database (the outbox's SQLite file): users and
//! their argon2 password hashes, tokens, the audit log, people's notes and acknowledgements,
//! and threshold changes. One connection per caller; SQLite's WAL lets them run beside the
//! pipeline's writer.

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::auth::{Role, User};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state database {path}: {source}")]
    Sql {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("state database {path}: cannot create it owner-only: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("no random numbers from the operating system: {0}")]
    Random(String),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS console_users (
    name           TEXT PRIMARY KEY,
    role           TEXT NOT NULL,
    department     TEXT,
    owner          TEXT,
    password_hash  TEXT,
    created_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS console_tokens (
    hash         TEXT PRIMARY KEY,
    user         TEXT NOT NULL,
    kind         TEXT NOT NULL,
    label        TEXT,
    created_at   TEXT NOT NULL,
    expires_at   TEXT,
    last_seen    TEXT
);
CREATE INDEX IF NOT EXISTS console_tokens_by_user ON console_tokens (user);
CREATE TABLE IF NOT EXISTS console_secrets (
    name   TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS console_audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,
    role     TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    before   TEXT,
    after    TEXT
);
CREATE INDEX IF NOT EXISTS console_audit_by_at ON console_audit (at);
CREATE TABLE IF NOT EXISTS console_notes (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    incident  TEXT NOT NULL,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    text      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS console_notes_by_incident ON console_notes (incident, id);
CREATE TABLE IF NOT EXISTS console_acks (
    incident  TEXT PRIMARY KEY,
    actor     TEXT NOT NULL,
    at        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS console_thresholds (
    camera  TEXT NOT NULL,
    label   TEXT NOT NULL,
    score   REAL NOT NULL,
    PRIMARY KEY (camera, label)
);
";

/// How long an API token lasts when nothing else is said (`skynet users token --ttl-days`),
/// and what a token from before tokens expired is given when the database is opened.
pub const API_TOKEN_TTL_DAYS: i64 = 90;

/// A session's last request is written at most this often: enough for an idle timeout of
/// minutes, without a write per request.
const LAST_SEEN_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// Scores per label.
pub type Thresholds = std::collections::BTreeMap<String, f32>;

/// A token kind: a browser session from a login (expires), or a machine's API token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Session,
    Api,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Api => "api",
        }
    }
}

/// One audit entry: who changed what, from what, to what, when, and from where; with its
/// link in the hash chain.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// The client address (through trusted proxies); `None` from the CLI and the pipeline.
    pub client: Option<String>,
    /// sha256 of the previous row's hash and this row's fields (see [`chain_hash`]).
    pub hash: Option<String>,
}

/// An audit entry to write. `actor` is always who is authenticated (the API's caller, the
/// CLI's operating-system user, the case system's event source), never a name from a body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NewAudit {
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub client: Option<IpAddr>,
}

/// An audit row as stored, for the hash chain: the fields exactly as written (the JSON of
/// `before` and `after` as text, not parsed again, so a reformatting cannot hide a change).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub at: String,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target: String,
    pub before: Option<String>,
    pub after: Option<String>,
    pub client: Option<String>,
    pub prev_hash: Option<String>,
    pub hash: Option<String>,
}

/// The previous hash of the first row.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// A row's link: sha256 over the previous row's hash, a newline, and the row's fields as a
/// JSON array `[id, at, actor, role, action, target, before, after, client]` (JSON: no two
/// different rows give the same text, whatever their fields hold).
pub fn chain_hash(prev: &str, row: &AuditRow) -> String {
    let fields = serde_json::json!([
        row.id, row.at, row.actor, row.role, row.action, row.target, row.before, row.after,
        row.client
    ]);
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(b"\n");
    hasher.update(fields.to_string().as_bytes());
    hex(&hasher.finalize())
}

/// The first row where the chain breaks, and what differs there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit row {id}: {what}")]
pub struct ChainBreak {
    pub id: i64,
    pub what: String,
}

/// Checks the hash chain over `rows` in id order; `Ok(n)` with the number of rows when every
/// link holds. Deleting the newest rows leaves a shorter chain that still holds: keep the last
/// hash elsewhere (`skynet audit verify` prints it) to tell.
pub fn verify_chain(rows: impl IntoIterator<Item = AuditRow>) -> Result<u64, ChainBreak> {
    let mut prev_hash = AUDIT_GENESIS.to_string();
    let mut prev_id: Option<i64> = None;
    let mut count = 0u64;
    for row in rows {
        let brk = |what: String| ChainBreak { id: row.id, what };
        let Some(hash) = row.hash.as_deref() else {
            return Err(brk("it has no hash: written outside the chain".into()));
        };
        let stored_prev = row.prev_hash.as_deref().unwrap_or_default();
        if stored_prev != prev_hash {
            let gap = match prev_id {
                Some(p) if row.id != p + 1 => {
                    format!(" (rows {} to {} are missing)", p + 1, row.id - 1)
                }
                None if row.id != 1 && stored_prev != AUDIT_GENESIS => {
                    format!(" (rows 1 to {} are missing)", row.id - 1)
                }
                _ => String::new(),
            };
            let before =
                prev_id.map_or("the start of the chain".to_string(), |p| format!("row {p}"));
            return Err(brk(format!(
                "its previous hash {} is not the hash {} of {before}: that row was changed or rows were removed{gap}",
                short(stored_prev),
                short(&prev_hash)
            )));
        }
        let computed = chain_hash(stored_prev, &row);
        if computed != hash {
            return Err(brk(format!(
                "its fields (at, actor, role, action, target, before, after, client) do not give its hash (stored {}, computed {}): the row was changed after it was written",
                short(hash),
                short(&computed)
            )));
        }
        prev_hash = hash.to_string();
        prev_id = Some(row.id);
        count += 1;
    }
    Ok(count)
}

fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// Appends `entry` to the chain on `conn`, which must be in an IMMEDIATE transaction: the
/// previous hash is read and the row written under the same write lock, so two writers
/// cannot both link to the same row.
fn append_audit(conn: &Connection, entry: &NewAudit) -> rusqlite::Result<i64> {
    let prev: String = conn
        .query_row(
            "SELECT coalesce(hash, '') FROM console_audit ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or_else(|| AUDIT_GENESIS.to_string());
    let mut row = AuditRow {
        id: 0,
        at: Utc::now().to_rfc3339(),
        actor: entry.actor.clone(),
        role: entry.role.clone(),
        action: entry.action.clone(),
        target: entry.target.clone(),
        before: entry.before.as_ref().map(|v| v.to_string()),
        after: entry.after.as_ref().map(|v| v.to_string()),
        client: entry.client.map(|c| c.to_string()),
        prev_hash: Some(prev.clone()),
        hash: None,
    };
    conn.execute(
        "INSERT INTO console_audit (at, actor, role, action, target, before, after, client, prev_hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![row.at, row.actor, row.role, row.action, row.target, row.before, row.after, row.client, prev],
    )?;
    // The id is part of the hash, and known only once the row is in.
    row.id = conn.last_insert_rowid();
    conn.execute(
        "UPDATE console_audit SET hash = ?1 WHERE id = ?2",
        params![chain_hash(&prev, &row), row.id],
    )?;
    Ok(row.id)
}

/// Adds the chain's columns to an audit log written before them, and links its rows in id
/// order (they are trusted as they are: the chain protects from here on).
fn migrate_audit_chain(conn: &Connection) -> rusqlite::Result<()> {
    let has_hash = |conn: &Connection| -> rusqlite::Result<bool> {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('console_audit')")?;
        let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for name in names {
            if name? == "hash" {
                return Ok(true);
            }
        }
        Ok(false)
    };
    if has_hash(conn)? {
        return Ok(());
    }
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    // Another process may have migrated while this one waited for the lock.
    if has_hash(&tx)? {
        return Ok(());
    }
    tx.execute_batch(
        "ALTER TABLE console_audit ADD COLUMN client TEXT;
         ALTER TABLE console_audit ADD COLUMN prev_hash TEXT;
         ALTER TABLE console_audit ADD COLUMN hash TEXT;",
    )?;
    let rows = read_audit_rows(&tx)?;
    let mut prev = AUDIT_GENESIS.to_string();
    for row in rows {
        let hash = chain_hash(&prev, &row);
        tx.execute(
            "UPDATE console_audit SET prev_hash = ?1, hash = ?2 WHERE id = ?3",
            params![prev, hash, row.id],
        )?;
        prev = hash;
    }
    tx.commit()
}

fn read_audit_rows(conn: &Connection) -> rusqlite::Result<Vec<AuditRow>> {
    let mut stmt = conn.prepare(
        "SELECT id, at, actor, role, action, target, before, after, client, prev_hash, hash
         FROM console_audit ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(AuditRow {
            id: r.get(0)?,
            at: r.get(1)?,
            actor: r.get(2)?,
            role: r.get(3)?,
            action: r.get(4)?,
            target: r.get(5)?,
            before: r.get(6)?,
            after: r.get(7)?,
            client: r.get(8)?,
            prev_hash: r.get(9)?,
            hash: r.get(10)?,
        })
    })?;
    rows.collect()
}

thread_local! {
    /// The connection of an audited change running on this thread, with the address of its
    /// store: every store call the change makes runs on it, inside the change's transaction
    /// (see [`ConsoleStore::audited`]), so the store's functions need no transaction-taking
    /// twins.
    static IN_CHANGE: RefCell<Option<(usize, Connection)>> = const { RefCell::new(None) };
}

/// Ends an audited change: its connection leaves the thread, and a transaction still open
/// (the change failed or panicked) is rolled back.
struct ChangeGuard {
    key: usize,
}

impl ChangeGuard {
    fn take(&self) -> Option<Connection> {
        IN_CHANGE.with(|slot| {
            let mut slot = slot.borrow_mut();
            match slot.take() {
                Some((key, conn)) if key == self.key => Some(conn),
                other => {
                    *slot = other;
                    None
                }
            }
        })
    }
}

impl Drop for ChangeGuard {
    fn drop(&mut self) {
        if let Some(conn) = self.take()
            && !conn.is_autocommit()
        {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Note {
    pub at: DateTime<Utc>,
    pub actor: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ack {
    pub by: String,
    pub at: DateTime<Utc>,
}

/// Which audit entries to read.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: usize,
}

/// The state database, for the console. Cheap to share: connections are pooled.
pub struct ConsoleStore {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// A fresh secret: 32 bytes from the operating system, as 64 hex digits after a prefix that
/// says what it is (so a leaked one is recognisable in a secret scanner).
pub fn new_token(prefix: &str) -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(format!("{prefix}{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Tokens are stored hashed: a copy of the database does not let anyone in.
fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
thread_local! {
    /// Decoy verifications run on this thread ([`ConsoleStore::check_password`]).
    static DECOYS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A user's name, owner, department and role are each valid, and go together.
fn check_user(user: &User) -> Result<(), StoreError> {
    if !valid_name(&user.name) {
        return Err(StoreError::Invalid(format!(
            "user name `{}` must be 1 to 64 letters, digits, `.`, `_`, `-` or `@`",
            user.name.escape_debug()
        )));
    }
    if let Some(owner) = &user.owner
        && !["police", "safety_production", "city_management"].contains(&owner.as_str())
    {
        return Err(StoreError::Invalid(format!(
            "owner `{}` is not one of police, safety_production, city_management",
            owner.escape_debug()
        )));
    }
    if let Some(department) = &user.department
        && skynet_core::validate_id("department", department).is_err()
    {
        return Err(StoreError::Invalid(format!(
            "department `{}` must be letters, digits, `.`, `_` or `-`",
            department.escape_debug()
        )));
    }
    if user.role == Role::Inspector && user.department.is_none() {
        return Err(StoreError::Invalid(
            "an inspector sees the incidents of their department: give one".into(),
        ));
    }
    Ok(())
}

/// A new password that passed the rules ([`super::passwords::problem`]), hashed with argon2.
/// Made before a write transaction, so the hashing does not hold the write lock.
#[derive(Clone)]
pub struct NewPassword(String);

impl NewPassword {
    pub fn hash(password: &str) -> Result<Self, StoreError> {
        if let Some(problem) = super::passwords::problem(password) {
            return Err(StoreError::Invalid(problem));
        }
        hash_password(password).map(Self)
    }
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword(..)")
    }
}

pub fn hash_password(password: &str) -> Result<String, StoreError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| StoreError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| StoreError::Hash(e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| StoreError::Hash(e.to_string()))
}

/// Checks `password` against a stored hash; an unreadable hash never matches.
pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

fn json_or_null(text: Option<String>) -> Option<serde_json::Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

/// A user as stored, before its role is read.
struct UserRow {
    name: String,
    role: String,
    department: Option<String>,
    owner: Option<String>,
}

impl UserRow {
    /// The user, or `None` with a warning when the role is not one this release knows (a
    /// database edited by hand, or written by a later release): such a user may not log in,
    /// and their tokens are refused, rather than being given some role by guess.
    fn into_user(self) -> Option<User> {
        let Some(role) = Role::parse(&self.role) else {
            tracing::warn!(
                user = %self.name.escape_debug(),
                role = %self.role.escape_debug(),
                "unknown role in the state database: the user may not log in until `skynet users add` gives them one"
            );
            return None;
        };
        Some(User {
            name: self.name,
            role,
            department: self.department,
            owner: self.owner,
        })
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

impl ConsoleStore {
    /// Opens (creating the tables if needed) the state database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
        };
        // Password and token hashes, notes and the audit: the file (and with it the WAL
        // SQLite creates beside it) is owner only.
        skynet_core::private_fs::prepare_private_sqlite(path).map_err(|source| {
            StoreError::File {
                path: path.to_path_buf(),
                source,
            }
        })?;
        store.with(|conn| conn.execute_batch(SCHEMA))?;
        store.migrate()?;
        store.with(migrate_audit_chain)?;
        Ok(store)
    }

    /// Brings a database from an older release up to date: tokens gain `last_seen`, and a
    /// token issued when tokens never expired is given [`API_TOKEN_TTL_DAYS`] from now
    /// rather than staying valid for ever.
    fn migrate(&self) -> Result<(), StoreError> {
        let aged = self.with(|conn| {
            let has_last_seen: bool = conn
                .prepare(
                    "SELECT 1 FROM pragma_table_info('console_tokens') WHERE name = 'last_seen'",
                )?
                .exists([])?;
            if !has_last_seen {
                conn.execute("ALTER TABLE console_tokens ADD COLUMN last_seen TEXT", [])?;
            }
            let expires = Utc::now() + chrono::TimeDelta::days(API_TOKEN_TTL_DAYS);
            conn.execute(
                "UPDATE console_tokens SET expires_at = ?1 WHERE expires_at IS NULL",
                [expires.to_rfc3339()],
            )
        })?;
        if aged > 0 {
            tracing::info!(
                tokens = aged,
                days = API_TOKEN_TTL_DAYS,
                "API tokens from before tokens expired now expire; issue new ones with `skynet users token`"
            );
        }
        Ok(())
    }

    /// A 32-byte key kept in the state database under `name`, made on first use: it signs
    /// what the server hands out and checks later (device cookies), and lasts across
    /// restarts. Never logged.
    pub fn secret_key(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let fresh = new_token("")?;
        let stored: String = self.with(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO console_secrets (name, value) VALUES (?1, ?2)",
                params![name, fresh],
            )?;
            conn.query_row(
                "SELECT value FROM console_secrets WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
        })?;
        let mut key = [0u8; 32];
        let bytes = stored.as_bytes();
        if bytes.len() != 64 {
            return Err(StoreError::Invalid(format!(
                "the stored key `{name}` is damaged"
            )));
        }
        for (i, byte) in key.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&bytes[2 * i..2 * i + 2]).unwrap_or("");
            *byte = u8::from_str_radix(pair, 16)
                .map_err(|_| StoreError::Invalid(format!("the stored key `{name}` is damaged")))?;
        }
        Ok(key)
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path).map_err(|source| self.sql(source))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|source| self.sql(source))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|source| self.sql(source))?;
        Ok(conn)
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Runs `f` on a pooled connection (blocking: call from a blocking thread).
    fn with<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R, StoreError> {
        // Inside an audited change on this thread: its connection, in its transaction.
        let guard = ChangeGuard { key: self.key() };
        if let Some(conn) = guard.take() {
            let result = f(&conn).map_err(|source| self.sql(source));
            IN_CHANGE.with(|slot| *slot.borrow_mut() = Some((guard.key, conn)));
            std::mem::forget(guard);
            return result;
        }
        std::mem::forget(guard);
        let conn = self.checkout()?;
        let result = f(&conn).map_err(|source| self.sql(source));
        self.give_back(conn);
        result
    }

    /// A pooled connection, or a new one when none is idle.
    fn checkout(&self) -> Result<Connection, StoreError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => self.connect(),
        }
    }

    /// Returns a connection to the pool (at most 8 kept idle).
    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < 8 {
            idle.push(conn);
        }
    }

    /// Adds a user, or replaces one of the same name (a new password or role). Returns the
    /// user as it was before, if any. Inside [`ConsoleStore::audited`], hash first
    /// ([`NewPassword::hash`]) and call [`ConsoleStore::put_user_hashed`]: argon2 takes tens of
    /// milliseconds and 19 MiB, and a transaction would hold the write lock meanwhile.
    pub fn put_user(&self, user: &User, password: &str) -> Result<Option<User>, StoreError> {
        check_user(user)?;
        let password = NewPassword::hash(password)?;
        self.put_user_hashed(user, &password)
    }

    /// [`ConsoleStore::put_user`] with the password already checked and hashed.
    pub fn put_user_hashed(
        &self,
        user: &User,
        password: &NewPassword,
    ) -> Result<Option<User>, StoreError> {
        check_user(user)?;
        let hash = &password.0;
        let before = self.user(&user.name)?;
        self.with(|conn| {
            conn.execute(
                "INSERT INTO console_users (name, role, department, owner, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(name) DO UPDATE SET role = excluded.role, department = excluded.department,
                     owner = excluded.owner, password_hash = excluded.password_hash",
                params![user.name, user.role.as_str(), user.department, user.owner, hash, Utc::now().to_rfc3339()],
            )?;
            // A changed password, role or scope ends every session and API token issued
            // under the old one (a new user has none: removing a user removes its tokens).
            conn.execute("DELETE FROM console_tokens WHERE user = ?1", [&user.name])?;
            Ok(())
        })?;
        Ok(before)
    }

    pub fn remove_user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let before = self.user(name)?;
        self.with(|conn| {
            conn.execute("DELETE FROM console_tokens WHERE user = ?1", [name])?;
            conn.execute("DELETE FROM console_users WHERE name = ?1", [name])
        })?;
        Ok(before)
    }

    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        Ok(self.user_with_hash(name)?.map(|(user, _)| user))
    }

    fn user_with_hash(&self, name: &str) -> Result<Option<(User, Option<String>)>, StoreError> {
        let row = self.with(|conn| {
            conn.query_row(
                "SELECT name, role, department, owner, password_hash FROM console_users WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        UserRow {
                            name: r.get(0)?,
                            role: r.get(1)?,
                            department: r.get(2)?,
                            owner: r.get(3)?,
                        },
                        r.get::<_, Option<String>>(4)?,
                    ))
                },
            )
            .optional()
        })?;
        Ok(row.and_then(|(row, hash)| row.into_user().map(|user| (user, hash))))
    }

    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT name, role, department, owner FROM console_users ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                Ok(UserRow {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    department: r.get(2)?,
                    owner: r.get(3)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })
        .map(|rows| rows.into_iter().filter_map(UserRow::into_user).collect())
    }

    /// The user when `password` is theirs. Unknown users cost as much as known ones, so
    /// timing does not tell which names exist.
    pub fn check_password(&self, name: &str, password: &str) -> Result<Option<User>, StoreError> {
        // A hash of a password nobody has, verified when the user is unknown.
        static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        match self.user_with_hash(name)? {
            Some((user, Some(hash))) if verify_password(password, &hash) => Ok(Some(user)),
            Some((_, Some(_))) => Ok(None),
            // A user without a password hash costs as much as one with, so timing does not
            // tell that the account exists either.
            Some((_, None)) | None => {
                #[cfg(test)]
                DECOYS.with(|n| n.set(n.get() + 1));
                if let Some(decoy) = DECOY.get() {
                    verify_password(password, decoy);
                } else if let Ok(hash) = hash_password("decoy password, never used") {
                    let _ = DECOY.set(hash);
                }
                Ok(None)
            }
        }
    }

    /// Issues a token for `user`, valid for `ttl` (`None`: [`API_TOKEN_TTL_DAYS`]; nothing
    /// is valid for ever).
    pub fn issue_token(
        &self,
        user: &str,
        kind: TokenKind,
        label: Option<&str>,
        ttl: Option<chrono::Duration>,
    ) -> Result<String, StoreError> {
        let token = new_token(match kind {
            TokenKind::Session => "sks_",
            TokenKind::Api => "ska_",
        })?;
        let now = Utc::now();
        self.with(|conn| {
            // Expired sessions go when new ones come: the table never grows without bound.
            conn.execute(
                "DELETE FROM console_tokens WHERE expires_at IS NOT NULL AND expires_at < ?1",
                [now.to_rfc3339()],
            )?;
            conn.execute(
                "INSERT INTO console_tokens (hash, user, kind, label, created_at, expires_at, last_seen) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5)",
                params![
                    token_hash(&token),
                    user,
                    kind.as_str(),
                    label,
                    now.to_rfc3339(),
                    (now + ttl.unwrap_or(chrono::TimeDelta::days(API_TOKEN_TTL_DAYS))).to_rfc3339()
                ],
            )
        })?;
        Ok(token)
    }

    /// The user a token belongs to, when it is known and not expired (no idle timeout: see
    /// [`Self::authenticate`]).
    pub fn user_for_token(&self, token: &str) -> Result<Option<User>, StoreError> {
        self.authenticate(token, None, false)
    }

    /// The user a token belongs to, when it is known, not expired and, for a browser
    /// session, used within `idle` (a session idle for longer is ended). `touch`: this
    /// request is the user's activity, so the session's last use moves on (written at most
    /// once a minute); a live stream's rechecks do not touch.
    pub fn authenticate(
        &self,
        token: &str,
        idle: Option<std::time::Duration>,
        touch: bool,
    ) -> Result<Option<User>, StoreError> {
        let now = Utc::now();
        let hash = token_hash(token);
        let row: Option<(String, String, String)> = self.with(|conn| {
            conn.query_row(
                "SELECT user, kind, COALESCE(last_seen, created_at) FROM console_tokens
                 WHERE hash = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                params![hash, now.to_rfc3339()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        let Some((name, kind, last_seen)) = row else {
            return Ok(None);
        };
        let last_seen = parse_time(&last_seen);
        let session = kind == TokenKind::Session.as_str();
        if session
            && let Some(idle) = idle.and_then(|idle| chrono::TimeDelta::from_std(idle).ok())
            && now - last_seen > idle
        {
            self.with(|conn| conn.execute("DELETE FROM console_tokens WHERE hash = ?1", [&hash]))?;
            return Ok(None);
        }
        if touch && now - last_seen >= LAST_SEEN_EVERY {
            self.with(|conn| {
                conn.execute(
                    "UPDATE console_tokens SET last_seen = ?1 WHERE hash = ?2",
                    params![now.to_rfc3339(), hash],
                )
            })?;
        }
        self.user(&name)
    }

    /// Ends every browser session of `user`; returns how many.
    pub fn revoke_sessions(&self, user: &str) -> Result<usize, StoreError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM console_tokens WHERE user = ?1 AND kind = 'session'",
                [user],
            )
        })
    }

    /// Revokes `user`'s machine tokens (those with `label`, when given); returns how many.
    pub fn revoke_api_tokens(&self, user: &str, label: Option<&str>) -> Result<usize, StoreError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM console_tokens WHERE user = ?1 AND kind = 'api' AND (?2 IS NULL OR label = ?2)",
                params![user, label],
            )
        })
    }

    pub fn revoke_token(&self, token: &str) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM console_tokens WHERE hash = ?1",
                [token_hash(token)],
            )
        })?;
        Ok(())
    }

    /// This store's key in [`IN_CHANGE`]: its address, unique while it lives.
    fn key(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }

    /// Writes an entry with no client address (the CLI, the pipeline).
    pub fn audit(
        &self,
        actor: &str,
        role: &str,
        action: &str,
        target: &str,
        before: Option<&serde_json::Value>,
        after: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        self.record(&NewAudit {
            actor: actor.into(),
            role: role.into(),
            action: action.into(),
            target: target.into(),
            before: before.cloned(),
            after: after.cloned(),
            client: None,
        })
    }

    /// Writes one entry on its own (a read, a login): its own IMMEDIATE transaction, or the
    /// audited change's this thread is in.
    pub fn record(&self, entry: &NewAudit) -> Result<(), StoreError> {
        self.audited(|| Ok::<_, StoreError>(((), Some(entry.clone()))))
    }

    /// Runs `change` and writes the audit entry it returns in one IMMEDIATE transaction:
    /// both are kept, or neither (a failed change, or a failed audit write, rolls both back).
    /// Every store call `change` makes on this thread runs in that transaction; it must not
    /// open another connection to the same database (it would wait for this one's lock).
    /// `None` for the entry: nothing changed, nothing to say.
    pub fn audited<R, E: From<StoreError>>(
        &self,
        change: impl FnOnce() -> Result<(R, Option<NewAudit>), E>,
    ) -> Result<R, E> {
        let guard = ChangeGuard { key: self.key() };
        if let Some(conn) = guard.take() {
            // Already inside a change on this thread: one transaction holds both.
            IN_CHANGE.with(|slot| *slot.borrow_mut() = Some((guard.key, conn)));
            std::mem::forget(guard);
            let (result, entry) = change()?;
            if let Some(entry) = entry {
                self.with(|conn| append_audit(conn, &entry))?;
            }
            return Ok(result);
        }
        let conn = self.checkout()?;
        conn.execute_batch("BEGIN IMMEDIATE")
            .map_err(|source| self.sql(source))?;
        IN_CHANGE.with(|slot| *slot.borrow_mut() = Some((guard.key, conn)));
        // From here the guard rolls back whatever does not reach the commit.
        let (result, entry) = change()?;
        if let Some(entry) = entry {
            self.with(|conn| append_audit(conn, &entry))?;
        }
        let conn = guard
            .take()
            .ok_or_else(|| StoreError::Audit("the audited change lost its connection".into()))?;
        if let Err(source) = conn.execute_batch("COMMIT") {
            let _ = conn.execute_batch("ROLLBACK");
            return Err(self.sql(source).into());
        }
        self.give_back(conn);
        Ok(result)
    }

    /// Checks the audit log's hash chain (see [`verify_chain`]): `Ok(Ok((rows, last hash)))`
    /// when it holds.
    pub fn verify_audit(&self) -> Result<Result<(u64, String), ChainBreak>, StoreError> {
        let rows = self.with(read_audit_rows)?;
        let last = rows
            .last()
            .and_then(|r| r.hash.clone())
            .unwrap_or_else(|| AUDIT_GENESIS.to_string());
        Ok(verify_chain(rows).map(|n| (n, last)))
    }

    /// The newest audit row's id and hash, the chain head: logged by the console and printed
    /// by `skynet audit verify` to keep outside the database, where whoever can write the
    /// database cannot reach it. One lookup by primary key. `None` while the log is empty.
    pub fn audit_head(&self) -> Result<Option<(i64, String)>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT id, coalesce(hash, '') FROM console_audit ORDER BY id DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
        })
    }

    /// The id of the row whose hash is `head` (a head kept from earlier), `None` when no row
    /// has it: rows were removed from the end or rewritten since it was kept. With a chain
    /// that holds ([`Self::verify_audit`]), a row found here proves every row up to it.
    pub fn audit_row_with_hash(&self, head: &str) -> Result<Option<i64>, StoreError> {
        self.with(|conn| {
            conn.query_row(
                "SELECT id FROM console_audit WHERE hash = ?1 ORDER BY id LIMIT 1",
                [head],
                |r| r.get(0),
            )
            .optional()
        })
    }

    pub fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at, actor, role, action, target, before, after, client, hash FROM console_audit
                 WHERE (?1 IS NULL OR actor = ?1) AND (?2 IS NULL OR action = ?2)
                   AND (?3 IS NULL OR target = ?3) AND (?4 IS NULL OR at >= ?4)
                 ORDER BY id DESC LIMIT ?5",
            )?;
            let rows = stmt.query_map(
                params![
                    query.actor,
                    query.action,
                    query.target,
                    query.since.map(|t| t.to_rfc3339()),
                    query.limit.clamp(1, 1000) as i64
                ],
                |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        at: parse_time(&r.get::<_, String>(1)?),
                        actor: r.get(2)?,
                        role: r.get(3)?,
                        action: r.get(4)?,
                        target: r.get(5)?,
                        before: json_or_null(r.get(6)?),
                        after: json_or_null(r.get(7)?),
                        client: r.get(8)?,
                        hash: r.get(9)?,
                    })
                },
            )?;
            rows.collect()
        })
    }

    pub fn add_note(&self, incident: &str, actor: &str, text: &str) -> Result<Note, StoreError> {
        let note = Note {
            at: Utc::now(),
            actor: actor.to_string(),
            text: text.to_string(),
        };
        self.with(|conn| {
            conn.execute(
                "INSERT INTO console_notes (incident, at, actor, text) VALUES (?1, ?2, ?3, ?4)",
                params![incident, note.at.to_rfc3339(), note.actor, note.text],
            )
        })?;
        Ok(note)
    }

    pub fn notes(&self, incident: &str) -> Result<Vec<Note>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT at, actor, text FROM console_notes WHERE incident = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([incident], |r| {
                Ok(Note {
                    at: parse_time(&r.get::<_, String>(0)?),
                    actor: r.get(1)?,
                    text: r.get(2)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Records the first acknowledgement of an incident; a later one changes nothing.
    /// Returns the acknowledgement in effect.
    pub fn acknowledge(&self, incident: &str, actor: &str) -> Result<Ack, StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT OR IGNORE INTO console_acks (incident, actor, at) VALUES (?1, ?2, ?3)",
                params![incident, actor, Utc::now().to_rfc3339()],
            )?;
            conn.query_row(
                "SELECT actor, at FROM console_acks WHERE incident = ?1",
                [incident],
                |r| {
                    Ok(Ack {
                        by: r.get(0)?,
                        at: parse_time(&r.get::<_, String>(1)?),
                    })
                },
            )
        })
    }

    /// Forgets an acknowledgement made before `before` (the incident opened again since).
    pub fn clear_ack_before(
        &self,
        incident: &str,
        before: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "DELETE FROM console_acks WHERE incident = ?1 AND at < ?2",
                params![incident, before.to_rfc3339()],
            )
        })?;
        Ok(())
    }

    pub fn acks(&self) -> Result<Vec<(String, Ack)>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT incident, actor, at FROM console_acks")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Ack {
                        by: r.get(1)?,
                        at: parse_time(&r.get::<_, String>(2)?),
                    },
                ))
            })?;
            rows.collect()
        })
    }

    pub fn save_thresholds(
        &self,
        camera: &str,
        scores: &std::collections::BTreeMap<String, f32>,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            for (label, score) in scores {
                conn.execute(
                    "INSERT INTO console_thresholds (camera, label, score) VALUES (?1, ?2, ?3)
                     ON CONFLICT(camera, label) DO UPDATE SET score = excluded.score",
                    params![camera, label, f64::from(*score)],
                )?;
            }
            Ok(())
        })
    }

    /// Threshold changes saved earlier, per camera, to apply again at start.
    pub fn saved_thresholds(&self) -> Result<Vec<(String, Thresholds)>, StoreError> {
        let rows: Vec<(String, String, f64)> = self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT camera, label, score FROM console_thresholds ORDER BY camera")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })?;
        let mut cameras: Vec<(String, Thresholds)> = Vec::new();
        for (camera, label, score) in rows {
            match cameras.last_mut() {
                Some((c, scores)) if *c == camera => {
                    scores.insert(label, score as f32);
                }
                _ => cameras.push((camera, [(label, score as f32)].into())),
            }
        }
        Ok(cameras)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, role: Role) -> User {
        User {
            name: name.into(),
            role,
            department: None,
            owner: None,
        }
    }

    #[test]
    fn a_user_without_a_password_hash_costs_a_decoy_verification_like_an_unknown_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsoleStore::open(&dir.path().join("state.sqlite")).unwrap();
        store
            .put_user(&user("op", Role::Operator), "correct horse battery")
            .unwrap();
        store
            .with(|conn| {
                conn.execute(
                    "UPDATE console_users SET password_hash = NULL WHERE name = 'op'",
                    [],
                )
            })
            .unwrap();
        let before = DECOYS.with(std::cell::Cell::get);
        assert_eq!(
            store.check_password("op", "correct horse battery").unwrap(),
            None
        );
        assert_eq!(DECOYS.with(std::cell::Cell::get), before + 1);
        assert_eq!(
            store.check_password("nobody", "whatever it is").unwrap(),
            None
        );
        assert_eq!(DECOYS.with(std::cell::Cell::get), before + 2);
        // A known user with a hash verifies that hash, not the decoy.
        store
            .put_user(&user("op", Role::Operator), "correct horse battery")
            .unwrap();
        assert!(
            store
                .check_password("op", "wrong horse battery")
                .unwrap()
                .is_none()
        );
        assert_eq!(DECOYS.with(std::cell::Cell::get), before + 2);
    }

    #[test]
    fn passwords_tokens_and_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsoleStore::open(&dir.path().join("state.sqlite")).unwrap();
        assert!(
            store
                .put_user(&user("op", Role::Operator), "short")
                .is_err()
        );
        assert!(
            store
                .put_user(&user("bad name", Role::Operator), "long enough")
                .is_err()
        );
        assert!(
            store
                .put_user(&user("op", Role::Operator), "correct horse")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            store.check_password("op", "correct horse").unwrap(),
            Some(user("op", Role::Operator))
        );
        assert_eq!(store.check_password("op", "wrong").unwrap(), None);
        assert_eq!(store.check_password("nobody", "wrong").unwrap(), None);

        let session = store
            .issue_token(
                "op",
                TokenKind::Session,
                None,
                Some(chrono::Duration::hours(1)),
            )
            .unwrap();
        assert!(session.starts_with("sks_"));
        assert_eq!(store.user_for_token(&session).unwrap().unwrap().name, "op");
        let expired = store
            .issue_token(
                "op",
                TokenKind::Session,
                None,
                Some(chrono::Duration::seconds(-1)),
            )
            .unwrap();
        assert!(store.user_for_token(&expired).unwrap().is_none());
        let api = store
            .issue_token("op", TokenKind::Api, Some("wall"), None)
            .unwrap();
        assert_eq!(store.user_for_token(&api).unwrap().unwrap().name, "op");
        store.revoke_token(&api).unwrap();
        assert!(store.user_for_token(&api).unwrap().is_none());
        // A new password or role ends sessions and machine tokens alike.
        let api = store
            .issue_token("op", TokenKind::Api, Some("wall"), None)
            .unwrap();
        store
            .put_user(&user("op", Role::Engineer), "another password")
            .unwrap();
        assert!(store.user_for_token(&session).unwrap().is_none());
        assert!(store.user_for_token(&api).unwrap().is_none());
        // Stored hashed, never as issued.
        let raw: Vec<String> = store
            .with(|c| {
                let mut s = c.prepare("SELECT hash FROM console_tokens")?;
                let rows = s.query_map([], |r| r.get(0))?;
                rows.collect()
            })
            .unwrap();
        assert!(raw.iter().all(|h| !h.starts_with("sk")));
    }

    #[test]
    fn idle_sessions_end_and_old_eternal_tokens_are_given_an_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let store = ConsoleStore::open(&path).unwrap();
        store
            .put_user(&user("op", Role::Operator), "correct horse battery")
            .unwrap();
        let session = store
            .issue_token(
                "op",
                TokenKind::Session,
                None,
                Some(chrono::TimeDelta::hours(12)),
            )
            .unwrap();
        let api = store.issue_token("op", TokenKind::Api, None, None).unwrap();
        let idle = Some(std::time::Duration::from_secs(1800));
        assert!(store.authenticate(&session, idle, true).unwrap().is_some());
        // Last seen an hour ago: the session has ended; a machine's token has no idle limit.
        let hour_ago = (Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
        store
            .with(|c| c.execute("UPDATE console_tokens SET last_seen = ?1", [&hour_ago]))
            .unwrap();
        assert!(store.authenticate(&session, idle, true).unwrap().is_none());
        assert!(store.authenticate(&api, idle, true).unwrap().is_some());
        assert!(
            store.user_for_token(&session).unwrap().is_none(),
            "ended for good"
        );
        // A touch moves last_seen on; within the minute it is not written again.
        store.authenticate(&api, idle, true).unwrap();
        let seen: String = store
            .with(|c| c.query_row("SELECT last_seen FROM console_tokens", [], |r| r.get(0)))
            .unwrap();
        assert!(seen > hour_ago);

        // A database from before tokens expired: no last_seen column, a token without expiry.
        store
            .with(|c| {
                c.execute_batch(
                    "DROP TABLE console_tokens;
                     CREATE TABLE console_tokens (hash TEXT PRIMARY KEY, user TEXT NOT NULL,
                         kind TEXT NOT NULL, label TEXT, created_at TEXT NOT NULL, expires_at TEXT);",
                )?;
                c.execute(
                    "INSERT INTO console_tokens VALUES (?1, 'op', 'api', NULL, ?2, NULL)",
                    params![token_hash("ska_old"), Utc::now().to_rfc3339()],
                )
            })
            .unwrap();
        drop(store);
        let store = ConsoleStore::open(&path).unwrap();
        let expires: String = store
            .with(|c| c.query_row("SELECT expires_at FROM console_tokens", [], |r| r.get(0)))
            .unwrap();
        let days = (parse_time(&expires) - Utc::now()).num_days();
        assert!((89..=90).contains(&days), "{expires}");
        assert!(store.user_for_token("ska_old").unwrap().is_some());
    }

    #[test]
    fn an_unknown_role_is_no_role() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsoleStore::open(&dir.path().join("state.sqlite")).unwrap();
        store
            .put_user(&user("op", Role::Operator), "correct horse battery")
            .unwrap();
        let token = store.issue_token("op", TokenKind::Api, None, None).unwrap();
        store
            .with(|c| c.execute("UPDATE console_users SET role = 'superuser'", []))
            .unwrap();
        assert_eq!(
            store.check_password("op", "correct horse battery").unwrap(),
            None
        );
        assert_eq!(store.user_for_token(&token).unwrap(), None);
        assert!(store.users().unwrap().is_empty());
    }

    #[test]
    fn the_secret_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let key = ConsoleStore::open(&path)
            .unwrap()
            .secret_key("device")
            .unwrap();
        let again = ConsoleStore::open(&path)
            .unwrap()
            .secret_key("device")
            .unwrap();
        assert_eq!(key, again);
        assert_ne!(key, [0u8; 32]);
    }

    #[test]
    fn audit_notes_acks_and_thresholds_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsoleStore::open(&dir.path().join("state.sqlite")).unwrap();
        store
            .audit(
                "op",
                "operator",
                "incident.ack",
                "inc-1",
                Some(&serde_json::json!({"state": "open"})),
                Some(&serde_json::json!({"state": "acknowledged"})),
            )
            .unwrap();
        store
            .audit("eng", "engineer", "camera.thresholds", "cam-1", None, None)
            .unwrap();
        let all = store
            .audit_entries(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].action, "camera.thresholds", "newest first");
        let mine = store
            .audit_entries(&AuditQuery {
                actor: Some("op".into()),
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(mine[0].before, Some(serde_json::json!({"state": "open"})));

        store.add_note("inc-1", "op", "crew on the way").unwrap();
        assert_eq!(store.notes("inc-1").unwrap()[0].text, "crew on the way");
        let first = store.acknowledge("inc-1", "op").unwrap();
        let again = store.acknowledge("inc-1", "other").unwrap();
        assert_eq!(first, again, "the first acknowledgement stands");

        store
            .save_thresholds("cam-1", &[("person".into(), 0.5)].into())
            .unwrap();
        store
            .save_thresholds(
                "cam-1",
                &[("person".into(), 0.6), ("car".into(), 0.4)].into(),
            )
            .unwrap();
        let saved = store.saved_thresholds().unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].1["person"], 0.6);
    }
    fn entry(actor: &str, action: &str) -> NewAudit {
        NewAudit {
            actor: actor.into(),
            role: "operator".into(),
            action: action.into(),
            target: "inc-1".into(),
            after: Some(serde_json::json!({"text": "x"})),
            client: Some("192.0.2.7".parse().unwrap()),
            ..NewAudit::default()
        }
    }

    #[test]
    fn the_hash_chain_holds_and_its_first_break_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsoleStore::open(&dir.path().join("state.sqlite")).unwrap();
        assert_eq!(store.verify_audit().unwrap().unwrap().0, 0);
        for i in 0..5 {
            store.record(&entry("op", &format!("a{i}"))).unwrap();
        }
        let rows = store.with(read_audit_rows).unwrap();
        assert_eq!(verify_chain(rows.clone()), Ok(5));
        assert_eq!(rows[0].prev_hash.as_deref(), Some(AUDIT_GENESIS));
        assert_eq!(rows[0].client.as_deref(), Some("192.0.2.7"));
        // A changed field: that row.
        let mut changed = rows.clone();
        changed[2].actor = "someone else".into();
        let brk = verify_chain(changed).unwrap_err();
        assert_eq!(brk.id, 3);
        assert!(brk.what.contains("fields"), "{brk}");
        // A changed row whose hash was computed again: the next row names it.
        let mut rehashed = rows.clone();
        rehashed[2].after = Some("{}".into());
        rehashed[2].hash = Some(chain_hash(
            rehashed[2].prev_hash.as_deref().unwrap(),
            &rehashed[2],
        ));
        let brk = verify_chain(rehashed).unwrap_err();
        assert_eq!(brk.id, 4);
        assert!(brk.what.contains("row 3"), "{brk}");
        // A removed row: the one after the gap.
        let mut removed = rows.clone();
        removed.remove(1);
        let brk = verify_chain(removed).unwrap_err();
        assert_eq!(brk.id, 3);
        assert!(brk.what.contains("rows 2 to 2 are missing"), "{brk}");
        // A row without a hash (written by something that does not chain).
        let mut unhashed = rows;
        unhashed[4].hash = None;
        assert_eq!(verify_chain(unhashed).unwrap_err().id, 5);
    }

    #[test]
    fn a_kept_head_is_found_until_the_newest_rows_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsoleStore::open(&dir.path().join("state.sqlite")).unwrap();
        assert_eq!(store.audit_head().unwrap(), None);
        for i in 0..5 {
            store.record(&entry("op", &format!("a{i}"))).unwrap();
        }
        let (id, head) = store.audit_head().unwrap().unwrap();
        assert_eq!(id, 5);
        assert_eq!(store.verify_audit().unwrap().unwrap(), (5, head.clone()));
        assert_eq!(store.audit_row_with_hash(&head).unwrap(), Some(5));
        // Removing the newest rows leaves a chain that holds, but not the kept head.
        store
            .with(|c| c.execute("DELETE FROM console_audit WHERE id >= 4", []))
            .unwrap();
        assert_eq!(store.verify_audit().unwrap().unwrap().0, 3);
        assert_eq!(store.audit_row_with_hash(&head).unwrap(), None);
        assert_eq!(store.audit_head().unwrap().unwrap().0, 3);
    }

    #[test]
    fn an_audit_log_from_before_the_chain_is_chained_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE console_audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL,
                    actor TEXT NOT NULL, role TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL,
                    before TEXT, after TEXT);
                 INSERT INTO console_audit (at, actor, role, action, target) VALUES
                    ('2026-01-01T00:00:00+00:00', 'cli:root', 'cli', 'user.put', 'op'),
                    ('2026-01-02T00:00:00+00:00', 'op', 'operator', 'login', 'op');",
            )
            .unwrap();
        }
        let store = ConsoleStore::open(&path).unwrap();
        store.record(&entry("op", "incident.note")).unwrap();
        assert_eq!(store.verify_audit().unwrap().unwrap().0, 3);
        // Opening again changes nothing.
        drop(store);
        let store = ConsoleStore::open(&path).unwrap();
        assert_eq!(store.verify_audit().unwrap().unwrap().0, 3);
    }

    #[test]
    fn a_change_and_its_audit_entry_are_kept_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConsoleStore::open(&dir.path().join("state.sqlite")).unwrap();
        // The audit write fails: the note goes too.
        store
            .with(|c| {
                c.execute_batch(
                    "CREATE TRIGGER no_audit BEFORE INSERT ON console_audit
                     BEGIN SELECT RAISE(ABORT, 'audit refused'); END;",
                )
            })
            .unwrap();
        let failed = store.audited(|| {
            store.add_note("inc-1", "op", "lost with its entry")?;
            Ok::<_, StoreError>(((), Some(entry("op", "incident.note"))))
        });
        assert!(failed.is_err());
        assert!(store.notes("inc-1").unwrap().is_empty());
        // The change fails: no entry either.
        store
            .with(|c| c.execute_batch("DROP TRIGGER no_audit"))
            .unwrap();
        let failed: Result<(), StoreError> = store.audited(|| {
            store.add_note("inc-1", "op", "half a change")?;
            Err(StoreError::Invalid("refused".into()))
        });
        assert!(failed.is_err());
        assert!(store.notes("inc-1").unwrap().is_empty());
        assert_eq!(store.verify_audit().unwrap().unwrap().0, 0);
        // Both succeed: both are there, and the pool's connections are back in autocommit.
        store
            .audited(|| {
                store.add_note("inc-1", "op", "kept")?;
                Ok::<_, StoreError>(((), Some(entry("op", "incident.note"))))
            })
            .unwrap();
        assert_eq!(store.notes("inc-1").unwrap().len(), 1);
        assert_eq!(store.verify_audit().unwrap().unwrap().0, 1);
        assert!(store.with(|c| Ok(c.is_autocommit())).unwrap());
    }

    #[test]
    fn two_writers_never_fork_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        ConsoleStore::open(&path).unwrap();
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let store = ConsoleStore::open(&path).unwrap();
                    for i in 0..25 {
                        store
                            .record(&entry(&format!("w{w}"), &format!("a{i}")))
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let store = ConsoleStore::open(&path).unwrap();
        assert_eq!(store.verify_audit().unwrap().unwrap().0, 100);
    }
}
