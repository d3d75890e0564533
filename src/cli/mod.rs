//! The command line: clap definitions and the thin glue that calls `vault`.

pub mod fstab;
pub mod manpage;
pub mod password;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::crypto::chunk::DEFAULT_CHUNK_SIZE;
use crate::crypto::keyslot::KdfParams;
use crate::crypto::names::DEFAULT_LONGNAME_MAX;
use crate::vault::init::{InitOptions, init, open_keystore};
use crate::vault::{Result, VaultError, status};
use password::PasswordArgs;

const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (on-disk format 3; reads 1 and 2)"
);

#[derive(Debug, Parser)]
#[command(name = "vaultfs", version, long_version = LONG_VERSION, about = "Encrypted filesystem with per-file keys, keyslots and master-key rotation")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new vault in an empty (or new) directory
    Init(InitArgs),
    /// Show a vault's format, keyslots, generations and recent audit entries (no password)
    Status(StatusArgs),
    /// Mount a vault: its plaintext appears at MOUNTPOINT
    Mount(MountArgs),
    /// Unmount a vault (fails with EBUSY, naming the open files, unless --lazy)
    Unmount(UnmountArgs),
    /// Print the plaintext path (relative to the mount root) of a backing path
    DecryptPath(PathArgs),
    /// Print the backing path (relative to the vault) of a plaintext path
    EncryptPath(PathArgs),
    /// Check every file, name, directory ID, symlink and xattr against the key; --repair fixes what is safe to fix
    Fsck(FsckArgs),
    /// Change the password of the keyslot it unlocks
    Passwd(PasswdArgs),
    /// List, add or remove keyslots (one per user or purpose)
    #[command(subcommand)]
    Keyslot(KeyslotCommand),
    /// Set a new password with the recovery key, or rebuild a lost key database
    Recover(RecoverArgs),
    /// Rotate the master key: a new key generation for every header, name, directory ID,
    /// symlink and xattr; resumable after a crash (vault unmounted)
    Rotate(RotateArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(CompletionsArgs),
}

#[derive(Debug, Args)]
pub struct NewPasswordArgs {
    /// Read the new password from the first line of this file (else: asked twice)
    #[arg(long, value_name = "FILE")]
    pub new_passfile: Option<PathBuf>,
}

impl NewPasswordArgs {
    fn get(&self, what: &str) -> Result<password::Password> {
        match &self.new_passfile {
            Some(f) => password::read_passfile(f),
            None => PasswordArgs::default().get_new(what),
        }
    }
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    #[command(flatten)]
    pub password: PasswordArgs,
    #[command(flatten)]
    pub new_password: NewPasswordArgs,
    /// The vault's key database, if it is kept outside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// The vault (backing) directory
    pub vault: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum KeyslotCommand {
    /// List keyslots: label, kind, created, scrypt parameters (no password needed)
    List {
        /// The vault's key database, if it is kept outside the vault
        #[arg(long, value_name = "PATH")]
        keystore: Option<PathBuf>,
        /// The vault (backing) directory
        vault: PathBuf,
    },
    /// Add a password slot (unlock with any slot), or with --recovery issue a new recovery key
    Add(KeyslotAddArgs),
    /// Remove a slot (unlock with another one); revokes future key generations only
    Remove(KeyslotRemoveArgs),
}

#[derive(Debug, Args)]
pub struct KeyslotAddArgs {
    #[command(flatten)]
    pub password: PasswordArgs,
    #[command(flatten)]
    pub new_password: NewPasswordArgs,
    /// The new slot's label
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// Issue a new recovery key (replacing the current one, if any)
    #[arg(long)]
    pub recovery: bool,
    /// With --recovery: write the key to this new file (mode 0600) instead of printing it
    #[arg(long, value_name = "FILE", requires = "recovery")]
    pub recovery_key_file: Option<PathBuf>,
    /// The vault's key database, if it is kept outside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// The vault (backing) directory
    pub vault: PathBuf,
}

#[derive(Debug, Args)]
pub struct KeyslotRemoveArgs {
    #[command(flatten)]
    pub password: PasswordArgs,
    /// The label of the slot to remove
    #[arg(long, value_name = "NAME")]
    pub label: String,
    /// The vault's key database, if it is kept outside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// The vault (backing) directory
    pub vault: PathBuf,
}

#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// Read the recovery key from this file (else: asked on the terminal)
    #[arg(long, value_name = "FILE")]
    pub recovery_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub new_password: NewPasswordArgs,
    /// The password slot that gets the new password (default: the first)
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// Recreate a lost or corrupt key database from the recovery files in the vault
    #[arg(long)]
    pub rebuild_keystore: bool,
    /// With --rebuild-keystore: the vault holds two recovery files because a rotation was
    /// under way when the key database was lost; trust both (a planted newer one would
    /// learn every file key)
    #[arg(long, requires = "rebuild_keystore")]
    pub interrupted_rotation: bool,
    /// With --rebuild-keystore: scrypt cost of the new password slot
    #[arg(long, value_name = "N", default_value_t = KdfParams::DEFAULT.log_n)]
    pub scrypt_logn: u8,
    /// The vault's key database, if it is kept outside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// The vault (backing) directory
    pub vault: PathBuf,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub password: PasswordArgs,
    /// Also give every file a fresh key and rewrite its contents (beside it, then renamed
    /// over: never in place), so keys someone kept learn nothing from new ciphertext
    #[arg(long)]
    pub reencrypt: bool,
    /// The vault's key database, if it is kept outside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// The vault (backing) directory
    pub vault: PathBuf,
}

