//! `kind = "onvif"` cameras against a scripted ONVIF device: a small SOAP responder whose
//! clock is 3 hours ahead of the host's, which checks each WS-UsernameToken (digest, and
//! `Created` within 30 s of its own clock) and hands out the address of the tests' RTSP
//! camera.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Datelike, Timelike, Utc};
use sha1::{Digest as _, Sha1};
use skynet_core::{
    Component, ConfigContext, DeviceId, OverloadPolicy, Shutdown, Watermark, stage_queue,
};
use skynet_ingest::onvif::{OnvifError, OnvifSourceConfig};
use skynet_ingest::{
    BuildSource, CameraHealth, FrameDelivery, FrameOutput, IngestError, SourceBuildContext,
    run_supervised,
};

/// How far the device's clock is ahead of the host's.
const DEVICE_AHEAD: chrono::TimeDelta = chrono::TimeDelta::hours(3);

/// What the scripted device saw.
#[derive(Default)]
struct Seen {
    accepted: AtomicU32,
    refused: AtomicU32,
}

/// A scripted ONVIF device on a spare port, user `admin` with `password`.
struct Device {
    port: u16,
    seen: Arc<Seen>,
}

impl Device {
    fn start(password: &str, rtsp_port: u16) -> Self {
        Self::start_on(0, password, rtsp_port)
    }

    /// On `port` (0: any spare one).
    fn start_on(port: u16, password: &str, rtsp_port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let (password, seen_by_device) = (password.to_string(), Arc::clone(&seen));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, port, &password, rtsp_port, &seen_by_device);
            }
        });
        Self { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/onvif/device_service", self.port)
    }
}

/// The text of the first element named `name` (any prefix, or none).
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(i) = xml[from..].find('<') {
        let start = from + i + 1;
        let tag_end = start + xml[start..].find(|c: char| c == '>' || c.is_whitespace())?;
        let tag = &xml[start..tag_end];
        if tag.rsplit(':').next() == Some(name) {
            let open_end = tag_end + xml[tag_end..].find('>')? + 1;
            let close = open_end + xml[open_end..].find(&format!("</{tag}>"))?;
            return Some(&xml[open_end..close]);
        }
        from = start;
    }
    None
}

/// WS-UsernameToken's `PasswordDigest`, computed here independently of skynet's.
fn digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(nonce);
    sha.update(created.as_bytes());
    sha.update(password.as_bytes());
    BASE64.encode(sha.finalize())
}

