//! The registrar: REGISTER with digest authentication (401, then 200; 403 for wrong
//! credentials), Expires and refresh, `Expires: 0` to unregister, and the keepalive
//! `MESSAGE`s that keep each lower platform online. Sans-I/O: the caller hands in each
//! request and the time, and sends the response this returns.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::digest::{self, Credentials};
use crate::sip::{Message, Method, random_token};

/// Settings of the upper platform's registrar. Its `Debug` hides the password.
#[derive(Clone)]
pub struct RegistrarConfig {
    /// The digest realm: by custom the SIP domain (the first 10 digits of our id).
    pub realm: String,
    /// The password the lower platforms register with.
    pub password: String,
    /// Offer `qop="auth"` in challenges (clients without qop are accepted either way).
    pub qop: bool,
    /// How long a nonce is good for.
    pub nonce_ttl: Duration,
    /// A platform silent (no keepalive, no REGISTER) this long goes offline.
    pub keepalive_timeout: Duration,
    /// Bounds on the Expires a platform may ask for.
    pub min_expires: u32,
    pub max_expires: u32,
    /// Only these device ids may register (empty: any).
    pub allowed: Vec<String>,
}

impl std::fmt::Debug for RegistrarConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrarConfig")
            .field("realm", &self.realm)
            .field("password", &"…")
            .field("qop", &self.qop)
            .field("nonce_ttl", &self.nonce_ttl)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("min_expires", &self.min_expires)
            .field("max_expires", &self.max_expires)
            .field("allowed", &self.allowed)
            .finish()
    }
}

impl RegistrarConfig {
    pub fn new(realm: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            realm: realm.into(),
            password: password.into(),
            qop: true,
            nonce_ttl: Duration::from_secs(300),
            keepalive_timeout: Duration::from_secs(180),
            min_expires: 60,
            max_expires: 86_400,
            allowed: Vec::new(),
        }
    }
}

/// Whether a lower platform is reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformState {
    Online,
    Offline,
}

/// Why a platform went offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfflineReason {
    Unregistered,
    Expired,
    KeepaliveTimeout,
}

/// What the registrar knows about one lower platform.
#[derive(Debug, Clone)]
pub struct Platform {
    pub id: String,
    pub state: PlatformState,
    /// The Contact URI it registered with.
    pub contact: String,
    pub expires_at: Instant,
    pub last_seen: Instant,
    pub registrations: u64,
}

/// A change the rest of skynet acts on (query the catalog, mark cameras offline, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrarEvent {
    /// Registered (or back online after being offline): query its catalog.
    Online {
        id: String,
    },
    /// A refresh of a live registration.
    Refreshed {
        id: String,
    },
    Offline {
        id: String,
        reason: OfflineReason,
    },
}

/// Why a REGISTER was refused (for the `code` label and the logs; no secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No or stale credentials: a challenge was sent.
    Challenged,
    BadCredentials,
    NotAllowed,
    Malformed,
}

/// One nonce issued: when, and how it was used. Without `qop` a nonce is good for one
/// request; with `qop=auth` each request must carry a higher `nc` than the last one.
#[derive(Debug, Clone, Copy)]
struct NonceUse {
    issued: Instant,
    /// Used by a request without qop.
    spent: bool,
    /// The highest `nc` accepted with this nonce.
    last_nc: Option<u32>,
}

/// The registrar of one upper platform.
#[derive(Debug)]
pub struct Registrar {
    cfg: RegistrarConfig,
    nonces: HashMap<String, NonceUse>,
    nonce_order: VecDeque<String>,
    platforms: HashMap<String, Platform>,
}

const MAX_NONCES: usize = 4096;

impl Registrar {
    pub fn new(cfg: RegistrarConfig) -> Self {
        Self {
            cfg,
            nonces: HashMap::new(),
            nonce_order: VecDeque::new(),
            platforms: HashMap::new(),
        }
    }

    /// The platforms known, online or not.
    pub fn platforms(&self) -> impl Iterator<Item = &Platform> {
        self.platforms.values()
    }

    pub fn platform(&self, id: &str) -> Option<&Platform> {
        self.platforms.get(id)
    }

    fn new_nonce(&mut self, now: Instant) -> String {
        while self.nonce_order.len() >= MAX_NONCES {
            if let Some(old) = self.nonce_order.pop_front() {
                self.nonces.remove(&old);
            }
        }
        let n = random_token(16);
        self.nonces.insert(
            n.clone(),
            NonceUse {
                issued: now,
                spent: false,
                last_nc: None,
            },
        );
        self.nonce_order.push_back(n.clone());
        n
    }

