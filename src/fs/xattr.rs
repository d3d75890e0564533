//! Extended attributes: names encrypted deterministically (so a lookup can find them), values
//! sealed (docs/FORMAT.md section 7), on regular files and directories. `user.*`,
//! `trusted.*` (overlayfs; the kernel lets only CAP_SYS_ADMIN set or read them, and only
//! root sees them listed), `security.*` (SELinux labels, file capabilities, which every
//! change removes: `setid`) and, where the kernel enforces them, POSIX ACLs (kept in step
//! with the mode and inherited: `acl`) are stored. Nothing is stored in the clear: a
//! backing tree must not carry plaintext labels or ACLs.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use fuser::FileType;
use libc::{E2BIG, EEXIST, EIO, ENODATA, EOPNOTSUPP, EPERM, ERANGE};

use super::acl::{self, Acl};
use super::{FsResult, VaultFs};

/// The ACLs a new entry inherits from its directory's default ACL.
#[derive(Debug, Default)]
pub(crate) struct InheritedAcls {
    access: Option<Vec<u8>>,
    default: Option<Vec<u8>>,
}
use crate::crypto::CryptoError;
use crate::crypto::blob;

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

/// The backing inode whose xattrs hold a node's.
struct Target {
    /// A path the (following) xattr calls take to exactly that inode, a symlink included.
    path: CString,
    kind: FileType,
    /// Whether the backing inode takes `user.*` attributes (regular files, directories).
    /// Linux allows none on symlinks and device nodes: a symlink's (or whiteout's)
    /// attributes of other namespaces go under `trusted.` there, which needs a root daemon.
    takes_user: bool,
    fd: std::sync::Arc<std::os::fd::OwnedFd>,
}

impl Target {
    /// Whether this node may hold plaintext attribute `name`: `user.*` only on regular
    /// files and directories (as Linux has it), the other namespaces on every kind.
    fn allows(&self, name: &OsStr) -> bool {
        !name
            .as_bytes()
            .starts_with(blob::XATTR_USER_PREFIX.as_bytes())
            || matches!(self.kind, FileType::RegularFile | FileType::Directory)
    }
}

impl VaultFs {
    fn xattr_target(&self, ino: u64) -> FsResult<Target> {
        let (kind, fd) = self.node_kind_fd(ino)?;
        let st = super::backing::fstat(std::os::fd::AsFd::as_fd(&*fd)).map_err(super::errno)?;
        let backing_type = st.st_mode & libc::S_IFMT;
        Ok(Target {
            path: proc_path(std::os::fd::AsFd::as_fd(&*fd)),
            kind,
            takes_user: backing_type == libc::S_IFREG || backing_type == libc::S_IFDIR,
            fd,
        })
    }

    /// Backing names of plaintext xattr `name` under each live generation, on `target`.
    fn xattr_backing_names(&self, target: &Target, name: &OsStr) -> FsResult<Vec<String>> {
        self.keyring
            .live()
            .map(|k| {
                let n = blob::encrypt_xattr_name(k, name.as_bytes()).map_err(|e| match e {
                    CryptoError::TooLong => ERANGE,
                    _ => EOPNOTSUPP,
                })?;
                Ok(if target.takes_user {
                    n
                } else {
                    blob::on_trusted_backing(&n)
                })
            })
            .collect()
    }

    /// Whether the vault stores xattr `name`. POSIX ACLs only where the kernel enforces them
    /// (FUSE_POSIX_ACL, granted where it checks permissions); elsewhere nothing would.
    /// File capabilities are removed by every change of contents or owner
    /// (`drop_file_caps`).
    fn is_stored(&self, name: &OsStr) -> bool {
        let name = name.as_bytes();
        blob::is_stored_xattr(name) && (!name.starts_with(b"system.") || self.kernel_acls)
    }

