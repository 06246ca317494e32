//! The live stream: one Server-Sent Events stream per browser tab.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::{ApiError, blocking};
use super::session::Caller;
use crate::console::auth::{Permission, User};
use crate::console::live::{Console, LiveMessage};
use crate::console::streams::{StreamCap, StreamSlot};
use crate::console::views::{UserView, json_text};

/// The stream's first event: who it is for.
#[derive(Serialize)]
struct Hello {
    user: UserView,
}

/// How often a live stream checks that its token still stands (logout, expiry, an idle
/// timeout, a removed user or a changed role end the stream).
const RECHECK: Duration = Duration::from_secs(30);

/// `Retry-After` on a stream refused by a cap: a closing tab frees its slot at once, so a
/// retry soon may well succeed.
const STREAM_RETRY_AFTER_S: u64 = 10;

/// One stream per browser tab: incidents (scoped), cell changes and source health.
pub(super) async fn events(State(console): State<Arc<Console>>, caller: Caller) -> Response {
    // A slot first: past a cap, nothing is subscribed and no token check is scheduled.
    let slot = match console.streams.acquire(&caller.user.name) {
        Ok(slot) => slot,
        Err(cap) => {
            metrics::counter!("skynet_api_refused_total", "reason" => cap.reason()).increment(1);
            let message = match cap {
                StreamCap::PerUser => format!(
                    "you have {} live streams open (the most one user may): close a console tab",
                    console.config.max_streams_per_user
                ),
                StreamCap::Total => {
                    "the console holds as many live streams as it may; try again shortly"
                        .to_string()
                }
            };
            let mut refused =
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_streams", message);
            refused.retry_after = Some(STREAM_RETRY_AFTER_S);
            return refused.into_response();
        }
    };
    let rx = console.events.subscribe();
    metrics::gauge!("skynet_api_live_clients").increment(1.0);
    struct Live {
        /// Freed when the stream drops (the tab closed or the token ended).
        _slot: StreamSlot,
        console: Arc<Console>,
        rx: tokio::sync::broadcast::Receiver<LiveMessage>,
        user: User,
        token: String,
        hello: Option<String>,
        /// One timer for the stream's life, reset at each check: a `sleep_until` made anew
        /// in the loop would register and drop a timer for every message sent (200,000 a
        /// second with 2,000 streams at 100 incidents/s).
        recheck: std::pin::Pin<Box<tokio::time::Sleep>>,
    }
    impl Drop for Live {
        fn drop(&mut self) {
            metrics::gauge!("skynet_api_live_clients").decrement(1.0);
        }
    }
    let state = Live {
        _slot: slot,
        console,
        rx,
        hello: Some(json_text(&Hello {
            user: UserView::from(&caller.user),
        })),
        user: caller.user,
        token: caller.token,
        recheck: Box::pin(tokio::time::sleep(RECHECK)),
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        if let Some(hello) = state.hello.take() {
            let event = Event::default().event("hello").data(hello);
            return Some((Ok::<_, std::convert::Infallible>(event), state));
        }
        loop {
            let received = tokio::select! {
                received = state.rx.recv() => received,
                () = state.recheck.as_mut() => {
                    let (c, token) = (Arc::clone(&state.console), state.token.clone());
                    // The stream is not the user's activity: an idle session ends it here.
                    let idle = c.config.idle_timeout;
                    let now = blocking(move || c.store.authenticate(&token, Some(idle), false).map_err(ApiError::internal)).await;
                    match now {
                        Ok(Some(user)) if user == state.user => {
                            let next = tokio::time::Instant::now() + RECHECK;
                            state.recheck.as_mut().reset(next);
                            continue;
                        }
                        // Logged out, expired, removed or changed: the tab logs in again.
                        _ => return None,
                    }
                }
            };
            match received {
                Ok(message) => {
                    if let Some(data) = shown(&state.user, &message) {
                        let event = Event::default().event(message.kind).data(data);
                        return Some((Ok(event), state));
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    metrics::counter!("skynet_api_live_lagged_total").increment(missed);
                    let event = Event::default().event("resync").data("{}");
                    return Some((Ok(event), state));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("ping"),
        )
        .into_response()
}

/// What `user`'s stream sends of `message`: nothing when it is not theirs to see, a cell
/// change narrowed to their scope (see [`crate::console::GridScope::narrowed`]), else the shared text.
fn shown<'m>(user: &User, message: &'m LiveMessage) -> Option<Cow<'m, str>> {
    let shared = || Some(Cow::Borrowed(&*message.data));
    match message.kind {
        "incident" => {
            let visible = user.may(Permission::IncidentsRead)
                && user.scope().allows(
                    message.department.as_deref().unwrap_or_default(),
                    message.owner.as_deref().unwrap_or_default(),
                );
            if visible { shared() } else { None }
        }
        "source" => user
            .may(Permission::SourcesRead)
            .then(|| Cow::Borrowed(&*message.data)),
        // As the camera's live video: `sources.read`, or an inspector whose owner is the
        // camera's.
        "detections" => {
            let visible = user.may(Permission::SourcesRead)
                || (user.may(Permission::IncidentsRead)
                    && message.owner.is_some()
                    && user.scope().owner == message.owner);
            if visible { shared() } else { None }
        }
        // A patrol round was recorded: for those who see patrol cameras (`sources.read`, or
        // an inspector with an owner); the page then asks for what is theirs.
        "patrol" => {
            let visible = user.may(Permission::SourcesRead)
                || (user.may(Permission::IncidentsRead) && user.scope().owner.is_some());
            if visible { shared() } else { None }
        }
        "grid" => {
            let scope = user.scope();
            match &message.grid {
                Some(grid) if scope.department.is_some() || scope.owner.is_some() => {
                    // As the shared text is written (the change's own field order).
                    let narrowed = serde_json::to_string(&grid.narrowed(&scope));
                    Some(Cow::Owned(narrowed.unwrap_or_else(|_| "{}".into())))
                }
                Some(_) => shared(),
                // A cell change without its incidents' scopes is sent whole only to those
                // who see everything.
                None if scope.department.is_none() && scope.owner.is_none() => shared(),
                None => None,
            }
        }
        _ => shared(),
    }
}
