//! Stage identity from source: the identity each stage was built with is the hash of the
//! source it links, which is the same for every copy of the checkout, wherever it lies; a
//! comment edited in one stage's source changes that stage's identity and no other's.
//!
//! (What the build adds is only the compiled-in `STAGE_IDENTITY`: checked here against the
//! recomputed hash, so that two folders built from one commit agree.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use source_identity::{compute, workspace_root};

/// (package, the identity its build compiled in), in pipeline order.
const STAGES: [(&str, &str); 6] = [
    ("data-prep", data_prep::CODE),
    ("tokenize", tokenize::CODE),
    ("train", train::CODE),
    ("evaluate", evaluate::CODE),
    ("report", report::stage::CODE),
    ("export", export::CODE),
];

fn root() -> PathBuf {
    workspace_root(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn identities(root: &Path) -> Vec<String> {
    STAGES
        .iter()
        .map(|(package, _)| {
            compute(root, package, env!("BUILD_TARGET"))
                .unwrap_or_else(|e| panic!("{package}: {e}"))
                .hash
        })
        .collect()
}

/// A copy of the checkout's files (tracked, and untracked ones git does not ignore) in `dir`,
/// as a clone of it would hold them.
fn copy_checkout(dir: &Path) {
    let root = root();
    let out = Command::new("git")
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .current_dir(&root)
        .output()
        .expect("git runs");
    assert!(out.status.success(), "git ls-files failed");
    for rel in out.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        let from = root.join(rel);
        // Listed but deleted in the working tree.
        if !from.exists() {
            continue;
        }
        let to = dir.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap();
    }
}

#[test]
fn each_stage_was_built_with_the_identity_of_its_source() {
    let here = identities(&root());
    for ((package, code), id) in STAGES.iter().zip(&here) {
        assert_eq!(code, id, "{package}: compiled-in identity vs its source");
        assert_eq!(id.len(), 16);
    }
    let mut unique = here.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        STAGES.len(),
        "each stage has its own identity"
    );
}

#[test]
fn two_copies_of_the_checkout_agree_and_a_comment_in_report_changes_report_only() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    copy_checkout(a.path());
    copy_checkout(b.path());
    let built: Vec<String> = STAGES.iter().map(|(_, code)| code.to_string()).collect();
    assert_eq!(
        identities(a.path()),
        built,
        "a copy elsewhere: the same identities"
    );
    assert_eq!(identities(b.path()), built);

    // A build folder inside the copy changes nothing.
    fs::create_dir_all(b.path().join("target/release")).unwrap();
    fs::write(b.path().join("target/release/report"), "a binary").unwrap();
    assert_eq!(identities(b.path()), built);

    let source = a.path().join("report/src/lib.rs");
    let mut text = fs::read_to_string(&source).unwrap();
    text.push_str("\n// A comment.\n");
    fs::write(&source, text).unwrap();
    let edited = identities(a.path());
    for (i, (package, _)) in STAGES.iter().enumerate() {
        if *package == "report" {
            assert_ne!(edited[i], built[i], "report's source changed");
        } else {
            assert_eq!(edited[i], built[i], "{package} does not link report");
        }
    }

    // A library every stage links: every stage.
    let lib = b.path().join("crates/pipeline/src/lib.rs");
    let mut text = fs::read_to_string(&lib).unwrap();
    text.push_str("\n// A comment.\n");
    fs::write(&lib, text).unwrap();
    let edited = identities(b.path());
    for (i, (package, _)) in STAGES.iter().enumerate() {
        assert_ne!(edited[i], built[i], "{package} links pipeline");
    }
}
