//! The console's own tables in the state database (the outbox's SQLite file): users and
//! their argon2 password hashes, tokens, the audit log, people's notes and acknowledgements,
//! and threshold changes. One connection per caller; SQLite's WAL lets them run beside the
//! pipeline's writer.

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
    #[error("{0}")]
    Invalid(String),
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
    expires_at   TEXT
);
CREATE INDEX IF NOT EXISTS console_tokens_by_user ON console_tokens (user);
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

/// One audit entry: who changed what, from what, to what, and when.
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
        store.with(|conn| conn.execute_batch(SCHEMA))?;
        Ok(store)
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
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
        let conn = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match conn {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let result = f(&conn).map_err(|source| self.sql(source));
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < 8 {
            idle.push(conn);
        }
        result
    }

    /// Adds a user, or replaces one of the same name (a new password or role). Returns the
    /// user as it was before, if any.
    pub fn put_user(&self, user: &User, password: &str) -> Result<Option<User>, StoreError> {
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
        if password.chars().count() < 8 {
            return Err(StoreError::Invalid(
                "the password must be at least 8 characters".into(),
            ));
        }
        let hash = hash_password(password)?;
        let before = self.user(&user.name)?;
        self.with(|conn| {
            conn.execute(
                "INSERT INTO console_users (name, role, department, owner, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(name) DO UPDATE SET role = excluded.role, department = excluded.department,
                     owner = excluded.owner, password_hash = excluded.password_hash",
                params![user.name, user.role.as_str(), user.department, user.owner, hash, Utc::now().to_rfc3339()],
            )?;
            // A changed password or role ends the sessions opened with the old one.
            if before.is_some() {
                conn.execute(
                    "DELETE FROM console_tokens WHERE user = ?1 AND kind = 'session'",
                    [&user.name],
                )?;
            }
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
        self.with(|conn| {
            conn.query_row(
                "SELECT name, role, department, owner, password_hash FROM console_users WHERE name = ?1",
                [name],
                |r| {
                    let role: String = r.get(1)?;
                    Ok((
                        User {
                            name: r.get(0)?,
                            role: Role::parse(&role).unwrap_or(Role::Operator),
                            department: r.get(2)?,
                            owner: r.get(3)?,
                        },
                        r.get::<_, Option<String>>(4)?,
                    ))
                },
            )
            .optional()
        })
    }

    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT name, role, department, owner FROM console_users ORDER BY name")?;
            let rows = stmt.query_map([], |r| {
                let role: String = r.get(1)?;
                Ok(User {
                    name: r.get(0)?,
                    role: Role::parse(&role).unwrap_or(Role::Operator),
                    department: r.get(2)?,
                    owner: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    /// The user when `password` is theirs. Unknown users cost as much as known ones, so
    /// timing does not tell which names exist.
    pub fn check_password(&self, name: &str, password: &str) -> Result<Option<User>, StoreError> {
        // A hash of a password nobody has, verified when the user is unknown.
        static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        match self.user_with_hash(name)? {
            Some((user, Some(hash))) if verify_password(password, &hash) => Ok(Some(user)),
            Some(_) => Ok(None),
            None => {
                if let Some(decoy) = DECOY.get() {
                    verify_password(password, decoy);
                } else if let Ok(hash) = hash_password("decoy password, never used") {
                    let _ = DECOY.set(hash);
                }
                Ok(None)
            }
        }
    }

    /// Issues a token for `user`; `ttl` None never expires (API tokens).
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
                "INSERT INTO console_tokens (hash, user, kind, label, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    token_hash(&token),
                    user,
                    kind.as_str(),
                    label,
                    now.to_rfc3339(),
                    ttl.map(|ttl| (now + ttl).to_rfc3339())
                ],
            )
        })?;
        Ok(token)
    }

    /// The user a token belongs to, when it is known and not expired.
    pub fn user_for_token(&self, token: &str) -> Result<Option<User>, StoreError> {
        let now = Utc::now().to_rfc3339();
        let name: Option<String> = self.with(|conn| {
            conn.query_row(
                "SELECT user FROM console_tokens WHERE hash = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
                params![token_hash(token), now],
                |r| r.get(0),
            )
            .optional()
        })?;
        match name {
            Some(name) => self.user(&name),
            None => Ok(None),
        }
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

    pub fn audit(
        &self,
        actor: &str,
        role: &str,
        action: &str,
        target: &str,
        before: Option<&serde_json::Value>,
        after: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        self.with(|conn| {
            conn.execute(
                "INSERT INTO console_audit (at, actor, role, action, target, before, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    Utc::now().to_rfc3339(),
                    actor,
                    role,
                    action,
                    target,
                    before.map(|v| v.to_string()),
                    after.map(|v| v.to_string())
                ],
            )
        })?;
        Ok(())
    }

    pub fn audit_entries(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at, actor, role, action, target, before, after FROM console_audit
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
        // A new password ends sessions but keeps machine tokens.
        store
            .put_user(&user("op", Role::Engineer), "another password")
            .unwrap();
        assert!(store.user_for_token(&session).unwrap().is_none());
        assert_eq!(
            store.user_for_token(&api).unwrap().unwrap().role,
            Role::Engineer
        );
        store.revoke_token(&api).unwrap();
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
}
