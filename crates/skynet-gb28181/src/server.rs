//! The upper platform's SIP endpoint. [`Core`] is sans-I/O: it takes each received
//! message and the time, and returns what to send and what happened (registrations,
//! keepalives, assembled catalogs, refusals). [`Server`] moves bytes for it over UDP and
//! TCP on tokio.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::invite::{self, Answer, Dialog, InviteParams, MediaTransport};
use crate::manscdp::{self, Body, Catalog, CatalogAssembler};
use crate::registrar::{OfflineReason, Refusal, Registrar, RegistrarConfig, RegistrarEvent};
use crate::sip::{Limits, Message, Method, StartLine, random_token, uri_of};

/// Where a message came from, and so where its answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

impl Peer {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Udp(a) | Self::Tcp(a) => *a,
        }
    }

    fn transport(&self) -> &'static str {
        match self {
            Self::Udp(_) => "UDP",
            Self::Tcp(_) => "TCP",
        }
    }
}

/// What the rest of skynet is told.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    Registrar(RegistrarEvent),
    /// A complete catalog of a lower platform.
    Catalog {
        platform: String,
        catalog: Catalog,
    },
    /// A catalog given up on (parts missing after the timeout).
    CatalogIncomplete {
        platform: String,
        got: usize,
        sum_num: u32,
    },
    /// A request answered: for `skynet_sip_requests_total{method,code}`.
    Request {
        method: &'static str,
        code: u16,
    },
    /// A message refused before it could be answered (malformed SIP).
    Refused {
        reason: &'static str,
    },
    /// A channel's INVITE was answered 2xx and ACKed: the media comes as `answer` says.
    Playing {
        channel: String,
        call_id: String,
        answer: Answer,
    },
    /// A channel's INVITE failed (a final non-2xx, or an unreadable answer: `code` 0).
    InviteFailed {
        channel: String,
        call_id: String,
        code: u16,
    },
    /// The lower platform ended a call (BYE).
    Stopped {
        channel: String,
        call_id: String,
    },
}

/// Settings of the endpoint.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// skynet's 20-digit id and its domain.
    pub id: String,
    pub domain: String,
    pub registrar: RegistrarConfig,
    pub limits: Limits,
    pub xml_limits: manscdp::Limits,
    /// How often the catalog is queried again while a platform is online.
    pub catalog_interval: Duration,
}

/// An INVITE client transaction (RFC 3261 §17.1.1): over UDP it is sent again at 0.5 s,
/// 1 s, 2 s, … until a provisional or final answer; without a final answer in 32 s (Timer
/// B, 64·T1) the channel is reported failed with 408.
struct Inviting {
    channel: String,
    msg: Message,
    peer: Peer,
    bytes: Vec<u8>,
    started: Instant,
    next_retransmit: Option<Instant>,
    interval: Duration,
}

const T1: Duration = Duration::from_millis(500);
const TIMER_B: Duration = Duration::from_secs(32);

struct Known {
    peer: Peer,
    next_catalog: Instant,
}

/// The sans-I/O endpoint.
pub struct Core {
    cfg: CoreConfig,
    registrar: Registrar,
    catalogs: CatalogAssembler,
    known: HashMap<String, Known>,
    local: HashMap<&'static str, SocketAddr>,
    sn: u32,
    cseq: u32,
    ssrc_counter: u32,
    /// INVITEs sent and not answered yet, by Call-ID.
    inviting: HashMap<String, Inviting>,
    /// Confirmed calls, by Call-ID.
    calls: HashMap<String, (String, Dialog, Peer)>,
    /// Where each registered platform REGISTERed from (kept while it is offline by a
    /// keepalive timeout, so that its keepalive may bring it back): its MESSAGEs must come
    /// from there or from its Contact.
    registered: HashMap<String, Peer>,
}

/// The address of a SIP URI's host part when it is an IP literal (`<sip:id@10.0.0.9:5060>`;
/// no port: 5060).
fn contact_addr(v: &str) -> Option<SocketAddr> {
    let uri = uri_of(v);
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let host = host.split([';', '?']).next()?;
    if let Ok(a) = host.parse::<SocketAddr>() {
        return Some(a);
    }
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    ip.parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, 5060))
}

/// Whether `got` may speak for the party at `expected`: the same transport address, the
/// party's Contact, or (TCP, which cannot be spoofed) a new connection from the same host.
fn same_sender(expected: Peer, got: Peer, contact: Option<SocketAddr>) -> bool {
    got.addr() == expected.addr()
        || contact == Some(got.addr())
        || matches!((expected, got), (Peer::Tcp(a), Peer::Tcp(b)) if a.ip() == b.ip())
}

const WRONG_SENDER: &str = "sender is not the registered platform";

fn method_label(m: &Method) -> &'static str {
    match m {
        Method::Register => "REGISTER",
        Method::Message => "MESSAGE",
        Method::Invite => "INVITE",
        Method::Ack => "ACK",
        Method::Bye => "BYE",
        Method::Cancel => "CANCEL",
        Method::Options => "OPTIONS",
        Method::Info => "INFO",
        Method::Subscribe => "SUBSCRIBE",
        Method::Notify => "NOTIFY",
        Method::Other(_) => "other",
    }
}

/// Messages to send and events, from one step of [`Core`].
pub type Step = (Vec<(Peer, Vec<u8>)>, Vec<ServerEvent>);

impl Core {
    pub fn new(cfg: CoreConfig) -> Self {
        let registrar = Registrar::new(cfg.registrar.clone());
        Self {
            cfg,
            registrar,
            catalogs: CatalogAssembler::default(),
            known: HashMap::new(),
            local: HashMap::new(),
            sn: 0,
            cseq: 0,
            ssrc_counter: 0,
            inviting: HashMap::new(),
            calls: HashMap::new(),
            registered: HashMap::new(),
        }
    }

    /// Whether `peer` is where the registered `platform` is (None: it is not registered).
    fn sender_ok(&self, platform: &str, peer: Peer) -> Option<bool> {
        let reg = *self.registered.get(platform)?;
        let contact = self
            .registrar
            .platform(platform)
            .and_then(|p| contact_addr(&p.contact));
        Some(same_sender(reg, peer, contact))
    }

    /// The address skynet is reached at over a transport (for Via and Contact).
    pub fn set_local(&mut self, transport: &'static str, addr: SocketAddr) {
        self.local.insert(transport, addr);
    }

    pub fn registrar(&self) -> &Registrar {
        &self.registrar
    }

    fn catalog_query(&mut self, platform: &str, peer: Peer) -> Vec<u8> {
        self.sn = self.sn.wrapping_add(1);
        self.cseq = self.cseq.wrapping_add(1);
        let local = self
            .local
            .get(peer.transport())
            .copied()
            .unwrap_or_else(|| peer.addr());
        Message::request(Method::Message, format!("sip:{platform}@{}", peer.addr()))
            .with_header(
                "Via",
                format!(
                    "SIP/2.0/{} {local};rport;branch=z9hG4bK{}",
                    peer.transport(),
                    random_token(8)
                ),
            )
            .with_header(
                "From",
                format!(
                    "<sip:{}@{}>;tag={}",
                    self.cfg.id,
                    self.cfg.domain,
                    random_token(4)
                ),
            )
            .with_header("To", format!("<sip:{platform}@{}>", peer.addr()))
            .with_header("Call-ID", random_token(12))
            .with_header("CSeq", format!("{} MESSAGE", self.cseq))
            .with_header("Max-Forwards", "70")
            .with_body(
                "Application/MANSCDP+xml",
                manscdp::catalog_query(self.sn, platform),
            )
            .to_bytes()
    }

