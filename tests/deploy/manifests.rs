//! deploy/kubernetes/*.yaml against Kubernetes' own schemas, with kubernetes-validate (PyPI,
//! pinned in scripts/setup.sh). Its wheel bundles the schemas, so it runs offline. Strict:
//! a field the schema does not know is an error, and so is a kind it has no schema for.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::repo;

/// The directory scripts/setup.sh installs kubernetes-validate into (with PyYAML beside it),
/// for PYTHONPATH; None when it is not installed.
fn kubernetes_validate_dir() -> Option<PathBuf> {
    let python = skynet_core::config::data_dir().join("python");
    std::fs::read_dir(&python)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kubernetes-validate-"))
                && p.join(".complete").exists()
        })
        .max()
}

/// Every YAML document of `path` as JSON, read by PyYAML (installed with kubernetes-validate
/// by scripts/setup.sh, so no YAML crate is needed); None when no PyYAML is there, which CI
/// does not allow. Anchors and merge keys (`<<`, used by the compose files) are resolved.
pub fn yaml_documents(path: &Path) -> Option<Vec<serde_json::Value>> {
    const PROGRAM: &str = "import json, sys, yaml\n\
        json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)";
    let mut command = Command::new("python3");
    if let Some(dir) = kubernetes_validate_dir() {
        command.env("PYTHONPATH", dir);
    }
    let out = command.args(["-c", PROGRAM]).arg(path).output().ok()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named 'yaml'") {
            assert!(
                std::env::var_os("CI").is_none_or(|v| v.is_empty() || v == "false"),
                "PyYAML is not installed: run scripts/setup.sh"
            );
            eprintln!("SKIPPED: PyYAML is not installed (scripts/setup.sh installs it)");
            return None;
        }
        panic!("{} is not valid YAML:\n{stderr}", path.display());
    }
    Some(serde_json::from_slice(&out.stdout).expect("PyYAML's JSON"))
}

/// The tool as scripts/setup.sh installs it (`python3 -m kubernetes_validate` with its own
/// directory on PYTHONPATH), else a `kubernetes-validate` on PATH; None when neither is there.
fn validator() -> Option<Command> {
    if let Some(dir) = kubernetes_validate_dir() {
        let mut command = Command::new("python3");
        command
            .env("PYTHONPATH", dir)
            .args(["-m", "kubernetes_validate"]);
        return Some(command);
    }
    let on_path = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    on_path.then(|| Command::new("kubernetes-validate"))
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let manifests: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    assert!(!manifests.is_empty(), "no manifests in deploy/kubernetes");
    let Some(mut command) = validator() else {
        // CI installs it (scripts/setup.sh); a developer without it is told, not failed.
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty() || v == "false"),
            "kubernetes-validate is not installed: run scripts/setup.sh"
        );
        eprintln!("SKIPPED: kubernetes-validate is not installed (scripts/setup.sh installs it)");
        return;
    };
    let out = command
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate runs");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // A kind or apiVersion it has no schema for is only a warning to the tool (exit 0): here,
    // with no custom resources in the manifests, it is a misspelling, so it fails too.
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("ERROR") || l.starts_with("WARN"))
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "the manifests do not validate:\n{report}"
    );
    let passed = report
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert!(passed > 0, "no resource was checked:\n{report}");
    eprintln!("{report}");
}

/// A Secret's value written in a manifest is the same in every cluster that applies it, and
/// known to everyone who reads the repository: the manifests reference Secrets, created
/// with `kubectl create secret` (deploy/README.md), and never hold one.
#[test]
fn the_kubernetes_manifests_hold_no_secret_value() {
    for entry in std::fs::read_dir(repo().join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if !path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for document in text.split("\n---") {
            let is_secret = document.lines().any(|l| l.trim_end() == "kind: Secret");
            let has_value = document
                .lines()
                .any(|l| l.starts_with("data:") || l.starts_with("stringData:"));
            assert!(
                !(is_secret && has_value),
                "{} holds a Secret with a value:\n{document}",
                path.display()
            );
        }
        assert!(
            !text.contains("REPLACE-WITH"),
            "{} holds a placeholder token",
            path.display()
        );
    }
}

