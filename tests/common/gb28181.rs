//! A scripted GB/T 28181 lower platform (issue 27), for the tests that drive skynet's SIP
//! endpoint (tests/gb28181.rs, tests/platforms_cli.rs): over a UDP socket of its own it
//! REGISTERs (digest), answers skynet's catalog query with a GB2312 catalog, sends MESSAGEs,
//! and takes the requests skynet sends it.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use skynet_gb28181::digest;
use skynet_gb28181::manscdp::{self, CatalogItem};
use skynet_gb28181::sip::{Limits, Message, Method};

/// skynet's platform id (the id of the `[[platforms]]` table).
pub const ME: &str = "34020000002000000001";
/// The lower platform's device id.
pub const LOWER: &str = "34020000002000000002";
/// The SIP domain.
pub const DOMAIN: &str = "3402000000";
/// The channel [`Lower::join`]'s catalog holds.
pub const CHANNEL: &str = "34020000001320000001";

/// The scripted lower platform's SIP side.
pub struct Lower {
    pub socket: UdpSocket,
    /// skynet's SIP endpoint.
    pub server: SocketAddr,
    /// `UDP host:port` of [`Self::socket`], for a `Via` header.
    pub via: String,
    /// skynet's platform id, the lower platform's id and the domain (as [`ME`], [`LOWER`],
    /// [`DOMAIN`] by [`Self::new`]).
    pub platform: String,
    pub id: String,
    pub domain: String,
    cseq: u32,
}

impl Lower {
    /// A lower platform [`LOWER`] on a UDP socket of its own, talking to skynet's SIP
    /// endpoint at `server` (platform [`ME`], domain [`DOMAIN`]).
    pub fn new(server: SocketAddr) -> Self {
        Self::with_ids(server, ME, LOWER, DOMAIN)
    }

    /// As [`Self::new`], lower platform `id` talking to skynet's `platform` in `domain`.
    pub fn with_ids(server: SocketAddr, platform: &str, id: &str, domain: &str) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Lower {
            via: format!("UDP {}", socket.local_addr().unwrap()),
            socket,
            server,
            platform: platform.into(),
            id: id.into(),
            domain: domain.into(),
            cseq: 0,
        }
    }

    /// Registers with `password` (200), then answers skynet's catalog query with a GB2312
    /// catalog holding [`CHANNEL`] ("东门").
    pub fn join(&mut self, password: &str) {
        let cam = CatalogItem {
            device_id: CHANNEL.into(),
            name: "东门".into(),
            parental: Some(false),
            ..Default::default()
        };
        self.join_with(password, &[cam]);
    }

    /// As [`Self::join`], the catalog holding `items` (one response, SN 1).
    pub fn join_with(&mut self, password: &str, items: &[CatalogItem]) {
        assert_eq!(self.register_with(password), 200);
        let query = self.next_request(Method::Message);
        self.send(&Message::response_to(&query, 200, "OK", Some("q")).to_bytes());
        let sum_num = u32::try_from(items.len()).unwrap();
        let id = self.id.clone();
        self.message(manscdp::catalog_response(1, &id, sum_num, items));
    }

    /// The next SIP message skynet sends (20 s at most).
    pub fn recv(&self) -> Message {
        let mut buf = vec![0u8; 65_536];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("a SIP message within 20 s");
        Message::parse(&buf[..n], &Limits::default()).expect("a SIP message")
    }

    pub fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).unwrap();
    }

    /// A REGISTER (with `auth` as its `Authorization`), and skynet's answer.
    pub fn register(&mut self, auth: Option<String>) -> Message {
        self.cseq += 1;
        let (me, lower, domain) = (&self.platform, &self.id, &self.domain);
        let mut m = Message::request(Method::Register, format!("sip:{me}@{domain}"))
            .with_header(
                "Via",
                format!("SIP/2.0/{};rport;branch=z9hG4bK{}", self.via, self.cseq),
            )
            .with_header("From", format!("<sip:{lower}@{domain}>;tag=77"))
            .with_header("To", format!("<sip:{lower}@{domain}>"))
            .with_header("Call-ID", "reg-1")
            .with_header("CSeq", format!("{} REGISTER", self.cseq))
            .with_header(
                "Contact",
                format!("<sip:{lower}@{}>", self.socket.local_addr().unwrap()),
            )
            .with_header("Expires", "3600");
        if let Some(a) = auth {
            m = m.with_header("Authorization", a);
        }
        self.send(&m.to_bytes());
        self.recv()
    }

    /// A MESSAGE with a MANSCDP `body`.
    pub fn message(&mut self, body: Vec<u8>) {
        self.cseq += 1;
        let (me, lower, domain) = (&self.platform, &self.id, &self.domain);
        let m = Message::request(Method::Message, format!("sip:{me}@{domain}"))
            .with_header(
                "Via",
                format!("SIP/2.0/{};branch=z9hG4bKm{}", self.via, self.cseq),
            )
            .with_header("From", format!("<sip:{lower}@{domain}>;tag=78"))
            .with_header("To", format!("<sip:{me}@{domain}>"))
            .with_header("Call-ID", format!("msg-{}", self.cseq))
            .with_header("CSeq", format!("{} MESSAGE", self.cseq))
            .with_body("Application/MANSCDP+xml", body);
        self.send(&m.to_bytes());
    }

    /// Registers with `password`: the challenge (401), then the answer's status.
    pub fn register_with(&mut self, password: &str) -> u16 {
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
            &self.id,
            &self.domain,
            nonce,
            &format!("sip:{}@{}", self.platform, self.domain),
            "REGISTER",
            password,
            Some(("00000001", "c0ffee")),
        );
        self.register(Some(auth)).status().unwrap()
    }

    /// The next request of `method`, answering (200) any other request on the way.
    pub fn next_request(&self, method: Method) -> Message {
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

/// The value of the first SDP line starting with `prefix` (`m=video `, `y=`), trimmed.
pub fn sdp_value<'a>(sdp: &'a str, prefix: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .map(str::trim)
}
