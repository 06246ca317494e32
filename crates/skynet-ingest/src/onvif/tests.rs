//! The ONVIF source's pure parts: the digest, answers of different vendors, faults and the
//! config's checks. tests/onvif.rs drives the whole exchange against a scripted device.

use super::*;
use std::path::Path;

fn cx() -> ConfigContext {
    ConfigContext::new(Path::new("/etc/skynet/site.toml"))
}

fn validated(text: &str) -> Result<OnvifSourceConfig, FieldError> {
    toml::from_str::<OnvifSourceConfig>(text)
        .expect("parses")
        .validate(&cx())
}

fn body(xml: &str) -> Element {
    interpret("Test", 200, xml, |s| s.to_string()).expect("a SOAP body")
}

#[test]
fn the_digest_matches_the_onvif_programmers_guide() {
    // ONVIF Application Programmer's Guide, 6.1.1.3.
    let nonce = BASE64.decode("LKqI6G/AikKCQrN0zqZFlg==").unwrap();
    assert_eq!(
        password_digest(&nonce, "2010-09-16T07:50:45Z", "userpassword"),
        "tuOSpGlFlIXsozq4HFNeeGeFLEI="
    );
    let header = security_header("a<b", "userpassword", "2010-09-16T07:50:45Z", &nonce);
    assert!(
        header.contains("<wsse:Username>a&lt;b</wsse:Username>"),
        "{header}"
    );
    assert!(header.contains(">tuOSpGlFlIXsozq4HFNeeGeFLEI=</wsse:Password>"));
    assert!(header.contains(">LKqI6G/AikKCQrN0zqZFlg==</wsse:Nonce>"));
    assert!(!header.contains("userpassword"));
}

#[test]
fn answers_are_read_whatever_the_vendor_prefixes() {
    // Hikvision-like prefixes, a default namespace, and none at all.
    let capabilities = [
        r#"<?xml version="1.0"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"><env:Body><tds:GetCapabilitiesResponse><tds:Capabilities><tt:Analytics><tt:XAddr>http://10.0.0.2/onvif/Analytics</tt:XAddr></tt:Analytics><tt:Media><tt:XAddr>http://10.0.0.2/onvif/Media</tt:XAddr></tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse></env:Body></env:Envelope>"#,
        r#"<Envelope xmlns="http://www.w3.org/2003/05/soap-envelope"><Body><GetCapabilitiesResponse xmlns="http://www.onvif.org/ver10/device/wsdl"><Capabilities><Analytics><XAddr>http://10.0.0.2/onvif/Analytics</XAddr></Analytics><Media xmlns="http://www.onvif.org/ver10/schema"><XAddr>
            http://10.0.0.2/onvif/Media
        </XAddr></Media></Capabilities></GetCapabilitiesResponse></Body></Envelope>"#,
        r#"<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" xmlns:ns1="x" xmlns:ns2="y"><SOAP-ENV:Header/><SOAP-ENV:Body><ns1:GetCapabilitiesResponse><ns1:Capabilities><ns2:Media><ns2:XAddr>http://10.0.0.2/onvif/Media</ns2:XAddr><ns2:StreamingCapabilities/></ns2:Media></ns1:Capabilities></ns1:GetCapabilitiesResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"#,
    ];
    for xml in capabilities {
        assert_eq!(
            media_from_capabilities(&body(xml))
                .as_deref()
                .map(str::trim),
            Some("http://10.0.0.2/onvif/Media"),
            "{xml}"
        );
    }

    let services = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><d:GetServicesResponse xmlns:d="http://www.onvif.org/ver10/device/wsdl"><d:Service><d:Namespace>http://www.onvif.org/ver10/device/wsdl</d:Namespace><d:XAddr>http://10.0.0.2/dev</d:XAddr></d:Service><d:Service><d:Namespace>http://www.onvif.org/ver10/media/wsdl</d:Namespace><d:XAddr>http://10.0.0.2/media</d:XAddr></d:Service></d:GetServicesResponse></s:Body></s:Envelope>"#;
    assert_eq!(
        media_from_services(&body(services)).as_deref(),
        Some("http://10.0.0.2/media")
    );

    let profiles_xml = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><trt:GetProfilesResponse xmlns:trt="http://www.onvif.org/ver10/media/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema"><trt:Profiles fixed="true" token="Profile_1"><tt:Name>main</tt:Name><tt:VideoSourceConfiguration token="V1"/></trt:Profiles><trt:Profiles token="Profile_2"><tt:Name>sub</tt:Name></trt:Profiles></trt:GetProfilesResponse></s:Body></s:Envelope>"#;
    assert_eq!(profiles(&body(profiles_xml)), ["Profile_1", "Profile_2"]);

    // `&amp;` in the address, as most devices escape it.
    let uri = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><trt:GetStreamUriResponse xmlns:trt="http://www.onvif.org/ver10/media/wsdl"><trt:MediaUri><tt:Uri xmlns:tt="http://www.onvif.org/ver10/schema">rtsp://10.0.0.2:554/cam/realmonitor?channel=1&amp;subtype=0</tt:Uri><tt:InvalidAfterConnect xmlns:tt="x">false</tt:InvalidAfterConnect></trt:MediaUri></trt:GetStreamUriResponse></s:Body></s:Envelope>"#;
    let uri = stream_uri(&body(uri)).unwrap();
    assert_eq!(
        uri,
        "rtsp://10.0.0.2:554/cam/realmonitor?channel=1&subtype=0"
    );
    assert!(check_stream_uri(&uri).is_ok());
    assert!(check_stream_uri("http://10.0.0.2/x").is_err());
    let e = check_stream_uri("ftp://admin:s3cret@10.0.0.2/x").unwrap_err();
    assert!(!e.to_string().contains("s3cret"), "{e}");

    let time = r#"<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope"><SOAP-ENV:Body><tds:GetSystemDateAndTimeResponse xmlns:tds="d" xmlns:tt="s"><tds:SystemDateAndTime><tt:DateTimeType>Manual</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings><tt:TimeZone><tt:TZ>CST-8</tt:TZ></tt:TimeZone><tt:UTCDateTime><tt:Time><tt:Hour>5</tt:Hour><tt:Minute>07</tt:Minute><tt:Second>09</tt:Second></tt:Time><tt:Date><tt:Year>2026</tt:Year><tt:Month>12</tt:Month><tt:Day>6</tt:Day></tt:Date></tt:UTCDateTime><tt:LocalDateTime><tt:Time><tt:Hour>13</tt:Hour><tt:Minute>7</tt:Minute><tt:Second>9</tt:Second></tt:Time><tt:Date><tt:Year>2026</tt:Year><tt:Month>12</tt:Month><tt:Day>6</tt:Day></tt:Date></tt:LocalDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;
    assert_eq!(
        device_time(&body(time)).map(|t| t.to_rfc3339()),
        Some("2026-12-06T05:07:09+00:00".into())
    );
}

