//! SIP messages (RFC 3261 §7): a focused parser and builder for what GB/T 28181 platforms
//! send, with hard limits on sizes and header counts. Parsing never panics: truncated,
//! oversized and malformed input comes back as a [`SipError`].

use std::fmt::Write as _;

/// Bounds on what one message may hold (a UDP datagram is at most 65,507 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Start line plus headers, including the blank line.
    pub max_head: usize,
    /// Number of header fields (folded lines count once).
    pub max_headers: usize,
    /// Body size (Content-Length).
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head: 16 * 1024,
            max_headers: 64,
            max_body: 64 * 1024,
        }
    }
}

/// Why a SIP message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipError {
    /// The input ends before the message does (no blank line yet, or a short body).
    #[error("SIP message truncated")]
    Truncated,
    /// A part is larger than [`Limits`] allows.
    #[error("SIP {what} over the limit of {limit}")]
    TooLarge { what: &'static str, limit: usize },
    /// More header fields than [`Limits::max_headers`].
    #[error("SIP message has more than {0} headers")]
    TooManyHeaders(usize),
    /// Not a SIP message, or a part of it is malformed.
    #[error("malformed SIP message: {0}")]
    Malformed(&'static str),
}

/// The methods a GB/T 28181 upper platform meets; anything else is kept as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Register,
    Message,
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Info,
    Subscribe,
    Notify,
    Other(String),
}

impl Method {
    fn parse(s: &str) -> Result<Self, SipError> {
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
        {
            return Err(SipError::Malformed("method"));
        }
        Ok(match s {
            "REGISTER" => Self::Register,
            "MESSAGE" => Self::Message,
            "INVITE" => Self::Invite,
            "ACK" => Self::Ack,
            "BYE" => Self::Bye,
            "CANCEL" => Self::Cancel,
            "OPTIONS" => Self::Options,
            "INFO" => Self::Info,
            "SUBSCRIBE" => Self::Subscribe,
            "NOTIFY" => Self::Notify,
            other => Self::Other(other.to_owned()),
        })
    }

    /// The method as written on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Register => "REGISTER",
            Self::Message => "MESSAGE",
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Options => "OPTIONS",
            Self::Info => "INFO",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first line: a request's method and URI, or a response's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: String },
    Response { code: u16, reason: String },
}

/// One header field, its name in the full form (compact forms expanded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A SIP request or response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

/// RFC 3261 §7.3.3 compact forms, plus the ones RFC 3515/3903 added.
fn expand_compact(name: &str) -> &str {
    if name.len() != 1 {
        return name;
    }
    match name.as_bytes()[0].to_ascii_lowercase() {
        b'i' => "Call-ID",
        b'm' => "Contact",
        b'e' => "Content-Encoding",
        b'l' => "Content-Length",
        b'c' => "Content-Type",
        b'f' => "From",
        b's' => "Subject",
        b'k' => "Supported",
        b't' => "To",
        b'v' => "Via",
        b'o' => "Event",
        b'r' => "Refer-To",
        _ => name,
    }
}

fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    // (end of the head, start of the body): CRLFCRLF, or bare LFLF from sloppy peers.
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

impl Message {
    /// Parses one datagram (UDP): the body is what Content-Length says, or the rest of the
    /// datagram when the header is absent; bytes after the body are ignored (RFC 3261 §18.3).
    pub fn parse(buf: &[u8], limits: &Limits) -> Result<Self, SipError> {
        let (msg, used) = Self::parse_inner(buf, limits, false)?.ok_or(SipError::Truncated)?;
        debug_assert!(used <= buf.len());
        Ok(msg)
    }

    /// Parses one message from the front of a stream buffer (TCP), where Content-Length is
    /// required. `Ok(None)`: more bytes are needed; `Ok(Some((msg, n)))`: `n` bytes used.
    /// Leading CRLF keep-alives (RFC 5626) are skipped.
    pub fn parse_stream(buf: &[u8], limits: &Limits) -> Result<Option<(Self, usize)>, SipError> {
        let skip = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        Ok(Self::parse_inner(&buf[skip..], limits, true)?.map(|(m, n)| (m, n + skip)))
    }

