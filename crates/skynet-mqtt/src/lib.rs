//! The MQTT connection settings skynet shares between the sensor feed (`[mqtt]`) and the
//! MQTT incident sink (`[[sinks]] kind = "mqtt"`): one parser for the broker URL and its
//! credentials, one check of client ids, certificates and keep-alive, and one place that
//! turns them into rumqttc options with rustls (ring) for `mqtts://`.
//!
//! The password never reaches a log, an error or a metric: URLs are shown redacted and
//! [`skynet_core::Credentials`] hides it from `Debug`.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{MqttOptions, Transport};
use skynet_core::config::{ConfigContext, FieldError, check_range};
use skynet_core::redact_uri;

/// A broker's address from an `mqtt://` or `mqtts://` URL, with the credentials taken out.
#[derive(Debug, Clone)]
pub struct BrokerUrl {
    /// The URL without credentials, for logs and errors.
    pub display: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// User name and password from the URL, when it has a user name.
    pub credentials: Option<skynet_core::Credentials>,
}

impl BrokerUrl {
    /// Parses `mqtt://[user[:password]@]host[:port]` (`tcp://`) or `mqtts://` (`ssl://`);
    /// the default port is 1883, or 8883 with TLS. The error never shows the password.
    pub fn parse(url: &str) -> Result<Self, String> {
        let display = redact_uri(url);
        let parsed = url::Url::parse(url).map_err(|e| {
            format!("must be mqtt://host:port or mqtts://host:port, got `{display}`: {e}")
        })?;
        let tls = match parsed.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("scheme `{other}` is not mqtt:// or mqtts://")),
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("has no host: `{display}`"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
        let (_, credentials) = skynet_core::split_credentials(url);
        Ok(Self {
            display,
            host,
            port,
            tls,
            credentials: credentials.filter(|c| !c.user.is_empty()),
        })
    }
}

/// Checks an MQTT topic (`filter = false`: no wildcards) or topic filter (`+` for a whole
/// level, `#` as the last one); the message names `field`.
pub fn check_topic(field: &str, topic: &str, filter: bool) -> Result<(), FieldError> {
    let bad = topic.is_empty()
        || topic.len() > 1024
        || topic.contains('\0')
        || (!filter && (topic.contains('+') || topic.contains('#')))
        || (filter
            && topic.split('/').enumerate().any(|(i, level)| {
                (level.contains('+') && level != "+")
                    || (level.contains('#') && (level != "#" || i + 1 != topic.split('/').count()))
            }));
    if bad {
        let what = if filter {
            "an MQTT topic filter (`+` for one level, `#` last)"
        } else {
            "an MQTT topic without wildcards"
        };
        return Err(FieldError::new(
            field,
            format!("`{field}` must be {what}, got `{topic}`"),
        ));
    }
    Ok(())
}

/// The connection keys of a config table as written (borrowed from it), before checking.
#[derive(Clone, Copy)]
pub struct MqttConnectionKeys<'a> {
    /// `mqtt://host:port` or `mqtts://host:port`; `${VAR}` and `${VAR:-default}` expand.
    pub url: &'a str,
    pub client_id: Option<&'a str>,
    /// Override the URL's user name and password when given (and not empty once expanded).
    pub username: Option<&'a str>,
    pub password: Option<&'a str>,
    /// PEM file of the CA that signed the broker's certificate (`mqtts://`); default: the
    /// system's roots.
    pub ca_file: Option<&'a str>,
    /// PEM files of the client certificate and its key, for brokers that ask for one.
    pub cert_file: Option<&'a str>,
    pub key_file: Option<&'a str>,
    pub keep_alive_s: f64,
}

/// A checked MQTT connection: where, as whom, with which certificates.
#[derive(Debug, Clone)]
pub struct MqttConnection {
    /// The URL without credentials, for logs.
    pub display_url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub client_id: String,
    /// User name and password (shown as `***` by `Debug`).
    pub credentials: Option<skynet_core::Credentials>,
    pub ca_file: Option<PathBuf>,
    pub client_auth: Option<(PathBuf, PathBuf)>,
    pub keep_alive: Duration,
}

