//! The daemon's state in SQLite (`<state-dir>/state.db`): the apps deployed,
//! each with its current bundle and deploy options. Written before a deploy
//! takes traffic, so a restarted (or killed) daemon restores exactly what
//! was serving.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};

/// Schema version, in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 2;

/// One deployed app as the daemon keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    pub name: String,
    /// This deployment's id: new with every deploy.
    pub id: String,
    pub version: u64,
    /// BLAKE3 of the bundle, hex: its directory under `bundles/`.
    pub bundle: String,
    /// The manifest's path inside the bundle.
    pub manifest: String,
    pub scale_to_zero: bool,
    /// The cooldown given at deploy time, overriding the manifest's.
    pub cooldown_ms: Option<u64>,
    /// The memory size given at deploy time (`-M`), in bytes, overriding
    /// every service's.
    pub memory: Option<u64>,
    /// Seconds since the Unix epoch.
    pub deployed_at: u64,
}

/// An app's own scale settings, as stored (JSON in the `scale` table):
/// what `scale init` and `scale add` set, over the manifest's.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScaleRecord {
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub warmup_ms: Option<u64>,
    pub cooldown_ms: Option<u64>,
    pub policies: Vec<PolicyRecord>,
}

/// A step policy as stored: its steps in KraftCloud's `LO:HI/ADJ`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyRecord {
    pub name: String,
    pub metric: String,
    pub adjustment: String,
    pub steps: Vec<String>,
}

/// The state database. One connection: writes are rare (deploys), and
/// each is one short transaction.
pub struct StateDb {
    connection: Mutex<Connection>,
}

impl StateDb {
    /// Opens (or creates) the database at `path`. Fails with the path for a
    /// file that is not a dormouse state database.
    pub fn open(path: &Path) -> anyhow::Result<StateDb> {
        let shown = path.display();
        let connection = Connection::open(path).with_context(|| format!("cannot open `{shown}`"))?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .with_context(|| format!("`{shown}` is not a SQLite database"))?;
        // A deploy that returned is on disk, whatever happens next.
        connection.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
        match version {
            0 => {
                connection
                    .execute_batch(
                        "CREATE TABLE IF NOT EXISTS apps (
                            name TEXT PRIMARY KEY,
                            id TEXT NOT NULL,
                            version INTEGER NOT NULL,
                            bundle TEXT NOT NULL,
                            manifest TEXT NOT NULL,
                            scale_to_zero INTEGER NOT NULL,
                            cooldown_ms INTEGER,
                            deployed_at INTEGER NOT NULL,
                            memory INTEGER
                        );",
                    )
                    .with_context(|| format!("cannot set up `{shown}`"))?;
                connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            1 => {
                connection
                    .execute_batch("ALTER TABLE apps ADD COLUMN memory INTEGER;")
                    .with_context(|| format!("cannot upgrade `{shown}`"))?;
                connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            SCHEMA_VERSION => {}
            other => anyhow::bail!(
                "`{shown}` has schema version {other}, this dormouse knows {SCHEMA_VERSION}: it was written by a newer one"
            ),
        }
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS scale (
                    app TEXT PRIMARY KEY REFERENCES apps (name) ON DELETE CASCADE,
                    settings TEXT NOT NULL
                );",
            )
            .with_context(|| format!("cannot set up `{shown}`"))?;
        connection.pragma_update(None, "foreign_keys", true)?;
        Ok(StateDb { connection: Mutex::new(connection) })
    }

    /// An app's scale settings, if it has any of its own.
    pub fn scale(&self, app: &str) -> anyhow::Result<Option<ScaleRecord>> {
        let connection = self.connection.lock().expect("not poisoned");
        let text: Option<String> =
            connection.query_row("SELECT settings FROM scale WHERE app = ?1", [app], |row| row.get(0)).optional()?;
        Ok(match text {
            Some(text) => Some(serde_json::from_str(&text).context("unreadable scale settings in the state")?),
            None => None,
        })
    }

    /// Stores an app's scale settings; `None` removes them.
    pub fn set_scale(&self, app: &str, scale: Option<&ScaleRecord>) -> anyhow::Result<()> {
        let connection = self.connection.lock().expect("not poisoned");
        match scale {
            Some(scale) => connection.execute(
                "INSERT OR REPLACE INTO scale (app, settings) VALUES (?1, ?2)",
                params![app, serde_json::to_string(scale)?],
            )?,
            None => connection.execute("DELETE FROM scale WHERE app = ?1", [app])?,
        };
        Ok(())
    }

