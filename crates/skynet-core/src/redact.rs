//! Credentials never reach a log, an error or a metric: URIs are shown without them, and
//! sources receive them separately.

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

/// The URI as it may be shown: with no user name or password in it.
pub fn redact_uri(uri: &str) -> String {
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
    }
}
