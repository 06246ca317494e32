//! SIP digest authentication (RFC 2617 with MD5, as RFC 3261 §22.4 uses it): the
//! challenge's parameters, the parsing of an Authorization header, and the response's
//! verification in constant time. Without `qop` the RFC 2069 form is checked.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use crate::sip::hex;

/// The parameters of a `Digest` Authorization header (RFC 2617 §3.2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Option<String>,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
}

/// Why an Authorization header was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("authorization scheme is not Digest")]
    NotDigest,
    #[error("digest parameter {0} missing")]
    Missing(&'static str),
    #[error("digest algorithm {0} not supported")]
    Algorithm(String),
    #[error("digest qop not supported")]
    Qop,
    #[error("malformed digest parameters")]
    Malformed,
}

/// Splits `a="x, y", b=z` into pairs, honouring quotes and backslash escapes.
fn auth_params(s: &str) -> Result<Vec<(String, String)>, DigestError> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i] == b',' || b[i].is_ascii_whitespace()) {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b',' {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(DigestError::Malformed);
        }
        let key = s[ks..i].trim().to_ascii_lowercase();
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut val = String::new();
        if b.get(i) == Some(&b'"') {
            i += 1;
            let mut closed = false;
            let mut seg = i;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        val.push_str(&s[seg..i]);
                        seg = i + 1;
                        i += 2;
                    }
                    b'"' => {
                        val.push_str(&s[seg..i]);
                        closed = true;
                        i += 1;
                        break;
                    }
                    _ => i += 1,
                }
            }
            if !closed {
                return Err(DigestError::Malformed);
            }
        } else {
            let vs = i;
            while i < b.len() && b[i] != b',' {
                i += 1;
            }
            val.push_str(s[vs..i].trim());
        }
        if key.is_empty() {
            return Err(DigestError::Malformed);
        }
        out.push((key, val));
    }
    Ok(out)
}

impl Credentials {
    /// Parses an Authorization (or Proxy-Authorization) header value.
    pub fn parse(header: &str) -> Result<Self, DigestError> {
        let h = header.trim_start();
        let rest = match h.split_once(char::is_whitespace) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("Digest") => rest,
            _ => return Err(DigestError::NotDigest),
        };
        let mut c = Credentials::default();
        for (k, v) in auth_params(rest)? {
            match k.as_str() {
                "username" => c.username = v,
                "realm" => c.realm = v,
                "nonce" => c.nonce = v,
                "uri" => c.uri = v,
                "response" => c.response = v,
                "algorithm" => c.algorithm = Some(v),
                "qop" => c.qop = Some(v),
                "nc" => c.nc = Some(v),
                "cnonce" => c.cnonce = Some(v),
                _ => {}
            }
        }
        for (name, v) in [
            ("username", &c.username),
            ("nonce", &c.nonce),
            ("uri", &c.uri),
            ("response", &c.response),
        ] {
            if v.is_empty() {
                return Err(DigestError::Missing(name));
            }
        }
        if let Some(a) = &c.algorithm
            && !a.eq_ignore_ascii_case("MD5")
        {
            return Err(DigestError::Algorithm(a.clone()));
        }
        match c.qop.as_deref() {
            None => {}
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                if c.nc.is_none() {
                    return Err(DigestError::Missing("nc"));
                }
                if c.cnonce.is_none() {
                    return Err(DigestError::Missing("cnonce"));
                }
            }
            Some(_) => return Err(DigestError::Qop),
        }
        Ok(c)
    }

    /// The expected `response` for this password and request method.
    pub fn expected_response(&self, method: &str, password: &str) -> String {
        expected_response(self, method, password)
    }

    /// Whether the response matches, compared in constant time.
    pub fn verify(&self, method: &str, password: &str) -> bool {
        let expected = self.expected_response(method, password);
        let given = self.response.to_ascii_lowercase();
        expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
    }
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    hex(&h.finalize())
}

fn expected_response(c: &Credentials, method: &str, password: &str) -> String {
    let ha1 = md5_hex(&[&c.username, &c.realm, password]);
    let ha2 = md5_hex(&[method, &c.uri]);
    match (&c.qop, &c.nc, &c.cnonce) {
        (Some(q), Some(nc), Some(cn)) => md5_hex(&[&ha1, &c.nonce, nc, cn, q, &ha2]),
        _ => md5_hex(&[&ha1, &c.nonce, &ha2]),
    }
}

/// A `WWW-Authenticate` value for a challenge.
pub fn challenge(realm: &str, nonce: &str, qop: bool, stale: bool) -> String {
    let mut s = format!("Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm=MD5");
    if qop {
        s.push_str(", qop=\"auth\"");
    }
    if stale {
        s.push_str(", stale=TRUE");
    }
    s
}

/// Builds the Authorization a client would send (used by tests and the scripted peer).
pub fn authorization(
    username: &str,
    realm: &str,
    nonce: &str,
    uri: &str,
    method: &str,
    password: &str,
    qop: Option<(&str, &str)>,
) -> String {
    let mut c = Credentials {
        username: username.into(),
        realm: realm.into(),
        nonce: nonce.into(),
        uri: uri.into(),
        ..Default::default()
    };
    if let Some((nc, cnonce)) = qop {
        c.qop = Some("auth".into());
        c.nc = Some(nc.into());
        c.cnonce = Some(cnonce.into());
    }
    let resp = expected_response(&c, method, password);
    let mut s = format!(
        "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5"
    );
    if let Some((nc, cnonce)) = qop {
        s.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_2617_example_verifies() {
        // RFC 2617 §3.5 (HTTP, but the same arithmetic).
        let h = r#"Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = Credentials::parse(h).unwrap();
        assert!(c.verify("GET", "Circle Of Life"));
        assert!(!c.verify("GET", "circle of life"));
    }

    #[test]
    fn a_response_without_qop_is_checked_in_the_rfc_2069_form() {
        let a = authorization(
            "34020000001320000001",
            "3402000000",
            "n1",
            "sip:34020000002000000001@3402000000",
            "REGISTER",
            "12345678",
            None,
        );
        let c = Credentials::parse(&a).unwrap();
        assert!(c.verify("REGISTER", "12345678"));
        assert!(!c.verify("REGISTER", "12345679"));
        assert!(!c.verify("INVITE", "12345678"));
    }

    #[test]
    fn broken_authorization_headers_are_typed_errors() {
        assert_eq!(Credentials::parse("Basic abc"), Err(DigestError::NotDigest));
        assert_eq!(
            Credentials::parse("Digest username=\"a"),
            Err(DigestError::Malformed)
        );
        assert_eq!(
            Credentials::parse("Digest username=\"a\", nonce=x, uri=y"),
            Err(DigestError::Missing("response"))
        );
        assert!(matches!(
            Credentials::parse("Digest username=a, nonce=x, uri=y, response=z, algorithm=SHA-256"),
            Err(DigestError::Algorithm(_))
        ));
        assert_eq!(
            Credentials::parse("Digest username=a, nonce=x, uri=y, response=z, qop=auth"),
            Err(DigestError::Missing("nc"))
        );
        assert_eq!(
            Credentials::parse("Digest ,=,"),
            Err(DigestError::Malformed)
        );
    }
}
