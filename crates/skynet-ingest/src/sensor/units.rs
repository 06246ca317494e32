//! Units and sensor kinds: every reading is stored in its kind's canonical unit, the SenML
//! symbol where RFC 8428 and RFC 8798 register one (`Cel`, `m`, `ppm`, `%RH`, `Pa`, `dB`).

use serde::{Deserialize, Serialize};

/// A unit a payload may name, with its conversion to the canonical one.
struct UnitSymbol {
    symbols: &'static [&'static str],
    canonical: &'static str,
    /// `canonical = value * scale + offset`.
    scale: f64,
    offset: f64,
}

const UNITS: &[UnitSymbol] = &[
    UnitSymbol {
        symbols: &["ppm"],
        canonical: "ppm",
        scale: 1.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["ppb"],
        canonical: "ppm",
        scale: 1e-3,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["%LEL", "%lel", "LEL%", "%EL_LEL"],
        canonical: "%LEL",
        scale: 1.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["Cel", "°C", "degC", "C", "celsius"],
        canonical: "Cel",
        scale: 1.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["K"],
        canonical: "Cel",
        scale: 1.0,
        offset: -273.15,
    },
    UnitSymbol {
        symbols: &["°F", "degF", "F", "fahrenheit"],
        canonical: "Cel",
        scale: 5.0 / 9.0,
        offset: -32.0 * 5.0 / 9.0,
    },
    UnitSymbol {
        symbols: &["m"],
        canonical: "m",
        scale: 1.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["cm"],
        canonical: "m",
        scale: 0.01,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["mm"],
        canonical: "m",
        scale: 0.001,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["ft"],
        canonical: "m",
        scale: 0.3048,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["%"],
        canonical: "%",
        scale: 1.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["/"],
        canonical: "%",
        scale: 100.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["%RH"],
        canonical: "%RH",
        scale: 1.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["Pa"],
        canonical: "Pa",
        scale: 1.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["hPa"],
        canonical: "Pa",
        scale: 100.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["kPa"],
        canonical: "Pa",
        scale: 1000.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["bar"],
        canonical: "Pa",
        scale: 1e5,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["dB", "dBA", "dB(A)"],
        canonical: "dB",
        scale: 1.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["ue", "µε", "με", "microstrain"],
        canonical: "ue",
        scale: 1.0,
        offset: 0.0,
    },
    UnitSymbol {
        symbols: &["1", "bool"],
        canonical: "1",
        scale: 1.0,
        offset: 0.0,
    },
];

/// Converts `value` in `unit` to `canonical`. `None` when the unit is unknown or measures
/// something else (a temperature sent to a gas sensor).
pub fn convert(value: f64, unit: &str, canonical: &str) -> Option<f64> {
    let unit = unit.trim();
    let u = UNITS.iter().find(|u| u.symbols.contains(&unit))?;
    (u.canonical == canonical).then_some(value * u.scale + u.offset)
}

/// Whether a unit symbol is known at all (for config validation).
pub fn is_known_unit(unit: &str) -> bool {
    UNITS.iter().any(|u| u.symbols.contains(&unit.trim()))
}

/// What a sensor measures. Each kind has a canonical unit, the name its readings carry by
/// default, and the physical range a working sensor can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SensorKind {
    /// Carbon monoxide, ppm.
    GasCo,
    /// Methane, % of the lower explosive limit.
    GasCh4,
    /// Hydrogen sulphide, ppm.
    GasH2s,
    /// Smoke obscuration, % (a detector's alarm as true/false is 100/0).
    Smoke,
    /// Temperature, Cel.
    Temperature,
    /// Water level, m.
    WaterLevel,
    /// Strain, microstrain.
    Strain,
    /// Sound level, dB.
    Noise,
    /// Relative humidity, %RH.
    Humidity,
    /// Pressure, Pa.
    Pressure,
    /// A sensor skynet did not know, registered when `unknown_sensors = "register"`: any
    /// finite value in any unit, and no rules.
    Unassigned,
}