    pub(crate) fn do_getxattr(&self, ino: u64, name: &OsStr) -> FsResult<Vec<u8>> {
        if !self.is_stored(name) {
            // As from a filesystem with no handler for that namespace (an ACL name where
            // the kernel does not enforce ACLs: `ls -l` then stops asking).
            return Err(EOPNOTSUPP);
        }
        let t = self.xattr_target(ino)?;
        if !t.allows(name) {
            return Err(ENODATA);
        }
        for backing_name in self.xattr_backing_names(&t, name)? {
            if let Some(sealed) = get_raw(&t.path, &backing_name)? {
                return blob::open_xattr_value(&self.keyring, &backing_name, &sealed)
                    .map_err(|e| self.damaged(ino, "extended attribute", e));
            }
        }
        // An absent label is "not supported", as on a filesystem without labels: `ls -l`
        // asks each file for security.selinux until the first such answer, and then stops
        // (a round trip per file listed otherwise). Labels set are read back as they are.
        // File capabilities are no label: their absence is "no such attribute", as the
        // kernel's users of them expect (xfstests generic/633).
        if name.as_bytes().starts_with(b"security.")
            && name.as_bytes() != super::setid::CAPS_XATTR.as_bytes()
        {
            return Err(EOPNOTSUPP);
        }
        Err(ENODATA)
    }

