//! Device faults: an offline device opens an incident held until it recovers.

use skynet_core::{
    FaultEvidence, GridId, IncidentChange, IncidentState, Observation, RiskEvent, RiskLevel,
    SourceRef,
};

use super::GridRiskEngine;
use super::incidents::{IncidentKey, OpenIncident};

/// The category of device-fault incidents' rules.
pub const DEVICE_FAULT_KIND: &str = "device_fault";
/// The level a device fault opens at: blue, an equipment matter for the owner, not a hazard.
const DEVICE_FAULT_LEVEL: RiskLevel = RiskLevel::IV;

impl GridRiskEngine {
    pub(super) fn fault(
        &mut self,
        obs: &Observation,
        fault: FaultEvidence,
        out: &mut Vec<RiskEvent>,
    ) {
        let key = IncidentKey {
            grid: obs.grid.clone(),
            category: obs.category.clone(),
            device: obs.source.id.clone(),
        };
        match fault {
            FaultEvidence::Recovered => {
                // Also a fault opened in another cell (the device was moved in the config).
                let keys: Vec<IncidentKey> = self
                    .faults()
                    .filter(|(k, _)| k.device == key.device && k.category == key.category)
                    .map(|(k, _)| k)
                    .collect();
                for k in keys {
                    if let Some(open) = self
                        .state
                        .cells
                        .get_mut(&k.grid)
                        .and_then(|c| c.open.get_mut(&k.in_cell()))
                    {
                        open.incident.last_seen = open.incident.last_seen.max(obs.at);
                    }
                    out.extend(self.close(
                        &k,
                        IncidentChange::Recovered,
                        IncidentState::Closed,
                        obs.at,
                    ));
                }
            }
            FaultEvidence::Offline { since } => {
                let known = self
                    .state
                    .cells
                    .get(&key.grid)
                    .is_some_and(|c| c.open.contains_key(&key.in_cell()));
                if known {
                    return;
                }
                let mut incident = self.first_revision(&key, obs, DEVICE_FAULT_LEVEL, since);
                incident.rule.kind = DEVICE_FAULT_KIND.into();
                tracing::warn!(incident = %incident.id, grid = %obs.grid, device = %obs.source.id, category = %obs.category, "device fault incident opened");
                out.push(RiskEvent::Incident(incident.clone()));
                self.insert_open(
                    &key,
                    OpenIncident {
                        incident,
                        changed: false,
                        last_revision_at: obs.at,
                        held: true,
                    },
                );
            }
        }
    }

    /// Every open device-fault incident, with its key.
    fn faults(&self) -> impl Iterator<Item = (IncidentKey, &OpenIncident)> + '_ {
        self.state.cells.iter().flat_map(|(grid, cell)| {
            cell.open
                .iter()
                .filter(|(_, o)| o.held)
                .map(move |((category, device), o)| {
                    (
                        IncidentKey {
                            grid: grid.clone(),
                            category: category.clone(),
                            device: device.clone(),
                        },
                        o,
                    )
                })
        })
    }

    /// The devices with an open fault incident, with its cell and category.
    pub(super) fn fault_list(&self) -> Vec<(SourceRef, GridId, String)> {
        let mut faults: Vec<(SourceRef, GridId, String)> = self
            .faults()
            .map(|(key, open)| {
                (
                    SourceRef {
                        kind: open.incident.source(),
                        id: key.device,
                    },
                    key.grid,
                    key.category,
                )
            })
            .collect();
        faults.sort();
        faults
    }
}
