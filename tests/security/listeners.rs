//! Attacks on the listeners themselves (issue 22, parts 1, 3 and 6): a slow client
//! (slowloris), an idle kept-alive connection, more connections than the cap, a live-stream
//! flood, a DNS-rebinding `Host`, an anonymous scrape of `/metrics`; and TLS served
//! in-process. Each test also checks that the legitimate use beside the attack is served.
//! Timeouts are configured short (1 s); the tests wait for the server's answer or for the
//! socket to close, under a generous guard, and never assert on a fixed sleep.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use skynet_core::Health;
use skynet_serve::console::{ApiConfig, Console, ConsoleStore, Role, TokenKind, User};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most any wait below may take before the test fails (a loaded CI machine).
const GUARD: Duration = Duration::from_secs(30);

struct Served {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    tokens: Vec<String>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A console on 127.0.0.1:0 with `config`, and one operator per name in `users` (their API
/// tokens in `tokens`, in order).
async fn serve(config: ApiConfig, users: &[&str], tls: Option<skynet_serve::Tls>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite");
    let console = Arc::new(Console::open(config, &db, None, Health::new(), None).unwrap());
    let store = ConsoleStore::open(&db).unwrap();
    let mut tokens = Vec::new();
    for name in users {
        let user = User {
            name: (*name).into(),
            role: Role::Operator,
            department: None,
            owner: None,
        };
        store
            .put_user(&user, "a long and unguessable passphrase 7f3k")
            .unwrap();
        tokens.push(
            store
                .issue_token(name, TokenKind::Api, Some("test"), None)
                .unwrap(),
        );
    }
    let listener = skynet_serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.await;
        };
        skynet_serve::serve_console(listener, console, tls, shutdown)
            .await
            .unwrap();
    });
    Served {
        _dir: dir,
        addr,
        tokens,
        _stop: stop,
    }
}

fn local() -> ApiConfig {
    ApiConfig::local("127.0.0.1:0".parse().unwrap())
}

/// A response as read off the socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response with a `Content-Length` body; `None` when the socket closes first.
async fn read_answer(stream: &mut TcpStream) -> Option<Answer> {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(&bytes, b"\r\n\r\n") {
            break end;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = bytes[end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).to_string(),
    })
}

async fn get(stream: &mut TcpStream, host: &str, path: &str, extra: &str) -> Option<Answer> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    read_answer(stream).await
}

/// A login POST of `body` on a new connection, and its answer (within the guard).
async fn post_login(addr: SocketAddr, body: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /api/v1/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(GUARD, read_answer(&mut stream))
        .await
        .unwrap()
        .unwrap()
}

/// One request on a new connection.
async fn get_once(addr: SocketAddr, host: &str, path: &str, extra: &str) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(GUARD, get(&mut stream, host, path, extra))
        .await
        .expect("an answer in time")
        .expect("an answer")
}