    fn challenge(&mut self, req: &Message, now: Instant, stale: bool) -> Message {
        let nonce = self.new_nonce(now);
        Message::response_to(req, 401, "Unauthorized", Some(&random_token(4))).with_header(
            "WWW-Authenticate",
            digest::challenge(&self.cfg.realm, &nonce, self.cfg.qop, stale),
        )
    }

    /// Handles a REGISTER: the response to send, and the event it caused if any.
    pub fn handle_register(
        &mut self,
        req: &Message,
        now: Instant,
    ) -> (Message, Result<Option<RegistrarEvent>, Refusal>) {
        let Some(id) = req.from_user().map(str::to_owned) else {
            return (
                Message::response_to(req, 400, "Bad Request", None),
                Err(Refusal::Malformed),
            );
        };
        if !self.cfg.allowed.is_empty() && !self.cfg.allowed.contains(&id) {
            return (
                Message::response_to(req, 403, "Forbidden", Some(&random_token(4))),
                Err(Refusal::NotAllowed),
            );
        }
        let Some(auth) = req.header("Authorization") else {
            return (self.challenge(req, now, false), Err(Refusal::Challenged));
        };
        let creds = match Credentials::parse(auth) {
            Ok(c) => c,
            Err(_) => {
                return (
                    Message::response_to(req, 400, "Bad Request", None),
                    Err(Refusal::Malformed),
                );
            }
        };
        let nc = match creds.nc.as_deref().map(|nc| u32::from_str_radix(nc, 16)) {
            None => None,
            Some(Ok(n)) => Some(n),
            Some(Err(_)) => {
                return (
                    Message::response_to(req, 400, "Bad Request", None),
                    Err(Refusal::Malformed),
                );
            }
        };
        let fresh = self
            .nonces
            .get(&creds.nonce)
            .is_some_and(|u| now.saturating_duration_since(u.issued) <= self.cfg.nonce_ttl);
        if !fresh {
            return (
                self.challenge(req, now, self.nonces.contains_key(&creds.nonce)),
                Err(Refusal::Challenged),
            );
        }
        if creds.username != id || !creds.verify("REGISTER", &self.cfg.password) {
            return (
                Message::response_to(req, 403, "Forbidden", Some(&random_token(4))),
                Err(Refusal::BadCredentials),
            );
        }
        // A replay (a captured REGISTER sent again, `Expires: 0` included) is challenged
        // afresh: without qop a nonce is spent by its first request; with qop `nc` must
        // increase (RFC 2617 §3.2.2, §4.5).
        let replayed = match self.nonces.get_mut(&creds.nonce) {
            Some(u) => match (creds.qop.is_some(), nc) {
                (true, Some(nc)) if u.last_nc.is_none_or(|last| nc > last) => {
                    u.last_nc = Some(nc);
                    false
                }
                (false, _) if !u.spent => {
                    u.spent = true;
                    false
                }
                _ => true,
            },
            None => true,
        };
        if replayed {
            return (self.challenge(req, now, true), Err(Refusal::Challenged));
        }
        let asked = req.register_expires().unwrap_or(3600);
        let to_tag = random_token(4);
        if asked == 0 {
            let ev = self.platforms.get_mut(&id).and_then(|p| {
                let was = p.state;
                p.state = PlatformState::Offline;
                (was == PlatformState::Online).then(|| RegistrarEvent::Offline {
                    id: id.clone(),
                    reason: OfflineReason::Unregistered,
                })
            });
            let res =
                Message::response_to(req, 200, "OK", Some(&to_tag)).with_header("Expires", "0");
            return (res, Ok(ev));
        }
        if asked < self.cfg.min_expires {
            let res = Message::response_to(req, 423, "Interval Too Brief", Some(&to_tag))
                .with_header("Min-Expires", self.cfg.min_expires.to_string());
            return (res, Err(Refusal::Malformed));
        }
        let granted = asked.min(self.cfg.max_expires);
        let contact = req.header("Contact").unwrap_or_default().to_owned();
        let expires_at = now + Duration::from_secs(u64::from(granted));
        let ev = match self.platforms.get_mut(&id) {
            Some(p) => {
                p.contact = contact;
                p.expires_at = expires_at;
                p.last_seen = now;
                p.registrations += 1;
                if p.state == PlatformState::Online {
                    RegistrarEvent::Refreshed { id: id.clone() }
                } else {
                    p.state = PlatformState::Online;
                    RegistrarEvent::Online { id: id.clone() }
                }
            }
            None => {
                self.platforms.insert(
                    id.clone(),
                    Platform {
                        id: id.clone(),
                        state: PlatformState::Online,
                        contact,
                        expires_at,
                        last_seen: now,
                        registrations: 1,
                    },
                );
                RegistrarEvent::Online { id: id.clone() }
            }
        };
        let date = httpish_date();
        let mut res = Message::response_to(req, 200, "OK", Some(&to_tag))
            .with_header("Expires", granted.to_string());
        if let Some(c) = req.header("Contact") {
            res = res.with_header("Contact", c);
        }
        // GB/T 28181 §9.1.2: the 200 OK carries Date, which devices use to set their clock.
        res = res.with_header("Date", date);
        (res, Ok(Some(ev)))
    }

