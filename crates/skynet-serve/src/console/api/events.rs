//! The live stream: one Server-Sent Events stream per browser tab.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::{ApiError, blocking};
use super::session::Caller;
use crate::console::auth::{Permission, User};
use crate::console::live::{Console, LiveMessage};
use crate::console::views::{UserView, json_text};

/// The stream's first event: who it is for.
#[derive(Serialize)]
struct Hello {
    user: UserView,
}

/// How often a live stream checks that its token still stands (logout, expiry, a removed
/// user or a changed role end the stream).
const RECHECK: Duration = Duration::from_secs(30);

/// One stream per browser tab: incidents (scoped), cell changes and source health.
pub(super) async fn events(State(console): State<Arc<Console>>, caller: Caller) -> Response {
    let rx = console.events.subscribe();
    metrics::gauge!("skynet_api_live_clients").increment(1.0);
    struct Live {
        console: Arc<Console>,
        rx: tokio::sync::broadcast::Receiver<LiveMessage>,
        user: User,
        token: String,
        hello: Option<String>,
        recheck: tokio::time::Instant,
    }
    impl Drop for Live {
        fn drop(&mut self) {
            metrics::gauge!("skynet_api_live_clients").decrement(1.0);
        }
    }
    let state = Live {
        console,
        rx,
        hello: Some(json_text(&Hello {
            user: UserView::from(&caller.user),
        })),
        user: caller.user,
        token: caller.token,
        recheck: tokio::time::Instant::now() + RECHECK,
    };
    let stream = futures_util::stream::unfold(state, |mut state| async move {
        if let Some(hello) = state.hello.take() {
            let event = Event::default().event("hello").data(hello);
            return Some((Ok::<_, std::convert::Infallible>(event), state));
        }
        loop {
            let received = tokio::select! {
                received = state.rx.recv() => received,
                () = tokio::time::sleep_until(state.recheck) => {
                    let (c, token) = (Arc::clone(&state.console), state.token.clone());
                    let now = blocking(move || c.store.user_for_token(&token).map_err(ApiError::internal)).await;
                    match now {
                        Ok(Some(user)) if user == state.user => {
                            state.recheck = tokio::time::Instant::now() + RECHECK;
                            continue;
                        }
                        // Logged out, expired, removed or changed: the tab logs in again.
                        _ => return None,
                    }
                }
            };
            match received {
                Ok(message) => {
                    if visible(&state.user, &message) {
                        let event = Event::default().event(message.kind).data(&*message.data);
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

fn visible(user: &User, message: &LiveMessage) -> bool {
    match message.kind {
        "incident" => {
            user.may(Permission::IncidentsRead)
                && user.scope().allows(
                    message.department.as_deref().unwrap_or_default(),
                    message.owner.as_deref().unwrap_or_default(),
                )
        }
        "source" => user.may(Permission::SourcesRead),
        _ => true,
    }
}
