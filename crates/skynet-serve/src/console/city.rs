//! What a city console shows beyond a single node's: each incident's district (the
//! `source` of its events, `skynet/<cluster name>`), and the cluster's health (the live
//! members of each role, and which edge runs each camera), which the console role's
//! projection keeps up to date.

use std::collections::{BTreeMap, HashMap};
use std::sync::PoisonError;

use chrono::{DateTime, Utc};
use serde::Serialize;
use skynet_core::Incident;

use super::live::Console;
use super::views::IncidentView;

/// The cluster as the console last saw it (`Cluster` in openapi.json).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterHealth {
    /// The cluster's name (`[cluster] name`): the district this console's own events carry.
    pub name: String,
    /// This console's node name.
    pub node: String,
    /// The live members of each role (`edge`, `scorer`, `console`), names sorted.
    pub members: BTreeMap<String, Vec<String>>,
    /// Members that vanished without leaving (their heartbeat expired), per role.
    pub crashed: BTreeMap<String, Vec<String>>,
    /// Per camera id: the node holding its lease (`camera.<id>` in `skynet_leases`);
    /// `None` while no edge runs it.
    pub cameras: BTreeMap<String, Option<String>>,
    /// When this was read.
    pub at: Option<DateTime<Utc>>,
}

impl Console {
    /// The cluster's health, from the console role's watch of the membership and leases.
    pub fn set_cluster(&self, health: ClusterHealth) {
        *self.cluster.write().unwrap_or_else(PoisonError::into_inner) = Some(health);
    }

    /// The cluster's health; `None` on a single node.
    pub fn cluster(&self) -> Option<ClusterHealth> {
        self.cluster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The node running `camera` as the leases say, when this console is a cluster's.
    pub(crate) fn camera_node(&self, camera: &str) -> Option<String> {
        self.cluster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .and_then(|c| c.cameras.get(camera).cloned().flatten())
    }

    /// The district of one incident, from the outbox (`None` for one stored before districts
    /// were kept, or when it cannot be read).
    pub(crate) fn district_of(&self, id: &str) -> Option<String> {
        match self.outbox.with(|o| o.incident_districts(&[id])) {
            Ok(mut districts) => districts.remove(id),
            Err(e) => {
                tracing::debug!(incident = %id, error = %e, "an incident's district could not be read");
                None
            }
        }
    }

    /// The views of a page of incidents, their districts read in one query.
    pub(crate) fn incident_views(&self, incidents: &[Incident]) -> Vec<IncidentView> {
        let ids: Vec<&str> = incidents.iter().map(|i| i.id.as_str()).collect();
        let mut districts: HashMap<String, String> =
            match self.outbox.with(|o| o.incident_districts(&ids)) {
                Ok(districts) => districts,
                Err(e) => {
                    tracing::warn!(error = %e, "the incidents' districts could not be read");
                    HashMap::new()
                }
            };
        incidents
            .iter()
            .map(|i| self.incident_view_in(i, districts.remove(&i.id)))
            .collect()
    }
}