#[derive(Debug, Args)]
pub struct FsckArgs {
    #[command(flatten)]
    pub password: PasswordArgs,
    /// The vault's key database, if it is kept outside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Repair what is safe to repair: finish an interrupted rotation; remove leftovers of
    /// interrupted operations, orphaned side files and empty files left by a crash; move
    /// entries whose name is lost to lost+found. Damaged data is kept and listed. Refuses
    /// while mounted
    #[arg(long)]
    pub repair: bool,
    /// The vault (backing) directory
    pub vault: PathBuf,
}

#[derive(Debug, Args)]
pub struct PathArgs {
    #[command(flatten)]
    pub password: PasswordArgs,
    /// The vault's key database, if it is kept outside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// The vault (backing) directory
    pub vault: PathBuf,
    /// The path to translate (a backing name may start with '-')
    #[arg(allow_hyphen_values = true)]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct MountArgs {
    #[command(flatten)]
    pub password: PasswordArgs,
    /// The vault's key database, if it is kept outside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// Stay in the foreground (logs go to stderr)
    #[arg(short, long)]
    pub foreground: bool,
    /// Mount read-only
    #[arg(long)]
    pub read_only: bool,
    /// Let other users access the mount (adds default_permissions; needs user_allow_other in
    /// /etc/fuse.conf when not root)
    #[arg(long)]
    pub allow_other: bool,
    /// Unmount automatically after this long without filesystem activity, once no file is
    /// open (e.g. 30s, 10m, 1h)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle: Option<std::time::Duration>,
    /// The backing directory is also written by others (another machine through a sync
    /// client or network share): no kernel writeback cache, no cached attributes, names or
    /// file pages across opens (same as -o shared_storage)
    #[arg(long)]
    pub shared_storage: bool,
    /// Change an existing mount of VAULT at MOUNTPOINT instead: ro or rw and the mount
    /// flags given with it (as root; no password needed)
    #[arg(long)]
    pub remount: bool,
    /// Extra mount options, comma-separated (ro, allow_other, default_permissions,
    /// shared_storage, no_writeback_cache, noexec, noatime, nodiratime, relatime,
    /// strictatime, lazytime, sync, and as root suid, dev, ...)
    #[arg(short = 'o', value_name = "OPTS", value_delimiter = ',')]
    pub options: Vec<String>,
    /// The vault (backing) directory
    pub vault: PathBuf,
    /// Where the plaintext appears: an existing empty directory
    pub mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct UnmountArgs {
    /// Detach now even with files open; the daemon serves them until they are closed
    #[arg(long, short = 'z')]
    pub lazy: bool,
    /// The mount point
    pub mountpoint: PathBuf,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub password: PasswordArgs,
    /// scrypt cost as log2(N), 10-20 (each step doubles unlock time and memory; 20 takes 1 GiB)
    #[arg(long, value_name = "N", default_value_t = KdfParams::DEFAULT.log_n)]
    pub scrypt_logn: u8,
    /// Plaintext bytes per encrypted chunk: a power of two from 4096 to 1048576
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_CHUNK_SIZE)]
    pub chunk_size: u32,
    /// Encrypted names longer than this (62-255) are stored hashed, for sync services with
    /// shorter name limits
    #[arg(long, value_name = "N", default_value_t = DEFAULT_LONGNAME_MAX as u32)]
    pub longname_max: u32,
    /// Keep the key database at PATH instead of inside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// Do not create a recovery key
    #[arg(long, conflicts_with = "recovery_key_file")]
    pub no_recovery_key: bool,
    /// Write the recovery key to this new file (mode 0600) instead of printing it
    #[arg(long, value_name = "FILE")]
    pub recovery_key_file: Option<PathBuf>,
    /// Store holes (truncate, fallocate, punch, writes past the end) unwritten, so sparse
    /// files take little space. Trade-off: in a file that has a hole, a chunk zeroed in the
    /// backing store reads as zeros instead of EIO. Without it, holes are stored as
    /// encrypted zeros and take their full size
    #[arg(long)]
    pub sparse: bool,
    /// The vault (backing) directory: empty or not yet existing
    pub vault: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (stable field names; see docs/USAGE.md)
    #[arg(long)]
    pub json: bool,
    /// The vault's key database, if it is kept outside the vault
    #[arg(long, value_name = "PATH")]
    pub keystore: Option<PathBuf>,
    /// Audit entries to show
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub audit: usize,
    /// The vault (backing) directory
    pub vault: PathBuf,
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Mount(a) => cmd_mount(a),
        other => {
            crate::daemon::init_stderr_log();
            match other {
                Command::Init(a) => cmd_init(a),
                Command::Status(a) => cmd_status(a),
                Command::Unmount(a) => crate::daemon::unmount(&a.mountpoint, a.lazy),
                Command::DecryptPath(a) => cmd_path(a, false),
                Command::Fsck(a) => cmd_fsck(a),
                Command::Passwd(a) => cmd_passwd(a),
                Command::Keyslot(c) => cmd_keyslot(c),
                Command::Recover(a) => cmd_recover(a),
                Command::Rotate(a) => cmd_rotate(a),
                Command::EncryptPath(a) => cmd_path(a, true),
                Command::Completions(a) => {
                    use clap::CommandFactory;
                    clap_complete::generate(
                        a.shell,
                        &mut Cli::command(),
                        "vaultfs",
                        &mut std::io::stdout(),
                    );
                    Ok(())
                }
                Command::Mount(_) => unreachable!("handled above"),
            }
        }
    }
}

