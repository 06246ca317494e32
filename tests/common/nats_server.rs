//! A nats-server with JetStream of a test's own, on a spare port. Standalone (std only), so
//! a crate's own tests can include it with `#[path]` without the rest of tests/common:
//! `crates/skynet-cluster/tests/cluster.rs` does.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn spare_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a spare port");
    listener.local_addr().expect("its address").port()
}

fn listening(port: u16, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// A nats-server of the test's own, on a spare port, with its store in `dir`.
pub struct PrivateNats {
    port: u16,
    dir: PathBuf,
    pub child: Option<Child>,
}

impl PrivateNats {
    pub fn start(dir: &Path) -> Self {
        let mut server = Self {
            port: spare_port(),
            dir: dir.to_path_buf(),
            child: None,
        };
        server.resume();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn resume(&mut self) {
        // Debian puts it in /usr/sbin, which a non-root user's PATH may lack.
        let bin = if Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let child = Command::new(bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup.sh installs it)");
        self.child = Some(child);
        assert!(
            listening(self.port, Duration::from_secs(10)),
            "nats-server did not start on {}",
            self.port
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}
