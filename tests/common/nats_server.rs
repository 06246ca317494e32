//! A nats-server with JetStream of a test's own, on a spare port. Standalone (std only), so
//! a crate's own tests can include it with `#[path]` without the rest of tests/common:
//! `crates/skynet-cluster/tests/cluster.rs` does.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port no other caller in this process was given, free for TCP and UDP now.
///
/// Taken below the kernel's ephemeral range where there is room, because a port from
/// `bind(0)` is released before the server binds it, and in that gap the kernel may hand the
/// same port to another `bind(0)` or to an outgoing connection's local end (two of a test's
/// processes then race for one port: CI saw a console and a metrics endpoint collide). A
/// process-wide record keeps two callers from being given the same port; ports below the
/// ephemeral range are never taken by outgoing connections.
pub fn spare_port() -> u16 {
    use std::collections::HashSet;
    use std::net::UdpSocket;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    static NEXT: AtomicU32 = AtomicU32::new(0);

    let free = |port: u16| {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
    };
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    let (low, high) = below_ephemeral_range();
    if high > low + 1000 {
        // Start each process at a different place, so test binaries running at once (other
        // checkouts on the machine) rarely walk the same ports.
        let span = u32::from(high - low);
        let start = (std::process::id().wrapping_mul(7919)) % span;
        for _ in 0..span {
            let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            let port = low + offset as u16;
            if !given.contains(&port) && free(port) {
                given.insert(port);
                return port;
            }
        }
    }
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a spare port");
        let port = listener.local_addr().expect("its address").port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Ports from 20000 up to 30000, or to the start of the kernel's ephemeral range (Linux's
/// `ip_local_port_range`; 32768 when it cannot be read) if that is lower. Ports from 30000
/// up are left to the tests' fixed ranges (the GB/T 28181 platforms' `media_ports`).
fn below_ephemeral_range() -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    (20000, ephemeral_start.min(30000))
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
