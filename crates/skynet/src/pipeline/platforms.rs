//! `GET /platforms` on the metrics listener: one report per `[[platforms]]` entry, made when
//! asked, from the platform's health entry (`platform <id>`), its lower platforms and its
//! catalog. `skynet platforms list` prints it.

use std::collections::HashMap;
use std::sync::PoisonError;

use serde_json::{Value, json};
use skynet_core::Health;

use crate::config::{CameraSpec, PlatformSpec};

/// Where a channel placed by something other than the config is (its grid cell) and what
/// placed it (`placed_by`), by channel id; `None`: not placed that way.
pub(crate) type Placement<'a> = &'a dyn Fn(&str) -> Option<(String, &'static str)>;

/// Registers `platform`'s report in `/platforms`. `cameras`: the config's cameras (a
/// platform's analysed channels are among them, by channel id).
pub(crate) fn register_report(
    services: &super::services::Services,
    platform: &PlatformSpec,
    cameras: &[CameraSpec],
    placed: &super::catalog::Placed,
) {
    let platform = platform.clone();
    let health = services.health.clone();
    let config_cameras = config_placed(&platform, cameras);
    let placed = placed.clone();
    services.platforms.register(
        platform.config.id().to_string(),
        Box::new(move || {
            // The channels placed while running by their catalog position.
            let placed = placed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let by_catalog = |id: &str| {
                placed
                    .get(id)
                    .map(|grid| (grid.as_str().to_string(), "catalog"))
            };
            platform_report(&platform, &health, &config_cameras, &by_catalog)
        }),
    );
}

/// The grid cell of each of `platform`'s channels that the config places (a camera of
/// `cameras` with the channel's id).
pub(crate) fn config_placed(
    platform: &PlatformSpec,
    cameras: &[CameraSpec],
) -> HashMap<String, String> {
    platform
        .config
        .channels()
        .iter()
        .filter_map(|channel| {
            let camera = cameras.iter().find(|c| c.id.as_str() == channel.id)?;
            Some((channel.id.clone(), camera.grid.as_str().to_string()))
        })
        .collect()
}

/// One platform's report: `{id, kind, listen, owner, state, reason, lower_platforms_online,
/// channels: [{id, name, lower, status, wanted, analysed, grid, placed_by}]}`. The channels
/// are the lower platforms' latest catalogs' cameras and, after them, the configured
/// channels no catalog lists (yet) (`status: "unlisted"`). `config_cameras`: the grid of each
/// channel the config places (`placed_by: "config"`); `extra`: any other placement.
pub(crate) fn platform_report(
    platform: &PlatformSpec,
    health: &Health,
    config_cameras: &HashMap<String, String>,
    extra: Placement<'_>,
) -> Value {
    let p = &platform.config;
    let status = health.state(&skynet_ingest::gb28181::health_name(p.id()), "platform");
    let placement = |id: &str| -> (Option<String>, Option<&'static str>) {
        match config_cameras.get(id) {
            Some(grid) => (Some(grid.clone()), Some("config")),
            None => extra(id).map_or((None, None), |(grid, by)| (Some(grid), Some(by))),
        }
    };
    let channel = |id: &str, name: Option<&str>, lower: Option<&str>, status: &str, wanted| {
        let (grid, placed_by) = placement(id);
        json!({
            "id": id,
            "name": name,
            "lower": lower,
            "status": status,
            "wanted": wanted,
            "analysed": grid.is_some(),
            "grid": grid,
            "placed_by": placed_by,
        })
    };
    let catalog = p.catalog();
    let mut channels: Vec<Value> = catalog
        .iter()
        .map(|c| channel(&c.id, Some(&c.name), Some(&c.lower), c.status, c.wanted))
        .collect();
    channels.extend(
        p.channels()
            .iter()
            .filter(|configured| !catalog.iter().any(|c| c.id == configured.id))
            .map(|configured| channel(&configured.id, None, None, "unlisted", true)),
    );
    json!({
        "id": p.id(),
        "kind": platform.kind,
        "listen": p.listen(),
        "owner": p.owner().to_string(),
        "all_channels": p.all_channels(),
        "state": status.as_ref().map(|s| s.state),
        "reason": status.as_ref().and_then(|s| s.reason.clone()),
        "lower_platforms_online": p.live().lower_online,
        "channels": channels,
    })
}
