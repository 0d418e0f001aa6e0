//! What machine this is: the storage behind the data directory, WSL, a Jetson, memory and
//! the CPU's SIMD kernels. Everything is read below an injectable root directory (`/` in
//! production), and the two system calls (statfs, stat) go through [`FsProbe`], so tests
//! can describe each platform with a fake sysfs and procfs.

use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::codec::simd::KernelKind;

/// statfs `f_type` of 9p (WSL2's `/mnt/c`, `drvfs`).
pub const V9FS_MAGIC: i64 = 0x0102_1997;
/// statfs `f_type` of tmpfs.
pub const TMPFS_MAGIC: i64 = 0x0102_1994;

/// File-system facts about a path.
pub trait FsProbe {
    /// statfs `f_type` of the file system holding `path`.
    fn fs_magic(&self, path: &Path) -> io::Result<i64>;
    /// (major, minor) of the device holding `path` (`st_dev`).
    fn device_of(&self, path: &Path) -> io::Result<(u64, u64)>;
}

/// The real system calls.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealProbe;

impl FsProbe for RealProbe {
    fn fs_magic(&self, path: &Path) -> io::Result<i64> {
        let s = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        Ok(s.filesystem_type().0 as i64)
    }

    fn device_of(&self, path: &Path) -> io::Result<(u64, u64)> {
        let st = nix::sys::stat::stat(path).map_err(io::Error::from)?;
        #[allow(clippy::useless_conversion)]
        let dev = u64::from(st.st_dev);
        Ok((nix::sys::stat::major(dev), nix::sys::stat::minor(dev)))
    }
}

/// Test seam of the binary: under a fake root (the hidden `--detect-root`), the file
/// `ROOT/spillway-test-statfs` holding `MAGIC MAJOR:MINOR` (magic in hex, e.g.
/// `0x01021997 0:52`) stands in for statfs and stat of the data directory.
#[derive(Debug, Clone, Copy)]
pub struct FixedProbe {
    pub magic: i64,
    pub dev: (u64, u64),
}

impl FsProbe for FixedProbe {
    fn fs_magic(&self, _: &Path) -> io::Result<i64> {
        Ok(self.magic)
    }
    fn device_of(&self, _: &Path) -> io::Result<(u64, u64)> {
        Ok(self.dev)
    }
}

/// Name of the test-only statfs stand-in under a fake root; see [`FixedProbe`].
pub const FAKE_STATFS_FILE: &str = "spillway-test-statfs";

/// The probe for `root`: the real system calls, unless a fake root carries
/// [`FAKE_STATFS_FILE`].
pub fn probe_for_root(root: &Path) -> Box<dyn FsProbe> {
    let Ok(text) = std::fs::read_to_string(root.join(FAKE_STATFS_FILE)) else {
        return Box::new(RealProbe);
    };
    let mut words = text.split_whitespace();
    let magic = words.next().and_then(|m| i64::from_str_radix(m.trim_start_matches("0x"), 16).ok());
    let dev = words.next().and_then(|d| d.split_once(':')).and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)));
    match (magic, dev) {
        (Some(magic), Some(dev)) => Box::new(FixedProbe { magic, dev }),
        _ => Box::new(RealProbe),
    }
}

/// The file system of the data directory, as far as the policy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsKind {
    NineP,
    Tmpfs,
    Other {
        magic: i64,
        name: &'static str,
    },
    /// statfs failed.
    Unknown(String),
}

