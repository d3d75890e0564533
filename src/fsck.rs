//! `vaultfs fsck`: checks every object of a vault against its key: directory IDs, names and
//! long names, file headers and every chunk, symlink targets, extended attributes; and
//! reports what vaultfs never writes (foreign entries) and leftovers of interrupted
//! operations. Read-only: it changes nothing (repair comes with the key-management work).
//! All backing access goes through `fs::backing`, like the mount: the tree is hostile.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use serde::Serialize;

use crate::crypto::chunk::{CHUNK_OVERHEAD, ChunkLayout, ContentCipher};
use crate::crypto::dirid::{ROOT_PARENT, open_dir_id};
use crate::crypto::header::{FileHeader, HEADER_LEN};
use crate::crypto::names::{
    self, DIRID_FILE, DIRID_NEXT_FILE, EntryKind, TEMP_PREFIX, decrypt_name, read_side_file,
};
use crate::crypto::{DirId, Keyring, blob};
use crate::fs::backing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// A file's header or one of its chunks does not authenticate, or its size is impossible.
    DamagedFile,
    /// A directory's ID file is missing or does not match the directory's place.
    BadDirectoryId,
    /// An entry's name does not decrypt in its directory (moved from elsewhere, or damaged).
    LostName,
    /// A long name's side file is missing, damaged, or left without its entry.
    BadLongName,
    /// A symlink target or an extended attribute does not authenticate.
    DamagedMetadata,
    /// Something vaultfs never writes.
    Foreign,
    /// A temporary entry left by an interrupted operation.
    Leftover,
    /// The backing entry could not be read.
    Unreadable,
    /// The key database's audit log was cut, edited or reordered.
    TamperedAuditLog,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// Relative to the vault.
    pub backing_path: String,
    /// Relative to the mount root, where known.
    pub plain_path: Option<String>,
    pub detail: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub directories: u64,
    pub files: u64,
    pub symlinks: u64,
    pub other: u64,
    pub plaintext_bytes: u64,
    pub problems: Vec<Problem>,
}

struct Checker<'a> {
    keyring: &'a Keyring,
    layout: ChunkLayout,
    /// Backing FIFOs, sockets and device nodes are the vault's own (made by format 1).
    legacy_nodes: bool,
    report: Report,
    progress: &'a dyn Fn(&Report),
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}/{b}")
    }
}