    fn parse_inner(
        buf: &[u8],
        limits: &Limits,
        stream: bool,
    ) -> Result<Option<(Self, usize)>, SipError> {
        let Some((head_end, body_start)) = find_head_end(buf) else {
            if buf.len() > limits.max_head {
                return Err(SipError::TooLarge {
                    what: "header section",
                    limit: limits.max_head,
                });
            }
            return if stream {
                Ok(None)
            } else {
                Err(SipError::Truncated)
            };
        };
        if body_start > limits.max_head {
            return Err(SipError::TooLarge {
                what: "header section",
                limit: limits.max_head,
            });
        }
        let head = String::from_utf8_lossy(&buf[..head_end]);
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let first = lines.next().ok_or(SipError::Malformed("empty"))?;
        let start = parse_start_line(first)?;
        let mut headers: Vec<Header> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // Folded continuation (RFC 3261 §7.3.1).
                let last = headers
                    .last_mut()
                    .ok_or(SipError::Malformed("continuation before any header"))?;
                let more = line.trim();
                if !more.is_empty() {
                    if !last.value.is_empty() {
                        last.value.push(' ');
                    }
                    last.value.push_str(more);
                }
                continue;
            }
            if line.is_empty() {
                return Err(SipError::Malformed("empty header line"));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or(SipError::Malformed("header without colon"))?;
            let name = name.trim_end();
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(SipError::Malformed("header name"));
            }
            if headers.len() >= limits.max_headers {
                return Err(SipError::TooManyHeaders(limits.max_headers));
            }
            headers.push(Header {
                name: expand_compact(name).to_owned(),
                value: value.trim().to_owned(),
            });
        }
        let mut msg = Self {
            start,
            headers,
            body: Vec::new(),
        };
        let rest = &buf[body_start..];
        let body_len = match msg.header("Content-Length") {
            Some(v) => {
                let n: usize = v
                    .parse()
                    .map_err(|_| SipError::Malformed("Content-Length"))?;
                if n > limits.max_body {
                    return Err(SipError::TooLarge {
                        what: "body",
                        limit: limits.max_body,
                    });
                }
                if n > rest.len() {
                    return if stream {
                        Ok(None)
                    } else {
                        Err(SipError::Truncated)
                    };
                }
                n
            }
            None if stream => return Err(SipError::Malformed("no Content-Length on a stream")),
            None => {
                if rest.len() > limits.max_body {
                    return Err(SipError::TooLarge {
                        what: "body",
                        limit: limits.max_body,
                    });
                }
                rest.len()
            }
        };
        msg.body = rest[..body_len].to_vec();
        Ok(Some((msg, body_start + body_len)))
    }

    /// A request with no headers yet.
    pub fn request(method: Method, uri: impl Into<String>) -> Self {
        Self {
            start: StartLine::Request {
                method,
                uri: uri.into(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A response to `req`, copying Via, From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2);
    /// `to_tag` is added to To when it has none (for codes above 100).
    pub fn response_to(req: &Message, code: u16, reason: &str, to_tag: Option<&str>) -> Self {
        let mut res = Self {
            start: StartLine::Response {
                code,
                reason: reason.to_owned(),
            },
            headers: Vec::new(),
            body: Vec::new(),
        };
        for h in &req.headers {
            match h.name.to_ascii_lowercase().as_str() {
                "via" | "from" | "call-id" | "cseq" => res.headers.push(h.clone()),
                "to" => {
                    let mut v = h.value.clone();
                    if let Some(tag) = to_tag
                        && code > 100
                        && param(&v, "tag").is_none()
                    {
                        let _ = write!(v, ";tag={tag}");
                    }
                    res.headers.push(Header {
                        name: h.name.clone(),
                        value: v,
                    });
                }
                _ => {}
            }
        }
        res
    }

    /// Appends a header (builder style).
    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push(Header {
            name: name.to_owned(),
            value: value.into(),
        });
        self
    }

    /// Sets the body and its Content-Type (builder style); Content-Length is written by
    /// [`Message::to_bytes`].
    pub fn with_body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers
            .retain(|h| !h.name.eq_ignore_ascii_case("Content-Type"));
        self.headers.push(Header {
            name: "Content-Type".into(),
            value: content_type.into(),
        });
        self.body = body;
        self
    }

    /// The message on the wire, with a Content-Length that matches the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = String::with_capacity(512);
        match &self.start {
            StartLine::Request { method, uri } => {
                let _ = write!(head, "{method} {uri} SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                let _ = write!(head, "SIP/2.0 {code} {reason}\r\n");
            }
        }
        for h in &self.headers {
            if h.name.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            let _ = write!(head, "{}: {}\r\n", h.name, h.value);
        }
        let _ = write!(head, "Content-Length: {}\r\n\r\n", self.body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }

    /// The first header of that name (case-insensitive; compact forms already expanded).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Every header of that name, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    /// Replaces (or adds) a header.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let value = value.into();
        match self
            .headers
            .iter_mut()
            .find(|h| h.name.eq_ignore_ascii_case(name))
        {
            Some(h) => h.value = value,
            None => self.headers.push(Header {
                name: name.to_owned(),
                value,
            }),
        }
    }

    /// The request's method (None for a response).
    pub fn method(&self) -> Option<&Method> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The response's status code (None for a request).
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// CSeq's number and method.
    pub fn cseq(&self) -> Result<(u32, Method), SipError> {
        let v = self.header("CSeq").ok_or(SipError::Malformed("no CSeq"))?;
        let (n, m) = v
            .trim()
            .split_once(char::is_whitespace)
            .ok_or(SipError::Malformed("CSeq"))?;
        let n = n.parse().map_err(|_| SipError::Malformed("CSeq number"))?;
        Ok((n, Method::parse(m.trim())?))
    }

    /// Call-ID.
    pub fn call_id(&self) -> Result<&str, SipError> {
        self.header("Call-ID")
            .ok_or(SipError::Malformed("no Call-ID"))
    }

    /// The user part of the From URI (a GB device's 20-digit id).
    pub fn from_user(&self) -> Option<&str> {
        self.header("From").and_then(uri_user)
    }

    /// The Expires value of a REGISTER: the Contact's `expires` parameter, else the Expires
    /// header (RFC 3261 §10.2.1.1).
    pub fn register_expires(&self) -> Option<u32> {
        if let Some(c) = self.header("Contact")
            && let Some(e) = param(after_uri(c), "expires")
        {
            return e.parse().ok();
        }
        self.header("Expires").and_then(|v| v.trim().parse().ok())
    }
}

