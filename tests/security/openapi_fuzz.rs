//! Attack: a fuzzer over the OpenAPI document (what schemathesis does, in-process, since
//! the offline test run cannot install Python packages). For every path and method that
//! `openapi.json` names, many generated requests (bodies valid by the schema and bodies
//! that are not, random JSON, wrong types, huge and odd strings, missing fields, path
//! parameters such as `..%2f`, percent-encoded junk, query junk, other methods), sent as
//! anonymous, with a forged token and as every role, through the console's router. No
//! answer may be a 5xx, and every error must carry the JSON error shape
//! `{"error": code, "message": text}`.
//!
//! The generator is seeded: a failure prints the seed, and `SKYNET_FUZZ_SEED=<seed>`
//! replays the same requests. The number of cases is fixed, so the run takes seconds.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use skynet_core::{Incident, OwnerKind, RiskEvent};
use skynet_serve::console::{ApiConfig, ConsoleStore, Role};
use tower::ServiceExt;

use crate::fixture;

const OPENAPI: &str = include_str!("../../crates/skynet-serve/src/console/openapi.json");
/// Not on a common-password list, and longer than the minimum.
const PASSWORD: &str = "correct horse battery staple 7";
/// Requests per operation (path and method).
const CASES: usize = 120;
/// Requests with another method than the document names, per path.
const METHOD_CASES: usize = 8;
const DEFAULT_SEED: u64 = 0x5eed_2200;

fn incident(id: &str, department: &str, owner: &str) -> Incident {
    serde_json::from_value(json!({
        "id": id, "revision": 1, "status": "opened", "state": "open", "change": "opened",
        "category": "gas_leak", "level": "II", "level_colour": "orange", "risk_score": 0.7,
        "confidence": 0.9, "grid": "G-0201", "department": department,
        "deadlines": {"dispatch_by": "2026-11-27T12:00:00Z"},
        "sensor": "gas-07", "owner": owner,
        "first_seen": "2026-11-27T10:00:00Z", "last_seen": "2026-11-27T10:00:00Z",
        "observations": 3, "contributions": [], "detections": [],
        "rule": {"name": "gas-high", "kind": "threshold"}
    }))
    .expect("a valid incident")
}

/// Who sends a request.
#[derive(Clone, Debug)]
enum Caller {
    Anonymous,
    Forged(String),
    Role(Role, String),
}

struct Target {
    _dir: tempfile::TempDir,
    app: Router,
    callers: Vec<Caller>,
}

async fn target() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/outbox.sqlite");
    for (id, department, owner) in [
        ("inc-gas", "emergency", "safety_production"),
        ("inc-street", "streets", "city_management"),
    ] {
        fixture::commit(&db, &[RiskEvent::Incident(incident(id, department, owner))]);
    }
    let console = fixture::console(
        dir.path(),
        &db,
        fixture::Seed {
            config: ApiConfig {
                session_ttl: Duration::from_secs(3600),
                ..ApiConfig::local("127.0.0.1:8080".parse().unwrap())
            },
            evidence: &[("inc-gas", b"\xff\xd8jpeg")],
            camera_owner: OwnerKind::SafetyProduction,
        },
    );
    // A risk stage that takes every change (and commits nothing): status changes reach
    // the end of their handler instead of answering "no pipeline".
    console.connect_status(Box::new(|_| Ok(())));
    let console = Arc::new(console);
    let store = ConsoleStore::open(&db).unwrap();
    let users: [fixture::UserSpec; 4] = [
        ("fz-operator", Role::Operator, None, None),
        (
            "fz-inspector",
            Role::Inspector,
            Some("emergency"),
            Some("safety_production"),
        ),
        ("fz-engineer", Role::Engineer, None, None),
        ("fz-admin", Role::Admin, None, None),
    ];
    fixture::put_users(&store, &users, PASSWORD);
    let app = skynet_serve::console::console_router(Arc::clone(&console));
    let mut callers = vec![
        Caller::Anonymous,
        Caller::Forged("skt_0000000000000000000000000000000000000000".into()),
    ];
    for (name, role, ..) in users {
        let request = base(Method::POST, "/api/v1/login")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                json!({"username": name, "password": PASSWORD}).to_string(),
            ))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "login of {name}");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        let token = body["token"].as_str().expect("a token").to_string();
        callers.push(Caller::Role(role, token));
    }
    Target {
        _dir: dir,
        app,
        callers,
    }
}

