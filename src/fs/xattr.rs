//! User extended attributes: names encrypted deterministically (so a lookup can find them),
//! values sealed (docs/FORMAT.md section 7). Only `user.*` on regular files and directories,
//! as Linux allows; other namespaces are not stored (a backing tree must not carry plaintext
//! security labels or ACLs).

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use fuser::FileType;
use libc::{E2BIG, EEXIST, EIO, ENODATA, EOPNOTSUPP, EPERM, ERANGE};

use super::{FsResult, VaultFs};
use crate::crypto::CryptoError;
use crate::crypto::blob::{self, XATTR_USER_PREFIX};

/// Longest plaintext xattr list or value the kernel accepts (XATTR_SIZE_MAX).
const XATTR_SIZE_MAX: usize = 65536;

fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL")
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(EIO)
}

fn get_raw(path: &CString, name: &str) -> FsResult<Option<Vec<u8>>> {
    let cname = CString::new(name).map_err(|_| EIO)?;
    let mut buf = vec![0u8; XATTR_SIZE_MAX];
    // SAFETY: valid NUL-terminated strings and a buffer of the stated length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return match last_errno() {
            ENODATA => Ok(None),
            code => Err(code),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

fn list_raw(path: &CString) -> FsResult<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; XATTR_SIZE_MAX];
    // SAFETY: valid path and a buffer of the stated length.
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(last_errno());
    }
    Ok(buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

impl VaultFs {
    /// The backing inode of a node, as a path the xattr calls follow to exactly that inode.
    fn xattr_target(
        &self,
        ino: u64,
    ) -> FsResult<(CString, FileType, std::sync::Arc<std::os::fd::OwnedFd>)> {
        let (kind, fd) = self.node_kind_fd(ino)?;
        Ok((proc_path(std::os::fd::AsFd::as_fd(&*fd)), kind, fd))
    }

    /// Backing names of plaintext xattr `name` under each live generation.
    fn xattr_backing_names(&self, name: &OsStr) -> FsResult<Vec<String>> {
        self.keyring
            .live()
            .map(|k| {
                blob::encrypt_xattr_name(k, name.as_bytes()).map_err(|e| match e {
                    CryptoError::TooLong => ERANGE,
                    _ => EOPNOTSUPP,
                })
            })
            .collect()
    }

    fn is_user(name: &OsStr) -> bool {
        name.as_bytes().starts_with(XATTR_USER_PREFIX.as_bytes())
    }

    /// The answer for a name outside `user.*`, which vaultfs does not store: "not supported",
    /// as from a filesystem with no handler for that namespace. `ls -l` then stops asking for
    /// SELinux labels and ACLs on the whole mount after its first file, where "no such
    /// attribute" cost two round trips per file listed. Where the kernel handles ACLs itself
    /// (POSIX_ACL), a POSIX ACL name gets "no such attribute": the kernel caches that as "no
    /// ACL", and its permission checks would fail on "not supported".
    fn foreign_xattr(&self, name: &OsStr) -> i32 {
        let acl = matches!(
            name.as_bytes(),
            b"system.posix_acl_access" | b"system.posix_acl_default"
        );
        if acl && self.kernel_acls {
            ENODATA
        } else {
            EOPNOTSUPP
        }
    }

    pub(crate) fn do_getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        if !Self::is_user(name) {
            return Err(self.foreign_xattr(name));
        }
        let (path, kind, _fd) = self.xattr_target(ino)?;
        if !matches!(kind, FileType::RegularFile | FileType::Directory) {
            return Err(ENODATA);
        }
        for backing_name in self.xattr_backing_names(name)? {
            if let Some(sealed) = get_raw(&path, &backing_name)? {
                return blob::open_xattr_value(&self.keyring, &backing_name, &sealed)
                    .map_err(|e| self.damaged(ino, "extended attribute", e));
            }
        }
        Err(ENODATA)
    }

    pub(crate) fn do_listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let (path, kind, _fd) = self.xattr_target(ino)?;
        if !matches!(kind, FileType::RegularFile | FileType::Directory) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for raw in list_raw(&path)? {
            // Other namespaces (e.g. security labels the backing filesystem adds) and names
            // that do not decrypt are not the vault's.
            if let Ok((name, _)) = blob::decrypt_xattr_name(&self.keyring, &raw) {
                out.extend_from_slice(&name);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub(crate) fn do_setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        self.writable_xattr()?;
        if !Self::is_user(name) {
            return Err(EOPNOTSUPP);
        }
        let (path, kind, fd) = self.xattr_target(ino)?;
        if !matches!(kind, FileType::RegularFile | FileType::Directory) {
            return Err(EPERM);
        }
        let names = self.xattr_backing_names(name)?;
        let mut existing = Vec::new();
        for n in &names {
            if get_raw(&path, n)?.is_some() {
                existing.push(n.clone());
            }
        }
        if flags & libc::XATTR_CREATE != 0 && !existing.is_empty() {
            return Err(EEXIST);
        }
        if flags & libc::XATTR_REPLACE != 0 && existing.is_empty() {
            return Err(ENODATA);
        }
        let active = &names[0];
        let sealed =
            blob::seal_xattr_value(self.keyring.active(), active, value).map_err(|e| match e {
                CryptoError::TooLong => E2BIG,
                _ => EIO,
            })?;
        let cname = CString::new(active.as_str()).map_err(|_| EIO)?;
        self.retry_with_access(std::os::fd::AsFd::as_fd(&*fd), 0o200, || {
            // SAFETY: valid strings and value buffer.
            let r = unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    cname.as_ptr(),
                    sealed.as_ptr().cast(),
                    sealed.len(),
                    0,
                )
            };
            if r == 0 { Ok(()) } else { Err(last_errno()) }
        })?;
        // A value left under the retiring generation's name goes once the new one is set.
        for old in existing.iter().filter(|n| *n != active) {
            let c = CString::new(old.as_str()).map_err(|_| EIO)?;
            // SAFETY: valid strings.
            unsafe { libc::removexattr(path.as_ptr(), c.as_ptr()) };
        }
        Ok(())
    }

    pub(crate) fn do_removexattr(&self, ino: u64, name: &OsStr) -> FsResult<()> {
        self.writable_xattr()?;
        if !Self::is_user(name) {
            return Err(self.foreign_xattr(name));
        }
        let (path, kind, fd) = self.xattr_target(ino)?;
        if !matches!(kind, FileType::RegularFile | FileType::Directory) {
            return Err(ENODATA);
        }
        let mut removed = false;
        for n in self.xattr_backing_names(name)? {
            let c = CString::new(n).map_err(|_| EIO)?;
            let r = self.retry_with_access(std::os::fd::AsFd::as_fd(&*fd), 0o200, || {
                // SAFETY: valid strings.
                if unsafe { libc::removexattr(path.as_ptr(), c.as_ptr()) } == 0 {
                    Ok(())
                } else {
                    Err(last_errno())
                }
            });
            match r {
                Ok(()) => removed = true,
                Err(ENODATA) => {}
                Err(code) => return Err(code),
            }
        }
        if removed { Ok(()) } else { Err(ENODATA) }
    }

    fn writable_xattr(&self) -> FsResult<()> {
        if self.config.read_only {
            Err(libc::EROFS)
        } else {
            Ok(())
        }
    }
}

/// Answers a get/list request: the size when `size` is 0, ERANGE when the buffer is small.
pub(crate) fn reply_sized(reply: fuser::ReplyXattr, size: u32, data: FsResult<Vec<u8>>) {
    match data {
        Ok(d) if d.len() > XATTR_SIZE_MAX => reply.error(fuser::Errno::from_i32(E2BIG)),
        Ok(d) if size == 0 => reply.size(d.len() as u32),
        Ok(d) if d.len() > size as usize => reply.error(fuser::Errno::from_i32(ERANGE)),
        Ok(d) => reply.data(&d),
        Err(code) => reply.error(fuser::Errno::from_i32(code)),
    }
}
