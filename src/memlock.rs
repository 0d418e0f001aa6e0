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

/// `CAP_IPC_LOCK` is bit 14 of the capability sets.
const CAP_IPC_LOCK: u32 = 14;

/// Whether this process has `CAP_IPC_LOCK` in its effective set (`/proc/self/status`).
fn has_cap_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:")).map(|v| v.trim().to_owned()))
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Why locking all memory would be unsafe here, if it would. With `MCL_FUTURE`, every
/// later allocation must also fit under `RLIMIT_MEMLOCK`: past it, allocations fail and
/// the process aborts. So lock only with `CAP_IPC_LOCK` (no limit applies) or an
/// unlimited `RLIMIT_MEMLOCK`.
fn mlockall_hazard() -> Option<String> {
    use nix::sys::resource::{getrlimit, Resource, RLIM_INFINITY};
    if has_cap_ipc_lock() {
        return None;
    }
    match getrlimit(Resource::RLIMIT_MEMLOCK) {
        Ok((soft, _)) if soft == RLIM_INFINITY => None,
        Ok((soft, _)) => Some(format!(
            "not attempted: RLIMIT_MEMLOCK is {soft} bytes and there is no CAP_IPC_LOCK, so later \
             allocations past the limit would fail (systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited)"
        )),
        Err(e) => Some(format!("not attempted: getrlimit(RLIMIT_MEMLOCK): {e}")),
    }
}

/// `mlockall(MCL_CURRENT | MCL_FUTURE)`, then `prctl(PR_SET_IO_FLUSHER, 1)`; logs each.
pub fn apply() -> MemlockOutcome {
    use nix::sys::mman::{mlockall, MlockAllFlags};
    let mlock = match mlockall_hazard() {
        Some(why) => Err(why),
        None => match mlockall(MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE) {
            Ok(()) => Ok(()),
            Err(e @ (Errno::ENOMEM | Errno::EAGAIN)) => Err(format!(
                "{e}: not enough lockable memory (systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited)"
            )),
            Err(e @ Errno::EPERM) => Err(format!("{e}: needs CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK")),
            Err(e) => Err(e.to_string()),
        },
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
