//! Credentials never reach a log, an error or a metric: URIs are shown without them, and
//! sources receive them separately.

use std::borrow::Cow;

/// User name and password taken out of a URI; `Debug` shows no password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: crate::Secret,
}

/// Splits `scheme://user:pass@host/...` into the URI without credentials and the credentials
/// (percent-decoded). URIs without credentials, and strings that are not URIs, come back as
/// they are.
pub fn split_credentials(uri: &str) -> (String, Option<Credentials>) {
    let Ok(mut url) = url::Url::parse(uri) else {
        return (uri.to_string(), None);
    };
    if url.username().is_empty() && url.password().is_none() {
        return (uri.to_string(), None);
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let credentials = Credentials {
        user: decode(url.username()),
        password: url.password().map(decode).unwrap_or_default().into(),
    };
    let _ = url.set_username("");
    let _ = url.set_password(None);
    (url.to_string(), Some(credentials))
}

/// What stands for a credential's value in a redacted query string.
pub const REDACTED_VALUE: &str = "***";

/// Whether a query parameter named `key` carries a credential: `password`, `pass`, `pwd`,
/// `token`, `access_token`, `key`, `api_key`, `secret`, `auth`, `signature`, `sig` and their
/// kin (`X-Amz-Signature`, `client_secret`, `passwd`), whatever the case. Broad on purpose:
/// hiding a harmless value costs a look at the config, showing a password costs the camera.
fn secret_key(key: &str) -> bool {
    let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
    let key: String = key
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    [
        "pass",
        "pwd",
        "secret",
        "token",
        "auth",
        "signature",
        "credential",
        "session",
    ]
    .iter()
    .any(|part| key.contains(part))
        || key.ends_with("key")
        || key.ends_with("sig")
}

/// `uri` with the value of every credential parameter (see [`secret_key`]) in its query
/// string and fragment replaced by `***`; the rest kept byte for byte.
fn redact_query(uri: &str) -> Cow<'_, str> {
    let Some(start) = uri.find(['?', '#']) else {
        return Cow::Borrowed(uri);
    };
    let mut out = String::with_capacity(uri.len());
    out.push_str(&uri[..=start]);
    let mut changed = false;
    let mut rest = &uri[start + 1..];
    loop {
        let mut end = rest.find(['&', ';', '#', '?']).unwrap_or(rest.len());
        if let Some((key, _)) = rest[..end].split_once('=')
            && secret_key(key)
        {
            // A `?` is a plain character inside a query value: a secret's value runs on to
            // the next `&`, `;` or `#`, so `password=ab?cd` hides `cd` too.
            end = rest.find(['&', ';', '#']).unwrap_or(rest.len());
        }
        let pair = &rest[..end];
        match pair.split_once('=') {
            Some((key, value)) if secret_key(key) && value != REDACTED_VALUE => {
                out.push_str(key);
                out.push('=');
                out.push_str(REDACTED_VALUE);
                changed = true;
            }
            _ => out.push_str(pair),
        }
        match rest[end..].chars().next() {
            Some(separator) => {
                out.push(separator);
                rest = &rest[end + separator.len_utf8()..];
            }
            None => break,
        }
    }
    if changed {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(uri)
    }
}

