//! `[cluster]` and `[node]` in a config as `skynet check` and `skynet run` read them (issue
//! 23, in progress): checked and located, an empty url a single node.

mod common;

use skynet::PipelineConfig;

/// configs/city.toml, with its relative paths made absolute so it loads from anywhere.
fn city() -> String {
    let repo = common::repo();
    std::fs::read_to_string(repo.join("configs/city.toml"))
        .unwrap()
        .replace(
            "\"city-grids.geojson\"",
            &format!("\"{}/configs/city-grids.geojson\"", repo.display()),
        )
        .replace("\"../models/", &format!("\"{}/models/", repo.display()))
}

fn load(text: &str) -> Result<PipelineConfig, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("city.toml");
    std::fs::write(&path, text).unwrap();
    PipelineConfig::load(&path).map_err(|e| {
        e.to_string()
            .replace(&path.display().to_string(), "city.toml")
    })
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[test]
fn the_city_config_is_a_single_node_unless_a_cluster_url_is_given() {
    let config = load(&city()).unwrap();
    assert!(config.cluster.is_single_node());
    assert_eq!(config.cluster.failover_s, 15.0);
    // `${SKYNET_NODE_NAME:-city-node}`: the default where the variable is unset.
    let text = city().replace("SKYNET_NODE_NAME", "SKYNET_TEST_UNSET_NODE_NAME_23");
    assert_eq!(load(&text).unwrap().node, "city-node");

    let text = city().replace(
        "url = \"${SKYNET_CLUSTER_URL:-}\"",
        "url = \"nats://edge:secret@127.0.0.1:4222\"\nfailover_s = 6",
    );
    let config = load(&text).unwrap();
    assert!(!config.cluster.is_single_node());
    assert_eq!(
        config.cluster.timing().heartbeat,
        std::time::Duration::from_secs(2)
    );
    assert!(!format!("{:?}", config.cluster).contains("secret"));
}

#[test]
fn cluster_errors_point_at_the_key() {
    let text = city().replace(
        "url = \"${SKYNET_CLUSTER_URL:-}\"",
        "url = \"${SKYNET_CLUSTER_URL:-}\"\nfailover_s = 0.5",
    );
    let e = load(&text).unwrap_err();
    assert!(
        e.starts_with(&format!(
            "city.toml:{}:",
            line_of(&text, "failover_s = 0.5")
        )),
        "{e}"
    );
    assert!(e.contains("failover_s"), "{e}");

    let text = city().replace(
        "url = \"${SKYNET_CLUSTER_URL:-}\"",
        "url = \"http://u:hunter2@x:1\"",
    );
    let e = load(&text).unwrap_err();
    assert!(
        e.starts_with(&format!("city.toml:{}:", line_of(&text, "http://"))),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "a password in an error: {e}");

    let text = city().replace("[cluster]\n", "[cluster]\nreplica = 3\n");
    assert!(load(&text).unwrap_err().contains("unknown field `replica`"));

    // In a cluster the node's name is a KV key token too.
    let text = city()
        .replace("${SKYNET_NODE_NAME:-city-node}", ".edge")
        .replace(
            "url = \"${SKYNET_CLUSTER_URL:-}\"",
            "url = \"nats://127.0.0.1:4222\"",
        );
    let e = load(&text).unwrap_err();
    assert!(
        e.starts_with(&format!("city.toml:{}:", line_of(&text, "\".edge\""))),
        "{e}"
    );
}
