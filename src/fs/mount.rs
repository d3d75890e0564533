//! Mount options: what every vaultfs mount gets (nosuid and nodev unless root asks otherwise,
//! and default_permissions wherever anyone but root can enter) and the `-o` options a user
//! may add.

use fuser::Config;
use rustix::mount::MountFlags;

use crate::vault::{Result, VaultError};

/// The `-o` options that are mount(2) flags, by name (also passed by name to fusermount3).
/// The atime ones also set what the daemon does (`MountSettings::atime`): FUSE leaves
/// access times to the filesystem.
const FLAG_OPTIONS: [(&str, MountFlags); 12] = [
    ("noexec", MountFlags::NOEXEC),
    ("exec", MountFlags::empty()),
    ("noatime", MountFlags::NOATIME),
    ("atime", MountFlags::empty()),
    ("nodiratime", MountFlags::NODIRATIME),
    ("diratime", MountFlags::empty()),
    ("relatime", MountFlags::RELATIME),
    ("strictatime", MountFlags::STRICTATIME),
    ("lazytime", MountFlags::LAZYTIME),
    ("sync", MountFlags::SYNCHRONOUS),
    ("async", MountFlags::empty()),
    ("dirsync", MountFlags::DIRSYNC),
];

/// Which reads update access times. The daemon's reads of a backing file or directory
/// update its atime as the backing filesystem's own policy says (relatime on most); a
/// `noatime` mount reads with O_NOATIME, a `nodiratime` one so lists directories.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AtimePolicy {
    pub files: bool,
    pub dirs: bool,
}

fn flag_option(name: &str) -> Option<MountFlags> {
    FLAG_OPTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, flag)| *flag)
}

#[derive(Debug, Clone, Default)]
pub struct MountSettings {
    pub read_only: bool,
    pub allow_other: bool,
    /// Others also write the backing directory: kernel caches off (see `FsConfig`).
    pub shared_storage: bool,
    /// `-o no_writeback_cache`: writes go to the daemon as they are made.
    pub no_writeback_cache: bool,
    /// `-o default_permissions`: the kernel checks permission bits even where only root can
    /// enter (see `kernel_checks_permissions`).
    pub default_permissions: bool,
    /// `-o suid` / `-o dev` from root: set-ID bits and device nodes take effect. Off by
    /// default: only a vault's owner can make such nodes (headers are authenticated), but
    /// a mount that honours them is a privilege boundary the admin must choose.
    pub suid: bool,
    pub dev: bool,
    /// Comma-separated `-o` options, already split.
    pub options: Vec<String>,
    /// Shown as the mount's source in /proc/mounts: the vault path.
    pub fsname: String,
}

