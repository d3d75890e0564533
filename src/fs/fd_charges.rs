//! Backing fds of open files, counted per user. A file a user keeps open holds one backing
//! fd (per inode, however many opens) that the fd budget cannot close, so each user other
//! than root may keep at most a quarter of the daemon's fd limit this way: one user cannot
//! take the daemon's descriptors from everyone else (issue 15, finding 3). Beyond that, the
//! next open of another file gives that user EMFILE, as their own limit would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct FdCharges {
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
}

/// One open file's fd, charged to a user until dropped (with the file).
pub struct Charge {
    uid: u32,
    per_uid: Arc<Mutex<HashMap<u32, usize>>>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut m = self.per_uid.lock().expect("fd charges lock");
        if let Some(n) = m.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.uid);
            }
        }
    }
}

impl FdCharges {
    /// The most files one user other than root may keep open.
    pub fn cap() -> usize {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(1 << 20);
        (limit / 4).clamp(64, 1 << 18) as usize
    }

    /// Charges one more open file to `uid` (root: never refused), or EMFILE at its cap.
    pub fn charge(&self, uid: u32) -> Result<Option<Charge>, i32> {
        if uid == 0 {
            return Ok(None);
        }
        let mut m = self.per_uid.lock().expect("fd charges lock");
        let n = m.entry(uid).or_default();
        if *n >= Self::cap() {
            return Err(libc::EMFILE);
        }
        *n += 1;
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
        assert!(
            charges.charge(1001).unwrap().is_some(),
            "others are not held back"
        );
        assert!(
            charges.charge(0).unwrap().is_none(),
            "root is never refused"
        );
        drop(held);
        let one = charges.charge(1000).unwrap();
        assert_eq!(charges.per_uid.lock().unwrap().get(&1000), Some(&1));
        drop(one);
        assert!(charges.per_uid.lock().unwrap().is_empty());
    }
}