    /// Every app, by name.
    pub fn apps(&self) -> anyhow::Result<Vec<AppRecord>> {
        let connection = self.connection.lock().expect("not poisoned");
        let mut statement = connection.prepare(
            "SELECT name, id, version, bundle, manifest, scale_to_zero, cooldown_ms, deployed_at, memory FROM apps ORDER BY name",
        )?;
        let rows = statement.query_map([], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get(&self, name: &str) -> anyhow::Result<Option<AppRecord>> {
        let connection = self.connection.lock().expect("not poisoned");
        Ok(connection
            .query_row(
                "SELECT name, id, version, bundle, manifest, scale_to_zero, cooldown_ms, deployed_at, memory FROM apps WHERE name = ?1",
                [name],
                record,
            )
            .optional()?)
    }

    /// Stores `app`, replacing the record of its name.
    pub fn put(&self, app: &AppRecord) -> anyhow::Result<()> {
        let connection = self.connection.lock().expect("not poisoned");
        connection.execute(
            // An upsert, not a replace: a replace deletes the row first,
            // and the app's scale settings with it.
            "INSERT INTO apps (name, id, version, bundle, manifest, scale_to_zero, cooldown_ms, deployed_at, memory)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (name) DO UPDATE SET id = ?2, version = ?3, bundle = ?4, manifest = ?5,
                 scale_to_zero = ?6, cooldown_ms = ?7, deployed_at = ?8, memory = ?9",
            params![
                app.name,
                app.id,
                app.version as i64,
                app.bundle,
                app.manifest,
                app.scale_to_zero,
                app.cooldown_ms.map(|ms| ms as i64),
                app.deployed_at as i64,
                app.memory.map(|bytes| bytes as i64)
            ],
        )?;
        Ok(())
    }

    /// Removes the app `name`; whether there was one.
    pub fn remove(&self, name: &str) -> anyhow::Result<bool> {
        let connection = self.connection.lock().expect("not poisoned");
        Ok(connection.execute("DELETE FROM apps WHERE name = ?1", [name])? > 0)
    }

    /// Whether any app runs from `bundle`.
    pub fn bundle_in_use(&self, bundle: &str) -> anyhow::Result<bool> {
        let connection = self.connection.lock().expect("not poisoned");
        Ok(connection.query_row("SELECT EXISTS (SELECT 1 FROM apps WHERE bundle = ?1)", [bundle], |row| row.get(0))?)
    }
}

fn record(row: &rusqlite::Row<'_>) -> rusqlite::Result<AppRecord> {
    Ok(AppRecord {
        name: row.get(0)?,
        id: row.get(1)?,
        version: row.get::<_, i64>(2)? as u64,
        bundle: row.get(3)?,
        manifest: row.get(4)?,
        scale_to_zero: row.get(5)?,
        cooldown_ms: row.get::<_, Option<i64>>(6)?.map(|ms| ms as u64),
        deployed_at: row.get::<_, i64>(7)? as u64,
        memory: row.get::<_, Option<i64>>(8)?.map(|bytes| bytes as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, version: u64) -> AppRecord {
        AppRecord {
            name: name.into(),
            id: format!("{name}-{version}"),
            version,
            bundle: "ab".repeat(32),
            manifest: "spin.toml".into(),
            scale_to_zero: true,
            cooldown_ms: Some(250),
            memory: Some(64 << 20),
            deployed_at: 1_800_000_000,
        }
    }

    #[test]
    fn apps_survive_a_reopen_and_a_redeploy_replaces_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.put(&app("hello", 1)).unwrap();
            db.put(&app("web", 1)).unwrap();
            db.put(&app("hello", 2)).unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.apps().unwrap(), vec![app("hello", 2), app("web", 1)]);
        assert!(db.bundle_in_use(&"ab".repeat(32)).unwrap());
        let scale = ScaleRecord { min: Some(1), max: Some(4), ..ScaleRecord::default() };
        db.set_scale("web", Some(&scale)).unwrap();
        db.put(&app("web", 2)).unwrap();
        assert_eq!(db.scale("web").unwrap(), Some(scale), "a redeploy keeps the scale settings");
        assert!(db.remove("web").unwrap());
        assert_eq!(db.scale("web").unwrap(), None, "an app's scale settings go with it");
        assert!(!db.remove("web").unwrap());
        assert_eq!(db.get("web").unwrap(), None);
    }

    #[test]
    fn a_file_that_is_not_a_database_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, "not sqlite at all, but long enough to look like a header of something").unwrap();
        let error = StateDb::open(&path).err().unwrap();
        assert!(format!("{error:#}").contains("state.db"), "{error:#}");
    }
}