impl MountSettings {
    /// Folds `-o` options into the settings; unknown options are refused by name.
    pub fn apply_options(&mut self) -> Result<()> {
        for opt in self.options.clone() {
            match opt.as_str() {
                "" => {}
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "allow_other" => self.allow_other = true,
                "shared_storage" => self.shared_storage = true,
                "writeback_cache" => self.no_writeback_cache = false,
                "no_writeback_cache" => self.no_writeback_cache = true,
                "default_permissions" => self.default_permissions = true,
                "nosuid" => self.suid = false,
                "nodev" => self.dev = false,
                flag if flag_option(flag).is_some() => {}
                "suid" | "dev" if !rustix::process::geteuid().is_root() => {
                    return Err(VaultError::InvalidArgument(format!(
                        "-o {opt}: only root may mount with {opt} (mounts are nosuid,nodev by default)"
                    )));
                }
                "suid" => self.suid = true,
                "dev" => self.dev = true,
                other => {
                    return Err(VaultError::InvalidArgument(format!(
                        "-o {other}: unknown mount option"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The mount(2) flags: nosuid and nodev unless root asked for suid or dev, and what
    /// `-o` adds.
    pub fn mount_flags(&self) -> MountFlags {
        let mut flags = MountFlags::empty();
        if !self.suid {
            flags |= MountFlags::NOSUID;
        }
        if !self.dev {
            flags |= MountFlags::NODEV;
        }
        if self.read_only {
            flags |= MountFlags::RDONLY;
        }
        for opt in &self.options {
            flags |= flag_option(opt).unwrap_or(MountFlags::empty());
        }
        flags
    }

    /// Which of the daemon's reads may update access times: the last of noatime, atime,
    /// relatime and strictatime wins for files (all but noatime leave it to the backing
    /// filesystem), and nodiratime or noatime stop it for directories.
    pub fn atime(&self) -> AtimePolicy {
        let mut p = AtimePolicy {
            files: true,
            dirs: true,
        };
        for opt in &self.options {
            match opt.as_str() {
                "noatime" => p.files = false,
                "atime" | "relatime" | "strictatime" => p.files = true,
                "nodiratime" => p.dirs = false,
                "diratime" => p.dirs = true,
                _ => {}
            }
        }
        AtimePolicy {
            files: p.files,
            dirs: p.dirs && p.files,
        }
    }

    /// Whether the mount gets `default_permissions`, so the kernel checks permission bits.
    /// FUSE requests lack supplementary groups, so vaultfs never checks them itself (SPEC
    /// section 4); the kernel must wherever a user other than root can enter: with
    /// `allow_other`, and on every mount made by a user (through fusermount3). A root mount
    /// without `allow_other` admits only processes whose uids are all 0 (and gids root's),
    /// and fuser's owner filter (`session_acl`) turns away requests made with another
    /// filesystem uid (nfsd, daemons using setfsuid); the permission bits do not stop such a
    /// caller, so the check is left out there: with it, the kernel
    /// re-fetches a directory's attributes before each create or unlink in it, one more
    /// round trip per file (measured: rm -rf of 10,000 files, 2 requests per file against
    /// gocryptfs's 1). The exception is a root process stripped of CAP_DAC_OVERRIDE, which
    /// the bits would stop: `-o default_permissions` restores the check for such setups.
    pub fn kernel_checks_permissions(&self) -> bool {
        self.allow_other || self.default_permissions || !rustix::process::geteuid().is_root()
    }

    /// fuser's per-request filter. Where the kernel checks permissions it is not needed, and
    /// it would turn away a FLUSH (sent with the closing process's credentials) from a user
    /// who was handed a file the owner opened (`sudo cmd > file` on a user's mount). Where
    /// the kernel does not check, it is what keeps requests made with a filesystem uid other
    /// than root's (nfsd, setfsuid daemons) from going unchecked: such a FLUSH fails with
    /// EACCES, and `-o default_permissions` lifts that.
    pub fn session_acl(&self) -> fuser::SessionACL {
        if self.kernel_checks_permissions() {
            fuser::SessionACL::All
        } else {
            fuser::SessionACL::Owner
        }
    }

    pub fn fuser_config(&mut self) -> Result<Config> {
        self.apply_options()?;
        let mut config = Config::default();
        // Two FUSE workers per core: a worker blocked on backing I/O leaves another ready on
        // every core. Measured with fio 4 KiB random reads at QD1 on 2 cores: 28-41k IOPS
        // with 2 workers, 55-62k with 4, 49-51k with 8.
        config.n_threads = Some(
            2 * std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        );
        Ok(config)
    }
}

/// Mounts with mount(2), as root may, and returns the /dev/fuse fd to serve.
///
/// vaultfs mounts by itself rather than through fuser's `Session::new`, which ties the
/// `allow_other` mount option to fuser's per-request filter: the two are chosen apart here
/// (`MountSettings::session_acl`).
pub fn mount_direct(
    mountpoint: &std::path::Path,
    settings: &MountSettings,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    let dev = rustix::fs::open(
        "/dev/fuse",
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let root_mode = rustix::fs::stat(mountpoint)?.st_mode;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},subtype=vaultfs",
        dev.as_raw_fd(),
        root_mode,
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
    );
    if settings.kernel_checks_permissions() {
        data.push_str(",default_permissions");
    }
    if settings.allow_other {
        data.push_str(",allow_other");
    }
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount(
        settings.fsname.as_str(),
        mountpoint,
        "fuse",
        settings.mount_flags(),
        data.as_c_str(),
    )?;
    Ok(dev)
}

/// Mounts through the setuid `fusermount3` helper, for users who may not mount(2) or open
/// /dev/fuse themselves (fuser's own fallback gives up when /dev/fuse is not readable).
/// Returns the /dev/fuse fd to serve.
pub fn mount_with_fusermount(
    mountpoint: &std::path::Path,
    settings: &MountSettings,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::process::CommandExt;

    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let escape = |s: &str| s.replace('\\', "\\\\").replace(',', "\\,");
    // (A user gets no suid or dev: apply_options refuses them.)
    let mut opts = vec![
        format!("fsname={}", escape(&settings.fsname)),
        "subtype=vaultfs".to_string(),
        "nosuid".into(),
        "nodev".into(),
        if settings.read_only {
            "ro".into()
        } else {
            "rw".into()
        },
    ];
    if settings.kernel_checks_permissions() {
        opts.push("default_permissions".into());
    }
    if settings.allow_other {
        opts.push("allow_other".into());
    }
    for o in &settings.options {
        if flag_option(o).is_some() {
            opts.push(o.clone());
        }
    }
    let child_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-o")
        .arg(opts.join(","))
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", child_fd.to_string());
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only fcntl between fork and exec, to let the helper inherit its socket.
    unsafe {
        cmd.pre_exec(move || {
            let flags = libc::fcntl(child_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(child_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot run fusermount3 ({e}); install fuse3"),
        )
    })?;
    drop(theirs);

    let mut byte = [0u8; 1];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        ours.as_fd(),
        &mut [std::io::IoSliceMut::new(&mut byte)],
        &mut control,
        rustix::net::RecvFlags::empty(),
    );
    let mut fd = None;
    if received.is_ok() {
        for msg in control.drain() {
            if let rustix::net::RecvAncillaryMessage::ScmRights(mut fds) = msg {
                fd = fds.next();
            }
        }
    }
    let out = child.wait_with_output()?;
    match fd {
        Some(fd) => Ok(fd),
        None => {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(std::io::Error::other(if msg.is_empty() {
                "fusermount3 failed".into()
            } else {
                msg
            }))
        }
    }
}

/// Raises the kernel readahead of a FUSE mount (root only: the knob is the mount's bdi in
/// sysfs). FUSE offers at most 128 KiB at INIT; sequential reads gain much from more
/// requests in flight. Best effort: a failure leaves the kernel's default.
pub fn raise_readahead(mountpoint: &std::path::Path, kib: u32) {
    let Some(dev) = mount_device(mountpoint) else {
        return;
    };
    let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, kib.to_string()) {
        log::info!("cannot raise readahead through {knob}: {e}");
    }
}

/// "major:minor" of the mount at `mountpoint`, from /proc/self/mountinfo (a stat would ask
/// the FUSE session, which is not serving yet).
fn mount_device(mountpoint: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    // mountinfo escapes space, tab, newline and backslash as octal.
    let mut escaped = Vec::new();
    for &b in mountpoint.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => escaped.extend(format!("\\{b:03o}").bytes()),
            _ => escaped.push(b),
        }
    }
    // The last line for the path is the mount on top.
    info.split(|&b| b == b'\n').rev().find_map(|line| {
        let mut fields = line.split(|&b| b == b' ');
        let dev = fields.nth(2)?;
        let point = fields.nth(1)?;
        (point == escaped.as_slice()).then(|| String::from_utf8_lossy(dev).into_owned())
    })
}