impl Checker<'_> {
    fn problem(
        &mut self,
        kind: ProblemKind,
        backing_path: String,
        plain_path: Option<String>,
        detail: impl Into<String>,
    ) {
        self.report.problems.push(Problem {
            kind,
            backing_path,
            plain_path,
            detail: detail.into(),
        });
    }

    fn dir(&mut self, fd: BorrowedFd<'_>, id: &DirId, bpath: &str, ppath: &str) {
        self.report.directories += 1;
        let entries = match backing::reopen(
            fd,
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
        )
        .and_then(|r| backing::list(r.as_fd()))
        {
            Ok(e) => e,
            Err(e) => {
                return self.problem(
                    ProblemKind::Unreadable,
                    bpath.into(),
                    Some(ppath.into()),
                    e.to_string(),
                );
            }
        };
        let names: std::collections::HashSet<String> =
            entries.iter().map(|e| e.name.clone()).collect();
        for e in &entries {
            let bp = join(bpath, &e.name);
            let encoded = match names::classify(&e.name) {
                EntryKind::Encrypted => e.name.clone(),
                EntryKind::LongName { side_file } => {
                    match backing::read_small(fd, &side_file, 4096)
                        .map_err(|e| e.to_string())
                        .and_then(|b| read_side_file(&e.name, &b).map_err(|e| e.to_string()))
                    {
                        Ok(enc) => enc,
                        Err(why) => {
                            self.problem(
                                ProblemKind::BadLongName,
                                bp,
                                None,
                                format!("side file: {why}"),
                            );
                            continue;
                        }
                    }
                }
                EntryKind::Reserved => {
                    if let Some(entry) = e.name.strip_suffix(names::LONGNAME_SIDE_SUFFIX)
                        && !names.contains(entry)
                    {
                        self.problem(
                            ProblemKind::BadLongName,
                            bp,
                            None,
                            "side file without its entry",
                        );
                    } else if e.name.starts_with(TEMP_PREFIX) {
                        self.problem(
                            ProblemKind::Leftover,
                            bp,
                            None,
                            "temporary entry of an interrupted operation",
                        );
                    } else if e.name == DIRID_NEXT_FILE {
                        self.problem(
                            ProblemKind::Leftover,
                            bp,
                            None,
                            "staged directory ID of an interrupted rename",
                        );
                    }
                    continue;
                }
                EntryKind::Foreign => {
                    if !(bpath.is_empty() && e.name == "lost+found") {
                        self.problem(ProblemKind::Foreign, bp, None, "not written by vaultfs");
                    }
                    continue;
                }
            };
            let pp = match decrypt_name(self.keyring, id, &encoded) {
                Ok((n, _)) => join(ppath, &String::from_utf8_lossy(&n)),
                Err(_) => {
                    self.problem(
                        ProblemKind::LostName,
                        bp,
                        None,
                        "name does not decrypt in this directory",
                    );
                    continue;
                }
            };
            let st = match backing::lstat(fd, &e.name) {
                Ok(st) => st,
                Err(err) => {
                    self.problem(ProblemKind::Unreadable, bp, Some(pp), err.to_string());
                    continue;
                }
            };
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => match backing::open_dir_path(fd, &e.name) {
                    Ok(child) => match self.dir_id(child.as_fd(), id, &e.name) {
                        Ok(child_id) => {
                            self.xattrs(fd, &e.name, st.st_mode, &bp, &pp);
                            self.dir(child.as_fd(), &child_id, &bp, &pp)
                        }
                        Err(why) => self.problem(ProblemKind::BadDirectoryId, bp, Some(pp), why),
                    },
                    Err(err) => {
                        self.problem(ProblemKind::Unreadable, bp, Some(pp), err.to_string())
                    }
                },
                libc::S_IFREG => {
                    self.report.files += 1;
                    if let Err(why) = self.file(fd, &e.name) {
                        self.problem(ProblemKind::DamagedFile, bp.clone(), Some(pp.clone()), why);
                    }
                    self.xattrs(fd, &e.name, st.st_mode, &bp, &pp);
                }
                libc::S_IFLNK => {
                    self.report.symlinks += 1;
                    self.xattrs(fd, &e.name, st.st_mode, &bp, &pp);
                    let ok = backing::readlink(fd, &e.name)
                        .map_err(|e| e.to_string())
                        .and_then(|t| {
                            blob::open_symlink(self.keyring, &t).map_err(|e| e.to_string())
                        });
                    if let Err(why) = ok {
                        self.problem(
                            ProblemKind::DamagedMetadata,
                            bp,
                            Some(pp),
                            format!("symlink target: {why}"),
                        );
                    }
                }
                _ if self.legacy_nodes || crate::fs::is_whiteout(&st) => self.report.other += 1,
                _ => self.problem(
                    ProblemKind::Foreign,
                    bp,
                    Some(pp),
                    "a backing FIFO, socket or device node: this vault keeps them in header-only files, so it was planted",
                ),
            }
            (self.progress)(&self.report);
        }
    }

    fn dir_id(&self, fd: BorrowedFd<'_>, parent: &DirId, entry: &str) -> Result<DirId, String> {
        let mut why = "no directory ID file".to_string();
        for file in [DIRID_FILE, DIRID_NEXT_FILE] {
            match backing::read_small(fd, file, 64) {
                Ok(b) => match open_dir_id(self.keyring, parent, entry, &b) {
                    Ok((id, _)) => return Ok(id),
                    Err(e) => why = format!("{file}: {e}"),
                },
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => why = format!("{file}: {e}"),
            }
        }
        Err(why)
    }

    /// Authenticates the header and every chunk.
    fn file(&mut self, dir: BorrowedFd<'_>, name: &str) -> Result<(), String> {
        let fd: OwnedFd = backing::open_regular(dir, name, false).map_err(|e| e.to_string())?;
        let mut head = [0u8; HEADER_LEN];
        let n = backing::pread_full(fd.as_fd(), &mut head, 0).map_err(|e| e.to_string())?;
        let header = FileHeader::decode(&head[..n]).map_err(|e| format!("header: {e}"))?;
        let key = header
            .unwrap_key(self.keyring)
            .map_err(|e| format!("header: {e}"))?;
        let l = self.layout;
        let backing_size = backing::fstat(fd.as_fd())
            .map_err(|e| e.to_string())?
            .st_size as u64;
        if header.node().is_some() {
            // A FIFO, socket or device node: the header is all there is.
            return if backing_size == HEADER_LEN as u64 {
                Ok(())
            } else {
                Err("a FIFO, socket or device node's header followed by data".into())
            };
        }
        let size = l.plaintext_size(backing_size).map_err(|e| e.to_string())?;
        let cipher = ContentCipher::for_header(&header, &key, l);
        let final_chunk = l.last_chunk_index(size);
        let per_batch = ((1 << 20) / l.chunk_size()).max(1) as u64;
        let mut i = 0;
        while i <= final_chunk {
            let last = (i + per_batch - 1).min(final_chunk);
            let plain_len =
                ((last - i) as usize) * l.chunk_size() + l.plaintext_len_of_chunk(last, size);
            let mut ct = vec![0u8; plain_len + (last - i + 1) as usize * CHUNK_OVERHEAD];
            let got = backing::pread_full(fd.as_fd(), &mut ct, l.chunk_offset(i))
                .map_err(|e| e.to_string())?;
            if got != ct.len() {
                return Err(format!("short read at chunk {i}"));
            }
            let mut plain = vec![0u8; plain_len];
            cipher
                .open_run(i, final_chunk, &ct, &mut plain)
                .map_err(|e| e.to_string())?;
            i = last + 1;
        }
        self.report.plaintext_bytes += size;
        Ok(())
    }

    /// `st_mode`: the entry's backing type, from the caller's lstat.
    fn xattrs(&mut self, dir: BorrowedFd<'_>, name: &str, st_mode: u32, bp: &str, pp: &str) {
        let on_trusted_backing = !matches!(st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR);
        let Ok(fd) = rustix::fs::openat(
            dir,
            name,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            return;
        };
        let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
        let mut buf = vec![0u8; 65536];
        let Ok(n) = rustix::fs::listxattr(path.as_str(), &mut buf[..]) else {
            return;
        };
        for raw in buf[..n]
            .split(|&b| b == 0)
            .filter(|s| s.starts_with(b"user.") || s.starts_with(b"trusted."))
        {
            // A backing trusted.* attribute is vaultfs's only on a symlink or whiteout
            // (FORMAT.md section 7); elsewhere it belongs to the backing system.
            if raw.starts_with(b"trusted.") && !on_trusted_backing {
                continue;
            }
            let Ok(xname) = std::str::from_utf8(raw) else {
                continue;
            };
            let mut value = vec![0u8; 65536];
            let ok = rustix::fs::getxattr(path.as_str(), xname, &mut value[..])
                .map_err(|e| e.to_string())
                .and_then(|len| {
                    blob::decrypt_xattr_name(self.keyring, raw).map_err(|e| e.to_string())?;
                    blob::open_xattr_value(self.keyring, xname, &value[..len])
                        .map_err(|e| e.to_string())
                });
            if let Err(why) = ok {
                self.problem(
                    ProblemKind::DamagedMetadata,
                    bp.into(),
                    Some(pp.into()),
                    format!("extended attribute: {why}"),
                );
            }
        }
    }
}

