//! Set-user-ID and set-group-ID bits dropped when someone without CAP_FSETID changes a
//! file's contents (write, truncate, fallocate, punch hole), by the same rule as the kernel's
//! `setattr_should_drop_suidgid`. With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to the
//! filesystem; xfstests generic/355, 683 and 684 check it.
//!
//! The kernel keeps a file's mode in its attribute cache (long TTLs), and a write or
//! fallocate reply carries no attributes, so a change made here is followed by an
//! invalidation of the inode's attributes.

use std::os::fd::AsFd;
use std::sync::OnceLock;

use super::{FsResult, VaultFs, backing, errno};

/// The xattr holding a file's capabilities.
pub(crate) const CAPS_XATTR: &str = "security.capability";

/// Who asked: FUSE requests carry the caller's fsuid, fsgid and pid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl Caller {
    pub fn of(req: &fuser::Request) -> Caller {
        Caller {
            uid: req.uid(),
            gid: req.gid(),
            pid: req.pid(),
        }
    }

    /// The caller's `/proc/<pid>/status`, if the process still exists.
    fn status(&self) -> Option<String> {
        if self.pid == 0 {
            return None;
        }
        std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()
    }

    /// CAP_FSETID in the caller's effective set (root's, normally). Without a readable
    /// status, uid 0 stands for it.
    pub fn has_fsetid(&self) -> bool {
        const CAP_FSETID: u32 = 4;
        self.status()
            .as_deref()
            .and_then(|s| field(s, "CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .map_or(self.uid == 0, |caps| caps & (1 << CAP_FSETID) != 0)
    }

    /// The caller's fsgid is `gid`, or `gid` is one of its supplementary groups.
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid
            || self
                .status()
                .as_deref()
                .and_then(|s| field(s, "Groups:"))
                .is_some_and(|groups| {
                    groups
                        .split_whitespace()
                        .any(|g| g.parse::<u32>() == Ok(gid))
                })
    }
}

fn field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(name))
}

/// The bits a content change by `caller` (who lacks CAP_FSETID) removes from a regular
/// file of mode `mode` and group `gid`: set-user-ID always; set-group-ID when group execute
/// is set (a real set-group-ID program) or when the caller is not in the file's group.
pub(crate) fn bits_to_drop(mode: u32, gid: u32, caller: &Caller) -> u32 {
    if mode & libc::S_IFMT != libc::S_IFREG {
        return 0;
    }
    let mut drop = mode & libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !caller.in_group(gid)) {
        drop |= libc::S_ISGID;
    }
    drop
}

/// Set once the FUSE session exists: lets request handlers tell the kernel that an inode's
/// cached attributes are stale.
pub(crate) type NotifierSlot = std::sync::Arc<OnceLock<fuser::Notifier>>;

impl VaultFs {
    /// The slot the daemon fills with the session's notifier.
    pub fn notifier_slot(&self) -> NotifierSlot {
        self.notifier.clone()
    }

    /// Tells the kernel to drop what it caches of an inode: attributes, pages, and for a
    /// directory its kept listing. Not while the kernel waits for a reply about it.
    pub(crate) fn invalidate_kernel_cache(&self, ino: u64) {
        if let Some(n) = self.notifier.get()
            && let Err(e) = n.inval_inode(fuser::INodeNo(ino), 0, 0)
        {
            log::debug!("inode {ino}: cache invalidation failed: {e}");
        }
    }

    /// Removes a file's capabilities (`security.capability`): every write, truncate,
    /// fallocate and chown does, whoever makes it (the kernel's killpriv; with
    /// FUSE_HANDLE_KILLPRIV_V2 it is the filesystem's). One backing call per file until
    /// one finds none.
    pub(crate) fn drop_file_caps(&self, ino: u64) -> FsResult<()> {
        let may = self
            .nodes
            .lock()
            .expect("lock")
            .get(&ino)
            .is_some_and(|n| n.may_have_caps && n.kind == fuser::FileType::RegularFile);
        if !may {
            return Ok(());
        }
        match self.do_removexattr(ino, std::ffi::OsStr::new(CAPS_XATTR)) {
            Ok(()) | Err(libc::ENODATA) => {}
            Err(code) => return Err(code),
        }
        if let Some(n) = self.nodes.lock().expect("lock").get_mut(&ino) {
            n.may_have_caps = false;
        }
        Ok(())
    }

    /// Drops the set-ID bits a content change by `caller` must drop; `privileged_checked`
    /// when the kernel already decided the caller lacks CAP_FSETID (FUSE_WRITE_KILL_SUIDGID).
    pub(crate) fn drop_setid_for(
        &self,
        ino: u64,
        caller: &Caller,
        privileged_checked: bool,
    ) -> FsResult<()> {
        let fd = self.node_fd(ino)?;
        let st = backing::fstat(fd.as_fd()).map_err(errno)?;
        if st.st_mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            return Ok(());
        }
        if !privileged_checked && caller.has_fsetid() {
            return Ok(());
        }
        let drop = bits_to_drop(st.st_mode, st.st_gid, caller);
        if drop != 0 {
            backing::chmod_fd(fd.as_fd(), st.st_mode & 0o7777 & !drop).map_err(errno)?;
            if let Some(n) = self.notifier.get() {
                // Offset -1: attributes only, no page-cache invalidation.
                if let Err(e) = n.inval_inode(fuser::INodeNo(ino), -1, 0) {
                    log::debug!("inode {ino}: attribute invalidation failed: {e}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: Caller = Caller {
        uid: 65534,
        gid: 65534,
        pid: 0,
    };

    #[test]
    fn the_kernels_rule() {
        let reg = libc::S_IFREG;
        // generic/355: the writer owns the file and is in its group.
        assert_eq!(bits_to_drop(reg | 0o6644, 65534, &NOBODY), libc::S_ISUID);
        assert_eq!(
            bits_to_drop(reg | 0o6654, 65534, &NOBODY),
            libc::S_ISUID | libc::S_ISGID
        );
        // generic/683: a file of root's group, written by someone outside it.
        assert_eq!(
            bits_to_drop(reg | 0o6666, 0, &NOBODY),
            libc::S_ISUID | libc::S_ISGID
        );
        assert_eq!(bits_to_drop(reg | 0o2666, 0, &NOBODY), libc::S_ISGID);
        assert_eq!(bits_to_drop(reg | 0o0777, 0, &NOBODY), 0);
        // Directories keep their set-group-ID bit.
        assert_eq!(bits_to_drop(libc::S_IFDIR | 0o2777, 0, &NOBODY), 0);
    }
}
