use super::*;
use std::sync::Arc;
use std::time::Instant;

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
}

fn rule(toml_text: &str) -> SensorRuleSpec {
    let s: SensorRuleSettings = toml::from_str(toml_text).unwrap();
    s.validate().unwrap()
}

fn gas(rules: Vec<SensorRuleSpec>) -> SensorRules {
    SensorRules::new(
        SensorPlacement {
            sensor: DeviceId::new("gas-07"),
            grid: GridId::new("G-0201"),
            owner: OwnerKind::SafetyProduction,
            expected_interval: Some(Duration::seconds(30)),
        },
        rules,
        t(0),
    )
}

fn reading(s: i64, value: f64) -> SensorReading {
    SensorReading {
        sensor: DeviceId::new("gas-07"),
        quantity: Arc::from("co"),
        value,
        unit: "ppm",
        at: t(s),
        received_at: Instant::now(),
    }
}

fn feed(rules: &mut SensorRules, series: &[(i64, f64)]) -> Vec<i64> {
    series
        .iter()
        .flat_map(|(s, v)| rules.apply(&reading(*s, *v), t(*s)).0)
        .map(|o| (o.at - t(0)).num_seconds())
        .collect()
}

const CO: &str = "kind = \"threshold\"\ncategory = \"gas_leak\"\nabove = 50.0\nclear = 40.0\nfor_s = 10\nrepeat_s = 5";

#[test]
fn threshold_waits_for_its_duration_then_repeats_and_clears_with_hysteresis() {
    let mut rules = gas(vec![rule(CO)]);
    // Above 50 from t=1; 10 s later it is evidence; then every 5 s while above 40.
    let series: Vec<(i64, f64)> = (0..=30)
        .map(|s| {
            (
                s,
                if s == 0 {
                    10.0
                } else if s < 25 {
                    60.0
                } else {
                    45.0
                },
            )
        })
        .collect();
    assert_eq!(feed(&mut rules, &series), vec![11, 16, 21, 26]);
    // 45 is below the limit but above `clear`: still active. 39 clears it.
    assert_eq!(
        feed(&mut rules, &[(31, 39.0), (40, 45.0), (60, 45.0)]),
        Vec::<i64>::new()
    );
}

#[test]
fn a_short_spike_is_not_a_leak() {
    let mut rules = gas(vec![rule(CO)]);
    let spike = [
        (0, 60.0),
        (5, 70.0),
        (9, 55.0),
        (10, 30.0),
        (12, 60.0),
        (21, 61.0),
    ];
    assert_eq!(feed(&mut rules, &spike), Vec::<i64>::new());
    assert_eq!(feed(&mut rules, &[(22, 61.0)]), vec![22]);
}

#[test]
fn flapping_is_suppressed_until_it_settles() {
    let spec = rule(
        "kind = \"threshold\"\ncategory = \"gas_leak\"\nabove = 50.0\nflap_changes = 4\nflap_window_s = 60",
    );
    let mut rules = gas(vec![spec]);
    let mut series = Vec::new();
    for i in 0..10 {
        series.push((i * 2, 60.0));
        series.push((i * 2 + 1, 10.0));
    }
    // Two alarms (changes 1 and 3) before the 4th change marks it flapping.
    assert_eq!(feed(&mut rules, &series), vec![0, 2]);
    // Quiet for a long time, then a real alarm is evidence again.
    assert_eq!(feed(&mut rules, &[(300, 10.0), (400, 60.0)]), vec![400]);
}

/// Saves `rules`' memory through JSON into fresh rules of the same specs: a restart.
fn restarted(rules: &SensorRules, specs: Vec<SensorRuleSpec>) -> SensorRules {
    let text = serde_json::to_string(&rules.state()).unwrap();
    let mut fresh = gas(specs);
    fresh.restore(serde_json::from_str(&text).unwrap());
    fresh
}

#[test]
fn a_for_s_streak_goes_on_across_a_restart() {
    let mut rules = gas(vec![rule(CO)]);
    // Above the limit from t=2; at t=8 the process restarts.
    assert!(feed(&mut rules, &[(0, 10.0), (2, 60.0), (5, 60.0), (8, 60.0)]).is_empty());
    let mut after = restarted(&rules, vec![rule(CO)]);
    // 10 s after the streak began, not 10 s after the restart.
    assert_eq!(feed(&mut after, &[(10, 60.0), (12, 60.0)]), vec![12]);
    // The active alarm and its last evidence survive too: `repeat_s` (5 s) counts from 12.
    let mut again = restarted(&after, vec![rule(CO)]);
    assert_eq!(feed(&mut again, &[(14, 60.0), (17, 60.0)]), vec![17]);
    // Nothing to keep: no state at all.
    assert!(gas(vec![rule(CO)]).state().is_empty());
    // Garbage or another kind's memory is ignored: the rule starts afresh.
    let mut odd = gas(vec![rule(CO)]);
    odd.restore(
        [(
            "threshold".to_string(),
            serde_json::json!({"condition": [1, 2]}),
        )]
        .into_iter()
        .collect(),
    );
    assert!(feed(&mut odd, &[(0, 60.0), (5, 60.0)]).is_empty());
}

