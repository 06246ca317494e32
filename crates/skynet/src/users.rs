//! `skynet users`: the console's users and machines' API tokens, in the state database (the
//! outbox file of the config). Each change is written to the audit log as done by `cli`.

use std::io::BufRead;

use anyhow::{Context, Result, bail};
use skynet_serve::console::{ConsoleStore, Role, TokenKind, User};

use crate::PipelineConfig;

fn open(config: &PipelineConfig) -> Result<ConsoleStore> {
    ConsoleStore::open(&config.outbox)
        .with_context(|| format!("opening the state database {}", config.outbox.display()))
}

/// The actor the audit log names for changes made here: the operating-system user.
fn actor() -> String {
    let name = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{name}")
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
    let before = store.put_user(&user, password)?;
    store.audit(
        &actor(),
        "cli",
        "user.put",
        &user.name,
        before.as_ref().map(user_json).as_ref(),
        Some(&user_json(&user)),
    )?;
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
    let token = store.issue_token(name, TokenKind::Api, label, Some(ttl))?;
    store.audit(
        &actor(),
        "cli",
        "token.issue",
        name,
        None,
        Some(&serde_json::json!({"label": label, "ttl_days": ttl_days})),
    )?;
    println!("{token}");
    eprintln!(
        "the token expires on {}",
        (chrono::Utc::now() + ttl).format("%Y-%m-%d %H:%M UTC")
    );
    Ok(())
}

pub fn list(config: &PipelineConfig) -> Result<()> {
    let store = open(config)?;
    for user in store.users()? {
        println!(
            "{}\t{}\t{}\t{}",
            user.name,
            user.role.as_str(),
            user.department.as_deref().unwrap_or("-"),
            user.owner.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

pub fn remove(config: &PipelineConfig, name: &str) -> Result<bool> {
    let store = open(config)?;
    let before = store.remove_user(name)?;
    if let Some(user) = &before {
        store.audit(
            &actor(),
            "cli",
            "user.remove",
            name,
            Some(&user_json(user)),
            None,
        )?;
        eprintln!("removed user `{name}` and its tokens");
    } else {
        eprintln!("no user `{name}`");
    }
    Ok(before.is_some())
}

/// Revokes `name`'s machine tokens (with `label`, when given). Returns how many.
pub fn revoke(config: &PipelineConfig, name: &str, label: Option<&str>) -> Result<usize> {
    let store = open(config)?;
    let revoked = store.revoke_api_tokens(name, label)?;
    if revoked > 0 {
        store.audit(
            &actor(),
            "cli",
            "token.revoke",
            name,
            Some(&serde_json::json!({"label": label, "tokens": revoked})),
            None,
        )?;
    }
    eprintln!("revoked {revoked} API token(s) of `{name}`");
    Ok(revoked)
}
