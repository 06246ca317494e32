//! `unconfirmed`: a sensor's alarm (`sensor` categories) in a cell whose cameras saw nothing
//! (`confirm` categories, or anything when empty) within `within_s`: its confidence is
//! multiplied by `confidence` and its incident is flagged for verification.

use serde::Deserialize;
use skynet_core::{Component, FieldError};

use super::{FusionContext, FusionRule, FusionRuleFamily};
use crate::settings::{category_name, seconds, unit};

/// An `unconfirmed` rule's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnconfirmedConfig {
    name: String,
    sensor: Vec<String>,
    #[serde(default)]
    confirm: Vec<String>,
    within_s: f64,
    confidence: f32,
}

impl Component<FusionRuleFamily> for UnconfirmedConfig {
    const KIND: &'static str = "unconfirmed";
    const EXAMPLE: &'static str =
        "name = \"smoke-unseen\"\nsensor = [\"smoke\"]\nwithin_s = 120\nconfidence = 0.5";
    type Validated = FusionRule;

    fn validate(self, cx: &FusionContext) -> Result<FusionRule, FieldError> {
        let field = |key: &str| cx.field(key);
        if self.sensor.is_empty() {
            return Err(FieldError::new(
                field("sensor"),
                "name the sensor categories to verify",
            ));
        }
        for c in self.sensor.iter().chain(&self.confirm) {
            category_name(&field("sensor"), c)?;
        }
        Ok(FusionRule::Unconfirmed {
            within: seconds(&field("within_s"), self.within_s)?,
            confidence: unit(&field("confidence"), self.confidence, false)?,
            name: self.name,
            sensor: self.sensor,
            confirm: self.confirm,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::RiskSettings;

    /// `[[risk.fusion]]` reads as it did when it was one serde enum.
    #[test]
    fn fusion_tables_read_as_before() {
        let read = |text: &str| {
            toml::from_str::<RiskSettings>(text)
                .map(|_| ())
                .unwrap_err()
        };
        let e = read("[[fusion]]\nkind = \"any\"\nname = \"x\"");
        assert!(
            e.message()
                .contains("unknown variant `any`, expected `all` or `unconfirmed`"),
            "{e}"
        );
        let e = read(
            "[[fusion]]\nkind = \"unconfirmed\"\nname = \"x\"\nsensor = [\"a\"]\nwithin_s = 1\nconfidence = 0.5\nwithin = 2",
        );
        assert!(
            e.message().contains(
                "unknown field `within`, expected one of `name`, `sensor`, `confirm`, `within_s`, `confidence`"
            ),
            "{e}"
        );
        let e = read("[[fusion]]\nkind = \"unconfirmed\"\nname = \"x\"\nwithin_s = 1");
        assert!(e.message().contains("missing field `sensor`"), "{e}");
        let settings: RiskSettings = toml::from_str(
            "[[fusion]]\nkind = \"unconfirmed\"\nname = \"x\"\nsensor = [\"a\"]\nwithin_s = 0\nconfidence = 0.5",
        )
        .unwrap();
        let e = settings.validate("n").unwrap_err();
        assert_eq!(e.field, "fusion[0].within_s");
        assert!(e.message.starts_with("`fusion[0].within_s` must be"), "{e}");
    }
}