    /// One received message (a datagram, or one message cut from a TCP stream).
    pub fn handle(&mut self, bytes: &[u8], peer: Peer, now: Instant) -> Step {
        let (mut out, mut events) = (Vec::new(), Vec::new());
        let msg = match Message::parse(bytes, &self.cfg.limits) {
            Ok(m) => m,
            Err(_) => {
                events.push(ServerEvent::Refused {
                    reason: "malformed SIP",
                });
                return (out, events);
            }
        };
        let method = match &msg.start {
            StartLine::Request { method, .. } => method.clone(),
            StartLine::Response { code, .. } => {
                self.response(&msg, *code, peer, &mut out, &mut events);
                return (out, events);
            }
        };
        let answer =
            |res: Message, out: &mut Vec<(Peer, Vec<u8>)>, events: &mut Vec<ServerEvent>| {
                if let Some(code) = res.status() {
                    events.push(ServerEvent::Request {
                        method: method_label(&method),
                        code,
                    });
                }
                out.push((peer, res.to_bytes()));
            };
        match &method {
            Method::Register => {
                let (res, outcome) = self.registrar.handle_register(&msg, now);
                answer(res, &mut out, &mut events);
                if let Ok(Some(ev)) = outcome {
                    match &ev {
                        RegistrarEvent::Online { id } => {
                            self.registered.insert(id.clone(), peer);
                            let next_catalog = now + self.cfg.catalog_interval;
                            self.known.insert(id.clone(), Known { peer, next_catalog });
                            let q = self.catalog_query(id, peer);
                            out.push((peer, q));
                        }
                        RegistrarEvent::Refreshed { id } => {
                            self.registered.insert(id.clone(), peer);
                            if let Some(k) = self.known.get_mut(id) {
                                k.peer = peer;
                            }
                        }
                        RegistrarEvent::Offline { id, .. } => {
                            self.known.remove(id);
                            self.registered.remove(id);
                        }
                    }
                    events.push(ServerEvent::Registrar(ev));
                } else if let Err(Refusal::Malformed) = outcome {
                    events.push(ServerEvent::Refused {
                        reason: "malformed REGISTER",
                    });
                }
            }
            Method::Message => {
                let tag = random_token(4);
                let body = match manscdp::parse(&msg.body, &self.cfg.xml_limits) {
                    Ok(b) => b,
                    Err(_) => {
                        answer(
                            Message::response_to(&msg, 400, "Bad Request", Some(&tag)),
                            &mut out,
                            &mut events,
                        );
                        events.push(ServerEvent::Refused {
                            reason: "malformed MANSCDP",
                        });
                        return (out, events);
                    }
                };
                // The From user alone is anyone's to write: a MESSAGE speaks for a platform
                // only from where that platform registered.
                let platform = msg.from_user().unwrap_or_default().to_owned();
                let sender = self.sender_ok(&platform, peer);
                if sender == Some(false) {
                    answer(
                        Message::response_to(&msg, 403, "Forbidden", Some(&tag)),
                        &mut out,
                        &mut events,
                    );
                    events.push(ServerEvent::Refused {
                        reason: WRONG_SENDER,
                    });
                    return (out, events);
                }
                let registered = sender.is_some() && self.known.contains_key(&platform);
                match body {
                    Body::Keepalive { .. } if sender.is_none() => answer(
                        Message::response_to(&msg, 403, "Forbidden", Some(&tag)),
                        &mut out,
                        &mut events,
                    ),
                    Body::Keepalive { .. } => match self.registrar.keepalive(&platform, now) {
                        Some(ev) => {
                            answer(
                                Message::response_to(&msg, 200, "OK", Some(&tag)),
                                &mut out,
                                &mut events,
                            );
                            if let Some(RegistrarEvent::Online { id }) = &ev
                                && !self.known.contains_key(id)
                            {
                                // Back from a keepalive timeout: query it again.
                                self.known.insert(
                                    id.clone(),
                                    Known {
                                        peer,
                                        next_catalog: now,
                                    },
                                );
                            }
                            events.extend(ev.map(ServerEvent::Registrar));
                        }
                        None => answer(
                            Message::response_to(&msg, 403, "Forbidden", Some(&tag)),
                            &mut out,
                            &mut events,
                        ),
                    },
                    _ if !registered => answer(
                        Message::response_to(&msg, 403, "Forbidden", Some(&tag)),
                        &mut out,
                        &mut events,
                    ),
                    Body::Catalog(part) => {
                        answer(
                            Message::response_to(&msg, 200, "OK", Some(&tag)),
                            &mut out,
                            &mut events,
                        );
                        match self.catalogs.push(part, now) {
                            Ok(Some(catalog)) => {
                                events.push(ServerEvent::Catalog { platform, catalog })
                            }
                            Ok(None) => {}
                            Err(_) => events.push(ServerEvent::Refused {
                                reason: "catalog too large",
                            }),
                        }
                    }
                    Body::Other { .. } => answer(
                        Message::response_to(&msg, 200, "OK", Some(&tag)),
                        &mut out,
                        &mut events,
                    ),
                }
            }
            Method::Ack => {}
            Method::Bye => {
                if let Ok(call_id) = msg.call_id()
                    && let Some((_, dialog, call_peer)) = self.calls.get(call_id)
                    && !same_sender(*call_peer, peer, contact_addr(&dialog.remote_target))
                {
                    answer(
                        Message::response_to(&msg, 403, "Forbidden", Some(&random_token(4))),
                        &mut out,
                        &mut events,
                    );
                    events.push(ServerEvent::Refused {
                        reason: "BYE from another address",
                    });
                    return (out, events);
                }
                if let Ok(call_id) = msg.call_id()
                    && let Some((channel, _, _)) = self.calls.remove(call_id)
                {
                    events.push(ServerEvent::Stopped {
                        channel,
                        call_id: call_id.to_owned(),
                    });
                }
                answer(
                    Message::response_to(&msg, 200, "OK", Some(&random_token(4))),
                    &mut out,
                    &mut events,
                )
            }
            Method::Options => answer(
                Message::response_to(&msg, 200, "OK", Some(&random_token(4))),
                &mut out,
                &mut events,
            ),
            _ => answer(
                Message::response_to(&msg, 405, "Method Not Allowed", Some(&random_token(4)))
                    .with_header("Allow", "REGISTER, MESSAGE, ACK, BYE, OPTIONS"),
                &mut out,
                &mut events,
            ),
        }
        (out, events)
    }

    /// An INVITE for `channel` of a registered `platform`: what to send and the Call-ID
    /// (`None` when the platform is not registered). The SSRC is built per Annex F from
    /// skynet's domain and a counter.
    pub fn invite(
        &mut self,
        platform: &str,
        channel: &str,
        media_ip: &str,
        media_port: u16,
        media: MediaTransport,
        now: Instant,
    ) -> Option<(Peer, Vec<u8>, String)> {
        let peer = self.known.get(platform)?.peer;
        self.ssrc_counter = self.ssrc_counter.wrapping_add(1) % 10_000;
        let ssrc = invite::ssrc(true, &self.cfg.domain, self.ssrc_counter).ok()?;
        let our_addr = self
            .local
            .get(peer.transport())
            .copied()
            .unwrap_or_else(|| peer.addr())
            .to_string();
        let target = peer.addr().to_string();
        self.cseq = self.cseq.wrapping_add(1);
        let params = InviteParams {
            our_id: &self.cfg.id,
            our_domain: &self.cfg.domain,
            our_addr: &our_addr,
            sip_transport: peer.transport(),
            channel_id: channel,
            target: &target,
            media_ip,
            media_port,
            media,
            ssrc: &ssrc,
        };
        let msg = invite::build_invite(&params, self.cseq);
        let call_id = msg.call_id().ok()?.to_owned();
        let bytes = msg.to_bytes();
        let next_retransmit = matches!(peer, Peer::Udp(_)).then(|| now + T1);
        let inviting = Inviting {
            channel: channel.to_owned(),
            msg,
            peer,
            bytes: bytes.clone(),
            started: now,
            next_retransmit,
            interval: T1,
        };
        self.inviting.insert(call_id.clone(), inviting);
        Some((peer, bytes, call_id))
    }

