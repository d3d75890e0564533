//! The plaintext root directory's mode and owner, kept in `vaultfs.root` instead of on the
//! vault directory itself. The backing tree copies every other directory's owner and mode,
//! so a `chmod 1777` of the mount root used to make the vault directory 1777: every local
//! user could then reach, and race, the backing tree (issue 15, finding 1). The vault
//! directory now stays private (no group or other bits) whatever the plaintext root shows.
//! Like every mode and owner, these are not authenticated (docs/FORMAT.md section 4).

use std::io;
use std::os::fd::BorrowedFd;

use super::backing;

pub const ROOT_ATTR_FILE: &str = "vaultfs.root";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootAttr {
    /// Permission bits with set-ID and sticky bits (no file type).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl RootAttr {
    /// `mode uid gid`: octal, decimal, decimal, one line.
    fn encode(&self) -> String {
        format!("{:o} {} {}\n", self.mode, self.uid, self.gid)
    }

    fn decode(bytes: &[u8]) -> Option<RootAttr> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split_ascii_whitespace();
        let mode = u32::from_str_radix(parts.next()?, 8).ok()?;
        let uid = parts.next()?.parse().ok()?;
        let gid = parts.next()?.parse().ok()?;
        (mode <= 0o7777 && parts.next().is_none()).then_some(RootAttr { mode, uid, gid })
    }

    /// The root's attributes for a mount of the vault directory `root`: from `vaultfs.root`,
    /// else (a vault from before the file, or a damaged file) from the directory itself,
    /// which a writable mount then records. A writable mount always takes the directory's
    /// group and other bits off.
    pub fn load(root: BorrowedFd<'_>, writable: bool) -> io::Result<RootAttr> {
        let st = backing::fstat(root)?;
        if let Some(attr) = backing::read_small(root, ROOT_ATTR_FILE, 64)
            .ok()
            .and_then(|b| Self::decode(&b))
        {
            // Bits someone gave the vault directory since (a restore, a sync tool) go again.
            if writable && st.st_mode & 0o077 != 0 {
                backing::chmod_fd(root, st.st_mode & 0o700)?;
            }
            return Ok(attr);
        }
        let attr = RootAttr {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        };
        if writable {
            attr.save(root)?;
            backing::chmod_fd(root, st.st_mode & 0o700)?;
        }
        Ok(attr)
    }

    pub fn save(&self, root: BorrowedFd<'_>) -> io::Result<()> {
        let temp = backing::temp_name();
        backing::write_durable(root, ROOT_ATTR_FILE, &temp, self.encode().as_bytes(), 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_junk() {
        let a = RootAttr {
            mode: 0o1777,
            uid: 1000,
            gid: 100,
        };
        assert_eq!(RootAttr::decode(a.encode().as_bytes()), Some(a));
        for junk in ["", "17777 0 0", "755 x 0", "755 0 0 0", "\u{fffd}"] {
            assert_eq!(RootAttr::decode(junk.as_bytes()), None, "{junk}");
        }
    }
}
