//! `all`: every condition met within `within_s` in the cell (or its neighbours): an incident
//! of `category` at `level`, listing the observations that met them.

use serde::Deserialize;
use skynet_core::{Component, FieldError, RiskLevel, SourceKind};

use super::{Condition, FusionContext, FusionRule, FusionRuleFamily, FusionScope};
use crate::settings::{category_name, seconds};

/// An `all` rule's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllConfig {
    name: String,
    when: Vec<ConditionSettings>,
    within_s: f64,
    #[serde(default)]
    scope: FusionScope,
    category: String,
    level: RiskLevel,
}

/// One condition of an `all` fusion: an observation of one of `category`, from `source`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionSettings {
    pub category: OneOrMany,
    pub source: Option<SourceKind>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

impl Component<FusionRuleFamily> for AllConfig {
    const KIND: &'static str = "all";
    const EXAMPLE: &'static str = "name = \"person-exposed-to-gas\"\n\
        when = [{ category = \"gas_leak\", source = \"sensor\" }, { category = \"person_present\", source = \"camera\" }]\n\
        within_s = 300\ncategory = \"person_exposed_to_gas\"\nlevel = \"I\"";
    type Validated = FusionRule;

    fn validate(self, cx: &FusionContext) -> Result<FusionRule, FieldError> {
        let field = |key: &str| cx.field(key);
        if self.when.len() < 2 {
            return Err(FieldError::new(
                field("when"),
                "a fusion needs at least two conditions in `when`",
            ));
        }
        category_name(&field("category"), &self.category)?;
        let when = self
            .when
            .into_iter()
            .map(|c| {
                let categories = c.category.into_vec();
                if categories.is_empty() {
                    return Err(FieldError::new(
                        field("when"),
                        "each condition names at least one category",
                    ));
                }
                for c in &categories {
                    category_name(&field("when"), c)?;
                }
                Ok(Condition {
                    categories,
                    source: c.source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(FusionRule::All {
            within: seconds(&field("within_s"), self.within_s)?,
            name: self.name,
            when,
            scope: self.scope,
            category: self.category,
            level: self.level,
        })
    }
}
