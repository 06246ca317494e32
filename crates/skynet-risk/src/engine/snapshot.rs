//! The persisted state: what the engine remembers, its snapshot as JSON text, and the rows
//! of it that changed since the last commit.
//!
//! Every mutable access to a cell or an id goes through [`Tracked`], which remembers the
//! key: a commit then writes only those rows, however many incidents are open, and no
//! mutation path can be forgotten (there is no other way to get a `&mut` into the maps).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::ops::Deref;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use skynet_core::{GridId, IncidentStatus};

use super::incidents::{IdState, IncidentKey};
use super::score::CellState;
use super::{GridRiskEngine, RiskError};
use crate::state::{EngineChanges, EngineRows};

/// Everything the engine remembers, as the snapshot stores it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) clock: Option<DateTime<Utc>>,
    pub(super) last_sweep: Option<DateTime<Utc>>,
    #[serde(with = "pairs")]
    pub(super) cells: Tracked<GridId, CellState>,
    /// Kept when a cell is forgotten, so an id is never given twice.
    #[serde(with = "pairs")]
    pub(super) ids: Tracked<IncidentKey, IdState>,
}

/// A map that remembers which keys were handed out mutably (or inserted, or removed) since
/// the last [`take_changed`](Self::take_changed). Reads go through `Deref`.
#[derive(Debug, Clone)]
pub(super) struct Tracked<K, V> {
    map: HashMap<K, V>,
    changed: HashSet<K>,
}

impl<K, V> Default for Tracked<K, V> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            changed: HashSet::new(),
        }
    }
}

impl<K, V> Deref for Tracked<K, V> {
    type Target = HashMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<K: Hash + Eq + Clone + Ord, V> Tracked<K, V> {
    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let value = self.map.get_mut(key)?;
        if !self.changed.contains(key) {
            self.changed.insert(key.clone());
        }
        Some(value)
    }

    /// A mutable value that is NOT marked changed: only for fields the snapshot does not
    /// store (a cell's cached score).
    pub(super) fn get_mut_unpersisted(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    pub(super) fn entry(&mut self, key: K) -> Entry<'_, K, V> {
        self.changed.insert(key.clone());
        self.map.entry(key)
    }

    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.changed.insert(key.clone());
        self.map.insert(key, value)
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let removed = self.map.remove(key)?;
        self.changed.insert(key.clone());
        Some(removed)
    }

    /// Every value, mutably: marks every key.
    #[allow(dead_code)] // for a mutation path that touches every cell
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.changed.extend(self.map.keys().cloned());
        self.map.values_mut()
    }

    /// Every entry, mutably: marks every key.
    #[allow(dead_code)] // for a mutation path that touches every cell
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.changed.extend(self.map.keys().cloned());
        self.map.iter_mut()
    }

    /// Marks every key (after a restore from a whole snapshot, whose rows are not stored).
    pub(super) fn mark_all(&mut self) {
        self.changed.extend(self.map.keys().cloned());
    }

    /// The keys changed since the last call, in key order (present or removed since).
    pub(super) fn take_changed(&mut self) -> Vec<K> {
        let mut keys: Vec<K> = self.changed.drain().collect();
        keys.sort_unstable();
        keys
    }
}

impl<K: Hash + Eq, V> FromIterator<(K, V)> for Tracked<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self {
            map: iter.into_iter().collect(),
            changed: HashSet::new(),
        }
    }
}

impl<K: Ord + Hash + Eq, V> pairs::Map<K, V> for Tracked<K, V> {
    fn entries(&self) -> Vec<(&K, &V)> {
        pairs::Map::entries(&self.map)
    }
    fn len(&self) -> usize {
        self.map.len()
    }
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

/// The engine's small global part, stored beside its rows (cells and ids): what
/// [`RiskEngine::take_changes`](super::RiskEngine::take_changes) writes on every commit.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    version: u32,
    node: String,
    clock: Option<DateTime<Utc>>,
    last_sweep: Option<DateTime<Utc>>,
}

