//! The persisted state: what the engine remembers, and its snapshot as JSON text.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use skynet_core::{GridId, IncidentStatus};

use super::incidents::{IdState, IncidentKey};
use super::score::CellState;
use super::{GridRiskEngine, RiskError};

/// Everything the engine remembers, as the snapshot stores it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) clock: Option<DateTime<Utc>>,
    pub(super) last_sweep: Option<DateTime<Utc>>,
    #[serde(with = "pairs")]
    pub(super) cells: HashMap<GridId, CellState>,
    /// Kept when a cell is forgotten, so an id is never given twice.
    #[serde(with = "pairs")]
    pub(super) ids: HashMap<IncidentKey, IdState>,
}

/// Maps as JSON arrays of `[key, value]` pairs, in key order (so a snapshot of the same
/// state is the same text, whatever the map's own order).
pub(super) mod pairs {
    use std::collections::{BTreeMap, HashMap};
    use std::hash::Hash;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// The maps the engine stores.
    pub trait Map<K, V>: FromIterator<(K, V)> {
        fn entries(&self) -> Vec<(&K, &V)>;
        fn len(&self) -> usize;
    }

    impl<K: Ord, V> Map<K, V> for BTreeMap<K, V> {
        fn entries(&self) -> Vec<(&K, &V)> {
            self.iter().collect()
        }
        fn len(&self) -> usize {
            BTreeMap::len(self)
        }
    }

    impl<K: Ord + Hash + Eq, V> Map<K, V> for HashMap<K, V> {
        fn entries(&self) -> Vec<(&K, &V)> {
            let mut entries: Vec<(&K, &V)> = self.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            entries
        }
        fn len(&self) -> usize {
            HashMap::len(self)
        }
    }

    pub fn serialize<S, M, K, V>(map: &M, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        M: Map<K, V>,
        K: Serialize,
        V: Serialize,
    {
        s.collect_seq(map.entries())
    }

    pub fn deserialize<'de, D, M, K, V>(d: D) -> Result<M, D::Error>
    where
        D: Deserializer<'de>,
        M: Map<K, V>,
        K: Deserialize<'de>,
        V: Deserialize<'de>,
    {
        let pairs = Vec::<(K, V)>::deserialize(d)?;
        let n = pairs.len();
        let map: M = pairs.into_iter().collect();
        if map.len() != n {
            return Err(serde::de::Error::custom("a key appears twice"));
        }
        Ok(map)
    }
}

/// Bumped whenever the snapshot's shape changes incompatibly.
const SNAPSHOT_VERSION: u32 = 3;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Snapshot {
    /// Checked on its own before the rest is read.
    #[allow(dead_code)]
    version: u32,
    node: String,
    state: State,
}

/// [`Snapshot`] as written, borrowing the state instead of copying it.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u32,
    node: &'a str,
    state: &'a State,
}

impl GridRiskEngine {
    /// Everything needed to go on after a restart, as JSON text.
    pub(super) fn write_snapshot(&self) -> Box<RawValue> {
        let snapshot = SnapshotRef {
            version: SNAPSHOT_VERSION,
            node: &self.config.node,
            state: &self.state,
        };
        // Only structs, sequences and string-keyed maps: serializing cannot fail.
        serde_json::value::to_raw_value(&snapshot).expect("risk snapshot types serialize to JSON")
    }

    /// Restores a snapshot taken by `write_snapshot` (on a fresh engine, before any
    /// observation).
    pub(super) fn read_snapshot(&mut self, snapshot: &RawValue) -> Result<(), RiskError> {
        if !(self.state.cells.is_empty() && self.state.ids.is_empty()) {
            return Err(RiskError::NotFresh {
                cells: self.state.cells.len(),
                open: self.open_count,
            });
        }
        // The version first, so an old or newer snapshot says so instead of failing on a
        // field it does not know.
        #[derive(Deserialize)]
        struct Version {
            version: Option<serde_json::Value>,
        }
        let found: Version =
            serde_json::from_str(snapshot.get()).map_err(RiskError::SnapshotFormat)?;
        match found.version {
            Some(v) if v.as_u64() == Some(u64::from(SNAPSHOT_VERSION)) => {}
            found => {
                return Err(RiskError::SnapshotVersion {
                    found: found.map_or_else(|| "(none)".into(), |v| v.to_string()),
                    supported: SNAPSHOT_VERSION,
                });
            }
        }
        let snapshot: Snapshot =
            serde_json::from_str(snapshot.get()).map_err(RiskError::SnapshotFormat)?;
        let invalid = RiskError::SnapshotInvalid;
        let mut open_count = 0;
        for (grid, cell) in &snapshot.state.cells {
            for h in cell.held.values().flat_map(BTreeMap::values) {
                if !(0.0..=1.0).contains(&h.score) {
                    return Err(invalid(format!("cell `{grid}` holds score {}", h.score)));
                }
            }
            for ((category, device), open) in &cell.open {
                if open.incident.status == IncidentStatus::Closed || open.incident.revision == 0 {
                    return Err(invalid(format!(
                        "incident {} is listed as open but is {:?} at revision {}",
                        open.incident.id, open.incident.status, open.incident.revision
                    )));
                }
                let key = IncidentKey {
                    grid: grid.clone(),
                    category: category.clone(),
                    device: device.clone(),
                };
                if !snapshot.state.ids.contains_key(&key) {
                    // Without it a reopened incident of this key could be given an old id.
                    return Err(invalid(format!(
                        "incident {} has no id bookkeeping",
                        open.incident.id
                    )));
                }
                open_count += 1;
            }
        }
        if snapshot.node != self.config.node {
            tracing::warn!(snapshot = %snapshot.node, node = %self.config.node, "risk snapshot was taken under another node name");
        }
        self.state = snapshot.state;
        self.open_count = open_count;
        self.set_open_gauge();
        Ok(())
    }
}
