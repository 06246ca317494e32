//! Who is calling: login, logout and `/me`, and the caller every other route takes (a
//! bearer token or the session cookie).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{ApiError, ApiResult, Reply, blocking, body, query};
use crate::console::auth::{Permission, User};
use crate::console::live::Console;
use crate::console::settings::{ApiConfig, canonical};
use crate::console::store::{NewAudit, TokenKind};
use crate::console::views::UserView;

const SESSION_COOKIE: &str = "skynet_session";
/// Set at each login: this browser has logged in as that user before, so guesses at the
/// account from elsewhere do not keep it out (see [`crate::console::auth::LoginLimiter`]).
const DEVICE_COOKIE: &str = "skynet_device";
/// How long a device stays known after its last login.
const DEVICE_COOKIE_MAX_AGE: u64 = 180 * 86_400;

/// The authenticated caller.
pub struct Caller {
    pub(super) user: User,
    pub(super) token: String,
    /// Where the request came from (see [`Peer`]), for the audit log.
    pub(super) client: Option<IpAddr>,
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
            .record(&self.entry(action, target, before.cloned(), after.cloned()))
            .map_err(ApiError::internal)
    }

    /// An audit entry of this caller's: the authenticated user as actor, with the client
    /// address.
    pub(super) fn entry(
        &self,
        action: &str,
        target: &str,
        before: Option<Value>,
        after: Option<Value>,
    ) -> NewAudit {
        NewAudit {
            actor: self.user.name.clone(),
            role: self.user.role.as_str().to_string(),
            action: action.to_string(),
            target: target.to_string(),
            before,
            after,
            client: self.client,
        }
    }
}

fn token_from(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_string());
    }
    cookie(headers, SESSION_COOKIE)
}

fn cookie(headers: &HeaderMap, wanted: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == wanted)
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
        let Peer(client) = Peer::from_request_parts(parts, console)
            .await
            .unwrap_or(Peer(None));
        // Any request is the user's activity, but for opening the live stream: a tab left
        // open all night must not keep its session alive.
        let touch = !parts.uri.path().ends_with("/events");
        let console = Arc::clone(console);
        let lookup = token.clone();
        let user = blocking(move || {
            console
                .store
                .authenticate(&lookup, Some(console.config.idle_timeout), touch)
                .map_err(ApiError::internal)
        })
        .await?
        .ok_or_else(unauthorized)?;
        Ok(Caller {
            user,
            token,
            client,
        })
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

/// The client's address: the TCP peer, or, when the peer is one of `[api] trusted_proxies`,
/// the nearest address in `X-Forwarded-For` that is not itself a trusted proxy (read from
/// the right: a client can write anything on the left of the header, but each trusted proxy
/// appends the address it saw). `None` only when the server does not know the peer (tests
/// calling the router directly).
pub(super) struct Peer(pub(super) Option<IpAddr>);

/// The client address for a request that came from `peer` with these headers.
pub(super) fn client_address(
    config: &ApiConfig,
    peer: Option<IpAddr>,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    let peer = canonical(peer?);
    if !config.is_trusted_proxy(peer) {
        return Some(peer);
    }
    // Every entry, the client's own included: what a client writes on the left must not
    // hide what the proxies appended on the right (a parse that stopped at the first bad
    // entry from the left would make `X-Forwarded-For: x` name the proxy as the client).
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    let mut client = peer;
    for hop in forwarded.into_iter().rev() {
        // An entry that is not an address was written by the client (a trusted proxy
        // appends addresses): the last trusted hop is the nearest known client.
        // Some proxies append the port too (`1.2.3.4:5678`, `[2001:db8::1]:5678`).
        let hop = hop.trim();
        let parsed = hop
            .parse::<IpAddr>()
            .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()));
        let Ok(hop) = parsed.map(canonical) else {
            break;
        };
        client = hop;
        if !config.is_trusted_proxy(hop) {
            break;
        }
    }
    Some(client)
}

impl FromRequestParts<Arc<Console>> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        console: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        Ok(Peer(client_address(console.config(), peer, &parts.headers)))
    }
}

