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

/// A store error inside an audited change: a refused value is the caller's mistake (400),
/// anything else the server's (500, the cause in the log).
impl From<crate::console::store::StoreError> for ApiError {
    fn from(error: crate::console::store::StoreError) -> Self {
        match error {
            crate::console::store::StoreError::Invalid(message) => Self::bad_request(message),
            e => Self::internal(e),
        }
    }
}

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
    body.map(|Json(v)| v).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            // The route's body limit (see `router`).
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the request body is larger than this route takes",
            )
        } else {
            ApiError::bad_request(format!("the request body: {}", e.body_text()))
        }
    })
}

/// Query parameters, with a JSON error when they do not parse.
pub(super) fn query<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<Query<T>> {
    query.map_err(|e| ApiError::bad_request(format!("the query string: {}", e.body_text())))
}

/// The last word on errors, around every route: an error answered as something other than
/// JSON (axum's own rejections: a path segment that is not UTF-8 once decoded, a body over
/// the route's limit, a content type the JSON extractor refuses) is rewritten into the API's
/// error shape, its status and headers kept, so a client parses every error the same way.
/// A 422 (a JSON body of the wrong shape) becomes the 400 that [`body`] gives it. Found by
/// the OpenAPI fuzzer (tests/security/openapi_fuzz.rs).
pub(super) async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // Rejection texts are short; a longer body is cut rather than read whole.
    let detail = axum::body::to_bytes(body, 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (status, code) = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        StatusCode::PAYLOAD_TOO_LARGE => (status, "too_large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (status, "unsupported_media_type"),
        StatusCode::NOT_FOUND => (status, "not_found"),
        StatusCode::METHOD_NOT_ALLOWED => (status, "method_not_allowed"),
        s if s.is_server_error() => (s, "internal"),
        s => (s, "error"),
    };
    let message = if detail.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        detail
    };
    let mut replaced = ApiError::new(status, code, message).into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in parts.headers.drain().filter_map(|(n, v)| n.map(|n| (n, v))) {
        replaced.headers_mut().entry(name).or_insert(value);
    }
    replaced
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

    /// axum's own rejections answer in plain text; they leave as the API's JSON error, their
    /// status (a 422 as 400) and other headers kept, and JSON errors pass untouched.
    #[tokio::test]
    async fn errors_that_are_not_json_are_rewritten_as_json() {
        async fn body_of(response: Response) -> serde_json::Value {
            let bytes = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .expect("the body");
            serde_json::from_slice(&bytes).expect("JSON")
        }
        let plain = (
            StatusCode::UNPROCESSABLE_ENTITY,
            [(header::ALLOW, "GET")],
            "Failed to deserialize the JSON body: missing field `text`",
        )
            .into_response();
        let response = json_errors(plain).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()[header::ALLOW], "GET");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = body_of(response).await;
        assert_eq!(body["error"], "bad_request");
        assert!(body["message"].as_str().unwrap().contains("missing field"));

        let too_large = json_errors((StatusCode::PAYLOAD_TOO_LARGE, "").into_response()).await;
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body_of(too_large).await["error"], "too_large");

        let api = ApiError::new(StatusCode::FORBIDDEN, "forbidden", "no").into_response();
        let kept = json_errors(api).await;
        assert_eq!(body_of(kept).await["error"], "forbidden");
        let fine = json_errors((StatusCode::OK, "a jpeg").into_response()).await;
        assert_eq!(fine.status(), StatusCode::OK);
    }

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