    /// A BYE for a confirmed call (stopping the channel).
    pub fn bye(&mut self, call_id: &str) -> Option<(Peer, Vec<u8>)> {
        let (_, mut dialog, peer) = self.calls.remove(call_id)?;
        Some((peer, dialog.bye().to_bytes()))
    }

    fn response(
        &mut self,
        res: &Message,
        code: u16,
        from: Peer,
        out: &mut Vec<(Peer, Vec<u8>)>,
        events: &mut Vec<ServerEvent>,
    ) {
        let Ok(call_id) = res.call_id() else { return };
        if !matches!(res.cseq(), Ok((_, Method::Invite))) {
            return;
        }
        // An answer counts only from where its INVITE went.
        let expected = match (self.inviting.get(call_id), self.calls.get(call_id)) {
            (Some(t), _) => t.peer,
            (None, Some((_, _, peer))) => *peer,
            (None, None) => return,
        };
        if !same_sender(expected, from, None) {
            events.push(ServerEvent::Refused {
                reason: "INVITE answer from another address",
            });
            return;
        }
        if code < 200 {
            // Proceeding: the INVITE is no longer sent again.
            if let Some(t) = self.inviting.get_mut(call_id) {
                t.next_retransmit = None;
            }
            return;
        }
        // A retransmitted 2xx: ACK it again.
        if (200..300).contains(&code)
            && let Some((_, dialog, peer)) = self.calls.get(call_id)
        {
            out.push((*peer, dialog.ack().to_bytes()));
            return;
        }
        let Some(Inviting {
            channel,
            msg: inv,
            peer,
            ..
        }) = self.inviting.remove(call_id)
        else {
            return;
        };
        let call_id = call_id.to_owned();
        if (200..300).contains(&code) {
            match (Dialog::from_ok(&inv, res), invite::parse_answer(&res.body)) {
                (Ok(dialog), Ok(answer)) => {
                    out.push((peer, dialog.ack().to_bytes()));
                    self.calls
                        .insert(call_id.clone(), (channel.clone(), dialog, peer));
                    events.push(ServerEvent::Playing {
                        channel,
                        call_id,
                        answer,
                    });
                }
                (Ok(mut dialog), Err(_)) => {
                    // ACK, then hang up: the answer cannot be played.
                    out.push((peer, dialog.ack().to_bytes()));
                    out.push((peer, dialog.bye().to_bytes()));
                    events.push(ServerEvent::InviteFailed {
                        channel,
                        call_id,
                        code: 0,
                    });
                }
                (Err(_), _) => events.push(ServerEvent::InviteFailed {
                    channel,
                    call_id,
                    code: 0,
                }),
            }
        } else {
            // RFC 3261 §17.1.1.3: a non-2xx final response is ACKed in the INVITE's transaction.
            let mut ack = Message::request(
                Method::Ack,
                match &inv.start {
                    StartLine::Request { uri, .. } => uri.clone(),
                    StartLine::Response { .. } => String::new(),
                },
            );
            for name in ["Via", "From", "Call-ID"] {
                if let Some(v) = inv.header(name) {
                    ack = ack.with_header(name, v);
                }
            }
            if let Some(to) = res.header("To") {
                ack = ack.with_header("To", to);
            }
            let n = inv.cseq().map(|(n, _)| n).unwrap_or(1);
            ack = ack
                .with_header("CSeq", format!("{n} ACK"))
                .with_header("Max-Forwards", "70");
            out.push((peer, ack.to_bytes()));
            events.push(ServerEvent::InviteFailed {
                channel,
                call_id,
                code,
            });
        }
    }

    /// Advances time: offline platforms, abandoned catalogs, periodic catalog queries.
    pub fn tick(&mut self, now: Instant) -> Step {
        let mut events: Vec<ServerEvent> = self
            .registrar
            .tick(now)
            .into_iter()
            .map(ServerEvent::Registrar)
            .collect();
        for ev in &events {
            if let ServerEvent::Registrar(RegistrarEvent::Offline { id, reason }) = ev {
                self.known.remove(id);
                if *reason != OfflineReason::KeepaliveTimeout {
                    self.registered.remove(id);
                }
            }
        }
        events.extend(self.catalogs.expire(now).into_iter().map(|a| {
            ServerEvent::CatalogIncomplete {
                platform: a.device_id,
                got: a.got,
                sum_num: a.sum_num,
            }
        }));
        let due: Vec<(String, Peer)> = self
            .known
            .iter()
            .filter(|(_, k)| now >= k.next_catalog)
            .map(|(id, k)| (id.clone(), k.peer))
            .collect();
        let mut out = Vec::new();
        let timed_out: Vec<String> = self
            .inviting
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.started) >= TIMER_B)
            .map(|(id, _)| id.clone())
            .collect();
        for call_id in timed_out {
            if let Some(t) = self.inviting.remove(&call_id) {
                events.push(ServerEvent::InviteFailed {
                    channel: t.channel,
                    call_id,
                    code: 408,
                });
            }
        }
        for t in self.inviting.values_mut() {
            if let Some(at) = t.next_retransmit
                && now >= at
            {
                out.push((t.peer, t.bytes.clone()));
                t.interval *= 2;
                t.next_retransmit = Some(now + t.interval);
            }
        }
        for (id, peer) in due {
            let q = self.catalog_query(&id, peer);
            out.push((peer, q));
            if let Some(k) = self.known.get_mut(&id) {
                k.next_catalog = now + self.cfg.catalog_interval;
            }
        }
        (out, events)
    }
}

/// What the rest of skynet asks of a running [`Server`].
#[derive(Debug)]
pub enum Command {
    /// INVITE a channel; the reply is its Call-ID (`None`: the platform is not registered).
    /// The outcome comes as [`ServerEvent::Playing`] or [`ServerEvent::InviteFailed`].
    Invite {
        platform: String,
        channel: String,
        media_ip: String,
        media_port: u16,
        media: MediaTransport,
        reply: tokio::sync::oneshot::Sender<Option<String>>,
    },
    /// Hang up a call.
    Bye { call_id: String },
}

/// Settings of a [`Server`]'s sockets ([`Server::with_config`]; [`Server::bind`] takes the
/// defaults).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// TCP connections served at once; one more is accepted and closed at once.
    pub max_tcp_connections: usize,
    /// A TCP connection without a complete message this long is closed (CRLF keep-alives
    /// do not count); a write stalled this long closes it too.
    pub tcp_idle_timeout: Duration,
    /// Messages waiting to be written to one TCP connection; a peer that lets more pile
    /// up (it does not read) is disconnected.
    pub tcp_send_queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_tcp_connections: 256,
            tcp_idle_timeout: Duration::from_secs(120),
            tcp_send_queue: 64,
        }
    }
}

