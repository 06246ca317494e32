//! The plumbing every route shares: JSON errors, typed JSON bodies, blocking work, and the
//! request body and query parsing that answers in JSON when it fails.

use axum::Json;
use axum::extract::Query;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::console::auth::Permission;

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    pub(super) retry_after: Option<u64>,
}

/// An error's body (`Error` in openapi.json).
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: &'a str,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub(super) fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    pub(super) fn forbidden(permission: Permission) -> Self {
        let name = serde_json::to_value(permission)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("your role does not have `{name}`"),
        )
    }

    pub(super) fn internal(error: impl std::fmt::Display) -> Self {
        // The cause goes to the log; the caller learns only that it failed.
        tracing::error!(error = %error, "console request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed; the server log has the cause",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("skynet_api_errors_total", "code" => self.code).increment(1);
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
        };
        let mut response = (self.status, Reply(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

/// A typed JSON body. It is written through [`serde_json::Value`], whose maps keep their
/// keys sorted, so the bytes are those the API has always sent whatever the field order.
pub(super) struct Reply<T>(pub T);

impl<T: Serialize> IntoResponse for Reply<T> {
    fn into_response(self) -> Response {
        match serde_json::to_value(&self.0) {
            Ok(value) => Json(value).into_response(),
            Err(e) => ApiError::internal(e).into_response(),
        }
    }
}

/// Runs blocking database work off the I/O threads.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

/// A JSON body, with a JSON error when it is not one.
pub(super) fn body<T>(body: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    body.map(|Json(v)| v)
        .map_err(|e| ApiError::bad_request(format!("the request body: {}", e.body_text())))
}

/// Query parameters, with a JSON error when they do not parse.
pub(super) fn query<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<Query<T>> {
    query.map_err(|e| ApiError::bad_request(format!("the query string: {}", e.body_text())))
}

/// A JPEG that is not to be cached (evidence files, camera frames).
pub(super) fn jpeg(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The API's bytes must not depend on the order of a body's fields: the bodies were
    /// `json!` maps, whose keys serde_json keeps sorted, and clients may compare them.
    #[tokio::test]
    async fn typed_bodies_are_written_with_their_keys_sorted() {
        #[derive(Serialize)]
        struct Inner {
            zeta: u8,
            alpha: Option<u8>,
        }
        #[derive(Serialize)]
        struct Body {
            b: Inner,
            #[serde(flatten)]
            a: Inner,
        }
        let inner = || Inner {
            zeta: 1,
            alpha: None,
        };
        let response = Reply(Body {
            b: inner(),
            a: inner(),
        })
        .into_response();
        let bytes = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .expect("the body");
        assert_eq!(
            &bytes[..],
            br#"{"alpha":null,"b":{"alpha":null,"zeta":1},"zeta":1}"#
        );
    }
}
