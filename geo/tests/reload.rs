//! Reloading: on change, on request, and failures that must leave the old data serving.

mod support;

use std::fs::{File, FileTimes};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use support::{country, install_bytes, TestDb};
use watchpost_geo::{GeoDb, GeoError};

fn db_with(code: &str, database_type: &str) -> TestDb {
    TestDb::v6(database_type)
        .flat("1.0.0.0/24", code)
        .flat("2400:cb00::/32", code)
}

fn setup(code: &str) -> (tempfile::TempDir, PathBuf, GeoDb) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("country.mmdb");
    db_with(code, "first").install(&path);
    let geo = GeoDb::open(&path).unwrap();
    (dir, path, geo)
}

#[track_caller]
fn assert_names_path(err: &GeoError, path: &Path) {
    let message = err.to_string();
    assert!(
        message.contains(&path.display().to_string()),
        "error does not name {}: {message}",
        path.display()
    );
}

#[test]
fn reload_if_changed_picks_up_a_replaced_file_once() {
    let (_dir, path, geo) = setup("AU");
    assert!(!geo.reload_if_changed().unwrap(), "nothing changed yet");
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("AU"));

    db_with("NZ", "second").install(&path);
    assert!(geo.reload_if_changed().unwrap());
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("NZ"));
    assert_eq!(country(&geo, "2400:cb00::1").as_deref(), Some("NZ"));
    assert_eq!(geo.info().unwrap().database_type, "second");

    assert!(!geo.reload_if_changed().unwrap(), "already loaded");
    assert!(!geo.reload_if_changed().unwrap());
}

#[cfg(unix)]
#[test]
fn replacement_with_same_size_and_mtime_is_still_noticed() {
    // Archive extraction (tar, npm) gives every version of a file the same fixed mtime;
    // a same-length replacement must still be detected.
    let (_dir, path, geo) = setup("AU");
    let old_meta = std::fs::metadata(&path).unwrap();
    let new_bytes = db_with("NZ", "first").bytes();
    assert_eq!(
        new_bytes.len() as u64,
        old_meta.len(),
        "test needs equal sizes"
    );

    let tmp = path.with_extension("new");
    std::fs::write(&tmp, &new_bytes).unwrap();
    File::options()
        .write(true)
        .open(&tmp)
        .unwrap()
        .set_times(FileTimes::new().set_modified(old_meta.modified().unwrap()))
        .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let new_meta = std::fs::metadata(&path).unwrap();
    assert_eq!(new_meta.modified().unwrap(), old_meta.modified().unwrap());
    assert_eq!(new_meta.len(), old_meta.len());

    assert!(geo.reload_if_changed().unwrap());
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("NZ"));
}

#[test]
fn explicit_reload_always_rereads() {
    let (_dir, path, geo) = setup("AU");
    geo.reload().unwrap();
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("AU"));

    db_with("NZ", "second").install(&path);
    geo.reload().unwrap();
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("NZ"));
    // The explicit reload recorded the new version: nothing left to pick up.
    assert!(!geo.reload_if_changed().unwrap());
}

#[test]
fn failed_reloads_keep_the_old_database_serving() {
    let (_dir, path, geo) = setup("AU");
    let info_before = geo.info();

    // Garbage.
    install_bytes(&path, b"this is not a MaxMind database");
    let err = geo.reload_if_changed().unwrap_err();
    assert!(matches!(err, GeoError::InvalidDatabase { .. }), "{err:?}");
    assert_names_path(&err, &path);
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("AU"));
    assert_eq!(geo.info(), info_before);
    // The broken version was not recorded as loaded: the next poll tries again.
    assert!(geo.reload_if_changed().is_err());
    assert!(geo.reload().is_err());
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("AU"));

    // A truncated copy of a valid database.
    let bytes = db_with("NZ", "second").bytes();
    install_bytes(&path, &bytes[..bytes.len() / 2]);
    let err = geo.reload().unwrap_err();
    assert_names_path(&err, &path);
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("AU"));

    // The file disappears.
    std::fs::remove_file(&path).unwrap();
    let err = geo.reload_if_changed().unwrap_err();
    assert!(matches!(err, GeoError::Io { .. }), "{err:?}");
    assert_names_path(&err, &path);
    let err = geo.reload().unwrap_err();
    assert_names_path(&err, &path);
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("AU"));
    assert_eq!(geo.info(), info_before);

    // A valid file comes back and is picked up.
    db_with("NZ", "second").install(&path);
    assert!(geo.reload_if_changed().unwrap());
    assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some("NZ"));
}

#[test]
fn open_errors_name_the_path() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("missing.mmdb");
    let err = GeoDb::open(&missing).unwrap_err();
    assert!(matches!(err, GeoError::Io { .. }), "{err:?}");
    assert_names_path(&err, &missing);

    let empty = dir.path().join("empty.mmdb");
    std::fs::write(&empty, b"").unwrap();
    let err = GeoDb::open(&empty).unwrap_err();
    assert!(matches!(err, GeoError::InvalidDatabase { .. }), "{err:?}");
    assert_names_path(&err, &empty);

    let corrupt = dir.path().join("corrupt.mmdb");
    let mut bytes = db_with("AU", "t").bytes();
    // Keep the metadata marker but wreck the node count and record size behind it.
    let marker = b"\xAB\xCD\xEFMaxMind.com";
    let at = bytes
        .windows(marker.len())
        .rposition(|w| w == marker)
        .unwrap();
    for byte in &mut bytes[at + marker.len()..] {
        *byte = 0xFF;
    }
    std::fs::write(&corrupt, &bytes).unwrap();
    let err = GeoDb::open(&corrupt).unwrap_err();
    assert!(matches!(err, GeoError::InvalidDatabase { .. }), "{err:?}");
    assert_names_path(&err, &corrupt);

    let err = GeoDb::open(dir.path()).unwrap_err();
    assert!(matches!(err, GeoError::Io { .. }), "{err:?}");
    assert_names_path(&err, dir.path());
}

#[test]
fn lookups_during_reloads_always_see_a_whole_database() {
    let (_dir, path, geo) = setup("AU");
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut seen = 0_u64;
                    while !done.load(Ordering::Relaxed) {
                        let v4 = country(&geo, "1.0.0.1");
                        let v6 = country(&geo, "2400:cb00::1");
                        for answer in [v4, v6] {
                            assert!(
                                matches!(answer.as_deref(), Some("AU" | "NZ")),
                                "lookup during reload answered {answer:?}"
                            );
                        }
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();

        for round in 0..40 {
            // Alternating types of different lengths make every version differ in size,
            // so change detection cannot depend on timestamp granularity.
            let (code, database_type) = if round % 2 == 0 {
                ("NZ", "even")
            } else {
                ("AU", "odd")
            };
            db_with(code, database_type).install(&path);
            if round % 3 == 0 {
                geo.reload().unwrap();
            } else {
                assert!(geo.reload_if_changed().unwrap());
            }
            assert_eq!(country(&geo, "1.0.0.1").as_deref(), Some(code));
        }
        done.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().unwrap();
        }
    });
}