/// Counters of what a running [`Server`] refused or survived (also reported one by one as
/// [`ServerEvent::Refused`]).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// UDP receive errors (the socket is read on).
    pub udp_recv_errors: AtomicU64,
    /// TCP accept errors (EMFILE, ENFILE, ...: the listener backs off briefly, then goes on).
    pub tcp_accept_errors: AtomicU64,
    /// TCP connections closed at once: [`ServerConfig::max_tcp_connections`] were open.
    pub tcp_over_limit: AtomicU64,
    /// TCP connections closed after [`ServerConfig::tcp_idle_timeout`] without a message.
    pub tcp_idle_closed: AtomicU64,
    /// TCP connections dropped because their send queue was full.
    pub tcp_send_queue_full: AtomicU64,
    /// TCP connections closed for sending more CRLF keep-alives than a header section's
    /// worth between two messages.
    pub tcp_keepalive_floods: AtomicU64,
}

fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// How long to stop accepting after an accept error: out of file descriptors (EMFILE,
/// ENFILE) or memory, a short pause, as retrying at once only spins; otherwise none.
fn accept_backoff(e: &std::io::Error) -> Option<Duration> {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    match e.raw_os_error() {
        Some(ENFILE | EMFILE) => Some(Duration::from_millis(100)),
        _ if e.kind() == std::io::ErrorKind::OutOfMemory => Some(Duration::from_millis(100)),
        _ => None,
    }
}

/// After a UDP receive error the socket is read again after this pause (an error that
/// repeats must not spin the loop).
const UDP_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// What a TCP connection's task tells the loop.
enum FromConn {
    Message(SocketAddr, Vec<u8>),
    Closed {
        from: SocketAddr,
        id: u64,
        reason: Option<&'static str>,
    },
}

struct Conn {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    task: tokio::task::AbortHandle,
}

const IDLE: &str = "TCP connection idle";
const KEEPALIVE_FLOOD: &str = "TCP keep-alive flood";

/// The endpoint on sockets: one UDP socket and one TCP listener on the same address.
pub struct Server {
    udp: UdpSocket,
    tcp: TcpListener,
    core: Core,
    cfg: ServerConfig,
    stats: Arc<ServerStats>,
}

impl Server {
    /// Binds UDP and TCP on `listen` (port 0: the TCP listener takes the UDP port).
    pub async fn bind(listen: SocketAddr, core: Core) -> std::io::Result<Self> {
        let udp = UdpSocket::bind(listen).await?;
        let tcp = TcpListener::bind(udp.local_addr()?).await?;
        let mut core = core;
        core.set_local("UDP", udp.local_addr()?);
        core.set_local("TCP", tcp.local_addr()?);
        Ok(Self {
            udp,
            tcp,
            core,
            cfg: ServerConfig::default(),
            stats: Arc::default(),
        })
    }

    /// Other socket settings than the defaults.
    pub fn with_config(mut self, cfg: ServerConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// The counters of what it refused, shared with the running server.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.stats)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Runs until `shutdown` fires or the event receiver is dropped. Socket errors do not
    /// end it: they are counted ([`ServerStats`]), reported as [`ServerEvent::Refused`],
    /// and the socket is used again (after a short pause when out of file descriptors).
    pub async fn run(
        mut self,
        events: mpsc::Sender<ServerEvent>,
        mut commands: mpsc::Receiver<Command>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; 65_536];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let (in_tx, mut in_rx) = mpsc::channel::<FromConn>(256);
        let mut conns: HashMap<SocketAddr, Conn> = HashMap::new();
        let mut next_id: u64 = 0;
        let mut accept_paused: Option<tokio::time::Instant> = None;
        let mut udp_paused: Option<tokio::time::Instant> = None;
        let stats = Arc::clone(&self.stats);
        let refused = |reason| (Vec::new(), vec![ServerEvent::Refused { reason }]);
        loop {
            let step = tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                r = self.udp.recv_from(&mut buf), if udp_paused.is_none() => match r {
                    Ok((n, from)) => self.core.handle(&buf[..n], Peer::Udp(from), Instant::now()),
                    Err(_) => {
                        count(&stats.udp_recv_errors);
                        udp_paused = Some(tokio::time::Instant::now() + UDP_ERROR_PAUSE);
                        refused("UDP receive error")
                    }
                },
                _ = sleep_until_some(udp_paused), if udp_paused.is_some() => {
                    udp_paused = None;
                    continue;
                }
                r = self.tcp.accept(), if accept_paused.is_none() => match r {
                    Err(e) => {
                        count(&stats.tcp_accept_errors);
                        if let Some(pause) = accept_backoff(&e) {
                            accept_paused = Some(tokio::time::Instant::now() + pause);
                        }
                        refused("TCP accept error")
                    }
                    Ok((stream, _)) if conns.len() >= self.cfg.max_tcp_connections => {
                        drop(stream);
                        count(&stats.tcp_over_limit);
                        refused("TCP connection limit")
                    }
                    Ok((stream, from)) => {
                        next_id += 1;
                        let (tx, rx) = mpsc::channel(self.cfg.tcp_send_queue.max(1));
                        let task = tokio::spawn(connection(
                            stream,
                            from,
                            next_id,
                            in_tx.clone(),
                            rx,
                            self.core.cfg.limits,
                            self.cfg.tcp_idle_timeout,
                        ));
                        // A peer reconnecting from the same address replaces its old connection.
                        if let Some(old) = conns.insert(from, Conn { id: next_id, tx, task: task.abort_handle() }) {
                            old.task.abort();
                        }
                        continue;
                    }
                },
                _ = sleep_until_some(accept_paused), if accept_paused.is_some() => {
                    accept_paused = None;
                    continue;
                }
                Some(m) = in_rx.recv() => match m {
                    FromConn::Message(from, bytes) => self.core.handle(&bytes, Peer::Tcp(from), Instant::now()),
                    FromConn::Closed { from, id, reason } => {
                        if conns.get(&from).is_some_and(|c| c.id == id) {
                            conns.remove(&from);
                        }
                        match reason {
                            Some(reason) => {
                                match reason {
                                    IDLE => count(&stats.tcp_idle_closed),
                                    KEEPALIVE_FLOOD => count(&stats.tcp_keepalive_floods),
                                    _ => {}
                                }
                                refused(reason)
                            }
                            None => continue,
                        }
                    }
                },
                _ = tick.tick() => self.core.tick(Instant::now()),
                Some(cmd) = commands.recv() => match cmd {
                    Command::Invite { platform, channel, media_ip, media_port, media, reply } => {
                        let sent = self.core.invite(&platform, &channel, &media_ip, media_port, media, Instant::now());
                        let (out, call_id) = match sent {
                            Some((peer, bytes, call_id)) => (vec![(peer, bytes)], Some(call_id)),
                            None => (Vec::new(), None),
                        };
                        let _ = reply.send(call_id);
                        (out, Vec::new())
                    }
                    Command::Bye { call_id } => (self.core.bye(&call_id).into_iter().collect(), Vec::new()),
                },
            };
            let (out, mut evs) = step;
            for (peer, bytes) in out {
                match peer {
                    Peer::Udp(a) => {
                        let _ = self.udp.send_to(&bytes, a).await;
                    }
                    Peer::Tcp(a) => {
                        // Never wait on one peer: a connection whose queue is full (it does
                        // not read) is dropped.
                        let full = match conns.get(&a).map(|c| c.tx.try_send(bytes)) {
                            None | Some(Ok(())) => false,
                            Some(Err(mpsc::error::TrySendError::Closed(_))) => {
                                conns.remove(&a);
                                false
                            }
                            Some(Err(mpsc::error::TrySendError::Full(_))) => true,
                        };
                        if full && let Some(c) = conns.remove(&a) {
                            c.task.abort();
                            count(&stats.tcp_send_queue_full);
                            evs.push(ServerEvent::Refused {
                                reason: "TCP send queue full",
                            });
                        }
                    }
                }
            }
            for ev in evs {
                if events.send(ev).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drops the CRLF keep-alives (RFC 5626) at the front of a TCP stream's buffer, so that
/// they neither pile up nor are scanned again. `blank` counts them since the last complete
/// message: false when there are more than `limit` (a header section's worth).
fn drain_keepalives(acc: &mut Vec<u8>, blank: &mut usize, limit: usize) -> bool {
    let n = acc
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    acc.drain(..n);
    *blank = blank.saturating_add(n);
    *blank <= limit
}

/// One TCP connection: messages cut from the stream go to the loop; what the loop sends
/// goes out. It tells the loop when it ends, and why when that is worth reporting.
async fn connection(
    stream: TcpStream,
    from: SocketAddr,
    id: u64,
    to_loop: mpsc::Sender<FromConn>,
    from_loop: mpsc::Receiver<Vec<u8>>,
    limits: Limits,
    idle: Duration,
) {
    let (rd, wr) = stream.into_split();
    // Reading and writing go on side by side: a peer that does not read stalls only the
    // writer, whose queue then fills and the loop drops the connection.
    let reason = tokio::select! {
        r = read_side(rd, from, &to_loop, limits, idle) => r,
        r = write_side(wr, from_loop, idle) => r,
    };
    let _ = to_loop.send(FromConn::Closed { from, id, reason }).await;
}

async fn read_side(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    from: SocketAddr,
    to_loop: &mpsc::Sender<FromConn>,
    limits: Limits,
    idle: Duration,
) -> Option<&'static str> {
    let mut acc: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut blank = 0usize;
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        let n = tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => return None,
                Ok(n) => n,
            },
            _ = tokio::time::sleep_until(deadline) => return Some(IDLE),
        };
        acc.extend_from_slice(&buf[..n]);
        loop {
            if !drain_keepalives(&mut acc, &mut blank, limits.max_head) {
                return Some(KEEPALIVE_FLOOD);
            }
            match Message::parse_stream(&acc, &limits) {
                Ok(Some((_, used))) => {
                    let one = acc.drain(..used).collect::<Vec<u8>>();
                    blank = 0;
                    deadline = tokio::time::Instant::now() + idle;
                    if to_loop.send(FromConn::Message(from, one)).await.is_err() {
                        return None;
                    }
                }
                Ok(None) => break,
                // A stream that cannot be framed cannot be resynchronised: close it.
                Err(_) => return Some("malformed SIP"),
            }
        }
    }
}

