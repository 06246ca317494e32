//! The one contract every component kind follows, Vector style.
//!
//! A *family* is a set of kinds configured alike: camera sources, sensor payload formats,
//! camera rules, sensor rules, fusion rules, model families, sinks, case-status intakes.
//! A *kind* is one member (`jsonl`, `zone_intrusion`, `senml`). Every kind:
//!
//! 1. is a config type read from its table (`kind` plus its own keys; keys its family
//!    shares live in one struct of that family);
//! 2. validates purely: [`Component::validate`] takes the config by value and a context
//!    (no files opened, no network, no credentials used) and returns a *validated* value or a
//!    [`FieldError`] naming the key, so `skynet check` can point at `file:line:column`;
//! 3. builds from the validated value with a build context: each family names its build
//!    trait (`BuildSink::build(&self, &SinkBuildContext)`), which the validated type
//!    implements. A config that was never validated cannot be built: there is no value to
//!    build from.
//!
//! Each stage crate defines its families and exports `register(&mut Registry)` listing its
//! kinds; the binary calls those and looks kinds up here by family and name. A new kind is
//! one module plus one line in its own crate's `register`.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::FieldError;

/// A family of component kinds configured alike.
pub trait Family: 'static {
    /// What one member is called in messages: "sink", "camera rule".
    const NAME: &'static str;
    /// What validation may look at. Pure data: validation opens no file and no socket.
    type Context<'a>;
    /// A validated config of any kind of this family: the family's build trait object
    /// (`dyn BuildSink`).
    type Validated: ?Sized + Send + Sync + 'static;
}

/// One kind of a family: its config, read from the kind's table, and its pure validation.
pub trait Component<F: Family>: DeserializeOwned + Send + 'static {
    /// The `kind` string that selects it in a config.
    const KIND: &'static str;
    /// A small valid table of this kind (TOML, without `kind`), for the docs and for the
    /// family's conformance suite, which every registered kind must pass.
    const EXAMPLE: &'static str;
    /// What validation produces and `build` uses: checked, normalised, ready to build.
    type Validated: Send + Sync + 'static;
    /// Pure checks and normalisation; errors name the field (`reconnect.max_backoff_s`,
    /// `rules[1].zone`) and never hold a secret.
    fn validate(self, cx: &F::Context<'_>) -> Result<Self::Validated, FieldError>;
}

/// How a family holds a kind's validated value: as its build trait object. Each family
/// implements it once, for every type that implements its build trait.
pub trait Erase<V>: Family {
    fn erase(validated: V) -> Arc<Self::Validated>;
}

/// Why a kind refused its table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// Wrong type, unknown key, missing key.
    #[error("{0}")]
    Serde(#[from] toml::de::Error),
    /// The kind's own validation.
    #[error("{0}")]
    Field(#[from] FieldError),
}

/// Reads and validates one table (without `kind`) as a kind of family `F`.
pub type Parse<F> = for<'a, 'b> fn(
    toml::Table,
    &'b <F as Family>::Context<'a>,
) -> Result<Arc<<F as Family>::Validated>, TableError>;

/// A registered kind: its name, its example table and how to read it.
pub struct Kind<F: Family> {
    pub name: &'static str,
    pub example: &'static str,
    pub parse: Parse<F>,
}

impl<F: Family> Clone for Kind<F> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<F: Family> Copy for Kind<F> {}

impl<F: Family> fmt::Debug for Kind<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} kind `{}`", F::NAME, self.name)
    }
}

impl<F: Family> Kind<F> {
    /// The kind `T`.
    pub fn of<T>() -> Self
    where
        T: Component<F>,
        F: Erase<T::Validated>,
    {
        Self {
            name: T::KIND,
            example: T::EXAMPLE,
            parse: parse_table::<F, T>,
        }
    }

    /// The kind's example table, read and validated as a config would be.
    pub fn parse_example(&self, cx: &F::Context<'_>) -> Result<Arc<F::Validated>, TableError> {
        (self.parse)(toml::from_str(self.example)?, cx)
    }
}

fn parse_table<F, T>(
    table: toml::Table,
    cx: &F::Context<'_>,
) -> Result<Arc<F::Validated>, TableError>
where
    T: Component<F>,
    F: Erase<T::Validated>,
{
    let config: T = toml::Value::Table(table).try_into()?;
    Ok(F::erase(config.validate(cx)?))
}

/// Takes the `kind` key out of a table read by serde, for a family whose table is read
/// inside a `Deserialize` impl: missing or not a string is the same serde error as a derived
/// enum's tag gives.
pub fn take_kind<E: serde::de::Error>(table: &mut toml::Table) -> Result<String, E> {
    match table.remove("kind") {
        None => Err(E::missing_field("kind")),
        Some(toml::Value::String(kind)) => Ok(kind),
        Some(other) => Err(E::invalid_type(
            serde::de::Unexpected::Other(other.type_str()),
            &"variant identifier",
        )),
    }
}

/// Every kind of every family, filled by the stage crates' `register` functions.
#[derive(Default)]
pub struct Registry {
    families: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("families", &self.families.len())
            .finish()
    }
}

