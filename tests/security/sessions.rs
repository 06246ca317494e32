//! Tokens and sessions that end: an expired token, a token after a password or role reset,
//! an idle session, and `logout?all=true`. Times are set in the state database directly;
//! nothing waits for a clock.

use reqwest::{Method, StatusCode};
use serde_json::json;
use skynet_serve::console::{Role, TokenKind, User};

use crate::logins::{PASSWORD, serve};

fn user(name: &str, role: Role) -> User {
    User {
        name: name.into(),
        role,
        department: None,
        owner: None,
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_and_a_current_one_accepted() {
    let served = serve(|_| {}).await;
    let store = served.store();
    let expired = store
        .issue_token(
            "op",
            TokenKind::Api,
            Some("wall"),
            Some(chrono::TimeDelta::seconds(-1)),
        )
        .unwrap();
    let current = store
        .issue_token(
            "op",
            TokenKind::Api,
            Some("wall"),
            Some(chrono::TimeDelta::days(1)),
        )
        .unwrap();
    assert_eq!(served.me(&expired).await, StatusCode::UNAUTHORIZED);
    assert_eq!(served.me(&current).await, StatusCode::OK);
    // A token issued without a lifetime still expires: the default 90 days.
    let default = store.issue_token("op", TokenKind::Api, None, None).unwrap();
    let db = rusqlite::Connection::open(&served.db).unwrap();
    let latest: String = db
        .query_row(
            "SELECT expires_at FROM console_tokens ORDER BY created_at DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let days = (chrono::DateTime::parse_from_rfc3339(&latest)
        .unwrap()
        .to_utc()
        - chrono::Utc::now())
    .num_days();
    assert!((89..=90).contains(&days), "{latest}");
    assert_eq!(served.me(&default).await, StatusCode::OK);
    // Moved past its expiry in the database, it is refused.
    db.execute(
        "UPDATE console_tokens SET expires_at = ?1",
        [(chrono::Utc::now() - chrono::TimeDelta::minutes(1)).to_rfc3339()],
    )
    .unwrap();
    assert_eq!(served.me(&default).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_after_a_password_reset_or_a_role_reset_is_refused() {
    let served = serve(|_| {}).await;
    let store = served.store();
    // A password reset, same role: the session and the machine token both end.
    let session = served.login("op", PASSWORD, None, None).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let api = store.issue_token("op", TokenKind::Api, None, None).unwrap();
    let other = store
        .issue_token("adm", TokenKind::Api, None, None)
        .unwrap();
    assert_eq!(served.me(&session).await, StatusCode::OK);
    assert_eq!(served.me(&api).await, StatusCode::OK);
    store
        .put_user(&user("op", Role::Operator), "a brand new passphrase")
        .unwrap();
    assert_eq!(served.me(&session).await, StatusCode::UNAUTHORIZED);
    assert_eq!(served.me(&api).await, StatusCode::UNAUTHORIZED);
    // Someone else's token is untouched.
    assert_eq!(served.me(&other).await, StatusCode::OK);
    // A role reset through the API (an admin) ends the new token too.
    let api = store.issue_token("op", TokenKind::Api, None, None).unwrap();
    assert_eq!(served.me(&api).await, StatusCode::OK);
    let answer = served
        .call(
            Method::POST,
            "/api/v1/users",
            &[("authorization", format!("Bearer {other}"))],
            Some(json!({"name": "op", "role": "engineer", "password": "a brand new passphrase"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(served.me(&api).await, StatusCode::UNAUTHORIZED);
    // A new login, with the new password, works.
    let answer = served
        .login("op", "a brand new passphrase", None, None)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[tokio::test]
async fn an_idle_session_ends_and_an_active_one_goes_on() {
    let served = serve(|config| config.idle_timeout = std::time::Duration::from_secs(1800)).await;
    let idle = served.login("op", PASSWORD, None, None).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let active = served.login("adm", PASSWORD, None, None).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let machine = served
        .store()
        .issue_token("op", TokenKind::Api, None, None)
        .unwrap();
    let db = rusqlite::Connection::open(&served.db).unwrap();
    let ago =
        |minutes: i64| (chrono::Utc::now() - chrono::TimeDelta::minutes(minutes)).to_rfc3339();
    // op's session was last used 31 minutes ago, adm's 20: only op's has ended. A machine's
    // API token has no idle timeout.
    db.execute(
        "UPDATE console_tokens SET last_seen = ?1 WHERE user = 'op'",
        [ago(31)],
    )
    .unwrap();
    db.execute(
        "UPDATE console_tokens SET last_seen = ?1 WHERE user = 'adm'",
        [ago(20)],
    )
    .unwrap();
    assert_eq!(served.me(&idle).await, StatusCode::UNAUTHORIZED);
    assert_eq!(served.me(&active).await, StatusCode::OK);
    assert_eq!(served.me(&machine).await, StatusCode::OK);
    // The request was activity: adm's last use moved on, so the session outlasts the
    // 20 minutes it had already been idle.
    let seen: String = db
        .query_row(
            "SELECT last_seen FROM console_tokens WHERE user = 'adm' AND kind = 'session'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(seen > ago(1), "{seen}");
    // Opening the live stream is not activity by itself.
    db.execute(
        "UPDATE console_tokens SET last_seen = ?1 WHERE user = 'adm'",
        [ago(20)],
    )
    .unwrap();
    let mut stream = served.events(&active).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let _ = stream.chunk().await;
    let seen: String = db
        .query_row(
            "SELECT last_seen FROM console_tokens WHERE user = 'adm' AND kind = 'session'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(seen < ago(19), "the stream moved last_seen to {seen}");
}

#[tokio::test]
async fn logout_all_ends_every_session_of_the_caller_and_no_one_elses() {
    let served = serve(|_| {}).await;
    let token = |answer: crate::logins::Answer| answer.body["token"].as_str().unwrap().to_string();
    let desk = token(served.login("op", PASSWORD, None, None).await);
    let laptop = token(served.login("op", PASSWORD, None, None).await);
    let colleague = token(served.login("adm", PASSWORD, None, None).await);
    let wall = served
        .store()
        .issue_token("op", TokenKind::Api, Some("video wall"), None)
        .unwrap();
    // Plain logout ends this session only.
    let plain = token(served.login("op", PASSWORD, None, None).await);
    let answer = served
        .call(
            Method::POST,
            "/api/v1/logout",
            &[("authorization", format!("Bearer {plain}"))],
            Some(json!({})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
    assert_eq!(served.me(&plain).await, StatusCode::UNAUTHORIZED);
    assert_eq!(served.me(&desk).await, StatusCode::OK);
    // ?all=true from the laptop ends the desk's session too.
    let answer = served
        .call(
            Method::POST,
            "/api/v1/logout?all=true",
            &[("authorization", format!("Bearer {laptop}"))],
            Some(json!({})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.body);
    assert_eq!(served.me(&laptop).await, StatusCode::UNAUTHORIZED);
    assert_eq!(served.me(&desk).await, StatusCode::UNAUTHORIZED);
    // Another user's session, and the caller's machine token, stay.
    assert_eq!(served.me(&colleague).await, StatusCode::OK);
    assert_eq!(served.me(&wall).await, StatusCode::OK);
    // A value that is not a boolean is refused, not taken as false.
    let answer = served
        .call(
            Method::POST,
            "/api/v1/logout?all=yes",
            &[("authorization", format!("Bearer {colleague}"))],
            Some(json!({})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(served.me(&colleague).await, StatusCode::OK);
}

#[tokio::test]
async fn the_logout_cookie_clear_is_secure_when_the_session_cookie_is() {
    for secure in [true, false] {
        let served = serve(|config| config.secure_cookie = secure).await;
        let login = served.login("op", PASSWORD, None, None).await;
        let session = login.body["token"].as_str().unwrap().to_string();
        let answer = served
            .call(
                Method::POST,
                "/api/v1/logout",
                &[("authorization", format!("Bearer {session}"))],
                Some(json!({})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        let cleared = answer
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .find(|v| v.starts_with("skynet_session="))
            .expect("the session cookie is cleared");
        assert!(cleared.contains("Max-Age=0"), "{cleared}");
        // The clear carries the attributes of the cookie it ends.
        assert_eq!(cleared.contains("; Secure"), secure, "{cleared}");
    }
}
