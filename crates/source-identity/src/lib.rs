//! A stage's identity from its source, computed by its build script: the same commit built in
//! any folder, into any target folder, with any toolchain release, gives the same identity,
//! and a change to the code a stage links gives it a new one (and only it).
//!
//! The identity hashes, for the package and every package it links (normal and build
//! dependencies, found through `Cargo.lock`):
//! - a workspace member: its files (manifest, `build.rs`, `src/` and any asset beside them),
//!   but not `tests/`, `benches/` or `examples/`, which decide no output;
//! - any other package: its name, version, source and checksum from `Cargo.lock`;
//!
//! and the workspace manifest without its member list (dependency features such as `gemm`'s
//! `x86-v4` decide results), and the target triple. Paths never enter it, nor the toolchain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The environment variable the build script sets for the crate it builds.
pub const ENV: &str = "STAGE_IDENTITY";

type Error = String;

/// What the identity was computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// 16 hex digits.
    pub hash: String,
    /// The packages it covers, as hashed (name and version or content hash), sorted.
    pub packages: Vec<String>,
    /// Files and folders whose change must rerun the build script.
    pub watched: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct Lock {
    package: Vec<LockedPackage>,
}

#[derive(Deserialize)]
struct LockedPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
    #[serde(default)]
    dependencies: Vec<String>,
}

/// Reads and parses a TOML file.
fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Error> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The workspace members by package name, and the names each depends on (normal, build and
/// target-specific dependencies; not dev-dependencies).
fn members(root: &Path) -> Result<BTreeMap<String, (PathBuf, BTreeSet<String>)>, Error> {
    let manifest: toml::Table = read_toml(&root.join("Cargo.toml"))?;
    let paths = manifest
        .get("workspace")
        .and_then(|w| w.get("members"))
        .and_then(|m| m.as_array())
        .ok_or("the workspace manifest lists no members")?;
    let mut out = BTreeMap::new();
    for path in paths {
        let dir = root.join(path.as_str().ok_or("a member that is not a path")?);
        let member: toml::Table = read_toml(&dir.join("Cargo.toml"))?;
        let name = member
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .ok_or_else(|| format!("{}: no package name", dir.display()))?
            .to_string();
        let mut deps = BTreeSet::new();
        let mut tables: Vec<&toml::Value> = ["dependencies", "build-dependencies"]
            .iter()
            .filter_map(|k| member.get(*k))
            .collect();
        if let Some(targets) = member.get("target").and_then(|t| t.as_table()) {
            for target in targets.values() {
                tables.extend(
                    ["dependencies", "build-dependencies"]
                        .iter()
                        .filter_map(|k| target.get(*k)),
                );
            }
        }
        for table in tables.into_iter().filter_map(|t| t.as_table()) {
            for (key, spec) in table {
                // `alias = { package = "real-name", … }`
                let real = spec.get("package").and_then(|p| p.as_str()).unwrap_or(key);
                deps.insert(real.to_string());
            }
        }
        out.insert(name, (dir, deps));
    }
    Ok(out)
}

/// Files of a member that decide what it compiles to, relative paths sorted.
fn member_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    fn walk(base: &Path, dir: &Path, top: bool, out: &mut Vec<PathBuf>) -> Result<(), Error> {
        let entries =
            fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| e.to_string())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let skipped = name.starts_with('.')
                || (top && matches!(name.as_str(), "tests" | "benches" | "examples" | "target"));
            if skipped {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, false, out)?;
            } else {
                out.push(
                    path.strip_prefix(base)
                        .expect("below the base")
                        .to_path_buf(),
                );
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, true, &mut out)?;
    out.sort();
    Ok(out)
}