impl Registry {
    /// Adds the kind `T` to family `F`.
    ///
    /// # Panics
    /// When `F` already has a kind of that name: two crates claiming one `kind` string is a
    /// programming error that no config could resolve.
    pub fn register<F, T>(&mut self) -> &mut Self
    where
        T: Component<F>,
        F: Family + Erase<T::Validated>,
    {
        self.add(Kind::<F>::of::<T>())
    }

    /// Adds a kind built by hand (a kind whose parsing is not a plain [`Component`]).
    ///
    /// # Panics
    /// As [`register`](Self::register).
    pub fn add<F: Family>(&mut self, kind: Kind<F>) -> &mut Self {
        let kinds = self
            .families
            .entry(TypeId::of::<F>())
            .or_insert_with(|| Box::new(Vec::<Kind<F>>::new()))
            .downcast_mut::<Vec<Kind<F>>>()
            .expect("a family's kinds are stored under its own type id");
        assert!(
            !kinds.iter().any(|k| k.name == kind.name),
            "{} kind `{}` is registered twice",
            F::NAME,
            kind.name
        );
        kinds.push(kind);
        self
    }

    /// The kinds of family `F`, in registration order (the first is the family's default
    /// where a table may leave `kind` out).
    pub fn kinds<F: Family>(&self) -> &[Kind<F>] {
        self.families
            .get(&TypeId::of::<F>())
            .and_then(|k| k.downcast_ref::<Vec<Kind<F>>>())
            .map_or(&[], Vec::as_slice)
    }

    /// The kind of family `F` named `name`.
    pub fn kind<F: Family>(&self, name: &str) -> Option<Kind<F>> {
        self.kinds::<F>().iter().find(|k| k.name == name).copied()
    }

    /// The names of family `F`'s kinds, for "known kinds: ..." messages.
    pub fn names<F: Family>(&self) -> Vec<&'static str> {
        self.kinds::<F>().iter().map(|k| k.name).collect()
    }

    /// The kind of family `F` named `name`, or an error listing the known ones.
    pub fn lookup<F: Family>(&self, name: &str) -> Result<Kind<F>, String> {
        self.kind::<F>(name).ok_or_else(|| {
            format!(
                "unknown {} kind `{name}`; known kinds: {}",
                F::NAME,
                self.names::<F>().join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rules;
    struct RuleContext<'a> {
        zones: &'a [&'a str],
    }
    trait BuildRule: Send + Sync {
        fn zone(&self) -> &str;
    }
    impl Family for Rules {
        const NAME: &'static str = "test rule";
        type Context<'a> = RuleContext<'a>;
        type Validated = dyn BuildRule;
    }
    impl<V: BuildRule + 'static> Erase<V> for Rules {
        fn erase(validated: V) -> Arc<dyn BuildRule> {
            Arc::new(validated)
        }
    }

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct InZone {
        zone: String,
    }
    struct ValidInZone(String);
    impl BuildRule for ValidInZone {
        fn zone(&self) -> &str {
            &self.0
        }
    }
    impl Component<Rules> for InZone {
        const KIND: &'static str = "in_zone";
        const EXAMPLE: &'static str = "zone = \"door\"";
        type Validated = ValidInZone;
        fn validate(self, cx: &RuleContext<'_>) -> Result<ValidInZone, FieldError> {
            if cx.zones.contains(&self.zone.as_str()) {
                Ok(ValidInZone(self.zone))
            } else {
                Err(FieldError::new("zone", format!("no zone `{}`", self.zone)))
            }
        }
    }

    #[test]
    fn a_registered_kind_is_found_validated_and_built() {
        let mut registry = Registry::default();
        registry.register::<Rules, InZone>();
        assert_eq!(registry.names::<Rules>(), ["in_zone"]);
        let kind = registry.lookup::<Rules>("in_zone").unwrap();
        let zones = ["door"];
        let cx = RuleContext { zones: &zones };
        assert_eq!(kind.parse_example(&cx).unwrap().zone(), "door");

        let bad: toml::Table = toml::from_str("zone = \"roof\"").unwrap();
        match (kind.parse)(bad, &cx) {
            Err(TableError::Field(e)) => assert_eq!(e.field, "zone"),
            _ => panic!("a zone that does not exist must be refused"),
        }
        let unknown: toml::Table = toml::from_str("zone = \"door\"\nzoen = 1").unwrap();
        assert!(matches!(
            (kind.parse)(unknown, &cx),
            Err(TableError::Serde(_))
        ));
    }

    #[test]
    fn unknown_kinds_are_named_with_the_known_ones() {
        let mut registry = Registry::default();
        registry.register::<Rules, InZone>();
        let e = registry.lookup::<Rules>("in_zoen").unwrap_err();
        assert_eq!(e, "unknown test rule kind `in_zoen`; known kinds: in_zone");
        assert!(Registry::default().kinds::<Rules>().is_empty());
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_kind_name_is_claimed_once() {
        let mut registry = Registry::default();
        registry
            .register::<Rules, InZone>()
            .register::<Rules, InZone>();
    }
}
