//! Platform profiles: tuned defaults for a kind of machine. The values and how they were
//! chosen are in docs/profiles.md; keep the two together.

use std::time::Duration;

use super::detect::{Detected, FsKind, Storage};
use super::settings::SettingsArgs;
use crate::wal::WalCompress;

/// What `--profile` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProfileChoice {
    /// Choose from what is detected: a Jetson on an SD card or eMMC gets jetson-sd, WSL
    /// gets wsl, anything else server.
    Auto,
    /// A Jetson (or a similar small ARM board) with its data on an SD card or eMMC.
    JetsonSd,
    /// Windows Subsystem for Linux 2.
    Wsl,
    /// A server or desktop with an SSD, NVMe or disk array: the built-in defaults.
    Server,
}

/// A concrete profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    JetsonSd,
    Wsl,
    Server,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::JetsonSd => "jetson-sd",
            Profile::Wsl => "wsl",
            Profile::Server => "server",
        }
    }

    /// The settings this profile changes from the built-in defaults (which are the server
    /// profile). See docs/profiles.md for where each number comes from.
    /// `mem_total`: the machine's memory, if known (the server profile scales with it).
    pub fn layer(self, mem_total: Option<u64>) -> SettingsArgs {
        match self {
            Profile::Server => SettingsArgs { max_dirty: mem_total.map(server_max_dirty), ..SettingsArgs::default() },
            Profile::JetsonSd => SettingsArgs {
                // The doctor's rule (20 x fdatasync, docs/profiles.md) applied to the
                // 10 ms-per-sync emulation of an SD card.
                sync_interval: Some(SLOW_SYNC_INTERVAL),
                // A Jetson Nano has 4 GiB shared with the GPU: bound our memory tighter
                // (the engine needs at least 40 MiB of dirty budget: a 32 MiB request).
                max_dirty: Some(48 << 20),
                cache_bytes: Some(32 << 20),
                // An SD card's write rate is the bottleneck: under its emulation (20 MB/s,
                // 10 ms per sync) LZ4 doubled 4 KiB writes of half-compressible data and
                // cost nothing on random data, which stays raw.
                wal_compress: Some(WalCompress::Lz4),
                upload_parallel: Some(2),
                memlock: Some(true),
                ..SettingsArgs::default()
            },
            Profile::Wsl => SettingsArgs {
                // Same rule, same emulation: fdatasync on WSL2 is expensive.
                sync_interval: Some(SLOW_SYNC_INTERVAL),
                ..SettingsArgs::default()
            },
        }
    }

    /// The profile `auto` picks, and why (for the log and the doctor).
    pub fn choose(choice: ProfileChoice, d: &Detected) -> (Profile, String) {
        match choice {
            ProfileChoice::JetsonSd => (Profile::JetsonSd, "asked for with --profile/profile".into()),
            ProfileChoice::Wsl => (Profile::Wsl, "asked for with --profile/profile".into()),
            ProfileChoice::Server => (Profile::Server, "asked for with --profile/profile".into()),
            ProfileChoice::Auto => {
                let flash = matches!(d.storage, Storage::SdCard { .. } | Storage::Emmc { .. });
                match (&d.jetson_model, flash) {
                    (Some(model), true) => {
                        (Profile::JetsonSd, format!("auto: {model:?} with the data directory on {}", d.storage))
                    }
                    _ if d.wsl => (Profile::Wsl, format!("auto: WSL (kernel {})", d.kernel_release)),
                    (Some(model), false) => (
                        Profile::Server,
                        format!("auto: {model:?} but the data directory is on {}, not an SD card or eMMC", d.storage),
                    ),
                    (None, _) => {
                        (Profile::Server, format!("auto: no Jetson and no WSL; data directory on {}", d.storage))
                    }
                }
            }
        }
    }
}

/// The batched-mode sync interval of the profiles for slow syncs: what `doctor --measure
/// --inject-sync-latency 10ms` derives on the development VM (median fdatasync
/// 10.76-10.85 ms, x 20, rounded up to 10 ms). See docs/profiles.md.
pub const SLOW_SYNC_INTERVAL: Duration = Duration::from_millis(220);

