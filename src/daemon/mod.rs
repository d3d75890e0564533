//! The mount daemon as a process: the vault lock, unlocking, forking into the background
//! (returning only once the mount answers), hardening, logging, signals, and `unmount`.

mod logfile;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use crate::fs::mount::MountSettings;
use std::sync::Arc;

use crate::fs::{Activity, FsConfig, VaultFs, backing};
use crate::vault::init::open_keystore;
use crate::vault::{Result, VaultError, local_state};

pub struct MountRequest {
    /// Unmount after this long without filesystem activity (and with nothing open).
    pub idle: Option<Duration>,
    pub vault: PathBuf,
    pub keystore: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub settings: MountSettings,
}

fn mount_failed(msg: impl Into<String>) -> VaultError {
    VaultError::MountFailed(msg.into())
}

/// The daemon serving the mount at `mountpoint` (canonical), from its pid file: its pid, and
/// whether it serves read-only.
fn daemon_record(mountpoint: &Path) -> Option<(i32, bool)> {
    let bytes = local_state::StateDir::mounts()
        .and_then(|d| d.read(&pidfile_name(mountpoint)))
        .ok()
        .flatten()?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    Some((pid, lines.any(|l| l.trim() == "ro")))
}

/// `mount --remount` (and `mount -o remount`, through the mount.fuse form): changes the
/// mount(2) flags of an existing mount of the vault: ro or rw, noexec, atime, sync. The
/// daemon keeps serving; it refuses writes itself only if it was started read-only, so such
/// a mount cannot be made writable this way.
pub fn remount(mut req: MountRequest) -> Result<()> {
    req.settings.apply_options()?;
    let vault =
        fs::canonicalize(&req.vault).map_err(|_| VaultError::NotAVault(req.vault.clone()))?;
    let mountpoint = fs::canonicalize(&req.mountpoint)
        .map_err(|e| mount_failed(format!("mount point {}: {e}", req.mountpoint.display())))?;
    let ours = is_mounted(&mountpoint);
    match ours {
        Some(m) if m.fstype == "fuse.vaultfs" && Path::new(&m.source) == vault => {}
        _ => {
            return Err(VaultError::NotMounted(mountpoint));
        }
    }
    if !req.settings.read_only && daemon_record(&mountpoint).is_some_and(|(_, ro)| ro) {
        return Err(mount_failed(format!(
            "{} was mounted read-only: unmount it and mount it again to write",
            mountpoint.display()
        )));
    }
    rustix::mount::mount_remount(&mountpoint, req.settings.mount_flags(), "").map_err(|e| {
        if e == rustix::io::Errno::PERM {
            mount_failed(format!(
                "cannot remount {}: only root may (unmount it and mount it again)",
                mountpoint.display()
            ))
        } else {
            mount_failed(format!("cannot remount {}: {e}", mountpoint.display()))
        }
    })
}

/// The mount on top at `path`, if any.
fn is_mounted(path: &Path) -> Option<crate::mountinfo::Mount> {
    crate::mountinfo::mounts()
        .into_iter()
        .rev()
        .find(|m| m.point == path)
}

/// `$XDG_STATE_HOME/vaultfs/mounts/<sha256 of the mount point>` holds the daemon's pid.
fn pidfile_name(mountpoint: &Path) -> String {
    HEXLOWER.encode(&Sha256::digest(mountpoint.as_os_str().as_encoded_bytes())[..16])
}

/// Signals whose default action ends the process and that nothing in the daemon uses: a
/// stray one (a `kill -USR1` meant for something else, a timer, a CPU or file-size limit)
/// must not leave a dead mount behind. SIGTERM, SIGINT and SIGHUP detach the mount
/// (`spawn_signal_thread`). The fault signals are ignored too, when someone sends them: a
/// real fault (and abort()) still ends the process, as the kernel (and the C library) then
/// restore the default action.
const IGNORED_SIGNALS: &[i32] = &[
    libc::SIGILL,
    libc::SIGABRT,
    libc::SIGFPE,
    libc::SIGPIPE,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGSTKFLT,
    libc::SIGTRAP,
    libc::SIGSYS,
];

