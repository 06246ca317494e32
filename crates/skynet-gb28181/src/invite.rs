//! INVITE for one channel with the GB SDP (GB/T 28181-2016 §9.2 and Annex F), the parsing
//! of the 200 OK's SDP, and the dialog's ACK and BYE.

use std::fmt::Write as _;

use crate::sip::{Message, Method, SipError, param, random_token, uri_of};

/// Why an INVITE could not be built or its answer read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("SIP domain id must be 10 or 20 digits")]
    BadDomain,
    #[error("SDP answer: {0}")]
    Sdp(&'static str),
    #[error(transparent)]
    Sip(#[from] SipError),
}

/// How the media travels, seen from skynet's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTransport {
    Udp,
    /// skynet listens and the device connects (`a=setup:passive` in the offer).
    TcpPassive,
    /// skynet connects to the device (`a=setup:active` in the offer).
    TcpActive,
}

/// The SSRC as Annex F writes it: 10 decimal digits, the first 0 for live video (1 for
/// playback), then digits 4 to 8 of the SIP domain id, then a 4-digit stream number.
pub fn ssrc(live: bool, domain_id: &str, counter: u32) -> Result<String, InviteError> {
    if !(domain_id.len() == 10 || domain_id.len() == 20)
        || !domain_id.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(InviteError::BadDomain);
    }
    Ok(format!(
        "{}{}{:04}",
        u8::from(!live),
        &domain_id[3..8],
        counter % 10_000
    ))
}

/// The SSRC text as the 32-bit value in the RTP headers (devices write the decimal number).
pub fn ssrc_value(ssrc: &str) -> Option<u32> {
    (!ssrc.is_empty() && ssrc.len() <= 10 && ssrc.bytes().all(|b| b.is_ascii_digit()))
        .then(|| ssrc.parse().ok())
        .flatten()
}

/// What an INVITE needs.
#[derive(Debug, Clone)]
pub struct InviteParams<'a> {
    /// skynet's 20-digit id and domain.
    pub our_id: &'a str,
    pub our_domain: &'a str,
    /// skynet's SIP address (`ip:port`) for Via and Contact, and the SIP transport (`UDP`, `TCP`).
    pub our_addr: &'a str,
    pub sip_transport: &'a str,
    /// The channel to play and the lower platform's address (`ip:port`).
    pub channel_id: &'a str,
    pub target: &'a str,
    /// Where skynet receives the media.
    pub media_ip: &'a str,
    pub media_port: u16,
    pub media: MediaTransport,
    /// From [`ssrc`].
    pub ssrc: &'a str,
}

/// The GB SDP offer.
pub fn offer_sdp(p: &InviteParams<'_>) -> String {
    let proto = match p.media {
        MediaTransport::Udp => "RTP/AVP",
        MediaTransport::TcpPassive | MediaTransport::TcpActive => "TCP/RTP/AVP",
    };
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "v=0\r\no={id} 0 0 IN IP4 {ip}\r\ns=Play\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=video {port} {proto} 96\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\n",
        id = p.our_id,
        ip = p.media_ip,
        port = p.media_port
    );
    match p.media {
        MediaTransport::Udp => {}
        MediaTransport::TcpPassive => s.push_str("a=setup:passive\r\na=connection:new\r\n"),
        MediaTransport::TcpActive => s.push_str("a=setup:active\r\na=connection:new\r\n"),
    }
    let _ = write!(s, "y={}\r\n", p.ssrc);
    s
}

/// The INVITE itself, with a fresh Call-ID, tag and branch.
pub fn build_invite(p: &InviteParams<'_>, cseq: u32) -> Message {
    Message::request(Method::Invite, format!("sip:{}@{}", p.channel_id, p.target))
        .with_header(
            "Via",
            format!(
                "SIP/2.0/{} {};rport;branch=z9hG4bK{}",
                p.sip_transport,
                p.our_addr,
                random_token(8)
            ),
        )
        .with_header(
            "From",
            format!(
                "<sip:{}@{}>;tag={}",
                p.our_id,
                p.our_domain,
                random_token(4)
            ),
        )
        .with_header("To", format!("<sip:{}@{}>", p.channel_id, p.target))
        .with_header("Call-ID", random_token(12))
        .with_header("CSeq", format!("{cseq} INVITE"))
        .with_header("Contact", format!("<sip:{}@{}>", p.our_id, p.our_addr))
        .with_header("Max-Forwards", "70")
        .with_header("User-Agent", "skynet")
        .with_header(
            "Subject",
            format!("{}:{},{}:0", p.channel_id, p.ssrc, p.our_id),
        )
        .with_body("APPLICATION/SDP", offer_sdp(p).into_bytes())
}

/// What the callee answered in its 200 OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Where the media comes from (UDP) or where to connect (TCP, when skynet is active).
    pub ip: String,
    pub port: u16,
    pub tcp: bool,
    /// The callee's `a=setup` (`active`, `passive`), if any.
    pub setup: Option<String>,
    /// The SSRC the callee names in `y=`, if any.
    pub ssrc: Option<u32>,
}

