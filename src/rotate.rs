//! `vaultfs rotate`: master-key rotation (docs/FORMAT.md section 10). A new generation is
//! sealed to every keyslot (no other password, no recovery secret), then a walk moves every
//! header, name, long name, directory ID, symlink target and xattr to it, each by a crash-safe
//! step; a verification pass must find nothing left under the old generation before its key
//! is destroyed. Killed anywhere, the vault mounts (both generations are live) and the next
//! `rotate` finishes the job: every step is idempotent, so the walk simply runs again.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use crate::crypto::blob;
use crate::crypto::chunk::ChunkLayout;
use crate::crypto::dirid::{ROOT_PARENT, open_dir_id, seal_dir_id};
use crate::crypto::header::{FileHeader, HEADER_LEN, NodeType};
use crate::crypto::keys::Key256;
use crate::crypto::names::{
    self, BackingName, DIRID_FILE, DIRID_NEXT_FILE, EntryKind, decrypt_name, encrypt_name,
    read_side_file,
};
use crate::crypto::{DirId, GenerationKeys, Keyring, seal};
use crate::fs::backing::{self, temp_name};
use crate::fs::file::OpenFile;
use crate::vault::keystore::Unlocked;
use crate::vault::recovery_file::{self, RecoveryFileInfo};
use crate::vault::state::{GenState, Generation, Rotation, Seal, SlotKind};
use crate::vault::{Result, VaultError, now};

/// What one walk changed or found.
#[derive(Debug, Default, Clone)]
pub struct WalkStats {
    pub entries: u64,
    /// Files rewritten under a fresh key (--reencrypt).
    pub reencrypted: u64,
    pub headers: u64,
    pub names: u64,
    pub dir_ids: u64,
    pub symlinks: u64,
    pub xattrs: u64,
    /// Files whose contents did not decrypt: their headers moved to the new generation, their
    /// contents were not re-encrypted (fsck lists them).
    pub damaged: u64,
    /// FIFOs, sockets and device nodes of a format-1 vault moved into header-only files.
    pub nodes: u64,
    /// Such nodes left as they are (hard-linked, or where names cannot be read); while any
    /// remain the vault keeps accepting backing nodes (`config.legacy_nodes`).
    pub raw_nodes_left: u64,
}

impl WalkStats {
    pub fn changed(&self) -> u64 {
        self.headers + self.names + self.dir_ids + self.symlinks + self.xattrs + self.reencrypted
    }
}

/// Hard-linked files by backing (device, inode): every name, as backing path components.
type LinkGroups = BTreeMap<(u64, u64), Vec<Vec<String>>>;

fn io_err(what: String) -> impl FnOnce(std::io::Error) -> VaultError {
    VaultError::io(what)
}

struct Walker<'a> {
    keyring: &'a Keyring,
    old: u32,
    new: &'a GenerationKeys,
    longname_max: usize,
    /// Only look (the verification pass).
    dry_run: bool,
    /// --reencrypt: files get a fresh key and are rewritten instead of rewrapped.
    reencrypt: bool,
    /// The vault accepts format 1's backing FIFOs, sockets and devices: convert them.
    convert_nodes: bool,
    layout: ChunkLayout,
    /// Backing names from the root to the directory being walked.
    path: Vec<String>,
    /// Hard-linked files (by backing inode): every name, for relinking after the walk.
    groups: LinkGroups,
    stats: WalkStats,
    progress: &'a dyn Fn(&WalkStats),
}

