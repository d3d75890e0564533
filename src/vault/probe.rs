//! Probing what the backing filesystem supports, at `init`, so `status` can say what is
//! missing (SPEC section 4: where the backing lacks a feature, vaultfs returns its errno).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use data_encoding::HEXLOWER;

use crate::crypto::keys::random_array;
use crate::crypto::names::TEMP_PREFIX;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingFeatures {
    /// Features not supported: any of "hardlink", "symlink", "xattr", "fallocate".
    pub missing: Vec<&'static str>,
    /// The backing filesystem's longest name (statvfs f_namemax).
    pub name_max: u64,
}

pub fn probe(dir: &Path) -> std::io::Result<BackingFeatures> {
    let tag = HEXLOWER.encode(&random_array::<6>().map_err(|_| std::io::Error::other("random"))?);
    let file = dir.join(format!("{TEMP_PREFIX}probe-{tag}"));
    let link = dir.join(format!("{TEMP_PREFIX}probe-{tag}-link"));
    let sym = dir.join(format!("{TEMP_PREFIX}probe-{tag}-sym"));
    let f = fs::File::create(&file)?;
    let mut missing = Vec::new();
    if fs::hard_link(&file, &link).is_err() {
        missing.push("hardlink");
    }
    if std::os::unix::fs::symlink("target", &sym).is_err() {
        missing.push("symlink");
    }
    let name = CString::new("user.vaultfs-probe").expect("no NUL");
    // SAFETY: valid fd, NUL-terminated name, and a 1-byte value buffer.
    if unsafe { libc::fsetxattr(f.as_raw_fd(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) } != 0 {
        missing.push("xattr");
    }
    // SAFETY: valid fd; plain fallocate of 4 KiB.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 4096) } != 0 {
        missing.push("fallocate");
    }
    let cdir = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path has NUL"))?;
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let name_max = if unsafe { libc::statvfs(cdir.as_ptr(), &mut st) } == 0 {
        st.f_namemax
    } else {
        255
    };
    drop(f);
    for p in [&file, &link, &sym] {
        let _ = fs::remove_file(p);
    }
    Ok(BackingFeatures { missing, name_max })
}