/// Parses the SDP of a 200 OK.
pub fn parse_answer(sdp: &[u8]) -> Result<Answer, InviteError> {
    if sdp.len() > 16 * 1024 {
        return Err(InviteError::Sdp("too large"));
    }
    let text = std::str::from_utf8(sdp).map_err(|_| InviteError::Sdp("not UTF-8"))?;
    let (mut ip, mut port, mut tcp, mut setup, mut ssrc) = (None, None, false, None, None);
    let mut saw_video = false;
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "c" => {
                let addr = v
                    .split_whitespace()
                    .nth(2)
                    .ok_or(InviteError::Sdp("c= line"))?;
                ip = Some(addr.split('/').next().unwrap_or(addr).to_owned());
            }
            "m" if !saw_video => {
                let mut parts = v.split_whitespace();
                if parts.next() != Some("video") {
                    continue;
                }
                saw_video = true;
                let p: u16 = parts
                    .next()
                    .and_then(|p| p.split('/').next()?.parse().ok())
                    .ok_or(InviteError::Sdp("m= port"))?;
                let proto = parts.next().ok_or(InviteError::Sdp("m= proto"))?;
                if !proto.ends_with("RTP/AVP") {
                    return Err(InviteError::Sdp("m= proto"));
                }
                tcp = proto.starts_with("TCP");
                port = Some(p);
            }
            "a" => {
                if let Some(s) = v.strip_prefix("setup:") {
                    setup = Some(s.trim().to_owned());
                }
            }
            "y" => ssrc = Some(ssrc_value(v.trim()).ok_or(InviteError::Sdp("y= SSRC"))?),
            _ => {}
        }
    }
    let port = port.ok_or(InviteError::Sdp("no m=video"))?;
    if port == 0 {
        return Err(InviteError::Sdp("stream refused (port 0)"));
    }
    Ok(Answer {
        ip: ip.ok_or(InviteError::Sdp("no c="))?,
        port,
        tcp,
        setup,
        ssrc,
    })
}

/// A confirmed INVITE dialog: enough to ACK the 200 OK and to BYE later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialog {
    pub call_id: String,
    pub from: String,
    pub to: String,
    /// The callee's Contact URI, where in-dialog requests go.
    pub remote_target: String,
    pub cseq: u32,
    via: String,
}

impl Dialog {
    /// The dialog a 2xx answer to `invite` creates.
    pub fn from_ok(invite: &Message, ok: &Message) -> Result<Self, InviteError> {
        if !ok.status().is_some_and(|c| (200..300).contains(&c)) {
            return Err(InviteError::Sdp("not a 2xx"));
        }
        let to = ok.header("To").ok_or(SipError::Malformed("no To"))?;
        if param(to, "tag").is_none() {
            return Err(SipError::Malformed("2xx without To tag").into());
        }
        let remote_target = match ok.header("Contact") {
            Some(c) => uri_of(c).to_owned(),
            None => match &invite.start {
                crate::sip::StartLine::Request { uri, .. } => uri.clone(),
                crate::sip::StartLine::Response { .. } => {
                    return Err(SipError::Malformed("not a request").into());
                }
            },
        };
        let via = invite.header("Via").ok_or(SipError::Malformed("no Via"))?;
        let via = via.split(";branch=").next().unwrap_or(via).to_owned();
        Ok(Self {
            call_id: invite.call_id()?.to_owned(),
            from: invite
                .header("From")
                .ok_or(SipError::Malformed("no From"))?
                .to_owned(),
            to: to.to_owned(),
            remote_target,
            cseq: invite.cseq()?.0,
            via,
        })
    }

    fn in_dialog(&self, method: Method, cseq: u32) -> Message {
        Message::request(method.clone(), self.remote_target.clone())
            .with_header(
                "Via",
                format!("{};branch=z9hG4bK{}", self.via, random_token(8)),
            )
            .with_header("From", self.from.clone())
            .with_header("To", self.to.clone())
            .with_header("Call-ID", self.call_id.clone())
            .with_header("CSeq", format!("{cseq} {method}"))
            .with_header("Max-Forwards", "70")
    }

    /// The ACK for the 2xx (its own transaction, same CSeq number).
    pub fn ack(&self) -> Message {
        self.in_dialog(Method::Ack, self.cseq)
    }

