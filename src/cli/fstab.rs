//! The mount.fuse form: `vaultfs VAULT MOUNTPOINT [-o OPTIONS]`, as mount.fuse3 runs it for
//! `mount -t fuse.vaultfs` and /etc/fstab, and as `mount.vaultfs` (argv[0]) for `-t vaultfs`.

use std::ffi::OsString;
use std::path::PathBuf;

use super::password::PasswordArgs;
use super::{Cli, MountArgs};
use crate::vault::{Result, VaultError};

/// If `args` (argv) use the mount.fuse form, the mount they ask for.
pub fn parse(args: &[OsString]) -> Option<Result<MountArgs>> {
    use clap::CommandFactory;
    let argv0 = args.first().map(|a| {
        PathBuf::from(a)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    })?;
    let helper = argv0.starts_with("mount.");
    let first = args.get(1)?.to_string_lossy().into_owned();
    let is_command = Cli::command()
        .get_subcommands()
        .any(|s| s.get_name() == first)
        || first == "help";
    if !helper && (first.starts_with('-') || is_command) {
        return None;
    }
    Some(parse_form(&args[1..]))
}

fn parse_form(args: &[OsString]) -> Result<MountArgs> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let s = arg.to_string_lossy();
        match s.as_ref() {
            "-o" => options.push(
                it.next()
                    .map(|o| o.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            // Flags mount(8) may pass to helpers: sloppy, fake, no-mtab, verbose; -t/-N take a value.
            "-s" | "-f" | "-n" | "-v" => {}
            "-t" | "-N" => {
                it.next();
            }
            o if o.starts_with("-o") => options.push(o[2..].to_string()),
            o if o.starts_with('-') => {
                return Err(VaultError::InvalidArgument(format!(
                    "{o}: unknown flag in the mount.fuse form"
                )));
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [vault, mountpoint] = <[PathBuf; 2]>::try_from(positional).map_err(|p| {
        let first = p.first().map(|f| f.display().to_string()).unwrap_or_default();
        VaultError::InvalidArgument(format!(
            "unknown command '{first}' (see vaultfs --help); the mount.fuse form is: vaultfs VAULT MOUNTPOINT [-o OPTIONS]"
        ))
    })?;
    let mut a = MountArgs {
        password: PasswordArgs::default(),
        keystore: None,
        foreground: false,
        read_only: false,
        allow_other: false,
        shared_storage: false,
        remount: false,
        idle: None,
        options: Vec::new(),
        vault,
        mountpoint,
    };
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("passfile", Some(v)) => a.password.passfile = Some(v.into()),
            ("keystore", Some(v)) => a.keystore = Some(v.into()),
            ("idle", Some(v)) => {
                a.idle = Some(
                    humantime::parse_duration(v)
                        .map_err(|e| VaultError::InvalidArgument(format!("idle={v}: {e}")))?,
                )
            }
            ("ro", None) => a.read_only = true,
            ("rw", None) => a.read_only = false,
            ("remount", None) => a.remount = true,
            ("allow_other", None) => a.allow_other = true,
            ("shared_storage", None) => a.shared_storage = true,
            (
                "noexec"
                | "exec"
                | "noatime"
                | "atime"
                | "nodiratime"
                | "diratime"
                | "relatime"
                | "strictatime"
                | "lazytime"
                | "suid"
                | "dev"
                | "nosuid"
                | "nodev"
                | "sync"
                | "async"
                | "dirsync"
                | "writeback_cache"
                | "no_writeback_cache"
                | "default_permissions",
                None,
            ) => a.options.push(key.into()),
            // For mount(8), systemd and the admin, not for the filesystem.
            (
                "" | "defaults" | "auto" | "noauto" | "nofail" | "_netdev" | "user" | "users"
                | "nouser" | "owner",
                _,
            ) => {}
            (k, _) if k.starts_with("x-") || k == "comment" => {}
            _ => {
                return Err(VaultError::InvalidArgument(format!(
                    "-o {opt}: unknown option in the mount.fuse form"
                )));
            }
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn subcommands_and_flags_are_not_the_fstab_form() {
        assert!(parse(&args(&["vaultfs", "mount", "a", "b"])).is_none());
        assert!(parse(&args(&["vaultfs", "--version"])).is_none());
        assert!(parse(&args(&["vaultfs"])).is_none());
    }

    #[test]
    fn fstab_options() {
        let a = parse(&args(&["vaultfs", "/v", "/m", "-o", "rw,passfile=/p,keystore=/k,idle=10m,ro,allow_other,noauto,nofail,x-systemd.automount,_netdev,noexec"]))
            .unwrap()
            .unwrap();
        assert_eq!(a.vault, PathBuf::from("/v"));
        assert_eq!(a.mountpoint, PathBuf::from("/m"));
        assert_eq!(a.password.passfile, Some(PathBuf::from("/p")));
        assert_eq!(a.keystore, Some(PathBuf::from("/k")));
        assert_eq!(a.idle, Some(std::time::Duration::from_secs(600)));
        assert!(a.read_only && a.allow_other && !a.foreground);
        assert_eq!(a.options, ["noexec"]);
        assert!(!a.shared_storage);
        let shared = parse(&args(&[
            "vaultfs",
            "/v",
            "/m",
            "-o",
            "shared_storage,no_writeback_cache,default_permissions",
        ]))
        .unwrap()
        .unwrap();
        assert!(shared.shared_storage);
        assert_eq!(
            shared.options,
            ["no_writeback_cache", "default_permissions"]
        );
        let helper = parse(&args(&[
            "/sbin/mount.vaultfs",
            "/v",
            "/m",
            "-n",
            "-opassfile=/p",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(helper.password.passfile, Some(PathBuf::from("/p")));
        assert!(
            parse(&args(&["vaultfs", "/v", "/m", "-o", "bogus"]))
                .unwrap()
                .is_err()
        );
        assert!(parse(&args(&["vaultfs", "/v"])).unwrap().is_err());
    }
}