    /// A keepalive from `id` (a MESSAGE with CmdType Keepalive). `None` when the platform
    /// is not registered (answer 403 or 404 so it registers again); otherwise the event
    /// (`Online` when it had gone offline by a keepalive timeout and is back).
    pub fn keepalive(&mut self, id: &str, now: Instant) -> Option<Option<RegistrarEvent>> {
        let p = self.platforms.get_mut(id)?;
        if now >= p.expires_at {
            return None;
        }
        p.last_seen = now;
        if p.state == PlatformState::Offline {
            p.state = PlatformState::Online;
            return Some(Some(RegistrarEvent::Online { id: id.to_owned() }));
        }
        Some(None)
    }

    /// Advances time: registrations that expired and platforms silent for longer than the
    /// keepalive timeout go offline. Call it every second or so.
    pub fn tick(&mut self, now: Instant) -> Vec<RegistrarEvent> {
        let ttl = self.cfg.nonce_ttl;
        self.nonces
            .retain(|_, u| now.saturating_duration_since(u.issued) <= ttl);
        let nonces = &self.nonces;
        self.nonce_order.retain(|n| nonces.contains_key(n));
        let mut out = Vec::new();
        for p in self.platforms.values_mut() {
            if p.state != PlatformState::Online {
                continue;
            }
            let reason = if now >= p.expires_at {
                OfflineReason::Expired
            } else if now.saturating_duration_since(p.last_seen) > self.cfg.keepalive_timeout {
                OfflineReason::KeepaliveTimeout
            } else {
                continue;
            };
            p.state = PlatformState::Offline;
            out.push(RegistrarEvent::Offline {
                id: p.id.clone(),
                reason,
            });
        }
        out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
        out
    }

    /// True when a request's method is one the registrar answers.
    pub fn handles(method: &Method) -> bool {
        matches!(method, Method::Register)
    }
}

