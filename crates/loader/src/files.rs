//! A component's `files`, staged into one directory tree that the guest sees
//! read-only at `/`.
//!
//! Staging (hard links where the filesystem allows, copies elsewhere) rather
//! than mounting the sources directly means a glob exposes exactly the files
//! it matches, and `exclude_files` can hold. A symlink is followed only while
//! its target stays inside what was mounted (the app directory for globs, the
//! source for `{ source, destination }`); one that leads out is left out, with
//! a warning. Inside the guest, `..` cannot climb above `/`: wasmtime-wasi's
//! preopens resolve every path beneath their directory.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};
use dormouse_manifest::model::FileMount;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use walkdir::WalkDir;

/// Stages `mounts` into `target` (an empty directory). Returns how many files
/// were staged. `app_dir` is what globs and `exclude_files` are relative to.
/// Nothing under `hidden` (dormouse's state: the compile cache, key-value
/// files, staged trees) is ever staged, however it is reached.
pub fn stage(
    app_dir: &Path,
    mounts: &[FileMount],
    exclude: &[String],
    target: &Path,
    hidden: &[PathBuf],
) -> anyhow::Result<usize> {
    let exclude = glob_set(exclude)?;
    let app_root = app_dir.canonicalize().with_context(|| format!("cannot read `{}`", app_dir.display()))?;
    // Never walked: the staged tree itself (a mount of an ancestor would
    // copy it into itself without end) and dormouse's state.
    let skip: Vec<PathBuf> = std::iter::once(target)
        .chain(hidden.iter().map(PathBuf::as_path))
        .map(|path| path.canonicalize().unwrap_or_else(|_| path.to_owned()))
        .collect();
    let skip = Hidden(skip);
    let walk = |root: &Path| {
        let skip = skip.clone();
        WalkDir::new(root)
            .follow_links(true)
            .min_depth(1)
            .into_iter()
            .filter_entry(move |entry| !skip.covers(entry.path(), entry.path_is_symlink()))
    };
    let mut staged = 0;
    for mount in mounts {
        staged += match mount {
            FileMount::Pattern(pattern) => stage_pattern(&app_root, pattern, &exclude, target, &walk, &skip)?,
            FileMount::Placement { source, destination } => {
                stage_placement(&app_root, source, destination, &exclude, target, &walk, &skip)?
            }
        };
    }
    Ok(staged)
}

/// Directories never staged, canonical.
#[derive(Clone)]
struct Hidden(Vec<PathBuf>);

impl Hidden {
    /// Whether `path` lies under a hidden directory, resolving links when
    /// `resolve` (a link inside the app may point into dormouse's state).
    fn covers(&self, path: &Path, resolve: bool) -> bool {
        let under = |path: &Path| self.0.iter().any(|hidden| path.starts_with(hidden));
        under(path) || (resolve && path.canonicalize().is_ok_and(|real| under(&real)))
    }
}

fn glob(pattern: &str) -> anyhow::Result<Glob> {
    // `*` stays within one path segment and `**` crosses them, as in Spin.
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .with_context(|| format!("invalid file pattern `{pattern}`"))
}

fn glob_set(patterns: &[String]) -> anyhow::Result<GlobSet> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        set.add(glob(pattern)?);
    }
    Ok(set.build()?)
}

/// Files of the app directory whose relative path matches `pattern`, each at
/// the same relative path under `/`.
fn stage_pattern<W: Iterator<Item = walkdir::Result<walkdir::DirEntry>>>(
    app_root: &Path,
    pattern: &str,
    exclude: &GlobSet,
    target: &Path,
    walk: &dyn Fn(&Path) -> W,
    hidden: &Hidden,
) -> anyhow::Result<usize> {
    let matcher = glob(pattern)?.compile_matcher();
    let mut staged = 0;
    for entry in walk(app_root) {
        let entry = match entry {
            Ok(entry) => entry,
            // An unreadable corner or a link loop: skip it, say so.
            Err(error) => {
                tracing::warn!("file pattern `{pattern}`: {error}");
                continue;
            }
        };
        let relative = entry.path().strip_prefix(app_root).expect("walked beneath the root");
        if !entry.file_type().is_file() || !matcher.is_match(relative) {
            continue;
        }
        if exclude.is_match(relative) {
            continue;
        }
        if copy_contained(entry.path(), app_root, hidden, &target.join(relative))? {
            staged += 1;
        }
    }
    if staged == 0 {
        tracing::warn!("file pattern `{pattern}` matches no file in `{}`", app_root.display());
    }
    Ok(staged)
}

