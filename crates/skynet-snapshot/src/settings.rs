//! `[evidence]`: where snapshots go, how long they are kept and how often they are taken.
//! The table keeps its name (a public config key); the types say "snapshot".

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use skynet_core::config::check_range;
use skynet_core::{ConfigContext, FieldError};

/// `[evidence]` as written. Every key has a default, so the table may be left out.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotSettings {
    /// Take snapshots at all. Default true.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// Where the files go; default `${SKYNET_STATE_DIR}/evidence` when that variable is
    /// set, else `${SKYNET_DATA_DIR}/evidence`.
    pub dir: Option<String>,
    /// Days a file is kept. Default 30.
    #[serde(default = "default_retain_days")]
    pub retain_days: f64,
    /// What the incident's `url` starts with; default `file://` and the directory.
    pub url_base: Option<String>,
    /// JPEG quality, 1 to 100. Default 80.
    #[serde(default = "default_jpeg_quality")]
    pub jpeg_quality: i64,
    /// At most one snapshot per incident in this many seconds of event time. Default 5.
    #[serde(default = "default_min_interval")]
    pub min_interval_s: f64,
    /// At most this many snapshots per second of wall time over all incidents, so a burst
    /// of incidents cannot stall the rules stage on encoding. Default 4.
    #[serde(default = "default_max_per_s")]
    pub max_per_s: f64,
    /// Event clips: `clips = { enabled = true, pre_s = 5, post_s = 10, max_s = 60 }`.
    #[serde(default)]
    pub clips: ClipSettings,
    /// A disk budget for the evidence directory, in GB (10^9 bytes): oldest files removed
    /// first when over it. Default: none.
    pub max_gb: Option<f64>,
}

/// `[evidence] clips` and a camera's `clips` override.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipSettings {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_pre_s")]
    pub pre_s: f64,
    #[serde(default = "default_post_s")]
    pub post_s: f64,
    #[serde(default = "default_clip_max_s")]
    pub max_s: f64,
}

fn default_pre_s() -> f64 {
    5.0
}
fn default_post_s() -> f64 {
    10.0
}
fn default_clip_max_s() -> f64 {
    60.0
}

impl Default for ClipSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            pre_s: default_pre_s(),
            post_s: default_post_s(),
            max_s: default_clip_max_s(),
        }
    }
}

/// Validated clip settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipsConfig {
    pub enabled: bool,
    pub pre: Duration,
    pub post: Duration,
    pub max: Duration,
}

impl Default for ClipsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            pre: Duration::from_secs(5),
            post: Duration::from_secs(10),
            max: Duration::from_secs(60),
        }
    }
}

impl ClipSettings {
    /// Errors name the key as `clips.pre_s` and so on.
    pub fn validate(&self) -> Result<ClipsConfig, FieldError> {
        let named = |e: FieldError| {
            let message = e
                .message
                .replace(&format!("`{}`", e.field), &format!("`clips.{}`", e.field));
            FieldError::new(format!("clips.{}", e.field), message)
        };
        let pre = check_range("pre_s", self.pre_s, 0.0, 300.0).map_err(named)?;
        let post = check_range("post_s", self.post_s, 0.0, 600.0).map_err(named)?;
        let max = check_range("max_s", self.max_s, 1.0, 3600.0).map_err(named)?;
        if max < pre {
            return Err(FieldError::new(
                "clips.max_s",
                format!("`clips.max_s` ({max}) must be at least `clips.pre_s` ({pre})"),
            ));
        }
        Ok(ClipsConfig {
            enabled: self.enabled,
            pre: Duration::from_secs_f64(pre),
            post: Duration::from_secs_f64(post),
            max: Duration::from_secs_f64(max),
        })
    }
}

fn default_enabled() -> bool {
    true
}
fn default_retain_days() -> f64 {
    30.0
}
fn default_jpeg_quality() -> i64 {
    80
}
fn default_min_interval() -> f64 {
    5.0
}
fn default_max_per_s() -> f64 {
    4.0
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self {
            enabled: default_enabled(),
            dir: None,
            retain_days: default_retain_days(),
            url_base: None,
            jpeg_quality: default_jpeg_quality(),
            min_interval_s: default_min_interval(),
            max_per_s: default_max_per_s(),
            clips: ClipSettings::default(),
            max_gb: None,
        }
    }
}

