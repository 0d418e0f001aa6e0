//! `--memlock`: make serving a device on this same host safe under memory pressure.
//!
//! When the kernel's NBD client attaches our export as `/dev/nbdN` on this host, writeback
//! to that device needs this process to make progress. If our own pages were swapped or
//! evicted, or our allocations entered direct reclaim that writes back to `/dev/nbdN`, the
//! system could deadlock. `mlockall` keeps our memory resident; `PR_SET_IO_FLUSHER`
//! (Linux 5.6+) tells the kernel we are an I/O flusher, so our allocations do not recurse
//! into I/O and we are not throttled by our own device's dirty pages.
//!
//! Both must be done before the async runtime starts its threads: `PR_SET_IO_FLUSHER` is
//! per thread and inherited by threads created afterwards.

use nix::errno::Errno;
use tracing::{info, warn};

/// `PR_SET_IO_FLUSHER` from `<linux/prctl.h>` (Linux 5.6).
const PR_SET_IO_FLUSHER: nix::libc::c_int = 57;

/// What each step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemlockOutcome {
    pub mlockall: Result<(), String>,
    pub io_flusher: Result<(), String>,
}

fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_else(|_| "unknown".into())
}

/// `mlockall(MCL_CURRENT | MCL_FUTURE)`, then `prctl(PR_SET_IO_FLUSHER, 1)`; logs each.
pub fn apply() -> MemlockOutcome {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    let mlock = match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
        Ok(()) => Ok(()),
        Err(e @ (Errno::ENOMEM | Errno::EAGAIN)) => {
            Err(format!("{e}: RLIMIT_MEMLOCK is too low (systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited)"))
        }
        Err(e @ Errno::EPERM) => Err(format!("{e}: needs CAP_IPC_LOCK or a higher RLIMIT_MEMLOCK")),
        Err(e) => Err(e.to_string()),
    };
    match &mlock {
        Ok(()) => info!("memlock: mlockall: ok, memory is locked (current and future)"),
        Err(why) => warn!("memlock: mlockall failed: {why}; our pages can be swapped out"),
    }
    // SAFETY: prctl with integer arguments only; PR_SET_IO_FLUSHER reads no pointers.
    let rc = unsafe { nix::libc::prctl(PR_SET_IO_FLUSHER, 1 as nix::libc::c_ulong, 0, 0, 0) };
    let flusher = if rc == 0 {
        Ok(())
    } else {
        match Errno::last() {
            Errno::EINVAL => Err(format!("EINVAL: not supported by kernel {} (needs Linux 5.6+)", kernel_release())),
            Errno::EPERM => Err("EPERM: needs CAP_SYS_RESOURCE".to_owned()),
            e => Err(e.to_string()),
        }
    };
    match &flusher {
        Ok(()) => info!("memlock: PR_SET_IO_FLUSHER: ok, our allocations will not recurse into I/O"),
        Err(why) => warn!("memlock: PR_SET_IO_FLUSHER failed: {why}; writeback to a /dev/nbd on this host can deadlock under memory pressure"),
    }
    MemlockOutcome { mlockall: mlock, io_flusher: flusher }
}
