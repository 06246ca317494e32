//! `[api] hosts`: the `Host` values the console answers to. A DNS-rebinding page (a name of
//! the attacker's, pointed at this address once the browser has loaded it) is same-origin
//! with itself, so the Origin check lets its changes through; its requests still carry the
//! attacker's name in `Host`, and are refused here with 421 Misdirected Request.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::settings::ApiConfig;

/// The accepted `Host` values, lower-case.
#[derive(Debug, Clone)]
pub struct AllowedHosts(HashSet<String>);

impl AllowedHosts {
    /// `[api] hosts` for a listener bound at `bound_port`. When the configured port was 0
    /// (tests, benches), the entries at that port are accepted at the bound port too.
    pub fn new(config: &ApiConfig, bound_port: u16) -> Self {
        let configured = format!(":{}", config.listen.port());
        let mut hosts: HashSet<String> = config.hosts.iter().cloned().collect();
        if bound_port != config.listen.port() {
            for host in &config.hosts {
                if let Some(name) = host.strip_suffix(&configured) {
                    hosts.insert(format!("{name}:{bound_port}"));
                }
            }
        }
        Self(hosts)
    }

    pub fn allows(&self, host: &str) -> bool {
        self.0.contains(&host.trim().to_ascii_lowercase())
    }
}

/// Answers 421 to a request whose `Host` (or, without one, the URI's authority) is not
/// allowed; a request naming neither is refused too (HTTP/1.1 requires `Host`).
pub async fn check_host(
    State(hosts): State<Arc<AllowedHosts>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_string()));
    if host.as_deref().is_some_and(|host| hosts.allows(host)) {
        return next.run(request).await;
    }
    metrics::counter!("skynet_api_refused_total", "reason" => "host").increment(1);
    metrics::counter!("skynet_api_errors_total", "code" => "misdirected").increment(1);
    (
        StatusCode::MISDIRECTED_REQUEST,
        axum::Json(serde_json::json!({
            "error": "misdirected",
            "message": "this console does not answer to that host name; use one of [api] hosts",
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_host_passes_in_any_case_and_an_unlisted_one_does_not() {
        let config = ApiConfig::local("127.0.0.1:0".parse().unwrap());
        let hosts = AllowedHosts::new(&config, 8443);
        assert!(hosts.allows("LocalHost:8443"));
        assert!(hosts.allows("127.0.0.1:8443"));
        assert!(hosts.allows("localhost"));
        assert!(!hosts.allows("evil.example:8443"));
        assert!(!hosts.allows("localhost:9999"));
    }
}