/// `Date` as GB devices expect it: local-format `YYYY-MM-DDTHH:MM:SS.mmm` (UTC here).
fn httpish_date() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), H. Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{Limits, param};

    const DEV: &str = "34020000001320000001";

    fn register(expires: u32, auth: Option<String>) -> Message {
        let mut m = Message::request(Method::Register, "sip:34020000002000000001@3402000000")
            .with_header("Via", "SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1")
            .with_header("From", format!("<sip:{DEV}@3402000000>;tag=1"))
            .with_header("To", format!("<sip:{DEV}@3402000000>"))
            .with_header("Call-ID", "c1")
            .with_header("CSeq", "1 REGISTER")
            .with_header("Contact", format!("<sip:{DEV}@192.168.1.64:5060>"))
            .with_header("Expires", expires.to_string());
        if let Some(a) = auth {
            m = m.with_header("Authorization", a);
        }
        // Through the wire and back, as the transport would.
        Message::parse(&m.to_bytes(), &Limits::default()).unwrap()
    }

    fn nonce_of(res: &Message) -> String {
        let h = res.header("WWW-Authenticate").unwrap();
        h.split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned()
    }

    fn auth(nonce: &str, password: &str, qop: bool) -> String {
        digest::authorization(
            DEV,
            "3402000000",
            nonce,
            "sip:34020000002000000001@3402000000",
            "REGISTER",
            password,
            qop.then_some(("00000001", "abcdef")),
        )
    }

    fn registrar() -> Registrar {
        Registrar::new(RegistrarConfig::new("3402000000", "12345678"))
    }

    #[test]
    fn register_is_challenged_then_accepted_with_qop_and_without() {
        for qop in [true, false] {
            let mut r = registrar();
            let t0 = Instant::now();
            let (res, out) = r.handle_register(&register(3600, None), t0);
            assert_eq!(res.status(), Some(401));
            assert_eq!(out, Err(Refusal::Challenged));
            assert!(param(res.header("To").unwrap(), "tag").is_some());
            let n = nonce_of(&res);
            let (res, out) =
                r.handle_register(&register(3600, Some(auth(&n, "12345678", qop))), t0);
            assert_eq!(res.status(), Some(200), "qop {qop}");
            assert_eq!(res.header("Expires"), Some("3600"));
            assert!(res.header("Date").is_some());
            assert_eq!(out, Ok(Some(RegistrarEvent::Online { id: DEV.into() })));
            assert_eq!(r.platform(DEV).unwrap().state, PlatformState::Online);
        }
    }

    #[test]
    fn a_wrong_password_gets_403_and_registers_nothing() {
        let mut r = registrar();
        let t0 = Instant::now();
        let n = nonce_of(&r.handle_register(&register(3600, None), t0).0);
        let (res, out) = r.handle_register(&register(3600, Some(auth(&n, "wrong", true))), t0);
        assert_eq!(res.status(), Some(403));
        assert_eq!(out, Err(Refusal::BadCredentials));
        assert!(r.platform(DEV).is_none());
    }

    #[test]
    fn an_expired_or_unknown_nonce_is_challenged_again_as_stale() {
        let mut r = registrar();
        let t0 = Instant::now();
        let n = nonce_of(&r.handle_register(&register(3600, None), t0).0);
        let later = t0 + Duration::from_secs(301);
        let (res, _) = r.handle_register(&register(3600, Some(auth(&n, "12345678", true))), later);
        assert_eq!(res.status(), Some(401));
        assert!(
            res.header("WWW-Authenticate")
                .unwrap()
                .contains("stale=TRUE")
        );
        let (res, _) = r.handle_register(
            &register(3600, Some(auth("made-up", "12345678", true))),
            later,
        );
        assert_eq!(res.status(), Some(401));
    }

    fn online(r: &mut Registrar, t: Instant, expires: u32) {
        let n = nonce_of(&r.handle_register(&register(expires, None), t).0);
        let (res, _) = r.handle_register(&register(expires, Some(auth(&n, "12345678", true))), t);
        assert_eq!(res.status(), Some(200));
    }

    #[test]
    fn refresh_keeps_it_online_and_expires_zero_unregisters() {
        let mut r = registrar();
        let t0 = Instant::now();
        online(&mut r, t0, 3600);
        let n = nonce_of(&r.handle_register(&register(3600, None), t0).0);
        let (_, out) = r.handle_register(
            &register(3600, Some(auth(&n, "12345678", false))),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(out, Ok(Some(RegistrarEvent::Refreshed { id: DEV.into() })));
        let n = nonce_of(&r.handle_register(&register(0, None), t0).0);
        let (res, out) = r.handle_register(
            &register(0, Some(auth(&n, "12345678", true))),
            t0 + Duration::from_secs(2),
        );
        assert_eq!(res.status(), Some(200));
        assert_eq!(
            out,
            Ok(Some(RegistrarEvent::Offline {
                id: DEV.into(),
                reason: OfflineReason::Unregistered
            }))
        );
        assert_eq!(r.platform(DEV).unwrap().state, PlatformState::Offline);
    }

    #[test]
    fn missing_keepalives_make_the_platform_offline_and_a_keepalive_brings_it_back() {
        let mut r = registrar();
        let t0 = Instant::now();
        online(&mut r, t0, 3600);
        assert_eq!(r.keepalive(DEV, t0 + Duration::from_secs(60)), Some(None));
        assert!(r.tick(t0 + Duration::from_secs(200)).is_empty());
        let ev = r.tick(t0 + Duration::from_secs(241));
        assert_eq!(
            ev,
            vec![RegistrarEvent::Offline {
                id: DEV.into(),
                reason: OfflineReason::KeepaliveTimeout
            }]
        );
        assert!(
            r.tick(t0 + Duration::from_secs(242)).is_empty(),
            "offline is reported once"
        );
        assert_eq!(
            r.keepalive(DEV, t0 + Duration::from_secs(250)),
            Some(Some(RegistrarEvent::Online { id: DEV.into() }))
        );
        assert_eq!(r.keepalive("34020000001320000099", t0), None);
    }

    #[test]
    fn an_expired_registration_goes_offline_and_its_keepalives_are_refused() {
        let mut r = registrar();
        let t0 = Instant::now();
        online(&mut r, t0, 100);
        let ev = r.tick(t0 + Duration::from_secs(100));
        assert_eq!(
            ev,
            vec![RegistrarEvent::Offline {
                id: DEV.into(),
                reason: OfflineReason::Expired
            }]
        );
        assert_eq!(r.keepalive(DEV, t0 + Duration::from_secs(101)), None);
        online(&mut r, t0 + Duration::from_secs(102), 100);
        assert_eq!(r.platform(DEV).unwrap().state, PlatformState::Online);
    }

    #[test]
    fn a_too_short_expires_gets_423_and_a_stranger_403_when_a_list_is_set() {
        let mut r = registrar();
        let t0 = Instant::now();
        let n = nonce_of(&r.handle_register(&register(10, None), t0).0);
        let (res, _) = r.handle_register(&register(10, Some(auth(&n, "12345678", true))), t0);
        assert_eq!(res.status(), Some(423));
        assert_eq!(res.header("Min-Expires"), Some("60"));
        let mut cfg = RegistrarConfig::new("3402000000", "x");
        cfg.allowed = vec!["34020000001320000002".into()];
        let mut r = Registrar::new(cfg);
        assert_eq!(
            r.handle_register(&register(3600, None), t0).0.status(),
            Some(403)
        );
    }

    #[test]
    fn a_replayed_register_is_challenged_as_stale_with_qop_and_without() {
        for qop in [false, true] {
            let mut r = registrar();
            let t0 = Instant::now();
            online(&mut r, t0, 3600);
            // A captured unregistration, sent again later by someone else.
            let n = nonce_of(&r.handle_register(&register(0, None), t0).0);
            let captured = register(0, Some(auth(&n, "12345678", qop)));
            let (res, out) = r.handle_register(&captured, t0);
            assert_eq!(res.status(), Some(200));
            assert!(matches!(out, Ok(Some(RegistrarEvent::Offline { .. }))));
            online(&mut r, t0 + Duration::from_secs(1), 3600);
            let (res, out) = r.handle_register(&captured, t0 + Duration::from_secs(2));
            assert_eq!(res.status(), Some(401), "qop {qop}");
            assert!(
                res.header("WWW-Authenticate")
                    .unwrap()
                    .contains("stale=TRUE")
            );
            assert_eq!(out, Err(Refusal::Challenged));
            assert_eq!(r.platform(DEV).unwrap().state, PlatformState::Online);
        }
    }

    #[test]
    fn with_qop_a_nonce_is_reused_only_with_an_increasing_nc() {
        let mut r = registrar();
        let t0 = Instant::now();
        let n = nonce_of(&r.handle_register(&register(3600, None), t0).0);
        let with_nc = |nc: &str| {
            register(
                3600,
                Some(digest::authorization(
                    DEV,
                    "3402000000",
                    &n,
                    "sip:34020000002000000001@3402000000",
                    "REGISTER",
                    "12345678",
                    Some((nc, "abcdef")),
                )),
            )
        };
        assert_eq!(
            r.handle_register(&with_nc("00000001"), t0).0.status(),
            Some(200)
        );
        assert_eq!(
            r.handle_register(&with_nc("00000002"), t0).0.status(),
            Some(200)
        );
        for replay in ["00000002", "00000001"] {
            let (res, out) = r.handle_register(&with_nc(replay), t0);
            assert_eq!(res.status(), Some(401));
            assert_eq!(out, Err(Refusal::Challenged));
        }
        assert_eq!(
            r.handle_register(&with_nc("0000000a"), t0).0.status(),
            Some(200)
        );
        assert_eq!(r.handle_register(&with_nc("zz"), t0).0.status(), Some(400));
    }

    #[test]
    fn debug_output_hides_the_password() {
        let cfg = RegistrarConfig::new("3402000000", "s3cr3t-pw");
        let shown = format!("{cfg:?} {:?}", Registrar::new(cfg.clone()));
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(shown.contains("password: \"…\""), "{shown}");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }
}
