//! Hostile sources: links out of the dataset and sizes that would exhaust memory are refused
//! with an error naming the file, and nothing is written.

mod common;

use std::fs;
use std::io::Write;
use std::path::Path;

use common::*;

/// The run fails, leaves nothing, and its error holds every one of `parts`.
fn assert_refused(root: &Path, source: &Path, parts: &[&str]) {
    let config = config(root, source);
    let err = format!(
        "{:#}",
        data_prep::run(&config, false).expect_err("must fail")
    );
    for part in parts {
        assert!(err.contains(part), "expected {part:?} in: {err}");
    }
    assert_no_output(&config.artifacts);
}

#[test]
fn folder_links_to_files_or_folders_outside_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret.txt");
    fs::write(&secret, "not a review").unwrap();

    // A review file that is a link (to a readable file elsewhere).
    let folder = acl_folder(&tmp.path().join("file-link"));
    let link = folder.join("train/pos/1_8.txt");
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    assert_refused(
        tmp.path(),
        &folder,
        &[
            &link.display().to_string(),
            "a symbolic link",
            "links are refused",
        ],
    );

    // A label folder that is a link to another folder of review-named files.
    let folder = acl_folder(&tmp.path().join("dir-link"));
    let elsewhere = tmp.path().join("elsewhere");
    fs::rename(folder.join("test/neg"), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, folder.join("test/neg")).unwrap();
    assert_refused(
        tmp.path(),
        &folder,
        &[
            &folder.join("test/neg").display().to_string(),
            "a symbolic link",
        ],
    );
}

#[test]
fn oversized_reviews_are_refused_in_every_source() {
    let tmp = tempfile::tempdir().unwrap();
    let big = vec![b'a'; (1 << 20) + 1];

    let folder = acl_folder(&tmp.path().join("folder"));
    let file = folder.join("train/neg/3_2.txt");
    fs::write(&file, &big).unwrap();
    assert_refused(
        tmp.path(),
        &folder,
        &[
            &file.display().to_string(),
            "1048577 bytes, over the 1 MiB (1048576 bytes) a review may have",
        ],
    );

    let path = tarball(
        &tmp.path().join("t/aclImdb_v1.tar.gz"),
        |r| r.rel_path() == "train/neg/3_2.txt",
        &[("aclImdb/train/neg/3_2.txt", &big)],
    );
    assert_refused(
        tmp.path(),
        &path,
        &["aclImdb/train/neg/3_2.txt", "1048577 bytes, over the 1 MiB"],
    );

    let dir = parquet_folder(&tmp.path().join("p"));
    let shard = dir.join("test-00000-of-00001.parquet");
    let text = String::from_utf8(big).unwrap();
    write_parquet(
        &shard,
        vec![
            polars::prelude::Column::new("text".into(), ["fine", text.as_str()]),
            polars::prelude::Column::new("label".into(), [0i64, 1]),
        ],
    );
    assert_refused(
        tmp.path(),
        &dir,
        &[&format!("{}: row 1: 1048577 bytes", shard.display())],
    );
}

/// A tar header claiming 2^50 bytes (with a few bytes behind it) is refused before anything is
/// allocated for it: an abort here would take the whole process down.
#[test]
fn a_tar_member_claiming_a_huge_size_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("aclImdb_v1.tar.gz");
    let mut gz =
        flate2::write::GzEncoder::new(fs::File::create(&path).unwrap(), Default::default());
    let mut header = tar::Header::new_gnu();
    header.set_path("aclImdb/train/pos/1_9.txt").unwrap();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(1 << 50);
    header.set_mode(0o644);
    header.set_cksum();
    gz.write_all(header.as_bytes()).unwrap();
    gz.write_all(&[b'x'; 512]).unwrap();
    gz.finish().unwrap();
    assert_refused(
        tmp.path(),
        &path,
        &[
            &path.display().to_string(),
            "aclImdb/train/pos/1_9.txt: 1125899906842624 bytes, over the 1 MiB",
        ],
    );
}
