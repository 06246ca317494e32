//! deploy/kubernetes/*.yaml against Kubernetes' own schemas, with kubernetes-validate (PyPI,
//! pinned in scripts/setup.sh). Its wheel bundles the schemas, so it runs offline. Strict:
//! a field the schema does not know is an error, and so is a kind it has no schema for.

use std::path::PathBuf;
use std::process::Command;

use crate::common::repo;

/// The tool as scripts/setup.sh installs it (`python3 -m kubernetes_validate` with its own
/// directory on PYTHONPATH), else a `kubernetes-validate` on PATH; None when neither is there.
fn validator() -> Option<Command> {
    let python = skynet_core::config::data_dir().join("python");
    let installed = std::fs::read_dir(&python)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kubernetes-validate-"))
                && p.join(".complete").exists()
        })
        .max();
    if let Some(dir) = installed {
        let mut command = Command::new("python3");
        command
            .env("PYTHONPATH", dir)
            .args(["-m", "kubernetes_validate"]);
        return Some(command);
    }
    let on_path = Command::new("kubernetes-validate")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    on_path.then(|| Command::new("kubernetes-validate"))
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    let manifests: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    assert!(!manifests.is_empty(), "no manifests in deploy/kubernetes");
    let Some(mut command) = validator() else {
        // CI installs it (scripts/setup.sh); a developer without it is told, not failed.
        assert!(
            std::env::var_os("CI").is_none_or(|v| v.is_empty() || v == "false"),
            "kubernetes-validate is not installed: run scripts/setup.sh"
        );
        eprintln!("SKIPPED: kubernetes-validate is not installed (scripts/setup.sh installs it)");
        return;
    };
    let out = command
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate runs");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    // A kind or apiVersion it has no schema for is only a warning to the tool (exit 0): here,
    // with no custom resources in the manifests, it is a misspelling, so it fails too.
    let problems: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("ERROR") || l.starts_with("WARN"))
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "the manifests do not validate:\n{report}"
    );
    let passed = report
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    assert!(passed > 0, "no resource was checked:\n{report}");
    eprintln!("{report}");
}

/// A Secret's value written in a manifest is the same in every cluster that applies it, and
/// known to everyone who reads the repository: the manifests reference Secrets, created
/// with `kubectl create secret` (deploy/README.md), and never hold one.
#[test]
fn the_kubernetes_manifests_hold_no_secret_value() {
    for entry in std::fs::read_dir(repo().join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if !path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for document in text.split("\n---") {
            let is_secret = document.lines().any(|l| l.trim_end() == "kind: Secret");
            let has_value = document
                .lines()
                .any(|l| l.starts_with("data:") || l.starts_with("stringData:"));
            assert!(
                !(is_secret && has_value),
                "{} holds a Secret with a value:\n{document}",
                path.display()
            );
        }
        assert!(
            !text.contains("REPLACE-WITH"),
            "{} holds a placeholder token",
            path.display()
        );
    }
}
