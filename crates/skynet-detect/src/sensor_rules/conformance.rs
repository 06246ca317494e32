//! The suite every sensor rule kind passes, run on each registered kind's example table.
//!
//! A kind gets it by registering: the crate's tests run it over [`register`](super::register)'s
//! kinds, and a kind kept elsewhere calls [`check_sensor_rule_kind`] on itself. The promises:
//! - the example validates;
//! - **determinism on replay**: two rules built from one config give the same observations
//!   for the same readings, so `skynet replay` matches what ran live;
//! - **state**: a rule's memory is its own: two rules from one config fed the same readings
//!   in turn, or interleaved, agree with each other; and it is all in its saved state: rules
//!   restored (through JSON) at a quarter, half or three quarters of the alarm series give
//!   the same observations for the rest as rules that ran on without a restart;
//! - **no output in the normal band**: readings that stay in [`CALM`] never fire;
//! - the example fires at least once on the alarm series, so the checks above are not vacuous.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use skynet_core::{DeviceId, GridId, Kind, OwnerKind, SensorReading};

use super::{SensorPlacement, SensorRuleContext, SensorRuleFamily, SensorRuleSpec, SensorRules};

/// The normal band: an example must stay quiet while readings stay within it.
pub const CALM: (f64, f64) = (19.0, 21.0);

/// One reading every 5 s for 40 minutes.
const READINGS: i64 = 480;
const STEP_S: i64 = 5;

fn at(s: i64) -> DateTime<Utc> {
    // A fixed start, so runs compare to the letter.
    DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000) + chrono::Duration::seconds(s)
}

/// A deterministic wobble within the calm band.
fn calm(n: i64) -> f64 {
    20.0 + 0.8 * ((n * 7 % 11) as f64 / 10.0 - 0.5)
}

/// 40 minutes within [`CALM`].
pub fn calm_series() -> Vec<(DateTime<Utc>, f64)> {
    (0..READINGS).map(|n| (at(n * STEP_S), calm(n))).collect()
}

/// 40 minutes with alarms: calm, a climb to 100 held for minutes, a drop back, a dip to 0
/// held for minutes, then a value jumping between 0 and 100 every reading, then calm.
pub fn alarm_series() -> Vec<(DateTime<Utc>, f64)> {
    (0..READINGS)
        .map(|n| {
            let v = match n {
                0..60 => calm(n),
                60..84 => 20.0 + 80.0 * (n - 59) as f64 / 24.0,
                84..150 => 100.0,
                150..200 => calm(n),
                200..220 => 0.0,
                220..300 => calm(n),
                300..360 => {
                    if n % 2 == 0 {
                        100.0
                    } else {
                        0.0
                    }
                }
                _ => calm(n),
            };
            (at(n * STEP_S), v)
        })
        .collect()
}

fn rules(spec: &SensorRuleSpec) -> SensorRules {
    SensorRules::new(
        SensorPlacement {
            sensor: DeviceId::new("s-1"),
            grid: GridId::new("G-0101"),
            owner: OwnerKind::SafetyProduction,
            // Liveness is not a rule's job; the suite looks at evidence only.
            expected_interval: None,
        },
        vec![spec.clone()],
        at(0),
    )
}

fn reading(at: DateTime<Utc>, value: f64) -> SensorReading {
    SensorReading {
        sensor: DeviceId::new("s-1"),
        quantity: Arc::from("level"),
        value,
        unit: "ppm",
        at,
        received_at: Instant::now(),
    }
}

/// The observations of one reading, as JSON text (so runs compare to the letter).
fn step(rules: &mut SensorRules, at: DateTime<Utc>, value: f64) -> Vec<String> {
    rules
        .apply(&reading(at, value), at)
        .0
        .iter()
        .map(|o| serde_json::to_string(o).unwrap_or_else(|e| e.to_string()))
        .collect()
}

fn run(rules: &mut SensorRules, series: &[(DateTime<Utc>, f64)]) -> Vec<String> {
    series
        .iter()
        .flat_map(|(t, v)| step(rules, *t, *v))
        .collect()
}

/// Runs the suite on one kind; the error says which promise it broke.
pub fn check_sensor_rule_kind(kind: &Kind<SensorRuleFamily>) -> Result<(), String> {
    let name = kind.name;
    let spec = kind
        .parse_example(&SensorRuleContext { sensor: "s-1" })
        .map_err(|e| format!("sensor rule kind `{name}`: its example does not validate: {e}"))?;
    let alarms = alarm_series();

    let first = run(&mut rules(&spec), &alarms);
    if first.is_empty() {
        return Err(format!(
            "sensor rule kind `{name}`: its example never fires on the alarm series; make it \
             fire so the suite checks something"
        ));
    }
    let second = run(&mut rules(&spec), &alarms);
    if first != second {
        return Err(format!(
            "sensor rule kind `{name}`: two runs over the same readings differ (replay would \
             not match live): {} against {} observations",
            first.len(),
            second.len()
        ));
    }

    let (mut a, mut b) = (rules(&spec), rules(&spec));
    let (mut from_a, mut from_b) = (Vec::new(), Vec::new());
    for (t, v) in &alarms {
        from_a.extend(step(&mut a, *t, *v));
        from_b.extend(step(&mut b, *t, *v));
    }
    if from_a != first || from_b != first {
        return Err(format!(
            "sensor rule kind `{name}`: two rules fed the same readings side by side differ \
             from one fed alone (rules share memory)"
        ));
    }

    // A restart anywhere in the series: the saved memory, through its JSON, restored into
    // fresh rules, gives the same observations for the rest as the rules that ran on.
    for cut in [alarms.len() / 4, alarms.len() / 2, alarms.len() * 3 / 4] {
        let mut before = rules(&spec);
        let mut seen = run(&mut before, &alarms[..cut]);
        let saved = serde_json::to_string(&before.state()).map_err(|e| e.to_string())?;
        let mut after = rules(&spec);
        after.restore(serde_json::from_str(&saved).map_err(|e| e.to_string())?);
        seen.extend(run(&mut after, &alarms[cut..]));
        if seen != first {
            return Err(format!(
                "sensor rule kind `{name}`: restored from its saved state after reading {cut} of \
                 {}, it gives other observations than without the restart (is all of its \
                 memory in `SensorCondition::state`?)",
                alarms.len()
            ));
        }
    }

    let silent = run(&mut rules(&spec), &calm_series());
    if !silent.is_empty() {
        return Err(format!(
            "sensor rule kind `{name}`: fired on readings within the normal band {CALM:?}: {}",
            silent[0]
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use skynet_core::Registry;

    use super::*;

    #[test]
    fn every_registered_sensor_rule_kind_passes_the_suite() {
        let mut registry = Registry::default();
        crate::register(&mut registry);
        let kinds = registry.kinds::<SensorRuleFamily>();
        assert_eq!(kinds.len(), 2);
        for kind in kinds {
            if let Err(e) = check_sensor_rule_kind(kind) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn the_series_stay_where_they_say() {
        assert!(
            calm_series()
                .iter()
                .all(|(_, v)| (CALM.0..=CALM.1).contains(v))
        );
        assert!(alarm_series().iter().any(|(_, v)| *v >= 100.0));
    }
}
