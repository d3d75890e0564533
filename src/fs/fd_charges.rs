//! Backing fds of open files, counted per user. A file a user keeps open holds two backing
//! fds (its node's and its own, per inode, however many opens) that the fd budget cannot
//! close, so each user other than root may keep open files worth at most a quarter of the
//! daemon's fd limit, and all of them together half of it: users cannot take the daemon's
//! descriptors from root, nor one user from the others (issue 15, finding 3; the third
//! review counted two fds per file). Beyond that, the next open of another file gives the
//! user EMFILE, as their own limit would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct FdCharges {
    /// Open files per user, and (under key `ALL`) of all users but root.
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
    /// `cap()` when made: the fd limit is raised before the file system is (no getrlimit
    /// on every open).
    cap: usize,
}

impl Default for FdCharges {
    fn default() -> Self {
        FdCharges {
            per_uid: Arc::default(),
            cap: Self::cap(),
        }
    }
}

/// The key that counts every user's files together (no real uid: -1 is "no change").
const ALL: u32 = u32::MAX;

/// One open file's fd, charged to a user until dropped (with the file).
pub struct Charge {
    uid: u32,
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut m = self.per_uid.lock().expect("fd charges lock");
        for key in [self.uid, ALL] {
            if let Some(n) = m.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&key);
                }
            }
        }
    }
}

impl FdCharges {
    /// The most files one user other than root may keep open (two fds each: a quarter of
    /// the limit).
    pub fn cap() -> usize {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20);
        (limit / 8).clamp(32, 1 << 17) as usize
    }

    /// Charges one more open file to `uid` (root: never refused), or EMFILE at its cap.
    pub fn charge(&self, uid: u32) -> Result<Option<Charge>, i32> {
        if uid == 0 {
            return Ok(None);
        }
        let mut m = self.per_uid.lock().expect("fd charges lock");
        let (mine, all) = (
            m.get(&uid).copied().unwrap_or(0),
            m.get(&ALL).copied().unwrap_or(0),
        );
        if mine >= self.cap || all >= 2 * self.cap {
            return Err(libc::EMFILE);
        }
        *m.entry(uid).or_default() += 1;
        *m.entry(ALL).or_default() += 1;
        Ok(Some(Charge {
            uid,
            per_uid: self.per_uid.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_held_to_the_cap_and_charges_go_with_the_files() {
        let charges = FdCharges::default();
        let held: Vec<_> = (0..FdCharges::cap())
            .map(|_| charges.charge(1000).unwrap())
            .collect();
        assert_eq!(charges.charge(1000).err(), Some(libc::EMFILE));
        let other: Vec<_> = (0..FdCharges::cap())
            .map(|_| charges.charge(1001).unwrap())
            .collect();
        assert_eq!(
            charges.charge(1002).err(),
            Some(libc::EMFILE),
            "all users together: half the limit"
        );
        assert!(
            charges.charge(0).unwrap().is_none(),
            "root is never refused"
        );
        drop((held, other));
        let one = charges.charge(1000).unwrap();
        assert_eq!(charges.per_uid.lock().unwrap().get(&1000), Some(&1));
        drop(one);
        assert!(charges.per_uid.lock().unwrap().is_empty());
    }
}
