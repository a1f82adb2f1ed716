//! Spin's runtime configuration file (`--runtime-config-file`), of which
//! dormouse reads the key-value stores:
//!
//! ```toml
//! [key_value_store.default]
//! type = "redis"
//! url = "redis://127.0.0.1:6379"
//!
//! [key_value_store.cache]
//! type = "spin"              # SQLite
//! path = "data/cache.db"     # relative to this file; omitted: in memory
//! ```
//!
//! Every other table Spin knows is refused by name, with file:line:column.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use crate::ManifestError;

/// The resolved runtime configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Key-value stores by label.
    pub key_value_stores: BTreeMap<String, KeyValueStore>,
}

/// Where a key-value store keeps its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValueStore {
    /// A SQLite file (absolute path), or memory when `None`.
    Sqlite(Option<PathBuf>),
    /// A Redis server.
    Redis { url: String },
}

impl RuntimeConfig {
    /// Reads the file at `path`; relative paths in it are resolved against
    /// its directory.
    pub fn load(path: &Path) -> Result<RuntimeConfig, ManifestError> {
        let text = crate::read_regular_file(path)?;
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
        let base_dir = absolute.parent().map(Path::to_owned).unwrap_or_default();
        RuntimeConfig::parse(&text, path, &base_dir)
    }

    pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<RuntimeConfig, ManifestError> {
        let fail = |span: Range<usize>, message: String| {
            let (line, column) = crate::line_column(text, span.start);
            ManifestError::Invalid { path: file.to_owned(), line, column, message }
        };
        let from_toml = |error: toml::de::Error| fail(error.span().unwrap_or(0..0), error.message().to_owned());
        // Unknown tables first, so that they are refused by name.
        let tables: BTreeMap<Spanned<String>, serde::de::IgnoredAny> = toml::from_str(text).map_err(from_toml)?;
        if let Some(other) = tables.keys().find(|key| key.get_ref() != "key_value_store") {
            return Err(fail(
                other.span(),
                format!(
                    "runtime config `[{}]` is not supported by dormouse: it reads `[key_value_store.<label>]`",
                    other.get_ref()
                ),
            ));
        }

        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(default)]
            key_value_store: BTreeMap<Spanned<String>, Spanned<Fields>>,
        }
        let raw: Raw = toml::from_str(text).map_err(from_toml)?;
        let mut config = RuntimeConfig::default();
        for (label, fields) in raw.key_value_store {
            let store = key_value_store(label.get_ref(), fields.get_ref(), fields.span(), base_dir)
                .map_err(|(span, message)| fail(span, message))?;
            config.key_value_stores.insert(label.into_inner(), store);
        }
        Ok(config)
    }
}

type Fields = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

fn key_value_store(
    label: &str,
    fields: &Fields,
    table_span: Range<usize>,
    base_dir: &Path,
) -> Result<KeyValueStore, (Range<usize>, String)> {
    let field = |name: &str| fields.iter().find(|(key, _)| key.get_ref() == name).map(|(_, value)| value);
    let string = |name: &str| -> Result<Option<&str>, (Range<usize>, String)> {
        match field(name) {
            None => Ok(None),
            Some(value) => match value.get_ref().as_str() {
                Some(text) => Ok(Some(text)),
                None => Err((value.span(), format!("`{name}` of key-value store `{label}` must be a string"))),
            },
        }
    };
    let Some(kind) = string("type")? else {
        return Err((table_span, format!("key-value store `{label}` needs a `type`: \"spin\" (SQLite) or \"redis\"")));
    };
    let allowed: &[&str] = match kind {
        "spin" => &["type", "path"],
        "redis" => &["type", "url"],
        other => {
            let span = field("type").expect("read above").span();
            return Err((
                span,
                format!(
                    "key-value store type `{other}` (store `{label}`) is not supported: use \"spin\" (SQLite) or \"redis\""
                ),
            ));
        }
    };
    if let Some((key, _)) = fields.iter().find(|(key, _)| !allowed.contains(&key.get_ref().as_str())) {
        return Err((
            key.span(),
            format!("unknown field `{}` in key-value store `{label}` of type \"{kind}\"", key.get_ref()),
        ));
    }
    Ok(match kind {
        "spin" => KeyValueStore::Sqlite(string("path")?.map(|path| base_dir.join(path))),
        _ => {
            let Some(url) = string("url")? else {
                return Err((table_span, format!("redis key-value store `{label}` needs a `url`")));
            };
            let span = || field("url").expect("read above").span();
            if url.starts_with("rediss://") {
                return Err((
                    span(),
                    format!(
                        "`{url}`: TLS connections to Redis are not supported yet; use `redis://` (a trusted network or a local TLS tunnel)"
                    ),
                ));
            }
            if !(url.starts_with("redis://") || url.starts_with("redis+unix://")) {
                return Err((span(), format!("`{url}` is not a Redis URL: write e.g. `redis://127.0.0.1:6379`")));
            }
            KeyValueStore::Redis { url: url.to_owned() }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RuntimeConfig, String> {
        RuntimeConfig::parse(text, Path::new("rc.toml"), Path::new("/app")).map_err(|error| error.to_string())
    }

    #[test]
    fn stores_of_both_kinds() {
        let config = parse(
            r#"
[key_value_store.default]
type = "redis"
url = "redis://127.0.0.1:6379"

[key_value_store.cache]
type = "spin"
path = "data/cache.db"

[key_value_store.scratch]
type = "spin"
"#,
        )
        .unwrap();
        assert_eq!(config.key_value_stores["default"], KeyValueStore::Redis { url: "redis://127.0.0.1:6379".into() });
        assert_eq!(config.key_value_stores["cache"], KeyValueStore::Sqlite(Some("/app/data/cache.db".into())));
        assert_eq!(config.key_value_stores["scratch"], KeyValueStore::Sqlite(None));
    }

    #[test]
    fn errors_point_at_the_problem() {
        assert_eq!(
            parse("[key_value_store.x]\ntype = \"azure_cosmos\"\n").unwrap_err(),
            "rc.toml:2:8: key-value store type `azure_cosmos` (store `x`) is not supported: use \"spin\" (SQLite) or \"redis\""
        );
        assert_eq!(
            parse("[key_value_store.x]\ntype = \"redis\"\nurl = \"http://h\"\n").unwrap_err(),
            "rc.toml:3:7: `http://h` is not a Redis URL: write e.g. `redis://127.0.0.1:6379`"
        );
        assert_eq!(
            parse("[key_value_store.x]\ntype = \"redis\"\nurl = \"rediss://h:6380\"\n").unwrap_err(),
            "rc.toml:3:7: `rediss://h:6380`: TLS connections to Redis are not supported yet; use `redis://` (a trusted network or a local TLS tunnel)"
        );
        assert_eq!(
            parse("[key_value_store.x]\ntype = \"spin\"\nurl = \"redis://h\"\n").unwrap_err(),
            "rc.toml:3:1: unknown field `url` in key-value store `x` of type \"spin\""
        );
        assert_eq!(
            parse("\n[sqlite_database.default]\ntype = \"spin\"\n").unwrap_err(),
            "rc.toml:2:2: runtime config `[sqlite_database]` is not supported by dormouse: it reads `[key_value_store.<label>]`"
        );
        assert!(parse("[key_value_store.x]\npath = \"a\"\n").unwrap_err().contains("needs a `type`"));
    }
}
