//! Mount options: what every vaultfs mount gets (nosuid, nodev, default_permissions) and the
//! few `-o` options a user may add.

use fuser::{Config, MountOption, SessionACL};

use crate::vault::{Result, VaultError};

#[derive(Debug, Clone, Default)]
pub struct MountSettings {
    pub read_only: bool,
    pub allow_other: bool,
    /// Comma-separated `-o` options, already split.
    pub options: Vec<String>,
    /// Shown as the mount's source in /proc/mounts: the vault path.
    pub fsname: String,
}

impl MountSettings {
    /// Folds `-o` options into the settings; unknown options are refused by name.
    pub fn apply_options(&mut self) -> Result<Vec<MountOption>> {
        let mut extra = Vec::new();
        for opt in self.options.clone() {
            match opt.as_str() {
                "" => {}
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "allow_other" => self.allow_other = true,
                "default_permissions" | "nosuid" | "nodev" => {}
                "noexec" => extra.push(MountOption::NoExec),
                "exec" => extra.push(MountOption::Exec),
                "noatime" => extra.push(MountOption::NoAtime),
                "atime" => extra.push(MountOption::Atime),
                "sync" => extra.push(MountOption::Sync),
                "async" => extra.push(MountOption::Async),
                "dirsync" => extra.push(MountOption::DirSync),
                "suid" | "dev" => {
                    return Err(VaultError::InvalidArgument(format!(
                        "-o {opt}: vaultfs mounts are always nosuid,nodev (the backing storage is not trusted)"
                    )));
                }
                other => {
                    return Err(VaultError::InvalidArgument(format!(
                        "-o {other}: unknown mount option"
                    )));
                }
            }
        }
        Ok(extra)
    }

    pub fn fuser_config(&mut self) -> Result<Config> {
        let extra = self.apply_options()?;
        let mut opts = vec![
            MountOption::FSName(self.fsname.clone()),
            // Shows as type fuse.vaultfs; fuser's own Subtype option only names the source.
            MountOption::CUSTOM("subtype=vaultfs".into()),
            MountOption::NoSuid,
            MountOption::NoDev,
            // The kernel checks permissions: FUSE requests lack supplementary groups, so
            // vaultfs never checks them itself (SPEC section 4).
            MountOption::DefaultPermissions,
            if self.read_only {
                MountOption::RO
            } else {
                MountOption::RW
            },
        ];
        opts.extend(extra);
        let mut config = Config::default();
        config.mount_options = opts;
        config.acl = if self.allow_other {
            SessionACL::All
        } else {
            SessionACL::Owner
        };
        config.n_threads = Some(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        );
        Ok(config)
    }
}
