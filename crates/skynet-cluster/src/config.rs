//! `[cluster]` and the node's identity (`[node] name`, `--role`), validated before any I/O.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use skynet_core::config::check_range;
use skynet_core::{ConfigContext, FieldError, MaskedUri};

/// `[cluster]`: the NATS the nodes of one cluster share. An empty `url` (the default, and
/// what `configs/city.toml` gets from an unset `${SKYNET_CLUSTER_URL:-}`) is a single node.
/// Its `Debug` shows the URL without credentials (a [`MaskedUri`]).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `nats://host:4222` (or `tls://`); `${VAR}` expanded; a comma separates several
    /// servers; `user:password@` is taken as the NATS sink takes it.
    #[serde(default)]
    pub url: MaskedUri,
    /// A `.creds` file (JWT and nkey seed); `${VAR}` expanded. `SKYNET_NATS_CREDS`,
    /// `SKYNET_NATS_NKEY`, `SKYNET_NATS_TOKEN` and `SKYNET_NATS_USER`/`_PASSWORD` also work.
    #[serde(default)]
    pub credentials: Option<String>,
    /// How long a dead member's items may stay unowned: heartbeats go every third of it, a
    /// member unseen for two thirds of it has vanished, and a lease lasts two thirds of it.
    #[serde(default = "default_failover_s")]
    pub failover_s: f64,
    /// Replicas of the KV buckets and the observation stream (1 to 5; 3 on a 3-node
    /// JetStream cluster).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// The cluster's name, the same in every process of it: incident ids and the
    /// CloudEvents' `source` carry it instead of the node's name, so whichever scorer owns
    /// a cell makes the same ids; a city of districts gives each district's cluster its
    /// own (`north`, `south`), which the city console shows and filters by.
    #[serde(default = "default_cluster_name")]
    pub name: String,
}

fn default_cluster_name() -> String {
    "skynet".into()
}

const fn default_failover_s() -> f64 {
    15.0
}
const fn default_replicas() -> usize {
    1
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            url: MaskedUri::default(),
            credentials: None,
            failover_s: default_failover_s(),
            replicas: default_replicas(),
            name: default_cluster_name(),
        }
    }
}

/// The periods that follow from `failover_s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often a member puts its key, and a holder renews its leases.
    pub heartbeat: Duration,
    /// A member unseen this long has vanished; a lease not renewed this long expires (the
    /// buckets' max_age). Two heartbeats, so one late or lost heartbeat is not a death.
    pub expiry: Duration,
    /// How often the views are checked for members past their expiry.
    pub check: Duration,
}

impl ClusterConfig {
    /// A cluster on `url` with every default (tests, examples).
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            url: MaskedUri::new(url),
            ..Self::default()
        }
    }

    /// Pure checks (no network, no files opened): `${VAR}` expanded, the URL's form, the
    /// ranges. An empty URL is valid: a single node.
    pub fn validate(mut self, cx: &ConfigContext) -> Result<Self, FieldError> {
        self.url = cx.expand("url", &self.url)?.trim().to_string().into();
        if !self.is_single_node() {
            skynet_emit::sinks::nats::check_url("url", &self.url)?;
        }
        // A second is the least a heartbeat every third of it can keep over a loaded
        // network; an hour is a dead camera unwatched for too long.
        check_range("failover_s", self.failover_s, 1.0, 3600.0)?;
        self.name = cx.expand("name", &self.name)?.trim().to_string();
        check_node_name("name", &self.name)?;
        if !(1..=5).contains(&self.replicas) {
            return Err(FieldError::new(
                "replicas",
                format!("{} replicas: JetStream allows 1 to 5", self.replicas),
            ));
        }
        if let Some(path) = &self.credentials {
            if self.is_single_node() {
                // Harmless, but a sign the URL variable was not set where it should be.
                tracing::debug!("[cluster] credentials given without a url: ignored");
            }
            let path = cx.resolve_path("credentials", path)?;
            self.credentials = Some(path.to_string_lossy().into_owned());
        }
        Ok(self)
    }

    /// True when there is no cluster: `url` is empty.
    pub fn is_single_node(&self) -> bool {
        self.url.trim().is_empty()
    }

    pub fn timing(&self) -> Timing {
        let failover = Duration::from_secs_f64(self.failover_s.clamp(1.0, 3600.0));
        Timing {
            heartbeat: failover / 3,
            expiry: failover * 2 / 3,
            check: (failover / 12).max(Duration::from_millis(50)),
        }
    }
}

