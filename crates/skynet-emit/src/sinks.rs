//! Where incidents go after the outbox.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::{EmitError, StoredEvent};

/// A destination for incident events. Delivery is acknowledged per batch, after `flush`.
pub trait IncidentSink: Send {
    /// Unique among the configured sinks; names the sink's cursor in the outbox.
    fn name(&self) -> &str;
    fn deliver(&mut self, event: &StoredEvent) -> Result<(), EmitError>;
    /// Makes everything delivered so far durable; only then is it acknowledged.
    fn flush(&mut self) -> Result<(), EmitError> {
        Ok(())
    }
}

/// Appends one CloudEvent per line to a file.
pub struct JsonLinesSink {
    name: String,
    path: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl JsonLinesSink {
    pub fn new(name: impl Into<String>, path: &Path) -> Self {
        Self {
            name: name.into(),
            path: path.to_path_buf(),
            writer: None,
        }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> EmitError + '_ {
        move |source| EmitError::SinkIo {
            sink: self.name.clone(),
            source,
        }
    }

    fn writer(&mut self) -> Result<&mut BufWriter<File>, EmitError> {
        let writer = match self.writer.take() {
            Some(w) => w,
            None => {
                if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(self.io())?;
                }
                BufWriter::new(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)
                        .map_err(self.io())?,
                )
            }
        };
        Ok(self.writer.insert(writer))
    }
}

impl IncidentSink for JsonLinesSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, event: &StoredEvent) -> Result<(), EmitError> {
        let name = self.name.clone();
        let w = self.writer()?;
        w.write_all(event.body.as_bytes())
            .and_then(|_| w.write_all(b"\n"))
            .map_err(|source| EmitError::SinkIo { sink: name, source })
    }

    fn flush(&mut self) -> Result<(), EmitError> {
        let name = self.name.clone();
        if let Some(w) = self.writer.as_mut() {
            let result = w.flush().and_then(|_| w.get_ref().sync_data());
            if let Err(source) = result {
                // Reopen next time: the handle may be broken (disk full, file removed).
                self.writer = None;
                return Err(EmitError::SinkIo { sink: name, source });
            }
        }
        Ok(())
    }
}

/// Prints one CloudEvent per line on standard output.
pub struct StdoutSink {
    name: String,
}

impl StdoutSink {
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }
}

impl IncidentSink for StdoutSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn deliver(&mut self, event: &StoredEvent) -> Result<(), EmitError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", event.body).map_err(|source| EmitError::SinkIo {
            sink: self.name.clone(),
            source,
        })
    }

    fn flush(&mut self) -> Result<(), EmitError> {
        std::io::stdout()
            .flush()
            .map_err(|source| EmitError::SinkIo {
                sink: self.name.clone(),
                source,
            })
    }
}