async fn write_side(
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    mut from_loop: mpsc::Receiver<Vec<u8>>,
    idle: Duration,
) -> Option<&'static str> {
    while let Some(bytes) = from_loop.recv().await {
        match tokio::time::timeout(idle, wr.write_all(&bytes)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return None,
            Err(_) => return Some("TCP write stalled"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest;
    use crate::manscdp::CatalogItem;
    use crate::sip::param;

    const PLATFORM: &str = "34020000002000000002";
    const ME: &str = "34020000002000000001";

    fn core_config() -> CoreConfig {
        CoreConfig {
            id: ME.into(),
            domain: "3402000000".into(),
            registrar: RegistrarConfig::new("3402000000", "secret-pw"),
            limits: Limits::default(),
            xml_limits: manscdp::Limits::default(),
            catalog_interval: Duration::from_secs(600),
        }
    }

    fn register(via: &str, cseq: u32, auth: Option<String>) -> Vec<u8> {
        let mut m = Message::request(Method::Register, format!("sip:{ME}@3402000000"))
            .with_header("Via", format!("SIP/2.0/{via};rport;branch=z9hG4bK{cseq}"))
            .with_header("From", format!("<sip:{PLATFORM}@3402000000>;tag=77"))
            .with_header("To", format!("<sip:{PLATFORM}@3402000000>"))
            .with_header("Call-ID", "reg-1")
            .with_header("CSeq", format!("{cseq} REGISTER"))
            .with_header("Contact", format!("<sip:{PLATFORM}@127.0.0.1>"))
            .with_header("Expires", "3600");
        if let Some(a) = auth {
            m = m.with_header("Authorization", a);
        }
        m.to_bytes()
    }

    fn message(body: Vec<u8>, cseq: u32) -> Vec<u8> {
        Message::request(Method::Message, format!("sip:{ME}@3402000000"))
            .with_header(
                "Via",
                format!("SIP/2.0/UDP 127.0.0.1;branch=z9hG4bKm{cseq}"),
            )
            .with_header("From", format!("<sip:{PLATFORM}@3402000000>;tag=78"))
            .with_header("To", format!("<sip:{ME}@3402000000>"))
            .with_header("Call-ID", format!("msg-{cseq}"))
            .with_header("CSeq", format!("{cseq} MESSAGE"))
            .with_body("Application/MANSCDP+xml", body)
            .to_bytes()
    }

    fn auth_for(challenge: &Message, password: &str) -> String {
        let h = challenge.header("WWW-Authenticate").unwrap();
        let nonce = h
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        digest::authorization(
            PLATFORM,
            "3402000000",
            nonce,
            &format!("sip:{ME}@3402000000"),
            "REGISTER",
            password,
            Some(("00000001", "c0ffee")),
        )
    }

    fn catalog_body() -> Vec<u8> {
        let cam = CatalogItem {
            device_id: "34020000001320000001".into(),
            name: "东门".into(),
            parental: Some(false),
            longitude: Some(117.2),
            latitude: Some(31.8),
            ..Default::default()
        };
        manscdp::catalog_response(1, PLATFORM, 1, &[cam])
    }

    /// A scripted lower platform over a real UDP socket: a wrong password gets 403, the
    /// right one 200, the catalog query comes, a GB2312 catalog answer is assembled.
    #[tokio::test]
    async fn a_lower_platform_registers_over_udp_and_its_catalog_is_assembled() {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), Core::new(core_config()))
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, mut events) = mpsc::channel(64);
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let (cmd_tx, cmds) = mpsc::channel(8);
        let task = tokio::spawn(server.run(tx, cmds, stop));

        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = vec![0u8; 65_536];
        let mut recv = async |peer: &UdpSocket| {
            let n = tokio::time::timeout(Duration::from_secs(10), peer.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            Message::parse(&buf[..n], &Limits::default()).unwrap()
        };
        let via = format!("UDP {}", peer.local_addr().unwrap());
        peer.send_to(&register(&via, 1, None), addr).await.unwrap();
        let challenge = recv(&peer).await;
        assert_eq!(challenge.status(), Some(401));
        peer.send_to(
            &register(&via, 2, Some(auth_for(&challenge, "wrong"))),
            addr,
        )
        .await
        .unwrap();
        assert_eq!(recv(&peer).await.status(), Some(403));
        peer.send_to(&register(&via, 3, None), addr).await.unwrap();
        let challenge = recv(&peer).await;
        peer.send_to(
            &register(&via, 4, Some(auth_for(&challenge, "secret-pw"))),
            addr,
        )
        .await
        .unwrap();
        assert_eq!(recv(&peer).await.status(), Some(200));
        let query = recv(&peer).await;
        assert_eq!(query.method(), Some(&Method::Message));
        assert!(matches!(
            manscdp::parse(&query.body, &manscdp::Limits::default()).unwrap(),
            Body::Other {
                cmd_type: manscdp::CmdType::Catalog,
                ..
            }
        ));
        let ok = Message::response_to(&query, 200, "OK", Some("q"));
        peer.send_to(&ok.to_bytes(), addr).await.unwrap();
        peer.send_to(&message(catalog_body(), 5), addr)
            .await
            .unwrap();
        assert_eq!(recv(&peer).await.status(), Some(200));
        peer.send_to(&message(manscdp::keepalive_notify(2, PLATFORM), 6), addr)
            .await
            .unwrap();
        assert_eq!(recv(&peer).await.status(), Some(200));
        peer.send_to(b"garbage\r\n\r\n", addr).await.unwrap();
        peer.send_to(
            &message(b"<Notify><CmdType>Nope</CmdType></Notify>".to_vec(), 7),
            addr,
        )
        .await
        .unwrap();
        assert_eq!(recv(&peer).await.status(), Some(400));

        let mut seen = Vec::new();
        while !seen.iter().any(|e| {
            matches!(
                e,
                ServerEvent::Refused {
                    reason: "malformed MANSCDP"
                }
            )
        }) {
            seen.push(
                tokio::time::timeout(Duration::from_secs(10), events.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert!(seen.contains(&ServerEvent::Request {
            method: "REGISTER",
            code: 403
        }));
        assert!(
            seen.contains(&ServerEvent::Registrar(RegistrarEvent::Online {
                id: PLATFORM.into()
            }))
        );
        assert!(seen.contains(&ServerEvent::Refused {
            reason: "malformed SIP"
        }));
        let cat = seen.iter().find_map(|e| match e {
            ServerEvent::Catalog { platform, catalog } if platform == PLATFORM => Some(catalog),
            _ => None,
        });
        let cams: Vec<_> = cat.unwrap().cameras().map(|c| c.name.as_str()).collect();
        assert_eq!(cams, ["东门"]);

        // The wiring INVITEs the camera; the scripted platform answers 200 OK and gets its ACK.
        let (reply, call_id) = tokio::sync::oneshot::channel();
        let invite = Command::Invite {
            platform: PLATFORM.into(),
            channel: "34020000001320000001".into(),
            media_ip: "127.0.0.1".into(),
            media_port: 30_000,
            media: MediaTransport::Udp,
            reply,
        };
        cmd_tx.send(invite).await.unwrap();
        let call_id = call_id.await.unwrap().unwrap();
        let inv = recv(&peer).await;
        assert_eq!(inv.call_id().unwrap(), call_id);
        let sdp = "v=0\r\nc=IN IP4 127.0.0.1\r\nm=video 15060 RTP/AVP 96\r\ny=0200000001\r\n";
        let ok = Message::response_to(&inv, 200, "OK", Some("dev"))
            .with_body("application/sdp", sdp.as_bytes().to_vec());
        peer.send_to(&ok.to_bytes(), addr).await.unwrap();
        assert_eq!(recv(&peer).await.method(), Some(&Method::Ack));
        cmd_tx.send(Command::Bye { call_id }).await.unwrap();
        assert_eq!(recv(&peer).await.method(), Some(&Method::Bye));
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .unwrap()
                .unwrap();
            if let ServerEvent::Playing { answer, .. } = ev {
                assert_eq!(answer.ssrc, Some(200_000_001));
                break;
            }
        }
        stop_tx.send(true).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_lower_platform_registers_over_tcp() {
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), Core::new(core_config()))
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (tx, _events) = mpsc::channel(64);
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let (_cmd_tx, cmds) = mpsc::channel(8);
        tokio::spawn(server.run(tx, cmds, stop));
        let mut s = TcpStream::connect(addr).await.unwrap();
        let via = format!("TCP {}", s.local_addr().unwrap());
        let mut acc = Vec::new();
        let mut buf = vec![0u8; 8192];
        let mut next = async |s: &mut TcpStream, acc: &mut Vec<u8>| loop {
            if let Some((m, n)) = Message::parse_stream(acc, &Limits::default()).unwrap() {
                acc.drain(..n);
                return m;
            }
            let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "connection closed");
            acc.extend_from_slice(&buf[..n]);
        };
        // Both requests in one write: the stream is cut by Content-Length.
        let mut two = register(&via, 1, None);
        two.extend_from_slice(b"\r\n\r\n");
        s.write_all(&two).await.unwrap();
        let challenge = next(&mut s, &mut acc).await;
        assert_eq!(challenge.status(), Some(401));
        assert!(param(challenge.header("To").unwrap(), "tag").is_some());
        s.write_all(&register(&via, 2, Some(auth_for(&challenge, "secret-pw"))))
            .await
            .unwrap();
        assert_eq!(next(&mut s, &mut acc).await.status(), Some(200));
        let query = next(&mut s, &mut acc).await;
        assert_eq!(query.method(), Some(&Method::Message));
        assert!(query.header("Via").unwrap().starts_with("SIP/2.0/TCP "));
    }

    fn online_core() -> (Core, Peer, Instant) {
        let mut core = Core::new(core_config());
        core.set_local("UDP", "10.0.0.5:5060".parse().unwrap());
        let peer = Peer::Udp("10.0.0.9:5060".parse().unwrap());
        let t0 = Instant::now();
        let (out, _) = core.handle(&register("UDP 10.0.0.9:5060", 1, None), peer, t0);
        let challenge = Message::parse(&out[0].1, &Limits::default()).unwrap();
        core.handle(
            &register(
                "UDP 10.0.0.9:5060",
                2,
                Some(auth_for(&challenge, "secret-pw")),
            ),
            peer,
            t0,
        );
        (core, peer, t0)
    }

    #[test]
    fn an_invite_answered_200_is_acked_and_playing_and_a_bye_ends_it() {
        let (mut core, peer, t0) = online_core();
        let cam = "34020000001320000001";
        assert!(
            core.invite(
                "34020000002000000099",
                cam,
                "10.0.0.5",
                30000,
                MediaTransport::Udp,
                t0
            )
            .is_none()
        );
        let (to, bytes, call_id) = core
            .invite(PLATFORM, cam, "10.0.0.5", 30000, MediaTransport::Udp, t0)
            .unwrap();
        assert_eq!(to, peer);
        let inv = Message::parse(&bytes, &Limits::default()).unwrap();
        assert_eq!(
            inv.header("Subject"),
            Some("34020000001320000001:0200000001,34020000002000000001:0")
        );
        let trying = Message::response_to(&inv, 100, "Trying", None);
        assert_eq!(core.handle(&trying.to_bytes(), peer, t0), (vec![], vec![]));
        let sdp = "v=0\r\nc=IN IP4 10.0.0.9\r\nm=video 15060 RTP/AVP 96\r\ny=0200000001\r\n";
        let ok = Message::response_to(&inv, 200, "OK", Some("dev"))
            .with_header("Contact", format!("<sip:{cam}@10.0.0.9:5060>"))
            .with_body("application/sdp", sdp.as_bytes().to_vec());
        let (out, ev) = core.handle(&ok.to_bytes(), peer, t0);
        let ack = Message::parse(&out[0].1, &Limits::default()).unwrap();
        assert_eq!(ack.method(), Some(&Method::Ack));
        let ServerEvent::Playing {
            channel, answer, ..
        } = &ev[0]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (channel.as_str(), answer.port, answer.ssrc),
            (cam, 15060, Some(200_000_001))
        );
        // A retransmitted 200 OK is ACKed again, without a second Playing.
        let (out, ev) = core.handle(&ok.to_bytes(), peer, t0);
        assert_eq!((out.len(), ev.len()), (1, 0));
        let (_, bye) = core.bye(&call_id).unwrap();
        let bye = Message::parse(&bye, &Limits::default()).unwrap();
        assert_eq!(bye.method(), Some(&Method::Bye));
        assert!(core.bye(&call_id).is_none());
    }

    #[test]
    fn a_refused_invite_is_acked_and_reported_and_a_device_bye_stops_the_call() {
        let (mut core, peer, t0) = online_core();
        let cam = "34020000001320000001";
        let (_, bytes, _) = core
            .invite(
                PLATFORM,
                cam,
                "10.0.0.5",
                30000,
                MediaTransport::TcpPassive,
                t0,
            )
            .unwrap();
        let inv = Message::parse(&bytes, &Limits::default()).unwrap();
        assert!(String::from_utf8_lossy(&inv.body).contains("a=setup:passive"));
        let busy = Message::response_to(&inv, 486, "Busy Here", Some("x"));
        let (out, ev) = core.handle(&busy.to_bytes(), peer, t0);
        let ack = Message::parse(&out[0].1, &Limits::default()).unwrap();
        assert_eq!(ack.cseq().unwrap().1, Method::Ack);
        assert_eq!(ack.header("Via"), inv.header("Via"), "same transaction");
        assert!(matches!(
            &ev[..],
            [ServerEvent::InviteFailed { code: 486, .. }]
        ));

        let (_, bytes, call_id) = core
            .invite(PLATFORM, cam, "10.0.0.5", 30000, MediaTransport::Udp, t0)
            .unwrap();
        let inv = Message::parse(&bytes, &Limits::default()).unwrap();
        let ok = Message::response_to(&inv, 200, "OK", Some("dev")).with_body(
            "application/sdp",
            b"v=0\r\nc=IN IP4 10.0.0.9\r\nm=video 15060 RTP/AVP 96\r\n".to_vec(),
        );
        core.handle(&ok.to_bytes(), peer, t0);
        let bye = Message::request(Method::Bye, format!("sip:{ME}@10.0.0.5:5060"))
            .with_header("Via", "SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKb")
            .with_header("From", format!("<sip:{cam}@3402000000>;tag=dev"))
            .with_header("To", format!("<sip:{ME}@3402000000>;tag=1"))
            .with_header("Call-ID", call_id.clone())
            .with_header("CSeq", "1 BYE");
        let (out, ev) = core.handle(&bye.to_bytes(), peer, t0);
        assert_eq!(
            Message::parse(&out[0].1, &Limits::default())
                .unwrap()
                .status(),
            Some(200)
        );
        assert_eq!(
            ev[0],
            ServerEvent::Stopped {
                channel: cam.into(),
                call_id
            }
        );
    }

    #[test]
    fn an_unanswered_udp_invite_is_sent_again_until_timer_b_then_fails_408() {
        let (mut core, peer, t0) = online_core();
        let cam = "34020000001320000001";
        let (_, first, call_id) = core
            .invite(PLATFORM, cam, "10.0.0.5", 30000, MediaTransport::Udp, t0)
            .unwrap();
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let (out, _) = core.tick(at(0.6));
        assert_eq!(out, vec![(peer, first.clone())], "sent again after T1");
        assert!(core.tick(at(1.0)).0.is_empty());
        assert_eq!(core.tick(at(1.7)).0.len(), 1, "then after 2·T1");
        // A provisional answer stops the retransmissions, not the timeout.
        let inv = Message::parse(&first, &Limits::default()).unwrap();
        core.handle(
            &Message::response_to(&inv, 100, "Trying", None).to_bytes(),
            peer,
            at(2.0),
        );
        assert!(core.tick(at(10.0)).0.is_empty());
        let (_, ev) = core.tick(at(32.0));
        assert_eq!(
            ev,
            vec![ServerEvent::InviteFailed {
                channel: cam.into(),
                call_id,
                code: 408
            }]
        );
    }

    #[test]
    fn a_silent_platform_goes_offline_and_is_queried_no_more() {
        let mut core = Core::new(CoreConfig {
            catalog_interval: Duration::from_secs(30),
            ..core_config()
        });
        let peer = Peer::Udp("127.0.0.1:5060".parse().unwrap());
        let t0 = Instant::now();
        let (out, _) = core.handle(&register("UDP 127.0.0.1:5060", 1, None), peer, t0);
        let challenge = Message::parse(&out[0].1, &Limits::default()).unwrap();
        let (out, ev) = core.handle(
            &register(
                "UDP 127.0.0.1:5060",
                2,
                Some(auth_for(&challenge, "secret-pw")),
            ),
            peer,
            t0,
        );
        assert_eq!(out.len(), 2, "200 OK and the catalog query");
        assert!(ev.contains(&ServerEvent::Registrar(RegistrarEvent::Online {
            id: PLATFORM.into()
        })));
        let (out, _) = core.tick(t0 + Duration::from_secs(31));
        assert_eq!(out.len(), 1, "the periodic catalog query");
        let (_, ev) = core.tick(t0 + Duration::from_secs(181));
        assert!(matches!(
            &ev[..],
            [ServerEvent::Registrar(RegistrarEvent::Offline { .. })]
        ));
        let (out, _) = core.tick(t0 + Duration::from_secs(300));
        assert!(out.is_empty());
        // Its catalog is refused while it is not registered.
        let (out, _) = core.handle(
            &message(catalog_body(), 9),
            peer,
            t0 + Duration::from_secs(301),
        );
        assert_eq!(
            Message::parse(&out[0].1, &Limits::default())
                .unwrap()
                .status(),
            Some(403)
        );
    }

    #[test]
    fn a_register_replayed_from_another_address_does_not_move_the_platform() {
        // The platform's own authenticated REGISTER, captured and sent again by a stranger:
        // its nonce was used, so it is challenged, and the platform stays where it was.
        let mut core = Core::new(core_config());
        core.set_local("UDP", "10.0.0.5:5060".parse().unwrap());
        let peer = Peer::Udp("10.0.0.9:5060".parse().unwrap());
        let t0 = Instant::now();
        let (out, _) = core.handle(&register("UDP 10.0.0.9:5060", 1, None), peer, t0);
        let challenge = Message::parse(&out[0].1, &Limits::default()).unwrap();
        let signed = register(
            "UDP 10.0.0.9:5060",
            2,
            Some(auth_for(&challenge, "secret-pw")),
        );
        let (out, _) = core.handle(&signed, peer, t0);
        let ok = Message::parse(&out[0].1, &Limits::default()).unwrap();
        assert_eq!(ok.status(), Some(200));
        let stranger = Peer::Udp("10.6.6.6:5060".parse().unwrap());
        let (out, ev) = core.handle(&signed, stranger, t0 + Duration::from_secs(1));
        let replayed = Message::parse(&out[0].1, &Limits::default()).unwrap();
        assert_ne!(replayed.status(), Some(200), "{replayed:?}");
        assert!(
            !ev.iter()
                .any(|e| matches!(e, ServerEvent::Registrar(RegistrarEvent::Refreshed { .. }))),
            "{ev:?}"
        );
        // The stranger's messages are still refused; the platform's are still taken.
        let (out, _) = core.handle(&message(catalog_body(), 3), stranger, t0);
        let res = Message::parse(&out[0].1, &Limits::default()).unwrap();
        assert_eq!(res.status(), Some(403));
        let (out, ev) = core.handle(&message(catalog_body(), 4), peer, t0);
        let res = Message::parse(&out[0].1, &Limits::default()).unwrap();
        assert_eq!(res.status(), Some(200));
        assert!(ev.iter().any(|e| matches!(e, ServerEvent::Catalog { .. })));
    }

    #[test]
    fn messages_from_another_address_than_the_registered_one_get_403() {
        let (mut core, peer, t0) = online_core();
        let stranger = Peer::Udp("10.6.6.6:5060".parse().unwrap());
        for body in [manscdp::keepalive_notify(2, PLATFORM), catalog_body()] {
            let (out, ev) = core.handle(&message(body, 3), stranger, t0);
            let res = Message::parse(&out[0].1, &Limits::default()).unwrap();
            assert_eq!(res.status(), Some(403));
            assert!(ev.contains(&ServerEvent::Refused {
                reason: WRONG_SENDER
            }));
            assert!(!ev.iter().any(|e| matches!(e, ServerEvent::Catalog { .. })));
        }
        // Another port of the same host over UDP is not the platform either.
        let (out, _) = core.handle(
            &message(manscdp::keepalive_notify(2, PLATFORM), 4),
            Peer::Udp("10.0.0.9:5070".parse().unwrap()),
            t0,
        );
        let res = Message::parse(&out[0].1, &Limits::default()).unwrap();
        assert_eq!(res.status(), Some(403));
        // From where it registered, or from its Contact (127.0.0.1:5060), they are taken.
        let contact = Peer::Udp("127.0.0.1:5060".parse().unwrap());
        for from in [peer, contact] {
            let (out, ev) = core.handle(&message(catalog_body(), 5), from, t0);
            let res = Message::parse(&out[0].1, &Limits::default()).unwrap();
            assert_eq!(res.status(), Some(200));
            assert!(ev.iter().any(|e| matches!(e, ServerEvent::Catalog { .. })));
        }
        // A keepalive from a stranger does not keep a silent platform online.
        let (_, ev) = core.tick(t0 + Duration::from_secs(100));
        assert!(ev.is_empty());
        core.handle(
            &message(manscdp::keepalive_notify(3, PLATFORM), 6),
            stranger,
            t0 + Duration::from_secs(150),
        );
        let (_, ev) = core.tick(t0 + Duration::from_secs(181));
        assert!(matches!(
            &ev[..],
            [ServerEvent::Registrar(RegistrarEvent::Offline {
                reason: OfflineReason::KeepaliveTimeout,
                ..
            })]
        ));
        // Its own keepalive brings it back, and it is queried again.
        let (out, ev) = core.handle(
            &message(manscdp::keepalive_notify(4, PLATFORM), 7),
            peer,
            t0 + Duration::from_secs(182),
        );
        assert_eq!(
            Message::parse(&out[0].1, &Limits::default())
                .unwrap()
                .status(),
            Some(200)
        );
        assert!(ev.contains(&ServerEvent::Registrar(RegistrarEvent::Online {
            id: PLATFORM.into()
        })));
        assert_eq!(core.tick(t0 + Duration::from_secs(183)).0.len(), 1);
    }

    #[test]
    fn invite_answers_and_byes_from_another_address_are_refused() {
        let (mut core, peer, t0) = online_core();
        let stranger = Peer::Udp("10.6.6.6:5060".parse().unwrap());
        let cam = "34020000001320000001";
        let (_, bytes, call_id) = core
            .invite(PLATFORM, cam, "10.0.0.5", 30000, MediaTransport::Udp, t0)
            .unwrap();
        let inv = Message::parse(&bytes, &Limits::default()).unwrap();
        let sdp = "v=0\r\nc=IN IP4 10.6.6.6\r\nm=video 15060 RTP/AVP 96\r\n";
        let ok = Message::response_to(&inv, 200, "OK", Some("dev"))
            .with_body("application/sdp", sdp.as_bytes().to_vec());
        let (out, ev) = core.handle(&ok.to_bytes(), stranger, t0);
        assert!(out.is_empty());
        assert_eq!(
            ev,
            vec![ServerEvent::Refused {
                reason: "INVITE answer from another address"
            }]
        );
        let busy = Message::response_to(&inv, 486, "Busy Here", Some("x"));
        let (out, _) = core.handle(&busy.to_bytes(), stranger, t0);
        assert!(out.is_empty(), "the INVITE is still pending");
        let (_, ev) = core.handle(&ok.to_bytes(), peer, t0);
        assert!(matches!(&ev[..], [ServerEvent::Playing { .. }]));
        let bye = Message::request(Method::Bye, format!("sip:{ME}@10.0.0.5:5060"))
            .with_header("Via", "SIP/2.0/UDP 10.6.6.6:5060;branch=z9hG4bKb")
            .with_header("From", format!("<sip:{cam}@3402000000>;tag=dev"))
            .with_header("To", format!("<sip:{ME}@3402000000>;tag=1"))
            .with_header("Call-ID", call_id.clone())
            .with_header("CSeq", "1 BYE");
        let (out, ev) = core.handle(&bye.to_bytes(), stranger, t0);
        assert_eq!(
            Message::parse(&out[0].1, &Limits::default())
                .unwrap()
                .status(),
            Some(403)
        );
        assert!(ev.contains(&ServerEvent::Refused {
            reason: "BYE from another address"
        }));
        // The call goes on: the platform's own BYE ends it.
        let (_, ev) = core.handle(&bye.to_bytes(), peer, t0);
        assert!(ev.contains(&ServerEvent::Stopped {
            channel: cam.into(),
            call_id
        }));
    }

    #[test]
    fn contact_addresses_are_read_from_ip_literals() {
        assert_eq!(
            contact_addr("<sip:3402@10.0.0.9:5070;transport=tcp>"),
            Some("10.0.0.9:5070".parse().unwrap())
        );
        assert_eq!(
            contact_addr("sip:3402@10.0.0.9"),
            Some("10.0.0.9:5060".parse().unwrap())
        );
        assert_eq!(
            contact_addr("<sip:a@[::1]:5062>"),
            Some("[::1]:5062".parse().unwrap())
        );
        assert_eq!(contact_addr("<sip:a@example.com>"), None);
        assert_eq!(contact_addr(""), None);
    }

    #[test]
    fn core_config_debug_hides_the_password() {
        let shown = format!("{:?}", core_config());
        assert!(!shown.contains("secret-pw"), "{shown}");
    }

    #[test]
    fn crlf_keepalives_are_drained_and_bounded() {
        let mut acc = b"\r\n\r\nREGISTER".to_vec();
        let mut blank = 0;
        assert!(drain_keepalives(&mut acc, &mut blank, 10));
        assert_eq!((acc.as_slice(), blank), (&b"REGISTER"[..], 4));
        let mut acc = vec![b'\n'; 7];
        assert!(!drain_keepalives(&mut acc, &mut blank, 10), "4 + 7 > 10");
        assert!(acc.is_empty(), "drained, not kept");
    }

    #[test]
    fn accept_errors_out_of_descriptors_back_off_others_do_not() {
        for errno in [23, 24] {
            let e = std::io::Error::from_raw_os_error(errno);
            assert_eq!(accept_backoff(&e), Some(Duration::from_millis(100)));
        }
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(accept_backoff(&e), None);
    }
}
