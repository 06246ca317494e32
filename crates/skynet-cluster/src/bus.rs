//! The bus between roles: what edges publish and scorers consume, on JetStream.
//!
//! - `skynet.observations.<grid>`: an observation (the public JSON form,
//!   `schemas/observation.schema.json`) an edge's cameras and camera rules made.
//! - `skynet.readings.<grid>.<sensor>`: a sensor reading an edge validated (the broker is
//!   acknowledged only after JetStream's ack); the scorer owning the cell runs its rules.
//!
//! Both go to one stream, [`OBSERVATIONS_STREAM`], so a cell's camera and sensor evidence
//! keep one order. Each message carries a `Nats-Msg-Id`, so a publish retried after a lost
//! ack is stored once. Scorers keep each owned cell's state in [`CELLS_BUCKET`]
//! (`cell.<grid>`: the stream sequence it is saved at, and the engine's rows), and a cell's
//! new owner replays the stream from there.

use std::time::Duration;

use async_nats::jetstream;

use crate::{ClusterConfig, ClusterError};

/// The stream of observations and readings.
pub const OBSERVATIONS_STREAM: &str = "SKYNET_OBSERVATIONS";
/// Subjects prefix of observations: `skynet.observations.<grid>`.
pub const OBSERVATIONS_PREFIX: &str = "skynet.observations";
/// Subjects prefix of readings: `skynet.readings.<grid>.<sensor>`.
pub const READINGS_PREFIX: &str = "skynet.readings";
/// Scorers' saved cell state: `cell.<grid>`.
pub const CELLS_BUCKET: &str = "skynet_cells";
/// How long the stream keeps what it holds: the longest a cell's state may be behind and
/// still be replayed, and the most a scorer can be down and catch up.
pub const OBSERVATIONS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// A message re-published within this window (the same `Nats-Msg-Id`) is stored once: it
/// covers a publish retried after a lost ack, and an edge's failover.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// The subject of an observation in `grid`.
pub fn observation_subject(grid: &str) -> String {
    format!("{OBSERVATIONS_PREFIX}.{grid}")
}

/// The subject of a reading of `sensor` in `grid`.
pub fn reading_subject(grid: &str, sensor: &str) -> String {
    format!("{READINGS_PREFIX}.{grid}.{sensor}")
}

/// The KV key of a cell's saved state.
pub fn cell_key(grid: &str) -> String {
    format!("cell.{grid}")
}

/// Opens the observation stream, creating it when missing (R = `[cluster] replicas`). An
/// existing stream is used as it is: the deploy scripts may have made it with their own
/// limits.
pub async fn observation_stream(
    client: &async_nats::Client,
    config: &ClusterConfig,
) -> Result<jetstream::stream::Stream, ClusterError> {
    let js = jetstream::new(client.clone());
    let stream = jetstream::stream::Config {
        name: OBSERVATIONS_STREAM.into(),
        subjects: vec![
            format!("{OBSERVATIONS_PREFIX}.>"),
            format!("{READINGS_PREFIX}.>"),
        ],
        max_age: OBSERVATIONS_MAX_AGE,
        duplicate_window: DUPLICATE_WINDOW,
        // An observation is a few KiB of JSON; refuse what no edge makes.
        max_message_size: 256 * 1024,
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.replicas,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    };
    crate::membership::get_or_create_stream(&js, stream)
        .await
        .map_err(|message| ClusterError::Stream {
            stream: OBSERVATIONS_STREAM.into(),
            message,
        })
}

/// Opens the scorers' cell-state bucket (no age: a cell's state lasts until its next save).
pub async fn cells_bucket(
    client: &async_nats::Client,
    config: &ClusterConfig,
) -> Result<jetstream::kv::Store, ClusterError> {
    crate::membership::open_bucket_sized(
        client,
        CELLS_BUCKET,
        Duration::ZERO,
        config.replicas,
        // A cell's rows: its evidence and incidents, bounded by the engine's limits.
        8 * 1024 * 1024,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_keys() {
        assert_eq!(observation_subject("G-0201"), "skynet.observations.G-0201");
        assert_eq!(
            reading_subject("G-0201", "gas-07"),
            "skynet.readings.G-0201.gas-07"
        );
        assert_eq!(cell_key("G-0201"), "cell.G-0201");
    }
}
