//! Password guessing: behind a proxy, at one account from many addresses, and with weak
//! passwords. Guessing is slowed (429 with `Retry-After`) without locking out the people
//! beside the guesser, nor the owner of the account guessed at, from a browser that logged
//! in before (its device cookie).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER, SET_COOKIE};
use serde_json::{Value, json};
use skynet_core::Health;
use skynet_serve::console::auth::{ACCOUNT, ADDRESS};
use skynet_serve::console::{ApiConfig, Console, ConsoleStore, Role, User};

use crate::fixture;

pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// The console served on a loopback port (so every request has a TCP peer: 127.0.0.1),
/// with users `op` (operator) and `adm` (admin).
pub(crate) struct Served {
    _dir: tempfile::TempDir,
    pub db: PathBuf,
    _console: Arc<Console>,
    addr: SocketAddr,
    http: reqwest::Client,
}

pub(crate) struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Answer {
    /// The value of the cookie `name` this answer sets.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookie(name)
            .and_then(|line| line.split(';').next().map(str::to_string))
            .and_then(|pair| pair.split_once('=').map(|(_, v)| v.to_string()))
    }

    /// The whole `Set-Cookie` line for `name`.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|line| line.starts_with(&format!("{name}=")))
            .map(str::to_string)
    }
}

pub(crate) async fn serve(configure: impl FnOnce(&mut ApiConfig)) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.sqlite");
    let mut config = ApiConfig::local("127.0.0.1:0".parse().unwrap());
    configure(&mut config);
    let console = Arc::new(Console::open(config, &db, None, Health::new(), None).unwrap());
    let store = ConsoleStore::open(&db).unwrap();
    fixture::put_users(
        &store,
        &[
            ("op", Role::Operator, None, None),
            ("adm", Role::Admin, None, None),
        ],
        PASSWORD,
    );
    let addr = fixture::serve(Arc::clone(&console));
    Served {
        _dir: dir,
        db,
        _console: console,
        addr,
        http: {
            // reqwest is built without a TLS provider of its own; these requests are plain
            // HTTP, but the client wants one all the same. Another test may have installed it.
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::new()
        },
    }
}

impl Served {
    pub fn store(&self) -> ConsoleStore {
        ConsoleStore::open(&self.db).unwrap()
    }

    /// A request with these extra headers (`Cookie`, `X-Forwarded-For`, `Authorization`).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("http://{}{path}", self.addr));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.unwrap();
        Answer {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            headers,
        }
    }

    /// Logs in as `name`, from `client` (an `X-Forwarded-For`), with a device cookie.
    pub async fn login(
        &self,
        name: &str,
        password: &str,
        client: Option<&str>,
        device: Option<&str>,
    ) -> Answer {
        let mut headers = Vec::new();
        if let Some(client) = client {
            headers.push(("x-forwarded-for", client.to_string()));
        }
        if let Some(device) = device {
            headers.push(("cookie", format!("skynet_device={device}")));
        }
        self.call(
            reqwest::Method::POST,
            "/api/v1/login",
            &headers,
            Some(json!({"username": name, "password": password})),
        )
        .await
    }

    /// Opens the live stream with a bearer token.
    pub async fn events(&self, token: &str) -> reqwest::Response {
        self.http
            .get(format!("http://{}/api/v1/events", self.addr))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap()
    }

    /// `GET /api/v1/me` with a bearer token.
    pub async fn me(&self, token: &str) -> StatusCode {
        self.call(
            reqwest::Method::GET,
            "/api/v1/me",
            &[("authorization", format!("Bearer {token}"))],
            None,
        )
        .await
        .status
    }
}