#[test]
fn flapping_and_rate_windows_survive_a_restart() {
    let flappy = "kind = \"threshold\"\ncategory = \"gas_leak\"\nabove = 50.0\nflap_changes = 4\nflap_window_s = 60";
    let mut rules = gas(vec![rule(flappy)]);
    let series: Vec<(i64, f64)> = (0..10)
        .flat_map(|i| [(i * 2, 60.0), (i * 2 + 1, 10.0)])
        .collect();
    assert_eq!(feed(&mut rules, &series), vec![0, 2]);
    let mut after = restarted(&rules, vec![rule(flappy)]);
    // Still flapping after the restart: suppressed.
    assert!(feed(&mut after, &[(20, 60.0)]).is_empty());

    let river = "kind = \"rate_of_change\"\ncategory = \"water_rising\"\nrise = 0.5\nwindow_s = 60";
    let mut rules = gas(vec![rule(river)]);
    assert!(feed(&mut rules, &[(0, 1.0), (10, 1.2), (20, 1.4)]).is_empty());
    let mut after = restarted(&rules, vec![rule(river)]);
    // The rise is measured from the reading before the restart.
    assert_eq!(feed(&mut after, &[(30, 1.6)]), vec![30]);
}

#[test]
fn rate_of_change_sees_a_rising_river() {
    let spec = rule(
        "kind = \"rate_of_change\"\ncategory = \"water_rising\"\nrise = 0.5\nwindow_s = 60\nrepeat_s = 30",
    );
    let mut rules = gas(vec![spec]);
    let series: Vec<(i64, f64)> = (0..20).map(|i| (i * 10, 1.0 + 0.02 * i as f64)).collect();
    assert!(feed(&mut rules, &series).is_empty());
    let flood: Vec<(i64, f64)> = (20..30)
        .map(|i| (i * 10, 1.4 + 0.2 * (i - 20) as f64))
        .collect();
    assert_eq!(feed(&mut rules, &flood), vec![230, 260, 290]);
}

#[test]
fn a_silent_sensor_goes_offline_once_and_recovers() {
    let mut rules = gas(vec![]);
    // The first reading after a start closes an offline incident left open before it.
    assert!(matches!(
        rules.apply(&reading(0, 1.0), t(0)).1,
        Some(Liveness::Recovered { .. })
    ));
    assert!(rules.apply(&reading(1, 1.0), t(1)).1.is_none());
    assert!(rules.check_liveness(t(30)).is_none());
    let Some(Liveness::Offline(fault)) = rules.check_liveness(t(32)) else {
        panic!()
    };
    assert_eq!(
        (fault.category.as_str(), fault.source, fault.since),
        (SENSOR_OFFLINE, SourceKind::Sensor, t(1))
    );
    assert!(rules.check_liveness(t(60)).is_none());
    let (_, back) = rules.apply(&reading(61, 1.0), t(61));
    assert!(matches!(back, Some(Liveness::Recovered { .. })));
    assert!(rules.check_liveness(t(80)).is_none());
}

#[test]
fn settings_errors_name_their_field() {
    let err = |text: &str| {
        toml::from_str::<SensorRuleSettings>(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .field
    };
    assert_eq!(err("kind = \"threshold\"\ncategory = \"x\""), "above");
    assert_eq!(
        err("kind = \"threshold\"\ncategory = \"x\"\nabove = 5.0\nclear = 6.0"),
        "clear"
    );
    assert_eq!(
        err("kind = \"threshold\"\ncategory = \"x\"\nabove = 5.0\nrise = 1.0"),
        "rise"
    );
    assert_eq!(err("kind = \"rate_of_change\"\ncategory = \"x\""), "rise");
    assert_eq!(
        err("kind = \"rate_of_change\"\ncategory = \"x\"\nrise = -1.0"),
        "rise"
    );
    assert_eq!(
        err("kind = \"threshold\"\ncategory = \"x y\"\nabove = 1.0"),
        "category"
    );
    assert_eq!(
        err("kind = \"threshold\"\ncategory = \"x\"\nabove = 1.0\nweight = 2.0"),
        "weight"
    );
}

/// The binary reads `[[sensors.rules]]` through [`SensorRuleSettings`]; its messages are
/// the ones the flat table gave before kinds had their own modules.
#[test]
fn settings_read_as_the_flat_table_did() {
    let read = |text: &str| {
        let table: toml::Table = toml::from_str(text).unwrap();
        toml::Value::Table(table).try_into::<SensorRuleSettings>()
    };
    let e = read("kind = \"treshold\"\ncategory = \"x\"").unwrap_err();
    assert_eq!(
        e.message(),
        "unknown variant `treshold`, expected `threshold` or `rate_of_change`"
    );
    let e = read("kind = \"threshold\"\ncategory = \"x\"\nabove = 1.0\nabvoe = 2.0").unwrap_err();
    assert_eq!(
        e.message(),
        "unknown field `abvoe`, expected one of `kind`, `name`, `category`, `weight`, \
         `repeat_s`, `above`, `below`, `clear`, `for_s`, `flap_changes`, `flap_window_s`, \
         `rise`, `fall`, `window_s`"
    );
    let e = read("kind = \"threshold\"\nabove = 1.0").unwrap_err();
    assert_eq!(e.message(), "missing field `category`");
    let e = read("kind = \"threshold\"\ncategory = \"x\"\nabove = \"high\"").unwrap_err();
    assert!(
        e.message().starts_with("invalid type: string \"high\""),
        "{e}"
    );

    let spec = read("kind = \"rate_of_change\"\ncategory = \"x\"\nrise = 1.0\nbelow = 2.0")
        .unwrap()
        .validate()
        .unwrap_err();
    assert_eq!(
        spec.message,
        "`below` does not apply to a `rate_of_change` rule"
    );
    // Keys another kind has, with defaults, were accepted and ignored, and still are.
    let spec = read("kind = \"rate_of_change\"\ncategory = \"x\"\nrise = 1.0\nfor_s = 3")
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(
        (spec.name.as_str(), spec.kind),
        ("rate_of_change", "rate_of_change")
    );
    assert_eq!(spec.repeat, Duration::seconds(10));
}