/// Waits until the server closes `stream` (a read returns 0 or fails); false when it is
/// still open after [`GUARD`].
async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_half_a_header_is_dropped_while_a_normal_client_is_served() {
    let config = ApiConfig {
        header_timeout: Duration::from_secs(1),
        ..local()
    };
    let served = serve(config, &[], None).await;
    let host = served.addr.to_string();
    let mut slow = TcpStream::connect(served.addr).await.unwrap();
    slow.write_all(
        format!("GET /api/v1/openapi.json HTTP/1.1\r\nHost: {host}\r\nX-Slow: ").as_bytes(),
    )
    .await
    .unwrap();
    // A normal client beside it is answered at once.
    let normal = get_once(served.addr, &host, "/api/v1/openapi.json", "").await;
    assert_eq!(normal.status, 200);
    assert!(
        closed_by_server(&mut slow, GUARD).await,
        "a client that stops halfway through its header must be dropped"
    );
    // A client that connects and sends nothing at all is dropped too.
    let mut silent = TcpStream::connect(served.addr).await.unwrap();
    assert!(closed_by_server(&mut silent, GUARD).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_cut_off_while_a_whole_one_is_read() {
    let config = ApiConfig {
        header_timeout: Duration::from_secs(1),
        ..local()
    };
    let served = serve(config, &["op"], None).await;
    let host = served.addr.to_string();
    // The whole head, then 10 of the 100 bytes the body announces, then silence.
    let mut slow = TcpStream::connect(served.addr).await.unwrap();
    slow.write_all(
        format!(
            "POST /api/v1/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"username\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // It is answered with an error (the body failed) and closed, or closed at once.
    let cut = tokio::time::timeout(GUARD, async {
        if let Some(answer) = read_answer(&mut slow).await {
            assert_eq!(answer.status, 400, "{}", answer.body);
        }
        closed_by_server(&mut slow, GUARD).await
    })
    .await;
    assert_eq!(cut, Ok(true), "a slow body must not hold the connection");
    // A whole body beside it is read.
    let body = r#"{"username": "op", "password": "a long and unguessable passphrase 7f3k"}"#;
    let answer = post_login(served.addr, body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_dropped_and_one_in_use_is_kept() {
    // The header timeout is far beyond the guard: a close within it is the idle timer's.
    let config = ApiConfig {
        header_timeout: Duration::from_secs(120),
        connection_idle: Duration::from_secs(1),
        ..local()
    };
    let served = serve(config, &[], None).await;
    let host = served.addr.to_string();
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    // Requests in a row on one kept-alive connection are all served.
    for _ in 0..3 {
        let answer =
            tokio::time::timeout(GUARD, get(&mut stream, &host, "/api/v1/openapi.json", ""))
                .await
                .unwrap()
                .expect("the kept-alive connection serves the next request");
        assert_eq!(answer.status, 200);
    }
    // Then silence: the server closes it.
    assert!(
        closed_by_server(&mut stream, Duration::from_secs(60)).await,
        "an idle kept-alive connection must be closed after connection_idle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_and_are_served_when_one_closes() {
    let config = ApiConfig {
        max_connections: 2,
        header_timeout: Duration::from_secs(120),
        connection_idle: Duration::from_secs(120),
        ..local()
    };
    let served = serve(config, &[], None).await;
    let host = served.addr.to_string();
    // Two connections held open, each after one answered request (so both are accepted).
    let mut first = TcpStream::connect(served.addr).await.unwrap();
    let mut second = TcpStream::connect(served.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        let answer = tokio::time::timeout(GUARD, get(stream, &host, "/api/v1/openapi.json", ""))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer.status, 200);
    }
    // The third is left in the backlog: its request is not answered while both are open.
    let mut third = TcpStream::connect(served.addr).await.unwrap();
    third
        .write_all(format!("GET /api/v1/openapi.json HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), read_answer(&mut third)).await;
    assert!(
        early.is_err(),
        "the third connection was served past the cap"
    );
    // One closes: the third is accepted and answered.
    drop(first);
    let answer = tokio::time::timeout(GUARD, read_answer(&mut third))
        .await
        .expect("served once a connection closed")
        .expect("an answer");
    assert_eq!(answer.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_past_its_connection_cap_is_closed_and_another_client_is_served() {
    // Long timeouts: the held connections must stay open while the test runs.
    let config = ApiConfig {
        header_timeout: Duration::from_secs(120),
        connection_idle: Duration::from_secs(120),
        ..local()
    };
    assert_eq!(config.max_connections_per_client, 64, "the default");
    let served = serve(config, &[], None).await;
    let host = served.addr.to_string();
    // 64 half-headers from 127.0.0.1: each is accepted and held.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut stream = TcpStream::connect(served.addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
            .await
            .unwrap();
        held.push(stream);
    }
    // The 65th from the same address is closed at once, unanswered.
    let mut past = TcpStream::connect(served.addr).await.unwrap();
    let _ = past
        .write_all(format!("GET /api/v1/openapi.json HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(GUARD, past.read_to_end(&mut answer))
        .await
        .expect("the 65th connection is closed");
    assert!(
        read.is_err() || answer.is_empty(),
        "the 65th connection was served: {}",
        String::from_utf8_lossy(&answer)
    );
    // Another client (127.0.0.2, another loopback address) is served meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(served.addr).await.unwrap();
    let answer = tokio::time::timeout(GUARD, get(&mut other, &host, "/api/v1/openapi.json", ""))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(answer.status, 200);
    // Once one of its connections closes, the first client is served again.
    drop(held.pop());
    let answer = tokio::time::timeout(GUARD, async {
        loop {
            let mut stream = TcpStream::connect(served.addr).await.unwrap();
            if let Some(answer) = get(&mut stream, &host, "/api/v1/openapi.json", "").await {
                return answer;
            }
            // The server may not have seen the close yet: try again.
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("served again once a connection closed");
    assert_eq!(answer.status, 200);
}

/// Opens a live stream; `Ok` once its `hello` arrived, `Err` with the answer when refused.
async fn open_stream(addr: SocketAddr, token: &str) -> Result<TcpStream, Answer> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(GUARD, async {
        loop {
            if let Some(end) = find(&bytes, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&bytes[..end]).to_string();
                if !head.starts_with("HTTP/1.1 200") {
                    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                    return Err(Answer {
                        status,
                        head,
                        body: String::new(),
                    });
                }
                if find(&bytes, b"event: hello").is_some() {
                    return Ok(());
                }
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the stream closed before its hello");
            bytes.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the stream answered in time")
    .map(|()| stream)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_stream_flood_is_capped_per_user_and_another_user_is_unaffected() {
    let served = serve(local(), &["flood", "other"], None).await;
    let (flood, other) = (&served.tokens[0], &served.tokens[1]);
    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(
            open_stream(served.addr, flood)
                .await
                .expect("within the cap"),
        );
    }
    let refused = open_stream(served.addr, flood)
        .await
        .expect_err("the 11th stream of one user is refused");
    assert_eq!(refused.status, 429);
    assert!(
        header(&refused.head, "retry-after").is_some_and(|v| v.parse::<u64>().is_ok()),
        "a refused stream says when to retry: {}",
        refused.head
    );
    // Another user's stream is not affected.
    let _theirs = open_stream(served.addr, other)
        .await
        .expect("another user still gets a stream");
    // A closed tab frees its slot (once the server sees the connection end).
    drop(open.pop());
    let again = tokio::time::timeout(GUARD, async {
        loop {
            if let Ok(stream) = open_stream(served.addr, flood).await {
                return stream;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a closed stream's slot is freed");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_capped_in_total() {
    let config = ApiConfig {
        max_streams: 3,
        ..local()
    };
    let served = serve(config, &["a", "b"], None).await;
    let _a1 = open_stream(served.addr, &served.tokens[0]).await.unwrap();
    let _a2 = open_stream(served.addr, &served.tokens[0]).await.unwrap();
    let _b1 = open_stream(served.addr, &served.tokens[1]).await.unwrap();
    let refused = open_stream(served.addr, &served.tokens[1])
        .await
        .expect_err("past max_streams");
    assert_eq!(refused.status, 429);
    assert!(header(&refused.head, "retry-after").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_not_in_the_allow_list_gets_421_and_a_listed_one_200() {
    let served = serve(local(), &["op"], None).await;
    let listed = served.addr.to_string();
    let bearer = format!("Authorization: Bearer {}\r\n", served.tokens[0]);
    for path in ["/api/v1/me", "/", "/api/v1/openapi.json"] {
        let evil = get_once(served.addr, "rebind.evil.example", path, &bearer).await;
        assert_eq!(evil.status, 421, "{path}: {}", evil.body);
        let body: serde_json::Value = serde_json::from_str(&evil.body).unwrap();
        assert_eq!(body["error"], "misdirected");
        let evil_port = get_once(
            served.addr,
            &format!("rebind.evil.example:{}", served.addr.port()),
            path,
            &bearer,
        )
        .await;
        assert_eq!(evil_port.status, 421);
        let good = get_once(served.addr, &listed, path, &bearer).await;
        assert_eq!(good.status, 200, "{path}");
        let good = get_once(
            served.addr,
            &format!("LOCALHOST:{}", served.addr.port()),
            path,
            &bearer,
        )
        .await;
        assert_eq!(good.status, 200, "{path}: the Host is compared lower-case");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_auth_token_and_healthz_stays_open() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let health = Health::new();
    health.register("stage", "stage").up();
    let listener = skynet_serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(skynet_serve::serve(
        listener,
        handle,
        health,
        Some("scrape-7c1e".into()),
        async move {
            let _ = stopped.await;
        },
    ));
    let host = addr.to_string();
    for path in ["/metrics", "/readyz"] {
        assert_eq!(get_once(addr, &host, path, "").await.status, 401, "{path}");
        let wrong = get_once(addr, &host, path, "Authorization: Bearer scrape-7c1f\r\n").await;
        assert_eq!(wrong.status, 401, "{path}");
        let right = get_once(addr, &host, path, "Authorization: Bearer scrape-7c1e\r\n").await;
        assert_eq!(right.status, 200, "{path}");
    }
    assert_eq!(get_once(addr, &host, "/healthz", "").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_metrics_listener_refuses_a_foreign_host() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let health = Health::new();
    health.register("stage", "stage").up();
    let listener = skynet_serve::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(skynet_serve::serve(
        listener,
        handle,
        health,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let local = format!("localhost:{}", addr.port());
    for path in ["/metrics", "/readyz", "/healthz"] {
        // A DNS-rebinding page names its own host.
        let evil = get_once(addr, &format!("evil.example:{}", addr.port()), path, "").await;
        assert_eq!(evil.status, 421, "{path}");
        assert_eq!(get_once(addr, &local, path, "").await.status, 200, "{path}");
        assert_eq!(
            get_once(addr, &addr.to_string(), path, "").await.status,
            200,
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_a_client_that_trusts_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();

    // Bad files stop the start with an error that names the file.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let error = skynet_serve::Tls::load(&garbage, &key)
        .unwrap_err()
        .to_string();
    assert!(error.contains("garbage.pem"), "{error}");
    let error = skynet_serve::Tls::load(&cert, &garbage)
        .unwrap_err()
        .to_string();
    assert!(error.contains("garbage.pem"), "{error}");

    let tls = skynet_serve::Tls::load(&cert, &key).unwrap();
    let served = serve(local(), &["op"], Some(tls)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(client_tls)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/api/v1/me", served.addr.port());
    let response = client
        .get(&url)
        .bearer_auth(&served.tokens[0])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let me: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(me["name"], "op");
    // Plain HTTP on the TLS port gets no answer.
    let mut plain = TcpStream::connect(served.addr).await.unwrap();
    let answer = tokio::time::timeout(
        GUARD,
        get(&mut plain, &served.addr.to_string(), "/api/v1/me", ""),
    )
    .await
    .unwrap();
    assert!(answer.is_none(), "plain HTTP was answered on the TLS port");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_route_limit_gets_413_and_a_normal_one_is_read() {
    let served = serve(local(), &["op"], None).await;
    let padded = format!(
        r#"{{"username": "op", "password": "{}"}}"#,
        "x".repeat(20 * 1024)
    );
    let answer = post_login(served.addr, &padded).await;
    assert_eq!(answer.status, 413, "{}", answer.body);
    let normal = r#"{"username": "op", "password": "a long and unguessable passphrase 7f3k"}"#;
    let answer = post_login(served.addr, normal).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}