#[test]
fn faults_and_refusals_are_typed_and_never_show_the_password() {
    let soap12 = r#"<?xml version="1.0" encoding="UTF-8"?><env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" xmlns:ter="http://www.onvif.org/ver10/error"><env:Body><env:Fault><env:Code><env:Value>env:Sender</env:Value><env:Subcode><env:Value>ter:NotAuthorized</env:Value></env:Subcode></env:Code><env:Reason><env:Text xml:lang="en">Sender not Authorized s3cret</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>"#;
    let scrub = |s: &str| s.replace("s3cret", "…");
    for status in [400, 500, 200] {
        let e = interpret("GetProfiles", status, soap12, scrub).unwrap_err();
        assert!(matches!(e, OnvifError::Unauthorized { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("refused the user name or password"), "{text}");
        assert!(text.contains("ter:NotAuthorized"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
    // SOAP 1.1, WS-Security's own code.
    let soap11 = r#"<S:Envelope xmlns:S="http://schemas.xmlsoap.org/soap/envelope/"><S:Body><S:Fault><faultcode>wsse:FailedAuthentication</faultcode><faultstring>bad token</faultstring></S:Fault></S:Body></S:Envelope>"#;
    assert!(matches!(
        interpret("GetProfiles", 500, soap11, scrub),
        Err(OnvifError::Unauthorized { .. })
    ));
    // A bare 401 (a device that wants HTTP authentication).
    assert!(matches!(
        interpret("GetProfiles", 401, "", scrub),
        Err(OnvifError::Unauthorized { .. })
    ));
    // Another fault stays a fault.
    let other = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>ter:ActionNotSupported</s:Value></s:Subcode></s:Code><s:Reason><s:Text>no</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>"#;
    match interpret("GetCapabilities", 500, other, scrub) {
        Err(OnvifError::Fault { code, reason, .. }) => {
            assert_eq!(code, "s:Receiver / ter:ActionNotSupported");
            assert_eq!(reason, "no");
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        interpret("GetProfiles", 404, "<html>no</html>", scrub),
        Err(OnvifError::Http { status: 404, .. })
    ));
}

#[test]
fn broken_answers_are_refused() {
    let scrub = |s: &str| s.to_string();
    for xml in [
        "",
        "not xml",
        // Truncated.
        r#"<s:Envelope xmlns:s="x"><s:Body><a>"#,
        // Mismatched.
        r#"<s:Envelope xmlns:s="x"><s:Body></s:Envelope></s:Body>"#,
        // Not SOAP.
        "<html><body>hello</body></html>",
        // An entity the document does not define.
        r#"<s:Envelope xmlns:s="x"><s:Body>&xxe;</s:Body></s:Envelope>"#,
    ] {
        assert!(
            matches!(
                interpret("GetProfiles", 200, xml, scrub),
                Err(OnvifError::Malformed { .. })
            ),
            "{xml}"
        );
    }
    let deep = format!(
        "<s:Envelope><s:Body>{}{}</s:Body></s:Envelope>",
        "<a>".repeat(200),
        "</a>".repeat(200)
    );
    assert!(parse_xml(&deep).is_err());
    // A body without a profile.
    let none =
        body(r#"<s:Envelope xmlns:s="x"><s:Body><GetProfilesResponse/></s:Body></s:Envelope>"#);
    assert!(profiles(&none).is_empty());
    assert_eq!(stream_uri(&none), None);
    assert_eq!(device_time(&none), None);
}

#[test]
fn the_config_is_checked_purely_and_names_the_field() {
    let c = validated(
        "url = \"http://192.0.2.10/onvif/device_service\"\nuser = \"viewer\"\npassword = \"${HOME}\"",
    )
    .unwrap();
    let home = std::env::var("HOME").unwrap();
    assert_eq!(c.password.as_ref().map(Secret::expose), Some(home.as_str()));
    assert!(!format!("{c:?}").contains(&home));
    assert!(c.is_live());
    assert_eq!(c.display_uri(), "http://192.0.2.10/onvif/device_service");
    let p = c.retry_policy();
    assert_eq!((p.max_attempts, p.live), (None, true));

    let field = |text: &str| validated(text).unwrap_err().field;
    let url = "url = \"http://192.0.2.10/onvif/device_service\"\n";
    assert_eq!(field("url = \"rtsp://192.0.2.10/x\""), "url");
    assert_eq!(field("url = \"192.0.2.10\""), "url");
    assert_eq!(field("url = \"http://:8080/onvif\""), "url");
    assert_eq!(field("url = \"${SKYNET_SURELY_UNSET_VAR}/onvif\""), "url");
    assert_eq!(field(&format!("{url}password = \"pw\"")), "password");
    assert_eq!(field(&format!("{url}timeout_s = 0")), "timeout_s");
    assert_eq!(
        field(&format!("{url}stall_timeout_s = 0.1")),
        "stall_timeout_s"
    );
    assert_eq!(field(&format!("{url}latency_ms = 20000")), "latency_ms");
    assert_eq!(
        field(&format!("{url}decode_threads = 1000")),
        "decode_threads"
    );
    assert_eq!(field(&format!("{url}decoder = \"nv h264\"")), "decoder");
    assert_eq!(field(&format!("{url}profile = \"\"")), "profile");
    assert_eq!(
        field(&format!("{url}reconnect = {{ max_attempts = 3 }}")),
        "reconnect.max_attempts"
    );
    assert_eq!(
        field(&format!(
            "{url}reconnect = {{ initial_backoff_s = 5, max_backoff_s = 2 }}"
        )),
        "reconnect.max_backoff_s"
    );
    assert!(toml::from_str::<OnvifSourceConfig>(&format!("{url}uri = \"rtsp://x/y\"")).is_err());

    // Credentials belong in `user` and `password`; the URL's are never shown.
    let e = validated("url = \"http://admin:s3cret@192.0.2.10/onvif/device_service\"").unwrap_err();
    assert_eq!(e.field, "url");
    assert!(!e.message.contains("s3cret"), "{e}");
    let e = validated(&format!("{url}user = \"v\"\npassword = \"s3cret${{\"")).unwrap_err();
    assert!(!e.message.contains("s3cret"), "{e}");

    // The kind's example is valid (with its variable unset or set).
    let example: OnvifSourceConfig = toml::from_str(OnvifSourceConfig::EXAMPLE).unwrap();
    assert!(example.validate(&cx()).is_ok());
}

/// A device (or whoever answers in its place) naming another host gets no signed request
/// and no credentials there: its services and stream are asked of the configured host.
#[test]
fn services_and_streams_named_on_another_host_are_asked_of_the_configured_one() {
    let device = url::Url::parse("http://192.0.2.10:8080/onvif/device_service").unwrap();
    let media = url::Url::parse("http://10.0.0.5/onvif/Media?x=1").unwrap();
    assert_eq!(
        same_host(media, &device).as_str(),
        "http://192.0.2.10:8080/onvif/Media?x=1"
    );
    let same = url::Url::parse("http://192.0.2.10:80/onvif/Media").unwrap();
    assert_eq!(same_host(same.clone(), &device), same);
    assert_eq!(
        same_stream_host("rtsp://10.0.0.5:554/Streaming/101", &device),
        "rtsp://192.0.2.10:554/Streaming/101"
    );
    assert_eq!(
        same_stream_host("rtsp://192.0.2.10/live", &device),
        "rtsp://192.0.2.10/live"
    );
}