impl Walker<'_> {
    fn readable(&self, dir: BorrowedFd<'_>) -> Result<OwnedFd> {
        backing::reopen(
            dir,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        )
        .map_err(io_err("cannot open a directory".into()))
    }

    /// Makes sure directory `dir` (found at (`parent`, `entry`)) has its ID sealed under the
    /// new generation; returns its ID.
    /// The directory's ID from `vaultfs.dirid`, else from a staged `vaultfs.dirid.new`, if
    /// one opens for its place: (ID, its generation, the file it came from). No side effects.
    fn find_dir_id(
        &self,
        dir: BorrowedFd<'_>,
        parent: &DirId,
        entry: &str,
    ) -> Option<(DirId, u32, &'static str)> {
        [DIRID_FILE, DIRID_NEXT_FILE].into_iter().find_map(|file| {
            let bytes = backing::read_small(dir, file, 64).ok()?;
            let (id, generation) = open_dir_id(self.keyring, parent, entry, &bytes).ok()?;
            Some((id, generation, file))
        })
    }

    fn dir_id(&mut self, dir: BorrowedFd<'_>, parent: &DirId, entry: &str) -> Result<DirId> {
        let (id, generation, file) = self.find_dir_id(dir, parent, entry).ok_or_else(|| {
            VaultError::InvalidArgument(format!(
                "directory ID of backing entry '{entry}' does not check out; run fsck"
            ))
        })?;
        if generation != self.new.generation || file == DIRID_NEXT_FILE {
            self.stats.dir_ids += 1;
            if !self.dry_run {
                self.stage_and_commit_dir_id(dir, parent, entry, &id)?;
            }
        } else if !self.dry_run {
            // A staged ID that did not match here is stale (an interrupted move elsewhere).
            let _ = backing::unlink(dir, DIRID_NEXT_FILE);
        }
        Ok(id)
    }

    fn stage_and_commit_dir_id(
        &self,
        dir: BorrowedFd<'_>,
        parent: &DirId,
        entry: &str,
        id: &DirId,
    ) -> Result<()> {
        let sealed = seal_dir_id(self.new, &self.keyring.vault_id, parent, entry, id);
        backing::write_durable(dir, DIRID_NEXT_FILE, &temp_name(), &sealed, 0o600)
            .map_err(io_err("cannot stage a directory ID".into()))?;
        backing::rename_onto_reserved(dir, DIRID_NEXT_FILE, DIRID_FILE)
            .map_err(io_err("cannot commit a directory ID".into()))?;
        backing::fsync(self.readable(dir)?.as_fd()).map_err(io_err("fsync".into()))
    }

    fn walk_dir(&mut self, dir: BorrowedFd<'_>, id: &DirId) -> Result<()> {
        let entries = backing::list(self.readable(dir)?.as_fd())
            .map_err(io_err("cannot list a directory".into()))?;
        let names_here: std::collections::HashSet<String> =
            entries.iter().map(|e| e.name.clone()).collect();
        for e in entries {
            let encoded = match names::classify(&e.name) {
                EntryKind::Encrypted => e.name.clone(),
                EntryKind::LongName { side_file } => {
                    match backing::read_small(dir, &side_file, 4096)
                        .ok()
                        .and_then(|b| read_side_file(&e.name, &b).ok())
                    {
                        Some(enc) => enc,
                        None => {
                            // Its name is lost (fsck's business), not its contents.
                            self.rescue(dir, &e.name)?;
                            continue;
                        }
                    }
                }
                EntryKind::Reserved => {
                    self.clean_leftover(dir, &e.name, &names_here);
                    continue;
                }
                // fsck --repair keeps entries whose name was lost in the root's lost+found.
                EntryKind::Foreign if self.path.is_empty() && e.name == "lost+found" => {
                    self.rescue(dir, &e.name)?;
                    continue;
                }
                EntryKind::Foreign => continue,
            };
            let Ok((plain, generation)) = decrypt_name(self.keyring, id, &encoded) else {
                // A name moved here from elsewhere, or damaged: not renamable, but its keys
                // must still move, or destroying the old generation would lose it.
                self.rescue(dir, &e.name)?;
                continue;
            };
            self.stats.entries += 1;
            let st = backing::lstat(dir, &e.name)
                .map_err(io_err(format!("cannot stat '{}'", e.name)))?;
            let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            // A directory whose ID does not check out can be neither renamed (its ID is
            // bound to its name) nor walked by name: it must not stall the rotation, and
            // what is inside keeps its keys (fsck --repair recovers the names).
            if is_dir
                && !backing::open_dir_path(dir, &e.name)
                    .is_ok_and(|child| self.find_dir_id(child.as_fd(), id, &e.name).is_some())
            {
                log::warn!("a directory ID does not check out; its entries keep their names");
                self.stats.damaged += 1;
                self.rescue(dir, &e.name)?;
                continue;
            }
            // 1. The name, under the new generation (a directory carries its ID along).
            let mut entry = e.name.clone();
            if generation != self.new.generation {
                self.stats.names += 1;
                if !self.dry_run {
                    entry = self.rename_entry(dir, id, &e.name, &encoded, &plain, is_dir)?;
                }
            }
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => {
                    let child = backing::open_dir_path(dir, &entry)
                        .map_err(io_err(format!("cannot open directory '{entry}'")))?;
                    let child_id = self.dir_id(child.as_fd(), id, &entry)?;
                    self.xattrs(dir, &entry)?;
                    self.path.push(entry.clone());
                    let walked = self.walk_dir(child.as_fd(), &child_id);
                    self.path.pop();
                    walked?;
                }
                libc::S_IFREG => {
                    self.xattrs(dir, &entry)?;
                    // A header-only file (a FIFO, socket or device node) has no contents to
                    // re-encrypt: its header is rewrapped like any other.
                    let header_only = st.st_size == HEADER_LEN as i64;
                    if self.reencrypt && !self.dry_run && !header_only {
                        if st.st_nlink > 1 {
                            let mut name = self.path.clone();
                            name.push(entry.clone());
                            self.groups
                                .entry((st.st_dev, st.st_ino))
                                .or_default()
                                .push(name);
                        } else {
                            self.reencrypt_file(dir, &entry)?;
                        }
                    } else {
                        self.header(dir, &entry)?;
                    }
                }
                libc::S_IFLNK => {
                    self.symlink(dir, &entry)?;
                    self.xattrs(dir, &entry)?;
                }
                _ if self.convert_nodes => self.convert_node(dir, &entry, &st)?,
                _ => self.xattrs(dir, &entry)?,
            }
            (self.progress)(&self.stats);
        }
        Ok(())
    }

    /// Moves what can move without names to the new generation, in a part of the tree whose
    /// names cannot be read (a lost name, a damaged directory ID, `lost+found`): file
    /// headers, symlink targets and xattrs, recursively. Names there stay as they are;
    /// counted as damaged, so the revocation is not declared complete.
    fn rescue(&mut self, dir: BorrowedFd<'_>, entry: &str) -> Result<()> {
        let Ok(st) = backing::lstat(dir, entry) else {
            return Ok(());
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {
                self.xattrs(dir, entry)?;
                if rewrap_header(self.keyring, self.old, self.new, dir, entry, self.dry_run)? {
                    self.stats.headers += 1;
                    self.stats.damaged += 1;
                }
            }
            libc::S_IFLNK => {
                self.symlink(dir, entry)?;
                self.xattrs(dir, entry)?;
            }
            libc::S_IFDIR => {
                let child = backing::open_dir_path(dir, entry)
                    .map_err(io_err(format!("cannot open directory '{entry}'")))?;
                self.xattrs(dir, entry)?;
                let entries = backing::list(self.readable(child.as_fd())?.as_fd())
                    .map_err(io_err("cannot list a directory".into()))?;
                for e in entries {
                    if !matches!(names::classify(&e.name), EntryKind::Reserved) {
                        self.rescue(child.as_fd(), &e.name)?;
                    }
                }
            }
            _ if self.convert_nodes => self.convert_node(dir, entry, &st)?,
            _ => {}
        }
        Ok(())
    }

    /// A format-1 vault's FIFO, socket or device node (a backing node of that type) becomes
    /// a header-only file with the same type, device number, mode, owner and times, renamed
    /// over it; once none is left the vault stops accepting backing nodes, and a planted one
    /// reads EIO. Every name is converted, also where names cannot be read (else a node
    /// planted under a junk name would keep the vault accepting backing nodes for ever) and
    /// each name of a hard-linked node on its own (two FIFOs then, no longer one).
    fn convert_node(
        &mut self,
        dir: BorrowedFd<'_>,
        entry: &str,
        st: &rustix::fs::Stat,
    ) -> Result<()> {
        let Some(node) = NodeType::from_mode(st.st_mode) else {
            return Ok(());
        };
        if self.dry_run {
            self.stats.raw_nodes_left += 1;
            return Ok(());
        }
        let header = FileHeader::create_node(self.keyring, node, st.st_rdev as u32)?;
        let temp = temp_name();
        let fd = backing::create_regular(dir, &temp, 0o600)
            .map_err(io_err("cannot create a temp file".into()))?;
        let written = (|| {
            backing::pwrite_all(fd.as_fd(), &header.encode(), 0)?;
            if rustix::process::geteuid().is_root() {
                backing::chown_fd(fd.as_fd(), Some(st.st_uid), Some(st.st_gid))?;
            }
            backing::chmod_fd(fd.as_fd(), st.st_mode & 0o7777)?;
            restore_times(fd.as_fd(), st);
            backing::fsync(fd.as_fd())?;
            backing::rename(dir, &temp, dir, entry, rustix::fs::RenameFlags::empty())
        })();
        if let Err(e) = written {
            let _ = backing::unlink(dir, &temp);
            return Err(io_err(format!("cannot convert node '{entry}'"))(e));
        }
        backing::fsync(self.readable(dir)?.as_fd()).map_err(io_err("fsync".into()))?;
        self.stats.nodes += 1;
        Ok(())
    }

    /// Does this file's header still name the old generation?
    fn under_old(&self, fd: BorrowedFd<'_>) -> bool {
        let mut head = [0u8; HEADER_LEN];
        let n = backing::pread_full(fd, &mut head, 0).unwrap_or(0);
        FileHeader::decode(&head[..n]).is_ok_and(|h| h.generations().any(|g| g == self.old))
    }

    /// Rewrites a single-link file under a fresh key beside itself, then renames it over.
    fn reencrypt_file(&mut self, dir: BorrowedFd<'_>, entry: &str) -> Result<()> {
        let src = backing::open_regular(dir, entry, false)
            .map_err(io_err(format!("cannot open '{entry}'")))?;
        if !self.under_old(src.as_fd()) {
            return Ok(());
        }
        let temp = temp_name();
        if let Err(why) = write_reencrypted(self.keyring, self.layout, src.as_fd(), dir, &temp)? {
            // A damaged file must not stall the rotation (and with it every revocation):
            // it keeps its file key, its header moves to the new generation, fsck lists it.
            self.stats.damaged += 1;
            log::warn!("'{entry}': contents do not decrypt ({why}); not re-encrypted, run fsck");
            return self.header(dir, entry);
        }
        backing::rename(dir, &temp, dir, entry, rustix::fs::RenameFlags::empty())
            .map_err(io_err(format!("cannot replace '{entry}'")))?;
        backing::fsync(self.readable(dir)?.as_fd()).map_err(io_err("fsync".into()))?;
        self.stats.reencrypted += 1;
        Ok(())
    }

    /// Removes what an interrupted step of a rotation (or of the mount) leaves behind: staging
    /// files under temp names, and side files whose entry is gone. Never a directory, never
    /// anything that holds user data.
    fn clean_leftover(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        names_here: &std::collections::HashSet<String>,
    ) {
        if self.dry_run {
            return;
        }
        let is_file_or_link = backing::lstat(dir, name)
            .map(|st| matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFLNK))
            .unwrap_or(false);
        let orphan_side = name
            .strip_suffix(names::LONGNAME_SIDE_SUFFIX)
            .is_some_and(|entry| {
                entry.starts_with(names::LONGNAME_PREFIX) && !names_here.contains(entry)
            });
        if is_file_or_link && (name.starts_with(names::TEMP_PREFIX) || orphan_side) {
            let _ = backing::unlink(dir, name);
        }
    }

    /// Renames an entry to its new-generation name: new side file first, the rename (for a
    /// directory: stage its ID for the new place, rename, commit), then the old side file.
    fn rename_entry(
        &self,
        dir: BorrowedFd<'_>,
        id: &DirId,
        old_entry: &str,
        old_encoded: &str,
        plain: &[u8],
        is_dir: bool,
    ) -> Result<String> {
        let new_encoded = encrypt_name(self.new, id, plain)
            .map_err(|e| VaultError::InvalidArgument(format!("{e}")))?;
        let new = BackingName::new(new_encoded, self.longname_max);
        if let BackingName::Long {
            side_file, encoded, ..
        } = &new
        {
            backing::write_durable(dir, side_file, &temp_name(), encoded.as_bytes(), 0o600)
                .map_err(io_err("cannot write a side file".into()))?;
        }
        let child = if is_dir {
            let child = backing::open_dir_path(dir, old_entry)
                .map_err(io_err("cannot open a directory".into()))?;
            let (child_id, _) = [DIRID_FILE, DIRID_NEXT_FILE]
                .iter()
                .find_map(|f| {
                    backing::read_small(child.as_fd(), f, 64)
                        .ok()
                        .and_then(|b| open_dir_id(self.keyring, id, old_entry, &b).ok())
                })
                .ok_or_else(|| {
                    VaultError::InvalidArgument(format!(
                        "directory ID of '{old_entry}' does not check out; run fsck"
                    ))
                })?;
            let sealed = seal_dir_id(self.new, &self.keyring.vault_id, id, new.entry(), &child_id);
            backing::write_durable(child.as_fd(), DIRID_NEXT_FILE, &temp_name(), &sealed, 0o600)
                .map_err(io_err("cannot stage a directory ID".into()))?;
            Some(child)
        } else {
            None
        };
        backing::rename(
            dir,
            old_entry,
            dir,
            new.entry(),
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(io_err(format!("cannot rename '{old_entry}'")))?;
        backing::fsync(self.readable(dir)?.as_fd()).map_err(io_err("fsync".into()))?;
        if let Some(child) = child {
            backing::rename_onto_reserved(child.as_fd(), DIRID_NEXT_FILE, DIRID_FILE)
                .map_err(io_err("cannot commit a directory ID".into()))?;
        }
        let old = BackingName::new(old_encoded.to_string(), self.longname_max);
        if let Some(side) = old.side_file()
            && old.entry() != new.entry()
        {
            let _ = backing::unlink(dir, side);
        }
        Ok(new.entry().to_string())
    }

    /// Rewraps a file key into the spare header slot under the new generation, syncs, then
    /// clears the old slot; the file's times are put back.
    fn header(&mut self, dir: BorrowedFd<'_>, entry: &str) -> Result<()> {
        if rewrap_header(self.keyring, self.old, self.new, dir, entry, self.dry_run)? {
            self.stats.headers += 1;
        }
        Ok(())
    }

    /// A symlink's target, resealed: the new link is made under a temp name and renamed over.
    fn symlink(&mut self, dir: BorrowedFd<'_>, entry: &str) -> Result<()> {
        let target =
            backing::readlink(dir, entry).map_err(io_err(format!("cannot read link '{entry}'")))?;
        let Ok(raw) = data_encoding::BASE64URL_NOPAD.decode(&target) else {
            return Ok(());
        };
        if blob::blob_generation(&raw).ok() != Some(self.old) {
            return Ok(());
        }
        let Ok(plain) = blob::open_symlink(self.keyring, &target) else {
            // Damaged: fsck lists it; it must not stop the rotation.
            log::warn!("symlink '{entry}': its target does not authenticate; left out");
            return Ok(());
        };
        self.stats.symlinks += 1;
        if self.dry_run {
            return Ok(());
        }
        let st = backing::lstat(dir, entry).map_err(io_err("lstat".into()))?;
        let sealed = blob::seal_symlink(self.new, &plain)?;
        let temp = temp_name();
        backing::symlink(&sealed, dir, &temp).map_err(io_err("cannot create a symlink".into()))?;
        let _ = backing::chown(dir, &temp, Some(st.st_uid), Some(st.st_gid));
        let at = |sec: i64, nsec: i64| backing::SetTime::At(sec, nsec as u32);
        let _ = backing::utimens(
            dir,
            &temp,
            at(st.st_atime, st.st_atime_nsec as i64),
            at(st.st_mtime, st.st_mtime_nsec as i64),
        );
        // The new symlink is a new inode: its attributes (trusted.*, FORMAT.md section 7)
        // come along before it replaces the old one, and are rotated after (`xattrs`).
        copy_link_xattrs(dir, entry, &temp).inspect_err(|_| {
            let _ = backing::unlink(dir, &temp);
        })?;
        backing::rename(dir, &temp, dir, entry, rustix::fs::RenameFlags::empty())
            .map_err(io_err("cannot replace a symlink".into()))
    }

    /// xattrs under the old generation: the new-name value is set, then the old one removed.
    fn xattrs(&mut self, dir: BorrowedFd<'_>, entry: &str) -> Result<()> {
        let Ok(fd) = rustix::fs::openat(
            dir,
            entry,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            return Ok(());
        };
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let mut buf = vec![0u8; 65536];
        let Ok(n) = rustix::fs::listxattr(path.as_str(), &mut buf[..]) else {
            return Ok(());
        };
        let names: Vec<Vec<u8>> = buf[..n]
            .split(|&b| b == 0)
            .filter(|s| s.starts_with(b"user.") || s.starts_with(b"trusted."))
            .map(<[u8]>::to_vec)
            .collect();
        for raw in names {
            let Ok((plain_name, generation)) = blob::decrypt_xattr_name(self.keyring, &raw) else {
                continue;
            };
            if generation != self.old {
                continue;
            }
            self.stats.xattrs += 1;
            if self.dry_run {
                continue;
            }
            let old_name = String::from_utf8_lossy(&raw).into_owned();
            let mut value = vec![0u8; 65536];
            let len = rustix::fs::getxattr(path.as_str(), old_name.as_str(), &mut value[..])
                .map_err(|e| VaultError::InvalidArgument(format!("xattr: {e}")))?;
            let plain = blob::open_xattr_value(self.keyring, &old_name, &value[..len])?;
            let mut new_name = blob::encrypt_xattr_name(self.new, &plain_name)?;
            if raw.starts_with(blob::BACKING_TRUSTED_PREFIX.as_bytes()) {
                // A symlink's or whiteout's (section 7): it stays under trusted.
                new_name = blob::on_trusted_backing(&new_name);
            }
            let sealed = blob::seal_xattr_value(self.new, &new_name, &plain)?;
            rustix::fs::setxattr(
                path.as_str(),
                new_name.as_str(),
                &sealed,
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| VaultError::InvalidArgument(format!("xattr: {e}")))?;
            let c = CString::new(old_name)
                .map_err(|_| VaultError::InvalidArgument("xattr name".into()))?;
            // SAFETY: valid NUL-terminated strings.
            unsafe {
                libc::removexattr(
                    CString::new(path.clone()).expect("no NUL").as_ptr(),
                    c.as_ptr(),
                )
            };
        }
        Ok(())
    }
}

