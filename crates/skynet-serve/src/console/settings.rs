//! `[api]`: where the console and its API are served.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use skynet_core::{ConfigContext, FieldError};

/// `[api]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// `host:port`; `${VAR}` expanded (`configs/city.toml` reads `SKYNET_API_LISTEN`).
    pub listen: String,
    /// How long a browser session lasts after login, in seconds (default 12 h: a shift).
    #[serde(default)]
    pub session_ttl_s: Option<u64>,
    /// Mark the session cookie `Secure` (sent over HTTPS only): set it when a TLS proxy
    /// fronts the console.
    #[serde(default)]
    pub secure_cookie: bool,
}

/// `[api]`, checked.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub session_ttl: Duration,
    pub secure_cookie: bool,
}

impl ApiSettings {
    pub fn validate(&self, cx: &ConfigContext) -> Result<ApiConfig, FieldError> {
        let listen = cx.expand("listen", &self.listen)?;
        let listen = listen.parse().map_err(|e| {
            FieldError::new(
                "listen",
                format!("`listen` `{listen}` must be host:port, like 127.0.0.1:8080: {e}"),
            )
        })?;
        let ttl = self.session_ttl_s.unwrap_or(12 * 3600);
        if !(60..=30 * 86_400).contains(&ttl) {
            return Err(FieldError::new(
                "session_ttl_s",
                format!("`session_ttl_s` = {ttl} must be between 60 and 2592000 (30 days)"),
            ));
        }
        Ok(ApiConfig {
            listen,
            session_ttl: Duration::from_secs(ttl),
            secure_cookie: self.secure_cookie,
        })
    }
}
