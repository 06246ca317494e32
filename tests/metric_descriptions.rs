//! Every metric skynet records is described, as the kind it is recorded as: each name given
//! to `counter!`, `gauge!` or `histogram!` anywhere in crates/ has a `# HELP` text from
//! `skynet::describe_metrics()` (which calls every crate's own `describe_metrics()`), and
//! nothing is described that is never recorded.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// What a name is recorded or described as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Takes the descriptions and records nothing.
#[derive(Default)]
struct Descriptions(Mutex<BTreeMap<String, (Kind, String)>>);

impl Descriptions {
    fn add(&self, kind: Kind, key: KeyName, description: SharedString) {
        let mut described = self.0.lock().unwrap();
        let previous = described.insert(key.as_str().to_string(), (kind, description.to_string()));
        if let Some((was, _)) = previous {
            assert_eq!(
                was,
                kind,
                "{} described as a {was:?} and a {kind:?}",
                key.as_str()
            );
        }
    }
}

impl Recorder for Descriptions {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.add(Kind::Counter, key, description);
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.add(Kind::Gauge, key, description);
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.add(Kind::Histogram, key, description);
    }
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Every `counter!("name"`, `gauge!("name"` and `histogram!("name"` in the `.rs` files under
/// `dir`, with where it is; a name that is not a string literal is an error, so no metric
/// escapes the check.
fn recorded_in(dir: &Path, found: &mut BTreeMap<String, (Kind, String)>, errors: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n != "target" && n != "node_modules")
            {
                recorded_in(&path, found, errors);
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (macro_name, kind) in [
            ("counter!", Kind::Counter),
            ("gauge!", Kind::Gauge),
            ("histogram!", Kind::Histogram),
        ] {
            for (at, _) in text.match_indices(macro_name) {
                // `describe_counter!` and the like are not recordings.
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let line = text[..at].matches('\n').count() + 1;
                let place = format!("{}:{line}", path.display());
                // Only a call: `counter!` named in a comment is not followed by `(`.
                let Some(args) = text[at + macro_name.len()..].trim_start().strip_prefix('(')
                else {
                    continue;
                };
                let Some(literal) = args.trim_start().strip_prefix('"') else {
                    errors.push(format!(
                        "{place}: a metric name that is not a string literal"
                    ));
                    continue;
                };
                let name = &literal[..literal.find('"').expect("a closed string")];
                if let Some((was, where_)) = found.get(name)
                    && *was != kind
                {
                    errors.push(format!(
                        "{place}: {name} recorded as a {kind:?}, at {where_} as a {was:?}"
                    ));
                }
                found.entry(name.to_string()).or_insert((kind, place));
            }
        }
    }
}

#[test]
fn every_metric_recorded_is_described_as_what_it_is() {
    let mut recorded = BTreeMap::new();
    let mut errors = Vec::new();
    recorded_in(&common::repo().join("crates"), &mut recorded, &mut errors);
    assert!(
        recorded.len() > 50,
        "only {} metrics found: {recorded:?}",
        recorded.len()
    );

    let descriptions = Descriptions::default();
    metrics::with_local_recorder(&descriptions, skynet::describe_metrics);
    let described = descriptions.0.into_inner().unwrap();

    for (name, (kind, place)) in &recorded {
        match described.get(name) {
            None => errors.push(format!("{place}: {name} is recorded but never described")),
            Some((was, _)) if was != kind => errors.push(format!(
                "{place}: {name} is a {kind:?}, described as a {was:?}"
            )),
            Some((_, text)) if text.trim().is_empty() => {
                errors.push(format!("{name}: an empty description"))
            }
            Some(_) => {}
        }
    }
    for name in described.keys() {
        if !recorded.contains_key(name) {
            errors.push(format!(
                "{name} is described but recorded nowhere in crates/"
            ));
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}