/// Checks the whole vault under `root`. `progress` is called after each entry.
pub fn check(
    root: &Path,
    keyring: &Keyring,
    layout: ChunkLayout,
    legacy_nodes: bool,
    progress: &dyn Fn(&Report),
) -> std::io::Result<Report> {
    let fd = backing::open_root(root)?;
    let mut c = Checker {
        keyring,
        layout,
        legacy_nodes,
        report: Report::default(),
        progress,
    };
    match backing::read_small(fd.as_fd(), DIRID_FILE, 64)
        .map_err(|e| e.to_string())
        .and_then(|b| open_dir_id(keyring, &ROOT_PARENT, "", &b).map_err(|e| e.to_string()))
    {
        Ok((id, _)) => c.dir(fd.as_fd(), &id, "", ""),
        Err(why) => c.problem(
            ProblemKind::BadDirectoryId,
            DIRID_FILE.into(),
            Some("/".into()),
            why,
        ),
    }
    Ok(c.report)
}

/// What `fsck --repair` did, and what it left for a person to decide.
#[derive(Debug, Default, Serialize)]
pub struct Repairs {
    pub fixed: Vec<String>,
    pub kept: Vec<String>,
}

/// The root-level directory where `--repair` moves entries whose name is lost: a plain
/// backing directory (its name is not an encrypted name, so the mount never shows it).
pub const LOST_AND_FOUND: &str = "lost+found";

