//! What this machine remembers about each vault, under `$XDG_STATE_HOME/vaultfs/<vault ID>/`:
//! the highest key-database epoch seen (rollback detection) and the local audit log that
//! read-only operations (mount, unlock) append to and the next writing command merges into
//! the key database; `mounts/` holds the daemons' pidfiles.
//!
//! The state directory may sit under a directory other users can write (a shared
//! `/var/lib`, a group-writable home) and a root daemon writes into it, so every directory
//! is opened without following symlinks and must be owned by the effective user with no
//! write bits for group or others (0700 when vaultfs creates it), and every file is created
//! 0600 by name inside such a directory with O_NOFOLLOW: nobody else can plant a link that
//! redirects a write, or add a line to the audit log.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use data_encoding::HEXLOWER;
use rustix::fs::{FileType, Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::error::{Result, VaultError};
use crate::crypto::VaultId;

/// `$XDG_STATE_HOME/vaultfs`, else `$HOME/.local/state/vaultfs`.
pub fn state_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("vaultfs"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(home).join(".local/state/vaultfs"));
    }
    Err(VaultError::InvalidArgument(
        "cannot find a state directory: set XDG_STATE_HOME or HOME".into(),
    ))
}

/// Largest state file read back (pidfile, epoch, local audit log).
const MAX_STATE_FILE: u64 = 16 << 20;

/// One private directory of this machine's state, open by fd.
pub struct StateDir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> VaultError {
    VaultError::io(format!("cannot {what} {}", path.display()))
}

fn not_private(path: &Path, why: String) -> VaultError {
    VaultError::InvalidArgument(format!(
        "{} is not private to you ({why}): another user could change vaultfs's state there; \
         remove it or set XDG_STATE_HOME to a private directory",
        path.display()
    ))
}

/// Owner must be the effective user; group and others must not be able to write.
fn check_owned(path: &Path, st: &rustix::fs::Stat, kind: FileType) -> Result<()> {
    let euid = rustix::process::geteuid().as_raw();
    if FileType::from_raw_mode(st.st_mode) != kind {
        return Err(not_private(path, "not of the expected type".into()));
    }
    if st.st_uid != euid {
        return Err(not_private(path, format!("owned by uid {}", st.st_uid)));
    }
    Ok(())
}

/// Every directory above the state root must be safe from other users, as sshd's
/// StrictModes asks of a home directory: owned by root or the effective user, and writable
/// by group or others only with the sticky bit (so nobody else can rename our directory
/// away and put theirs in its place); a symlink on the way must be root's or ours.
fn check_ancestors(dir: &Path) -> Result<()> {
    let euid = rustix::process::geteuid().as_raw();
    let trusted = |uid: u32| uid == 0 || uid == euid;
    let check = |p: &Path, follow: bool| -> Result<()> {
        let md = if follow {
            fs::metadata(p)
        } else {
            fs::symlink_metadata(p)
        }
        .map_err(io_err(p, "stat"))?;
        use std::os::unix::fs::MetadataExt;
        if md.file_type().is_symlink() {
            return if trusted(md.uid()) {
                Ok(())
            } else {
                Err(not_private(
                    p,
                    format!("a symlink owned by uid {}", md.uid()),
                ))
            };
        }
        if !trusted(md.uid()) {
            return Err(not_private(p, format!("owned by uid {}", md.uid())));
        }
        if md.mode() & 0o022 != 0 && md.mode() & 0o1000 == 0 {
            return Err(not_private(
                p,
                "others may write it (and it has no sticky bit)".into(),
            ));
        }
        Ok(())
    };
    let absolute = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(io_err(dir, "resolve"))?
            .join(dir)
    };
    for p in absolute.ancestors() {
        check(p, false)?;
    }
    let real = fs::canonicalize(&absolute).map_err(io_err(&absolute, "resolve"))?;
    for p in real.ancestors() {
        check(p, true)?;
    }
    Ok(())
}