fn parse_start_line(line: &str) -> Result<StartLine, SipError> {
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code
            .parse()
            .map_err(|_| SipError::Malformed("status code"))?;
        if !(100..=699).contains(&code) {
            return Err(SipError::Malformed("status code"));
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_owned(),
        });
    }
    let mut parts = line.split(' ');
    let (Some(m), Some(uri), Some(ver), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SipError::Malformed("request line"));
    };
    if ver != "SIP/2.0" {
        return Err(SipError::Malformed("SIP version"));
    }
    if uri.is_empty() {
        return Err(SipError::Malformed("request URI"));
    }
    Ok(StartLine::Request {
        method: Method::parse(m)?,
        uri: uri.to_owned(),
    })
}

/// The part of a name-addr after its URI (`<sip:x@y>;tag=1` gives `;tag=1`).
fn after_uri(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[b + 1..],
        _ => v.find(';').map_or("", |i| &v[i..]),
    }
}

/// A `;name=value` parameter of a header value, after its URI.
pub fn param<'a>(v: &'a str, name: &str) -> Option<&'a str> {
    after_uri(v).split(';').skip(1).find_map(|p| {
        let (k, val) = p.split_once('=').unwrap_or((p, ""));
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| val.trim().trim_matches('"'))
    })
}

/// The URI inside a name-addr (`"x" <sip:a@b>;tag=1` gives `sip:a@b`).
pub fn uri_of(v: &str) -> &str {
    match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or(v).trim(),
    }
}

/// The user part of a SIP URI or name-addr (`<sip:34020000001320000001@3402000000>`).
pub fn uri_user(v: &str) -> Option<&str> {
    let uri = uri_of(v);
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let user = rest.split_once('@').map(|(u, _)| u)?;
    (!user.is_empty()).then_some(user)
}

/// A fresh random token (hex) for tags, branches and Call-IDs.
pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes.min(32)];
    if getrandom::fill(&mut b).is_err() {
        // No entropy source: fall back to the clock, still unique enough for tags.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        b.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = (t >> ((i % 16) * 8)) as u8);
    }
    hex(&b)
}