/// The content hash of a member's files (relative path and bytes of each).
fn member_hash(dir: &Path) -> Result<String, Error> {
    let mut hasher = Sha256::new();
    for rel in member_files(dir)? {
        let bytes =
            fs::read(dir.join(&rel)).map_err(|e| format!("cannot read {}: {e}", rel.display()))?;
        // `/`-separated on every system.
        let name: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        hasher.update(format!("{}\0{}\0", name.join("/"), bytes.len()));
        hasher.update(&bytes);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The lock entries a dependency string of `Cargo.lock` (`name`, `name version` or
/// `name version (source)`) names.
fn resolve<'a>(lock: &'a [LockedPackage], dep: &str) -> Vec<&'a LockedPackage> {
    let mut parts = dep.split_whitespace();
    let name = parts.next().unwrap_or_default();
    let version = parts.next();
    lock.iter()
        .filter(|p| p.name == name && version.is_none_or(|v| p.version == v))
        .collect()
}

/// The identity of workspace package `package` of the workspace at `root`, for `target`.
pub fn compute(root: &Path, package: &str, target: &str) -> Result<Identity, Error> {
    let lock: Lock = read_toml(&root.join("Cargo.lock"))?;
    let members = members(root)?;
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut packages = Vec::new();
    let mut watched = vec![root.join("Cargo.lock"), root.join("Cargo.toml")];
    let start = lock
        .package
        .iter()
        .find(|p| p.name == package && p.source.is_none())
        .ok_or_else(|| format!("{package} is not a workspace package in Cargo.lock"))?;
    let mut queue = vec![start];
    while let Some(p) = queue.pop() {
        if !seen.insert((p.name.clone(), p.version.clone())) {
            continue;
        }
        let mut deps: Vec<&String> = p.dependencies.iter().collect();
        match (&p.source, members.get(&p.name)) {
            (None, Some((dir, used))) => {
                packages.push(format!("{} {}", p.name, member_hash(dir)?));
                // Only what it links: its dev-dependencies decide nothing it outputs.
                deps.retain(|d| used.contains(d.split_whitespace().next().unwrap_or_default()));
                watched.push(dir.join("Cargo.toml"));
                for rel in member_files(dir)? {
                    if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
                        watched.push(dir.join(parent));
                    }
                    watched.push(dir.join(rel));
                }
            }
            (source, _) => packages.push(format!(
                "{} {} {} {}",
                p.name,
                p.version,
                source.as_deref().unwrap_or("path"),
                p.checksum.as_deref().unwrap_or("-")
            )),
        }
        for dep in deps {
            queue.extend(resolve(&lock.package, dep));
        }
    }
    packages.sort();
    watched.sort();
    watched.dedup();

    let mut workspace: toml::Table = read_toml(&root.join("Cargo.toml"))?;
    if let Some(toml::Value::Table(w)) = workspace.get_mut("workspace") {
        // Adding a crate to the workspace changes no stage.
        w.remove("members");
    }
    let mut text = String::new();
    let _ = writeln!(text, "target {target}");
    let _ = writeln!(
        text,
        "workspace {}",
        toml::to_string(&workspace).map_err(|e| e.to_string())?
    );
    for p in &packages {
        let _ = writeln!(text, "{p}");
    }
    let hash = hex::encode(Sha256::digest(text.as_bytes()));
    Ok(Identity {
        hash: hash[..16].to_string(),
        packages,
        watched,
    })
}

/// The workspace root above `manifest_dir`: the nearest folder with a `Cargo.lock`.
pub fn workspace_root(manifest_dir: &Path) -> Result<PathBuf, Error> {
    manifest_dir
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("no Cargo.lock above {}", manifest_dir.display()))
}