/// An address's free failures spent: `ADDRESS.free` wrong passwords, each for another name
/// (`nobody<n>`) and named as from `client(n)` in `X-Forwarded-For`, every one refused (401).
async fn guess_names(served: &Served, client: impl Fn(u32) -> String) {
    for n in 0..ADDRESS.free {
        let answer = served
            .login(
                &format!("nobody{n}"),
                "not the password",
                Some(&client(n)),
                None,
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
}

fn assert_slowed(answer: &Answer) {
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.body
    );
    assert_eq!(answer.body["error"], "rate_limited");
    let wait: u64 = answer.headers[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(wait >= 1, "Retry-After {wait}");
}

#[tokio::test]
async fn guessing_behind_a_proxy_slows_the_guesser_and_no_one_else() {
    // The proxy is the loopback address every test request comes from.
    let served =
        serve(|config| config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    // 30 failed logins from 30 clients behind the proxy, at the admin's account.
    for n in 0..30 {
        let answer = served
            .login(
                "adm",
                "not the password",
                Some(&format!("198.51.100.{n}")),
                None,
            )
            .await;
        assert!(
            [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&answer.status),
            "{}",
            answer.body
        );
    }
    // Another client behind the same proxy logs in as itself at once.
    let answer = served
        .login("op", PASSWORD, Some("203.0.113.7"), None)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    // One client that keeps guessing is slowed, by its own address, whatever the names.
    guess_names(&served, |_| "198.51.100.200".into()).await;
    assert_slowed(
        &served
            .login("op", PASSWORD, Some("198.51.100.200"), None)
            .await,
    );
    // ... while its neighbour does not notice.
    let answer = served
        .login("op", PASSWORD, Some("198.51.100.201"), None)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    // A client cannot pose as another by writing the header itself: the proxy appends the
    // address it saw, and only the nearest untrusted hop counts.
    let answer = served
        .login("op", PASSWORD, Some("203.0.113.9, 198.51.100.200"), None)
        .await;
    assert_slowed(&answer);
}

#[tokio::test]
async fn without_trusted_proxies_a_forwarded_for_header_is_ignored() {
    let served = serve(|_| {}).await;
    // A guesser rotating X-Forwarded-For is still the one peer, and is slowed as one.
    guess_names(&served, |n| format!("198.51.100.{n}")).await;
    assert_slowed(
        &served
            .login("op", PASSWORD, Some("203.0.113.77"), None)
            .await,
    );
}

#[tokio::test]
async fn guessing_one_account_from_many_addresses_slows_it_but_not_its_owners_browser() {
    let served =
        serve(|config| config.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]).await;
    // The owner logged in from their browser before: it holds a device cookie.
    let first = served.login("op", PASSWORD, Some("192.0.2.10"), None).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let device = first
        .cookie("skynet_device")
        .expect("a device cookie at login");
    let line = first.set_cookie("skynet_device").unwrap();
    assert!(
        line.contains("HttpOnly") && line.contains("SameSite=Strict"),
        "{line}"
    );
    // Many addresses, a few guesses each: the account is slowed once its free failures are
    // spent, so 429s appear even for addresses that never failed before.
    let mut slowed = 0;
    for n in 0..(ACCOUNT.free * 2) {
        let answer = served
            .login(
                "op",
                "not the password",
                Some(&format!("198.51.100.{n}")),
                None,
            )
            .await;
        match answer.status {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::TOO_MANY_REQUESTS => {
                assert_slowed(&answer);
                slowed += 1;
            }
            other => panic!("{other}: {}", answer.body),
        }
    }
    assert!(slowed >= ACCOUNT.free, "only {slowed} guesses slowed");
    // A new browser, even with the right password, waits too (it cannot be told apart).
    assert_slowed(&served.login("op", PASSWORD, Some("192.0.2.11"), None).await);
    // Nor do a forged device cookie, or one of another user, get past.
    let forged = format!("op|{}|{}", "0".repeat(32), "0".repeat(64));
    assert_slowed(
        &served
            .login("op", PASSWORD, Some("192.0.2.11"), Some(&forged))
            .await,
    );
    let other = served
        .login("adm", PASSWORD, Some("192.0.2.12"), None)
        .await;
    let adm_device = other.cookie("skynet_device").unwrap();
    assert_slowed(
        &served
            .login("op", PASSWORD, Some("192.0.2.11"), Some(&adm_device))
            .await,
    );
    // The owner's browser logs in, from wherever it is now, and is handed a fresh cookie.
    let again = served
        .login("op", PASSWORD, Some("192.0.2.99"), Some(&device))
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.body);
    let fresh = again.cookie("skynet_device").unwrap();
    assert_ne!(fresh, device);
    // Someone holding the owner's device cookie but guessing is limited by that device.
    for _ in 0..skynet_serve::console::auth::DEVICE.free {
        let answer = served
            .login("op", "not the password", Some("192.0.2.99"), Some(&fresh))
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }
    assert_slowed(
        &served
            .login("op", PASSWORD, Some("192.0.2.99"), Some(&fresh))
            .await,
    );
}

#[tokio::test]
async fn cookies_are_secure_when_the_config_says_so() {
    // Loopback without TLS: a plain-HTTP developer setup, so not Secure.
    let served = serve(|_| {}).await;
    let answer = served.login("op", PASSWORD, None, None).await;
    assert!(
        !answer
            .set_cookie("skynet_session")
            .unwrap()
            .contains("Secure")
    );
    assert!(
        !answer
            .set_cookie("skynet_device")
            .unwrap()
            .contains("Secure")
    );
    let served = serve(|config| config.secure_cookie = true).await;
    let answer = served.login("op", PASSWORD, None, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    for name in ["skynet_session", "skynet_device"] {
        assert!(
            answer.set_cookie(name).unwrap().contains("; Secure"),
            "{name}"
        );
    }
}

#[tokio::test]
async fn short_and_common_passwords_are_refused_and_a_good_one_accepted() {
    let served = serve(|_| {}).await;
    let admin = served.login("adm", PASSWORD, None, None).await;
    let token = admin.body["token"].as_str().unwrap().to_string();
    let add = |password: &'static str| {
        let token = token.clone();
        let served = &served;
        async move {
            served
                .call(
                    reqwest::Method::POST,
                    "/api/v1/users",
                    &[("authorization", format!("Bearer {token}"))],
                    Some(json!({"name": "new-op", "role": "operator", "password": password})),
                )
                .await
        }
    };
    let short = add("elevenchars").await;
    assert_eq!(short.status, StatusCode::BAD_REQUEST);
    assert!(
        short.body["message"]
            .as_str()
            .unwrap()
            .contains("at least 12"),
        "{}",
        short.body
    );
    for common in ["1qaz2wsx3edc", "QWERTY123456", "administrator"] {
        let answer = add(common).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{common}");
        let message = answer.body["message"].as_str().unwrap();
        assert!(message.contains("common passwords"), "{message}");
        assert!(
            !message.to_lowercase().contains(&common.to_lowercase()),
            "the message repeats the password"
        );
    }
    let good = add("a lantern over the harbour").await;
    assert_eq!(good.status, StatusCode::CREATED, "{}", good.body);
    assert_eq!(
        served
            .login("new-op", "a lantern over the harbour", None, None)
            .await
            .status,
        StatusCode::OK
    );
    // The store refuses the same for the CLI (`skynet users add` goes through it).
    let user = User {
        name: "cli-op".into(),
        role: Role::Operator,
        department: None,
        owner: None,
    };
    assert!(served.store().put_user(&user, "password1234").is_err());
    assert!(
        served
            .store()
            .put_user(&user, "a lantern over the harbour")
            .is_ok()
    );
}

#[tokio::test]
async fn an_unknown_role_refuses_login_and_its_tokens() {
    let served = serve(|_| {}).await;
    let token = served
        .store()
        .issue_token("op", skynet_serve::console::TokenKind::Api, None, None)
        .unwrap();
    assert_eq!(served.me(&token).await, StatusCode::OK);
    let db = rusqlite::Connection::open(&served.db).unwrap();
    db.execute(
        "UPDATE console_users SET role = 'root' WHERE name = 'op'",
        [],
    )
    .unwrap();
    // Neither a login nor a token: the role is not guessed.
    let answer = served.login("op", PASSWORD, None, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    assert_eq!(served.me(&token).await, StatusCode::UNAUTHORIZED);
    // The other users, with known roles, go on.
    assert_eq!(
        served.login("adm", PASSWORD, None, None).await.status,
        StatusCode::OK
    );
}
