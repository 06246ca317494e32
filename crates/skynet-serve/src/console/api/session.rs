//! Who is calling: login, logout and `/me`, and the caller every other route takes (a
//! bearer token or the session cookie).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ApiResult, Reply, blocking, body};
use crate::console::auth::{Permission, User};
use crate::console::live::Console;
use crate::console::store::TokenKind;
use crate::console::views::UserView;

const SESSION_COOKIE: &str = "skynet_session";

/// The authenticated caller.
pub struct Caller {
    pub(super) user: User,
    pub(super) token: String,
}

impl Caller {
    pub(super) fn require(&self, permission: Permission) -> ApiResult<()> {
        if self.user.may(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden(permission))
        }
    }

    pub(super) fn audit(
        &self,
        console: &Console,
        action: &str,
        target: &str,
        before: Option<&Value>,
        after: Option<&Value>,
    ) -> ApiResult<()> {
        console
            .store
            .audit(
                &self.user.name,
                self.user.role.as_str(),
                action,
                target,
                before,
                after,
            )
            .map_err(ApiError::internal)
    }
}

fn token_from(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<Arc<Console>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "log in first: POST /api/v1/login, then send the token as `Authorization: Bearer …` or the session cookie",
            )
        };
        let token = token_from(&parts.headers).ok_or_else(unauthorized)?;
        let console = Arc::clone(console);
        let lookup = token.clone();
        let user = blocking(move || {
            console
                .store
                .user_for_token(&lookup)
                .map_err(ApiError::internal)
        })
        .await?
        .ok_or_else(unauthorized)?;
        Ok(Caller { user, token })
    }
}

#[derive(Deserialize)]
pub(super) struct LoginRequest {
    username: String,
    password: String,
}

/// What a login answers.
#[derive(Serialize)]
pub(super) struct LoginReply {
    token: String,
    user: UserView,
}

/// The peer's address, when the server knows it (tests calling the router directly don't).
pub(super) struct Peer(Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}

pub(super) async fn login(
    State(console): State<Arc<Console>>,
    Peer(addr): Peer,
    request: Result<Json<LoginRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let request = body(request)?;
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "unknown user or wrong password",
        )
    };
    // A name no user can have is counted against the address only, and never stored.
    let name = if crate::console::store::valid_name(&request.username) {
        request.username.clone()
    } else {
        String::new()
    };
    if let Err(wait) = console.limiter.begin(&name, addr) {
        metrics::counter!("skynet_api_logins_total", "result" => "rate_limited").increment(1);
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed logins; wait before trying again",
        );
        error.retry_after = Some(wait.as_secs().max(1));
        return Err(error);
    }
    if name.is_empty() {
        metrics::counter!("skynet_api_logins_total", "result" => "failed").increment(1);
        return Err(invalid());
    }
    let _permit = tokio::time::timeout(Duration::from_secs(10), console.password_checks.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many logins at once; try again",
            )
        })?;
    let c = Arc::clone(&console);
    let checked = name.clone();
    let user = blocking(move || {
        c.store
            .check_password(&checked, &request.password)
            .map_err(ApiError::internal)
    })
    .await?;
    let Some(user) = user else {
        metrics::counter!("skynet_api_logins_total", "result" => "failed").increment(1);
        // The name tried is kept, never the password.
        let c = Arc::clone(&console);
        let target = addr.map(|a| a.to_string()).unwrap_or_default();
        blocking(move || {
            c.store
                .audit(&name, "", "login.failed", &target, None, None)
                .map_err(ApiError::internal)
        })
        .await?;
        return Err(invalid());
    };
    console.limiter.succeeded(&user.name, addr);
    metrics::counter!("skynet_api_logins_total", "result" => "ok").increment(1);
    let ttl = console.config.session_ttl;
    let c = Arc::clone(&console);
    let u = user.clone();
    let token = blocking(move || {
        let token = c
            .store
            .issue_token(
                &u.name,
                TokenKind::Session,
                None,
                chrono::Duration::from_std(ttl).ok(),
            )
            .map_err(ApiError::internal)?;
        c.store
            .audit(&u.name, u.role.as_str(), "login", &u.name, None, None)
            .map_err(ApiError::internal)?;
        Ok(token)
    })
    .await?;
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        ttl.as_secs(),
        if console.config.secure_cookie {
            "; Secure"
        } else {
            ""
        }
    );
    let mut response = Reply(LoginReply {
        token,
        user: UserView::from(&user),
    })
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

pub(super) async fn logout(
    State(console): State<Arc<Console>>,
    caller: Caller,
) -> ApiResult<Response> {
    let c = Arc::clone(&console);
    blocking(move || {
        c.store
            .revoke_token(&caller.token)
            .map_err(ApiError::internal)?;
        caller.audit(&c, "logout", &caller.user.name, None, None)
    })
    .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("skynet_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    Ok(response)
}

pub(super) async fn me(caller: Caller) -> Reply<UserView> {
    Reply(UserView::from(&caller.user))
}