pub(crate) fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = "REGISTER sip:34020000002000000001@3402000000 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.168.1.64:5060;rport;branch=z9hG4bK1371463273\r\n\
From: <sip:34020000001320000001@3402000000>;tag=2043466181\r\n\
To: <sip:34020000001320000001@3402000000>\r\n\
Call-ID: 1011047669\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:34020000001320000001@192.168.1.64:5060>\r\n\
Max-Forwards: 70\r\n\
User-Agent: IP Camera\r\n\
Expires: 3600\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn a_camera_register_parses_with_its_headers() {
        let m = Message::parse(REGISTER.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(m.method(), Some(&Method::Register));
        assert_eq!(m.from_user(), Some("34020000001320000001"));
        assert_eq!(m.cseq().unwrap(), (1, Method::Register));
        assert_eq!(m.register_expires(), Some(3600));
        assert_eq!(m.call_id().unwrap(), "1011047669");
        assert!(m.body.is_empty());
    }

    #[test]
    fn compact_forms_and_folded_lines_are_read_as_full_headers() {
        let raw = "MESSAGE sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\nf: <sip:1@d>;tag=9\r\nt: <sip:2@d>\r\ni: abc\r\nCSeq: 20 MESSAGE\r\nc: Application/MANSCDP+xml\r\nSubject: one,\r\n two\r\nl: 5\r\n\r\nhello";
        let m = Message::parse(raw.as_bytes(), &Limits::default()).unwrap();
        assert_eq!(m.call_id().unwrap(), "abc");
        assert_eq!(m.header("content-type"), Some("Application/MANSCDP+xml"));
        assert_eq!(m.header("Subject"), Some("one, two"));
        assert_eq!(m.body, b"hello");
        assert_eq!(param(m.header("From").unwrap(), "tag"), Some("9"));
    }

    #[test]
    fn a_built_message_parses_back_the_same() {
        let req = Message::request(Method::Message, "sip:34020000001320000001@3402000000")
            .with_header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKabc")
            .with_header("CSeq", "3 MESSAGE")
            .with_body("Application/MANSCDP+xml", b"<Query/>".to_vec());
        let bytes = req.to_bytes();
        let back = Message::parse(&bytes, &Limits::default()).unwrap();
        assert_eq!(back.body, b"<Query/>");
        assert_eq!(back.header("Content-Length"), Some("8"));
        let res = Message::response_to(&back, 200, "OK", Some("t1"));
        let res = Message::parse(&res.to_bytes(), &Limits::default()).unwrap();
        assert_eq!(res.status(), Some(200));
        assert_eq!(res.cseq().unwrap(), (3, Method::Message));
    }

    #[test]
    fn truncated_oversized_and_malformed_input_is_refused_with_a_typed_error() {
        let l = Limits::default();
        assert_eq!(
            Message::parse(&REGISTER.as_bytes()[..40], &l),
            Err(SipError::Truncated)
        );
        let short_body = REGISTER.replace("Content-Length: 0", "Content-Length: 10");
        assert_eq!(
            Message::parse(short_body.as_bytes(), &l),
            Err(SipError::Truncated)
        );
        let big = REGISTER.replace("Content-Length: 0", "Content-Length: 99999999");
        assert!(matches!(
            Message::parse(big.as_bytes(), &l),
            Err(SipError::TooLarge { .. })
        ));
        let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
        let many = REGISTER.replacen("Expires: 3600\r\n", &many, 1);
        assert_eq!(
            Message::parse(many.as_bytes(), &l),
            Err(SipError::TooManyHeaders(64))
        );
        assert!(matches!(
            Message::parse(b"GET / HTTP/1.1\r\n\r\n", &l),
            Err(SipError::Malformed(_))
        ));
        assert!(matches!(
            Message::parse(b"SIP/2.0 9999 X\r\n\r\n", &l),
            Err(SipError::Malformed(_))
        ));
        assert!(matches!(
            Message::parse(b"\xff\xfe\r\n\r\n", &l),
            Err(SipError::Malformed(_))
        ));
        let long = vec![b'a'; 20_000];
        assert!(matches!(
            Message::parse(&long, &l),
            Err(SipError::TooLarge { .. })
        ));
        let bad_len = REGISTER.replace("Content-Length: 0", "Content-Length: -1");
        assert!(matches!(
            Message::parse(bad_len.as_bytes(), &l),
            Err(SipError::Malformed(_))
        ));
    }

    #[test]
    fn a_stream_yields_messages_one_by_one_and_waits_for_the_rest() {
        let l = Limits::default();
        let one = Message::request(Method::Message, "sip:a@b")
            .with_header("CSeq", "1 MESSAGE")
            .with_body("Application/MANSCDP+xml", b"<Notify/>".to_vec())
            .to_bytes();
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(&one);
        stream.extend_from_slice(&one);
        let (m, n) = Message::parse_stream(&stream, &l).unwrap().unwrap();
        assert_eq!(m.body, b"<Notify/>");
        let (_, n2) = Message::parse_stream(&stream[n..], &l).unwrap().unwrap();
        assert_eq!(n + n2, stream.len());
        assert_eq!(
            Message::parse_stream(&one[..one.len() - 2], &l).unwrap(),
            None
        );
        assert_eq!(Message::parse_stream(&one[..10], &l).unwrap(), None);
    }

    #[test]
    fn uris_and_params_are_read_from_name_addrs() {
        assert_eq!(
            uri_user("\"cam\" <sip:34020000001320000001@3402000000>;tag=1"),
            Some("34020000001320000001")
        );
        assert_eq!(
            uri_user("sip:34020000001320000001@3402000000;transport=udp"),
            Some("34020000001320000001")
        );
        assert_eq!(uri_user("<tel:123>"), None);
        assert_eq!(param("<sip:a@b;lr>;expires=0", "expires"), Some("0"));
    }
}
