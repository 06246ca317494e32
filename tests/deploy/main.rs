//! The deployment files under deploy/, run or checked as they are committed:
//! - `three_level`: the city hub and two district leaf nodes of deploy/three-level/, each a
//!   nats-server of the test's own on spare ports (stopped by its pid), with JetStream domains,
//!   the city's stream sourcing the districts', and a cut link that catches up;
//! - `three_level_console`: the same three levels with a `--role console` skynet process on
//!   the hub, listing the districts' incidents by district and catching up after a cut link;
//! - `manifests`: deploy/kubernetes/*.yaml against Kubernetes' schemas (kubernetes-validate),
//!   and the city's roles in them (skynet-city.yaml);
//! - `compose`: deploy/compose-city.yaml's roles and NATS cluster, deploy/compose.yaml's single
//!   node, and deploy/city.toml (the roles' one config) by `skynet check`;
//! - `nats_users`: deploy/nats/nats-cluster.conf's user per role on a nats-server of the
//!   test's own: each role may do its work (grid risk included) and nothing of another's.

#[path = "../common/mod.rs"]
mod common;

mod compose;
mod manifests;
mod nats_users;
mod three_level;
mod three_level_console;
