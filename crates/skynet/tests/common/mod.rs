//! What the binary's tests share: the repository, output as text, and the demo config with
//! its outputs moved into a test's directory.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The demo config with its outputs in `dir`, `camera` settings added to the demo camera,
/// `listen` for the HTTP endpoint, and `more` appended.
pub fn config_in(dir: &Path, camera: &str, listen: SocketAddr, more: &str) -> PathBuf {
    let demo = std::fs::read_to_string(repo().join("configs/demo.toml")).unwrap();
    let config = demo
        .replace("\"../models/", &format!("\"{}/models/", repo().display()))
        .replace(
            "\"demo-grids.geojson\"",
            &format!("\"{}/configs/demo-grids.geojson\"", repo().display()),
        )
        .replace(
            "listen = \"127.0.0.1:9464\"",
            &format!("listen = \"{listen}\""),
        )
        .replace("../var/demo/", "./")
        .replace(
            "uri = \"${SKYNET_DATA_DIR}/media/vtest.avi\"",
            &format!("uri = \"${{SKYNET_DATA_DIR}}/media/vtest.avi\"\n{camera}"),
        );
    let path = dir.join("skynet.toml");
    std::fs::write(&path, format!("{config}\n{more}")).unwrap();
    path
}