    /// The names of a node's xattrs; `trusted.*` ones only for root (as ext4 lists them only
    /// to CAP_SYS_ADMIN; FUSE does not say which capabilities a caller has).
    pub(crate) fn do_listxattr(&self, ino: u64, uid: u32) -> FsResult<Vec<u8>> {
        let t = self.xattr_target(ino)?;
        let mut out = Vec::new();
        for raw in list_raw(&t.path)? {
            // Other namespaces (e.g. security labels the backing filesystem adds) and names
            // that do not decrypt are not the vault's.
            if let Ok((name, _)) = blob::decrypt_xattr_name(&self.keyring, &raw) {
                if uid != 0 && name.starts_with(b"trusted.") {
                    continue;
                }
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
        caller: &super::setid::Caller,
    ) -> FsResult<()> {
        self.writable_xattr()?;
        if !self.is_stored(name) {
            return Err(EOPNOTSUPP);
        }
        if name.as_bytes() == acl::ACCESS.as_bytes() {
            return self.set_access_acl(ino, value, caller);
        }
        if name.as_bytes() == acl::DEFAULT.as_bytes() && Acl::parse(value).is_none() {
            return Err(libc::EINVAL);
        }
        self.store_xattr(ino, name, value, flags)?;
        if name.as_bytes() == super::setid::CAPS_XATTR.as_bytes()
            && let Some(n) = self.nodes.lock().expect("lock").get_mut(&ino)
        {
            n.may_have_caps = true;
        }
        Ok(())
    }

    /// An access ACL: stored unless the mode says it all, and the mode's permission bits
    /// follow it (the filesystem's part under FUSE_POSIX_ACL). As a chmod would, it drops
    /// the set-group-ID bit when the caller is neither in the file's group nor holds
    /// CAP_FSETID (the kernel would say so through FUSE_SETXATTR_EXT, which fuser lacks).
    fn set_access_acl(
        &self,
        ino: u64,
        value: &[u8],
        caller: &super::setid::Caller,
    ) -> FsResult<()> {
        let acl = Acl::parse(value).ok_or(libc::EINVAL)?;
        if acl.is_minimal() {
            match self.do_removexattr(ino, OsStr::new(acl::ACCESS)) {
                Ok(()) | Err(ENODATA) => {}
                Err(code) => return Err(code),
            }
        } else {
            self.store_xattr(ino, OsStr::new(acl::ACCESS), value, 0)?;
        }
        self.set_permission_bits(ino, acl.mode_bits(), caller)
    }

    /// Sets the permission bits (0o777) of a node's mode, keeping the others but for a
    /// set-group-ID bit the caller may not keep.
    /// (Through the one chmod path, `do_setattr`, which keeps the root's mode in
    /// `vaultfs.root`; its ACL step then finds the access ACL already in step.)
    fn set_permission_bits(
        &self,
        ino: u64,
        bits: u32,
        caller: &super::setid::Caller,
    ) -> FsResult<()> {
        let attr = self.getattr_ino(ino)?;
        let mut mode = (attr.perm as u32 & 0o7000) | bits;
        if !(caller.in_group(attr.gid) || caller.has_fsetid()) {
            mode &= !libc::S_ISGID;
        }
        self.do_setattr(ino, Some(mode), None, None, None, None, None)
            .map(|_| ())
    }

    /// After a chmod to `mode`: an access ACL's owner, mask and other entries take its bits.
    pub(crate) fn acl_follows_chmod(&self, ino: u64, mode: u32) -> FsResult<()> {
        if !self.kernel_acls {
            return Ok(());
        }
        let stored = match self.do_getxattr(ino, OsStr::new(acl::ACCESS)) {
            Ok(bytes) => bytes,
            Err(ENODATA) => return Ok(()),
            Err(code) => return Err(code),
        };
        let mut acl = Acl::parse(&stored)
            .ok_or_else(|| self.damaged(ino, "access ACL", "not a valid POSIX ACL"))?;
        acl.chmod(mode);
        self.store_xattr(ino, OsStr::new(acl::ACCESS), &acl.to_bytes(), 0)
    }

    /// What a new entry in directory `parent` gets: its mode (with the umask applied, or
    /// narrowed by the directory's default ACL, which then replaces the umask), and the ACLs
    /// to store on it once made (access, and for a directory the default it inherits).
    pub(crate) fn inherit_acls(
        &self,
        parent: u64,
        mode: u32,
        umask: u32,
        is_dir: bool,
    ) -> FsResult<(u32, InheritedAcls)> {
        // Without FUSE_DONT_MASK the kernel applied the umask itself.
        let umask = if self.dont_mask { umask } else { 0 };
        if !self.kernel_acls {
            return Ok((mode & !umask, InheritedAcls::default()));
        }
        let default = match self.do_getxattr(parent, OsStr::new(acl::DEFAULT)) {
            Ok(bytes) => bytes,
            Err(ENODATA) => return Ok((mode & !umask, InheritedAcls::default())),
            Err(code) => return Err(code),
        };
        let parsed = Acl::parse(&default)
            .ok_or_else(|| self.damaged(parent, "default ACL", "not a valid POSIX ACL"))?;
        let (access, mode) = parsed.create_masq(mode);
        Ok((
            mode,
            InheritedAcls {
                access: (!access.is_minimal()).then(|| access.to_bytes()),
                default: is_dir.then_some(default),
            },
        ))
    }

    /// Stores the ACLs a new entry inherited.
    pub(crate) fn store_inherited(&self, ino: u64, acls: InheritedAcls) -> FsResult<()> {
        if let Some(access) = acls.access {
            self.store_xattr(ino, OsStr::new(acl::ACCESS), &access, 0)?;
        }
        if let Some(default) = acls.default {
            self.store_xattr(ino, OsStr::new(acl::DEFAULT), &default, 0)?;
        }
        Ok(())
    }

    /// Seals and stores xattr `name` (of a stored namespace) on a node.
    fn store_xattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> FsResult<()> {
        let t = self.xattr_target(ino)?;
        if !t.allows(name) || (!t.takes_user && !self.is_root) {
            return Err(EPERM);
        }
        let (path, fd) = (&t.path, &t.fd);
        let names = self.xattr_backing_names(&t, name)?;
        let mut existing = Vec::new();
        for n in &names {
            if get_raw(path, n)?.is_some() {
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
        self.retry_with_access(std::os::fd::AsFd::as_fd(fd.as_ref()), 0o200, || {
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
        if !self.is_stored(name) {
            return Err(EOPNOTSUPP);
        }
        let t = self.xattr_target(ino)?;
        if !t.allows(name) {
            return Err(ENODATA);
        }
        let (path, fd) = (&t.path, &t.fd);
        let mut removed = false;
        for n in self.xattr_backing_names(&t, name)? {
            let c = CString::new(n).map_err(|_| EIO)?;
            let r = self.retry_with_access(std::os::fd::AsFd::as_fd(fd.as_ref()), 0o200, || {
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
