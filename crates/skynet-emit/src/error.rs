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
    /// A remote sink (a broker, a server) refused or could not be reached; retried.
    #[error("sink `{sink}`: {message}")]
    Remote { sink: String, message: String },
    #[error("event could not be serialised: {0}")]
    Serialise(#[from] serde_json::Error),
    /// A blocking step (file or outbox I/O) panicked or was cancelled.
    #[error("background task failed: {0}")]
    Background(#[from] tokio::task::JoinError),
}
