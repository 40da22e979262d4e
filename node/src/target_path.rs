//! Checking the paths kubelet asks us to mount on.
//!
//! A publish target is a directory the node plugin creates and mounts over as root, so
//! a bad request could otherwise shadow `/etc` or `/usr`. The target must be absolute,
//! without `..`, and below an allowed root once symlinks in its *parent* are resolved
//! (the target itself may not exist yet; it is never followed, see the service).

use std::path::{Component, Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TargetPathError {
    /// Not an absolute path.
    #[error("{field} {path:?} must be an absolute path")]
    NotAbsolute { field: &'static str, path: String },
    /// A `..` component, which could walk out of the allowed roots.
    #[error("{field} {path:?} must not contain '..'")]
    ParentComponent { field: &'static str, path: String },
    /// `/` or a path with a NUL byte.
    #[error("{field} {path:?} does not name a directory we could create")]
    NoName { field: &'static str, path: String },
    /// The parent directory does not exist or cannot be resolved.
    #[error("{field} {path:?}: its parent directory cannot be resolved: {source}")]
    Parent {
        field: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Outside every allowed root.
    #[error(
        "{field} {path:?} (resolved to {resolved:?}) is not below an allowed target root ({roots}); see --allowed-target-root"
    )]
    OutsideRoots {
        field: &'static str,
        path: String,
        resolved: PathBuf,
        roots: String,
    },
}

impl TargetPathError {
    /// Whether the target cannot exist because its parent does not.
    pub fn parent_missing(&self) -> bool {
        matches!(self, TargetPathError::Parent { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The lexical checks alone: absolute, no `..`, a final name, no NUL.
pub fn check_lexically(field: &'static str, path: &str) -> Result<(), TargetPathError> {
    let owned = || path.to_owned();
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(TargetPathError::NotAbsolute {
            field,
            path: owned(),
        });
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(TargetPathError::ParentComponent {
            field,
            path: owned(),
        });
    }
    if path.contains('\0') || !matches!(p.components().next_back(), Some(Component::Normal(_))) {
        return Err(TargetPathError::NoName {
            field,
            path: owned(),
        });
    }
    Ok(())
}

/// `<canonical parent>/<name>` after the lexical checks: the path as mountinfo would
/// show it. Blocking: does filesystem lookups on the parent chain (never on the target).
pub fn canonicalize_parent(field: &'static str, path: &str) -> Result<PathBuf, TargetPathError> {
    check_lexically(field, path)?;
    let p = Path::new(path);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(TargetPathError::NoName {
            field,
            path: path.to_owned(),
        });
    };
    let parent = std::fs::canonicalize(parent).map_err(|source| TargetPathError::Parent {
        field,
        path: path.to_owned(),
        source,
    })?;
    Ok(parent.join(name))
}

/// [`canonicalize_parent`], then checks the result lies below one of `allowed_roots`
/// (themselves canonicalized; roots that do not exist match nothing).
pub fn resolve(
    field: &'static str,
    path: &str,
    allowed_roots: &[PathBuf],
) -> Result<PathBuf, TargetPathError> {
    let resolved = canonicalize_parent(field, path)?;
    let inside = allowed_roots
        .iter()
        .filter_map(|root| std::fs::canonicalize(root).ok())
        .any(|root| {
            resolved
                .parent()
                .is_some_and(|parent| parent.starts_with(&root))
        });
    if !inside {
        let roots = allowed_roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>();
        return Err(TargetPathError::OutsideRoots {
            field,
            path: path.to_owned(),
            resolved,
            roots: roots.join(", "),
        });
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        /// `<tmp>/root/pods`, `<tmp>/outside`, `<tmp>/root/escape -> <tmp>/outside`,
        /// `<tmp>/root/inner -> <tmp>/root/pods`.
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("root/pods")).unwrap();
            std::fs::create_dir_all(dir.path().join("outside")).unwrap();
            std::os::unix::fs::symlink(dir.path().join("outside"), dir.path().join("root/escape"))
                .unwrap();
            std::os::unix::fs::symlink(dir.path().join("root/pods"), dir.path().join("root/inner"))
                .unwrap();
            Tree { dir }
        }

        fn path(&self, rel: &str) -> String {
            self.dir.path().join(rel).to_string_lossy().into_owned()
        }

        fn roots(&self) -> Vec<PathBuf> {
            vec![self.dir.path().join("root")]
        }
    }

    #[test]
    fn accepts_a_target_below_a_root_and_resolves_its_parent() {
        let t = Tree::new();
        let got = resolve("target_path", &t.path("root/pods/mount"), &t.roots()).unwrap();
        let canonical_root = std::fs::canonicalize(t.dir.path().join("root")).unwrap();
        assert_eq!(got, canonical_root.join("pods/mount"));
        // A symlink that stays inside the root is fine and resolved.
        let got = resolve("target_path", &t.path("root/inner/mount"), &t.roots()).unwrap();
        assert_eq!(got, canonical_root.join("pods/mount"));
        // A trailing slash names the same target.
        let with_slash = format!("{}/", t.path("root/pods/mount"));
        assert_eq!(
            resolve("target_path", &with_slash, &t.roots()).unwrap(),
            canonical_root.join("pods/mount")
        );
    }

    #[test]
    fn rejects_relative_and_dotdot_paths() {
        let t = Tree::new();
        let err = resolve("target_path", "pods/mount", &t.roots()).unwrap_err();
        assert!(matches!(err, TargetPathError::NotAbsolute { .. }), "{err}");
        let err = resolve(
            "target_path",
            &t.path("root/pods/../../outside/x"),
            &t.roots(),
        )
        .unwrap_err();
        assert!(
            matches!(err, TargetPathError::ParentComponent { .. }),
            "{err}"
        );
        let err = resolve("target_path", &t.path("root/pods/.."), &t.roots()).unwrap_err();
        assert!(
            matches!(err, TargetPathError::ParentComponent { .. }),
            "{err}"
        );
        assert!(matches!(
            resolve("target_path", "/", &t.roots()),
            Err(TargetPathError::NoName { .. })
        ));
    }

    #[test]
    fn rejects_targets_outside_the_roots_naming_them() {
        let t = Tree::new();
        let err = resolve("target_path", "/etc/x", &t.roots()).unwrap_err();
        assert!(matches!(err, TargetPathError::OutsideRoots { .. }), "{err}");
        assert!(err.to_string().contains(&t.path("root")), "{err}");
        // The root itself is no target.
        let err = resolve("target_path", &t.path("root"), &t.roots()).unwrap_err();
        assert!(matches!(err, TargetPathError::OutsideRoots { .. }), "{err}");
    }

    #[test]
    fn rejects_a_symlink_escaping_the_root() {
        let t = Tree::new();
        let err = resolve("target_path", &t.path("root/escape/mount"), &t.roots()).unwrap_err();
        let TargetPathError::OutsideRoots { resolved, .. } = &err else {
            panic!("{err}")
        };
        assert!(resolved.ends_with("outside/mount"), "{resolved:?}");
    }

    #[test]
    fn a_missing_parent_is_reported_as_such() {
        let t = Tree::new();
        let err = resolve("target_path", &t.path("root/nope/mount"), &t.roots()).unwrap_err();
        assert!(err.parent_missing(), "{err}");
    }
}