fn cmd_passwd(a: PasswdArgs) -> Result<()> {
    let old = a.password.get(&a.vault.display().to_string())?;
    let mut u = crate::vault::init::unlock(&a.vault, a.keystore.as_deref(), true, &old)?;
    let new = a.new_password.get(&a.vault.display().to_string())?;
    let label = u.change_password(&new)?;
    println!(
        "Changed the password of keyslot '{label}' (with a new key pair): the old password no longer opens this key database."
    );
    eprintln!(
        "note: a copy of the key database made before still opens with the old password and reads what the vault's current keys protect; run `vaultfs rotate --reencrypt` so that nothing written afterwards can be read with it (docs/SECURITY.md)"
    );
    Ok(())
}

fn write_recovery_key_file(f: &std::path::Path, key: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(f)
        .map_err(VaultError::io(format!(
            "cannot write the recovery key to {}",
            f.display()
        )))?;
    file.write_all(format!("{key}\n").as_bytes())
        .map_err(VaultError::io("write the recovery key"))
}

fn show_recovery_key(key: &str, file: Option<&std::path::Path>) -> Result<()> {
    match file {
        Some(f) => {
            write_recovery_key_file(f, key)?;
            println!(
                "Recovery key written to {}: keep it offline, apart from the vault.",
                f.display()
            );
        }
        None => {
            println!(
                "Recovery key (shown only this once; write it down and keep it offline):\n\n    {key}\n"
            );
        }
    }
    Ok(())
}

