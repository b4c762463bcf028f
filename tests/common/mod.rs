//! Helpers shared by the integration tests: scratch directories, and a place under /tmp for
//! the tests that run the built binary as another user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A scratch directory for segments (in the system's temporary directory), fresh on creation
/// and removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    /// `<tmp>/emf-proc-<tag>-<pid>`, emptied first.
    pub fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("emf-proc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory tree under /tmp that any user can reach (mode 0755), removed on drop.
///
/// The repository, and with it the built binary under `target/`, may live where other users
/// cannot enter (a clone in a 0700 `mktemp -d` folder, or under /root): a test that runs the
/// binary as another user runs [`Public::binary`], a copy in here, and keeps in here the
/// files that user must reach.
pub struct Public(pub PathBuf);

impl Public {
    /// `/tmp/emf-<tag>-<pid>`, fresh, mode 0755.
    pub fn new(tag: &str) -> Public {
        let top = Path::new("/tmp").join(format!("emf-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir(&top).unwrap();
        chmod(&top, 0o755);
        Public(top)
    }

    /// A subdirectory with the given mode.
    pub fn subdir(&self, name: &str, mode: u32) -> PathBuf {
        let d = self.0.join(name);
        std::fs::create_dir(&d).unwrap();
        chmod(&d, mode);
        d
    }

    /// A copy of the built `erlmcp-flow` (mode 0755) in a 0755 directory of its own, which
    /// any user can run wherever the repository lives.
    pub fn binary(&self) -> PathBuf {
        let bin = self.subdir("bin", 0o755).join("erlmcp-flow");
        std::fs::copy(env!("CARGO_BIN_EXE_erlmcp-flow"), &bin).unwrap();
        chmod(&bin, 0o755);
        bin
    }
}

impl Drop for Public {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets the mode of `p` (the umask does not apply).
pub fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}
