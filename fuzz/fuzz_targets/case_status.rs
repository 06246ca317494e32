//! The case-status intake on any bytes: the subject, the body and the `Skynet-Signature`
//! header all come from the bus. Nothing may panic; an accepted event must be a valid case
//! status from a configured source, named by its subject, and, with a secret, signed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skynet_core::Secret;
use skynet_risk::case_status::{CaseIntake, RefusalReason, parse_case_event, sign};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the subject and header shapes; the rest is the body.
    let Some((&shape, body)) = data.split_first() else {
        return;
    };
    let incident = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["data"]["incident"].as_str().map(str::to_string))
        .unwrap_or_else(|| "inc-1".into());
    let subject = match shape % 3 {
        0 => format!("skynet.cases.{incident}"),
        1 => "skynet.cases.inc-1".to_string(),
        _ => String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned(),
    };
    let secret = "fuzz-secret";
    let good = format!("sha256={}", sign(secret.as_bytes(), body));
    let header = match (shape / 3) % 4 {
        0 => None,
        1 => Some(good.clone()),
        2 => Some(String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned()),
        _ => Some(good.replacen('a', "b", 1)),
    };
    let signed = CaseIntake {
        subject_prefix: "skynet.cases".into(),
        sources: ["case-system".to_string()].into(),
        secret: Some(Secret::new(secret)),
        departments: ["fire".to_string()].into(),
    };
    let open = CaseIntake {
        secret: None,
        ..signed.clone()
    };

    let parsed = parse_case_event(&subject, "skynet.cases", body);
    if let Ok(event) = &parsed {
        assert!(event.status.validate().is_ok());
        assert_eq!(subject, format!("skynet.cases.{}", event.status.incident));
        assert!(!event.id.is_empty() && !event.source.is_empty());
    }
    match signed.check(&subject, body, header.as_deref()) {
        Ok(event) => {
            assert_eq!(header.as_deref(), Some(good.as_str()), "only the right signature");
            assert_eq!(event.source, "case-system");
            assert_eq!(Ok(&event), parsed.as_ref());
        }
        Err(refusal) => {
            assert!(!refusal.message.contains(secret), "the secret never shows");
            if header.as_deref() != Some(good.as_str()) {
                assert_eq!(refusal.reason, RefusalReason::Signature);
            }
        }
    }
    // Without a secret, the same body gives the same verdict whatever the header.
    let a = open.check(&subject, body, None).map_err(|r| r.reason);
    let b = open.check(&subject, body, header.as_deref()).map_err(|r| r.reason);
    assert_eq!(a, b);
});