/// A file or directory (recursively) placed at `destination`.
fn stage_placement<W: Iterator<Item = walkdir::Result<walkdir::DirEntry>>>(
    app_root: &Path,
    source: &Path,
    destination: &str,
    exclude: &GlobSet,
    target: &Path,
    walk: &dyn Fn(&Path) -> W,
    hidden: &Hidden,
) -> anyhow::Result<usize> {
    let root = source.canonicalize().with_context(|| format!("cannot read file source `{}`", source.display()))?;
    // The manifest refuses a source that leads out through a link; this
    // holds even if the link changed since.
    anyhow::ensure!(
        root.starts_with(app_root),
        "file source `{}` leads outside the app directory, to `{}`",
        source.display(),
        root.display()
    );
    anyhow::ensure!(
        !hidden.covers(&root, false),
        "file source `{}` is dormouse's own state (`{}`), which is never mounted",
        source.display(),
        root.display()
    );
    let destination = guest_relative(destination)?;
    let excluded = |path: &Path| path.strip_prefix(app_root).is_ok_and(|relative| exclude.is_match(relative));
    if root.is_file() {
        if excluded(&root) {
            return Ok(0);
        }
        return Ok(usize::from(copy_contained(&root, &root, hidden, &target.join(destination))?));
    }
    let mut staged = 0;
    for entry in walk(&root) {
        let entry = match entry {
            Ok(entry) => entry,
            Err(error) => {
                tracing::warn!("files from `{}`: {error}", root.display());
                continue;
            }
        };
        if !entry.file_type().is_file() || excluded(entry.path()) {
            continue;
        }
        let relative = entry.path().strip_prefix(&root).expect("walked beneath the root");
        if copy_contained(entry.path(), &root, hidden, &target.join(&destination).join(relative))? {
            staged += 1;
        }
    }
    Ok(staged)
}

/// `/a/b` as the relative path `a/b`; `..` was refused by the manifest.
fn guest_relative(destination: &str) -> anyhow::Result<PathBuf> {
    let mut relative = PathBuf::new();
    for component in Path::new(destination).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            _ => bail!("file destination `{destination}` must be an absolute path without `..`"),
        }
    }
    Ok(relative)
}

/// Stages `path` at `to` if it really lies inside `root` once symlinks are
/// resolved. Returns whether it did.
fn copy_contained(path: &Path, root: &Path, hidden: &Hidden, to: &Path) -> anyhow::Result<bool> {
    let real = path.canonicalize().with_context(|| format!("cannot read `{}`", path.display()))?;
    if hidden.covers(&real, false) {
        tracing::warn!("`{}` is dormouse's own state (`{}`): not mounted", path.display(), real.display());
        return Ok(false);
    }
    if !real.starts_with(root) {
        tracing::warn!(
            "`{}` is a link to `{}`, outside `{}`: not mounted",
            path.display(),
            real.display(),
            root.display()
        );
        return Ok(false);
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create `{}`", parent.display()))?;
    }
    // The guest only reads: sharing the inode costs nothing and no copy.
    if std::fs::hard_link(&real, to).is_err() {
        std::fs::copy(&real, to).with_context(|| format!("cannot copy `{}` to `{}`", real.display(), to.display()))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn staged_files(target: &Path) -> Vec<String> {
        let mut files: Vec<String> = WalkDir::new(target)
            .into_iter()
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.file_type().is_file())
            .map(|entry| entry.path().strip_prefix(target).unwrap().to_string_lossy().into_owned())
            .collect();
        files.sort();
        files
    }

    #[test]
    fn globs_placements_and_exclusions() {
        let app = tempfile::tempdir().unwrap();
        let app_dir = app.path();
        write(&app_dir.join("static/index.html"), "index");
        write(&app_dir.join("static/css/site.css"), "css");
        write(&app_dir.join("static/notes.bak"), "old");
        write(&app_dir.join("public/robots.txt"), "robots");
        write(&app_dir.join("spin.toml"), "manifest");
        write(&app_dir.join(".dormouse/cache/x"), "cache");
        let target = tempfile::tempdir().unwrap();
        let mounts = vec![
            FileMount::Pattern("static/*".into()),
            FileMount::Placement { source: app_dir.join("public"), destination: "/www".into() },
            FileMount::Placement { source: app_dir.join("static/css/site.css"), destination: "/site.css".into() },
        ];
        let count = stage(app_dir, &mounts, &["**/*.bak".into()], target.path(), &[]).unwrap();
        assert_eq!(staged_files(target.path()), ["site.css", "static/index.html", "www/robots.txt"]);
        assert_eq!(count, 3);
        assert_eq!(std::fs::read_to_string(target.path().join("www/robots.txt")).unwrap(), "robots");
    }

    #[test]
    fn links_out_of_a_mount_are_left_out() {
        let outside = tempfile::tempdir().unwrap();
        write(&outside.path().join("secret.txt"), "secret");
        let app = tempfile::tempdir().unwrap();
        write(&app.path().join("www/ok.txt"), "ok");
        write(&app.path().join("other.txt"), "other");
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), app.path().join("www/secret.txt")).unwrap();
        std::os::unix::fs::symlink(outside.path(), app.path().join("www/outside")).unwrap();
        // Inside the app, but outside the placed directory.
        std::os::unix::fs::symlink(app.path().join("other.txt"), app.path().join("www/sibling.txt")).unwrap();
        std::os::unix::fs::symlink(app.path().join("www/ok.txt"), app.path().join("www/alias.txt")).unwrap();

        let target = tempfile::tempdir().unwrap();
        let placed = [FileMount::Placement { source: app.path().join("www"), destination: "/".into() }];
        stage(app.path(), &placed, &[], target.path(), &[]).unwrap();
        assert_eq!(staged_files(target.path()), ["alias.txt", "ok.txt"]);

        let target = tempfile::tempdir().unwrap();
        stage(app.path(), &[FileMount::Pattern("www/**".into())], &[], target.path(), &[]).unwrap();
        assert_eq!(staged_files(target.path()), ["www/alias.txt", "www/ok.txt", "www/sibling.txt"]);
    }
}