/// A GetProfiles request with the right password but signed on the host's clock, as a
/// client that ignored the device's offset would sign it; the device's answer.
fn signed_on_the_host_clock(device: &Device, password: &str) -> String {
    let created = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let nonce = [7u8; 16];
    let body = format!(
        "<s:Envelope xmlns:s=\"http://www.w3.org/2003/05/soap-envelope\"><s:Header><wsse:Security xmlns:wsse=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd\" xmlns:wsu=\"http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd\"><wsse:UsernameToken><wsse:Username>admin</wsse:Username><wsse:Password>{}</wsse:Password><wsse:Nonce>{}</wsse:Nonce><wsu:Created>{created}</wsu:Created></wsse:UsernameToken></wsse:Security></s:Header><s:Body><GetProfiles xmlns=\"http://www.onvif.org/ver10/media/wsdl\"/></s:Body></s:Envelope>",
        digest(&nonce, &created, password),
        BASE64.encode(nonce)
    );
    let mut stream = TcpStream::connect(("127.0.0.1", device.port)).unwrap();
    write!(
        stream,
        "POST /onvif/Media HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/soap+xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// Whether the request's UsernameToken is right, on the device's clock.
fn authorised(request: &str, password: &str) -> bool {
    let (Some(user), Some(given), Some(nonce), Some(created)) = (
        element(request, "Username"),
        element(request, "Password"),
        element(request, "Nonce"),
        element(request, "Created"),
    ) else {
        return false;
    };
    let Ok(nonce) = BASE64.decode(nonce) else {
        return false;
    };
    let expected = digest(&nonce, created, password);
    let fresh = DateTime::parse_from_rfc3339(created).is_ok_and(|t| {
        (t.with_timezone(&Utc) - (Utc::now() + DEVICE_AHEAD))
            .num_seconds()
            .abs()
            <= 30
    });
    user == "admin" && given == expected && fresh
}

fn envelope(body: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" xmlns:tds="http://www.onvif.org/ver10/device/wsdl" xmlns:trt="http://www.onvif.org/ver10/media/wsdl" xmlns:tt="http://www.onvif.org/ver10/schema" xmlns:ter="http://www.onvif.org/ver10/error"><SOAP-ENV:Body>{body}</SOAP-ENV:Body></SOAP-ENV:Envelope>"#
    )
}

fn serve(
    stream: TcpStream,
    port: u16,
    password: &str,
    rtsp_port: u16,
    seen: &Seen,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let request = String::from_utf8_lossy(&body);

    let (status, answer) = if request.contains("GetSystemDateAndTime") {
        let now = Utc::now() + DEVICE_AHEAD;
        (
            "200 OK",
            envelope(&format!(
                "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime><tt:DateTimeType>Manual</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings><tt:UTCDateTime><tt:Time><tt:Hour>{}</tt:Hour><tt:Minute>{}</tt:Minute><tt:Second>{}</tt:Second></tt:Time><tt:Date><tt:Year>{}</tt:Year><tt:Month>{}</tt:Month><tt:Day>{}</tt:Day></tt:Date></tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>",
                now.hour(),
                now.minute(),
                now.second(),
                now.year(),
                now.month(),
                now.day()
            )),
        )
    } else if !authorised(&request, password) {
        seen.refused.fetch_add(1, Ordering::Relaxed);
        (
            "400 Bad Request",
            envelope(
                "<SOAP-ENV:Fault><SOAP-ENV:Code><SOAP-ENV:Value>SOAP-ENV:Sender</SOAP-ENV:Value><SOAP-ENV:Subcode><SOAP-ENV:Value>ter:NotAuthorized</SOAP-ENV:Value></SOAP-ENV:Subcode></SOAP-ENV:Code><SOAP-ENV:Reason><SOAP-ENV:Text xml:lang=\"en\">Sender not Authorized</SOAP-ENV:Text></SOAP-ENV:Reason></SOAP-ENV:Fault>",
            ),
        )
    } else {
        seen.accepted.fetch_add(1, Ordering::Relaxed);
        let answer = if request.contains("GetCapabilities") {
            format!(
                "<tds:GetCapabilitiesResponse><tds:Capabilities><tt:Media><tt:XAddr>http://127.0.0.1:{port}/onvif/Media</tt:XAddr></tt:Media></tds:Capabilities></tds:GetCapabilitiesResponse>"
            )
        } else if request.contains("GetProfiles") {
            "<trt:GetProfilesResponse><trt:Profiles fixed=\"true\" token=\"Profile_1\"><tt:Name>mainStream</tt:Name></trt:Profiles><trt:Profiles token=\"Profile_2\"><tt:Name>subStream</tt:Name></trt:Profiles></trt:GetProfilesResponse>".to_string()
        } else if request.contains("GetStreamUri") && request.contains("Profile_1") {
            format!(
                "<trt:GetStreamUriResponse><trt:MediaUri><tt:Uri>rtsp://127.0.0.1:{rtsp_port}/cam</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect><tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri></trt:GetStreamUriResponse>"
            )
        } else {
            "<SOAP-ENV:Fault><SOAP-ENV:Code><SOAP-ENV:Value>SOAP-ENV:Receiver</SOAP-ENV:Value><SOAP-ENV:Subcode><SOAP-ENV:Value>ter:ActionNotSupported</SOAP-ENV:Value></SOAP-ENV:Subcode></SOAP-ENV:Code><SOAP-ENV:Reason><SOAP-ENV:Text>not supported</SOAP-ENV:Text></SOAP-ENV:Reason></SOAP-ENV:Fault>".to_string()
        };
        ("200 OK", envelope(&answer))
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/soap+xml; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )?;
    stream.flush()
}

fn camera(text: &str) -> OnvifSourceConfig {
    let config: OnvifSourceConfig = toml::from_str(text).unwrap();
    config
        .validate(&ConfigContext::new(Path::new("/nonexistent/site.toml")))
        .expect("a valid camera")
}

#[test]
fn a_device_whose_clock_is_3_hours_off_still_authenticates_and_its_stream_delivers_frames() {
    let rtsp_port = common::free_port().port();
    // The RTSP camera wants the same credentials: they reach it as properties.
    let _rtsp =
        common::RtspCamera::start_with(rtsp_port, &["--user", "admin", "--password", "right-pw"]);
    let device = Device::start("right-pw", rtsp_port);
    let config = camera(&format!(
        "url = \"{}\"\nuser = \"admin\"\npassword = \"right-pw\"\nreconnect = {{ initial_backoff_s = 0.2, max_backoff_s = 1 }}",
        device.url()
    ));

    let id = DeviceId::new("cam-onvif");
    let mut source = config
        .build(&SourceBuildContext {
            camera: &id,
            delivery: &FrameDelivery::default(),
        })
        .unwrap();
    let (queue, rx) = stage_queue("frames", "cam-onvif", 64, OverloadPolicy::DropOldest);
    let out = FrameOutput::new(queue, Watermark::new(true));
    let stop = Shutdown::new();
    let health = CameraHealth::detached("cam-onvif");
    let policy = config.retry_policy();
    let running = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let exit = run_supervised(source.as_mut(), &out, &stop, &health, &policy);
            (exit, source.stats())
        })
    };
    // A few frames through the RTSP source, then stop.
    let mut frames = 0;
    while frames < 5 {
        match rx.channel().recv_timeout(Duration::from_secs(60)) {
            Ok(frame) => {
                assert_eq!(frame.info.camera, id);
                frames += 1;
            }
            Err(_) => break,
        }
    }
    stop.trigger();
    let (exit, stats) = running.join().unwrap();
    assert_eq!(frames, 5, "frames from the ONVIF camera ({exit:?})");
    assert!(exit.is_ok(), "{exit:?}");
    assert!(stats.decoded >= 5);
    // GetCapabilities, GetProfiles and GetStreamUri, signed on the device's clock.
    assert!(device.seen.accepted.load(Ordering::Relaxed) >= 3);
    assert_eq!(device.seen.refused.load(Ordering::Relaxed), 0);
    // The control: the same password signed on the host's clock is refused by this device.
    let answer = signed_on_the_host_clock(&device, "right-pw");
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("ter:NotAuthorized"),
        "{answer}"
    );
}