/// Repairs what is safe to repair from a check's report: leftovers of interrupted operations
/// and orphaned side files are removed; zero-length files (a crash between create and header)
/// are removed; entries whose name is lost move to `lost+found`. Damaged contents, foreign
/// entries and directories whose ID does not check out are kept and listed: they may be data.
pub fn repair(root: &Path, report: &Report) -> std::io::Result<Repairs> {
    let mut r = Repairs::default();
    let rootfd = backing::open_root(root)?;
    for p in &report.problems {
        let rel = Path::new(&p.backing_path);
        let (parent, name) = match (rel.parent(), rel.file_name().and_then(|n| n.to_str())) {
            (Some(parent), Some(name)) => (parent, name),
            _ => {
                r.kept.push(format!("{}: {}", p.backing_path, p.detail));
                continue;
            }
        };
        let dir = match open_path(rootfd.as_fd(), parent) {
            Ok(d) => d,
            Err(_) => {
                r.kept
                    .push(format!("{}: cannot reach its directory", p.backing_path));
                continue;
            }
        };
        let st = backing::lstat(dir.as_fd(), name);
        let kind = st.as_ref().map(|s| s.st_mode & libc::S_IFMT).unwrap_or(0);
        let outcome = match p.kind {
            ProblemKind::Leftover if kind == libc::S_IFDIR => {
                remove_staging_dir(dir.as_fd(), name).map(|_| "removed an empty staging directory")
            }
            ProblemKind::Leftover => {
                backing::unlink(dir.as_fd(), name).map(|_| "removed a leftover")
            }
            ProblemKind::BadLongName if p.detail.contains("without its entry") => {
                backing::unlink(dir.as_fd(), name).map(|_| "removed an orphaned side file")
            }
            ProblemKind::DamagedFile
                if kind == libc::S_IFREG && st.as_ref().is_ok_and(|s| s.st_size == 0) =>
            {
                backing::unlink(dir.as_fd(), name)
                    .map(|_| "removed an empty file left by a crash (it held no data)")
            }
            ProblemKind::LostName | ProblemKind::BadLongName => {
                move_to_lost_and_found(rootfd.as_fd(), dir.as_fd(), name)
                    .map(|_| "moved to lost+found")
            }
            _ => {
                r.kept.push(format!(
                    "{}{}: {} (kept)",
                    p.backing_path,
                    p.plain_path
                        .as_deref()
                        .map(|x| format!(" ({x})"))
                        .unwrap_or_default(),
                    p.detail
                ));
                continue;
            }
        };
        match outcome {
            Ok(what) => r.fixed.push(format!("{}: {what}", p.backing_path)),
            Err(e) => r.kept.push(format!("{}: {e} (kept)", p.backing_path)),
        }
    }
    Ok(r)
}

fn open_path(root: BorrowedFd<'_>, rel: &Path) -> std::io::Result<OwnedFd> {
    let mut fd = backing::reopen(
        root,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
    )?;
    for c in rel.components() {
        let name = c
            .as_os_str()
            .to_str()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        fd = backing::open_dir_path(fd.as_fd(), name)?;
    }
    Ok(fd)
}

/// A staging directory of an interrupted mkdir holds only its ID file; anything else means
/// it is not ours to remove.
fn remove_staging_dir(parent: BorrowedFd<'_>, name: &str) -> std::io::Result<()> {
    let d = backing::open_dir(parent, name)?;
    let entries = backing::list(d.as_fd())?;
    if entries
        .iter()
        .any(|e| e.name != DIRID_FILE && e.name != DIRID_NEXT_FILE)
    {
        return Err(std::io::Error::other("it holds more than a directory ID"));
    }
    for e in entries {
        backing::unlink(d.as_fd(), &e.name)?;
    }
    backing::rmdir(parent, name)
}

fn move_to_lost_and_found(
    root: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    name: &str,
) -> std::io::Result<()> {
    match backing::mkdir(root, LOST_AND_FOUND, 0o700) {
        Err(e) if e.raw_os_error() != Some(libc::EEXIST) => return Err(e),
        _ => {}
    }
    let lf = backing::open_dir_path(root, LOST_AND_FOUND)?;
    let mut target = name.to_string();
    for i in 1.. {
        match backing::rename(
            dir,
            name,
            lf.as_fd(),
            &target,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => target = format!("{name}.{i}"),
            other => return other,
        }
    }
    Ok(())
}
