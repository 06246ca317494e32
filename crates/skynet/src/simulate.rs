//! `skynet simulate sensors`: realistic sensor traffic for demos, tests and benchmarks.
//!
//! The fleet is the one `configs/city.toml` registers: CO and methane detectors, a smoke
//! detector and a thermometer publishing SenML on `skynet/sensors/<id>`, and a river gauge
//! publishing a vendor's JSON (`{"level_cm": .., "ts": ms}`) on
//! `vendor/hydro/<id>/telemetry`. Values carry noise and slow drift; scenarios add a gas leak,
//! a stuck sensor and malformed messages.

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::Utc;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use skynet_ingest::sensor::BrokerUrl;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Noise and drift around each sensor's baseline.
    Normal,
    /// As normal, and gas-07's CO rises past 50 ppm 5 s in, stays above it for 30 s, then
    /// falls back.
    Leak,
    /// As normal, but temp-05 repeats one value for ever.
    Stuck,
    /// Only malformed messages, of every kind skynet refuses.
    Malformed,
    /// Leak, stuck and one malformed message in ten, together.
    Mixed,
}

#[derive(Debug, Clone)]
pub struct SimulateOptions {
    pub url: String,
    /// Messages per second, over the whole fleet.
    pub rate: f64,
    /// Seconds; 0 runs until Ctrl-C.
    pub duration: f64,
    pub scenario: Scenario,
    pub qos: QoS,
}

/// One simulated sensor.
struct SimSensor {
    id: &'static str,
    quantity: &'static str,
    unit: &'static str,
    baseline: f64,
    noise: f64,
    /// Units per minute of slow drift (a sine of 10 min period, so it never runs away).
    drift: f64,
    vendor_json: bool,
}

const FLEET: [SimSensor; 5] = [
    SimSensor {
        id: "gas-07",
        quantity: "co",
        unit: "ppm",
        baseline: 4.0,
        noise: 1.5,
        drift: 2.0,
        vendor_json: false,
    },
    SimSensor {
        id: "gas-12",
        quantity: "ch4",
        unit: "%LEL",
        baseline: 1.0,
        noise: 0.4,
        drift: 0.5,
        vendor_json: false,
    },
    SimSensor {
        id: "smoke-03",
        quantity: "smoke",
        unit: "%",
        baseline: 0.5,
        noise: 0.2,
        drift: 0.2,
        vendor_json: false,
    },
    SimSensor {
        id: "temp-05",
        quantity: "temperature",
        unit: "Cel",
        baseline: 22.0,
        noise: 0.3,
        drift: 1.5,
        vendor_json: false,
    },
    SimSensor {
        id: "water-02",
        quantity: "level",
        unit: "cm",
        baseline: 180.0,
        noise: 2.0,
        drift: 10.0,
        vendor_json: true,
    },
];

/// When the leak starts and how long CO stays above the alarm level.
const LEAK_START_S: f64 = 5.0;
const LEAK_HOLD_S: f64 = 30.0;

/// The value `sensor` reads `t` seconds in.
fn value(sensor: &SimSensor, t: f64, scenario: Scenario, rng: &mut fastrand::Rng) -> f64 {
    let leak = matches!(scenario, Scenario::Leak | Scenario::Mixed);
    let stuck = matches!(scenario, Scenario::Stuck | Scenario::Mixed);
    if stuck && sensor.id == "temp-05" {
        return 23.4;
    }
    let drift = sensor.drift * (t / 600.0 * std::f64::consts::TAU).sin();
    let noise = sensor.noise * (rng.f64() * 2.0 - 1.0);
    let mut v = sensor.baseline + drift + noise;
    if leak && sensor.id == "gas-07" && t >= LEAK_START_S {
        let into = t - LEAK_START_S;
        // Rises over 3 s to about 100 ppm, holds, then decays back within 10 s.
        v += if into < 3.0 {
            into / 3.0 * 95.0
        } else if into < 3.0 + LEAK_HOLD_S {
            95.0 + 10.0 * (into * 0.7).sin()
        } else {
            (95.0 - (into - 3.0 - LEAK_HOLD_S) * 12.0).max(0.0)
        };
    }
    v.max(0.0)
}

fn topic(sensor: &SimSensor) -> String {
    if sensor.vendor_json {
        format!("vendor/hydro/{}/telemetry", sensor.id)
    } else {
        format!("skynet/sensors/{}", sensor.id)
    }
}