/// Rewraps a file key into the spare header slot under the new generation, syncs, then
/// clears the old slot; the file's times are put back. Returns whether the header named the
/// old generation.
fn rewrap_header(
    keyring: &Keyring,
    old: u32,
    new: &GenerationKeys,
    dir: BorrowedFd<'_>,
    entry: &str,
    dry_run: bool,
) -> Result<bool> {
    let fd = backing::open_regular(dir, entry, !dry_run)
        .map_err(io_err(format!("cannot open '{entry}'")))?;
    let mut head = [0u8; HEADER_LEN];
    let n = backing::pread_full(fd.as_fd(), &mut head, 0)
        .map_err(io_err("cannot read a header".into()))?;
    let Ok(mut header) = FileHeader::decode(&head[..n]) else {
        return Ok(false);
    };
    if !header.generations().any(|g| g == old) {
        return Ok(false);
    }
    // A header that does not authenticate cannot be moved: it is damaged (fsck lists it),
    // and must not stop the rotation, and with it every revocation. It stays under the old
    // generation; once that is destroyed the file is lost for good (as a backup made before
    // a rotation is).
    let Ok(key) = header.unwrap_key(keyring) else {
        log::warn!("'{entry}': its header does not authenticate; left out of the rotation");
        return Ok(false);
    };
    if dry_run {
        return Ok(true);
    }
    let times = backing::fstat(fd.as_fd()).map_err(io_err("fstat".into()))?;
    if !header.generations().any(|g| g == new.generation) {
        header.fill_spare_slot(new, &key)?;
        backing::pwrite_all(fd.as_fd(), &header.encode(), 0)
            .map_err(io_err("cannot write a header".into()))?;
        backing::fdatasync(fd.as_fd()).map_err(io_err("fdatasync".into()))?;
    }
    header.clear_generation(old);
    backing::pwrite_all(fd.as_fd(), &header.encode(), 0)
        .map_err(io_err("cannot write a header".into()))?;
    backing::fdatasync(fd.as_fd()).map_err(io_err("fdatasync".into()))?;
    restore_times(fd.as_fd(), &times);
    Ok(true)
}