fn cmd_keyslot(c: KeyslotCommand) -> Result<()> {
    match c {
        KeyslotCommand::List { keystore, vault } => {
            let ks = open_keystore(&vault, keystore.as_deref(), false)?;
            println!(
                "{:>4}  {:<20} {:<9} {:<26} created",
                "id", "label", "kind", "kdf"
            );
            for s in &ks.state.slots {
                let kdf = s
                    .kdf
                    .map(|k| format!("scrypt logN={} r={} p={}", k.log_n, k.r, k.p))
                    .unwrap_or_default();
                println!(
                    "{:>4}  {:<20} {:<9} {:<26} {}",
                    s.slot_id,
                    s.label,
                    s.kind.as_str(),
                    kdf,
                    fmt_time(s.created)
                );
            }
            Ok(())
        }
        KeyslotCommand::Add(a) => {
            if let Some(f) = &a.recovery_key_file
                && f.exists()
            {
                return Err(VaultError::AlreadyExists(format!(
                    "{} already exists; the recovery key file must be new",
                    f.display()
                )));
            }
            let pw = a.password.get(&a.vault.display().to_string())?;
            let mut u = crate::vault::init::unlock(&a.vault, a.keystore.as_deref(), true, &pw)?;
            if a.recovery {
                let label = a.label.unwrap_or_else(|| "recovery".into());
                let key = u.new_recovery_key(&label)?;
                println!(
                    "Added recovery keyslot '{label}' (any earlier recovery key no longer opens new key generations)."
                );
                show_recovery_key(&key, a.recovery_key_file.as_deref())
            } else {
                let label = a.label.ok_or_else(|| {
                    VaultError::InvalidArgument("keyslot add needs --label NAME".into())
                })?;
                let new = a.new_password.get(&format!("keyslot '{label}'"))?;
                u.add_password_slot(&label, &new)?;
                println!("Added password keyslot '{label}'.");
                Ok(())
            }
        }
        KeyslotCommand::Remove(a) => {
            let pw = a.password.get(&a.vault.display().to_string())?;
            let mut u = crate::vault::init::unlock(&a.vault, a.keystore.as_deref(), true, &pw)?;
            u.remove_slot(&a.label)?;
            println!("Removed keyslot '{}'.", a.label);
            eprintln!(
                "note: whoever held this slot may have kept the vault's current keys (and a copy of the key database): run `vaultfs rotate --reencrypt` so that nothing written afterwards can be read with them, and have the other members change their passwords (on a machine that never saw this removal, a member whose password predates it cannot tell a key database forged by the removed one; docs/SECURITY.md)"
            );
            Ok(())
        }
    }
}

fn read_recovery_key(file: Option<&std::path::Path>) -> Result<crate::crypto::keys::Key256> {
    let text = match file {
        Some(f) => {
            let bytes = std::fs::read(f).map_err(|e| {
                VaultError::PasswordSource(format!("cannot read {}: {e}", f.display()))
            })?;
            password::read_line_from(&bytes[..])
                .ok_or_else(|| VaultError::PasswordSource(format!("{} is empty", f.display())))?
        }
        None => {
            zeroize::Zeroizing::new(rpassword::prompt_password("Recovery key: ").map_err(|e| {
                VaultError::PasswordSource(format!(
                    "cannot ask for the recovery key ({e}): use --recovery-key-file FILE"
                ))
            })?)
        }
    };
    crate::crypto::recovery_key::decode(&text)
        .map_err(|e| VaultError::PasswordSource(format!("recovery key: {e}")))
}

