//! Files that hold secrets or people: the state database (password and token hashes,
//! notes, the audit), its journal, the evidence JPEGs, recorded observations. They are
//! created owner-only (0600, in directories created 0700) whatever the process's umask, and
//! one found readable by others is tightened at start, with a warning naming it.
//!
//! One helper for every crate, so no writer forgets a mode. Unix only: elsewhere these are
//! the plain calls.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::path::Path;

/// The mode of a private file: read and write for the owner only.
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// The mode of a private directory.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents, each one created 0700. Directories that already
/// exist keep their mode: they may be shared ones (the working directory, `/var/lib`).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(PRIVATE_DIR_MODE);
    }
    builder.create(dir)
}

/// Creates the directory `path` is in (as [`create_private_dir`]), if it names one.
pub fn create_private_parent(path: &Path) -> io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => create_private_dir(dir),
        None => Ok(()),
    }
}

/// `OpenOptions` whose `create` makes the file 0600 (the umask can only take bits away).
/// An existing file keeps its mode; [`restrict`] it first when it may be older.
pub fn private_open_options() -> OpenOptions {
    #[allow(unused_mut)]
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(PRIVATE_FILE_MODE);
    }
    options
}

/// Takes group and other permissions off `path` if it has any, with a warning naming it.
/// Returns whether the mode changed; a missing file is no error (`Ok(false)`).
pub fn restrict(path: &Path) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let mode = metadata.permissions().mode();
        if mode & 0o077 == 0 {
            return Ok(false);
        }
        let tightened = mode & !0o077;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened))?;
        tracing::warn!(
            path = %path.display(),
            was = format!("{:o}", mode & 0o7777),
            now = format!("{:o}", tightened & 0o7777),
            "a private file was readable by others; tightened its mode"
        );
        Ok(true)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(false)
    }
}

/// Readies an SQLite database path before the first connection: its directory created
/// private, the file created empty 0600 when missing (SQLite gives the `-wal`, `-shm` and
/// `-journal` files it creates the database file's mode), and the file and companions left
/// by an earlier run [`restrict`]ed. `:memory:` and empty paths are left alone.
pub fn prepare_private_sqlite(path: &Path) -> io::Result<()> {
    let text = path.as_os_str();
    if text.is_empty() || text == ":memory:" {
        return Ok(());
    }
    create_private_parent(path)?;
    match private_open_options()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            restrict(path)?;
        }
        Err(e) => return Err(e),
    }
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut companion = path.as_os_str().to_owned();
        companion.push(suffix);
        restrict(Path::new(&companion))?;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn directories_and_files_are_created_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b");
        create_private_dir(&nested).unwrap();
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&nested), 0o700);
        let file = nested.join("f");
        private_open_options()
            .write(true)
            .create(true)
            .open(&file)
            .unwrap();
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn a_loose_file_is_tightened_and_a_tight_one_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("db");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();
        assert!(restrict(&file).unwrap());
        assert_eq!(mode(&file), 0o600);
        assert!(!restrict(&file).unwrap());
        assert!(!restrict(&dir.path().join("missing")).unwrap());
    }

    #[test]
    fn an_sqlite_path_is_created_private_and_old_companions_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state/outbox.sqlite");
        prepare_private_sqlite(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(db.parent().unwrap()), 0o700);
        let wal = dir.path().join("state/outbox.sqlite-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        prepare_private_sqlite(&db).unwrap();
        assert_eq!((mode(&db), mode(&wal)), (0o600, 0o600));
        prepare_private_sqlite(Path::new(":memory:")).unwrap();
    }
}