/// The URI as it may be shown: with no user name or password in it, and no credential in
/// its query string (`?password=…`, `&token=…`: the value shows as `***`).
pub fn redact_uri(uri: &str) -> String {
    let uri = &*redact_query(uri);
    let (clean, credentials) = split_credentials(uri);
    if credentials.is_some() {
        return clean;
    }
    // An `@` the URL parser did not read as the end of user:password may still end one (a
    // password with an unencoded `/`: `rtsp://admin:12/ab@host/x` parses as host `admin`,
    // port 12). Cut up to it, except in file URIs, which carry no credentials.
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme_end), Some(at))
            if at > scheme_end && !uri[..scheme_end].eq_ignore_ascii_case("file") =>
        {
            format!("{}://{}", &uri[..scheme_end], &uri[at + 1..])
        }
        // No scheme a parser would see (`htp//user:pass@host`, `user:pass@host`): a `:`
        // before an `@` may still be a password, and the value is quoted in errors.
        (None, Some(at)) if uri[..at].contains(':') => format!("***@{}", &uri[at + 1..]),
        _ => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_split_out_and_decoded() {
        let (clean, creds) = split_credentials("rtsp://admin:p%40ss%3Aword@10.0.0.5:554/stream1");
        assert_eq!(clean, "rtsp://10.0.0.5:554/stream1");
        let creds = creds.unwrap();
        assert_eq!(
            (creds.user.as_str(), creds.password.expose()),
            ("admin", "p@ss:word")
        );
        assert!(!format!("{creds:?}").contains("p@ss"));
    }

    #[test]
    fn redaction_keeps_no_secret() {
        assert_eq!(redact_uri("rtsp://u:secret@cam/x"), "rtsp://cam/x");
        assert_eq!(redact_uri("http://cam/x"), "http://cam/x");
        assert_eq!(redact_uri("/tmp/a.avi"), "/tmp/a.avi");
        assert!(!redact_uri("rtsp://u:sec ret@cam/x y").contains("sec"));
        // A password with an unencoded `/` ends the authority early for a URL parser.
        assert_eq!(
            redact_uri("rtsp://admin:2024/Secret@10.0.0.5/stream"),
            "rtsp://10.0.0.5/stream"
        );
        assert!(!redact_uri("rtsp://admin:12#ab@cam/x").contains("ab@"));
        // An `@` after the host, once the credentials are out, is part of the path.
        assert_eq!(
            redact_uri("rtsp://u:p@cam/live@main"),
            "rtsp://cam/live@main"
        );
        assert_eq!(
            redact_uri("file:///rec/cam1@0800.mp4"),
            "file:///rec/cam1@0800.mp4"
        );
        // A scheme mistyped: still no password.
        assert_eq!(
            redact_uri("htp//user:hunter2pass@example.com/x"),
            "***@example.com/x"
        );
        assert_eq!(redact_uri("/rec/cam1@0800.mp4"), "/rec/cam1@0800.mp4");
    }

    #[test]
    fn query_credentials_are_redacted_whatever_their_case() {
        assert_eq!(
            redact_uri("rtsp://cam:554/live?user=a&password=secret&channel=1"),
            "rtsp://cam:554/live?user=a&password=***&channel=1"
        );
        for key in [
            "pass",
            "PWD",
            "Token",
            "access_token",
            "key",
            "api-key",
            "secret",
            "client_secret",
            "auth",
            "X-Amz-Signature",
            "sig",
            "passwd",
            "pass%77ord",
        ] {
            let uri = format!("http://cam/snap.jpg?{key}=s3cr3t&w=640");
            let shown = redact_uri(&uri);
            assert!(!shown.contains("s3cr3t"), "{key}: {shown}");
            assert!(shown.ends_with("=***&w=640"), "{key}: {shown}");
        }
        // Both kinds at once, a fragment, `;` separators, and nothing to hide.
        let shown = redact_uri("rtsp://admin:pw1@cam/x?token=t0k#access_token=t1;sig=t2");
        assert_eq!(shown, "rtsp://cam/x?token=***#access_token=***;sig=***");
        assert_eq!(
            redact_uri("rtsp://cam/x?channel=1&subtype=0"),
            "rtsp://cam/x?channel=1&subtype=0"
        );
        // An `@` in the query (a mail address) must not let a password through.
        assert!(!redact_uri("rtsp://cam:554/x?mail=a@b&password=secret").contains("secret"));
        assert!(!redact_uri("http://cam/x?password=se%26cret").contains("cret"));
        // A `?` inside a secret's value is part of it.
        assert_eq!(
            redact_uri("rtsp://cam/x?password=ab?cd&channel=1"),
            "rtsp://cam/x?password=***&channel=1"
        );
    }
}