/// Makes key memory hard to leak: no core dumps or ptrace by others, no swapping where the
/// system allows it, and no death by a stray signal.
fn harden_process() {
    // SAFETY: setting a signal's action to SIG_IGN; none of these is used by the daemon, its
    // libraries or the C library (glibc's own real-time signals are below SIGRTMIN()).
    unsafe {
        for &sig in IGNORED_SIGNALS {
            libc::signal(sig, libc::SIG_IGN);
        }
        for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            libc::signal(sig, libc::SIG_IGN);
        }
    }
    // SAFETY: plain prctl/mlockall calls with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        if libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) != 0 {
            log::info!(
                "cannot lock memory ({}); keys may be swapped out",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Every inode the kernel holds may pin one backing fd (src/fs/mod.rs), so the daemon wants
/// many: the soft limit goes up to the hard one, and root raises the hard one to the
/// system's ceiling. Runs before the file system computes its fd budget from the limit.
/// Returns a warning when the limit stays low (no CAP_SYS_RESOURCE, a container).
fn raise_fd_limit() -> Option<String> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    let ceiling = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let mut tries = Vec::new();
    if rustix::process::geteuid().is_root()
        && let Some(c) = ceiling
    {
        tries.push(Some(current.maximum.map_or(c, |h| h.max(c))));
    }
    // Without the right to raise the hard limit, the soft one still goes up to it.
    tries.push(current.maximum);
    for hard in tries {
        let wanted = Rlimit {
            current: hard,
            maximum: hard,
        };
        if setrlimit(Resource::Nofile, wanted).is_ok() {
            break;
        }
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    (now < 65_536).then(|| {
        format!(
            "the open-file limit is {now} and cannot be raised here (that needs CAP_SYS_RESOURCE): with many directories in use at once, requests may fail with EMFILE"
        )
    })
}

fn init_daemon_log(vault_id: &[u8; 16]) -> Result<()> {
    let file = logfile::DaemonLog::open(local_state::StateDir::vault(vault_id)?)?;
    let _ = log_builder()
        .target(env_logger::Target::Pipe(Box::new(file)))
        .try_init();
    Ok(())
}

/// RUST_LOG (default: warnings and errors). fuser is capped at warnings whatever RUST_LOG
/// says, since its debug output carries plaintext names; vaultfs logs each request itself
/// (inode and result only). fuser's session notices (e.g. its redundant unmount attempt
/// after the kernel has released the mount) only when they are errors.
fn log_builder() -> env_logger::Builder {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    b.filter_module("fuser", log::LevelFilter::Warn);
    b.filter_module("fuser::session", log::LevelFilter::Error);
    b
}

pub fn init_stderr_log() {
    let _ = log_builder()
        .target(env_logger::Target::Pipe(Box::new(
            logfile::LimitedStderr::default(),
        )))
        .try_init();
}

/// Unlocks and mounts. In the foreground, serves until unmounted; otherwise forks a daemon
/// and returns once the mount answers (or with the daemon's error).
pub fn mount(mut req: MountRequest, password: &[u8]) -> Result<()> {
    // Options first: a bad -o is a usage error whatever else is wrong.
    let vault =
        fs::canonicalize(&req.vault).map_err(|_| VaultError::NotAVault(req.vault.clone()))?;
    req.settings.fsname = vault.display().to_string();
    let fuser_config = req.settings.fuser_config()?;
    let mountpoint = fs::canonicalize(&req.mountpoint)
        .map_err(|e| mount_failed(format!("mount point {}: {e}", req.mountpoint.display())))?;
    if !mountpoint.is_dir() {
        return Err(mount_failed(format!(
            "mount point {} is not a directory",
            mountpoint.display()
        )));
    }
    if let Some(m) = is_mounted(&mountpoint) {
        let fstype = m.fstype;
        return Err(mount_failed(format!(
            "mount point {} is busy: already a {fstype} mount",
            mountpoint.display()
        )));
    }
    let vault =
        fs::canonicalize(&req.vault).map_err(|_| VaultError::NotAVault(req.vault.clone()))?;
    let ks = open_keystore(&vault, req.keystore.as_deref(), false)?;
    // One daemon per vault: the vault lock, held for the daemon's life.
    let marker = crate::vault::lock::lock(&vault, || {
        format!(
            "{} is already mounted by another vaultfs process (or a rotate or passwd is running)",
            vault.display()
        )
    })?;
    let unlocked = ks.unlock_with_password(password, None)?;
    let vault_id = unlocked.keystore.state.config.vault_id;
    if !req.settings.read_only {
        // New files get version-2 headers: an older vaultfs must refuse the vault first.
        crate::vault::layout::upgrade_marker(&vault)?;
    }
    let config = FsConfig {
        read_only: req.settings.read_only,
        shared_storage: req.settings.shared_storage,
        writeback_cache: !req.settings.shared_storage && !req.settings.no_writeback_cache,
        kernel_checks_permissions: req.settings.kernel_checks_permissions(),
        legacy_nodes: unlocked.state().config.legacy_nodes,
        atime: req.settings.atime(),
        sparse: unlocked.state().config.sparse,
    };
    let root = backing::open_root(&vault)
        .map_err(VaultError::io(format!("cannot open {}", vault.display())))?;
    let activity = Arc::new(Activity::default());
    activity.touch();
    let fd_warning = raise_fd_limit();
    let fs = VaultFs::new(
        unlocked.keyring.clone(),
        unlocked.layout(),
        unlocked.state().config.longname_max as usize,
        root,
        config,
        activity.clone(),
    )
    .map_err(|e| mount_failed(format!("cannot read the vault root: {e}")))?;
    let idle = req.idle.map(|d| (d, activity));
    drop(unlocked);

    if req.foreground {
        harden_process();
        if let Some(w) = &fd_warning {
            log::warn!("{w}");
        }
        let _ =
            local_state::record_local_audit(&vault_id, "mount", &mountpoint.display().to_string());
        return serve(
            fs,
            &mountpoint,
            &req.settings,
            &fuser_config,
            None,
            Daemon {
                vault_id,
                _lock: marker,
                idle,
            },
        );
    }

    // Fork now, while single-threaded; the child reports back through a pipe.
    let (rd, wr) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| mount_failed(format!("pipe: {e}")))?;
    // SAFETY: no other threads exist yet; the child only continues with its own copy.
    match unsafe { libc::fork() } {
        -1 => Err(mount_failed(format!(
            "fork: {}",
            std::io::Error::last_os_error()
        ))),
        0 => {
            drop(rd);
            // SAFETY: setsid in the fresh child.
            unsafe { libc::setsid() };
            let _ = init_daemon_log(&vault_id);
            redirect_stdio();
            harden_process();
            if let Some(w) = &fd_warning {
                log::warn!("{w}");
            }
            let _ = local_state::record_local_audit(
                &vault_id,
                "mount",
                &mountpoint.display().to_string(),
            );
            let code = match serve(
                fs,
                &mountpoint,
                &req.settings,
                &fuser_config,
                Some(wr),
                Daemon {
                    vault_id,
                    _lock: marker,
                    idle,
                },
            ) {
                Ok(()) => 0,
                Err(e) => e.exit_code(),
            };
            std::process::exit(code);
        }
        child => {
            drop(wr);
            let mut msg = String::new();
            let _ = fs::File::from(rd).read_to_string(&mut msg);
            if let Some(err) = msg.strip_prefix("ERR ") {
                return Err(mount_failed(err.trim().to_string()));
            }
            if !msg.starts_with("OK") {
                let mut status = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(child, &mut status, 0) };
                return Err(mount_failed(
                    "the vaultfs daemon exited before the mount was ready",
                ));
            }
            // The mount answers once a stat of the mount point returns through FUSE.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if is_mounted(&mountpoint).is_some() && fs::metadata(&mountpoint).is_ok() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(mount_failed("the mount did not answer within 10 s"))
        }
    }
}

