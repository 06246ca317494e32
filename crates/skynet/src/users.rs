//! `skynet users`: the console's users and machines' API tokens, in the state database (the
//! outbox file of the config). Each change is written to the audit log as done by
//! `cli:<os user>`, in the same transaction as the change.

use std::io::BufRead;

use anyhow::{Context, Result, bail};
use skynet_serve::console::store::NewPassword;
use skynet_serve::console::{ConsoleStore, Role, StoreError, TokenKind, User};

use crate::PipelineConfig;
// The audit entry of a change made here: `cli:<os user>`, the user from the process's uid.
use crate::audit_cli::cli_entry;

fn open(config: &PipelineConfig) -> Result<ConsoleStore> {
    ConsoleStore::open(&config.outbox)
        .with_context(|| format!("opening the state database {}", config.outbox.display()))
}

fn user_json(user: &User) -> serde_json::Value {
    serde_json::json!({"name": user.name, "role": user.role, "department": user.department, "owner": user.owner})
}

/// Reads the password: the first line of stdin, without its line ending. Prompts when
/// stdin is a terminal (the password still echoes: pipe it in from a secret store).
pub fn read_password(input: &mut dyn BufRead) -> Result<String> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("password: ");
    }
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        bail!(
            "no password on stdin: pipe it in, like `printf '%s' \"$PASSWORD\" | skynet users add ...`"
        );
    }
    Ok(password)
}

pub struct NewUser {
    pub name: String,
    pub role: Role,
    pub department: Option<String>,
    pub owner: Option<String>,
}

pub fn add(config: &PipelineConfig, user: NewUser, password: &str) -> Result<()> {
    let store = open(config)?;
    let user = User {
        name: user.name,
        role: user.role,
        department: user.department,
        owner: user.owner,
    };
    // Hashed before the transaction: argon2 would hold the write lock meanwhile.
    let password = NewPassword::hash(password)?;
    // The user and its audit entry: both, or neither.
    let before = store.audited(|| {
        let before = store.put_user_hashed(&user, &password)?;
        let entry = cli_entry(
            "user.put",
            &user.name,
            before.as_ref().map(user_json),
            Some(user_json(&user)),
        );
        Ok::<_, StoreError>((before, Some(entry)))
    })?;
    eprintln!(
        "{} user `{}` ({})",
        if before.is_some() { "updated" } else { "added" },
        user.name,
        user.role.as_str()
    );
    Ok(())
}

/// Prints a new API token for `name` on stdout, valid for `ttl_days`; it is shown this once
/// and stored hashed. A password or role change for the user ends it too.
pub fn token(
    config: &PipelineConfig,
    name: &str,
    label: Option<&str>,
    ttl_days: u32,
) -> Result<()> {
    let store = open(config)?;
    if store.user(name)?.is_none() {
        bail!("no user `{name}`: add it first with `skynet users add`");
    }
    let ttl = chrono::TimeDelta::days(i64::from(ttl_days));
    let token = store.audited(|| {
        let token = store.issue_token(name, TokenKind::Api, label, Some(ttl))?;
        let after = serde_json::json!({"label": label, "ttl_days": ttl_days});
        Ok::<_, StoreError>((
            token,
            Some(cli_entry("token.issue", name, None, Some(after))),
        ))
    })?;
    println!("{token}");
    eprintln!(
        "the token expires on {}",
        (chrono::Utc::now() + ttl).format("%Y-%m-%d %H:%M UTC")
    );
    Ok(())
}

pub fn list(config: &PipelineConfig) -> Result<()> {
    let store = open(config)?;
    // What the database holds is printed escaped: a row written by another tool must not
    // drive the terminal.
    use skynet_core::escape_control;
    for user in store.users()? {
        println!(
            "{}\t{}\t{}\t{}",
            escape_control(&user.name),
            user.role.as_str(),
            escape_control(user.department.as_deref().unwrap_or("-")),
            escape_control(user.owner.as_deref().unwrap_or("-"))
        );
    }
    Ok(())
}

pub fn remove(config: &PipelineConfig, name: &str) -> Result<bool> {
    let store = open(config)?;
    let before = store.audited(|| {
        let before = store.remove_user(name)?;
        let entry = before
            .as_ref()
            .map(|user| cli_entry("user.remove", name, Some(user_json(user)), None));
        Ok::<_, StoreError>((before, entry))
    })?;
    if before.is_some() {
        eprintln!(
            "removed user `{}` and its tokens",
            skynet_core::escape_control(name)
        );
    } else {
        eprintln!("no user `{}`", skynet_core::escape_control(name));
    }
    Ok(before.is_some())
}

/// Revokes `name`'s machine tokens (with `label`, when given). Returns how many.
pub fn revoke(config: &PipelineConfig, name: &str, label: Option<&str>) -> Result<usize> {
    let store = open(config)?;
    let revoked = store.audited(|| {
        let revoked = store.revoke_api_tokens(name, label)?;
        let entry = (revoked > 0).then(|| {
            let before = serde_json::json!({"label": label, "tokens": revoked});
            cli_entry("token.revoke", name, Some(before), None)
        });
        Ok::<_, StoreError>((revoked, entry))
    })?;
    eprintln!(
        "revoked {revoked} API token(s) of `{}`",
        skynet_core::escape_control(name)
    );
    Ok(revoked)
}
