//! The fuzz targets' promises, checked on every build without cargo-fuzz: thousands of
//! deterministic mutations of the committed seeds (fuzz/corpus/gb28181_*) are refused with
//! a typed error or parsed consistently, never a panic.

use std::time::Instant;

use skynet_gb28181::manscdp::{self, Body, CatalogAssembler, is_gb_id};
use skynet_gb28181::rtp::{MediaReceiver, StreamDeframer};
use skynet_gb28181::sip::{Limits, Message};

const SIP_SEEDS: &[&[u8]] = &[
    include_bytes!("../../../fuzz/corpus/gb28181_sip/register_auth"),
    include_bytes!("../../../fuzz/corpus/gb28181_sip/message_keepalive_compact"),
    include_bytes!("../../../fuzz/corpus/gb28181_sip/invite_200_ok_sdp"),
];
const XML_SEEDS: &[&[u8]] = &[
    include_bytes!("../../../fuzz/corpus/gb28181_manscdp/catalog_gb2312_elements"),
    include_bytes!("../../../fuzz/corpus/gb28181_manscdp/catalog_gbk_attributes"),
    include_bytes!("../../../fuzz/corpus/gb28181_manscdp/catalog_query_utf8"),
    include_bytes!("../../../fuzz/corpus/gb28181_manscdp/keepalive_gb2312"),
];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b":",
    b" ",
    b"\"",
    b"<",
    b">",
    b"/",
    b"&",
    b"=",
    b"\xff",
    b"\xa1",
    b"$",
    b"\0",
    b"99999999999",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = at.min(v.len() - 1);
                v[i] = rng.next() as u8;
            }
            1 => {
                let end = (at + rng.below(16)).min(v.len());
                v.drain(at..end);
            }
            2 => {
                let s = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(at..at, s.iter().copied());
            }
            3 => v.truncate(at),
            _ => {
                let end = (at + rng.below(32)).min(v.len());
                let chunk = v[at..end].to_vec();
                v.splice(at..at, chunk);
            }
        }
    }
    v
}

#[test]
fn mutated_sip_messages_are_refused_or_parse_and_write_back_the_same() {
    let limits = Limits::default();
    let roomy = Limits {
        max_head: 1 << 20,
        max_headers: 1024,
        max_body: 1 << 20,
    };
    let mut rng = Rng(0x5eed_5eed_1234_5678);
    let mut parsed = 0;
    for i in 0..6000 {
        let data = mutate(&mut rng, SIP_SEEDS[i % SIP_SEEDS.len()]);
        if let Ok(m) = Message::parse(&data, &limits) {
            parsed += 1;
            let back = Message::parse(&m.to_bytes(), &roomy).expect("writes back parseable");
            assert_eq!(back.start, m.start);
            assert_eq!(back.body, m.body);
            let strip = |m: &Message| {
                m.headers
                    .iter()
                    .filter(|h| !h.name.eq_ignore_ascii_case("Content-Length"))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                strip(&back),
                strip(&m),
                "{:?}",
                String::from_utf8_lossy(&data)
            );
            if let Some(a) = m.header("Authorization")
                && let Ok(c) = skynet_gb28181::digest::Credentials::parse(a)
            {
                let _ = c.verify("REGISTER", "password");
            }
            let _ = skynet_gb28181::invite::parse_answer(&m.body);
        }
        let mut rest = data.as_slice();
        while let Ok(Some((_, used))) = Message::parse_stream(rest, &limits) {
            assert!(used > 0 && used <= rest.len());
            rest = &rest[used..];
        }
    }
    assert!(
        parsed > 500,
        "the mutations keep enough messages valid to test the writer ({parsed})"
    );
}

#[test]
fn mutated_manscdp_bodies_are_refused_or_hold_only_valid_ids() {
    let limits = manscdp::Limits {
        max_items: 64,
        ..manscdp::Limits::default()
    };
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut parsed = 0;
    for i in 0..6000 {
        let data = mutate(&mut rng, XML_SEEDS[i % XML_SEEDS.len()]);
        match manscdp::parse(&data, &limits) {
            Ok(Body::Catalog(part)) => {
                parsed += 1;
                assert!(part.items.iter().all(|i| is_gb_id(&i.device_id)));
                let mut asm = CatalogAssembler::default();
                if let Ok(Some(cat)) = asm.push(part.clone(), Instant::now()) {
                    assert!(cat.items.len() <= part.sum_num as usize);
                }
            }
            Ok(body) => {
                parsed += 1;
                assert!(is_gb_id(body.device_id()));
            }
            Err(_) => {}
        }
    }
    assert!(parsed > 300, "{parsed}");
}

#[test]
fn random_bytes_through_the_media_path_never_panic() {
    let mut rng = Rng(42);
    let mut rx = MediaReceiver::new(None, 32, 1 << 16);
    let mut deframer = StreamDeframer::default();
    for _ in 0..3000 {
        let len = rng.below(80);
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if let Some(x) = b.first_mut() {
            *x = (*x & 0x3f) | 0x80;
        }
        rx.push(&b);
        if deframer.push(&b).is_ok() {
            while let Some(p) = deframer.next_packet() {
                rx.push(&p);
            }
        }
    }
    rx.flush();
}