/// Checks `[node] name`: an id (1 to 128 of `[A-Za-z0-9._-]`) that is also one KV key
/// token run (no leading, trailing or doubled `.`), as it becomes part of `<role>.<node>`.
pub fn check_node_name(field: &str, name: &str) -> Result<(), FieldError> {
    skynet_core::validate_id("node", name).map_err(|m| FieldError::new(field, m))?;
    if name.starts_with('.') || name.ends_with('.') || name.contains("..") {
        return Err(FieldError::new(
            field,
            format!("node id `{name}` may not start or end with `.` or hold `..`"),
        ));
    }
    Ok(())
}

/// What a process does in the city (`skynet run --role`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything in one process: today's single node (no NATS needed).
    #[default]
    All,
    /// Runs cameras and sensors, detection and the camera rules.
    Edge,
    /// Owns grid cells: fusion, lifecycle, deadlines and the outbox.
    Scorer,
    /// The city's console.
    Console,
}

impl Role {
    pub const EVERY: [Role; 4] = [Role::All, Role::Edge, Role::Scorer, Role::Console];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Edge => "edge",
            Role::Scorer => "scorer",
            Role::Console => "console",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Role`]: it names the roles there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}`: use all, edge, scorer or console")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::EVERY
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.escape_debug().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cx() -> ConfigContext {
        ConfigContext::new(Path::new("/etc/skynet/city.toml"))
    }

    fn parse(text: &str) -> Result<ClusterConfig, FieldError> {
        toml::from_str::<ClusterConfig>(text)
            .expect("parses")
            .validate(&cx())
    }

    #[test]
    fn an_empty_url_is_a_single_node_with_the_defaults() {
        let c = parse("url = \"\"").unwrap();
        assert!(c.is_single_node());
        assert_eq!(c.failover_s, 15.0);
        assert_eq!(c.timing().heartbeat, Duration::from_secs(5));
        assert_eq!(c.timing().expiry, Duration::from_secs(10));
        assert!(parse("").unwrap().is_single_node());
    }

    #[test]
    fn a_url_and_credentials_are_checked_and_resolved() {
        let c = parse("url = \"nats://u:p@n1:4222, nats://n2:4222\"\ncredentials = \"c.creds\"")
            .unwrap();
        assert!(!c.is_single_node());
        assert_eq!(c.credentials.as_deref(), Some("/etc/skynet/c.creds"));
        // The password never shows in Debug.
        assert!(!format!("{c:?}").contains(":p@"));
        let e = parse("url = \"http://x:1\"").unwrap_err();
        assert_eq!(e.field, "url");
    }

    #[test]
    fn failover_and_replicas_are_bounded() {
        assert_eq!(parse("failover_s = 0.5").unwrap_err().field, "failover_s");
        assert_eq!(parse("failover_s = nan").unwrap_err().field, "failover_s");
        assert_eq!(parse("replicas = 7").unwrap_err().field, "replicas");
        assert!(toml::from_str::<ClusterConfig>("urll = \"x\"").is_err());
    }

    #[test]
    fn node_names_are_ids_and_key_tokens() {
        assert!(check_node_name("name", "city-node").is_ok());
        assert!(check_node_name("name", "edge-7.district_2").is_ok());
        for bad in ["", "a b", "a*", ".a", "a.", "a..b", "é"] {
            assert_eq!(
                check_node_name("name", bad).unwrap_err().field,
                "name",
                "{bad}"
            );
        }
    }

    #[test]
    fn roles_parse_and_print() {
        for role in Role::EVERY {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
        assert_eq!(Role::default(), Role::All);
        assert!("Edge".parse::<Role>().is_err());
        assert!(
            "worker"
                .parse::<Role>()
                .unwrap_err()
                .to_string()
                .contains("edge")
        );
    }
}