/// Writes a copy of the file `src` under a fresh key and file ID as `temp` in `dir`: same
/// contents (holes stay holes), mode, owner, user xattrs and times; synced. The inner error
/// is a file whose contents do not decrypt (nothing is left under `temp` then).
fn write_reencrypted(
    keyring: &Keyring,
    layout: ChunkLayout,
    src: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    temp: &str,
) -> Result<std::result::Result<(), String>> {
    let read_fd = backing::reopen(src, rustix::fs::OFlags::RDONLY)
        .map_err(io_err("cannot reopen a file".into()))?;
    let old = match OpenFile::open(read_fd, keyring, layout) {
        Ok(f) => f,
        Err(why) => return Ok(Err(why)),
    };
    let st = backing::fstat(src).map_err(io_err("fstat".into()))?;
    let created = backing::create_regular(dir, temp, 0o600)
        .map_err(io_err("cannot create a temp file".into()))?;
    let keep = backing::reopen(created.as_fd(), rustix::fs::OFlags::RDWR)
        .map_err(io_err("cannot reopen a temp file".into()))?;
    // Only a file whose header allows holes has any: elsewhere an all-zero chunk is damage,
    // which the read below reports. Its copy keeps them (and so allows holes too); any other
    // file's copy gets none, whatever the vault's setting.
    let holes = old.holes_allowed();
    let new = OpenFile::create(created, keyring, layout)
        .map_err(|e| VaultError::InvalidArgument(format!("cannot write a new file (errno {e})")))?
        .with_sparse(holes);
    let size = old.size();
    let cs = layout.chunk_size() as u64;
    let last = layout.last_chunk_index(size);
    let ct_len = layout.ciphertext_chunk_len() as usize;
    let mut ct = vec![0u8; ct_len];
    for i in 0..layout.chunk_count(size) {
        if holes && i < last {
            let n = backing::pread_full(src, &mut ct, layout.chunk_offset(i))
                .map_err(io_err("read".into()))?;
            if n == ct_len && crate::crypto::chunk::is_hole(&ct) {
                continue; // a hole stays a hole
            }
        }
        let data = match old.read(i * cs, cs as usize) {
            Ok(d) => d,
            Err(e) => {
                drop(new);
                let _ = backing::unlink(dir, temp);
                return Ok(Err(format!("chunk {i} does not decrypt (errno {e})")));
            }
        };
        new.write(keyring, i * cs, &data).map_err(|e| {
            VaultError::InvalidArgument(format!("cannot write a new file (errno {e})"))
        })?;
    }
    if new.size() < size {
        new.truncate(keyring, size).map_err(|e| {
            VaultError::InvalidArgument(format!("cannot size a new file (errno {e})"))
        })?;
    }
    drop(new);
    if rustix::process::geteuid().is_root() {
        let _ = backing::chown_fd(keep.as_fd(), Some(st.st_uid), Some(st.st_gid));
    }
    backing::chmod_fd(keep.as_fd(), st.st_mode & 0o7777).map_err(io_err("chmod".into()))?;
    copy_xattrs(src, keep.as_fd(), b"user.")?;
    restore_times(keep.as_fd(), &st);
    backing::fsync(keep.as_fd()).map_err(io_err("fsync".into()))?;
    Ok(Ok(()))
}