/// A request with what every real one carries: a `Host` the console answers for.
fn base(method: Method, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "localhost")
}

/// One path and method of the document.
struct Operation {
    method: Method,
    path: String,
    /// Query parameters: name and schema.
    query: Vec<(String, Value)>,
    body: Option<Value>,
    documented: Vec<u16>,
}

fn operations(document: &Value) -> Vec<Operation> {
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else {
                continue;
            };
            if !op.is_object() {
                continue;
            }
            let query = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_string(),
                        p["schema"].clone(),
                    )
                })
                .collect();
            let body = op["requestBody"]["content"]["application/json"]["schema"].clone();
            let documented = op["responses"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(code, _)| code.parse().ok())
                .collect();
            operations.push(Operation {
                method,
                path: path.clone(),
                query,
                body: (!body.is_null()).then_some(body),
                documented,
            });
        }
    }
    operations
}

/// The generator: schema-shaped values, near misses and junk.
struct Gen {
    rng: fastrand::Rng,
}

/// Strings that have broken parsers before.
const NASTY: &[&str] = &[
    "",
    " ",
    "..",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f",
    "%00",
    "a\u{0}b",
    "\u{1b}[2J\u{7}",
    "\r\nSet-Cookie: x=1",
    "'; DROP TABLE console_users; --",
    "\" OR 1=1 --",
    "<script>alert(1)</script>",
    "中文字符",
    "🔥💥🚒",
    "\u{202e}txt.exe",
    "\u{feff}",
    "null",
    "-1",
    "1e309",
    "NaN",
    "true",
    "G-0201",
    "inc-gas",
    "cam-1",
    "1.jpg",
    ".jpg",
    "%",
    "%zz",
    "%ff%fe",
    "%c0%af",
    "\u{fffd}",
];