/// The resource of `kind` named `name` among `docs`.
fn resource<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string"))
        .collect()
}

/// The pod template's container named `skynet` (or `nats`).
fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in {}", workload["metadata"]["name"]))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name} in {}", container["name"]))
}

/// The city's roles on Kubernetes (deploy/kubernetes/skynet-city.yaml): each role started
/// with its `--role` from the one config and as the NATS user of its role, edges a
/// StatefulSet (stable names: one MQTT session each), scorers a StatefulSet with a volume for
/// the outbox, one console, scorers and console with `[cases] secret` from a Secret, NATS a
/// JetStream cluster of three with the routes to all and every role's password,
/// `[cluster] replicas = 3`, and the probes on the metrics listener. The ConfigMaps hold the
/// committed files exactly.
#[test]
fn the_city_manifest_runs_each_role_over_a_3_node_nats_cluster() {
    let Some(docs) = yaml_documents(&repo().join("deploy/kubernetes/skynet-city.yaml")) else {
        return;
    };
    fn role_args(role: &str) -> Vec<&str> {
        vec!["run", "--config", "/etc/skynet/city.toml", "--role", role]
    }

    let edge = resource(&docs, "StatefulSet", "skynet-edge");
    let scorer = resource(&docs, "StatefulSet", "skynet-scorer");
    let console = resource(&docs, "Deployment", "skynet-console");
    for (workload, role) in [(edge, "edge"), (scorer, "scorer"), (console, "console")] {
        let c = container(workload, "skynet");
        assert_eq!(strings(&c["args"]), role_args(role), "{role}");
        // Each process its own member key: the pod's name.
        assert_eq!(
            env(c, "SKYNET_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name",
            "{role}"
        );
        assert_eq!(
            env(c, "SKYNET_CLUSTER_URL")["value"],
            "nats://nats.skynet.svc:4222",
            "{role}"
        );
        // The NATS user of its role, its password from the Secret's key of that name.
        assert_eq!(env(c, "SKYNET_NATS_USER")["value"], role);
        let password = &env(c, "SKYNET_NATS_PASSWORD")["valueFrom"]["secretKeyRef"];
        assert_eq!(password["name"], "skynet-nats", "{role}");
        assert_eq!(password["key"], role, "{role}");
        // [cases] secret from a Secret where status changes are signed or checked.
        let cases = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "SKYNET_CASES_SECRET");
        if role == "edge" {
            assert!(cases.is_none(), "an edge takes no status events");
        } else {
            let cases = cases.unwrap_or_else(|| panic!("{role} has no SKYNET_CASES_SECRET"));
            assert!(
                cases.get("value").is_none(),
                "{role}: a value in the manifest"
            );
            assert_eq!(
                cases["valueFrom"]["secretKeyRef"],
                serde_json::json!({ "name": "skynet-cases", "key": "secret" }),
                "{role}"
            );
        }
        let readiness = c["readinessProbe"].to_string();
        assert!(readiness.contains("/readyz"), "{role}: {readiness}");
        assert!(readiness.contains("9464"), "{role}: {readiness}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{role}");
        assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics", "{role}");
        let ports: Vec<&Value> = c["ports"].as_array().unwrap().iter().collect();
        assert!(
            ports
                .iter()
                .any(|p| p["name"] == "metrics" && p["containerPort"] == 9464),
            "{role}"
        );
        let mounts = c["volumeMounts"].to_string();
        assert!(mounts.contains("/etc/skynet"), "{role}");
        assert!(mounts.contains("/var/lib/skynet"), "{role}");
    }
    // Edges scale freely (`kubectl scale statefulset`), started and stopped independently,
    // each pod under a stable name: its MQTT client id skynet-<pod name> names one
    // persistent session, taken over by the pod that replaces it.
    assert!(edge["spec"]["replicas"].as_u64().unwrap() >= 2);
    assert_eq!(edge["spec"]["serviceName"], "skynet-edge");
    assert_eq!(edge["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(
        resource(&docs, "Service", "skynet-edge")["spec"]["clusterIP"],
        "None"
    );
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "skynet-edge")
    );
    // Scorers: stable names and a volume each for the outbox.
    assert_eq!(scorer["spec"]["serviceName"], "skynet-scorer");
    let claims = scorer["spec"]["volumeClaimTemplates"].as_array().unwrap();
    assert!(claims.iter().any(|c| c["metadata"]["name"] == "data"));
    assert!(
        container(scorer, "skynet")["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "data" && m["mountPath"] == "/var/lib/skynet")
    );
    let headless = resource(&docs, "Service", "skynet-scorer");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    // One console.
    assert_eq!(console["spec"]["replicas"], 1);
    assert_eq!(
        env(container(console, "skynet"), "SKYNET_NATS_USER")["value"],
        "console"
    );

    // NATS: three nodes of the committed cluster config, each its name and all the routes.
    let nats = resource(&docs, "StatefulSet", "nats");
    assert_eq!(nats["spec"]["replicas"], 3);
    assert_eq!(nats["spec"]["serviceName"], "nats");
    assert_eq!(
        resource(&docs, "Service", "nats")["spec"]["clusterIP"],
        "None"
    );
    let args = strings(&container(nats, "nats")["args"]);
    let after = |flag: &str| {
        let i = args
            .iter()
            .position(|a| *a == flag)
            .unwrap_or_else(|| panic!("nats has no {flag}: {args:?}"));
        args[i + 1]
    };
    assert_eq!(after("-c"), "/etc/nats/nats-server.conf");
    assert_eq!(after("--server_name"), "$(POD_NAME)");
    assert_eq!(after("-sd"), "/data");
    let routes: Vec<&str> = after("--routes").split(',').collect();
    assert_eq!(
        routes,
        (0..3)
            .map(|i| format!("nats://nats-{i}.nats.skynet.svc:6222"))
            .collect::<Vec<_>>()
    );
    assert!(
        nats["spec"]["volumeClaimTemplates"].as_array().unwrap()[0]["metadata"]["name"] == "data"
    );
    // Every user's password of the committed conf, each from its own key of the Secret.
    let nats_container = container(nats, "nats");
    for (var, key) in [
        ("SKYNET_EDGE_NATS_PASSWORD", "edge"),
        ("SKYNET_SCORER_NATS_PASSWORD", "scorer"),
        ("SKYNET_CONSOLE_NATS_PASSWORD", "console"),
        ("CASE_SYSTEM_NATS_PASSWORD", "case-system"),
    ] {
        assert_eq!(
            env(nats_container, var)["valueFrom"]["secretKeyRef"],
            serde_json::json!({ "name": "skynet-nats", "key": key }),
            "{var}"
        );
    }
    let nats_conf = resource(&docs, "ConfigMap", "nats-cluster-config");
    assert_eq!(
        nats_conf["data"]["nats-server.conf"].as_str().unwrap(),
        std::fs::read_to_string(repo().join("deploy/nats/nats-cluster.conf")).unwrap(),
        "the ConfigMap's nats-server.conf is deploy/nats/nats-cluster.conf"
    );

    // The one config: deploy/city.toml, whose buckets and stream have three replicas.
    let city = resource(&docs, "ConfigMap", "skynet-city-config");
    let toml_text = city["data"]["city.toml"].as_str().unwrap();
    assert_eq!(
        toml_text,
        std::fs::read_to_string(repo().join("deploy/city.toml")).unwrap(),
        "the ConfigMap's city.toml is deploy/city.toml"
    );
    assert_eq!(
        city["data"]["city-grids.geojson"].as_str().unwrap(),
        std::fs::read_to_string(repo().join("configs/city-grids.geojson")).unwrap()
    );
    let parsed: toml::Value = toml::from_str(toml_text).unwrap();
    assert_eq!(parsed["cluster"]["replicas"].as_integer(), Some(3));
}

/// The single node's manifest is untouched by the city's: one replica, no role (`all`).
#[test]
fn the_single_node_manifest_still_runs_one_node() {
    let Some(docs) = yaml_documents(&repo().join("deploy/kubernetes/skynet.yaml")) else {
        return;
    };
    let node = resource(&docs, "Deployment", "skynet");
    assert_eq!(node["spec"]["replicas"], 1);
    assert_eq!(
        strings(&container(node, "skynet")["args"]),
        ["run", "--config", "/etc/skynet/skynet.toml"]
    );
}