fn redirect_stdio() {
    if let Ok(null) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Readahead of root mounts: enough for several 1 MiB reads in flight, decrypted in parallel.
const READAHEAD_KIB: u32 = 4096;

/// What the serving daemon holds besides the filesystem.
struct Daemon {
    vault_id: [u8; 16],
    /// The vault lock (flock on the marker), released when the daemon exits.
    _lock: fs::File,
    idle: Option<(Duration, Arc<Activity>)>,
}

fn serve(
    fs: VaultFs,
    mountpoint: &Path,
    settings: &MountSettings,
    config: &fuser::Config,
    ready: Option<OwnedFd>,
    daemon: Daemon,
) -> Result<()> {
    let Daemon {
        vault_id,
        _lock,
        idle,
    } = daemon;
    let vault_id = &vault_id;
    let report = |ready: &Option<OwnedFd>, msg: &str| {
        if let Some(fd) = ready {
            // SAFETY: borrow the pipe fd as a File without taking ownership.
            let mut f =
                std::mem::ManuallyDrop::new(unsafe { fs::File::from_raw_fd(fd.as_raw_fd()) });
            let _ = f.write_all(msg.as_bytes());
        }
    };
    // Signals are caught from before the mount exists, so none can kill the daemon and leave
    // a dead mount behind; one that arrives early detaches the mount as soon as it is up.
    let terminate = spawn_signal_thread(mountpoint.to_path_buf());
    // Root mounts directly; others go through fusermount3.
    let dev_fuse = if rustix::process::geteuid().is_root() {
        crate::fs::mount::mount_direct(mountpoint, settings)
    } else {
        crate::fs::mount::mount_with_fusermount(mountpoint, settings)
    };
    let notifier = fs.notifier_slot();
    let session = dev_fuse
        .and_then(|fd| fuser::Session::from_fd(fs, fd, settings.session_acl(), config.clone()));
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let why = if e.kind() == std::io::ErrorKind::NotFound
                || e.raw_os_error() == Some(libc::ENODEV)
            {
                format!(
                    "cannot mount {}: FUSE is not available ({e}); install fuse3 and load the fuse module",
                    mountpoint.display()
                )
            } else {
                format!("cannot mount {}: {e}", mountpoint.display())
            };
            report(&ready, &format!("ERR {why}\n"));
            return Err(mount_failed(why));
        }
    };
    let _ = notifier.set(session.notifier());
    if rustix::process::geteuid().is_root() {
        crate::fs::mount::raise_readahead(mountpoint, READAHEAD_KIB);
    }
    let pid_dir = local_state::StateDir::mounts().ok();
    let pid_name = pidfile_name(mountpoint);
    if let Some(dir) = &pid_dir {
        // The pid, and "ro" for a daemon that serves read-only (see `remount`).
        let ro = if settings.read_only { "ro\n" } else { "" };
        let _ = dir.write_atomic(
            &pid_name,
            format!("{}\n{ro}", std::process::id()).as_bytes(),
        );
    }
    // From here on the process creates backing entries with the modes FUSE asks for (the
    // kernel has already applied the caller's umask); its own umask must not mask them again.
    // Every state file above and below is created with an explicit 0600/0700 mode.
    // SAFETY: umask has no failure mode.
    unsafe { libc::umask(0) };
    if terminate.load(std::sync::atomic::Ordering::SeqCst) {
        let _ = detach(mountpoint, true);
    }
    if let Some((limit, activity)) = idle {
        spawn_idle_thread(mountpoint.to_path_buf(), limit, activity);
    }
    report(&ready, "OK\n");
    drop(ready);
    let result = session.run();
    let _ = local_state::record_local_audit(vault_id, "unmount", &mountpoint.display().to_string());
    if let Some(dir) = &pid_dir {
        let _ = dir.remove(&pid_name);
    }
    result.map_err(|e| mount_failed(format!("FUSE session ended with an error: {e}")))
}

