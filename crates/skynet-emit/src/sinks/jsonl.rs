//! The JSON Lines file sink.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use skynet_core::Component;
use skynet_core::{ConfigContext, FieldError};

use super::{BuildSink, IncidentSink, SinkBuildContext, SinkFamily, lines};
use crate::{EmitError, StoredEvent};

/// `kind = "jsonl"`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonLinesSinkConfig {
    /// Where the file goes: `${VAR}` expanded, relative to the config file.
    pub path: PathBuf,
}

impl Component<SinkFamily> for JsonLinesSinkConfig {
    const KIND: &'static str = "jsonl";
    const EXAMPLE: &'static str = "path = \"conformance.jsonl\"";
    type Validated = Self;

    fn validate(mut self, cx: &ConfigContext) -> Result<Self, FieldError> {
        if self.path.as_os_str().is_empty() {
            return Err(FieldError::new("path", "`path` must not be empty"));
        }
        self.path = match self.path.to_str() {
            Some(path) => cx.resolve_path("path", path)?,
            // Not UTF-8, so it holds no `${VAR}` to expand; only make it absolute.
            None => cx.base_dir.join(&self.path),
        };
        Ok(self)
    }
}

impl BuildSink for JsonLinesSinkConfig {
    fn build(&self, cx: &SinkBuildContext<'_>) -> Result<Box<dyn IncidentSink>, EmitError> {
        let name = cx.name;
        // The file is opened at the first delivery: a path that is not writable yet (a disk
        // still mounting) is then retried like any other failed delivery.
        Ok(Box::new(JsonLinesSink::new(name, &self.path)))
    }
}

/// Appends one CloudEvent per line to a file, fsynced per batch.
pub struct JsonLinesSink {
    name: String,
    path: PathBuf,
    /// None until the first delivery, and again after a failed one: the handle may be broken
    /// (disk full, file removed), and reopening also repairs what the failure left.
    file: Option<File>,
}

impl JsonLinesSink {
    pub fn new(name: impl Into<String>, path: &Path) -> Self {
        Self {
            name: name.into(),
            path: path.to_path_buf(),
            file: None,
        }
    }
}

#[async_trait::async_trait]
impl IncidentSink for JsonLinesSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn deliver(&mut self, batch: &[StoredEvent]) -> Result<(), EmitError> {
        let buf = lines(batch);
        let file = self.file.take();
        let (name, path) = (self.name.clone(), self.path.clone());
        // File writes and fsync block; keep them off the runtime's worker threads.
        let written = tokio::task::spawn_blocking(move || -> io::Result<File> {
            let mut file = match file {
                Some(file) => file,
                None => open_repaired(&name, &path)?,
            };
            file.write_all(&buf)?;
            file.sync_data()?;
            Ok(file)
        })
        .await?;
        match written {
            Ok(file) => {
                self.file = Some(file);
                Ok(())
            }
            Err(source) => Err(EmitError::SinkIo {
                sink: self.name.clone(),
                source,
            }),
        }
    }
}

/// Opens `path` for appending, first cutting a torn last line (a write interrupted by a
/// crash or a full disk), so every line in the file stays a whole JSON document.
fn open_repaired(sink: &str, path: &Path) -> io::Result<File> {
    // Incidents name places and people: a new file is owner only. An existing one keeps its
    // mode, which an operator may have opened to a log shipper's group.
    skynet_core::private_fs::create_private_parent(path)?;
    let mut file = skynet_core::private_fs::private_open_options()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let len = file.metadata()?.len();
    let keep = whole_lines_len(&mut file, len)?;
    if keep < len {
        // The next write and its sync_data make the new length durable too.
        file.set_len(keep)?;
        tracing::warn!(
            sink,
            path = %path.display(),
            bytes = len - keep,
            "cut a torn last line left by an interrupted write"
        );
    }
    Ok(file)
}

/// The length of the file up to and including its last newline (0 if it has none).
fn whole_lines_len(file: &mut File, len: u64) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut end = len;
    while end > 0 {
        let start = end.saturating_sub(CHUNK);
        // At most CHUNK, so it fits a usize.
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: i64, body: &str) -> StoredEvent {
        StoredEvent {
            seq,
            id: format!("e/{seq}"),
            body: body.into(),
        }
    }

    #[tokio::test]
    async fn the_json_lines_sink_repairs_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("incidents.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let mut sink = JsonLinesSink::new("jsonl", &path);
        sink.deliver(&[event(1, r#"{"id":"e/1"}"#)]).await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"id\":\"e/1\"}\n");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }

    #[tokio::test]
    async fn a_file_without_any_newline_is_cut_to_nothing_and_a_whole_one_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let torn = dir.path().join("torn.jsonl");
        std::fs::write(&torn, "x".repeat(70_000)).unwrap();
        let mut sink = JsonLinesSink::new("torn", &torn);
        sink.deliver(&[event(1, "{}")]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&torn).unwrap(), "{}\n");

        let whole = dir.path().join("sub/whole.jsonl");
        let mut sink = JsonLinesSink::new("whole", &whole);
        sink.deliver(&[event(1, "{}"), event(2, "[]")])
            .await
            .unwrap();
        let mut sink = JsonLinesSink::new("whole", &whole);
        sink.deliver(&[event(3, "1")]).await.unwrap();
        assert_eq!(std::fs::read_to_string(&whole).unwrap(), "{}\n[]\n1\n");
    }

    #[test]
    fn config_resolves_the_path_and_rejects_unknown_or_empty_fields() {
        let cx = ConfigContext::new(Path::new("/etc/skynet/skynet.toml"));
        let config: JsonLinesSinkConfig =
            serde_json::from_value(serde_json::json!({"path": "out/incidents.jsonl"})).unwrap();
        let config = config.validate(&cx).unwrap();
        assert_eq!(config.path, Path::new("/etc/skynet/out/incidents.jsonl"));
        assert_eq!(JsonLinesSinkConfig::KIND, "jsonl");

        let unknown = serde_json::from_value::<JsonLinesSinkConfig>(
            serde_json::json!({"path": "x", "fsync": false}),
        );
        assert!(unknown.is_err());
        let empty = JsonLinesSinkConfig {
            path: PathBuf::new(),
        };
        assert_eq!(empty.validate(&cx).unwrap_err().field, "path");
        assert!(config.build(&SinkBuildContext { name: "jsonl" }).is_ok());
    }
}