/// For a build script: sets [`ENV`] for the crate being built to its identity, and asks cargo
/// to rerun the script when anything it covers changes.
pub fn emit() {
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("cargo sets {k}"));
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let result = workspace_root(&manifest_dir)
        .and_then(|root| compute(&root, &env("CARGO_PKG_NAME"), &env("TARGET")));
    let identity = result.unwrap_or_else(|e| panic!("the stage's source identity: {e}"));
    for path in &identity.watched {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    println!("cargo::rustc-env={ENV}={}", identity.hash);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workspace of two members: `app` (linking `lib` and a registry crate, with a
    /// dev-dependency) and `lib`.
    fn workspace(dir: &Path) {
        let write = |rel: &str, text: &str| {
            let path = dir.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        };
        write(
            "Cargo.toml",
            "[workspace]\nmembers = [\"app\", \"lib\"]\n[workspace.dependencies]\ngemm = { version = \"0.19\", features = [\"x86-v4\"] }\n",
        );
        write(
            "app/Cargo.toml",
            "[package]\nname = \"app\"\n[dependencies]\nlib = { path = \"../lib\" }\nserde = \"1\"\n[dev-dependencies]\ntempfile = \"3\"\n",
        );
        write("app/src/main.rs", "fn main() {} // app\n");
        write("app/tests/t.rs", "#[test] fn t() {}\n");
        write("lib/Cargo.toml", "[package]\nname = \"lib\"\n");
        write("lib/src/lib.rs", "pub fn f() {}\n");
        write("lib/assets/font.ttf", "glyphs");
        write(
            "Cargo.lock",
            r#"version = 4
[[package]]
name = "app"
version = "0.1.0"
dependencies = ["lib", "serde", "tempfile"]

[[package]]
name = "lib"
version = "0.1.0"

[[package]]
name = "serde"
version = "1.0.1"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "aa"

[[package]]
name = "tempfile"
version = "3.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "bb"
"#,
        );
    }

    fn id(dir: &Path, package: &str) -> String {
        compute(dir, package, "x86_64-unknown-linux-gnu")
            .unwrap()
            .hash
    }

    #[test]
    fn the_same_source_in_another_folder_has_the_same_identity() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        workspace(a.path());
        workspace(b.path());
        assert_eq!(id(a.path(), "app"), id(b.path(), "app"));
        assert_eq!(id(a.path(), "lib"), id(b.path(), "lib"));
        assert_ne!(id(a.path(), "app"), id(a.path(), "lib"));
        let identity = compute(a.path(), "app", "t").unwrap();
        assert!(
            identity
                .packages
                .iter()
                .any(|p| p.starts_with("serde 1.0.1 registry")),
            "{:?}",
            identity.packages
        );
        assert!(
            !identity.packages.iter().any(|p| p.starts_with("tempfile")),
            "dev-dependencies are not linked"
        );
        // A build folder beside the sources changes nothing.
        fs::create_dir_all(a.path().join("app/target/release")).unwrap();
        fs::write(a.path().join("app/target/release/app"), "binary").unwrap();
        assert_eq!(id(a.path(), "app"), id(b.path(), "app"));
    }

    #[test]
    fn a_change_reaches_the_packages_that_link_it_and_no_other() {
        let dir = tempfile::tempdir().unwrap();
        workspace(dir.path());
        let (app, lib) = (id(dir.path(), "app"), id(dir.path(), "lib"));
        // A comment in app: app only.
        fs::write(dir.path().join("app/src/main.rs"), "fn main() {} // app!\n").unwrap();
        let app2 = id(dir.path(), "app");
        assert_ne!(app2, app);
        assert_eq!(id(dir.path(), "lib"), lib);
        // An asset of lib: lib and app, which links it.
        fs::write(dir.path().join("lib/assets/font.ttf"), "other glyphs").unwrap();
        assert_ne!(id(dir.path(), "lib"), lib);
        assert_ne!(id(dir.path(), "app"), app2);
        let app3 = id(dir.path(), "app");
        // Tests decide no output.
        fs::write(dir.path().join("app/tests/t.rs"), "// changed").unwrap();
        assert_eq!(id(dir.path(), "app"), app3);
        // A dependency's version does; a workspace feature does; a new member does not.
        let lock = fs::read_to_string(dir.path().join("Cargo.lock")).unwrap();
        fs::write(
            dir.path().join("Cargo.lock"),
            lock.replace("1.0.1", "1.0.2"),
        )
        .unwrap();
        let app4 = id(dir.path(), "app");
        assert_ne!(app4, app3);
        assert_eq!(id(dir.path(), "lib"), id(dir.path(), "lib"));
        let manifest = fs::read_to_string(dir.path().join("Cargo.toml")).unwrap();
        fs::write(
            dir.path().join("Cargo.toml"),
            manifest.replace("\"x86-v4\"", "\"nightly\""),
        )
        .unwrap();
        let app5 = id(dir.path(), "app");
        assert_ne!(app5, app4);
        let with_member = fs::read_to_string(dir.path().join("Cargo.toml"))
            .unwrap()
            .replace("[\"app\", \"lib\"]", "[\"app\", \"lib\", \"new\"]");
        fs::write(dir.path().join("Cargo.toml"), with_member).unwrap();
        fs::create_dir_all(dir.path().join("new")).unwrap();
        fs::write(
            dir.path().join("new/Cargo.toml"),
            "[package]\nname = \"new\"\n",
        )
        .unwrap();
        assert_eq!(id(dir.path(), "app"), app5);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        workspace(dir.path());
        let err = compute(dir.path(), "serde", "t").unwrap_err();
        assert!(err.contains("serde is not a workspace package"), "{err}");
        assert!(workspace_root(Path::new("/")).is_err());
        assert_eq!(
            workspace_root(&dir.path().join("app/src")).unwrap(),
            dir.path()
        );
    }
}