/// SIGTERM/SIGINT/SIGHUP: detach the mount (lazy unmount); the daemon keeps serving open
/// files until the kernel releases the mount, then exits.
fn spawn_signal_thread(mountpoint: PathBuf) -> Arc<std::sync::atomic::AtomicBool> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let requested = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP]) else {
        return requested;
    };
    let flag = requested.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            log::info!("signal {sig}: detaching {}", mountpoint.display());
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = detach(&mountpoint, true);
        }
    });
    requested
}

/// --idle: unmount once nothing has happened for `limit` and nothing is open.
fn spawn_idle_thread(mountpoint: PathBuf, limit: Duration, activity: Arc<Activity>) {
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1).min(limit));
            if activity.idle_for().is_some_and(|idle| idle >= limit) {
                log::info!(
                    "idle for {}: unmounting {}",
                    humantime::format_duration(limit),
                    mountpoint.display()
                );
                if detach(&mountpoint, false).is_ok() {
                    return;
                }
            }
        }
    });
}

fn detach(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    if rustix::process::geteuid().is_root() {
        let flags = if lazy {
            rustix::mount::UnmountFlags::DETACH
        } else {
            rustix::mount::UnmountFlags::empty()
        };
        return rustix::mount::unmount(mountpoint, flags)
            .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error()));
    }
    let mut cmd = std::process::Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd.arg(mountpoint).output()?;
    if out.status.success() {
        Ok(())
    } else {
        let msg = String::from_utf8_lossy(&out.stderr);
        let busy = msg.contains("busy");
        Err(std::io::Error::from_raw_os_error(if busy {
            libc::EBUSY
        } else {
            libc::EINVAL
        }))
    }
}

