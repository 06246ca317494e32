//! `skynet platforms list` and `GET /platforms` (issue 27). Against a running node (`skynet
//! run` with a GB/T 28181 platform and `[metrics] auth_token`, a scripted lower platform
//! registering and answering the catalog): `/platforms` without the token is 401; the list
//! shows the platform with its state and lower platforms online, and the catalog's channel
//! with its status and whether it is analysed; `--json` prints the node's JSON; a config
//! with another token gets an error that names `[metrics] auth_token`. With no node
//! running: the config's view, and a note on stderr that the node did not answer.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use skynet_gb28181::digest;
use skynet_gb28181::manscdp::{self, CatalogItem, ItemStatus};
use skynet_gb28181::sip::{Limits, Message, Method};

const ME: &str = "34020000002000000001";
const LOWER: &str = "34020000002000000002";
const CHANNEL: &str = "34020000001320000001";
/// In the catalog, not configured.
const OTHER: &str = "34020000001320000002";
const DOMAIN: &str = "3402000000";
const TOKEN: &str = "platforms-list-token-5f0c1d7e9a2b4c68";

/// A scripted lower platform (as in tests/gb28181.rs): it registers, then answers skynet's
/// catalog query.
struct Lower {
    socket: UdpSocket,
    server: SocketAddr,
    via: String,
    cseq: u32,
}

impl Lower {
    fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Lower {
            via: format!("UDP {}", socket.local_addr().unwrap()),
            socket,
            server,
            cseq: 0,
        }
    }

    /// Registers with `password`, then answers the catalog query with two cameras.
    fn join(&mut self, password: &str) {
        let challenge = self.register(None);
        assert_eq!(challenge.status(), Some(401));
        let h = challenge.header("WWW-Authenticate").unwrap().to_string();
        let nonce = h
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let auth = digest::authorization(
            LOWER,
            DOMAIN,
            nonce,
            &format!("sip:{ME}@{DOMAIN}"),
            "REGISTER",
            password,
            Some(("00000001", "c0ffee")),
        );
        assert_eq!(self.register(Some(auth)).status(), Some(200));
        let query = self.next_request(Method::Message);
        self.send(&Message::response_to(&query, 200, "OK", Some("q")).to_bytes());
        let camera = |id: &str, name: &str, status| CatalogItem {
            device_id: id.into(),
            name: name.into(),
            parental: Some(false),
            status,
            ..Default::default()
        };
        self.message(manscdp::catalog_response(
            1,
            LOWER,
            2,
            &[
                camera(CHANNEL, "东门", ItemStatus::On),
                camera(OTHER, "West", ItemStatus::Off),
            ],
        ));
    }

    fn recv(&self) -> Message {
        let mut buf = vec![0u8; 65_536];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a SIP message within 20 s");
        Message::parse(&buf[..n], &Limits::default()).expect("a SIP message")
    }

    fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).unwrap();
    }

    fn register(&mut self, auth: Option<String>) -> Message {
        self.cseq += 1;
        let mut m = Message::request(Method::Register, format!("sip:{ME}@{DOMAIN}"))
            .with_header(
                "Via",
                format!("SIP/2.0/{};rport;branch=z9hG4bK{}", self.via, self.cseq),
            )
            .with_header("From", format!("<sip:{LOWER}@{DOMAIN}>;tag=77"))
            .with_header("To", format!("<sip:{LOWER}@{DOMAIN}>"))
            .with_header("Call-ID", "reg-1")
            .with_header("CSeq", format!("{} REGISTER", self.cseq))
            .with_header(
                "Contact",
                format!("<sip:{LOWER}@{}>", self.socket.local_addr().unwrap()),
            )
            .with_header("Expires", "3600");
        if let Some(a) = auth {
            m = m.with_header("Authorization", a);
        }
        self.send(&m.to_bytes());
        self.recv()
    }

    fn message(&mut self, body: Vec<u8>) {
        self.cseq += 1;
        let m = Message::request(Method::Message, format!("sip:{ME}@{DOMAIN}"))
            .with_header(
                "Via",
                format!("SIP/2.0/{};branch=z9hG4bKm{}", self.via, self.cseq),
            )
            .with_header("From", format!("<sip:{LOWER}@{DOMAIN}>;tag=78"))
            .with_header("To", format!("<sip:{ME}@{DOMAIN}>"))
            .with_header("Call-ID", format!("msg-{}", self.cseq))
            .with_header("CSeq", format!("{} MESSAGE", self.cseq))
            .with_body("Application/MANSCDP+xml", body);
        self.send(&m.to_bytes());
    }

    /// The next request of `method`, answering (200) any other request on the way.
    fn next_request(&self, method: Method) -> Message {
        loop {
            let m = self.recv();
            match m.method() {
                Some(got) if *got == method => return m,
                Some(Method::Ack) | None => {}
                Some(_) => self.send(&Message::response_to(&m, 200, "OK", Some("x")).to_bytes()),
            }
        }
    }
}

