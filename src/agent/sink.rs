//! Credential files, written atomically: the new contents go to a
//! temporary file in the same directory (created with mode 0600, then given
//! the configured mode and owner), are flushed to disk, and replace the old
//! file by `rename`, so a reader sees the old credential or the new one,
//! never a part of either. Removal deletes the file.

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::config::FileSink;

/// Writes `contents` to the sink's path, replacing what was there.
pub fn write(sink: &FileSink, contents: &[u8]) -> std::io::Result<()> {
    let tmp = temporary_path(&sink.path)?;
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(contents)?;
        // fchmod on the open file: exact, whatever the umask.
        file.set_permissions(Permissions::from_mode(sink.mode))?;
        if sink.owner.is_some() || sink.group.is_some() {
            std::os::unix::fs::fchown(&file, sink.owner, sink.group)?;
        }
        file.sync_all()?;
        std::fs::rename(&tmp, &sink.path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Deletes the file; a file that is already gone is no error.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// `.<name>.<random>.tmp` beside `path`: the same file system, so the
/// rename is atomic, and a name no other writer picks.
fn temporary_path(path: &Path) -> std::io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let random = crate::crypto::random_bytes::<6>().map_err(|_| std::io::Error::other("no randomness"))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.tmp", crate::crypto::hex(&random)));
    Ok(path.with_file_name(tmp))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::agent::config::FileFormat;

    fn sink(path: PathBuf, mode: u32) -> FileSink {
        FileSink { path, format: FileFormat::Token, mode, owner: None, group: None }
    }

    #[test]
    fn a_file_is_replaced_whole_with_its_mode_and_nothing_is_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write(&sink(path.clone(), 0o600), b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let inode = std::fs::metadata(&path).unwrap().ino();
        write(&sink(path.clone(), 0o640), b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode, "replaced by rename, not rewritten in place");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["token"]);
        remove(&path).unwrap();
        assert!(!path.exists());
        remove(&path).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write(&sink(path.clone(), 0o600), b"old").unwrap();
        // Another owner needs privileges this test does not have, unless it
        // runs as root; then a directory in the way makes the rename fail.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join("inside"), b"x").unwrap();
        assert!(write(&sink(blocked.clone(), 0o600), b"new").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["blocked", "token"]);
    }
}