impl FsKind {
    pub fn from_magic(magic: i64) -> FsKind {
        let name = match magic {
            V9FS_MAGIC => return FsKind::NineP,
            TMPFS_MAGIC => return FsKind::Tmpfs,
            0xEF53 => "ext2/3/4",
            0x5846_5342 => "xfs",
            0x9123_683E => "btrfs",
            0x2FC1_2FC1 => "zfs",
            0x794C_7630 => "overlayfs",
            0x6969 => "nfs",
            0xF2F5_2010 => "f2fs",
            0x4D44 => "vfat",
            0x5346_544E => "ntfs",
            _ => "other",
        };
        FsKind::Other { magic, name }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsKind::NineP => write!(f, "9p (magic {V9FS_MAGIC:#010x})"),
            FsKind::Tmpfs => write!(f, "tmpfs (magic {TMPFS_MAGIC:#010x})"),
            FsKind::Other { magic, name } => write!(f, "{name} (magic {magic:#x})"),
            FsKind::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// The kind of block device behind the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// `/sys/block/mmcblkN/device/type` is `SD`.
    SdCard {
        disk: String,
    },
    /// `/sys/block/mmcblkN/device/type` is `MMC`.
    Emmc {
        disk: String,
    },
    Nvme {
        disk: String,
    },
    /// `queue/rotational` is 1.
    Rotational {
        disk: String,
    },
    /// `queue/rotational` is 0 (SATA SSD, virtio, device mapper ...).
    NonRotational {
        disk: String,
    },
    /// A file system without a block device (tmpfs, 9p, NFS, overlay on one of those).
    NoBlockDevice,
    Unknown(String),
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Storage::SdCard { disk } => write!(f, "an SD card ({disk})"),
            Storage::Emmc { disk } => write!(f, "eMMC ({disk})"),
            Storage::Nvme { disk } => write!(f, "NVMe ({disk})"),
            Storage::Rotational { disk } => write!(f, "a rotational disk ({disk})"),
            Storage::NonRotational { disk } => write!(f, "a non-rotational disk ({disk})"),
            Storage::NoBlockDevice => write!(f, "no block device"),
            Storage::Unknown(why) => write!(f, "unknown storage ({why})"),
        }
    }
}

/// Everything detection found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    /// The directory probed: the data directory, or its nearest existing ancestor.
    pub probed: PathBuf,
    pub fs: FsKind,
    pub storage: Storage,
    pub kernel_release: String,
    /// `osrelease` contains `microsoft`.
    pub wsl: bool,
    /// `/proc/device-tree/model`, if there is one.
    pub board: Option<String>,
    /// The board model, when it names a Jetson.
    pub jetson_model: Option<String>,
    /// `MemTotal` of `/proc/meminfo`, in bytes.
    pub mem_total: Option<u64>,
    /// The kernel each SIMD codec runs on this CPU (best first-class choice).
    pub simd: Vec<(&'static str, KernelKind)>,
}

