//! The man page, generated from the clap definitions (so it cannot drift from `--help`)
//! plus the sections clap does not know: threat model, files, exit status, examples.
//! `tests/manpage.rs` checks that the committed man/vaultfs.1 is up to date.

use clap::CommandFactory;
use clap_mangen::roff::{self, Roff, bold, italic, roman};

use super::Cli;

fn para(r: &mut Roff, text: &str) {
    r.control("PP", []).text([roman(text)]);
}

fn tagged(r: &mut Roff, tag: Vec<roff::Inline>, body: &str) {
    r.control("TP", []).text(tag).text([roman(body)]);
}

/// Renders man/vaultfs.1.
pub fn render() -> Vec<u8> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone())
        .date("")
        .source(format!("vaultfs {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out).expect("write to memory");
    man.render_name_section(&mut out).expect("write to memory");
    man.render_synopsis_section(&mut out)
        .expect("write to memory");

    let mut r = Roff::new();
    r.control("SH", ["DESCRIPTION"]);
    para(
        &mut r,
        "vaultfs keeps files encrypted at rest in an ordinary directory (the vault: a cloud-synced folder, a NAS share, a removable disk) and shows their plaintext at a mount point through FUSE. Every file has its own random key, wrapped by a master key that per-user keyslots unlock and that can be rotated. Contents are AES-256-GCM in chunks, names AES-256-SIV bound to their directory; symlink targets and extended attributes are encrypted too. Tampering, reordering, swapping or truncating ciphertext gives EIO, never wrong bytes.",
    );
    para(
        &mut r,
        "A first argument that is not a command selects the mount.fuse form, vaultfs VAULT MOUNTPOINT -o OPTIONS, used by mount -t fuse.vaultfs and /etc/fstab; see MOUNTING.",
    );

    r.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        let usage = sub
            .clone()
            .bin_name(format!("vaultfs {name}"))
            .render_usage()
            .to_string();
        r.control("SS", [format!("vaultfs {name}").as_str()]);
        r.text([bold(usage.trim_start_matches("Usage: ").to_string())]);
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            para(&mut r, &about.to_string());
        }
        for arg in sub
            .get_arguments()
            .filter(|a| !a.is_hide_set() && a.get_id() != "help")
        {
            let mut tag = Vec::new();
            if let Some(s) = arg.get_short() {
                tag.push(bold(format!("-{s}")));
                if arg.get_long().is_some() {
                    tag.push(roman(", "));
                }
            }
            if let Some(l) = arg.get_long() {
                tag.push(bold(format!("--{l}")));
            }
            let takes_value = arg.get_action().takes_values();
            if let Some(names) = arg.get_value_names().filter(|_| takes_value) {
                let v = names
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(" ");
                if arg.is_positional() {
                    tag.push(italic(v));
                } else {
                    tag.push(roman(" "));
                    tag.push(italic(v));
                }
            } else if arg.is_positional() {
                tag.push(italic(arg.get_id().to_string().to_uppercase()));
            }
            let mut help = arg
                .get_long_help()
                .or(arg.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default();
            let defaults: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|d| d.to_string_lossy().into_owned())
                .collect();
            if !defaults.is_empty() && takes_value {
                help.push_str(&format!(" (default: {})", defaults.join(",")));
            }
            tagged(&mut r, tag, &help);
        }
    }

    r.control("SH", ["MOUNTING"]);
    para(
        &mut r,
        "Mounts are nosuid and nodev unless root mounts with -o suid or -o dev (only a vault's owner can make set-ID files and device nodes in it, but honouring them is the admin's choice). Access times: a read updates a file's atime, and a listing a directory's, as the backing filesystem's own policy says (relatime on most); -o noatime stops both, -o nodiratime the second. vaultfs mount --remount -o ro VAULT MOUNTPOINT (or mount -o remount,ro MOUNTPOINT) makes a mount read-only and -o rw writable again, as root; a mount made with --read-only stays so. The kernel checks permissions (default_permissions) wherever a user other than root can enter, with --allow-other and on every mount made by a user: FUSE requests do not carry supplementary groups, so vaultfs never checks other users' permissions itself. A root mount without --allow-other admits only root, whom permission bits do not stop, so the check (a round trip before every file created or removed) is left out; -o default_permissions restores it for root processes stripped of CAP_DAC_OVERRIDE. As root, vaultfs mounts directly; other users mount through fusermount3 (package fuse3). --allow-other lets other users in (for non-root users it needs user_allow_other in /etc/fuse.conf).",
    );
    para(
        &mut r,
        "In /etc/fstab: /srv/vault /mnt/private fuse.vaultfs passfile=/root/vault.pass,noauto,nofail 0 0. Options of the mount.fuse form: passfile=FILE, keystore=PATH, ro, allow_other, default_permissions, idle=DURATION, shared_storage, no_writeback_cache, remount, and noexec, noatime, nodiratime, relatime, strictatime, lazytime, sync, dirsync, suid, dev; noauto, nofail, _netdev, defaults and x-systemd.* are accepted and ignored.",
    );
    para(
        &mut r,
        "Caching: a mount is taken to be the only writer of its vault, so the kernel caches names and attributes for an hour, keeps directory listings until a directory changes, keeps a file's pages across opens while the backing file is unchanged, and gathers writes in its writeback cache. A write then reaches the vault when the kernel writes it back, at the latest at fsync or close, and errors such as ENOSPC are reported there; a daemon killed before then loses it, as a crashed kernel would. -o no_writeback_cache sends each write at once. --shared-storage (-o shared_storage) is for vaults that others also write (a folder synced from another machine, a network share): no writeback cache and nothing cached across opens, so their changes show at once; O_APPEND is then atomic only among writers on one mount.",
    );

    r.control("SH", ["THREAT MODEL"]);
    para(
        &mut r,
        "The attacker controls the backing storage: reads, copies, modifies, deletes, reorders and replays any backing file, and keeps old copies. Confidentiality holds for contents, names, symlink targets and extended attributes; any modified, reordered, swapped or truncated ciphertext reads as EIO. Not hidden: directory structure, approximate file sizes, timestamps, modes, owners, hard-link relations and the number of entries. Not detected: replacing a chunk by an older version of the same chunk, and swapping or deleting whole files. The attacker must not see the memory of a running mount, the passwords, or the recovery key.",
    );

    r.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "VAULT/vaultfs.vault",
            "marks a vault: format version, vault ID, where its key database is",
        ),
        (
            "VAULT/vaultfs.db",
            "the key database (SQLite): configuration, keyslots, key generations, rotation progress, audit log; elsewhere with --keystore",
        ),
        (
            "VAULT/vaultfs.dirid",
            "the root directory's sealed ID (every backing directory has one)",
        ),
        (
            "VAULT/vaultfs.recovery.N",
            "key generation N sealed to the recovery key, for recover --rebuild-keystore",
        ),
        (
            "$XDG_STATE_HOME/vaultfs/ID/",
            "per vault on this machine: highest key-database epoch seen (rollback detection), local audit log, daemon.log",
        ),
    ] {
        tagged(&mut r, vec![italic(path)], what);
    }

    r.control("SH", ["ENVIRONMENT"]);
    tagged(
        &mut r,
        vec![bold("RUST_LOG")],
        "log filter (env_logger syntax), e.g. debug to log every FUSE request with its result; logs never contain keys or plaintext names.",
    );
    tagged(
        &mut r,
        vec![bold("XDG_STATE_HOME")],
        "where per-vault state lives (default ~/.local/state).",
    );

    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in crate::exitcodes::ALL {
        tagged(&mut r, vec![bold(code.to_string())], meaning);
    }

    r.control("SH", ["EXAMPLES"]);
    for (cmdline, what) in [
        (
            "vaultfs init ~/Dropbox/vault",
            "create a vault (asks for the password twice and prints the recovery key once)",
        ),
        (
            "vaultfs mount ~/Dropbox/vault ~/private",
            "unlock and mount; returns once the mount answers",
        ),
        (
            "vaultfs mount --extpass 'pass show vault' --read-only ~/Dropbox/vault ~/private",
            "password from a password manager, read-only",
        ),
        (
            "vaultfs unmount ~/private",
            "unmount (EBUSY, naming the open files, while any are open)",
        ),
        (
            "vaultfs status --json ~/Dropbox/vault",
            "machine-readable description, no password needed",
        ),
        (
            "mount -t fuse.vaultfs /srv/vault /mnt/private -o passfile=/root/vault.pass",
            "the mount.fuse form, as fstab uses it",
        ),
    ] {
        tagged(&mut r, vec![bold(cmdline)], what);
    }

    r.control("SH", ["SEE ALSO"]);
    r.text([roman("fusermount3(1), mount.fuse3(8), fstab(5); docs/FORMAT.md in the source tree for the on-disk format.")]);
    r.to_writer(&mut out).expect("write to memory");
    man.render_version_section(&mut out)
        .expect("write to memory");
    out
}
