//! Walkthrough "add a sink" (docs/architecture.md): a `csv` sink kind that appends one line
//! per event (`id,type,time`) to a file. In skynet it would be
//! `crates/skynet-emit/src/sinks/csv.rs` plus one line in `sinks::register`; here it is
//! registered into a registry of its own and run through the sink conformance suite.

use std::io::Write;
use std::path::{Path, PathBuf};

use skynet_core::{Component, ConfigContext, FieldError, Registry};
use skynet_emit::sinks::conformance::{Destination, check_sink_kind};
use skynet_emit::{BuildSink, EmitError, IncidentSink, SinkBuildContext, SinkFamily, StoredEvent};

/// `kind = "csv"`: the config, as a `[[sinks]]` table gives it (without `kind` and `name`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsvSinkConfig {
    /// Where the file goes: `${VAR}` expanded, relative to the config file.
    pub path: String,
}

/// The checked config: the path made absolute.
#[derive(Debug, Clone)]
pub struct ValidCsvSink {
    path: PathBuf,
}

impl Component<SinkFamily> for CsvSinkConfig {
    const KIND: &'static str = "csv";
    const EXAMPLE: &'static str = "path = \"incidents.csv\"";
    type Validated = ValidCsvSink;

    /// Pure: no file is opened here (`skynet check` runs this).
    fn validate(self, cx: &ConfigContext) -> Result<ValidCsvSink, FieldError> {
        if self.path.is_empty() {
            return Err(FieldError::new("path", "`path` must not be empty"));
        }
        Ok(ValidCsvSink {
            path: cx.resolve_path("path", &self.path)?,
        })
    }
}

impl BuildSink for ValidCsvSink {
    fn build(&self, cx: &SinkBuildContext<'_>) -> Result<Box<dyn IncidentSink>, EmitError> {
        // The file is opened at the first delivery, so a disk still mounting is retried like
        // any failed delivery.
        Ok(Box::new(CsvSink {
            name: cx.name.to_string(),
            path: self.path.clone(),
        }))
    }
}

pub struct CsvSink {
    name: String,
    path: PathBuf,
}

/// One line of the file: the CloudEvent's id, type and time.
fn line(event: &StoredEvent) -> Result<String, EmitError> {
    let body: serde_json::Value = serde_json::from_str(&event.body)?;
    let field = |k: &str| {
        body.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    Ok(format!(
        "{},{},{}\n",
        event.id,
        field("type"),
        field("time")
    ))
}

#[async_trait::async_trait]
impl IncidentSink for CsvSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError> {
        let mut text = String::new();
        for event in batch {
            text.push_str(&line(event)?);
        }
        let (path, sink) = (self.path.clone(), self.name.clone());
        // Blocking file I/O stays off the runtime's worker threads.
        tokio::task::spawn_blocking(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            file.write_all(text.as_bytes())?;
            file.sync_data()
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(|source| EmitError::SinkIo { sink, source })
    }
}

/// Where the suite finds what the sink wrote.
struct CsvFile;

impl Destination for CsvFile {
    fn table(&self, _dir: &Path) -> String {
        "path = \"delivered.csv\"".into()
    }

    fn received(&self, dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("delivered.csv"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(',').next().map(str::to_string))
            .collect()
    }
}

#[test]
fn the_csv_sink_kind_passes_the_sink_conformance_suite() {
    let mut registry = Registry::default();
    registry.register::<SinkFamily, CsvSinkConfig>();
    let kind = registry.lookup::<SinkFamily>("csv").expect("registered");
    if let Err(e) = check_sink_kind(&kind, Some(&CsvFile)) {
        panic!("{e}");
    }
}

#[test]
fn the_csv_sink_kind_names_the_field_it_refuses() {
    let mut registry = Registry::default();
    registry.register::<SinkFamily, CsvSinkConfig>();
    let kind = registry.lookup::<SinkFamily>("csv").expect("registered");
    let cx = ConfigContext::new(Path::new("/etc/skynet/site.toml"));
    let empty: toml::Table = toml::from_str("path = \"\"").expect("a TOML table");
    match (kind.parse)(empty, &cx) {
        Err(skynet_core::TableError::Field(e)) => assert_eq!(e.field, "path"),
        other => panic!("an empty path must be refused at `path`: {other:?}"),
    }
}
