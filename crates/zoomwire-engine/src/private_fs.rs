//! Files and folders only their owner may read: everything under the data
//! directory (the store and its WAL and shared-memory files, the seal key,
//! the archive and its recordings) holds event bodies, participants' details
//! or secrets. Folders are made 0700 and files 0600 when created, and
//! narrowed when found wider (a store from an older zoomwire). On other
//! systems than Unix these do nothing.

use std::path::Path;

/// Folder mode: owner only.
pub const DIR_MODE: u32 = 0o700;
/// File mode: owner read and write.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents, each new one 0700.
pub fn create_dir_all(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(path)
}

/// Creates one folder (its parent must exist), 0700.
pub fn create_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(path)
}

/// Options that create a file 0600.
pub fn file_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// The same for tokio.
pub fn async_file_options() -> tokio::fs::OpenOptions {
    let mut options = tokio::fs::OpenOptions::new();
    #[cfg(unix)]
    options.mode(FILE_MODE);
    options
}

/// Narrows a file to 0600 if it is wider; a failure is logged, not fatal.
pub fn restrict_file(path: &Path) {
    restrict(path, FILE_MODE);
}

/// Narrows a folder to 0700 if it is wider; a failure is logged, not fatal.
pub fn restrict_dir(path: &Path) {
    restrict(path, DIR_MODE);
}

fn restrict(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if meta.permissions().mode() & 0o777 & !mode == 0 {
            return;
        }
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), error = %error, "cannot restrict the permissions");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_folders_and_files_are_the_owners_only() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b");
        create_dir_all(&deep).unwrap();
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&deep), 0o700);
        let file = deep.join("f");
        file_options()
            .write(true)
            .create_new(true)
            .open(&file)
            .unwrap();
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn wider_ones_are_narrowed() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        restrict_file(&file);
        assert_eq!(mode(&file), 0o600);
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        restrict_dir(root.path());
        assert_eq!(mode(root.path()), 0o700);
    }
}
