//! Every exit status of the `vaultfs` binary, in one place. Scripts rely on these; they are
//! listed in the man page and must not be renumbered.

/// Success.
pub const OK: i32 = 0;
/// An error with no more specific status.
pub const GENERAL: i32 = 1;
/// Bad command-line usage (clap's own status).
pub const USAGE: i32 = 2;
/// The password (or recovery key) does not open any keyslot.
pub const WRONG_PASSWORD: i32 = 10;
/// No usable password source: no terminal, unreadable or empty password file, mismatch.
pub const PASSWORD_SOURCE: i32 = 11;
/// The path is not a vault, or its key database is missing or elsewhere (`--keystore`).
pub const NOT_A_VAULT: i32 = 12;
/// `init` target is not empty, or the keystore file already exists.
pub const ALREADY_EXISTS: i32 = 13;
/// The key database is corrupt, foreign, tampered with, rolled back or in sync conflict.
pub const KEYSTORE_REFUSED: i32 = 14;
/// The vault was made by a newer vaultfs (format or schema version).
pub const NEWER_FORMAT: i32 = 15;
/// An I/O error on the backing directory or key database.
pub const IO: i32 = 16;
/// The mount failed: mount point missing, busy or not a directory, vault already mounted, no
/// FUSE, or the daemon could not start.
pub const MOUNT_FAILED: i32 = 17;
/// `unmount` refused: files are open on the mount (their holders are listed).
pub const BUSY: i32 = 18;
/// `unmount` of a path that is not a vaultfs mount.
pub const NOT_MOUNTED: i32 = 19;
/// `fsck` found problems (they are listed).
pub const DAMAGED: i32 = 20;

/// `fsck --repair` repaired every problem it found (they are listed).
pub const REPAIRED: i32 = 21;

/// `fsck`: the key database's audit log was cut, edited or reordered (whatever else it found).
pub const AUDIT_TAMPERED: i32 = 22;

/// Every status with its meaning, for the man page and `--help`.
pub const ALL: &[(i32, &str)] = &[
    (OK, "success"),
    (GENERAL, "an error with no more specific status"),
    (USAGE, "bad command-line usage or option value"),
    (
        WRONG_PASSWORD,
        "the password or recovery key opens no keyslot",
    ),
    (
        PASSWORD_SOURCE,
        "no usable password: no terminal, unreadable or empty password file, failed --extpass command, passwords differ",
    ),
    (
        NOT_A_VAULT,
        "not a vault, or its key database is missing or kept elsewhere (use --keystore)",
    ),
    (
        ALREADY_EXISTS,
        "init: the directory is not empty, or the keystore or recovery-key file exists",
    ),
    (
        KEYSTORE_REFUSED,
        "the key database is damaged, foreign, tampered with, rolled back, or has a sync-conflict copy",
    ),
    (NEWER_FORMAT, "the vault was made by a newer vaultfs"),
    (IO, "an I/O error on the vault or key database"),
    (
        MOUNT_FAILED,
        "the mount failed: mount point missing, busy or not a directory, vault already mounted, no FUSE",
    ),
    (
        BUSY,
        "unmount: files are open on the mount (they are listed); use --lazy",
    ),
    (NOT_MOUNTED, "unmount: the path is not a vaultfs mount"),
    (
        DAMAGED,
        "fsck: problems were found (listed one per line); with --repair: some remain",
    ),
    (REPAIRED, "fsck --repair: every problem found was repaired"),
    (
        AUDIT_TAMPERED,
        "fsck: the key database's audit log was cut, edited or reordered (restore the database from a backup)",
    ),
];