fn cmd_recover(a: RecoverArgs) -> Result<()> {
    crate::vault::keyslots::ensure_not_mounted(&a.vault)?;
    let seed = read_recovery_key(a.recovery_key_file.as_deref())?;
    if a.rebuild_keystore {
        let _lock = crate::rotate::lock_vault(&a.vault)?;
        let new = a.new_password.get(&a.vault.display().to_string())?;
        let kdf = KdfParams {
            log_n: a.scrypt_logn,
            ..KdfParams::DEFAULT
        };
        let path = crate::vault::rebuild::rebuild_keystore(
            &a.vault,
            a.keystore.as_deref(),
            &seed,
            &new,
            kdf,
            a.interrupted_rotation,
        )?;
        println!(
            "Rebuilt the key database at {} with a new password for keyslot 'default'.",
            path.display()
        );
        // The generations came from files that any former member could have forged: move
        // everything to a new one that only this database knows (finishing first a rotation
        // that the files show under way).
        let mut u = crate::vault::init::unlock(&a.vault, a.keystore.as_deref(), true, &new)?;
        let rotated = (|| {
            if u.keystore.state.rotation.is_some() {
                rotate_and_report(&mut u, false)?;
            }
            rotate_and_report(&mut u, false)
        })();
        if let Err(e) = rotated {
            eprintln!(
                "error: the rebuilt database still uses generations read from the recovery files; finish with `vaultfs rotate` before writing to the vault"
            );
            return Err(e);
        }
        println!(
            "Former members keep what their copies of the old keys open until `vaultfs rotate --reencrypt`."
        );
        return Ok(());
    }
    let ks = open_keystore(&a.vault, a.keystore.as_deref(), true)?;
    let mut u = ks.unlock_with_recovery(&seed)?;
    let slot_id = match &a.label {
        Some(l) => u
            .keystore
            .state
            .slots
            .iter()
            .find(|s| &s.label == l)
            .map(|s| s.slot_id)
            .ok_or_else(|| VaultError::InvalidArgument(format!("no keyslot labelled '{l}'")))?,
        None => u.first_password_slot().ok_or_else(|| {
            VaultError::InvalidArgument("this vault has no password keyslot".into())
        })?,
    };
    let new = a.new_password.get(&a.vault.display().to_string())?;
    let label = u.reset_password_slot(slot_id, &new)?;
    println!("Set a new password on keyslot '{label}'.");
    Ok(())
}

fn cmd_rotate(a: RotateArgs) -> Result<()> {
    let _lock = crate::rotate::lock_vault(&a.vault)?;
    let password = a.password.get(&a.vault.display().to_string())?;
    let mut u = crate::vault::init::unlock(&a.vault, a.keystore.as_deref(), true, &password)?;
    rotate_and_report(&mut u, a.reencrypt)?;
    if !a.reencrypt {
        eprintln!(
            "note: without --reencrypt every file keeps its file key: someone who could read a file before (a removed member, an old password) still can; use --reencrypt after revoking anyone"
        );
    }
    Ok(())
}

/// Runs (or resumes) a rotation with a progress spinner, then says what it did.
fn rotate_and_report(u: &mut crate::vault::keystore::Unlocked, reencrypt: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}").expect("valid template"),
    );
    let progress = |phase: &str, s: &crate::rotate::WalkStats| {
        bar.set_message(format!(
            "{phase}: {} entries, {} objects rewritten",
            s.entries,
            s.changed()
        ));
        bar.tick();
    };
    let (old, new, stats) = crate::rotate::rotate(u, reencrypt, &progress)?;
    bar.finish_and_clear();
    println!(
        "Rotated generation {old} -> {new} in {:.1} s: {} entries; re-encrypted {} files; rewrote {} headers, {} names, {} directory IDs, {} symlinks, {} xattrs. Generation {old}'s key is destroyed.",
        started.elapsed().as_secs_f64(),
        stats.entries,
        stats.reencrypted,
        stats.headers,
        stats.names,
        stats.dir_ids,
        stats.symlinks,
        stats.xattrs
    );
    if stats.damaged > 0 {
        eprintln!(
            "warning: {} damaged files (contents that do not decrypt) were not re-encrypted: they keep their file keys; `vaultfs fsck` lists them",
            stats.damaged
        );
    }
    if stats.nodes > 0 {
        println!(
            "Moved {} FIFOs, sockets and device nodes made by format 1 into header-only files.",
            stats.nodes
        );
    }
    if stats.raw_nodes_left > 0 {
        eprintln!(
            "warning: {} FIFOs, sockets or device nodes made by format 1 appeared during the rotation and stay as they are: until the next rotation, a node planted in the backing store shows with its planted type",
            stats.raw_nodes_left
        );
    }
    Ok(())
}