fn payload(sensor: &SimSensor, v: f64) -> String {
    let now = Utc::now();
    if sensor.vendor_json {
        format!(r#"{{"level_cm":{v:.1},"ts":{}}}"#, now.timestamp_millis())
    } else {
        let t = now.timestamp_micros() as f64 / 1e6;
        format!(
            r#"[{{"bn":"{}/","bt":{t:.6},"bu":"{}","n":"{}","v":{v:.3}}}]"#,
            sensor.id, sensor.unit, sensor.quantity
        )
    }
}

/// Malformed messages of every kind skynet refuses, in turn.
fn malformed(n: u64) -> (String, String) {
    let now = Utc::now().timestamp();
    let t = "skynet/sensors/gas-07".to_string();
    match n % 10 {
        0 => (t, r#"[{"bn":"gas-07/","n":"co","v":12"#.into()),
        1 => (t, r#"[{"bn":"gas-07/","n":"co","v":"twelve"}]"#.into()),
        2 => (t, r#"[{"bn":"gas-07/","n":"co"}]"#.into()),
        3 => (t, r#"[{"bn":"gas-07/","n":"co","v":-40}]"#.into()),
        4 => (
            t,
            r#"[{"bn":"gas-07/","n":"co","u":"furlong","v":3}]"#.into(),
        ),
        5 => (
            t,
            format!(
                r#"[{{"bn":"gas-07/","n":"co","v":3,"bt":{}}}]"#,
                now + 86_400
            ),
        ),
        6 => (
            t,
            format!(
                r#"[{{"bn":"gas-07/","n":"co","v":3,"bt":{}}}]"#,
                now - 30 * 86_400
            ),
        ),
        7 => (
            "skynet/sensors/ghost-99".into(),
            r#"[{"n":"co","v":3}]"#.into(),
        ),
        8 => (
            "vendor/hydro/water-02/telemetry".into(),
            r#"{"level_cm":"NaN"}"#.into(),
        ),
        _ => (t, "\u{0}\u{1}not json at all".into()),
    }
}

/// Publishes until the duration has passed (or Ctrl-C); returns how many messages were sent.
pub fn run(options: &SimulateOptions) -> Result<u64> {
    anyhow::ensure!(
        options.rate.is_finite() && options.rate > 0.0 && options.rate <= 1_000_000.0,
        "--rate must be between 0 and 1000000 messages per second, got {}",
        options.rate
    );
    anyhow::ensure!(
        options.duration.is_finite() && options.duration >= 0.0,
        "--duration must be 0 (until Ctrl-C) or a number of seconds, got {}",
        options.duration
    );
    let broker = BrokerUrl::parse(&options.url).map_err(|m| anyhow::anyhow!("--url {m}"))?;
    anyhow::ensure!(
        !broker.tls,
        "--url must be mqtt://host:port (the simulator speaks plain MQTT)"
    );
    let mut mqtt = MqttOptions::new(
        format!("skynet-sim-{}", std::process::id()),
        broker.host,
        broker.port,
    );
    mqtt.set_keep_alive(Duration::from_secs(30));
    if let Some(c) = broker.credentials {
        mqtt.set_credentials(c.user, c.password.expose());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stop = skynet_core::Shutdown::new();
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.flag())?;
    }
    runtime.block_on(publish(options.clone(), mqtt, stop))
}

async fn publish(
    options: SimulateOptions,
    mqtt: MqttOptions,
    stop: skynet_core::Shutdown,
) -> Result<u64> {
    let (client, mut eventloop) = AsyncClient::new(mqtt, 4096);
    let connection = tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            match eventloop.poll().await {
                Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures >= 20 {
                        return Err(anyhow::anyhow!("the broker is unreachable: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    });
    let mut rng = fastrand::Rng::with_seed(7);
    let started = Instant::now();
    // Messages go out in small batches every 10 ms (or one by one at low rates).
    let period = Duration::from_secs_f64((1.0 / options.rate).max(0.01));
    let per_tick = (options.rate * period.as_secs_f64()).round().max(1.0) as u64;
    let mut ticker = tokio::time::interval(period);
    let (mut sent, mut next) = (0u64, 0usize);
    eprintln!(
        "simulating {} sensors, scenario {:?}, {} messages/s{}",
        FLEET.len(),
        options.scenario,
        options.rate,
        if options.duration > 0.0 {
            format!(" for {} s", options.duration)
        } else {
            " until Ctrl-C".into()
        }
    );
    loop {
        ticker.tick().await;
        let t = started.elapsed().as_secs_f64();
        if stop.is_triggered()
            || (options.duration > 0.0 && t >= options.duration)
            || connection.is_finished()
        {
            break;
        }
        for _ in 0..per_tick {
            let is_malformed = match options.scenario {
                Scenario::Malformed => true,
                Scenario::Mixed => sent % 10 == 9,
                _ => false,
            };
            let (topic, body) = if is_malformed {
                malformed(sent)
            } else {
                let sensor = &FLEET[next % FLEET.len()];
                next += 1;
                (
                    topic(sensor),
                    payload(sensor, value(sensor, t, options.scenario, &mut rng)),
                )
            };
            client.publish(topic, options.qos, false, body).await?;
            sent += 1;
        }
    }
    let _ = client.disconnect().await;
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), connection).await {
        return Err(e);
    }
    eprintln!(
        "sent {sent} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leak_crosses_50_ppm_for_about_30_s_and_normal_never_does() {
        let mut rng = fastrand::Rng::with_seed(1);
        let gas = &FLEET[0];
        let above: Vec<f64> = (0..600)
            .map(|i| i as f64 * 0.1)
            .filter(|t| value(gas, *t, Scenario::Leak, &mut rng) > 50.0)
            .collect();
        let span = above.last().unwrap() - above.first().unwrap();
        assert!((30.0..40.0).contains(&span), "{span}");
        assert!((0..6000).all(|i| value(gas, i as f64 * 0.1, Scenario::Normal, &mut rng) < 15.0));
    }

    #[test]
    fn payloads_are_senml_or_the_vendor_json() {
        let p = payload(&FLEET[0], 12.0);
        assert!(
            p.starts_with(r#"[{"bn":"gas-07/""#) && p.contains(r#""n":"co""#),
            "{p}"
        );
        assert!(payload(&FLEET[4], 180.0).starts_with(r#"{"level_cm":180.0"#));
        assert_eq!(topic(&FLEET[4]), "vendor/hydro/water-02/telemetry");
    }
}