pub(super) async fn login(
    State(console): State<Arc<Console>>,
    Peer(addr): Peer,
    headers: HeaderMap,
    request: Result<Json<LoginRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let headers = &headers;
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
    let device_cookie = cookie(headers, DEVICE_COOKIE);
    let device = device_cookie
        .as_deref()
        .and_then(|cookie| console.limiter.check_device(cookie, &name))
        .filter(|_| !name.is_empty());
    let attempt = match console.limiter.begin(addr, &name, device) {
        Ok(attempt) => attempt,
        Err(wait) => {
            metrics::counter!("skynet_api_logins_total", "outcome" => "rate_limited").increment(1);
            let mut error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many failed logins; wait before trying again",
            );
            error.retry_after = Some(wait.as_secs().max(1));
            return Err(error);
        }
    };
    if name.is_empty() {
        console.limiter.failed(attempt);
        metrics::counter!("skynet_api_logins_total", "outcome" => "failed").increment(1);
        return Err(invalid());
    }
    // A known device, and a client with no failures at an account with none, each have a
    // password check of their own, so a queue of guesses cannot hold them.
    let checks = if attempt.known_device {
        &console.limiter.device_checks
    } else if attempt.clean {
        &console.limiter.clean_checks
    } else {
        &console.password_checks
    };
    let permit = tokio::time::timeout(Duration::from_secs(10), checks.acquire())
        .await
        .ok()
        .and_then(Result::ok);
    let Some(_permit) = permit else {
        // The password was never checked: the attempt costs the client nothing (a user
        // waiting behind guesses must not be slowed as a guesser).
        console.limiter.cancelled(attempt);
        metrics::counter!("skynet_api_logins_total", "outcome" => "busy").increment(1);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many logins at once; try again",
        ));
    };
    let c = Arc::clone(&console);
    let checked = name.clone();
    let user = blocking(move || {
        c.store
            .check_password(&checked, &request.password)
            .map_err(ApiError::internal)
    })
    .await;
    let user = match user {
        Ok(user) => user,
        Err(e) => {
            console.limiter.cancelled(attempt);
            return Err(e);
        }
    };
    let Some(user) = user else {
        console.limiter.failed(attempt);
        metrics::counter!("skynet_api_logins_total", "outcome" => "failed").increment(1);
        // The name tried is kept, never the password.
        let c = Arc::clone(&console);
        let target = addr.map(|a| a.to_string()).unwrap_or_default();
        blocking(move || {
            c.store
                .record(&NewAudit {
                    actor: name,
                    action: "login.failed".into(),
                    target,
                    client: addr,
                    ..NewAudit::default()
                })
                .map_err(ApiError::internal)
        })
        .await?;
        return Err(invalid());
    };
    console.limiter.succeeded(attempt);
    metrics::counter!("skynet_api_logins_total", "outcome" => "ok").increment(1);
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
            .record(&NewAudit {
                actor: u.name.clone(),
                role: u.role.as_str().into(),
                action: "login".into(),
                target: u.name.clone(),
                client: addr,
                ..NewAudit::default()
            })
            .map_err(ApiError::internal)?;
        Ok(token)
    })
    .await?;
    let secure = if console.config.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        ttl.as_secs(),
    );
    let mut response = Reply(LoginReply {
        token,
        user: UserView::from(&user),
    })
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    // A fresh device cookie at each login (OWASP: the old one is not reused). Sent back to
    // the login route only.
    if let Some(device) = console.limiter.issue_device(&user.name)
        && let Ok(value) = HeaderValue::from_str(&format!(
            "{DEVICE_COOKIE}={device}; HttpOnly; SameSite=Strict; Path=/api/v1/login; Max-Age={DEVICE_COOKIE_MAX_AGE}{secure}"
        ))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

#[derive(Deserialize)]
pub(super) struct LogoutQuery {
    /// End every browser session of the caller, not just this one.
    all: Option<bool>,
}

/// Ends the caller's token (a session, or the API token that calls it); with `?all=true`,
/// every browser session of the caller too: the way out after a forgotten workstation.
/// Other API tokens stay: they are machines' (`skynet users revoke` ends them, and so does
/// a password reset).
pub(super) async fn logout(
    State(console): State<Arc<Console>>,
    caller: Caller,
    logout: Result<Query<LogoutQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(logout) = query(logout)?;
    let all = logout.all.unwrap_or(false);
    let c = Arc::clone(&console);
    // The logout and its audit entry: one transaction (the entry is written inside it).
    blocking(move || {
        c.store.audited(|| {
            c.store
                .revoke_token(&caller.token)
                .map_err(ApiError::internal)?;
            if all {
                let ended = c
                    .store
                    .revoke_sessions(&caller.user.name)
                    .map_err(ApiError::internal)?;
                let after = serde_json::json!({"all": true, "other_sessions": ended});
                caller.audit(&c, "logout", &caller.user.name, None, Some(&after))?;
            } else {
                caller.audit(&c, "logout", &caller.user.name, None, None)?;
            }
            Ok::<_, ApiError>(((), None))
        })
    })
    .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    // The clear carries the attributes of the cookie it ends, `Secure` included.
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(if console.config.secure_cookie {
            "skynet_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Secure"
        } else {
            "skynet_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"
        }),
    );
    Ok(response)
}

pub(super) async fn me(caller: Caller) -> Reply<UserView> {
    Reply(UserView::from(&caller.user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(forwarded).unwrap());
        headers
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let mut config = ApiConfig::local("127.0.0.1:8080".parse().unwrap());
        config.trusted_proxies = vec!["10.0.0.0/24".parse().unwrap()];
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let stranger: IpAddr = "192.0.2.9".parse().unwrap();
        // From the proxy: the nearest untrusted hop, whatever the client wrote on the left.
        let client = client_address(&config, Some(proxy), &headers("1.2.3.4, 198.51.100.7"));
        assert_eq!(client, Some("198.51.100.7".parse().unwrap()));
        // Two trusted proxies in a row are skipped.
        let client = client_address(&config, Some(proxy), &headers("198.51.100.7, 10.0.0.3"));
        assert_eq!(client, Some("198.51.100.7".parse().unwrap()));
        // From anyone else the header is ignored.
        let client = client_address(&config, Some(stranger), &headers("198.51.100.7"));
        assert_eq!(client, Some(stranger));
        // What the client wrote on the left, garbage included, does not hide the address
        // the proxy appended.
        let client = client_address(&config, Some(proxy), &headers("not-an-ip, 198.51.100.7"));
        assert_eq!(client, Some("198.51.100.7".parse().unwrap()));
        let client = client_address(&config, Some(proxy), &headers("x"));
        assert_eq!(client, Some(proxy));
        // An address with its port is the address.
        let client = client_address(&config, Some(proxy), &headers("198.51.100.7:50123"));
        assert_eq!(client, Some("198.51.100.7".parse().unwrap()));
        let client = client_address(&config, Some(proxy), &headers("[2001:db8::7]:443"));
        assert_eq!(client, Some("2001:db8::7".parse().unwrap()));
        // A proxy that sent no header is the client.
        assert_eq!(
            client_address(&config, Some(proxy), &HeaderMap::new()),
            Some(proxy)
        );
    }
}
