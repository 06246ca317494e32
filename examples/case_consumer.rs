//! The reference consumer for integrators: how a city's case system takes skynet's incidents
//! from NATS JetStream and tells skynet what it did with them.
//!
//! ```text
//! cargo run --example case_consumer -- --url nats://127.0.0.1:4222 \
//!     [--stream SKYNET_INCIDENTS] [--durable case-system] [--subjects skynet.incidents.>] \
//!     [--respond acknowledged,dispatched,resolved,verified] [--cases-prefix skynet.cases] \
//!     [--count N]
//! ```
//!
//! It uses nothing of skynet's code, only the published contract (README "Consumer guide",
//! schemas/*.schema.json):
//! - a **durable pull consumer** on the stream, so a restart of the case system goes on where
//!   it stopped, with explicit acks: a message is acknowledged only once handled;
//! - **deduplication by CloudEvent id** (`ce-id` header, `<incident>/<revision>`): skynet
//!   delivers at least once, so the same revision may come twice;
//! - **revisions in order per incident**: an older revision than the one already seen is
//!   ignored;
//! - **status events back** as `skynet.case_status.v1` CloudEvents on
//!   `skynet.cases.<incident-id>`, published to JetStream (acked), so none is lost while
//!   skynet is restarting.
//!
//! Each newly opened incident is printed as a ticket; with `--respond`, the listed statuses
//! are sent back for it one after another. `--count N` stops after N tickets.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use serde_json::{Value, json};

struct Args {
    url: String,
    stream: String,
    durable: String,
    subjects: String,
    cases_prefix: String,
    respond: Vec<String>,
    count: Option<usize>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        url: std::env::var("SKYNET_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        stream: "SKYNET_INCIDENTS".into(),
        durable: "case-system".into(),
        subjects: "skynet.incidents.>".into(),
        cases_prefix: "skynet.cases".into(),
        respond: Vec::new(),
        count: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--stream" => args.stream = value()?,
            "--durable" => args.durable = value()?,
            "--subjects" => args.subjects = value()?,
            "--cases-prefix" => args.cases_prefix = value()?,
            "--respond" => {
                args.respond = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "--count" => args.count = Some(value()?.parse().map_err(|e| format!("--count: {e}"))?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(args)
}

/// A status event as skynet expects it (schemas/case_status.schema.json).
fn case_status(incident: &str, status: &str, department: &str) -> Value {
    let now = chrono::Utc::now();
    json!({
        "specversion": "1.0",
        "id": format!("case/{incident}/{status}/{}", now.timestamp_nanos_opt().unwrap_or_default()),
        // One of skynet's `[cases] sources`.
        "source": "case-system",
        "type": "skynet.case_status.v1",
        "subject": incident,
        "time": now,
        "datacontenttype": "application/json",
        "data": {
            "incident": incident,
            "status": status,
            "department": department,
            "assignee": "crew-1",
            "note": format!("{status} by the example case consumer"),
            "at": now,
        }
    })
}

/// The hex HMAC-SHA256 of `body` under `secret`.
fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = args().map_err(|e| format!("{e}\nusage: case_consumer --url URL [--stream S] [--durable D] [--subjects F] [--respond s1,s2] [--cases-prefix P] [--count N]"))?;
    let client = async_nats::connect(&args.url).await?;
    let js = jetstream::new(client);
    // skynet creates the stream; the consumer only binds to it (and waits for it to exist).
    let stream = loop {
        match js.get_stream(&args.stream).await {
            Ok(stream) => break stream,
            Err(e) => {
                eprintln!("waiting for stream {}: {e}", args.stream);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            &args.durable,
            consumer::pull::Config {
                durable_name: Some(args.durable.clone()),
                filter_subject: args.subjects.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer.messages().await?;
    // Latest revision seen per incident: deduplicates and ignores stale revisions. A real
    // case system keeps this in its own database.
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut tickets = 0usize;
    while let Some(message) = messages.next().await {
        let message = message?;
        let event: Value = match serde_json::from_slice(&message.payload) {
            Ok(v) => v,
            Err(e) => {
                eprintln!(
                    "skipping a message that is not JSON on {}: {e}",
                    message.subject
                );
                message.ack().await?;
                continue;
            }
        };
        let data = &event["data"];
        let incident = data["id"].as_str().unwrap_or_default().to_string();
        let revision = data["revision"].as_u64().unwrap_or_default();
        if seen.get(&incident).is_some_and(|&r| r >= revision) {
            message.ack().await?;
            continue;
        }
        seen.insert(incident.clone(), revision);
        println!(
            "{}",
            json!({
                "ticket": incident,
                "revision": revision,
                "event": event["id"],
                "state": data["state"],
                "status": data["status"],
                "change": data["change"],
                "level": data["level"],
                "category": data["category"],
                "grid": data["grid"],
                "department": data["department"],
                "dispatch_by": data["deadlines"]["dispatch_by"],
                "resolve_by": data["deadlines"]["resolve_by"],
            })
        );
        let opened = data["status"] == "opened";
        if opened {
            let department = data["department"].as_str().unwrap_or("command_center");
            for status in &args.respond {
                let body = serde_json::to_vec(&case_status(&incident, status, department))?;
                let subject = format!("{}.{incident}", args.cases_prefix);
                // Signed when skynet has a `[cases] secret`: Skynet-Signature, the
                // HMAC-SHA256 of the body.
                let mut headers = async_nats::HeaderMap::new();
                if let Ok(secret) = std::env::var("SKYNET_CASES_SECRET")
                    && !secret.is_empty()
                {
                    headers.insert(
                        "Skynet-Signature",
                        format!("sha256={}", sign(&secret, &body)).as_str(),
                    );
                }
                // Acked by JetStream: the status is kept until skynet takes it.
                js.publish_with_headers(subject, headers, body.into())
                    .await?
                    .await?;
            }
            tickets += 1;
        }
        message.ack().await?;
        if args.count.is_some_and(|n| tickets >= n) {
            break;
        }
    }
    Ok(())
}
