//! deploy/compose-city.yaml (the city's roles over a 3-node NATS cluster) and
//! deploy/compose.yaml (the single node), parsed as compose parses them (anchors and merge
//! keys resolved, by PyYAML) and checked for their services and commands; and deploy/city.toml,
//! the one config of every role, checked by `skynet check`.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::common::{repo, skynet_bin};
use crate::manifests::yaml_documents;

fn command(service: &Value) -> Vec<&str> {
    service["command"]
        .as_array()
        .unwrap_or_else(|| panic!("no command list: {service}"))
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect()
}

fn volumes(service: &Value) -> Vec<&str> {
    service["volumes"]
        .as_array()
        .map(|v| v.iter().map(|m| m.as_str().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn the_city_compose_file_runs_each_role_over_a_3_node_nats_cluster() {
    let Some(docs) = yaml_documents(&repo().join("deploy/compose-city.yaml")) else {
        return;
    };
    let services = &docs[0]["services"];
    let names: BTreeSet<&str> = services
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for name in [
        "edge-1",
        "edge-2",
        "scorer-1",
        "scorer-2",
        "console",
        "nats-1",
        "nats-2",
        "nats-3",
        "mosquitto",
    ] {
        assert!(names.contains(name), "no service {name}: {names:?}");
    }

    let mut data_volumes = BTreeSet::new();
    for (name, role) in [
        ("edge-1", "edge"),
        ("edge-2", "edge"),
        ("scorer-1", "scorer"),
        ("scorer-2", "scorer"),
        ("console", "console"),
    ] {
        let s = &services[name];
        assert_eq!(s["image"], "skynet:latest", "{name}");
        assert_eq!(
            command(s),
            ["run", "--config", "/etc/skynet/city.toml", "--role", role],
            "{name}"
        );
        let env = &s["environment"];
        // Its own member key, and the cluster's three NATS nodes.
        assert_eq!(env["SKYNET_NODE_NAME"], name);
        assert_eq!(
            env["SKYNET_CLUSTER_URL"], "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222",
            "{name}"
        );
        // The NATS user of its role, with that user's password (deploy/nats/nats-cluster.conf).
        assert_eq!(env["SKYNET_NATS_USER"], role, "{name}");
        let password = format!("SKYNET_{}_NATS_PASSWORD", role.to_uppercase());
        assert!(
            env["SKYNET_NATS_PASSWORD"]
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("${{{password}:?"))),
            "{name}: {}",
            env["SKYNET_NATS_PASSWORD"]
        );
        // [cases] secret where status changes are signed or checked, required by compose.
        if role == "edge" {
            assert!(env.get("SKYNET_CASES_SECRET").is_none(), "{name}");
        } else {
            assert!(
                env["SKYNET_CASES_SECRET"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("${SKYNET_CASES_SECRET:?")),
                "{name}: {}",
                env["SKYNET_CASES_SECRET"]
            );
        }
        let mounts = volumes(s);
        assert!(
            mounts.contains(&"./city.toml:/etc/skynet/city.toml:ro"),
            "{name}: {mounts:?}"
        );
        // Its own state: each outbox has a single writer.
        let data = mounts
            .iter()
            .find(|m| m.ends_with(":/var/lib/skynet"))
            .unwrap_or_else(|| panic!("{name} has no data volume"));
        assert!(data_volumes.insert(*data), "{name} shares {data}");
    }
    assert_eq!(
        services["console"]["environment"]["SKYNET_NATS_USER"],
        "console"
    );
    assert_eq!(
        services["console"]["environment"]["SKYNET_API_LISTEN"],
        "0.0.0.0:8080"
    );

    let routes = "nats://nats-1:6222,nats://nats-2:6222,nats://nats-3:6222";
    for i in 1..=3 {
        let name = format!("nats-{i}");
        let s = &services[name.as_str()];
        let args = command(s);
        let after = |flag: &str| {
            let at = args
                .iter()
                .position(|a| *a == flag)
                .unwrap_or_else(|| panic!("{name} has no {flag}: {args:?}"));
            args[at + 1]
        };
        assert_eq!(after("--server_name"), name);
        assert_eq!(after("--routes"), routes);
        assert_eq!(after("-c"), "/etc/nats/nats-server.conf");
        assert_eq!(after("-sd"), "/data");
        let mounts = volumes(s);
        assert!(
            mounts.contains(&"./nats/nats-cluster.conf:/etc/nats/nats-server.conf:ro"),
            "{name}: {mounts:?}"
        );
        assert!(mounts.contains(&format!("nats-{i}-data:/data").as_str()));
        for var in [
            "SKYNET_EDGE_NATS_PASSWORD",
            "SKYNET_SCORER_NATS_PASSWORD",
            "SKYNET_CONSOLE_NATS_PASSWORD",
            "CASE_SYSTEM_NATS_PASSWORD",
        ] {
            assert!(s["environment"][var].is_string(), "{name}: {var}");
        }
    }
    // Every file the services mount from deploy/ is there.
    for s in services.as_object().unwrap().values() {
        for m in volumes(s) {
            if let Some(local) = m.strip_prefix("./").or(m.strip_prefix("../")) {
                let file = local.split(':').next().unwrap();
                let base = if m.starts_with("../") {
                    repo()
                } else {
                    repo().join("deploy")
                };
                assert!(base.join(file).exists(), "{m}: no {file}");
            }
        }
    }
}

/// The broker the deploy ships drops the persistent sessions of clients gone for good (an
/// edge scaled away), which would otherwise stay members of the sensors' shared subscription
/// and be queued to for ever; and it starts with that setting (a private mosquitto on a
/// spare port, stopped by its pid).
#[test]
fn the_shipped_mosquitto_expires_the_sessions_of_edges_gone_for_good() {
    let text = std::fs::read_to_string(repo().join("deploy/mosquitto.conf")).unwrap();
    let expiration: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("persistent_client_expiration "))
        .collect();
    assert_eq!(expiration.len(), 1, "{expiration:?}");
    let Some(docs) = yaml_documents(&repo().join("deploy/compose-city.yaml")) else {
        return;
    };
    assert!(
        volumes(&docs[0]["services"]["mosquitto"])
            .contains(&"./mosquitto.conf:/mosquitto/config/mosquitto.conf:ro")
    );
    // Mosquitto takes the setting: the committed line in a loopback config of its own.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n{}\n",
            expiration[0]
        ),
    )
    .unwrap();
    let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("mosquitto");
    let Ok(mut child) = Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        eprintln!("SKIPPED: no mosquitto (scripts/setup.sh installs it)");
        return;
    };
    let up = crate::common::eventually(std::time::Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            || child.try_wait().ok().flatten().is_some()
    });
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        up && exited.is_none(),
        "mosquitto refused `{}`: {}",
        expiration[0],
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example placeholder of a secret is refused by `skynet check`, as the metrics token's.
#[test]
fn the_city_deploy_config_refuses_a_placeholder_cases_secret() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_city_config(
        dir.path(),
        &[("SKYNET_CASES_SECRET", "REPLACE-with-openssl-rand-hex-32")],
    );
    assert!(!out.status.success(), "a placeholder secret was taken");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("secret"), "{stderr}");
    assert!(stderr.contains("placeholder"), "{stderr}");
    let ok = check_city_config(dir.path(), &[("SKYNET_CASES_SECRET", "0123456789abcdef")]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn the_single_node_compose_file_still_runs_one_node() {
    let Some(docs) = yaml_documents(&repo().join("deploy/compose.yaml")) else {
        return;
    };
    let skynet = &docs[0]["services"]["skynet"];
    assert_eq!(
        command(skynet),
        ["run", "--config", "/etc/skynet/skynet.toml"]
    );
}

/// `skynet check` of deploy/city.toml as the image holds it: paths pointed into the
/// repository, the variables set as the deployments set them, plus `extra`.
fn check_city_config(dir: &std::path::Path, extra: &[(&str, &str)]) -> std::process::Output {
    let text = std::fs::read_to_string(repo().join("deploy/city.toml")).unwrap();
    let local = text
        .replace(
            "/etc/skynet/city-grids.geojson",
            &repo()
                .join("configs/city-grids.geojson")
                .display()
                .to_string(),
        )
        .replace(
            "/usr/share/skynet/models/",
            &format!("{}/models/", repo().display()),
        );
    let path = dir.join("city.toml");
    std::fs::write(&path, local).unwrap();
    Command::new(skynet_bin())
        .args(["check", "--config", path.to_str().unwrap()])
        .env("SKYNET_NODE_NAME", "skynet-edge-0")
        .env("SKYNET_CLUSTER_URL", "nats://nats.skynet.svc:4222")
        .env("SKYNET_NATS_URL", "nats://nats.skynet.svc:4222")
        .env("SKYNET_METRICS_TOKEN", "0123456789abcdef0123456789abcdef")
        .env("SKYNET_DATA_DIR", dir)
        .envs(extra.iter().copied())
        .output()
        .unwrap()
}

/// deploy/city.toml, as the image holds it, is valid.
#[test]
fn the_city_deploy_config_stays_valid() {
    let dir = tempfile::tempdir().unwrap();
    let out = check_city_config(dir.path(), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
