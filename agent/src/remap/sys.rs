//! The two xattr system calls rustix does not wrap yet: `listxattrat` and
//! `getxattrat` (Linux 6.13), which read an entry's extended attributes by
//! name relative to a directory descriptor without following a symlink.
//! They replace a trip through `/proc/self/fd/N` that costs more than the
//! chown itself. On older kernels they report `ENOSYS` and the caller falls
//! back to the /proc path.
//!
//! This is the only `unsafe` in fleet: two raw syscalls with buffers whose
//! lengths are passed alongside them.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_GETXATTRAT: libc::c_long = 464;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const SYS_LISTXATTRAT: libc::c_long = 465;

static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// struct xattr_args (include/uapi/linux/xattr.h).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

fn result(ret: libc::c_long) -> Result<usize, Errno> {
    if ret < 0 {
        let errno = Errno::from_raw_os_error(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        );
        if errno == Errno::NOSYS {
            UNSUPPORTED.store(true, Ordering::Relaxed);
        }
        Err(errno)
    } else {
        Ok(ret as usize)
    }
}

/// Whether the *xattrat calls are known to be missing.
pub fn unsupported() -> bool {
    UNSUPPORTED.load(Ordering::Relaxed)
}

/// `listxattrat(dir, name, AT_SYMLINK_NOFOLLOW)` into `buf`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn list_at(dir: BorrowedFd<'_>, name: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `name` is NUL-terminated; `buf` is valid for `buf.len()`
    // writable bytes and the kernel writes at most that many.
    let ret = unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    result(ret)
}

/// `getxattrat(dir, name, AT_SYMLINK_NOFOLLOW, attr)` into `buf`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn get_at(
    dir: BorrowedFd<'_>,
    name: &CStr,
    attr: &CStr,
    buf: &mut [u8],
) -> Result<usize, Errno> {
    let mut args = XattrArgs {
        value: buf.as_mut_ptr() as u64,
        size: buf.len().min(u32::MAX as usize) as u32,
        flags: 0,
    };
    // SAFETY: both strings are NUL-terminated; `args` points at `buf`,
    // valid for `args.size` writable bytes; the struct size is passed.
    let ret = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW as libc::c_uint,
            attr.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    result(ret)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn list_at(_: BorrowedFd<'_>, _: &CStr, _: &mut [u8]) -> Result<usize, Errno> {
    UNSUPPORTED.store(true, Ordering::Relaxed);
    Err(Errno::NOSYS)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn get_at(_: BorrowedFd<'_>, _: &CStr, _: &CStr, _: &mut [u8]) -> Result<usize, Errno> {
    UNSUPPORTED.store(true, Ordering::Relaxed);
    Err(Errno::NOSYS)
}