impl StateDir {
    /// The state root, created 0700 if missing (its missing parents too).
    pub fn root() -> Result<StateDir> {
        let path = state_root()?;
        if let Some(parent) = path.parent() {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(io_err(parent, "create"))?;
        }
        let parent = path.parent().unwrap_or(Path::new("/"));
        check_ancestors(parent)?;
        let parent_fd = rustix::fs::open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(parent, "open")(e.into()))?;
        let name = path.file_name().expect("state root has a name");
        Self::open_child(&parent_fd, name, path.clone())
    }

    /// `mounts/` (pidfiles) under the root.
    pub fn mounts() -> Result<StateDir> {
        Self::root()?.subdir("mounts")
    }

    /// The directory of one vault under the root.
    pub fn vault(vault_id: &VaultId) -> Result<StateDir> {
        Self::root()?.subdir(&HEXLOWER.encode(vault_id))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn subdir(&self, name: &str) -> Result<StateDir> {
        Self::open_child(&self.fd, name.as_ref(), self.path.join(name))
    }

    /// mkdirat 0700 (if missing), open without following a symlink, check owner and mode.
    fn open_child(parent: &OwnedFd, name: &std::ffi::OsStr, path: PathBuf) -> Result<StateDir> {
        match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io_err(&path, "create")(e.into())),
        }
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            if e == rustix::io::Errno::NOTDIR || e == rustix::io::Errno::LOOP {
                not_private(&path, "not a directory (a symlink?)".into())
            } else {
                io_err(&path, "open")(e.into())
            }
        })?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(&path, "stat")(e.into()))?;
        check_owned(&path, &st, FileType::Directory)?;
        if st.st_mode & 0o077 != 0 {
            // Made by an older vaultfs (0777 under umask 0) or by hand: ours, so tighten it.
            // What others may have put inside is caught by the checks on each file.
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))
                .map_err(|e| io_err(&path, "restrict the mode of")(e.into()))?;
            log::warn!("{} was open to other users; now 0700", path.display());
        }
        Ok(StateDir { fd, path })
    }

    /// Opens `name` (never through a symlink); it must be a regular file of ours with one
    /// link, and ends up 0600.
    fn open_file(&self, name: &str, flags: OFlags) -> std::io::Result<fs::File> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::from_raw_mode(0o600),
        )?;
        let st = rustix::fs::fstat(&fd)?;
        let path = self.path.join(name);
        let refuse = |why: &str| {
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("{} is not private to you ({why})", path.display()),
            )
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(refuse("not a regular file"));
        }
        if st.st_uid != rustix::process::geteuid().as_raw() {
            return Err(refuse(&format!("owned by uid {}", st.st_uid)));
        }
        if st.st_nlink != 1 {
            return Err(refuse("it has other hard links"));
        }
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o600))?;
        }
        Ok(fs::File::from(fd))
    }

    /// The contents of `name`, or None if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path.join(name);
        let mut f = match self.open_file(name, OFlags::RDONLY) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path, "read")(e)),
        };
        let mut out = Vec::new();
        Read::by_ref(&mut f)
            .take(MAX_STATE_FILE)
            .read_to_end(&mut out)
            .map_err(io_err(&path, "read"))?;
        Ok(Some(out))
    }

    /// Replaces `name` atomically: a new 0600 temp file (O_EXCL), fsync, rename.
    pub fn write_atomic(&self, name: &str, contents: &[u8]) -> Result<()> {
        let path = self.path.join(name);
        let rand: [u8; 8] = crate::crypto::keys::random_array()
            .map_err(|e| VaultError::InvalidArgument(format!("no randomness: {e}")))?;
        let tmp = format!(".{name}.{}.tmp", HEXLOWER.encode(&rand));
        let write = || -> std::io::Result<()> {
            let mut f = self.open_file(
                &tmp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::TRUNC,
            )?;
            f.write_all(contents)?;
            f.sync_all()?;
            rustix::fs::renameat(&self.fd, tmp.as_str(), &self.fd, name)?;
            Ok(())
        };
        write().map_err(|e| {
            let _ = rustix::fs::unlinkat(&self.fd, tmp.as_str(), rustix::fs::AtFlags::empty());
            io_err(&path, "write")(e)
        })
    }

    /// Opens `name` for appending, creating it 0600.
    pub fn append(&self, name: &str) -> Result<fs::File> {
        self.open_file(name, OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE)
            .map_err(io_err(&self.path.join(name), "open"))
    }

    /// Removes `name`; a missing file is fine.
    pub fn remove(&self, name: &str) -> Result<()> {
        match rustix::fs::unlinkat(&self.fd, name, rustix::fs::AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(io_err(&self.path.join(name), "remove")(e.into())),
        }
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The highest epoch this machine has seen for the vault (0 if never).
pub fn seen_epoch(vault_id: &VaultId) -> Result<u64> {
    let dir = StateDir::vault(vault_id)?;
    match dir.read("epoch")? {
        None => Ok(0),
        Some(bytes) => String::from_utf8_lossy(&bytes).trim().parse().map_err(|_| {
            VaultError::InvalidArgument(format!(
                "{} is damaged: delete it to trust the current key database",
                dir.path().join("epoch").display()
            ))
        }),
    }
}

/// Records `epoch` as seen, if it is higher than what is recorded.
pub fn record_epoch(vault_id: &VaultId, epoch: u64) -> Result<()> {
    if epoch > seen_epoch(vault_id)? {
        StateDir::vault(vault_id)?.write_atomic("epoch", format!("{epoch}\n").as_bytes())?;
    }
    Ok(())
}

/// The newest K_auth this machine saw for the vault (format 2): its auth epoch and
/// fingerprint (`crypto::auth::fingerprint`), or None if it never saw a format-2 database.
pub fn seen_auth(vault_id: &VaultId) -> Result<Option<(u32, [u8; 32])>> {
    let dir = StateDir::vault(vault_id)?;
    let Some(bytes) = dir.read("auth")? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let damaged = || {
        VaultError::InvalidArgument(format!(
            "{} is damaged; it records the newest key-database authentication key this machine saw, so deleting it would let a forged key database through: restore it, or ask the vault's owner",
            dir.path().join("auth").display()
        ))
    };
    let (epoch, fp) = text.trim().split_once(' ').ok_or_else(damaged)?;
    let epoch = epoch.parse().map_err(|_| damaged())?;
    let fp: [u8; 32] = HEXLOWER
        .decode(fp.as_bytes())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(damaged)?;
    Ok(Some((epoch, fp)))
}

/// Records the newest K_auth seen, if its epoch is not below what is recorded.
pub fn record_auth(vault_id: &VaultId, epoch: u32, fingerprint: &[u8; 32]) -> Result<()> {
    if seen_auth(vault_id)?.is_some_and(|(e, f)| e > epoch || (e == epoch && &f == fingerprint)) {
        return Ok(());
    }
    reset_auth(vault_id, epoch, fingerprint)
}

/// Replaces the record (a new vault, or a key database rebuilt from the recovery key).
pub fn reset_auth(vault_id: &VaultId, epoch: u32, fingerprint: &[u8; 32]) -> Result<()> {
    StateDir::vault(vault_id)?.write_atomic(
        "auth",
        format!("{epoch} {}\n", HEXLOWER.encode(fingerprint)).as_bytes(),
    )
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LocalAuditEntry {
    pub time: i64,
    pub event: String,
    pub detail: String,
}

const AUDIT_FILE: &str = "audit.jsonl";

/// Appends an entry to the local audit log (for operations that do not write the database).
pub fn record_local_audit(vault_id: &VaultId, event: &str, detail: &str) -> Result<()> {
    let dir = StateDir::vault(vault_id)?;
    let entry = LocalAuditEntry {
        time: super::now(),
        event: event.into(),
        detail: detail.into(),
    };
    let mut line = serde_json::to_string(&entry).expect("audit entries serialize");
    line.push('\n');
    dir.append(AUDIT_FILE)?
        .write_all(line.as_bytes())
        .map_err(io_err(&dir.path().join(AUDIT_FILE), "write"))
}

/// Entries waiting to be merged into the key database. Damaged lines are skipped.
pub fn pending_local_audit(vault_id: &VaultId) -> Result<Vec<LocalAuditEntry>> {
    let Some(bytes) = StateDir::vault(vault_id)?.read(AUDIT_FILE)? else {
        return Ok(Vec::new());
    };
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Forgets the local entries once they are in the key database.
pub fn clear_local_audit(vault_id: &VaultId) -> Result<()> {
    StateDir::vault(vault_id)?.remove(AUDIT_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Runs `f` with XDG_STATE_HOME pointing into a fresh temp dir (tests in this module
    /// share the variable, so they hold a lock).
    fn with_state_home(f: impl FnOnce(&Path)) {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::tempdir().unwrap();
        // SAFETY: the lock above serializes every test that touches the variable.
        unsafe { std::env::set_var("XDG_STATE_HOME", tmp.path()) };
        f(tmp.path());
    }

    #[test]
    fn created_private_even_under_umask_zero() {
        with_state_home(|home| {
            // SAFETY: umask is process-wide; restored below.
            let old = unsafe { libc::umask(0) };
            let id = [7u8; 16];
            record_local_audit(&id, "mount", "/mnt").unwrap();
            record_epoch(&id, 3).unwrap();
            StateDir::mounts()
                .unwrap()
                .write_atomic("p", b"1\n")
                .unwrap();
            unsafe { libc::umask(old) };
            for dir in [
                "vaultfs",
                "vaultfs/mounts",
                "vaultfs/07070707070707070707070707070707",
            ] {
                let m = fs::metadata(home.join(dir)).unwrap().permissions().mode();
                assert_eq!(m & 0o7777, 0o700, "{dir}");
            }
            for file in [
                "vaultfs/mounts/p",
                "vaultfs/07070707070707070707070707070707/audit.jsonl",
                "vaultfs/07070707070707070707070707070707/epoch",
            ] {
                let m = fs::metadata(home.join(file)).unwrap().permissions().mode();
                assert_eq!(m & 0o7777, 0o600, "{file}");
            }
        });
    }

    #[test]
    fn symlinked_files_and_dirs_are_never_followed() {
        with_state_home(|home| {
            let victim = home.join("victim");
            fs::write(&victim, b"precious").unwrap();
            let id = [9u8; 16];
            let vdir = StateDir::vault(&id).unwrap();
            std::os::unix::fs::symlink(&victim, vdir.path().join(AUDIT_FILE)).unwrap();
            assert!(record_local_audit(&id, "mount", "/mnt").is_err());
            assert_eq!(fs::read(&victim).unwrap(), b"precious");
            // A symlinked pidfile is replaced by rename, not written through.
            let mounts = StateDir::mounts().unwrap();
            std::os::unix::fs::symlink(&victim, mounts.path().join("p")).unwrap();
            mounts.write_atomic("p", b"42\n").unwrap();
            assert_eq!(fs::read(&victim).unwrap(), b"precious");
            assert!(
                fs::symlink_metadata(mounts.path().join("p"))
                    .unwrap()
                    .is_file()
            );
            // A symlink in place of the state root itself is refused.
            fs::remove_dir_all(home.join("vaultfs")).unwrap();
            fs::create_dir(home.join("elsewhere")).unwrap();
            std::os::unix::fs::symlink(home.join("elsewhere"), home.join("vaultfs")).unwrap();
            let err = StateDir::root()
                .err()
                .expect("symlinked root refused")
                .to_string();
            assert!(err.contains("not private"), "{err}");
        });
    }

    #[test]
    fn a_state_root_whose_parent_others_can_write_is_refused() {
        with_state_home(|home| {
            // A parent writable by all without the sticky bit: anyone could rename the state
            // directory away and put their own in its place.
            let open = home.join("open");
            fs::create_dir(&open).unwrap();
            fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
            // SAFETY: the test lock serializes the variable.
            unsafe { std::env::set_var("XDG_STATE_HOME", open.join("state")) };
            let err = StateDir::root().err().expect("refused").to_string();
            assert!(err.contains("sticky"), "{err}");
            // With the sticky bit (as /tmp), fine.
            fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
            StateDir::root().unwrap();
            // Owned by another user: refused.
            if rustix::process::geteuid().is_root() {
                std::os::unix::fs::chown(&open, Some(65534), None).unwrap();
                let err = StateDir::root().err().expect("refused").to_string();
                assert!(err.contains("owned by uid 65534"), "{err}");
            }
        });
    }

    #[test]
    fn a_world_writable_dir_from_an_older_version_is_tightened() {
        with_state_home(|home| {
            fs::create_dir_all(home.join("vaultfs/mounts")).unwrap();
            fs::set_permissions(home.join("vaultfs"), fs::Permissions::from_mode(0o777)).unwrap();
            fs::set_permissions(
                home.join("vaultfs/mounts"),
                fs::Permissions::from_mode(0o777),
            )
            .unwrap();
            StateDir::mounts().unwrap();
            for dir in ["vaultfs", "vaultfs/mounts"] {
                let md = fs::metadata(home.join(dir)).unwrap();
                assert_eq!(md.mode() & 0o7777, 0o700, "{dir}");
            }
        });
    }
}
