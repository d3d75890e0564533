//! The mounts this process sees, from /proc/self/mountinfo.

use std::path::PathBuf;

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub point: PathBuf,
    /// e.g. "fuse.vaultfs".
    pub fstype: String,
    /// What the mount was made from: for a vaultfs mount, the vault's canonical path.
    pub source: String,
}

/// Every mount, in mount order (a later one on the same point is on top).
pub fn mounts() -> Vec<Mount> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut right = right.split(' ');
            let fstype = right.next()?;
            let source = right.next()?;
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_string(),
                source: unescape(source),
            })
        })
        .collect()
}

/// Whether a vaultfs mount of `vault` (a canonical path) exists.
pub fn vault_is_mounted(vault: &std::path::Path) -> bool {
    let vault = vault.to_string_lossy();
    mounts()
        .iter()
        .any(|m| m.fstype == "fuse.vaultfs" && m.source == vault)
}

/// mountinfo escapes space, tab, newline and backslash as a backslash and three octal digits.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_give_point_type_and_source_unescaped() {
        let text = "36 35 98:0 / /mnt/my\\040vault rw,nosuid,nodev shared:1 - fuse.vaultfs /srv/a\\040b rw,user_id=0\n\
                    20 1 8:1 / / rw - ext4 /dev/sda1 rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].point, PathBuf::from("/mnt/my vault"));
        assert_eq!(m[0].fstype, "fuse.vaultfs");
        assert_eq!(m[0].source, "/srv/a b");
        assert_eq!(m[1].source, "/dev/sda1");
    }
}
