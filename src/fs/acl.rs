//! POSIX ACLs in Linux's xattr form (`system.posix_acl_access`, `_default`): what the daemon
//! must do itself once the kernel enforces ACLs (FUSE_POSIX_ACL). The kernel checks access
//! with them and hands them over whole and validated; keeping a file's mode and its access
//! ACL in step (on setting the ACL, on chmod) and inheriting a directory's default ACL into
//! new entries are the filesystem's part, as in the kernel's own `posix_acl_*` helpers.
//! Pure: bytes in, bytes and modes out.

/// `POSIX_ACL_XATTR_VERSION`.
const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;

pub const ACCESS: &str = "system.posix_acl_access";
pub const DEFAULT: &str = "system.posix_acl_default";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// An ACL, its entries in the kernel's order (by tag, then id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

impl Acl {
    /// Parses and checks the xattr form: version 2, one owner, owning-group and other
    /// entry, a mask wherever named entries are, no id twice, permissions in 0..7.
    pub fn parse(bytes: &[u8]) -> Option<Acl> {
        let (head, body) = bytes.split_at_checked(4)?;
        if u32::from_le_bytes(head.try_into().ok()?) != VERSION || body.len() % 8 != 0 {
            return None;
        }
        let entries: Vec<Entry> = body
            .chunks_exact(8)
            .map(|e| Entry {
                tag: u16::from_le_bytes([e[0], e[1]]),
                perm: u16::from_le_bytes([e[2], e[3]]),
                id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
            })
            .collect();
        let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
        let named = count(USER) + count(GROUP);
        let valid = count(USER_OBJ) == 1
            && count(GROUP_OBJ) == 1
            && count(OTHER) == 1
            && count(MASK) <= 1
            && (named == 0 || count(MASK) == 1)
            && count(USER_OBJ) + count(GROUP_OBJ) + count(OTHER) + count(MASK) + named
                == entries.len()
            && entries.iter().all(|e| e.perm <= 7)
            && entries
                .windows(2)
                .all(|w| (w[0].tag, w[0].id) < (w[1].tag, w[1].id) || w[0].tag != w[1].tag);
        let ordered = entries.windows(2).all(|w| w[0].tag <= w[1].tag);
        (valid && ordered).then_some(Acl(entries))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            let id = if matches!(e.tag, USER | GROUP) {
                e.id
            } else {
                UNDEFINED_ID
            };
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    fn perm_of(&self, tag: u16) -> Option<u32> {
        self.0.iter().find(|e| e.tag == tag).map(|e| e.perm as u32)
    }

    /// Whether the mode says it all (owner, owning group, other only): such an access ACL
    /// is not stored, as on Linux filesystems.
    pub fn is_minimal(&self) -> bool {
        self.0.len() == 3
    }

    /// The permission bits an access ACL gives the file's mode: the owner's, the mask's
    /// (the owning group's if there is no mask), and other's (`posix_acl_equiv_mode`).
    pub fn mode_bits(&self) -> u32 {
        let owner = self.perm_of(USER_OBJ).unwrap_or(0);
        let group = self
            .perm_of(MASK)
            .or_else(|| self.perm_of(GROUP_OBJ))
            .unwrap_or(0);
        let other = self.perm_of(OTHER).unwrap_or(0);
        (owner << 6) | (group << 3) | other
    }

    /// A chmod to `mode`: the owner, mask (or owning group) and other entries take its
    /// bits (`posix_acl_chmod`).
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.0.iter().any(|e| e.tag == MASK);
        for e in &mut self.0 {
            match e.tag {
                USER_OBJ => e.perm = ((mode >> 6) & 7) as u16,
                MASK => e.perm = ((mode >> 3) & 7) as u16,
                GROUP_OBJ if !has_mask => e.perm = ((mode >> 3) & 7) as u16,
                OTHER => e.perm = (mode & 7) as u16,
                _ => {}
            }
        }
    }

    /// A new entry made with `mode` in a directory whose default ACL is `self`: its access
    /// ACL, and its mode, each narrowed by the other (`posix_acl_create_masq`). The umask
    /// does not apply.
    pub fn create_masq(&self, mode: u32) -> (Acl, u32) {
        let mut acl = self.clone();
        let has_mask = acl.0.iter().any(|e| e.tag == MASK);
        let mut bits = 0;
        for e in &mut acl.0 {
            let (shift, applies) = match e.tag {
                USER_OBJ => (6, true),
                MASK => (3, true),
                GROUP_OBJ => (3, !has_mask),
                OTHER => (0, true),
                _ => (0, false),
            };
            if applies {
                e.perm &= ((mode >> shift) & 7) as u16;
                bits |= (e.perm as u32) << shift;
            }
        }
        (acl, (mode & !0o777) | bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
        .to_bytes()
    }

    #[test]
    fn parse_checks_what_the_kernel_checks() {
        let minimal = acl(&[(USER_OBJ, 6, 0), (GROUP_OBJ, 4, 0), (OTHER, 4, 0)]);
        let a = Acl::parse(&minimal).unwrap();
        assert!(a.is_minimal());
        assert_eq!(a.mode_bits(), 0o644);
        assert_eq!(a.to_bytes(), minimal);
        let named = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 5, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 1, 0),
            (OTHER, 0, 0),
        ]);
        let a = Acl::parse(&named).unwrap();
        assert!(!a.is_minimal());
        assert_eq!(a.mode_bits(), 0o710, "the mask stands for the group");
        for bad in [
            acl(&[
                (USER_OBJ, 7, 0),
                (USER, 5, 1000),
                (GROUP_OBJ, 5, 0),
                (OTHER, 0, 0),
            ]),
            acl(&[(USER_OBJ, 7, 0), (OTHER, 0, 0)]),
            acl(&[(USER_OBJ, 9, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)]),
            acl(&[
                (USER_OBJ, 7, 0),
                (USER, 5, 7),
                (USER, 4, 7),
                (GROUP_OBJ, 5, 0),
                (MASK, 7, 0),
                (OTHER, 0, 0),
            ]),
            acl(&[(GROUP_OBJ, 5, 0), (USER_OBJ, 7, 0), (OTHER, 0, 0)]),
            minimal[..minimal.len() - 1].to_vec(),
            vec![1, 0, 0, 0],
        ] {
            assert!(Acl::parse(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn chmod_and_inheritance_follow_the_kernel() {
        let mut a = Acl::parse(&acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]))
        .unwrap();
        a.chmod(0o640);
        assert_eq!(a.mode_bits(), 0o640);
        assert_eq!(
            a.perm_of(GROUP_OBJ),
            Some(5),
            "the mask moves, not the group"
        );
        assert_eq!(a.perm_of(USER), Some(7));
        let default = Acl::parse(&acl(&[
            (USER_OBJ, 7, 0),
            (USER, 6, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 1, 0),
        ]))
        .unwrap();
        let (inherited, mode) = default.create_masq(0o100666);
        assert_eq!(mode, 0o100660, "other: --x narrowed by rw-");
        assert_eq!(inherited.mode_bits(), 0o660);
        assert_eq!(
            inherited.perm_of(USER),
            Some(6),
            "named entries stay; the mask limits them"
        );
        let no_mask =
            Acl::parse(&acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 0, 0)])).unwrap();
        let (minimal, mode) = no_mask.create_masq(0o40777);
        assert!(minimal.is_minimal());
        assert_eq!(mode, 0o40750);
    }
}