/// A config with one GB/T 28181 platform listing `CHANNEL` (by id alone: listed, not
/// analysed, so no model is loaded) and `[metrics] listen` with `token`.
fn write_config(
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    sip: SocketAddr,
    token: &str,
) -> std::path::PathBuf {
    let repo = repo();
    let text = format!(
        r#"
[node]
name = "platforms-cli"
[metrics]
listen = "{listen}"
auth_token = "{token}"
[grids]
file = "{grids}"
[detect]
model = "{model}"
[outbox]
path = "{out}/outbox.sqlite"

[[platforms]]
kind = "gb28181"
id = "{ME}"
domain = "{DOMAIN}"
listen = "{sip}"
password = "pw"
owner = "police"
channels = ["{CHANNEL}"]
media_ports = "31040-31050"
"#,
        grids = repo.join("configs/city-grids.geojson").display(),
        model = repo.join("models/yolox_nano.toml").display(),
        out = dir.display(),
    );
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `skynet platforms list --config CONFIG [extra]`: its exit success, stdout and stderr.
fn platforms_list(config: &Path, extra: &[&str]) -> (bool, String, String) {
    let out = Command::new(skynet_bin())
        .args(["platforms", "list", "--config", config.to_str().unwrap()])
        .args(extra)
        .current_dir(repo())
        .output()
        .expect("skynet runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn platforms_list_asks_the_running_node_and_platforms_needs_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_port();
    let sip = free_port();
    let config = write_config(dir.path(), "skynet.toml", listen, sip, TOKEN);
    let (mut child, log) = spawn_logged(&config, &[]);
    // Listing, its endpoint up and no lower platform yet: the SIP endpoint listens.
    let mut first = (false, String::new(), String::new());
    let listening = eventually(Duration::from_secs(60), || {
        first = platforms_list(&config, &[]);
        first.1.starts_with(&format!(
            "{ME}\tgb28181\t{sip}\tpolice\tup\t0 lower platform(s) online\n"
        ))
    });
    if !listening {
        let (_, text) = terminate(&mut child, &log);
        panic!(
            "no listing of the platform up:\n{}\n{}\nlog:\n{text}",
            first.1, first.2
        );
    }
    // The configured channel, before any catalog.
    assert!(
        first
            .1
            .contains(&format!("  {CHANNEL}\t-\tunlisted\t-\tanalysed no\t-\n")),
        "{}",
        first.1
    );
    // The route needs the token, as /metrics and /readyz do.
    let refused = http_get(listen, "/platforms").unwrap_or_default();

    let mut lower = Lower::new(sip);
    lower.join("pw");
    let mut last = (false, String::new(), String::new());
    let listed = eventually(Duration::from_secs(60), || {
        last = platforms_list(&config, &[]);
        last.1.contains(&format!("  {OTHER}\t"))
    });
    let json = platforms_list(&config, &["--json"]);
    // Another token: refused, and the error says which setting.
    let wrong = write_config(
        dir.path(),
        "wrong.toml",
        listen,
        sip,
        "another-token-8d1e2f3a4b5c6d7e",
    );
    let (wrong_ok, _, wrong_err) = platforms_list(&wrong, &[]);
    let (status, text) = terminate(&mut child, &log);
    assert!(status.success(), "{text}");

    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let (ok, stdout, stderr) = last;
    assert!(listed, "stdout:\n{stdout}\nstderr:\n{stderr}\nlog:\n{text}");
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("{ME}\tgb28181\t{sip}\tpolice\tup\t1 lower platform(s) online"),
        "{stdout}"
    );
    assert!(
        lines.contains(&format!("  {CHANNEL}\t东门\tonline\t-\tanalysed no\t-").as_str()),
        "{stdout}"
    );
    assert!(
        lines.contains(&format!("  {OTHER}\tWest\toffline\t-\tanalysed no\t-").as_str()),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("1 platform(s), from the node at {listen}")),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN), "{stderr}");

    let (ok, stdout, stderr) = json;
    assert!(ok, "{stderr}");
    let body: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let platform = &body["platforms"][0];
    assert_eq!(platform["id"], ME);
    assert_eq!(platform["kind"], "gb28181");
    assert_eq!(platform["state"], "up");
    assert_eq!(
        platform["lower_platforms_online"],
        serde_json::json!([LOWER])
    );
    let channel = platform["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == CHANNEL)
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(channel["lower"], LOWER);
    assert_eq!(channel["wanted"], true);
    assert_eq!(channel["analysed"], false);
    assert_eq!(channel["placed_by"], serde_json::Value::Null);

    assert!(!wrong_ok);
    assert!(wrong_err.contains("401"), "{wrong_err}");
    assert!(wrong_err.contains("[metrics] auth_token"), "{wrong_err}");
    assert!(!wrong_err.contains("another-token"), "{wrong_err}");
}

#[test]
fn platforms_list_without_a_running_node_prints_the_configs_view_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on either.
    let listen = free_port();
    let sip = free_port();
    let config = write_config(dir.path(), "skynet.toml", listen, sip, TOKEN);
    let (ok, stdout, stderr) = platforms_list(&config, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        stdout,
        format!("{ME}\tgb28181\t{sip}\tpolice\t1 configured\n  {CHANNEL}\t-\tno\n"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("the node at {listen} did not answer")),
        "{stderr}"
    );
    assert!(stderr.contains("config's view"), "{stderr}");
    // --json needs the node.
    let (ok, stdout, stderr) = platforms_list(&config, &["--json"]);
    assert!(!ok);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("did not answer"), "{stderr}");
}
