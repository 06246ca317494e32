//! `[api]`: where the console and its API are served, and the limits that keep it standing
//! when it is attacked.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
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
    /// A browser session ends after this long without a request (default 30 min).
    #[serde(default)]
    pub idle_timeout_s: Option<u64>,
    /// Mark the session cookie `Secure` (sent over HTTPS only). Default: on whenever the
    /// listen address is not loopback, `tls_cert` is set, or `trusted_proxies` names a
    /// proxy (a TLS proxy is then expected, on the same host for a loopback listener).
    #[serde(default)]
    pub secure_cookie: Option<bool>,
    /// Addresses (or CIDR ranges) of reverse proxies whose `X-Forwarded-For` names the
    /// client. From any other peer, the peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// The `Host` values this console answers to (`name` or `name:port`). Default: the
    /// listen address, `localhost` and the loopback addresses, at the listen port.
    #[serde(default)]
    pub hosts: Option<Vec<String>>,
    /// PEM certificate chain and private key: serve HTTPS in-process (both or neither).
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
    /// Seconds a client has to send a request's headers (default 10).
    #[serde(default)]
    pub header_timeout_s: Option<u64>,
    /// Seconds a kept-alive connection may sit idle between requests (default 60).
    #[serde(default)]
    pub connection_idle_s: Option<u64>,
    /// Open connections at once on this listener (default 4096); past it, new connections
    /// wait in the kernel's backlog.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Open connections at once from one client address (default 64); past it, a new
    /// connection from that address is closed at once. `trusted_proxies` are exempt.
    #[serde(default)]
    pub max_connections_per_client: Option<usize>,
    /// Live streams (`/api/v1/events`) one user may hold open (default 10).
    #[serde(default)]
    pub max_streams_per_user: Option<usize>,
    /// Live streams open at once, all users together (default 2000).
    #[serde(default)]
    pub max_streams: Option<usize>,
    /// Live view (`/api/v1/cameras/{id}/live.mp4`): `{ enabled = true,
    /// max_viewers_per_camera = 4, max_viewers = 16, masked_width = 640 }`. Off by default.
    #[serde(default)]
    pub live: Option<LiveSettings>,
}

/// `[api] live` as written.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub max_viewers_per_camera: Option<usize>,
    #[serde(default)]
    pub max_viewers: Option<usize>,
    /// Width (pixels) a masked camera is transcoded to for live view (default 640).
    #[serde(default)]
    pub masked_width: Option<u32>,
}

/// `[api] live`, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveConfig {
    pub enabled: bool,
    pub max_viewers_per_camera: usize,
    pub max_viewers: usize,
    /// Width a masked camera's live view is transcoded (and blurred) at; aspect kept.
    pub masked_width: u32,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_viewers_per_camera: 4,
            max_viewers: 16,
            masked_width: 640,
        }
    }
}

/// `[api]`, checked.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub session_ttl: Duration,
    pub idle_timeout: Duration,
    pub secure_cookie: bool,
    /// `secure_cookie = false` written on a listener beyond loopback: the binary warns.
    pub insecure_cookie_forced: bool,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Lower-case `Host` values accepted (with and without the port).
    pub hosts: Vec<String>,
    pub tls: Option<TlsFiles>,
    pub header_timeout: Duration,
    pub connection_idle: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_streams_per_user: usize,
    pub max_streams: usize,
    /// Live view of the cameras' own video.
    pub live: LiveConfig,
}

/// The PEM files `[api] tls_cert` and `tls_key` name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ApiConfig {
    /// Every default, for `listen`: what `[api]` with only `listen` gives. Tests and
    /// benches start from it.
    pub fn local(listen: SocketAddr) -> Self {
        Self {
            listen,
            session_ttl: Duration::from_secs(12 * 3600),
            idle_timeout: Duration::from_secs(1800),
            secure_cookie: !listen.ip().is_loopback(),
            insecure_cookie_forced: false,
            trusted_proxies: Vec::new(),
            hosts: default_hosts(listen),
            tls: None,
            header_timeout: Duration::from_secs(10),
            connection_idle: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_per_client: 64,
            max_streams_per_user: 10,
            max_streams: 2000,
            live: LiveConfig::default(),
        }
    }

    /// Whether `peer` is one of `trusted_proxies`.
    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        let peer = canonical(peer);
        self.trusted_proxies.iter().any(|net| net.contains(&peer))
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports) is
/// the IPv4 address.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn default_hosts(listen: SocketAddr) -> Vec<String> {
    let port = listen.port();
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "[::1]".into()];
    let ip = listen.ip();
    if !ip.is_unspecified() {
        names.push(match ip {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        });
    }
    names
        .into_iter()
        .flat_map(|name| [format!("{name}:{port}"), name])
        .collect()
}

