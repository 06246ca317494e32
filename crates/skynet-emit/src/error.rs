use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EmitError {
    #[error("outbox {path}: {source}")]
    Outbox {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("could not create the directory for {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sink `{sink}`: {source}")]
    SinkIo {
        sink: String,
        #[source]
        source: std::io::Error,
    },
    /// A sink failed in a way that is not an I/O error (a webhook answering 503). The
    /// message never holds a secret: URLs in it are redacted.
    #[error("sink `{sink}`: {message}")]
    Sink { sink: String, message: String },
    /// The destination refuses the sink as a whole (a webhook's 401, 403, 404 or 410: a
    /// rotated token, a moved endpoint), not one event: retried with backoff, never
    /// dead-lettered, and shown as the sink's `refusing` state.
    #[error("sink `{sink}` is refused by its destination: {message}")]
    Refusing { sink: String, message: String },
    #[error("event could not be serialised: {0}")]
    Serialise(#[from] serde_json::Error),
    /// A blocking step (file or outbox I/O) panicked or was cancelled.
    #[error("background task failed: {0}")]
    Background(#[from] tokio::task::JoinError),
}
