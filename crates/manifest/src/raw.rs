//! The user's format: `spin.toml` (manifest version 2) as written, with spans.
//!
//! Nothing here is resolved or checked beyond what serde can check; `crate::load`
//! turns these types into the [`crate::model`] the runtime uses. Every field that a
//! later check can reject is `Spanned`, so that the error names its line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use toml::Spanned;

/// Implements `Deserialize` for an enum written either as a string or as a table.
///
/// serde's `untagged` would do the same but replaces the table's own error
/// ("unknown field `x`", with its position) by "did not match any variant".
macro_rules! string_or_table {
    ($enum:ident, $string:ident, $table:ident, $expecting:literal) => {
        impl<'de> Deserialize<'de> for $enum {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl<'de> serde::de::Visitor<'de> for Visitor {
                    type Value = $enum;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<$enum, E> {
                        Ok($enum::$string(value.to_owned()))
                    }
                    fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<$enum, M::Error> {
                        let table = Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                        Ok($enum::$table(table))
                    }
                }
                deserializer.deserialize_any(Visitor)
            }
        }
    };
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Checked before this type is read (see `crate::parse`).
    #[allow(dead_code, reason = "accepted and ignored")]
    pub spin_manifest_version: IgnoredAny,
    pub application: Application,
    #[serde(default)]
    pub variables: BTreeMap<Spanned<String>, Variable>,
    #[serde(default)]
    pub trigger: Triggers,
    #[serde(default)]
    pub component: BTreeMap<Spanned<String>, Component>,
    /// dormouse's own table kind: ordinary HTTP server processes.
    #[serde(default)]
    pub service: BTreeMap<Spanned<String>, Service>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub command: Spanned<Vec<String>>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub port: Option<Spanned<u16>>,
    pub ready_path: Option<Spanned<String>>,
    pub scale_to_zero: Option<ScaleToZero>,
    pub autoscale: Option<Autoscale>,
    pub ready_timeout: Option<Spanned<String>>,
    pub stop_timeout: Option<Spanned<String>>,
    pub memory: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleToZero {
    pub cooldown: Option<Spanned<String>>,
    pub standby: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    pub min: Option<Spanned<u32>>,
    pub max: Option<Spanned<u32>>,
    pub target_concurrency: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: Spanned<String>,
    pub version: Option<String>,
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
    /// Spin's application-wide trigger settings (`[application.trigger.redis]`);
    /// only the HTTP trigger exists here, so any entry is refused by `load`.
    pub trigger: Option<Spanned<toml::Table>>,
    /// Spin's deployment targets; accepted and ignored like `build`.
    #[allow(dead_code, reason = "accepted and ignored")]
    pub targets: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Default)]
pub struct Triggers {
    pub http: Vec<Spanned<HttpTrigger>>,
    /// Any other trigger kind (`redis`, `cron`, …), kept to be refused by name.
    pub other: Vec<Spanned<String>>,
}

impl<'de> Deserialize<'de> for Triggers {
    // By hand rather than `#[serde(flatten)]`, which would lose the spans.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Triggers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of trigger kinds")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Triggers, M::Error> {
                let mut triggers = Triggers::default();
                while let Some(kind) = map.next_key::<Spanned<String>>()? {
                    if kind.get_ref() == "http" {
                        triggers.http = map.next_value()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                        triggers.other.push(kind);
                    }
                }
                Ok(triggers)
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTrigger {
    pub id: Option<Spanned<String>>,
    pub route: Spanned<Route>,
    pub component: Option<Spanned<ComponentRef>>,
    pub service: Option<Spanned<String>>,
    pub executor: Option<Spanned<Executor>>,
}

#[derive(Debug)]
pub enum Route {
    Path(String),
    Private(PrivateRoute),
}
string_or_table!(Route, Path, Private, "a route string or `{ private = true }`");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateRoute {
    pub private: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Executor {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug)]
pub enum ComponentRef {
    Id(String),
    Inline(Box<Component>),
}
string_or_table!(ComponentRef, Id, Inline, "a component id or an inline component table");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Component {
    pub source: Spanned<Source>,
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<Spanned<String>>,
    /// Spin 1's name for `allowed_outbound_hosts`; refused with a hint.
    pub allowed_http_hosts: Option<Spanned<toml::Value>>,
    #[serde(default)]
    pub key_value_stores: Vec<Spanned<String>>,
    #[serde(default)]
    pub variables: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<Spanned<FileMount>>,
    #[serde(default)]
    pub exclude_files: Vec<String>,
    /// Build instructions are for `spin build`; accepted and ignored.
    #[allow(dead_code, reason = "accepted and ignored")]
    pub build: Option<IgnoredAny>,
    /// Tool-specific settings (`[component.x.tool.*]`); accepted and ignored.
    #[allow(dead_code, reason = "accepted and ignored")]
    pub tool: Option<IgnoredAny>,
    // Spin features dormouse does not host yet: each is refused by name.
    pub sqlite_databases: Option<Spanned<toml::Value>>,
    pub ai_models: Option<Spanned<toml::Value>>,
    pub dependencies: Option<Spanned<toml::Value>>,
    pub dependencies_inherit_configuration: Option<Spanned<toml::Value>>,
}

#[derive(Debug)]
pub enum Source {
    Path(String),
    Remote(RemoteSource),
}
string_or_table!(Source, Path, Remote, "a path or a `{ url, digest }` table");

/// A source fetched from elsewhere: `{ url, digest }` or `{ package, version, registry }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSource {
    pub url: Option<String>,
    #[allow(dead_code, reason = "accepted and ignored")]
    pub digest: Option<IgnoredAny>,
    pub package: Option<String>,
    #[allow(dead_code, reason = "accepted and ignored")]
    pub version: Option<IgnoredAny>,
    #[allow(dead_code, reason = "accepted and ignored")]
    pub registry: Option<IgnoredAny>,
}

#[derive(Debug)]
pub enum FileMount {
    Pattern(String),
    Placement(Placement),
}
string_or_table!(FileMount, Pattern, Placement, "a glob or a `{ source, destination }` table");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub source: String,
    pub destination: String,
}
