//! Fusion rules: `[[risk.fusion]]` tables, one [`Component`] of the [`FusionRuleFamily`] per
//! kind. Kinds: [`all`] (correlated parts make an incident of their own) and
//! [`unconfirmed`] (a sensor's alarm waits for a camera's confirmation).
//!
//! A kind owns its keys and their checks; its validated value is a [`FusionRule`], which
//! the engine evaluates (`engine/fusion.rs`), since fusion works on the engine's memory of
//! recent observations.

use std::sync::{Arc, OnceLock};

use chrono::Duration;
use serde::Deserialize;
use serde::de::Error as _;
use skynet_core::{Erase, Family, FieldError, Registry, RiskLevel, SourceKind, TableError};

pub mod all;
pub mod conformance;
pub mod unconfirmed;

pub use all::{AllConfig, ConditionSettings, OneOrMany};
pub use unconfirmed::UnconfirmedConfig;

/// What a fusion rule's validation may look at: where its table is, so errors name
/// `fusion[<index>].<key>` as they always have.
#[derive(Debug, Clone, Copy)]
pub struct FusionContext {
    /// The table's index in `[[risk.fusion]]`.
    pub index: usize,
}

impl FusionContext {
    /// The full name of one of the rule's keys: `fusion[1].within_s`.
    pub fn field(&self, key: &str) -> String {
        format!("fusion[{}].{key}", self.index)
    }
}

/// The fusion-rule family. Its validated value is the engine's [`FusionRule`].
#[derive(Debug)]
pub struct FusionRuleFamily;

impl Family for FusionRuleFamily {
    const NAME: &'static str = "fusion rule";
    type Context<'a> = FusionContext;
    type Validated = FusionRule;
}

impl Erase<FusionRule> for FusionRuleFamily {
    fn erase(validated: FusionRule) -> Arc<FusionRule> {
        Arc::new(validated)
    }
}

/// This crate's fusion rule kinds.
pub fn register(registry: &mut Registry) {
    registry
        .register::<FusionRuleFamily, AllConfig>()
        .register::<FusionRuleFamily, UnconfirmedConfig>();
}

/// This crate's kinds, for [`FusionSettings`] (read by serde, with no registry at hand).
fn builtin() -> &'static (Registry, Vec<&'static str>) {
    static BUILTIN: OnceLock<(Registry, Vec<&'static str>)> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        let mut registry = Registry::default();
        register(&mut registry);
        let names = registry.names::<FusionRuleFamily>();
        (registry, names)
    })
}

/// `[[risk.fusion]]`: a correlation across sources, `kind` plus the kind's keys. Reading
/// checks the kind and its keys (the serde errors they always gave);
/// [`validate`](Self::validate) checks the values.
#[derive(Debug, Clone)]
pub struct FusionSettings {
    pub kind: String,
    table: toml::Table,
}

impl<'de> Deserialize<'de> for FusionSettings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        let kind = skynet_core::component::take_kind::<D::Error>(&mut table)?;
        let (registry, names) = builtin();
        let Some(found) = registry.kind::<FusionRuleFamily>(&kind) else {
            return Err(D::Error::unknown_variant(&kind, names));
        };
        // Reading the keys is part of deserialising, as it was: a serde error now; the
        // values' verdict waits for `validate`, which knows the table's index.
        if let Err(TableError::Serde(e)) = (found.parse)(table.clone(), &FusionContext { index: 0 })
        {
            return Err(D::Error::custom(e.message()));
        }
        Ok(Self { kind, table })
    }
}

impl FusionSettings {
    /// The rule, validated as the `index`th `[[risk.fusion]]` table.
    pub fn validate(&self, index: usize) -> Result<FusionRule, FieldError> {
        let cx = FusionContext { index };
        let (registry, _) = builtin();
        let kind = registry
            .kind::<FusionRuleFamily>(&self.kind)
            .ok_or_else(|| FieldError::new(cx.field("kind"), "unknown fusion kind"))?;
        match (kind.parse)(self.table.clone(), &cx) {
            Ok(rule) => Ok(FusionRule::clone(&rule)),
            Err(TableError::Field(e)) => Err(e),
            // Deserialising read these keys already.
            Err(TableError::Serde(e)) => Err(FieldError::new(cx.field("kind"), e.message())),
        }
    }
}

/// Where the parts of a fusion may be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FusionScope {
    #[default]
    Cell,
    /// The cell and the cells that touch it.
    Neighbours,
}

/// A validated fusion rule.
#[derive(Debug, Clone, PartialEq)]
pub enum FusionRule {
    All {
        name: String,
        when: Vec<Condition>,
        within: Duration,
        scope: FusionScope,
        category: String,
        level: RiskLevel,
    },
    Unconfirmed {
        name: String,
        sensor: Vec<String>,
        confirm: Vec<String>,
        within: Duration,
        confidence: f32,
    },
}

impl FusionRule {
    pub fn name(&self) -> &str {
        match self {
            Self::All { name, .. } | Self::Unconfirmed { name, .. } => name,
        }
    }

    pub fn within(&self) -> Duration {
        match self {
            Self::All { within, .. } | Self::Unconfirmed { within, .. } => *within,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub categories: Vec<String>,
    pub source: Option<SourceKind>,
}

impl Condition {
    pub fn matches(&self, category: &str, source: SourceKind) -> bool {
        self.source.is_none_or(|s| s == source) && self.categories.iter().any(|c| c == category)
    }
}