impl Detected {
    /// Nothing known (tests start from it).
    pub fn unknown() -> Detected {
        Detected {
            probed: PathBuf::new(),
            fs: FsKind::Unknown("not probed".into()),
            storage: Storage::Unknown("not probed".into()),
            kernel_release: "unknown".into(),
            wsl: false,
            board: None,
            jetson_model: None,
            mem_total: None,
            simd: Vec::new(),
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    // Device-tree strings end with NUL.
    let s = String::from_utf8_lossy(&bytes).trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_owned();
    Some(s)
}

/// `root` joined with an absolute system path such as `/proc/meminfo`.
fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// The data directory or its nearest existing ancestor (it may not exist yet).
fn existing_ancestor(dir: &Path) -> PathBuf {
    let abs = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir().map(|c| c.join(dir)).unwrap_or_else(|_| dir.to_owned())
    };
    let mut p = abs.as_path();
    loop {
        if p.exists() {
            return p.to_owned();
        }
        match p.parent() {
            Some(parent) => p = parent,
            None => return abs,
        }
    }
}

/// Detect the platform: system files are read below `root`, the data directory through
/// `probe`.
pub fn detect(root: &Path, probe: &dyn FsProbe, data_dir: &Path) -> Detected {
    let probed = existing_ancestor(data_dir);
    let fs = match probe.fs_magic(&probed) {
        Ok(m) => FsKind::from_magic(m),
        Err(e) => FsKind::Unknown(format!("statfs {}: {e}", probed.display())),
    };
    let storage = match probe.device_of(&probed) {
        Ok(dev) => storage_of(root, dev),
        Err(e) => Storage::Unknown(format!("stat {}: {e}", probed.display())),
    };
    let kernel_release = read_trimmed(&under(root, "/proc/sys/kernel/osrelease")).unwrap_or_else(|| "unknown".into());
    let wsl = kernel_release.to_ascii_lowercase().contains("microsoft");
    let board = read_trimmed(&under(root, "/proc/device-tree/model")).filter(|m| !m.is_empty());
    let jetson_model = board.clone().filter(|m| m.to_ascii_lowercase().contains("jetson"));
    let mem_total = std::fs::read_to_string(under(root, "/proc/meminfo")).ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let simd = vec![
        ("gf16 (PAR2)", crate::codec::gf16::Kernel::best().kind()),
        ("yenc", crate::codec::yenc::Kernel::best().kind()),
    ];
    Detected { probed, fs, storage, kernel_release, wsl, board, jetson_model, mem_total, simd }
}

/// Classify the block device `dev` through `ROOT/sys/dev/block/MAJOR:MINOR`.
fn storage_of(root: &Path, (major, minor): (u64, u64)) -> Storage {
    let link = under(root, &format!("/sys/dev/block/{major}:{minor}"));
    let target = match std::fs::read_link(&link) {
        Ok(t) => t,
        // Major 0 is the anonymous devices of tmpfs, 9p, NFS, overlayfs, btrfs subvolumes.
        Err(_) if major == 0 => return Storage::NoBlockDevice,
        Err(e) => return Storage::Unknown(format!("{}: {e}", link.display())),
    };
    // The link ends in the device: a whole disk (listed in /sys/block) or a partition,
    // whose parent component is its disk (.../block/sda/sda1, .../nvme0/nvme0n1/nvme0n1p2).
    let parts: Vec<String> = target
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let is_disk = |name: &String| under(root, "/sys/block").join(name).exists();
    let disk = match parts.as_slice() {
        [.., last] if is_disk(last) => last.clone(),
        [.., parent, _] if is_disk(parent) => parent.clone(),
        _ => {
            return Storage::Unknown(format!("{} -> {}: no disk of /sys/block in it", link.display(), target.display()))
        }
    };
    let sys_block = under(root, "/sys/block").join(&disk);
    if disk.starts_with("mmcblk") {
        return match read_trimmed(&sys_block.join("device/type")).as_deref() {
            Some("SD") => Storage::SdCard { disk },
            Some("MMC") => Storage::Emmc { disk },
            other => Storage::Unknown(format!("{disk}: device/type is {other:?}")),
        };
    }
    if disk.starts_with("nvme") {
        return Storage::Nvme { disk };
    }
    match read_trimmed(&sys_block.join("queue/rotational")).as_deref() {
        Some("1") => Storage::Rotational { disk },
        Some("0") => Storage::NonRotational { disk },
        other => Storage::Unknown(format!("{disk}: queue/rotational is {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::profile::{judge_data_dir, DirVerdict, Profile, ProfileChoice};

    /// A fake `/` in a temporary directory.
    struct FakeRoot(tempfile::TempDir);

    impl FakeRoot {
        fn new() -> Self {
            FakeRoot(tempfile::tempdir().expect("tempdir"))
        }
        fn file(&self, abs: &str, text: &str) -> &Self {
            let p = under(self.0.path(), abs);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, text).expect("write");
            self
        }
        fn dev_link(&self, dev: &str, target: &str) -> &Self {
            let p = under(self.0.path(), &format!("/sys/dev/block/{dev}"));
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::os::unix::fs::symlink(target, p).expect("symlink");
            self
        }
        fn path(&self) -> &Path {
            self.0.path()
        }
    }

    fn data_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("tempdir")
    }

    #[test]
    fn jetson_with_an_sd_card() {
        let root = FakeRoot::new();
        root.file("/proc/device-tree/model", "NVIDIA Jetson Nano Developer Kit\0")
            .file("/proc/sys/kernel/osrelease", "4.9.337-tegra\n")
            .file("/proc/meminfo", "MemTotal:        4050060 kB\nMemFree: 1 kB\n")
            .file("/sys/block/mmcblk0/device/type", "SD\n")
            .file("/sys/block/mmcblk0/queue/rotational", "0\n")
            .dev_link("179:1", "../../devices/sdhci-tegra.0/mmc_host/mmc0/mmc0:aaaa/block/mmcblk0/mmcblk0p1");
        let dir = data_dir();
        let probe = FixedProbe { magic: 0xEF53, dev: (179, 1) };
        let d = detect(root.path(), &probe, dir.path());
        assert_eq!(d.storage, Storage::SdCard { disk: "mmcblk0".into() });
        assert_eq!(d.jetson_model.as_deref(), Some("NVIDIA Jetson Nano Developer Kit"));
        assert!(!d.wsl);
        assert_eq!(d.mem_total, Some(4_050_060 * 1024));
        assert_eq!(d.fs, FsKind::Other { magic: 0xEF53, name: "ext2/3/4" });
        let (p, why) = Profile::choose(ProfileChoice::Auto, &d);
        assert_eq!(p, Profile::JetsonSd, "{why}");
        assert!(why.contains("SD card"), "{why}");
        assert_eq!(judge_data_dir(&d.fs), DirVerdict::Ok);
    }

    #[test]
    fn jetson_with_emmc() {
        let root = FakeRoot::new();
        root.file("/proc/device-tree/model", "NVIDIA Jetson Xavier NX Developer Kit\0")
            .file("/sys/block/mmcblk0/device/type", "MMC\n")
            .dev_link("179:2", "../../devices/platform/mmc0/block/mmcblk0/mmcblk0p2");
        let d = detect(root.path(), &FixedProbe { magic: 0xEF53, dev: (179, 2) }, data_dir().path());
        assert_eq!(d.storage, Storage::Emmc { disk: "mmcblk0".into() });
        assert_eq!(Profile::choose(ProfileChoice::Auto, &d).0, Profile::JetsonSd);
    }

    #[test]
    fn wsl_with_a_9p_data_directory() {
        let root = FakeRoot::new();
        root.file("/proc/sys/kernel/osrelease", "5.15.153.1-microsoft-standard-WSL2\n")
            .file("/proc/meminfo", "MemTotal:       16318412 kB\n");
        let d = detect(root.path(), &FixedProbe { magic: V9FS_MAGIC, dev: (0, 52) }, data_dir().path());
        assert!(d.wsl);
        assert_eq!(d.fs, FsKind::NineP);
        assert_eq!(d.storage, Storage::NoBlockDevice);
        assert_eq!(d.jetson_model, None);
        let (p, why) = Profile::choose(ProfileChoice::Auto, &d);
        assert_eq!(p, Profile::Wsl, "{why}");
        assert!(why.contains("microsoft"), "{why}");
        assert!(matches!(judge_data_dir(&d.fs), DirVerdict::Refuse(m) if m.contains("9p") && m.contains("--force")));
    }

    #[test]
    fn nvme_server() {
        let root = FakeRoot::new();
        root.file("/proc/sys/kernel/osrelease", "6.8.0-45-generic\n")
            .file("/proc/meminfo", "MemTotal:       131809328 kB\n")
            .file("/sys/block/nvme0n1/queue/rotational", "0\n")
            .dev_link("259:2", "../../devices/pci0000:00/0000:00:01.1/0000:01:00.0/nvme/nvme0/nvme0n1/nvme0n1p2");
        let d = detect(root.path(), &FixedProbe { magic: 0x5846_5342, dev: (259, 2) }, data_dir().path());
        assert_eq!(d.storage, Storage::Nvme { disk: "nvme0n1".into() });
        assert!(!d.wsl);
        assert_eq!(d.board, None);
        assert_eq!(d.fs, FsKind::Other { magic: 0x5846_5342, name: "xfs" });
        assert_eq!(Profile::choose(ProfileChoice::Auto, &d).0, Profile::Server);
    }

    #[test]
    fn rotational_disk_and_tmpfs() {
        let root = FakeRoot::new();
        root.file("/sys/block/sda/queue/rotational", "1\n").dev_link("8:1", "../../devices/ata1/host0/block/sda/sda1");
        let d = detect(root.path(), &FixedProbe { magic: 0xEF53, dev: (8, 1) }, data_dir().path());
        assert_eq!(d.storage, Storage::Rotational { disk: "sda".into() });
        let d = detect(root.path(), &FixedProbe { magic: TMPFS_MAGIC, dev: (0, 30) }, data_dir().path());
        assert_eq!(d.fs, FsKind::Tmpfs);
        assert!(matches!(judge_data_dir(&d.fs), DirVerdict::Warn(_)));
    }

    #[test]
    fn a_missing_data_directory_probes_its_parent() {
        let dir = data_dir();
        let d = detect(Path::new("/"), &RealProbe, &dir.path().join("not/yet"));
        assert_eq!(d.probed, dir.path());
        assert!(!matches!(d.fs, FsKind::Unknown(_)), "{:?}", d.fs);
    }

    #[test]
    fn the_fake_statfs_file_stands_in_for_the_system_calls() {
        let root = FakeRoot::new();
        root.file(&format!("/{FAKE_STATFS_FILE}"), "0x01021997 0:52\n");
        let p = probe_for_root(root.path());
        assert_eq!(p.fs_magic(Path::new("/x")).expect("magic"), V9FS_MAGIC);
        assert_eq!(p.device_of(Path::new("/x")).expect("dev"), (0, 52));
    }
}