fn cmd_fsck(a: FsckArgs) -> Result<()> {
    let _lock = if a.repair {
        Some(crate::rotate::lock_vault(&a.vault)?)
    } else {
        None
    };
    let password = a.password.get(&a.vault.display().to_string())?;
    let mut u = crate::vault::init::unlock(&a.vault, a.keystore.as_deref(), a.repair, &password)?;
    // An interrupted rotation is not damage (both generations are live), but --repair
    // finishes it, in the mode it was started in, before checking what it left.
    let mut finished_rotation = None;
    if let Some(r) = u.state().rotation.clone() {
        if a.repair {
            crate::rotate::rotate(&mut u, r.reencrypt, &|_, _| {})?;
            finished_rotation = Some(format!(
                "finished the interrupted rotation {} -> {}",
                r.from_generation, r.to_generation
            ));
        } else if !a.json {
            println!(
                "note: a rotation ({} -> {}) is unfinished: run `vaultfs rotate{}` or `vaultfs fsck --repair` to finish it",
                r.from_generation,
                r.to_generation,
                if r.reencrypt { " --reencrypt" } else { "" }
            );
        }
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}").expect("valid template"),
    );
    let progress = |r: &crate::fsck::Report| {
        bar.set_message(format!(
            "{} files, {} directories, {} problems",
            r.files,
            r.directories,
            r.problems.len()
        ));
        bar.tick();
    };
    let legacy_nodes = u.state().config.legacy_nodes;
    let mut report = crate::fsck::check(&a.vault, &u.keyring, u.layout(), legacy_nodes, &progress)
        .map_err(VaultError::io(format!("cannot read {}", a.vault.display())))?;
    // The key database itself: its state authenticated when it unlocked; the audit chain here.
    let audit_key = u.audit_key()?;
    if let Err(why) =
        crate::vault::audit::check(&u.keystore.db.conn, &audit_key, &u.state().config)?
    {
        report.problems.push(crate::fsck::Problem {
            kind: crate::fsck::ProblemKind::TamperedAuditLog,
            backing_path: u.keystore.paths.keystore.display().to_string(),
            plain_path: None,
            detail: why,
        });
    }
    let audit_tampered = report
        .problems
        .iter()
        .any(|p| p.kind == crate::fsck::ProblemKind::TamperedAuditLog);
    bar.finish_and_clear();
    let summary = format!(
        "{} problems; checked {} files ({} bytes), {} directories, {} symlinks, {} other",
        report.problems.len(),
        report.files,
        report.plaintext_bytes,
        report.directories,
        report.symlinks,
        report.other
    );
    let _ =
        crate::vault::local_state::record_local_audit(&u.state().config.vault_id, "fsck", &summary);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        for p in &report.problems {
            let plain = p
                .plain_path
                .as_deref()
                .map(|pp| format!(" ({pp})"))
                .unwrap_or_default();
            println!("{:?}: {}{plain}: {}", p.kind, p.backing_path, p.detail);
        }
        println!("{summary}");
    }
    if let Some(f) = &finished_rotation {
        println!("repaired: {f}");
    }
    if report.problems.is_empty() {
        if finished_rotation.is_some() {
            std::process::exit(crate::exitcodes::REPAIRED)
        }
        return Ok(());
    }
    if a.repair {
        let repairs = crate::fsck::repair(&a.vault, &report).map_err(VaultError::io(format!(
            "cannot repair {}",
            a.vault.display()
        )))?;
        for f in &repairs.fixed {
            println!("repaired: {f}");
        }
        for k in &repairs.kept {
            println!("left as is: {k}");
        }
        let _ = crate::vault::local_state::record_local_audit(
            &u.state().config.vault_id,
            "fsck-repair",
            &format!(
                "{} repaired, {} left",
                repairs.fixed.len(),
                repairs.kept.len()
            ),
        );
        if repairs.kept.is_empty() {
            std::process::exit(crate::exitcodes::REPAIRED)
        }
    }
    if audit_tampered {
        std::process::exit(crate::exitcodes::AUDIT_TAMPERED)
    }
    std::process::exit(crate::exitcodes::DAMAGED)
}