/// `value` (or `default`) when it lies in `range`; otherwise an error naming `field`.
fn in_range<T>(
    field: &str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, FieldError>
where
    T: PartialOrd + Copy + std::fmt::Display,
{
    let value = value.unwrap_or(default);
    if !range.contains(&value) {
        return Err(FieldError::new(
            field,
            format!(
                "`{field}` = {value} must be between {} and {}",
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(value)
}

fn seconds(
    field: &str,
    value: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, FieldError> {
    in_range(field, value, default, range).map(Duration::from_secs)
}

impl ApiSettings {
    pub fn validate(&self, cx: &ConfigContext) -> Result<ApiConfig, FieldError> {
        let listen = cx.expand("listen", &self.listen)?;
        let listen: SocketAddr = listen.parse().map_err(|e| {
            FieldError::new(
                "listen",
                format!("`listen` `{listen}` must be host:port, like 127.0.0.1:8080: {e}"),
            )
        })?;
        let defaults = ApiConfig::local(listen);
        let session_ttl = seconds(
            "session_ttl_s",
            self.session_ttl_s,
            12 * 3600,
            60..=30 * 86_400,
        )
        .map_err(|e| FieldError::new("session_ttl_s", format!("{} (30 days)", e.message)))?;
        let idle_timeout = seconds(
            "idle_timeout_s",
            self.idle_timeout_s,
            1800,
            60..=30 * 86_400,
        )?;
        let trusted_proxies = self
            .trusted_proxies
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map(|net| match net {
                        ipnet::IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len().saturating_sub(96))
                                .map_or(net, ipnet::IpNet::V4),
                            None => net,
                        },
                        v4 => v4,
                    })
                    .map_err(|_| {
                        FieldError::new(
                            "trusted_proxies",
                            format!(
                                "`trusted_proxies` entry `{entry}` must be an IP address or a CIDR range, like 10.0.0.5 or 10.0.0.0/24"
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hosts = match &self.hosts {
            None => defaults.hosts.clone(),
            Some(hosts) if hosts.is_empty() => {
                return Err(FieldError::new(
                    "hosts",
                    "`hosts` is empty: no request could be answered; leave it out for the default (the listen address and localhost)",
                ));
            }
            Some(hosts) => {
                let mut accepted = Vec::new();
                for host in hosts {
                    let host = cx.expand("hosts", host)?.trim().to_ascii_lowercase();
                    if host.is_empty() || host.contains(['/', ' ', '@']) {
                        return Err(FieldError::new(
                            "hosts",
                            format!(
                                "`hosts` entry `{host}` must be a host name or address, with an optional :port"
                            ),
                        ));
                    }
                    // A name written without a port is accepted at the listen port too.
                    let has_port = host.rsplit_once(':').is_some_and(|(h, p)| {
                        !h.ends_with(':')
                            && p.parse::<u16>().is_ok()
                            && (!host.starts_with('[') || h.ends_with(']'))
                    });
                    if !has_port {
                        accepted.push(format!("{host}:{}", listen.port()));
                    }
                    accepted.push(host);
                }
                accepted
            }
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cx.resolve_path("tls_cert", cert)?,
                key: cx.resolve_path("tls_key", key)?,
            }),
            (Some(_), None) => {
                return Err(FieldError::new(
                    "tls_key",
                    "`tls_cert` is set but `tls_key` is not: give both PEM files, or neither",
                ));
            }
            (None, Some(_)) => {
                return Err(FieldError::new(
                    "tls_cert",
                    "`tls_key` is set but `tls_cert` is not: give both PEM files, or neither",
                ));
            }
        };
        let loopback = listen.ip().is_loopback();
        // A trusted proxy on the same host (TLS ends there) reaches a loopback listener:
        // the browser still speaks HTTPS, so the cookie is Secure by default then too.
        let secure_cookie = self
            .secure_cookie
            .unwrap_or(!loopback || tls.is_some() || !trusted_proxies.is_empty());
        let max_connections = in_range(
            "max_connections",
            self.max_connections,
            4096,
            16..=1_000_000,
        )?;
        let max_connections_per_client = in_range(
            "max_connections_per_client",
            self.max_connections_per_client,
            64.min(max_connections),
            1..=max_connections,
        )?;
        let max_streams = in_range("max_streams", self.max_streams, 2000, 1..=100_000)?;
        let max_streams_per_user = in_range(
            "max_streams_per_user",
            self.max_streams_per_user,
            10,
            1..=max_streams,
        )?;
        let live_settings = self.live.unwrap_or_default();
        let max_viewers = in_range(
            "live.max_viewers",
            live_settings.max_viewers,
            16,
            1..=10_000,
        )?;
        let live = LiveConfig {
            enabled: live_settings.enabled,
            max_viewers,
            max_viewers_per_camera: in_range(
                "live.max_viewers_per_camera",
                live_settings.max_viewers_per_camera,
                4.min(max_viewers),
                1..=max_viewers,
            )?,
            masked_width: in_range(
                "live.masked_width",
                live_settings.masked_width,
                640,
                160..=3840,
            )?,
        };
        Ok(ApiConfig {
            listen,
            session_ttl,
            idle_timeout,
            secure_cookie,
            insecure_cookie_forced: self.secure_cookie == Some(false) && !loopback,
            trusted_proxies,
            hosts,
            tls,
            header_timeout: seconds("header_timeout_s", self.header_timeout_s, 10, 1..=300)?,
            connection_idle: seconds("connection_idle_s", self.connection_idle_s, 60, 1..=3600)?,
            max_connections,
            max_connections_per_client,
            max_streams_per_user,
            max_streams,
            live,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_is_ipv4_and_proxies_match_ranges() {
        let mut config = ApiConfig::local("127.0.0.1:8080".parse().unwrap());
        config.trusted_proxies = vec!["10.0.0.0/24".parse().unwrap()];
        assert!(config.is_trusted_proxy("10.0.0.7".parse().unwrap()));
        assert!(config.is_trusted_proxy("::ffff:10.0.0.7".parse().unwrap()));
        assert!(!config.is_trusted_proxy("10.0.1.7".parse().unwrap()));
    }

    /// `[api]` from its keys as written (JSON stands in for TOML: the same serde names).
    fn api(keys: serde_json::Value) -> Result<ApiConfig, FieldError> {
        let settings: ApiSettings = serde_json::from_value(keys).unwrap();
        settings.validate(&ConfigContext::new(std::path::Path::new(
            "/etc/skynet/skynet.toml",
        )))
    }

    #[test]
    fn the_public_keys_are_read_and_bad_values_refused_naming_the_key() {
        use serde_json::json;
        let config = api(json!({
            "listen": "0.0.0.0:8443",
            "idle_timeout_s": 600,
            "trusted_proxies": ["10.0.0.5", "10.1.0.0/16"],
            "hosts": ["Console.City.Example", "console.city.example:443"],
            "tls_cert": "tls/cert.pem",
            "tls_key": "tls/key.pem",
        }))
        .unwrap();
        assert_eq!(config.idle_timeout, Duration::from_secs(600));
        assert_eq!(config.max_connections_per_client, 64, "the default");
        assert!(config.is_trusted_proxy("10.0.0.5".parse().unwrap()));
        assert!(config.is_trusted_proxy("10.1.200.3".parse().unwrap()));
        assert!(!config.is_trusted_proxy("10.0.0.6".parse().unwrap()));
        // Lower-cased; a name with no port is accepted bare and at the listen port.
        for host in [
            "console.city.example",
            "console.city.example:8443",
            "console.city.example:443",
        ] {
            assert!(config.hosts.iter().any(|h| h == host), "{host}");
        }
        assert!(!config.hosts.iter().any(|h| h.starts_with("localhost")));
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert, std::path::Path::new("/etc/skynet/tls/cert.pem"));
        assert_eq!(tls.key, std::path::Path::new("/etc/skynet/tls/key.pem"));
        assert!(config.secure_cookie, "beyond loopback the cookie is Secure");
        assert!(!config.insecure_cookie_forced);
        let forced = api(json!({"listen": "0.0.0.0:8080", "secure_cookie": false})).unwrap();
        assert!(!forced.secure_cookie && forced.insecure_cookie_forced);

        for (keys, field) in [
            (
                json!({"listen": "127.0.0.1:8080", "idle_timeout_s": 5}),
                "idle_timeout_s",
            ),
            (
                json!({"listen": "127.0.0.1:8080", "trusted_proxies": ["proxy.lan"]}),
                "trusted_proxies",
            ),
            (json!({"listen": "127.0.0.1:8080", "hosts": []}), "hosts"),
            (
                json!({"listen": "127.0.0.1:8080", "max_connections_per_client": 0}),
                "max_connections_per_client",
            ),
            (
                json!({"listen": "127.0.0.1:8080", "max_connections": 16, "max_connections_per_client": 17}),
                "max_connections_per_client",
            ),
            (
                json!({"listen": "127.0.0.1:8080", "hosts": ["a b"]}),
                "hosts",
            ),
            (
                json!({"listen": "127.0.0.1:8080", "tls_cert": "c.pem"}),
                "tls_key",
            ),
            (
                json!({"listen": "127.0.0.1:8080", "tls_key": "k.pem"}),
                "tls_cert",
            ),
        ] {
            let error = api(keys.clone()).unwrap_err();
            assert_eq!(error.field, field, "{keys}: {}", error.message);
        }
    }

    #[test]
    fn default_hosts_are_the_listen_address_and_localhost_at_its_port() {
        let config = ApiConfig::local("192.168.1.5:8080".parse().unwrap());
        for host in [
            "localhost:8080",
            "localhost",
            "127.0.0.1:8080",
            "192.168.1.5:8080",
        ] {
            assert!(config.hosts.iter().any(|h| h == host), "{host}");
        }
        assert!(config.secure_cookie, "beyond loopback the cookie is Secure");
        assert!(!ApiConfig::local("127.0.0.1:8080".parse().unwrap()).secure_cookie);
    }
}