/// Whether a data directory on `fs` may be served, and what to say about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirVerdict {
    Ok,
    /// Serve, but warn.
    Warn(String),
    /// Refuse unless `--force`.
    Refuse(String),
}

/// The rule for the data directory's file system.
pub fn judge_data_dir(fs: &FsKind) -> DirVerdict {
    match fs {
        FsKind::NineP => DirVerdict::Refuse(
            "the data directory is on a 9p file system (under WSL2 that is a Windows drive such as /mnt/c): \
             every fdatasync crosses to Windows and costs milliseconds, and 9p's sync and locking \
             guarantees are too weak for a write-ahead log. Put the data directory on the Linux side \
             (e.g. ~/spillway-data or /var/lib/spillway), or pass --force to serve from it anyway"
                .into(),
        ),
        FsKind::Tmpfs => DirVerdict::Warn(
            "the data directory is on tmpfs: it lives in RAM, so durability is nil; everything is lost \
             on reboot or power loss, whatever --durability says"
                .into(),
        ),
        _ => DirVerdict::Ok,
    }
}

/// The server profile's dirty budget: a sixteenth of the memory, from the built-in 128 MiB
/// up to 2 GiB. Relaxed and async modes hold up to half of it in memory as a write-back
/// cache (`src/wal/hold.rs`), so a volume rewritten in place costs no log space; the
/// kernel's own page cache lets dirty data grow to a fifth of the memory by default.
pub fn server_max_dirty(mem_total: u64) -> u64 {
    (mem_total / 16).clamp(128 << 20, 2 << 30) & !((4 << 20) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_dirty_budget_is_a_sixteenth_of_memory_within_bounds() {
        assert_eq!(server_max_dirty(1 << 30), 128 << 20, "small machines keep the floor");
        assert_eq!(server_max_dirty(8 << 30), 512 << 20);
        assert_eq!(server_max_dirty(24_000_000_000), 1428 << 20, "rounded down to whole 4 MiB slabs");
        assert_eq!(server_max_dirty(1 << 40), 2 << 30, "and capped");
        assert_eq!(Profile::Server.layer(None).max_dirty, None, "unknown memory: the built-in default");
        assert_eq!(Profile::JetsonSd.layer(Some(64 << 30)).max_dirty, Some(48 << 20), "a Jetson keeps its own");
    }

    #[test]
    fn only_the_sd_card_profile_compresses_the_wal() {
        assert_eq!(Profile::JetsonSd.layer(None).wal_compress, Some(WalCompress::Lz4));
        assert_eq!(Profile::Server.layer(None).wal_compress, None, "the built-in default: none");
        assert_eq!(Profile::Wsl.layer(None).wal_compress, None);
    }

    #[test]
    fn explicit_choices_are_kept() {
        let d = Detected::unknown();
        assert_eq!(Profile::choose(ProfileChoice::JetsonSd, &d).0, Profile::JetsonSd);
        assert_eq!(Profile::choose(ProfileChoice::Wsl, &d).0, Profile::Wsl);
        assert_eq!(Profile::choose(ProfileChoice::Auto, &d).0, Profile::Server);
    }

    #[test]
    fn a_jetson_on_nvme_is_a_server() {
        let d = Detected {
            jetson_model: Some("NVIDIA Jetson AGX Orin".into()),
            storage: Storage::Nvme { disk: "nvme0n1".into() },
            ..Detected::unknown()
        };
        let (p, why) = Profile::choose(ProfileChoice::Auto, &d);
        assert_eq!(p, Profile::Server);
        assert!(why.contains("nvme0n1"), "{why}");
    }

    #[test]
    fn nine_p_is_refused_and_tmpfs_warned() {
        assert!(matches!(judge_data_dir(&FsKind::NineP), DirVerdict::Refuse(m) if m.contains("--force")));
        assert!(matches!(judge_data_dir(&FsKind::Tmpfs), DirVerdict::Warn(m) if m.contains("durability is nil")));
        assert_eq!(judge_data_dir(&FsKind::Other { magic: 0xEF53, name: "ext4" }), DirVerdict::Ok);
    }
}