fn cmd_path(a: PathArgs, encrypt: bool) -> Result<()> {
    let password = a.password.get(&a.vault.display().to_string())?;
    let u = crate::vault::init::unlock(&a.vault, a.keystore.as_deref(), false, &password)?;
    let out = if encrypt {
        crate::vault::pathmap::encrypt_path(
            &a.vault,
            &u.keyring,
            u.state().config.longname_max as usize,
            &a.path,
        )?
    } else {
        crate::vault::pathmap::decrypt_path(&a.vault, &u.keyring, &a.path)?
    };
    println!("{}", out.display());
    Ok(())
}

pub fn cmd_mount(a: MountArgs) -> Result<()> {
    if a.foreground {
        crate::daemon::init_stderr_log();
    }
    let req = crate::daemon::MountRequest {
        idle: a.idle,
        vault: a.vault,
        keystore: a.keystore,
        mountpoint: a.mountpoint,
        foreground: a.foreground,
        settings: crate::fs::mount::MountSettings {
            read_only: a.read_only,
            allow_other: a.allow_other,
            shared_storage: a.shared_storage,
            no_writeback_cache: false,
            default_permissions: false,
            suid: false,
            dev: false,
            options: a.options,
            fsname: String::new(),
        },
    };
    // A remount changes a mount that is already unlocked: no password.
    if a.remount {
        return crate::daemon::remount(req);
    }
    let password = a.password.get(&req.vault.display().to_string())?;
    crate::daemon::mount(req, &password)
}

fn cmd_init(a: InitArgs) -> Result<()> {
    // Refuse an existing recovery-key file before doing any work.
    if let Some(f) = &a.recovery_key_file
        && f.exists()
    {
        return Err(VaultError::AlreadyExists(format!(
            "{} already exists; the recovery key file must be new",
            f.display()
        )));
    }
    let password = a.password.get_new(&a.vault.display().to_string())?;
    let opts = InitOptions {
        vault: a.vault.clone(),
        keystore: a.keystore.clone(),
        kdf: KdfParams {
            log_n: a.scrypt_logn,
            ..KdfParams::DEFAULT
        },
        chunk_size: a.chunk_size,
        longname_max: a.longname_max,
        recovery_key: !a.no_recovery_key,
        sparse: a.sparse,
    };
    let report = init(&opts, &password)?;
    println!("Created vault {}", report.paths.backing.display());
    println!("  key database: {}", report.paths.keystore.display());
    if a.sparse {
        println!(
            "  sparse: holes are stored unwritten; in a file with a hole, a chunk zeroed in the backing store reads as zeros, not EIO"
        );
    }
    if report.longname_max < a.longname_max {
        println!(
            "  long-name threshold lowered to {} (the backing filesystem's name limit)",
            report.longname_max
        );
    }
    if !report.backing_missing.is_empty() {
        println!(
            "  the backing filesystem lacks: {} (those operations will fail)",
            report.backing_missing.join(", ")
        );
    }
    if let Some(key) = &report.recovery_key {
        match &a.recovery_key_file {
            Some(f) => {
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(f)
                    .and_then(|mut file| {
                        file.write_all(format!("{}\n", key.as_str()).as_bytes())
                            .map(|_| file)
                    })
                    .map_err(VaultError::io(format!(
                        "cannot write the recovery key to {}",
                        f.display()
                    )))?;
                file.flush().map_err(VaultError::io("flush"))?;
                println!(
                    "  recovery key written to {}: keep it offline, apart from the vault",
                    f.display()
                );
            }
            None => {
                println!();
                println!("Recovery key (shown only this once; write it down and keep it offline):");
                println!();
                println!("    {}", key.as_str());
                println!();
                println!(
                    "With it, `vaultfs recover` sets a new password or rebuilds a lost key database."
                );
            }
        }
    }
    Ok(())
}

