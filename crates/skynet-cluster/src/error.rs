/// What can go wrong in the cluster's coordination. Messages never carry credentials: the
/// connection error is redacted where it is made, and keys hold only ids.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no cluster: `[cluster] url` is empty (a single node)")]
    SingleNode,
    #[error("{0}")]
    Connect(String),
    #[error("stream `{stream}`: {message}")]
    Stream { stream: String, message: String },
    #[error("KV bucket `{bucket}`: {message}")]
    Bucket { bucket: String, message: String },
    #[error("`{key}` in `{bucket}`: {message}")]
    Key {
        bucket: String,
        key: String,
        message: String,
    },
    #[error("the lease on `{key}` is lost (taken by another, expired or released)")]
    LeaseLost { key: String },
    #[error("`{0}` is not a valid KV key (letters, digits, `-`, `_`, `=`, `/` and inner `.`)")]
    InvalidKey(String),
}

impl ClusterError {
    pub(crate) fn bucket(bucket: &str, e: impl std::fmt::Display) -> Self {
        Self::Bucket {
            bucket: bucket.to_string(),
            message: e.to_string(),
        }
    }

    pub(crate) fn key(bucket: &str, key: &str, e: impl std::fmt::Display) -> Self {
        Self::Key {
            bucket: bucket.to_string(),
            key: key.to_string(),
            message: e.to_string(),
        }
    }
}