/// A row's key or body that does not parse.
fn row_error(table: &'static str, key: &str, source: serde_json::Error) -> RiskError {
    RiskError::Row {
        table,
        key: key.chars().take(120).collect(),
        source,
    }
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

    /// The rows changed since the last call (or since the restore), and the global part.
    pub(super) fn changed_rows(&mut self) -> EngineChanges {
        let meta = Meta {
            version: SNAPSHOT_VERSION,
            node: self.config.node.clone(),
            clock: self.state.clock,
            last_sweep: self.state.last_sweep,
        };
        let cells = self
            .state
            .cells
            .take_changed()
            .into_iter()
            .map(|grid| {
                let body = self.state.cells.get(&grid).map(json);
                (grid.to_string(), body)
            })
            .collect();
        let ids = self
            .state
            .ids
            .take_changed()
            .into_iter()
            .map(|key| {
                let body = self.state.ids.get(&key).map(json);
                (json(&key), body)
            })
            .collect();
        EngineChanges {
            meta: json(&meta),
            cells,
            ids,
        }
    }

    /// Restores the rows written by [`changed_rows`](Self::changed_rows) (on a fresh engine).
    pub(super) fn read_rows(&mut self, rows: &EngineRows) -> Result<(), RiskError> {
        self.check_fresh()?;
        let found: Version = serde_json::from_str(&rows.meta).map_err(RiskError::SnapshotFormat)?;
        check_version(found)?;
        let meta: Meta = serde_json::from_str(&rows.meta).map_err(RiskError::SnapshotFormat)?;
        let mut cells = HashMap::with_capacity(rows.cells.len());
        for (grid, body) in &rows.cells {
            let cell: CellState =
                serde_json::from_str(body).map_err(|e| row_error("state_cells", grid, e))?;
            cells.insert(GridId::new(grid), cell);
        }
        let mut ids = HashMap::with_capacity(rows.ids.len());
        for (key, body) in &rows.ids {
            let parsed: IncidentKey =
                serde_json::from_str(key).map_err(|e| row_error("state_ids", key, e))?;
            let id: IdState =
                serde_json::from_str(body).map_err(|e| row_error("state_ids", key, e))?;
            ids.insert(parsed, id);
        }
        let state = State {
            clock: meta.clock,
            last_sweep: meta.last_sweep,
            cells: cells.into_iter().collect(),
            ids: ids.into_iter().collect(),
        };
        self.install(&meta.node, state)
    }

    fn check_fresh(&self) -> Result<(), RiskError> {
        if self.state.cells.is_empty() && self.state.ids.is_empty() {
            return Ok(());
        }
        Err(RiskError::NotFresh {
            cells: self.state.cells.len(),
            open: self.open_count,
        })
    }

    /// Restores a snapshot taken by `write_snapshot` (on a fresh engine, before any
    /// observation). Its rows are not stored anywhere yet: all of them count as changed.
    pub(super) fn read_snapshot(&mut self, snapshot: &RawValue) -> Result<(), RiskError> {
        self.check_fresh()?;
        // The version first, so an old or newer snapshot says so instead of failing on a
        // field it does not know.
        let found: Version =
            serde_json::from_str(snapshot.get()).map_err(RiskError::SnapshotFormat)?;
        check_version(found)?;
        let snapshot: Snapshot =
            serde_json::from_str(snapshot.get()).map_err(RiskError::SnapshotFormat)?;
        self.install(&snapshot.node, snapshot.state)?;
        self.state.cells.mark_all();
        self.state.ids.mark_all();
        Ok(())
    }

    /// Checks a restored state and takes it.
    fn install(&mut self, node: &str, mut state: State) -> Result<(), RiskError> {
        let invalid = RiskError::SnapshotInvalid;
        let mut open_count = 0;
        for (grid, cell) in state.cells.iter() {
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
                if !state.ids.contains_key(&key) {
                    // Without it a reopened incident of this key could be given an old id.
                    return Err(invalid(format!(
                        "incident {} has no id bookkeeping",
                        open.incident.id
                    )));
                }
                open_count += 1;
            }
        }
        if node != self.config.node {
            tracing::warn!(snapshot = %node, node = %self.config.node, "risk snapshot was taken under another node name");
        }
        // The cached scores are not stored: they follow from the held evidence at the clock.
        if let Some(now) = state.clock {
            let grids: Vec<GridId> = state.cells.keys().cloned().collect();
            for grid in grids {
                let score = state
                    .cells
                    .get(&grid)
                    .map_or(0.0, |cell| self.cell_score(&grid, cell, now));
                if let Some(cell) = state.cells.get_mut_unpersisted(&grid) {
                    cell.score = score;
                }
            }
        }
        state.cells.take_changed();
        state.ids.take_changed();
        self.state = state;
        self.open_count = open_count;
        self.set_open_gauge();
        Ok(())
    }
}

#[derive(Deserialize)]
struct Version {
    version: Option<serde_json::Value>,
}

fn check_version(found: Version) -> Result<(), RiskError> {
    match found.version {
        Some(v) if v.as_u64() == Some(u64::from(SNAPSHOT_VERSION)) => Ok(()),
        found => Err(RiskError::SnapshotVersion {
            found: found.map_or_else(|| "(none)".into(), |v| v.to_string()),
            supported: SNAPSHOT_VERSION,
        }),
    }
}

/// A row's JSON text. Only structs, sequences and string-keyed maps: serializing cannot fail.
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("risk state types serialize to JSON")
}
