//! Path rules shared by the service folder (build) and the archive (open).
//!
//! A bundle path is relative, `/`-separated, and made only of normal components: no `..`, no
//! `.`, no empty component, no backslash, no drive letter, no control character. Paths written in
//! `service.toml` may also use `./` and a trailing `/`; [`normalize_spec_path`] removes them.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Why `path` is not a safe bundle path, or `None` when it is one. `path` must already be
/// normalized (see [`normalize_spec_path`]).
pub(crate) fn archive_path_problem(path: &str) -> Option<String> {
    if let Some(reason) = common_problem(path) {
        return Some(reason);
    }
    for component in path.split('/') {
        match component {
            "" => return Some("it has an empty component (`//` or a trailing `/`)".into()),
            "." => return Some("it has a `.` component".into()),
            ".." => return Some("its `..` component would leave the bundle".into()),
            _ => {}
        }
    }
    None
}

/// Problems that no spelling can fix: checked on raw paths of both kinds.
fn common_problem(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("the path is empty".into());
    }
    if path.starts_with('/') {
        return Some("it is absolute; use a path relative to the folder".into());
    }
    if path.contains('\\') {
        return Some("it contains a backslash; separate components with `/`".into());
    }
    let bytes = path.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Some("it starts with a drive letter".into());
    }
    if path.chars().any(char::is_control) {
        return Some("it contains a control character".into());
    }
    None
}

/// Normalizes a path written in `service.toml`: drops `.` components, repeated and trailing
/// `/`; refuses absolute paths, `..`, backslashes, drive letters and control characters.
pub(crate) fn normalize_spec_path(path: &str) -> std::result::Result<String, String> {
    if let Some(reason) = common_problem(path) {
        return Err(reason);
    }
    let mut parts = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("its `..` component would leave the service folder".into()),
            other => parts.push(other),
        }
    }
    if parts.is_empty() {
        return Err("it names the service folder itself".into());
    }
    Ok(parts.join("/"))
}

/// What a path in the service folder must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    File,
    Dir,
    FileOrDir,
}

/// Resolves a normalized relative path inside `root`, refusing any symbolic link on the way,
/// and checks that it is what `expect` says. `needed_by` names the field, for error messages.
pub(crate) fn resolve_in_folder(
    root: &Path,
    rel: &str,
    expect: Expect,
    needed_by: &str,
) -> Result<PathBuf> {
    let origin = folder_origin(root);
    let mut current = root.to_path_buf();
    let components: Vec<&str> = rel.split('/').collect();
    for (i, component) in components.iter().enumerate() {
        current.push(component);
        let meta = match std::fs::symlink_metadata(&current) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingFile {
                    origin,
                    entry: rel.to_string(),
                    needed_by: needed_by.to_string(),
                });
            }
            Err(e) => return Err(Error::io(&current, e)),
        };
        let so_far = components[..=i].join("/");
        if meta.file_type().is_symlink() {
            return Err(Error::UnsafePath {
                origin,
                entry: rel.to_string(),
                reason: format!(
                    "`{so_far}` is a symbolic link, which bundles do not follow ({needed_by}); \
                     copy the target into the service folder instead"
                ),
            });
        }
        let last = i + 1 == components.len();
        if !last && !meta.is_dir() {
            return Err(Error::MissingFile {
                origin,
                entry: rel.to_string(),
                needed_by: format!("{needed_by} (`{so_far}` is not a directory)"),
            });
        }
        if last {
            let ok = match expect {
                Expect::File => meta.is_file(),
                Expect::Dir => meta.is_dir(),
                Expect::FileOrDir => meta.is_file() || meta.is_dir(),
            };
            if !ok {
                let wanted = match expect {
                    Expect::File => "a regular file",
                    Expect::Dir => "a directory",
                    Expect::FileOrDir => "a regular file or a directory",
                };
                return Err(Error::MissingFile {
                    origin,
                    entry: rel.to_string(),
                    needed_by: format!("{needed_by} (it must be {wanted})"),
                });
            }
        }
    }
    Ok(current)
}

/// Lists the regular files under directory `dir` (the normalized relative path `rel` inside
/// `root`), recursively, as (relative path, absolute path), sorted. Symbolic links and special
/// files are refused.
pub(crate) fn walk_dir(root: &Path, rel: &str, needed_by: &str) -> Result<Vec<(String, PathBuf)>> {
    let origin = folder_origin(root);
    let mut out = Vec::new();
    let mut stack = vec![(rel.to_string(), root.join(rel))];
    while let Some((rel_dir, abs_dir)) = stack.pop() {
        let entries = std::fs::read_dir(&abs_dir).map_err(|e| Error::io(&abs_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&abs_dir, e))?;
            let abs = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(Error::UnsafePath {
                    origin,
                    entry: abs.display().to_string(),
                    reason: format!("its name is not valid UTF-8 ({needed_by})"),
                });
            };
            let child = format!("{rel_dir}/{name}");
            if let Some(reason) = archive_path_problem(&child) {
                return Err(Error::UnsafePath {
                    origin,
                    entry: child,
                    reason: format!("{reason} ({needed_by})"),
                });
            }
            let file_type = entry.file_type().map_err(|e| Error::io(&abs, e))?;
            if file_type.is_symlink() {
                return Err(Error::UnsafePath {
                    origin,
                    entry: child,
                    reason: format!(
                        "it is a symbolic link, which bundles do not follow ({needed_by}); copy \
                         the target instead"
                    ),
                });
            } else if file_type.is_dir() {
                stack.push((child, abs));
            } else if file_type.is_file() {
                out.push((child, abs));
            } else {
                return Err(Error::UnsafePath {
                    origin,
                    entry: child,
                    reason: format!("it is neither a regular file nor a directory ({needed_by})"),
                });
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn folder_origin(root: &Path) -> String {
    format!("service folder `{}`", root.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_spec_paths() {
        assert_eq!(normalize_spec_path("./a/./b/").as_deref(), Ok("a/b"));
        assert_eq!(normalize_spec_path("a//b").as_deref(), Ok("a/b"));
        assert_eq!(normalize_spec_path("model.zip").as_deref(), Ok("model.zip"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a\\b",
            "C:/x",
            "c:x",
            ".",
            "./",
            "a\u{0}",
        ] {
            assert!(
                normalize_spec_path(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn checks_archive_paths() {
        assert_eq!(archive_path_problem("datasets/a.parquet"), None);
        assert_eq!(archive_path_problem("folders/x/y z.txt"), None);
        for bad in [
            "", "/abs", "../x", "a/../b", "./a", "a//b", "a/", "a\\b", "D:/x", "a\nb",
        ] {
            assert!(
                archive_path_problem(bad).is_some(),
                "{bad:?} should be refused"
            );
        }
    }
}
