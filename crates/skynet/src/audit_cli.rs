//! `skynet audit verify`: checks the console's audit log's hash chain, and the actor the CLI
//! writes to the audit log (the operating-system user of the process, from its uid).

use std::ffi::CStr;

use anyhow::{Context, Result};
use skynet_serve::console::ConsoleStore;
use skynet_serve::console::store::NewAudit;

use crate::PipelineConfig;

/// The operating-system user running this process, by its real uid: `$USER` and
/// `$SUDO_USER` are whatever the caller's environment says, the uid is what the kernel
/// says. `uid:<n>` when the user database has no name for it.
pub fn os_user() -> String {
    // SAFETY: getuid cannot fail and touches no memory of ours.
    let uid = unsafe { libc::getuid() };
    name_of(uid).unwrap_or_else(|| format!("uid:{uid}"))
}

/// The login name of `uid` from the user database (getpwuid_r: thread-safe, into our own
/// buffer), growing the buffer while it is too small, up to 1 MiB.
fn name_of(uid: libc::uid_t) -> Option<String> {
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        // SAFETY: an all-zero passwd is a valid value (null pointers, zero ids); getpwuid_r
        // fills it with pointers into `buf`, which outlives every read of them below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is to a live value of the right type, and `size` is
        // `buf`'s length.
        let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), size, &mut result) };
        if rc == libc::ERANGE && size < 1 << 20 {
            size *= 4;
            continue;
        }
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside `buf`.
        let name = unsafe { CStr::from_ptr(pwd.pw_name) };
        return Some(name.to_string_lossy().into_owned()).filter(|n| !n.is_empty());
    }
}

/// An audit entry made from the command line: `cli:<os user>`, role `cli`.
pub fn cli_entry(
    action: &str,
    target: &str,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
) -> NewAudit {
    NewAudit {
        actor: format!("cli:{}", os_user()),
        role: "cli".into(),
        action: action.into(),
        target: target.into(),
        before,
        after,
        client: None,
    }
}

/// Verifies the chain of the config's state database. `Ok(true)` when it holds ("ok, N
/// rows" on stdout, the last hash on stderr to keep elsewhere: deleting the newest rows
/// leaves a chain that holds, but not that hash); `Ok(false)` after naming the first break,
/// or `head` (a hash kept from earlier) when no row has it any more.
pub fn verify(config: &PipelineConfig, head: Option<&str>) -> Result<bool> {
    // A head is echoed back in the verdict: only a sha256 in hex is taken, so nothing else
    // from the command line reaches the output.
    if let Some(head) = head
        && (head.len() != 64 || !head.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        anyhow::bail!("--head takes a chain hash: 64 hex digits");
    }
    // Opening creates a missing database: a wrong path would then verify as "ok, 0 rows".
    if !config.outbox.exists() {
        anyhow::bail!(
            "no state database at {}: nothing to verify (is this the config the console runs with?)",
            config.outbox.display()
        );
    }
    let store = ConsoleStore::open(&config.outbox)
        .with_context(|| format!("opening the state database {}", config.outbox.display()))?;
    match store.verify_audit()? {
        Ok((rows, last)) => {
            if let Some(head) = head {
                let head = head.to_ascii_lowercase();
                match store.audit_row_with_hash(&head)? {
                    Some(id) => eprintln!("head {head} is row {id}"),
                    None => {
                        println!(
                            "head {head} is not in the chain: rows were removed from its end or it was rewritten since that head was kept"
                        );
                        return Ok(false);
                    }
                }
            }
            println!("ok, {rows} rows");
            eprintln!("last hash {last}");
            Ok(true)
        }
        Err(brk) => {
            // `what` is written by the check (row ids, hash prefixes), never a row's text.
            println!("broken at row {}: {}", brk.id, brk.what);
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_os_user_comes_from_the_uid_not_the_environment() {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let name = os_user();
        assert!(!name.is_empty());
        assert_eq!(name_of(uid).unwrap_or_else(|| format!("uid:{uid}")), name);
        // An id nobody has gets no name.
        assert_eq!(name_of(4_000_000_001), None);
    }
}