/// Copies the (already sealed) backing xattrs whose names start with `prefix` (`user.` on
/// files, `trusted.` on symlinks): their values are bound to their names, not to the inode,
/// so they move as they are. A failure stops the step (the copy is not put in place), so no
/// attribute is lost.
fn copy_xattrs(from: BorrowedFd<'_>, to: BorrowedFd<'_>, prefix: &[u8]) -> Result<()> {
    let (pf, pt) = (
        format!("/proc/self/fd/{}", from.as_raw_fd()),
        format!("/proc/self/fd/{}", to.as_raw_fd()),
    );
    let xerr = |e: rustix::io::Errno| VaultError::InvalidArgument(format!("xattr: {e}"));
    let mut buf = vec![0u8; 65536];
    let n = match rustix::fs::listxattr(pf.as_str(), &mut buf[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(xerr(e)),
    };
    for name in buf[..n]
        .split(|&b| b == 0)
        .filter(|s| s.starts_with(prefix))
    {
        let name = String::from_utf8_lossy(name).into_owned();
        let mut value = vec![0u8; 65536];
        let len = rustix::fs::getxattr(pf.as_str(), name.as_str(), &mut value[..]).map_err(xerr)?;
        rustix::fs::setxattr(
            pt.as_str(),
            name.as_str(),
            &value[..len],
            rustix::fs::XattrFlags::empty(),
        )
        .map_err(xerr)?;
    }
    Ok(())
}

/// A hard-link group being relinked to its re-encrypted file (kept in the rotation row's
/// cursor, so a crash in the middle is finished by the next run).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct GroupInProgress {
    /// The new file's temp name (backing path components from the root).
    temp: Vec<String>,
    /// Every name of the group.
    names: Vec<Vec<String>>,
}