impl Gen {
    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(0..100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.usize(0..items.len())]
    }

    /// A string: ordinary, nasty, unicode, or huge.
    fn string(&mut self) -> String {
        match self.rng.u32(0..10) {
            0..=3 => {
                let len = self.rng.usize(0..24);
                (0..len).map(|_| self.rng.alphanumeric()).collect()
            }
            4..=6 => self.pick(NASTY).to_string(),
            7 => {
                let len = self.rng.usize(1..40);
                (0..len)
                    .map(|_| char::from_u32(self.rng.u32(1..0x3_0000)).unwrap_or('?'))
                    .collect()
            }
            8 => "x".repeat(self.rng.usize(4_000..70_000)),
            _ => {
                let len = self.rng.usize(1..16);
                (0..len).map(|_| char::from(self.rng.u8(0..128))).collect()
            }
        }
    }

    /// Any JSON value, nested up to `depth`.
    fn any_json(&mut self, depth: u32) -> Value {
        match self.rng.u32(0..if depth == 0 { 5 } else { 7 }) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.bool()),
            2 => json!(self.rng.i64(..)),
            3 => json!(self.rng.f64() * 1e12 - 5e11),
            4 => Value::String(self.string()),
            5 => Value::Array(
                (0..self.rng.usize(0..4))
                    .map(|_| self.any_json(depth - 1))
                    .collect(),
            ),
            _ => Value::Object(
                (0..self.rng.usize(0..4))
                    .map(|_| (self.string(), self.any_json(depth - 1)))
                    .collect(),
            ),
        }
    }

    /// A value the schema accepts, mostly.
    fn schema_value(&mut self, schema: &Value) -> Value {
        if let Some(choices) = schema["enum"].as_array()
            && !choices.is_empty()
        {
            return self.pick(choices).clone();
        }
        match schema["type"].as_str() {
            Some("object") => {
                let mut object = serde_json::Map::new();
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                for (name, property) in schema["properties"].as_object().into_iter().flatten() {
                    if required.contains(&name.as_str()) || self.chance(60) {
                        object.insert(name.clone(), self.schema_value(property));
                    }
                }
                if schema["additionalProperties"].is_object() {
                    for _ in 0..self.rng.usize(0..4) {
                        let key = if self.chance(50) {
                            self.pick(&["person", "car", "truck", "fire"]).to_string()
                        } else {
                            self.string()
                        };
                        let value = self.schema_value(&schema["additionalProperties"]);
                        object.insert(key, value);
                    }
                }
                Value::Object(object)
            }
            Some("string") => {
                let max = schema["maxLength"].as_u64().unwrap_or(64) as usize;
                let min = schema["minLength"].as_u64().unwrap_or(0) as usize;
                if schema["format"] == "password" || min >= 8 {
                    return Value::String(if self.chance(50) {
                        PASSWORD.to_string()
                    } else {
                        self.string()
                    });
                }
                if schema["format"] == "date-time" {
                    return Value::String(chrono::Utc::now().to_rfc3339());
                }
                let mut text = self.string();
                if self.chance(70) {
                    text = text.chars().take(max.max(min)).collect();
                }
                if text.chars().count() < min {
                    text.push_str(&"a".repeat(min));
                }
                Value::String(text)
            }
            Some("number") => {
                let low = schema["minimum"].as_f64().unwrap_or(-1e6);
                let high = schema["maximum"].as_f64().unwrap_or(1e6);
                json!(low + self.rng.f64() * (high - low))
            }
            Some("integer") => {
                let low = schema["minimum"].as_i64().unwrap_or(-1_000_000);
                let high = schema["maximum"].as_i64().unwrap_or(1_000_000);
                json!(self.rng.i64(low..=high))
            }
            Some("boolean") => Value::Bool(self.rng.bool()),
            Some("array") => Value::Array(
                (0..self.rng.usize(0..3))
                    .map(|_| self.schema_value(&schema["items"]))
                    .collect(),
            ),
            _ => self.any_json(2),
        }
    }

    /// A body for a schema: valid, a near miss (a field missing, of the wrong type, one
    /// too many), or junk (random JSON, not JSON, not UTF-8, deeply nested, huge).
    fn body(&mut self, schema: Option<&Value>) -> Vec<u8> {
        let schema = schema.cloned().unwrap_or(json!({"type": "object"}));
        let mut value = self.schema_value(&schema);
        match self.rng.u32(0..16) {
            0..=5 => {}
            6 => {
                if let Some(object) = value.as_object_mut()
                    && let Some(key) = object.keys().next().cloned()
                {
                    object.remove(&key);
                }
            }
            7 => {
                if let Some(object) = value.as_object_mut() {
                    let keys: Vec<String> = object.keys().cloned().collect();
                    if !keys.is_empty() {
                        let key = self.pick(&keys).clone();
                        let wrong = self.any_json(2);
                        object.insert(key, wrong);
                    }
                }
            }
            8 => {
                if let Some(object) = value.as_object_mut() {
                    let key = self.string();
                    let extra = self.any_json(2);
                    object.insert(key, extra);
                }
            }
            9 => value = self.any_json(3),
            10 => return b"{\"status\": \"acknowledged\", ".to_vec(),
            11 => return vec![0xff, 0xfe, b'{', 0x80, b'}'],
            12 => {
                let depth = self.rng.usize(100..5_000);
                return format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
            }
            13 => {
                // Larger than any route takes.
                return json!({"text": "x".repeat(3 << 20), "note": "y"})
                    .to_string()
                    .into_bytes();
            }
            14 => return Vec::new(),
            _ => {
                let text = self.string();
                value = json!({"text": text, "note": text, "status": text, "name": text,
                    "username": text, "password": text, "role": text, "assignee": text});
            }
        }
        value.to_string().into_bytes()
    }

    /// A path parameter, percent-encoded where it has to be.
    fn path_parameter(&mut self, name: &str) -> String {
        let known: &[&str] = match name {
            "id" => &["inc-gas", "inc-street", "G-0201", "cam-1", "nope"],
            "incident" => &["inc-gas", "inc-street", "..", "nope"],
            "file" => &["1.jpg", "2.jpg", "..%2f..%2foutbox.sqlite", "%2e%2e"],
            _ => &["x"],
        };
        match self.rng.u32(0..10) {
            0..=3 => self.pick(known).to_string(),
            4..=5 => {
                // Raw junk, kept when the URI still parses.
                let raw = self.pick(NASTY).to_string();
                if raw
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b'?' && b != b'#')
                {
                    raw
                } else {
                    encode(&raw)
                }
            }
            _ => encode(&self.string()),
        }
    }

    /// A query string for the declared parameters, with junk around them.
    fn query(&mut self, params: &[(String, Value)]) -> String {
        let mut pairs = Vec::new();
        for (name, schema) in params {
            if !self.chance(50) {
                continue;
            }
            let value = match self.rng.u32(0..4) {
                0 | 1 => match self.schema_value(schema) {
                    Value::String(s) => s,
                    other => other.to_string(),
                },
                2 => self
                    .pick(&[
                        "-1",
                        "0",
                        "abc",
                        "99999999999999999999",
                        "2026-13-45T99:00:00Z",
                    ])
                    .to_string(),
                _ => self.string(),
            };
            pairs.push(format!("{}={}", encode(name), encode(&value)));
            if self.chance(10) {
                // The same parameter twice.
                pairs.push(format!("{}={}", encode(name), encode(&self.string())));
            }
        }
        if self.chance(15) {
            pairs.push(format!(
                "{}={}",
                encode(&self.string()),
                encode(&self.string())
            ));
        }
        if self.chance(10) {
            pairs.push(
                self.pick(&["%", "%zz=1", "=", "&&", "a=%ff", "limit", "all=maybe"])
                    .to_string(),
            );
        }
        if pairs.is_empty() {
            String::new()
        } else {
            format!("?{}", pairs.join("&"))
        }
    }
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// What one request showed, when it broke a promise.
struct Finding {
    case: String,
    status: StatusCode,
    problem: String,
}

