//! Attacks on the audit log: an inspector naming someone else as assignee (to pass a change
//! off as theirs), a change whose audit entry cannot be written (it must not stand), a row
//! edited in the database afterwards (the hash chain names it), and evidence read without a
//! trace (every read is an entry with the client's address).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use skynet_serve::console::{ConsoleStore, Role, User};

use crate::scope::{IN, PASSWORD, World, world};

fn entries(w: &World, action: &str) -> Vec<Value> {
    let db = rusqlite::Connection::open(&w.db).unwrap();
    let mut stmt = db
        .prepare(
            "SELECT actor, target, after, client FROM console_audit WHERE action = ?1 ORDER BY id",
        )
        .unwrap();
    stmt.query_map([action], |r| {
        Ok(json!({
            "actor": r.get::<_, String>(0)?,
            "target": r.get::<_, String>(1)?,
            "after": r.get::<_, Option<String>>(2)?
                .and_then(|t| serde_json::from_str::<Value>(&t).ok()),
            "client": r.get::<_, Option<String>>(3)?,
        }))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

async fn state(w: &World, id: &str) -> String {
    let detail = w
        .call(
            Method::GET,
            &format!("/api/v1/incidents/{id}"),
            Some(&w.token("adm")),
            None,
        )
        .await;
    detail.json()["incident"]["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn an_assignee_of_another_department_is_refused_and_the_caller_stays_the_actor() {
    let w = world().await;
    ConsoleStore::open(&w.db)
        .unwrap()
        .put_user(
            &User {
                name: "insp-b".into(),
                role: Role::Inspector,
                department: Some("emergency".into()),
                owner: None,
            },
            PASSWORD,
        )
        .unwrap();
    let inspector = w.token("insp");
    let path = format!("/api/v1/incidents/{IN}/status");
    // Someone of another department, an admin with none, a name nobody has: refused.
    for spoofed in ["police", "adm", "nobody"] {
        let answer = w
            .call(
                Method::POST,
                &path,
                Some(&inspector),
                Some(json!({"status": "dispatched", "assignee": spoofed})),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{spoofed}: {}",
            answer.text()
        );
        assert_eq!(answer.json()["error"], "assignee");
        assert!(
            answer.json()["message"]
                .as_str()
                .unwrap()
                .contains("emergency")
        );
    }
    assert_eq!(state(&w, IN).await, "open", "nothing was handed over");
    assert!(entries(&w, "incident.status").is_empty());
    // A colleague of the incident's department: taken, the caller as actor.
    let answer = w
        .call(
            Method::POST,
            &path,
            Some(&inspector),
            Some(json!({"status": "dispatched", "assignee": "insp-b", "note": "team 3"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["incident"]["assignee"], "insp-b");
    let audited = entries(&w, "incident.status");
    assert_eq!(audited.len(), 1);
    assert_eq!(audited[0]["actor"], "insp");
    assert_eq!(audited[0]["after"]["assignee"], "insp-b");
    assert_eq!(audited[0]["client"], "127.0.0.1");
    // The timeline names the caller as actor, and the assignee beside it.
    let detail = w
        .call(
            Method::GET,
            &format!("/api/v1/incidents/{IN}"),
            Some(&inspector),
            None,
        )
        .await;
    let timeline = detail.json()["timeline"].clone();
    let status = timeline
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "status")
        .unwrap_or_else(|| panic!("a status entry in {timeline}"));
    assert_eq!(status["actor"], "insp", "{status}");
    assert_eq!(status["assignee"], "insp-b", "{status}");
}

/// Makes every audit write fail (`on`) or work again.
fn refuse_audit_writes(w: &World, on: bool) {
    let db = rusqlite::Connection::open(&w.db).unwrap();
    if on {
        db.execute_batch(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON console_audit
             BEGIN SELECT RAISE(ABORT, 'the audit log refuses this row'); END;",
        )
        .unwrap();
    } else {
        db.execute_batch("DROP TRIGGER refuse_audit").unwrap();
    }
}

fn count(w: &World, sql: &str) -> i64 {
    rusqlite::Connection::open(&w.db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_change_whose_audit_entry_cannot_be_written_is_rolled_back() {
    let w = world().await;
    let (operator, inspector, admin) = (w.token("op"), w.token("insp"), w.token("adm"));
    let note = format!("/api/v1/incidents/{IN}/notes");
    let ack = format!("/api/v1/incidents/{IN}/ack");
    let status = format!("/api/v1/incidents/{IN}/status");
    let notes_of_in = format!("SELECT count(*) FROM console_notes WHERE incident = '{IN}'");
    let acks_of_in = format!("SELECT count(*) FROM console_acks WHERE incident = '{IN}'");
    let changes = [
        (
            Method::POST,
            note.as_str(),
            &operator,
            json!({"text": "valve closed"}),
        ),
        (Method::POST, ack.as_str(), &operator, json!({})),
        (
            Method::POST,
            status.as_str(),
            &inspector,
            json!({"status": "dispatched"}),
        ),
        (
            Method::PUT,
            "/api/v1/cameras/cam-1/thresholds",
            &admin,
            json!({"person": 0.55}),
        ),
        (
            Method::POST,
            "/api/v1/users",
            &admin,
            json!({"name": "newcomer", "role": "operator", "password": PASSWORD}),
        ),
    ];
    refuse_audit_writes(&w, true);
    for (method, path, token, body) in &changes {
        let answer = w
            .call(method.clone(), path, Some(token), Some(body.clone()))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {path}: {}",
            answer.text()
        );
    }
    // None of them stands.
    assert_eq!(count(&w, &notes_of_in), 0);
    assert_eq!(count(&w, &acks_of_in), 0);
    assert_eq!(state(&w, IN).await, "open");
    let cameras = w
        .call(Method::GET, "/api/v1/cameras", Some(&admin), None)
        .await;
    assert_eq!(
        cameras.json()["cameras"][0]["thresholds"]["person"],
        json!(0.4)
    );
    assert_eq!(
        count(&w, "SELECT count(*) FROM console_thresholds"),
        0,
        "not saved"
    );
    assert_eq!(
        count(
            &w,
            "SELECT count(*) FROM console_users WHERE name = 'newcomer'"
        ),
        0
    );
    // The audit log takes rows again: each change lands, with its entry.
    refuse_audit_writes(&w, false);
    for (method, path, token, body) in &changes {
        let answer = w
            .call(method.clone(), path, Some(token), Some(body.clone()))
            .await;
        assert!(
            answer.status.is_success(),
            "{method} {path}: {} {}",
            answer.status,
            answer.text()
        );
    }
    assert_eq!(count(&w, &notes_of_in), 1);
    assert_eq!(count(&w, &acks_of_in), 1);
    assert_eq!(state(&w, IN).await, "dispatched");
    assert_eq!(
        count(
            &w,
            "SELECT count(*) FROM console_users WHERE name = 'newcomer'"
        ),
        1
    );
    for action in [
        "incident.note",
        "incident.ack",
        "incident.status",
        "camera.thresholds",
        "user.put",
    ] {
        let rows = entries(&w, action);
        assert!(
            rows.iter().any(|e| e["client"] == "127.0.0.1"),
            "{action}: {rows:?}"
        );
    }
    let store = ConsoleStore::open(&w.db).unwrap();
    assert!(store.verify_audit().unwrap().is_ok());
}

#[tokio::test]
async fn evidence_reads_are_audited_with_the_client_address() {
    let w = world().await;
    let inspector = w.token("insp");
    let path = format!("/api/v1/evidence/{IN}/1.jpg");
    let answer = w.call(Method::GET, &path, Some(&inspector), None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let reads = entries(&w, "evidence.read");
    assert_eq!(reads.len(), 1, "{reads:?}");
    assert_eq!(reads[0]["actor"], "insp");
    assert_eq!(reads[0]["target"], format!("{IN}/1.jpg"));
    assert_eq!(reads[0]["client"], "127.0.0.1");
    // A read that serves nothing (out of scope, or no such file) is no entry.
    let answer = w
        .call(
            Method::GET,
            &format!("/api/v1/evidence/{}/1.jpg", crate::scope::OUT),
            Some(&inspector),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    let answer = w
        .call(
            Method::GET,
            &format!("/api/v1/evidence/{IN}/2.jpg"),
            Some(&inspector),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(entries(&w, "evidence.read").len(), 1);
    // When the read cannot be audited, the image is not served.
    refuse_audit_writes(&w, true);
    let answer = w.call(Method::GET, &path, Some(&inspector), None).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_row_changed_in_the_database_breaks_the_chain_and_skynet_audit_verify_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::common::config_in(dir.path(), "", crate::common::free_port(), "");
    // The demo config keeps its outbox beside the config file.
    let outbox = dir.path().join("outbox.sqlite");
    let store = ConsoleStore::open(&outbox).unwrap();
    for i in 0..4 {
        store
            .audit(
                "op",
                "operator",
                "incident.note",
                &format!("inc-{i}"),
                None,
                None,
            )
            .unwrap();
    }
    let verify = || {
        std::process::Command::new(crate::common::skynet_bin())
            .args(["audit", "verify", "--config"])
            .arg(&config)
            .current_dir(crate::common::repo())
            .output()
            .unwrap()
    };
    // A config whose state database is not there verifies nothing, and says so (opening
    // it would create an empty one that holds).
    let elsewhere = tempfile::tempdir().unwrap();
    let missing = crate::common::config_in(elsewhere.path(), "", crate::common::free_port(), "");
    let out = std::process::Command::new(crate::common::skynet_bin())
        .args(["audit", "verify", "--config"])
        .arg(&missing)
        .current_dir(crate::common::repo())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no state database"));
    assert!(!elsewhere.path().join("outbox.sqlite").exists());
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok, 4 rows");
    // Someone with the database file rewrites who did it.
    rusqlite::Connection::open(&outbox)
        .unwrap()
        .execute(
            "UPDATE console_audit SET actor = 'someone else' WHERE id = 3",
            [],
        )
        .unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("broken at row 3:"), "{said}");
    assert!(said.contains("fields"), "{said}");
    // The store's check says the same.
    let brk = store.verify_audit().unwrap().unwrap_err();
    assert_eq!(brk.id, 3);
}

#[tokio::test]
async fn a_kept_head_verifies_until_the_newest_rows_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::common::config_in(dir.path(), "", crate::common::free_port(), "");
    let outbox = dir.path().join("outbox.sqlite");
    let store = ConsoleStore::open(&outbox).unwrap();
    for i in 0..4 {
        store
            .audit(
                "op",
                "operator",
                "incident.note",
                &format!("inc-{i}"),
                None,
                None,
            )
            .unwrap();
    }
    let verify = |head: &str| {
        std::process::Command::new(crate::common::skynet_bin())
            .args(["audit", "verify", "--config"])
            .arg(&config)
            .args(["--head", head])
            .current_dir(crate::common::repo())
            .output()
            .unwrap()
    };
    let (_, head) = store.audit_head().unwrap().unwrap();
    // A head kept from earlier verifies while the chain still holds it, rows added or not.
    store
        .audit("op", "operator", "incident.note", "inc-4", None, None)
        .unwrap();
    let out = verify(&head);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok, 5 rows");
    // Someone with the database file removes the newest rows: the shorter chain holds, but
    // not the kept head.
    rusqlite::Connection::open(&outbox)
        .unwrap()
        .execute("DELETE FROM console_audit WHERE id >= 4", [])
        .unwrap();
    let out = verify(&head);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&head), "{said}");
    assert!(said.contains("not in the chain"), "{said}");
    // Anything but a hash is refused before it reaches the output.
    let out = verify("\x1b[2Jnot-a-hash");
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn an_assignee_of_the_department_whose_scope_excludes_the_incident_is_refused() {
    let w = world().await;
    let store = ConsoleStore::open(&w.db).unwrap();
    // The incident is emergency's, owned by safety_production. Both are emergency
    // inspectors; only the second may see it.
    for (name, owner) in [
        ("insp-police", "police"),
        ("insp-safety", "safety_production"),
    ] {
        store
            .put_user(
                &User {
                    name: name.into(),
                    role: Role::Inspector,
                    department: Some("emergency".into()),
                    owner: Some(owner.into()),
                },
                PASSWORD,
            )
            .unwrap();
    }
    let inspector = w.token("insp");
    let path = format!("/api/v1/incidents/{IN}/status");
    let answer = w
        .call(
            Method::POST,
            &path,
            Some(&inspector),
            Some(json!({"status": "dispatched", "assignee": "insp-police"})),
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.text()
    );
    assert_eq!(answer.json()["error"], "assignee");
    assert_eq!(state(&w, IN).await, "open", "nothing was handed over");
    assert!(entries(&w, "incident.status").is_empty());
    let answer = w
        .call(
            Method::POST,
            &path,
            Some(&inspector),
            Some(json!({"status": "dispatched", "assignee": "insp-safety"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.json()["incident"]["assignee"], "insp-safety");
}