fn open_dir_at(root: BorrowedFd<'_>, comps: &[String]) -> Result<OwnedFd> {
    let mut fd = backing::reopen(
        root,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
    )
    .map_err(io_err("cannot open the vault".into()))?;
    for c in comps {
        fd = backing::open_dir_path(fd.as_fd(), c)
            .map_err(io_err(format!("cannot open directory '{c}'")))?;
    }
    Ok(fd)
}

/// Points every name of a group at the new file (link beside, rename over), then removes
/// the temp name. Idempotent.
fn relink_group(root: BorrowedFd<'_>, g: &GroupInProgress) -> Result<()> {
    let (temp_name_, temp_dir) = g
        .temp
        .split_last()
        .ok_or_else(|| VaultError::InvalidArgument("empty group".into()))?;
    let tdir = open_dir_at(root, temp_dir)?;
    let Ok(new_file) = backing::lstat(tdir.as_fd(), temp_name_) else {
        return Ok(()); // done before a crash
    };
    for name in &g.names {
        let (entry, dir) = name
            .split_last()
            .ok_or_else(|| VaultError::InvalidArgument("empty name".into()))?;
        let d = open_dir_at(root, dir)?;
        // Already relinked before a crash: rename() between two links of one inode would
        // do nothing and leave the staging name behind.
        if backing::lstat(d.as_fd(), entry)
            .is_ok_and(|st| st.st_ino == new_file.st_ino && st.st_dev == new_file.st_dev)
        {
            continue;
        }
        let staging = temp_name();
        backing::link(tdir.as_fd(), temp_name_, d.as_fd(), &staging)
            .map_err(io_err("cannot link".into()))?;
        backing::rename(
            d.as_fd(),
            &staging,
            d.as_fd(),
            entry,
            rustix::fs::RenameFlags::empty(),
        )
        .map_err(io_err("cannot relink".into()))?;
    }
    backing::unlink(tdir.as_fd(), temp_name_).map_err(io_err("cannot remove a temp name".into()))
}