/// Processes that hold files (or their working directory) under `mountpoint`.
fn open_files_under(mountpoint: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut links: Vec<PathBuf> = ["cwd", "root"].iter().map(|l| p.path().join(l)).collect();
        if let Ok(fds) = fs::read_dir(p.path().join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for link in links {
            if let Ok(target) = fs::read_link(&link)
                && target.starts_with(mountpoint)
            {
                found.push(format!("{} (pid {pid}, {comm})", target.display()));
            }
        }
    }
    found
}

/// `vaultfs unmount`: EBUSY naming the open files unless `lazy`; waits for the daemon.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let abs = if mountpoint.is_absolute() {
        mountpoint.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(VaultError::io("current directory"))?
            .join(mountpoint)
    };
    let abs = fs::canonicalize(&abs).unwrap_or(abs);
    match is_mounted(&abs) {
        Some(m) if m.fstype == "fuse.vaultfs" => {}
        _ => return Err(VaultError::NotMounted(abs)),
    }
    if !lazy {
        let open = open_files_under(&abs);
        if !open.is_empty() {
            let shown: Vec<_> = open.iter().take(5).cloned().collect();
            let more = if open.len() > 5 {
                format!(" and {} more", open.len() - 5)
            } else {
                String::new()
            };
            return Err(VaultError::Busy(format!(
                "{} is busy (EBUSY): open: {}{more}; close them or use --lazy",
                abs.display(),
                shown.join(", ")
            )));
        }
    }
    let pid = daemon_record(&abs).map(|(pid, _)| pid);
    detach(&abs, lazy).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            VaultError::Busy(format!(
                "{} is busy (EBUSY); close its files or use --lazy",
                abs.display()
            ))
        } else {
            VaultError::MountFailed(format!("cannot unmount {}: {e}", abs.display()))
        }
    })?;
    if let (Some(pid), false) = (pid, lazy) {
        // The daemon exits once the kernel has released the mount; everything it wrote is
        // already in the backing files.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.split(' ').nth(2) == Some("Z") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