/// Why the MQTT client could not be set up. Never holds the password.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("MQTT {url}: cannot read {what} {path}: {source}")]
    Certificate {
        url: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Client ids the sensor feed and the sink accept: what every broker takes in practice.
pub fn check_client_id(field: &str, client_id: &str) -> Result<(), FieldError> {
    if client_id.is_empty() || client_id.len() > 128 || client_id.contains(['/', '+', '#']) {
        return Err(FieldError::new(
            field,
            format!(
                "`{field}` must be 1 to 128 characters without `/`, `+` or `#`, got `{client_id}`"
            ),
        ));
    }
    Ok(())
}

impl MqttConnectionKeys<'_> {
    /// Checks the keys (no I/O: certificate files are read by [`MqttConnection::options`]);
    /// `default_client_id` applies when `client_id` is not given. Errors name the key and
    /// never hold the password.
    pub fn validate(
        &self,
        cx: &ConfigContext,
        default_client_id: &str,
    ) -> Result<MqttConnection, FieldError> {
        let url = cx.expand("url", self.url)?;
        let broker =
            BrokerUrl::parse(&url).map_err(|m| FieldError::new("url", format!("`url` {m}")))?;
        let BrokerUrl {
            display: display_url,
            host,
            port,
            tls,
            credentials: from_url,
        } = broker;
        let mut username = from_url.as_ref().map(|c| c.user.clone());
        let mut password = from_url.map(|c| c.password).filter(|p| !p.is_empty());
        if let Some(u) = self.username {
            username = Some(cx.expand("username", u)?)
                .filter(|u| !u.is_empty())
                .or(username);
        }
        if let Some(p) = self.password {
            // The message of a failed expansion names the variable, never a value.
            password = Some(skynet_core::Secret::from(cx.expand("password", p)?))
                .filter(|p| !p.is_empty())
                .or(password);
        }
        let credentials = match (username, password) {
            (Some(user), password) => Some(skynet_core::Credentials {
                user,
                password: password.unwrap_or_default(),
            }),
            (None, Some(_)) => {
                return Err(FieldError::new(
                    "password",
                    "a `password` needs a `username`",
                ));
            }
            (None, None) => None,
        };
        let client_id = match self.client_id {
            Some(id) => cx.expand("client_id", id)?,
            None => default_client_id.to_string(),
        };
        check_client_id("client_id", &client_id)?;
        let keep_alive = check_range("keep_alive_s", self.keep_alive_s, 5.0, 3600.0)?;
        let path = |field: &str, v: Option<&str>| -> Result<Option<PathBuf>, FieldError> {
            v.map(|p| cx.resolve_path(field, p)).transpose()
        };
        let ca_file = path("ca_file", self.ca_file)?;
        let client_auth = match (
            path("cert_file", self.cert_file)?,
            path("key_file", self.key_file)?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(FieldError::new("cert_file", "`cert_file` needs `key_file`"));
            }
            (None, Some(_)) => {
                return Err(FieldError::new("key_file", "`key_file` needs `cert_file`"));
            }
        };
        if !tls && (ca_file.is_some() || client_auth.is_some()) {
            return Err(FieldError::new(
                "ca_file",
                "certificates are for mqtts:// URLs; this one is mqtt://",
            ));
        }
        // With the system's roots, rumqttc's TLS set-up takes no client certificate: it would
        // be ignored without a word, and the broker would refuse the connection.
        if client_auth.is_some() && ca_file.is_none() {
            return Err(FieldError::new(
                "cert_file",
                "a client certificate needs `ca_file` too (the PEM CA that signed the broker's certificate)",
            ));
        }
        Ok(MqttConnection {
            display_url,
            host,
            port,
            tls,
            client_id,
            credentials,
            ca_file,
            client_auth,
            keep_alive: Duration::from_secs_f64(keep_alive),
        })
    }
}

impl MqttConnection {
    /// rumqttc options for this connection: client id, keep-alive, credentials and, for
    /// `mqtts://`, rustls with the configured CA (or the system's roots) and client
    /// certificate. Reads the certificate files; connects to nothing. The caller sets what
    /// differs between uses (session, in-flight window, packet sizes, last will).
    pub fn options(&self) -> Result<MqttOptions, MqttError> {
        let mut options = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        options.set_keep_alive(self.keep_alive);
        if let Some(c) = &self.credentials {
            options.set_credentials(c.user.clone(), c.password.expose());
        }
        if self.tls {
            let read = |what: &'static str, path: &PathBuf| {
                std::fs::read(path).map_err(|source| MqttError::Certificate {
                    url: self.display_url.clone(),
                    what,
                    path: path.clone(),
                    source,
                })
            };
            // One crypto provider for the process (ring), whichever crate asks first.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client_auth = match &self.client_auth {
                Some((cert, key)) => {
                    Some((read("client certificate", cert)?, read("client key", key)?))
                }
                None => None,
            };
            let transport = match &self.ca_file {
                Some(ca) => Transport::tls(read("CA certificate", ca)?, client_auth, None),
                None => Transport::tls_with_default_config(),
            };
            options.set_transport(transport);
        }
        Ok(options)
    }
}