impl SensorKind {
    pub const ALL: [SensorKind; 11] = [
        Self::GasCo,
        Self::GasCh4,
        Self::GasH2s,
        Self::Smoke,
        Self::Temperature,
        Self::WaterLevel,
        Self::Strain,
        Self::Noise,
        Self::Humidity,
        Self::Pressure,
        Self::Unassigned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::GasCo => "gas_co",
            Self::GasCh4 => "gas_ch4",
            Self::GasH2s => "gas_h2s",
            Self::Smoke => "smoke",
            Self::Temperature => "temperature",
            Self::WaterLevel => "water_level",
            Self::Strain => "strain",
            Self::Noise => "noise",
            Self::Humidity => "humidity",
            Self::Pressure => "pressure",
            Self::Unassigned => "unassigned",
        }
    }

    /// The unit readings are stored in.
    pub fn canonical_unit(self) -> &'static str {
        match self {
            Self::GasCo | Self::GasH2s => "ppm",
            Self::GasCh4 => "%LEL",
            Self::Smoke => "%",
            Self::Temperature => "Cel",
            Self::WaterLevel => "m",
            Self::Strain => "ue",
            Self::Noise => "dB",
            Self::Humidity => "%RH",
            Self::Pressure => "Pa",
            Self::Unassigned => "",
        }
    }

    /// The record name (after the sensor's own prefix) its readings carry by default.
    pub fn default_quantity(self) -> &'static str {
        match self {
            Self::GasCo => "co",
            Self::GasCh4 => "ch4",
            Self::GasH2s => "h2s",
            Self::Smoke => "smoke",
            Self::Temperature => "temperature",
            Self::WaterLevel => "level",
            Self::Strain => "strain",
            Self::Noise => "noise",
            Self::Humidity => "humidity",
            Self::Pressure => "pressure",
            Self::Unassigned => "",
        }
    }

    /// What a working sensor of this kind can report, in the canonical unit. A value outside
    /// is a fault (or a unit mix-up), never a reading.
    pub fn physical_range(self) -> (f64, f64) {
        match self {
            Self::GasCo => (0.0, 10_000.0),
            Self::GasH2s => (0.0, 2_000.0),
            Self::GasCh4 | Self::Smoke | Self::Humidity => (0.0, 100.0),
            Self::Temperature => (-80.0, 1_200.0),
            Self::WaterLevel => (-100.0, 1_000.0),
            Self::Strain => (-100_000.0, 100_000.0),
            Self::Noise => (0.0, 200.0),
            Self::Pressure => (0.0, 1e8),
            Self::Unassigned => (f64::MIN, f64::MAX),
        }
    }

    /// Whether a true/false record (`vb`) is a reading of this kind (as 100 or 0).
    pub fn takes_booleans(self) -> bool {
        matches!(self, Self::Smoke)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_the_canonical_unit_or_refuses() {
        assert_eq!(convert(2500.0, "ppb", "ppm"), Some(2.5));
        assert_eq!(convert(120.0, "cm", "m"), Some(1.2));
        assert!((convert(212.0, "°F", "Cel").unwrap() - 100.0).abs() < 1e-9);
        assert!((convert(273.15, "K", "Cel").unwrap()).abs() < 1e-9);
        assert_eq!(convert(12.0, "Cel", "ppm"), None);
        assert_eq!(convert(12.0, "furlong", "m"), None);
        assert_eq!(convert(0.5, "/", "%"), Some(50.0));
    }

    #[test]
    fn every_kind_has_a_known_unit_and_a_sane_range() {
        for kind in SensorKind::ALL {
            let (lo, hi) = kind.physical_range();
            assert!(lo < hi, "{kind:?}");
            if kind != SensorKind::Unassigned {
                assert!(is_known_unit(kind.canonical_unit()), "{kind:?}");
                assert!(!kind.default_quantity().is_empty());
            }
        }
    }
}
