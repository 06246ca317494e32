//! WS-Discovery of ONVIF cameras (`skynet onvif discover`): a `Probe` for
//! `NetworkVideoTransmitter`s multicast to 239.255.255.250:3702, and the `ProbeMatches` that
//! come back within the wait, each naming the device service's address (`XAddrs`), to put in
//! a camera's `url`.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use super::{Element, parse_xml};

/// Where WS-Discovery probes go.
pub const MULTICAST: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(Ipv4Addr::new(239, 255, 255, 250)),
    3702,
);

/// One device that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The device's endpoint (`urn:uuid:...`).
    pub endpoint: String,
    /// The device service's addresses: a camera's `url`.
    pub xaddrs: Vec<String>,
    /// `onvif://www.onvif.org/name/...`, `.../hardware/...`, `.../location/...`, ...
    pub scopes: Vec<String>,
}

impl Discovered {
    /// The value of an `onvif://www.onvif.org/<kind>/<value>` scope (`name`, `hardware`),
    /// percent-decoded.
    pub fn scope(&self, kind: &str) -> Option<String> {
        let prefix = format!("onvif://www.onvif.org/{kind}/");
        self.scopes
            .iter()
            .find_map(|s| s.strip_prefix(&prefix))
            .map(percent_decode)
    }
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Probes the local network and lists the devices that answer within `wait`.
pub fn discover(wait: Duration) -> std::io::Result<Vec<Discovered>> {
    probe(MULTICAST, wait, |_| false)
}

/// Sends one probe to `target` and collects answers until `wait` has passed or `enough` holds
/// for what came so far. Answers that are not a `ProbeMatches` to this probe are ignored;
/// a device that answers twice is listed once.
pub fn probe(
    target: SocketAddr,
    wait: Duration,
    mut enough: impl FnMut(&[Discovered]) -> bool,
) -> std::io::Result<Vec<Discovered>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    if target.ip().is_multicast() {
        socket.set_multicast_ttl_v4(1)?;
    }
    let mut id = [0u8; 16];
    if getrandom::fill(&mut id).is_err() {
        id.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    let message_id = format!("uuid:{}", hex(&id));
    socket.send_to(probe_message(&message_id).as_bytes(), target)?;
    let until = Instant::now() + wait;
    let mut found: Vec<Discovered> = Vec::new();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || enough(&found) {
            return Ok(found);
        }
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let n = match socket.recv_from(&mut buffer) {
            Ok((n, _)) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&buffer[..n]);
        for device in probe_matches(&text, &message_id) {
            if !found.iter().any(|d| d.endpoint == device.endpoint) {
                found.push(device);
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn probe_message(message_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><e:Envelope xmlns:e=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:w=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" xmlns:d=\"http://schemas.xmlsoap.org/ws/2005/04/discovery\" xmlns:dn=\"http://www.onvif.org/ver10/network/wsdl\"><e:Header><w:MessageID>{message_id}</w:MessageID><w:To e:mustUnderstand=\"true\">urn:schemas-xmlsoap-org:ws:2005:04:discovery</w:To><w:Action e:mustUnderstand=\"true\">http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</w:Action></e:Header><e:Body><d:Probe><d:Types>dn:NetworkVideoTransmitter</d:Types></d:Probe></e:Body></e:Envelope>"
    )
}

/// The devices in a `ProbeMatches` answering `message_id` (an answer that names no
/// `RelatesTo` is taken too: some devices leave it out).
fn probe_matches(text: &str, message_id: &str) -> Vec<Discovered> {
    let Ok(envelope) = parse_xml(text) else {
        return Vec::new();
    };
    let relates = envelope
        .child("Header")
        .and_then(|h| h.text_of("RelatesTo"))
        .map(str::to_string);
    if relates.is_some_and(|r| r != message_id) {
        return Vec::new();
    }
    let Some(matches) = envelope.child("Body").and_then(|b| b.find("ProbeMatches")) else {
        return Vec::new();
    };
    matches
        .children
        .iter()
        .filter(|m| m.name == "ProbeMatch")
        .filter_map(|m: &Element| {
            let words = |name: &str| -> Vec<String> {
                m.text_of(name)
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            };
            let xaddrs = words("XAddrs");
            let endpoint = m
                .child("EndpointReference")
                .and_then(|e| e.text_of("Address"))
                .map(str::to_string)
                .or_else(|| xaddrs.first().cloned())?;
            Some(Discovered {
                endpoint,
                xaddrs,
                scopes: words("Scopes"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(relates_to: &str, endpoint: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><SOAP-ENV:Envelope xmlns:SOAP-ENV=\"http://www.w3.org/2003/05/soap-envelope\" xmlns:wsa=\"http://schemas.xmlsoap.org/ws/2004/08/addressing\" xmlns:d=\"http://schemas.xmlsoap.org/ws/2005/04/discovery\"><SOAP-ENV:Header><wsa:MessageID>uuid:x</wsa:MessageID><wsa:RelatesTo>{relates_to}</wsa:RelatesTo></SOAP-ENV:Header><SOAP-ENV:Body><d:ProbeMatches><d:ProbeMatch><wsa:EndpointReference><wsa:Address>{endpoint}</wsa:Address></wsa:EndpointReference><d:Types>dn:NetworkVideoTransmitter</d:Types><d:Scopes>onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/name/Gate%202 onvif://www.onvif.org/hardware/DS-2CD</d:Scopes><d:XAddrs>http://192.0.2.10/onvif/device_service http://[fe80::1]/onvif/device_service</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch></d:ProbeMatches></SOAP-ENV:Body></SOAP-ENV:Envelope>"
        )
    }

    #[test]
    fn probe_matches_are_read_and_others_ignored() {
        let found = probe_matches(&answer("uuid:me", "urn:uuid:cam-1"), "uuid:me");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].endpoint, "urn:uuid:cam-1");
        assert_eq!(
            found[0].xaddrs,
            [
                "http://192.0.2.10/onvif/device_service",
                "http://[fe80::1]/onvif/device_service"
            ]
        );
        assert_eq!(found[0].scope("name").as_deref(), Some("Gate 2"));
        assert_eq!(found[0].scope("hardware").as_deref(), Some("DS-2CD"));
        assert!(probe_matches(&answer("uuid:other", "urn:uuid:cam-1"), "uuid:me").is_empty());
        assert!(probe_matches("garbage", "uuid:me").is_empty());
        assert!(probe_message("uuid:me").contains("dn:NetworkVideoTransmitter"));
    }

    #[test]
    fn a_device_that_answers_the_probe_is_listed_once() {
        let device = UdpSocket::bind("127.0.0.1:0").unwrap();
        let target = device.local_addr().unwrap();
        let responder = std::thread::spawn(move || {
            let mut buffer = vec![0u8; 65_536];
            let (n, from) = device.recv_from(&mut buffer).unwrap();
            let probe = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let id = parse_xml(&probe)
                .ok()
                .and_then(|e| {
                    e.child("Header")
                        .and_then(|h| h.text_of("MessageID"))
                        .map(str::to_string)
                })
                .unwrap();
            // Twice, as devices do over several interfaces; and a stray answer.
            for text in [
                answer(&id, "urn:uuid:cam-1"),
                answer(&id, "urn:uuid:cam-1"),
                answer("uuid:stray", "urn:uuid:cam-9"),
                answer(&id, "urn:uuid:cam-2"),
            ] {
                device.send_to(text.as_bytes(), from).unwrap();
            }
            probe
        });
        let found = probe(target, Duration::from_secs(30), |f| f.len() >= 2).unwrap();
        let probe = responder.join().unwrap();
        assert!(probe.contains("discovery/Probe"), "{probe}");
        let endpoints: Vec<&str> = found.iter().map(|d| d.endpoint.as_str()).collect();
        assert_eq!(endpoints, ["urn:uuid:cam-1", "urn:uuid:cam-2"]);
    }
}