fn fmt_time(t: i64) -> String {
    let st = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(st).to_string()
}

fn cmd_status(a: StatusArgs) -> Result<()> {
    let ks = open_keystore(&a.vault, a.keystore.as_deref(), false)?;
    let s = status::status(&ks, a.audit)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&s).expect("status serializes")
        );
        return Ok(());
    }
    println!("vault        {}", s.vault);
    println!(
        "keystore     {} ({})",
        s.keystore,
        if s.external_keystore {
            "external"
        } else {
            "inside the vault"
        }
    );
    println!("vault ID     {}", s.vault_id);
    println!("format       {}", s.format_version);
    println!("chunk size   {} bytes", s.chunk_size);
    println!(
        "holes        {}",
        if s.sparse {
            "stored unwritten (init --sparse): a zeroed chunk of a file with a hole reads as zeros"
        } else {
            "stored as encrypted zeros"
        }
    );
    println!(
        "long names   encrypted names over {} bytes are stored hashed",
        s.longname_max
    );
    println!("created      {}", fmt_time(s.created));
    let rollback = if s.seen_epoch > s.epoch {
        "  WARNING: older than seen before (rollback?)"
    } else {
        ""
    };
    println!(
        "epoch        {} (highest seen here: {}){rollback}",
        s.epoch, s.seen_epoch
    );
    println!(
        "auth epoch   {} (renewed by every passwd, keyslot remove and recover)",
        s.auth_epoch
    );
    if s.revoked_since_reencrypt {
        println!(
            "revocation   incomplete: run `vaultfs rotate --reencrypt` (until then a revoked password or slot still reads what its copy of the keys opens)"
        );
    }
    if s.backing_missing.is_empty() {
        println!("backing      supports everything vaultfs uses");
    } else {
        println!("backing      lacks {}", s.backing_missing.join(", "));
    }
    println!("keyslots");
    for k in &s.keyslots {
        let kdf = k
            .kdf
            .as_ref()
            .map(|k| format!("scrypt logN={} r={} p={}", k.log_n, k.r, k.p))
            .unwrap_or_default();
        let predates = if k.anchor_epoch < s.auth_epoch {
            "  (secret set before the last revocation)"
        } else {
            ""
        };
        println!(
            "  {:>3}  {:<16} {:<9} {:<26} created {}{predates}",
            k.id,
            k.label,
            format!("{:?}", k.kind).to_lowercase(),
            kdf,
            fmt_time(k.created)
        );
    }
    println!("generations");
    for g in &s.generations {
        println!(
            "  {:>3}  {:<10} created {}",
            g.generation,
            format!("{:?}", g.state).to_lowercase(),
            fmt_time(g.created)
        );
    }
    match &s.rotation {
        None => println!("rotation     none in progress"),
        Some(r) => println!(
            "rotation     {} -> {} ({}), phase {}, updated {}",
            r.from_generation,
            r.to_generation,
            if r.reencrypt {
                "re-encrypting contents"
            } else {
                "rewrapping keys"
            },
            r.phase,
            fmt_time(r.updated)
        ),
    }
    println!("recent audit (not verified without a password)");
    for e in &s.recent_audit {
        println!("  {}  {:<10} {}", fmt_time(e.time), e.event, e.detail);
    }
    Ok(())
}