    /// A BYE to stop the stream.
    pub fn bye(&mut self) -> Message {
        self.cseq += 1;
        self.in_dialog(Method::Bye, self.cseq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Limits;

    fn params(media: MediaTransport, ssrc: &str) -> InviteParams<'_> {
        InviteParams {
            our_id: "34020000002000000001",
            our_domain: "3402000000",
            our_addr: "10.0.0.5:5060",
            sip_transport: "UDP",
            channel_id: "34020000001320000001",
            target: "10.0.0.9:5060",
            media_ip: "10.0.0.5",
            media_port: 30000,
            media,
            ssrc,
        }
    }

    #[test]
    fn the_ssrc_is_live_flag_domain_digits_and_a_counter() {
        assert_eq!(ssrc(true, "3402000000", 1).unwrap(), "0200000001");
        assert_eq!(
            ssrc(false, "34020000002000000001", 12_345).unwrap(),
            "1200002345"
        );
        assert_eq!(ssrc_value("0200000001"), Some(200_000_001));
        assert!(ssrc(true, "34020", 1).is_err());
        assert_eq!(ssrc_value("99999999999"), None);
    }

    #[test]
    fn a_udp_invite_carries_the_gb_sdp_and_subject() {
        let s = ssrc(true, "3402000000", 7).unwrap();
        let inv = build_invite(&params(MediaTransport::Udp, &s), 1);
        let inv = Message::parse(&inv.to_bytes(), &Limits::default()).unwrap();
        assert_eq!(
            inv.header("Subject"),
            Some("34020000001320000001:0200000007,34020000002000000001:0")
        );
        let sdp = String::from_utf8(inv.body.clone()).unwrap();
        for line in [
            "s=Play",
            "m=video 30000 RTP/AVP 96",
            "a=rtpmap:96 PS/90000",
            "a=recvonly",
            "y=0200000007",
            "c=IN IP4 10.0.0.5",
        ] {
            assert!(sdp.contains(&format!("{line}\r\n")), "{line} in {sdp}");
        }
        assert!(!sdp.contains("a=setup"));
        match &inv.start {
            crate::sip::StartLine::Request { uri, .. } => {
                assert_eq!(uri, "sip:34020000001320000001@10.0.0.9:5060")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tcp_invites_say_who_connects() {
        let p = offer_sdp(&params(MediaTransport::TcpPassive, "0020000001"));
        assert!(
            p.contains("m=video 30000 TCP/RTP/AVP 96\r\n")
                && p.contains("a=setup:passive\r\na=connection:new\r\n")
        );
        let a = offer_sdp(&params(MediaTransport::TcpActive, "0020000001"));
        assert!(a.contains("a=setup:active\r\n"));
    }

    const OK_SDP: &str = "v=0\r\no=34020000001320000001 0 0 IN IP4 10.0.0.9\r\ns=Play\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=video 15060 TCP/RTP/AVP 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\na=setup:active\r\na=connection:new\r\ny=0020000009\r\nf=\r\n";

    #[test]
    fn the_answer_names_address_port_transport_and_ssrc() {
        let a = parse_answer(OK_SDP.as_bytes()).unwrap();
        assert_eq!(
            a,
            Answer {
                ip: "10.0.0.9".into(),
                port: 15060,
                tcp: true,
                setup: Some("active".into()),
                ssrc: Some(20_000_009)
            }
        );
        let udp = "v=0\nc=IN IP4 10.1.1.1\nm=video 9000 RTP/AVP 96\n";
        assert_eq!(parse_answer(udp.as_bytes()).unwrap().ssrc, None);
        assert_eq!(
            parse_answer(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 0 RTP/AVP 96\r\n"),
            Err(InviteError::Sdp("stream refused (port 0)"))
        );
        assert!(parse_answer(b"v=0\r\nm=audio 8000 RTP/AVP 8\r\n").is_err());
        assert!(
            parse_answer(b"v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\ny=abc\r\n").is_err()
        );
        assert!(parse_answer(b"\xff\xfe").is_err());
    }

    #[test]
    fn ack_and_bye_follow_the_dialog_of_the_200_ok() {
        let inv = build_invite(&params(MediaTransport::Udp, "0020000001"), 20);
        let ok = Message::response_to(&inv, 200, "OK", Some("remote1"))
            .with_header("Contact", "<sip:34020000001320000001@10.0.0.9:5060>")
            .with_body("application/sdp", OK_SDP.as_bytes().to_vec());
        let ok = Message::parse(&ok.to_bytes(), &Limits::default()).unwrap();
        let mut d = Dialog::from_ok(&inv, &ok).unwrap();
        let ack = d.ack();
        assert_eq!(ack.cseq().unwrap(), (20, Method::Ack));
        assert_eq!(param(ack.header("To").unwrap(), "tag"), Some("remote1"));
        assert_eq!(ack.header("Call-ID"), inv.header("Call-ID"));
        assert_ne!(
            param(ack.header("Via").unwrap(), "branch"),
            param(inv.header("Via").unwrap(), "branch")
        );
        match &ack.start {
            crate::sip::StartLine::Request { uri, .. } => {
                assert_eq!(uri, "sip:34020000001320000001@10.0.0.9:5060")
            }
            other => panic!("{other:?}"),
        }
        let bye = d.bye();
        assert_eq!(bye.cseq().unwrap(), (21, Method::Bye));
        let no_tag = Message::response_to(&inv, 200, "OK", None);
        assert!(Dialog::from_ok(&inv, &no_tag).is_err());
    }
}
