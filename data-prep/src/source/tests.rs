use super::*;

#[test]
fn review_names_parse_and_other_files_are_skipped() {
    let place = Place::of(&["train", "pos", "123_9.txt"]).unwrap().unwrap();
    assert_eq!(
        (place.split, place.label, place.id, place.rating),
        (0, 1, 123, 9)
    );
    assert_eq!(place.rel_path(), "train/pos/123_9.txt");
    for other in [
        &["README"][..],
        &["train", "urls_pos.txt"],
        &["train", "unsup", "1_0.txt"],
        &["train", "labeledBow.feat"],
        &["test", "neg", "notes.md"],
    ] {
        assert_eq!(Place::of(other).unwrap(), None, "{other:?}");
    }
    for bad in [
        "12.txt", "a_3.txt", "1_11.txt", "1_0.txt", "_3.txt", "1_+3.txt",
    ] {
        assert!(Place::of(&["test", "neg", bad]).is_err(), "{bad}");
    }
}

#[test]
fn tarball_paths_must_stay_inside_aclimdb() {
    let parts = |p: &str| entry_parts(Path::new(p));
    assert_eq!(
        parts("aclImdb/train/pos/1_7.txt").unwrap(),
        ["train", "pos", "1_7.txt"]
    );
    assert_eq!(parts("./aclImdb/README").unwrap(), ["README"]);
    for outside in [
        "/etc/passwd",
        "aclImdb/../x",
        "../aclImdb/x",
        "imdb/train/pos/1_7.txt",
        ".",
    ] {
        assert_eq!(parts(outside), None, "{outside}");
    }
}

#[test]
fn hub_ids_and_paths_are_told_apart() {
    for hub in ["stanfordnlp/imdb", "imdb", "org/name-2"] {
        assert!(!is_local(hub), "{hub}");
    }
    for local in [
        "./data",
        "/data/imdb",
        "data/aclImdb",
        "aclImdb",
        "x.tar.gz",
        "a/b/c",
    ] {
        assert!(is_local(local), "{local}");
    }
}