async fn send(
    app: &Router,
    request: Request<Body>,
    streaming: bool,
) -> (StatusCode, Option<String>, Vec<u8>) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if streaming && status.is_success() {
        // The live stream never ends: its head is the answer.
        return (status, content_type, Vec::new());
    }
    let bytes = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (status, content_type, bytes)
}

/// Whether `bytes` is the API's error shape.
fn error_shape(content_type: Option<&str>, bytes: &[u8]) -> Result<(), String> {
    if !content_type.is_some_and(|t| t.starts_with("application/json")) {
        return Err(format!("content type {content_type:?}, not JSON"));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| format!("body is not JSON: {e}"))?;
    if value["error"].is_string() && value["message"].is_string() {
        Ok(())
    } else {
        Err(format!("body {value} lacks string `error` and `message`"))
    }
}

fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cut: String = text.chars().take(160).collect();
    if cut.len() < text.len() {
        format!("{cut}…({} bytes)", bytes.len())
    } else {
        cut
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_the_document_describes_gets_a_5xx_or_an_error_not_in_json() {
    let seed = std::env::var("SKYNET_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let document: Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
    let operations = operations(&document);
    assert!(operations.len() >= 20, "the document names every route");
    let target = target().await;
    let mut generator = Gen {
        rng: fastrand::Rng::with_seed(seed),
    };
    let mut findings: Vec<Finding> = Vec::new();
    let mut sent = 0usize;
    let mut statuses: BTreeMap<(String, u16), usize> = BTreeMap::new();
    let other_methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ];
    for op in &operations {
        let streaming = op.path.ends_with("/events");
        for case in 0..CASES + METHOD_CASES {
            let g = &mut generator;
            let method = if case < CASES {
                op.method.clone()
            } else {
                g.pick(&other_methods).clone()
            };
            let mut path = String::new();
            for segment in op.path.split('/').skip(1) {
                path.push('/');
                match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) => path.push_str(&g.path_parameter(name)),
                    None => path.push_str(segment),
                }
            }
            let uri = format!("{path}{}", g.query(&op.query));
            let caller = g.pick(&target.callers).clone();
            let mut request = base(method.clone(), &uri);
            match &caller {
                Caller::Anonymous => {}
                Caller::Forged(token) | Caller::Role(_, token) => {
                    request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
                }
            }
            if g.chance(5) {
                request = request.header(header::COOKIE, "skynet_session=AAAA; other=%ff");
            }
            if g.chance(5) {
                request = request.header(header::ORIGIN, "https://evil.example");
            }
            let sends_body = op.body.is_some() || method != Method::GET && g.chance(50);
            let body = if sends_body && method != Method::GET && method != Method::HEAD {
                g.body(op.body.as_ref())
            } else {
                Vec::new()
            };
            if !body.is_empty() || method == Method::POST || method == Method::PUT {
                let content_type = if g.chance(90) {
                    "application/json"
                } else {
                    g.pick(&[
                        "text/plain",
                        "application/x-www-form-urlencoded",
                        "application/json; charset=utf-16",
                        "application/jsonx",
                        "",
                    ])
                };
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            let description = format!(
                "seed {seed} case {case}: {method} {} as {} with body {}",
                excerpt(uri.as_bytes()),
                match &caller {
                    Caller::Anonymous => "anonymous".to_string(),
                    Caller::Forged(_) => "a forged token".to_string(),
                    Caller::Role(role, _) => format!("{role:?}"),
                },
                excerpt(&body),
            );
            let request = match request.body(Body::from(body)) {
                Ok(request) => request,
                // A URI no HTTP client could send; the server never sees it.
                Err(_) => continue,
            };
            sent += 1;
            let (status, content_type, bytes) = send(&target.app, request, streaming).await;
            if case < CASES {
                *statuses
                    .entry((format!("{} {}", op.method, op.path), status.as_u16()))
                    .or_default() += 1;
            }
            if status.is_server_error() {
                findings.push(Finding {
                    case: description,
                    status,
                    problem: format!("a server error: {}", excerpt(&bytes)),
                });
            } else if status.is_client_error()
                && method != Method::HEAD
                && let Err(problem) = error_shape(content_type.as_deref(), &bytes)
            {
                findings.push(Finding {
                    case: description,
                    status,
                    problem,
                });
            }
        }
    }
    // Answers the document does not list: reported, not failed (schemathesis's
    // `status_code_conformance` is a documentation check, not an attack). The document's
    // description states 413 (a body over the route's limit), 421 (a Host not served) and
    // 400 (a path parameter that is not UTF-8) for every route.
    for ((operation, status), count) in &statuses {
        let documented = operations
            .iter()
            .find(|op| format!("{} {}", op.method, op.path) == *operation)
            .is_some_and(|op| op.documented.contains(status));
        if !documented && ![400, 405, 413, 421].contains(status) {
            eprintln!("undocumented: {operation} answered {status} ({count} times)");
        }
    }
    eprintln!(
        "seed {seed}: {sent} requests over {} operations",
        operations.len()
    );
    if !findings.is_empty() {
        let mut report = format!(
            "{} of {sent} requests broke a promise (replay with SKYNET_FUZZ_SEED={seed}):\n",
            findings.len()
        );
        for finding in findings.iter().take(25) {
            report.push_str(&format!(
                "  {} -> {}: {}\n",
                finding.case, finding.status, finding.problem
            ));
        }
        panic!("{report}");
    }
}