/// `[evidence]` checked, its paths resolved.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    pub enabled: bool,
    pub dir: PathBuf,
    /// Ends with `/`: a file's url is this and `<incident id>/<revision>.jpg`.
    pub url_base: String,
    pub retain: Duration,
    pub jpeg_quality: u8,
    pub min_interval: chrono::Duration,
    pub max_per_s: f64,
    /// The node's clip settings (a camera may override them).
    pub clips: ClipsConfig,
    /// `max_gb` in bytes: the evidence directory's disk budget.
    pub max_bytes: Option<u64>,
}

impl SnapshotSettings {
    /// Resolves `dir` like every path in the config (`${VAR}` expanded, relative to the
    /// config file) and checks the numbers; errors name the key.
    pub fn validate(&self, cx: &ConfigContext) -> Result<SnapshotConfig, FieldError> {
        let dir = match &self.dir {
            Some(dir) => cx.resolve_path("dir", dir)?,
            None => {
                // The state directory when the operator names one (as configs/city.toml
                // does for the outbox), else the data directory.
                let state = std::env::var_os("SKYNET_STATE_DIR").is_some_and(|v| !v.is_empty());
                let base = if state {
                    "${SKYNET_STATE_DIR}"
                } else {
                    "${SKYNET_DATA_DIR}"
                };
                cx.resolve_path("dir", &format!("{base}/evidence"))?
            }
        };
        let days = check_range("retain_days", self.retain_days, 1.0 / 24.0, 36_525.0)
            .map_err(|e| FieldError::new(e.field, format!("{} days", e.message)))?;
        let quality = check_range("jpeg_quality", self.jpeg_quality as f64, 1.0, 100.0)?;
        let min_interval =
            skynet_core::config::seconds_in("min_interval_s", self.min_interval_s, 0.0, 86_400.0)?;
        let max_per_s = check_range("max_per_s", self.max_per_s, 0.01, 1000.0)?;
        let url_base = match &self.url_base {
            Some(base) => {
                let base = cx.expand("url_base", base)?;
                let parsed = url::Url::parse(&base).map_err(|e| {
                    FieldError::new(
                        "url_base",
                        format!(
                            "`url_base` must be an absolute URL like https://host/evidence/: {e}"
                        ),
                    )
                })?;
                if parsed.cannot_be_a_base() {
                    return Err(FieldError::new(
                        "url_base",
                        format!("`url_base` `{base}` cannot have a path appended"),
                    ));
                }
                with_slash(base)
            }
            None => file_url(&dir),
        };
        let clips = self.clips.validate()?;
        let max_bytes = match self.max_gb {
            Some(gb) => Some((check_range("max_gb", gb, 0.001, 1_000_000.0)? * 1e9) as u64),
            None => None,
        };
        Ok(SnapshotConfig {
            clips,
            max_bytes,
            enabled: self.enabled,
            dir,
            url_base,
            retain: Duration::from_secs_f64(days * 86_400.0),
            jpeg_quality: quality as u8,
            min_interval,
            max_per_s,
        })
    }
}

pub(crate) fn with_slash(mut base: String) -> String {
    if !base.ends_with('/') {
        base.push('/');
    }
    base
}

/// `file://` and the directory, absolute, as a URL a browser opens.
fn file_url(dir: &Path) -> String {
    std::path::absolute(dir)
        .ok()
        .and_then(|abs| url::Url::from_directory_path(abs).ok())
        .map(String::from)
        .unwrap_or_else(|| with_slash(format!("file://{}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_name_their_key() {
        let cx = ConfigContext::new(Path::new("x.toml"));
        let bad = |s: SnapshotSettings| s.validate(&cx).unwrap_err().field;
        assert_eq!(
            bad(SnapshotSettings {
                jpeg_quality: 0,
                ..SnapshotSettings::default()
            }),
            "jpeg_quality"
        );
        assert_eq!(
            bad(SnapshotSettings {
                retain_days: -1.0,
                ..SnapshotSettings::default()
            }),
            "retain_days"
        );
        assert_eq!(
            bad(SnapshotSettings {
                url_base: Some("not a url".into()),
                ..SnapshotSettings::default()
            }),
            "url_base"
        );
        assert_eq!(
            bad(SnapshotSettings {
                max_gb: Some(0.0),
                ..SnapshotSettings::default()
            }),
            "max_gb"
        );
        assert_eq!(
            bad(SnapshotSettings {
                clips: ClipSettings {
                    post_s: -1.0,
                    ..ClipSettings::default()
                },
                ..SnapshotSettings::default()
            }),
            "clips.post_s"
        );
        let config = SnapshotSettings::default().validate(&cx).unwrap();
        assert!(!config.clips.enabled, "clips are off by default");
    }
}
