//! The running kernel's BTF, opened for a few lookups by name without parsing it whole.
//!
//! The daemon looks up a handful of names in it (four enumerators for the preflight,
//! `task_struct`'s fields for the iterators). btf_rs's default backend parses every type and
//! string of the 5.5 MB file into maps first: about 15 MiB of heap at start, which glibc
//! then keeps, and which an idle daemon's 64 MiB budget cannot afford. Mapped instead, only
//! an index of type offsets is built and the names are read in place.
use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, FromRawFd},
    path::Path,
};

use btf_rs::{Backend, Btf};

/// `path` (normally `/sys/kernel/btf/vmlinux`), mapped. Kernels before 6.16 cannot map
/// that sysfs file: there it is copied into a memfd, which can be mapped and goes away with
/// the returned `Btf`.
pub fn open(path: &Path) -> btf_rs::Result<Btf> {
    match Btf::from_file_with_backend(path, Backend::Mmap) {
        Ok(btf) => Ok(btf),
        Err(btf_rs::Error::IO(_)) => {
            let copy = memfd_copy(path)?;
            // The mapping keeps the memfd's pages; its descriptor closes at the return.
            Btf::from_file_with_backend(
                format!("/proc/self/fd/{}", copy.as_raw_fd()),
                Backend::Mmap,
            )
        }
        Err(other) => Err(other),
    }
}

/// A memfd holding a copy of the file at `path`.
fn memfd_copy(path: &Path) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; the call only creates a descriptor.
    let fd = unsafe { libc::memfd_create(c"hangwatch-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created above and is owned by nothing else.
    let mut copy = unsafe { File::from_raw_fd(fd) };
    io::copy(&mut File::open(path)?, &mut copy)?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_cannot_be_mapped_is_read_through_a_copy() {
        let vmlinux = Path::new(super::super::preflight::VMLINUX_BTF);
        if !vmlinux.exists() {
            eprintln!("skipped: this kernel has no BTF");
            return;
        }
        // A pipe cannot be mapped, like the sysfs file on older kernels.
        let (reader, mut writer) = io::pipe().expect("pipe");
        let feeder = std::thread::spawn({
            let vmlinux = vmlinux.to_owned();
            move || io::copy(&mut File::open(vmlinux).expect("open BTF"), &mut writer)
        });
        let through_pipe = format!("/proc/self/fd/{}", reader.as_raw_fd());
        let copied = open(Path::new(&through_pipe)).expect("the copy is mapped");
        feeder.join().expect("feeder").expect("copied");
        let mapped = open(vmlinux).expect("the file is mapped");
        let ids = |btf: &Btf| btf.resolve_ids_by_name("task_struct").expect("lookup");
        assert!(!ids(&mapped).is_empty());
        assert_eq!(ids(&copied), ids(&mapped));
    }
}