#[test]
fn a_wrong_password_gets_a_clear_error_that_never_shows_it() {
    let device = Device::start("right-pw", common::free_port().port());
    let config = camera(&format!(
        "url = \"{}\"\nuser = \"admin\"\npassword = \"wr0ng-s3cret\"",
        device.url()
    ));
    let id = DeviceId::new("cam-onvif-wrong");
    let mut source = config
        .build(&SourceBuildContext {
            camera: &id,
            delivery: &FrameDelivery::default(),
        })
        .unwrap();
    let (queue, _rx) = stage_queue("frames", "cam-onvif-wrong", 4, OverloadPolicy::DropOldest);
    let out = FrameOutput::new(queue, Watermark::new(true));
    let e = source.run(&out, &Shutdown::new()).unwrap_err();
    assert!(
        matches!(
            &e,
            IngestError::Onvif {
                error: OnvifError::Unauthorized { .. },
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(text.contains("cam-onvif-wrong"), "{text}");
    assert!(text.contains("refused the user name or password"), "{text}");
    assert!(text.contains(&device.url()), "{text}");
    assert!(!text.contains("wr0ng-s3cret"), "{text}");
    assert!(!format!("{e:?}").contains("wr0ng-s3cret"));
    assert!(!format!("{config:?}").contains("wr0ng-s3cret"));
    assert!(device.seen.refused.load(Ordering::Relaxed) >= 1);
    assert_eq!(device.seen.accepted.load(Ordering::Relaxed), 0);
}

#[test]
fn a_device_that_is_down_at_start_is_retried_with_backoff_and_its_camera_comes_up() {
    let rtsp_port = common::free_port().port();
    let _rtsp = common::RtspCamera::start(rtsp_port);
    // Nothing listens there yet.
    let port = common::free_port().port();
    let config = camera(&format!(
        "url = \"http://127.0.0.1:{port}/onvif/device_service\"\nuser = \"admin\"\npassword = \"right-pw\"\nreconnect = {{ initial_backoff_s = 0.1, max_backoff_s = 0.3 }}"
    ));
    let id = DeviceId::new("cam-onvif-late");
    let mut source = config
        .build(&SourceBuildContext {
            camera: &id,
            delivery: &FrameDelivery::default(),
        })
        .unwrap();
    let (queue, rx) = stage_queue("frames", "cam-onvif-late", 64, OverloadPolicy::DropOldest);
    let out = FrameOutput::new(queue, Watermark::new(true));
    let stop = Shutdown::new();
    let health = CameraHealth::detached("cam-onvif-late");
    let policy = config.retry_policy();
    let running = {
        let (stop, health) = (stop.clone(), health.clone());
        std::thread::spawn(move || run_supervised(source.as_mut(), &out, &stop, &health, &policy))
    };
    let status = || health.component().status();
    let reason = || status().and_then(|s| s.reason).unwrap_or_default();
    let retrying = common::eventually(Duration::from_secs(30), || {
        reason().contains("cam-onvif-late: ONVIF device")
            && status().is_some_and(|s| s.retries >= 2)
    });
    assert!(retrying, "{}", reason());
    let device = Device::start_on(port, "right-pw", rtsp_port);
    let frame = rx.channel().recv_timeout(Duration::from_secs(60));
    stop.trigger();
    let exit = running.join().unwrap();
    assert!(
        frame.is_ok(),
        "no frame once the device answered: {}",
        reason()
    );
    assert!(exit.is_ok(), "{exit:?}");
    assert!(device.seen.accepted.load(Ordering::Relaxed) >= 3);
}

#[test]
fn a_profile_the_device_does_not_have_is_named_with_those_it_has() {
    let device = Device::start("right-pw", common::free_port().port());
    let config = camera(&format!(
        "url = \"{}\"\nuser = \"admin\"\npassword = \"right-pw\"\nprofile = \"Profile_9\"",
        device.url()
    ));
    let e = skynet_ingest::onvif::resolve_stream_uri(&config).unwrap_err();
    assert_eq!(
        e,
        OnvifError::NoSuchProfile {
            token: "Profile_9".into(),
            known: "Profile_1, Profile_2".into()
        }
    );
    assert!(e.to_string().contains("no profile `Profile_9`"), "{e}");
}
