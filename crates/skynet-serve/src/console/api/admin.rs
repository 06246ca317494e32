//! Administration: users and the audit log.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult, Reply, blocking, body, query};
use super::incidents::time;
use super::session::Caller;
use crate::console::auth::{Permission, Role, User};
use crate::console::live::Console;
use crate::console::store::{AuditEntry, AuditQuery, NewPassword, StoreError};
use crate::console::views::UserView;

#[derive(Serialize)]
pub(super) struct AuditEntries {
    entries: Vec<AuditEntry>,
}

#[derive(Serialize)]
pub(super) struct Users {
    users: Vec<UserView>,
}

/// A user added (201) or replaced (200).
#[derive(Serialize)]
pub(super) struct UserReply {
    user: UserView,
}

#[derive(Deserialize)]
pub(super) struct AuditFilters {
    actor: Option<String>,
    action: Option<String>,
    target: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn audit(
    State(console): State<Arc<Console>>,
    caller: Caller,
    filters: Result<Query<AuditFilters>, QueryRejection>,
) -> ApiResult<Reply<AuditEntries>> {
    caller.require(Permission::AuditRead)?;
    let Query(filters) = query(filters)?;
    let query = AuditQuery {
        actor: filters.actor,
        action: filters.action,
        target: filters.target,
        since: time("since", &filters.since)?,
        limit: filters.limit.unwrap_or(200),
    };
    let c = Arc::clone(&console);
    let entries =
        blocking(move || c.store.audit_entries(&query).map_err(ApiError::internal)).await?;
    Ok(Reply(AuditEntries { entries }))
}

pub(super) async fn list_users(
    State(console): State<Arc<Console>>,
    caller: Caller,
) -> ApiResult<Reply<Users>> {
    caller.require(Permission::UsersManage)?;
    let c = Arc::clone(&console);
    let users = blocking(move || c.store.users().map_err(ApiError::internal)).await?;
    Ok(Reply(Users {
        users: users.iter().map(UserView::from).collect(),
    }))
}

#[derive(Deserialize)]
pub(super) struct NewUser {
    name: String,
    role: String,
    password: String,
    department: Option<String>,
    owner: Option<String>,
}

pub(super) async fn add_user(
    State(console): State<Arc<Console>>,
    caller: Caller,
    request: Result<Json<NewUser>, JsonRejection>,
) -> ApiResult<(StatusCode, Reply<UserReply>)> {
    caller.require(Permission::UsersManage)?;
    let request = body(request)?;
    let role = Role::parse(&request.role).ok_or_else(|| {
        ApiError::bad_request(format!(
            "`role` `{}` is not one of operator, inspector, engineer, admin",
            request.role
        ))
    })?;
    let user = User {
        name: request.name,
        role,
        department: request.department,
        owner: request.owner,
    };
    let c = Arc::clone(&console);
    let added = user.clone();
    let replaced = blocking(move || {
        let refused = |e| match e {
            StoreError::Invalid(message) => ApiError::bad_request(message),
            e => ApiError::internal(e),
        };
        // Hashed before the transaction: argon2 would hold the write lock meanwhile.
        let password = NewPassword::hash(&request.password).map_err(refused)?;
        // The user and its audit entry: both, or neither.
        c.store.audited(|| {
            let before = c
                .store
                .put_user_hashed(&added, &password)
                .map_err(refused)?;
            let as_json = |user: &User| serde_json::to_value(UserView::from(user));
            let before_json = before
                .as_ref()
                .map(as_json)
                .transpose()
                .map_err(ApiError::internal)?;
            let after_json = as_json(&added).map_err(ApiError::internal)?;
            let entry = caller.entry("user.put", &added.name, before_json, Some(after_json));
            Ok::<_, ApiError>((before.is_some(), Some(entry)))
        })
    })
    .await?;
    let status = if replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Reply(UserReply {
            user: UserView::from(&user),
        }),
    ))
}