fn restore_times(fd: BorrowedFd<'_>, st: &rustix::fs::Stat) {
    let at = |sec: i64, nsec: i64| backing::SetTime::At(sec, nsec as u32);
    let _ = backing::utimens_fd(
        fd,
        at(st.st_atime, st.st_atime_nsec as i64),
        at(st.st_mtime, st.st_mtime_nsec as i64),
    );
}

/// Starts a rotation (or finds the one in progress); returns (old, new) generation numbers.
fn start(u: &mut Unlocked, reencrypt: bool) -> Result<(u32, u32, bool)> {
    if let Some(r) = &u.keystore.state.rotation {
        let (from, to) = (r.from_generation, r.to_generation);
        if r.reencrypt != reencrypt {
            return Err(VaultError::InvalidArgument(format!(
                "a rotation {}is in progress: run `vaultfs rotate{}` to finish it first",
                if r.reencrypt {
                    "with --reencrypt "
                } else {
                    "without --reencrypt "
                },
                if r.reencrypt { " --reencrypt" } else { "" }
            )));
        }
        u.commit(&[("rotate-resume", format!("generation {from} -> {to}"))])?;
        return Ok((from, to, true));
    }
    if u.keystore.state.config.format_version < crate::vault::state::FORMAT_VERSION {
        // The upgrade renews K_auth and reseals the live generations: before the new one.
        u.commit(&[("upgrade", "key database format 1 -> 2".into())])?;
    }
    let state = &u.keystore.state;
    let vault_id = state.config.vault_id;
    let old = state
        .active_generation()
        .expect("checked structure")
        .generation;
    let new = state
        .generations
        .iter()
        .map(|g| g.generation)
        .max()
        .unwrap_or(old)
        + 1;
    let master = Key256::random()?;
    let psk = seal::psk_from_k_auth(&u.k_auth, &vault_id);
    let mut seals = Vec::new();
    for slot in &state.slots {
        let (enc, sealed) = seal::seal_master_key(
            &slot.public_key,
            &psk,
            &vault_id,
            new,
            &slot.slot_id.to_be_bytes(),
            &master,
        )?;
        seals.push(Seal {
            generation: new,
            slot_id: slot.slot_id,
            enc: enc.to_vec(),
            sealed: sealed.to_vec(),
        });
    }
    // The recovery file of the new generation first: it must exist before anything is
    // written under the generation it holds.
    if let Some(slot) = state.slots.iter().find(|s| s.kind == SlotKind::Recovery) {
        // Sealed with the PSK of the K_auth the recovery slot's blob holds (its anchor),
        // which is what the recovery key opens.
        let anchor_key = u.auth_key_at(slot.anchor())?;
        let info = RecoveryFileInfo::for_slot(&state.config, slot, new)?;
        let name = recovery_file::file_name(new);
        let backing = u.keystore.paths.backing.clone();
        let _ = std::fs::remove_file(backing.join(&name));
        crate::vault::layout::write_file_durably(
            &backing,
            &name,
            &info.seal(&anchor_key, &master)?,
            0o400,
        )?;
    }
    let t = now();
    let s = &mut u.keystore.state;
    for g in &mut s.generations {
        if g.generation == old {
            g.state = GenState::Retiring;
        }
    }
    s.generations.push(Generation {
        generation: new,
        state: GenState::Active,
        created: t,
        destroyed: None,
    });
    s.seals.extend(seals);
    s.rotation = Some(Rotation {
        from_generation: old,
        to_generation: new,
        reencrypt,
        phase: "walk".into(),
        cursor: None,
        started: t,
        updated: t,
    });
    u.commit(&[("rotate-start", format!("generation {old} -> {new}"))])?;
    let retiring = u.keyring.active().clone();
    u.keyring = Keyring::new(
        vault_id,
        GenerationKeys::derive(&vault_id, new, master),
        Some(retiring),
    );
    Ok((old, new, false))
}

