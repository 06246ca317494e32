//! The suite every fusion rule kind passes, run on each registered kind's example table.
//!
//! A kind gets it by registering: the crate's tests run it over [`register`](super::register)'s
//! kinds, and a kind kept elsewhere calls [`check_fusion_kind`] on itself. Each run is a
//! [`GridRiskEngine`] with the example as its only fusion rule, fed a scripted stream of
//! observations in cell `A` (camera `cam-1`, sensors `gas-1` and `smoke-1`). The promises:
//! - the example validates;
//! - **determinism on replay**: two engines fed the same observations give the same events;
//! - **state restore**: an engine restored from a snapshot (through its JSON text) taken
//!   halfway gives the same events for the rest as the engine that ran on;
//! - **no output on an unrelated scene**: where none of the rule's categories occur, the
//!   engine's events are those of an engine without the rule;
//! - the example changes the events of the busy scene, so the checks above are not vacuous.
//!
//! The busy scene's categories are `gas_leak` (sensor `gas-1`), `smoke` (sensor `smoke-1`)
//! and `person_present` (camera `cam-1`); an example names some of them.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use skynet_core::{
    DeviceId, Evidence, GridId, Kind, Observation, OwnerKind, RiskEvent, SourceKind, SourceRef,
};

use super::{FusionContext, FusionRule, FusionRuleFamily};
use crate::{DeviceInfo, GridMap, GridRiskEngine, RiskContext, RiskEngine, RiskSettings};

const GRIDS: &str = r#"{"type": "FeatureCollection", "features": [
  {"type": "Feature", "properties": {"id": "A"},
   "geometry": {"type": "Polygon", "coordinates": [[[0,0],[1,0],[1,1],[0,1],[0,0]]]}},
  {"type": "Feature", "properties": {"id": "B"},
   "geometry": {"type": "Polygon", "coordinates": [[[1,0],[2,0],[2,1],[1,1],[1,0]]]}}
]}"#;

const DEVICES: [(&str, SourceKind); 3] = [
    ("cam-1", SourceKind::Camera),
    ("gas-1", SourceKind::Sensor),
    ("smoke-1", SourceKind::Sensor),
];

fn at(s: i64) -> DateTime<Utc> {
    // A fixed start, so runs compare to the letter.
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000) + chrono::Duration::seconds(s)
}

fn engine(fusion: Option<&FusionRule>) -> Result<GridRiskEngine, String> {
    let mut config = RiskSettings::default()
        .validate("conformance")
        .map_err(|e| e.to_string())?;
    config.fusion = fusion.into_iter().cloned().collect();
    let grids = GridMap::parse(Path::new("conformance.geojson"), GRIDS)
        .map_err(|e| format!("the suite's grid: {e}"))?;
    let devices = DEVICES.map(|(id, kind)| DeviceInfo {
        source: SourceRef {
            kind,
            id: DeviceId::new(id),
        },
        grid: GridId::new("A"),
        owner: OwnerKind::SafetyProduction,
    });
    Ok(GridRiskEngine::new(
        config,
        RiskContext::new(Arc::new(grids), devices),
    ))
}

fn observation(s: i64, device: usize, category: &str, weight: f32) -> Observation {
    let (id, kind) = DEVICES[device];
    Observation {
        at: at(s),
        source: SourceRef {
            kind,
            id: DeviceId::new(id),
        },
        grid: GridId::new("A"),
        category: category.into(),
        weight,
        confidence: 0.9,
        evidence: Evidence::default(),
    }
}

/// Twenty minutes in cell `A`: a gas leak the camera sees a person in, smoke no camera
/// sees, then a person that confirms it. `categories` renames the three categories.
fn scene(categories: [&str; 3]) -> Vec<Observation> {
    let [gas, smoke, person] = categories;
    let mut out = Vec::new();
    for s in (0..1200).step_by(5) {
        if (60..400).contains(&s) && s % 10 == 0 {
            out.push(observation(s, 1, gas, 0.6));
        }
        if (200..300).contains(&s) {
            out.push(observation(s, 0, person, 0.5));
        }
        if (500..600).contains(&s) && s % 10 == 0 {
            out.push(observation(s, 2, smoke, 0.7));
        }
        if (650..700).contains(&s) {
            out.push(observation(s, 0, person, 0.5));
        }
    }
    out
}

/// The busy scene.
pub fn busy_scene() -> Vec<Observation> {
    scene(["gas_leak", "smoke", "person_present"])
}

/// The same stream with categories no rule of the suite names.
pub fn unrelated_scene() -> Vec<Observation> {
    scene(["noise", "humidity", "loitering"])
}

fn run(engine: &mut GridRiskEngine, observations: &[Observation]) -> Vec<RiskEvent> {
    observations
        .iter()
        .flat_map(|o| engine.observe(o))
        .collect()
}

/// Runs the suite on one kind; the error says which promise it broke.
pub fn check_fusion_kind(kind: &Kind<FusionRuleFamily>) -> Result<(), String> {
    let name = kind.name;
    let rule = kind
        .parse_example(&FusionContext { index: 0 })
        .map_err(|e| format!("fusion kind `{name}`: its example does not validate: {e}"))?;
    let rule = Some(rule.as_ref());
    let busy = busy_scene();

    let first = run(&mut engine(rule)?, &busy);
    if first == run(&mut engine(None)?, &busy) {
        return Err(format!(
            "fusion kind `{name}`: its example changes nothing on the busy scene; make it \
             match so the suite checks something"
        ));
    }
    if first != run(&mut engine(rule)?, &busy) {
        return Err(format!(
            "fusion kind `{name}`: two runs over the same observations differ (replay would \
             not match live)"
        ));
    }

    let unrelated = unrelated_scene();
    if run(&mut engine(rule)?, &unrelated) != run(&mut engine(None)?, &unrelated) {
        return Err(format!(
            "fusion kind `{name}`: changed the events of a scene without its categories"
        ));
    }

    let (head, tail) = busy.split_at(busy.len() / 2);
    let mut before = engine(rule)?;
    run(&mut before, head);
    let text = before.snapshot().get().to_string();
    let snapshot: Box<serde_json::value::RawValue> = serde_json::from_str(&text)
        .map_err(|e| format!("fusion kind `{name}`: the snapshot does not read back: {e}"))?;
    let mut restored = engine(rule)?;
    restored
        .restore(&snapshot)
        .map_err(|e| format!("fusion kind `{name}`: the snapshot does not restore: {e}"))?;
    if run(&mut restored, tail) != run(&mut before, tail) {
        return Err(format!(
            "fusion kind `{name}`: an engine restored halfway differs from the one that ran on"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use skynet_core::Registry;

    use super::*;

    #[test]
    fn every_registered_fusion_kind_passes_the_suite() {
        let mut registry = Registry::default();
        crate::register(&mut registry);
        let kinds = registry.kinds::<FusionRuleFamily>();
        assert_eq!(kinds.len(), 2);
        for kind in kinds {
            if let Err(e) = check_fusion_kind(kind) {
                panic!("{e}");
            }
        }
    }
}
