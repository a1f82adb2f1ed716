//! The daemon's state in SQLite (`<state-dir>/state.db`): the apps deployed,
//! each with its current bundle and deploy options. Written before a deploy
//! takes traffic, so a restarted (or killed) daemon restores exactly what
//! was serving.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension as _, params};

/// Schema version, in SQLite's `user_version`.
const SCHEMA_VERSION: i64 = 1;

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
    /// Seconds since the Unix epoch.
    pub deployed_at: u64,
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
                        "CREATE TABLE apps (
                            name TEXT PRIMARY KEY,
                            id TEXT NOT NULL,
                            version INTEGER NOT NULL,
                            bundle TEXT NOT NULL,
                            manifest TEXT NOT NULL,
                            scale_to_zero INTEGER NOT NULL,
                            cooldown_ms INTEGER,
                            deployed_at INTEGER NOT NULL
                        );",
                    )
                    .with_context(|| format!("cannot set up `{shown}`"))?;
                connection.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            SCHEMA_VERSION => {}
            other => anyhow::bail!(
                "`{shown}` has schema version {other}, this dormouse knows {SCHEMA_VERSION}: it was written by a newer one"
            ),
        }
        Ok(StateDb { connection: Mutex::new(connection) })
    }

    /// Every app, by name.
    pub fn apps(&self) -> anyhow::Result<Vec<AppRecord>> {
        let connection = self.connection.lock().expect("not poisoned");
        let mut statement = connection.prepare(
            "SELECT name, id, version, bundle, manifest, scale_to_zero, cooldown_ms, deployed_at FROM apps ORDER BY name",
        )?;
        let rows = statement.query_map([], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn get(&self, name: &str) -> anyhow::Result<Option<AppRecord>> {
        let connection = self.connection.lock().expect("not poisoned");
        Ok(connection
            .query_row(
                "SELECT name, id, version, bundle, manifest, scale_to_zero, cooldown_ms, deployed_at FROM apps WHERE name = ?1",
                [name],
                record,
            )
            .optional()?)
    }

    /// Stores `app`, replacing the record of its name.
    pub fn put(&self, app: &AppRecord) -> anyhow::Result<()> {
        let connection = self.connection.lock().expect("not poisoned");
        connection.execute(
            "INSERT OR REPLACE INTO apps (name, id, version, bundle, manifest, scale_to_zero, cooldown_ms, deployed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                app.name,
                app.id,
                app.version as i64,
                app.bundle,
                app.manifest,
                app.scale_to_zero,
                app.cooldown_ms.map(|ms| ms as i64),
                app.deployed_at as i64
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
        assert!(db.remove("web").unwrap());
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