/// Runs (or resumes) a rotation to the end. `progress` sees each walk's counters.
pub fn rotate(
    u: &mut Unlocked,
    reencrypt: bool,
    progress: &dyn Fn(&str, &WalkStats),
) -> Result<(u32, u32, WalkStats)> {
    let (old, new, resumed) = start(u, reencrypt)?;
    let root_path = u.keystore.paths.backing.clone();
    let root = backing::open_root(&root_path)
        .map_err(io_err(format!("cannot open {}", root_path.display())))?;
    // A hard-link group interrupted mid-relink is finished first (before the walk would
    // clean its temp name away).
    if let Some(cursor) = u
        .keystore
        .state
        .rotation
        .as_ref()
        .and_then(|r| r.cursor.clone())
    {
        let g: GroupInProgress = serde_json::from_str(&cursor)
            .map_err(|e| VaultError::InvalidArgument(format!("rotation cursor: {e}")))?;
        relink_group(root.as_fd(), &g)?;
        set_cursor(u, None)?;
    }
    let layout = u.layout();
    let walk = |u: &Unlocked, dry_run: bool, phase: &str| -> Result<(WalkStats, LinkGroups)> {
        let report = |s: &WalkStats| progress(phase, s);
        let mut w = Walker {
            keyring: &u.keyring,
            old,
            new: u.keyring.active(),
            longname_max: u.keystore.state.config.longname_max as usize,
            dry_run,
            reencrypt,
            convert_nodes: u.keystore.state.config.legacy_nodes,
            layout,
            path: Vec::new(),
            groups: BTreeMap::new(),
            stats: WalkStats::default(),
            progress: &report,
        };
        let root_id = w.dir_id(root.as_fd(), &ROOT_PARENT, "")?;
        w.xattrs(root.as_fd(), ".")?;
        w.walk_dir(root.as_fd(), &root_id)?;
        Ok((w.stats, w.groups))
    };
    let (mut done, groups) = walk(
        u,
        false,
        if reencrypt {
            "re-encrypting"
        } else {
            "rewrapping"
        },
    )?;
    // Hard-link groups: one new file, recorded in the database, then every name relinked.
    for names in groups.values() {
        let (entry, dir) = names[0].split_last().expect("a group has names");
        let d = open_dir_at(root.as_fd(), dir)?;
        let src = backing::open_regular(d.as_fd(), entry, false)
            .map_err(io_err(format!("cannot open '{entry}'")))?;
        let old_header = {
            let mut head = [0u8; HEADER_LEN];
            let n = backing::pread_full(src.as_fd(), &mut head, 0).unwrap_or(0);
            FileHeader::decode(&head[..n]).is_ok_and(|h| h.generations().any(|g| g == old))
        };
        if !old_header {
            continue;
        }
        let temp = temp_name();
        if let Err(why) = write_reencrypted(&u.keyring, layout, src.as_fd(), d.as_fd(), &temp)? {
            log::warn!("'{entry}': contents do not decrypt ({why}); not re-encrypted, run fsck");
            done.damaged += 1;
            if rewrap_header(&u.keyring, old, u.keyring.active(), d.as_fd(), entry, false)? {
                done.headers += 1;
            }
            continue;
        }
        let mut temp_path = dir.to_vec();
        temp_path.push(temp);
        let g = GroupInProgress {
            temp: temp_path,
            names: names.clone(),
        };
        set_cursor(u, Some(serde_json::to_string(&g).expect("serializes")))?;
        relink_group(root.as_fd(), &g)?;
        set_cursor(u, None)?;
        done.reencrypted += 1;
    }
    set_phase(u, "verify")?;
    let (left, _) = walk(u, true, "verifying")?;
    if left.changed() > 0 {
        return Err(VaultError::InvalidArgument(format!(
            "{} objects are still under generation {old} after the walk (changed during it?): run rotate again",
            left.changed()
        )));
    }
    // Destroy the old generation: its seals go (secure_delete wipes them), its recovery
    // file goes, the rotation is over.
    let t = now();
    let s = &mut u.keystore.state;
    for g in &mut s.generations {
        if g.generation == old {
            g.state = GenState::Destroyed;
            g.destroyed = Some(t);
        }
    }
    s.seals.retain(|x| x.generation != old);
    s.rotation = None;
    // Every file now has a key no revoked party ever saw, unless one was damaged; a resumed
    // rotation cannot tell what an earlier run of it met, so it does not say so either.
    if reencrypt && done.damaged == 0 && !resumed {
        s.config.revoked_since_reencrypt = false;
    }
    // Format 1's backing nodes are all header-only files now: a backing node is planted.
    if s.config.legacy_nodes && left.raw_nodes_left == 0 {
        s.config.legacy_nodes = false;
    }
    done.raw_nodes_left = left.raw_nodes_left;
    let _ = std::fs::remove_file(root_path.join(recovery_file::file_name(old)));
    let summary = format!(
        "generation {old} -> {new} done: {} entries; {} files re-encrypted, {} headers, {} names, {} directory IDs, {} symlinks, {} xattrs rewritten",
        done.entries,
        done.reencrypted,
        done.headers,
        done.names,
        done.dir_ids,
        done.symlinks,
        done.xattrs
    );
    u.commit(&[("rotate-done", summary)])?;
    Ok((old, new, done))
}

fn set_cursor(u: &mut Unlocked, cursor: Option<String>) -> Result<()> {
    if let Some(r) = &mut u.keystore.state.rotation {
        r.cursor = cursor;
        r.updated = now();
    }
    u.commit(&[])
}

fn set_phase(u: &mut Unlocked, phase: &str) -> Result<()> {
    if let Some(r) = &mut u.keystore.state.rotation {
        r.phase = phase.into();
        r.updated = now();
    }
    u.commit(&[])
}

/// Refuses while mounted and keeps the vault locked for the whole rotation.
pub fn lock_vault(vault: &Path) -> Result<std::fs::File> {
    crate::vault::lock::lock(vault, || {
        format!("{} is mounted: unmount it, then rotate", vault.display())
    })
}

/// Copies the backing `trusted.*` attributes of symlink `from` to symlink `to` (both in
/// `dir`), as they are.
fn copy_link_xattrs(dir: BorrowedFd<'_>, from: &str, to: &str) -> Result<()> {
    let open = |name: &str| {
        rustix::fs::openat(
            dir,
            name,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| VaultError::InvalidArgument(format!("symlink '{name}': {e}")))
    };
    // The (following) xattr calls on an O_PATH fd's /proc path reach the symlink itself.
    copy_xattrs(open(from)?.as_fd(), open(to)?.as_fd(), b"trusted.")
}
