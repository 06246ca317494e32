//! GB/T 28181 SIP on any bytes, as a datagram and as a TCP stream: nothing may panic; a
//! message that parses writes back to bytes that parse to the same message; its
//! Authorization and SDP are read as the registrar and the INVITE would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skynet_gb28181::digest::Credentials;
use skynet_gb28181::invite::parse_answer;
use skynet_gb28181::sip::{Limits, Message};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(m) = Message::parse(data, &limits) {
        assert!(m.headers.len() <= limits.max_headers);
        assert!(m.body.len() <= limits.max_body);
        // Written back (full header names, CRLF, its own Content-Length), it reads the same.
        let roomy = Limits {
            max_head: 1 << 20,
            max_headers: 1024,
            max_body: 1 << 20,
        };
        let back =
            Message::parse(&m.to_bytes(), &roomy).expect("a parsed message writes back parseable");
        let strip = |m: &Message| {
            m.headers
                .iter()
                .filter(|h| !h.name.eq_ignore_ascii_case("Content-Length"))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(back.start, m.start);
        assert_eq!(strip(&back), strip(&m));
        assert_eq!(back.body, m.body);
        let _ = m.cseq();
        let _ = m.register_expires();
        let _ = m.from_user();
        if let Some(a) = m.header("Authorization") {
            if let Ok(c) = Credentials::parse(a) {
                let _ = c.verify("REGISTER", "password");
            }
        }
        let _ = parse_answer(&m.body);
    }
    let mut rest = data;
    while let Ok(Some((_, used))) = Message::parse_stream(rest, &limits) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
});
