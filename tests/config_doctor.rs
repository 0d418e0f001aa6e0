//! The config file, platform profiles, `spillway doctor` and `--memlock`, through the
//! binary. Fake platforms use the hidden `--detect-root DIR` (a fake /proc and /sys; the
//! file DIR/spillway-test-statfs stands in for statfs and stat of the data directory).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{all_output, run_capture, run_ok, stdout_of, Server};

fn spillway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_spillway"));
    c.env("NO_COLOR", "1").env_remove("RUST_LOG");
    c
}

/// A fake `/` describing a platform.
fn fake_root(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let root = dir.join("root");
    for (path, text) in files {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }
    std::fs::create_dir_all(&root).expect("mkdir root");
    root
}

fn wsl_on_9p(dir: &Path) -> PathBuf {
    fake_root(
        dir,
        &[
            ("/proc/sys/kernel/osrelease", "5.15.153.1-microsoft-standard-WSL2\n"),
            ("/spillway-test-statfs", "0x01021997 0:52\n"),
        ],
    )
}

fn jetson_on_sd(dir: &Path) -> PathBuf {
    let root = fake_root(
        dir,
        &[
            ("/proc/device-tree/model", "NVIDIA Jetson Nano Developer Kit\0"),
            ("/proc/sys/kernel/osrelease", "4.9.337-tegra\n"),
            ("/proc/meminfo", "MemTotal:        4050060 kB\n"),
            ("/sys/block/mmcblk0/device/type", "SD\n"),
            ("/spillway-test-statfs", "0xef53 179:1\n"),
        ],
    );
    let link = root.join("sys/dev/block/179:1");
    std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
    std::os::unix::fs::symlink("../../devices/mmc0/mmc0:aaaa/block/mmcblk0/mmcblk0p1", link).expect("symlink");
    root
}

#[test]
fn print_defaults_is_a_config_file_serve_accepts() {
    let out = run_ok(spillway().args(["config", "--print-defaults"]));
    let text = stdout_of(&out);
    assert!(text.contains("sync_interval = \"100ms\""), "{text}");
    assert!(text.contains("# unix = "), "{text}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spillway.toml");
    std::fs::write(&path, &text).expect("write");
    // The harness's --data-dir and --listen flags override the file's.
    let mut server = Server::start(&["--config", path.to_str().expect("utf-8")]);
    let log = server.log();
    assert!(log.contains(&format!("config file {}", path.display())), "{log}");
    let (status, _) = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn an_unknown_key_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spillway.toml");
    std::fs::write(&path, "durability = \"strict\"\nsync_intervall = \"1s\"\n").expect("write");
    let out = run_capture(
        spillway()
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .arg("--data-dir")
            .arg(dir.path().join("data")),
    );
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("sync_intervall"), "{text}");
    assert!(text.contains(path.to_str().expect("utf-8")), "{text}");
    assert!(!dir.path().join("data").exists(), "the server got as far as the data directory:\n{text}");
}

#[test]
fn doctor_reports_this_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = run_ok(spillway().args(["doctor", "--data-dir"]).arg(&data));
    let text = stdout_of(&out);
    for want in
        ["detected:", "file system:", "storage:", "kernel:", "memory:", "SIMD kernels:", "profile: ", "warnings:"]
    {
        assert!(text.contains(want), "no {want:?} in:\n{text}");
    }
    assert!(text.contains(&format!("data_dir = \"{}\"", data.display())), "{text}");
    assert!(!data.exists(), "doctor without --measure created the data directory");
}

#[test]
fn doctor_on_a_fake_jetson_picks_jetson_sd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = jetson_on_sd(dir.path());
    let out = run_ok(spillway().args(["doctor", "--data-dir"]).arg(dir.path()).arg("--detect-root").arg(&root));
    let text = stdout_of(&out);
    assert!(text.contains("storage:               an SD card (mmcblk0)"), "{text}");
    assert!(text.contains("profile: jetson-sd (auto: \"NVIDIA Jetson Nano Developer Kit\""), "{text}");
    assert!(text.contains("memlock = true"), "{text}");
    assert!(text.contains("sync_interval = \"220ms\""), "{text}");
    assert!(text.contains("max_dirty = \"48M\""), "{text}");
    // A flag still beats the profile.
    let out = run_ok(
        spillway()
            .args(["doctor", "--max-dirty", "8M", "--memlock=false", "--data-dir"])
            .arg(dir.path())
            .arg("--detect-root")
            .arg(&root),
    );
    let text = stdout_of(&out);
    assert!(text.contains("max_dirty = \"8M\"") && text.contains("memlock = false"), "{text}");
    // ... and the doctor says what serve would make of it.
    assert!(text.contains("`serve` refuses these settings: ") && text.contains("at least 40 MiB"), "{text}");
    let out = run_capture(
        spillway()
            .args(["serve", "--listen", "127.0.0.1:0", "--max-dirty", "8M", "--data-dir"])
            .arg(dir.path().join("d")),
    );
    let text = all_output(&out);
    assert!(!out.status.success() && text.contains("at least 40 MiB"), "{text}");
    assert!(!dir.path().join("d").exists(), "refused, yet the data directory was created:\n{text}");
}

#[test]
fn serve_on_a_fake_jetson_runs_the_jetson_sd_profile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = jetson_on_sd(dir.path());
    let mut server = Server::start(&["--detect-root", root.to_str().expect("utf-8")]);
    let log = server.log();
    assert!(log.contains("profile jetson-sd (auto: \"NVIDIA Jetson Nano Developer Kit\""), "{log}");
    assert!(log.contains("memlock: mlockall") && log.contains("memlock: PR_SET_IO_FLUSHER"), "{log}");
    if common::require_tool("nbdcopy") {
        let data = common::pseudo_random_bytes(11, 4 << 20);
        server.copy_in(&data, "jetson", true);
        common::assert_same_blocks("read back under jetson-sd", &server.copy_out(data.len()), &data);
    }
    let (status, _) = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn serve_refuses_a_9p_data_directory_unless_forced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = wsl_on_9p(dir.path());
    let data = dir.path().join("data");
    let out = run_capture(
        spillway().args(["serve", "--listen", "127.0.0.1:0", "--data-dir"]).arg(&data).arg("--detect-root").arg(&root),
    );
    let text = all_output(&out);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("refusing data directory") && text.contains("9p") && text.contains("--force"), "{text}");
    assert!(text.contains("profile wsl"), "{text}");
    assert!(!data.exists(), "refused, yet the data directory was created:\n{text}");

    let mut server = Server::start(&["--force", "--detect-root", root.to_str().expect("utf-8")]);
    let log = server.log();
    assert!(log.contains("serving anyway: --force"), "{log}");
    server.terminate();
}

#[test]
fn serve_warns_about_tmpfs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = fake_root(dir.path(), &[("/spillway-test-statfs", "0x01021994 0:40\n")]);
    let mut server = Server::start(&["--detect-root", root.to_str().expect("utf-8")]);
    let log = server.log();
    assert!(log.contains("tmpfs") && log.contains("durability is nil"), "{log}");
    server.terminate();
}

#[test]
fn memlock_logs_what_took_effect() {
    let mut server = Server::start(&["--memlock"]);
    let log = server.log();
    // Whatever this machine allows: each step says ok or why not.
    let mlock = log.lines().find(|l| l.contains("memlock: mlockall")).unwrap_or_else(|| panic!("{log}"));
    assert!(mlock.contains(": ok") || mlock.contains("failed:"), "{mlock}");
    let flusher = log.lines().find(|l| l.contains("memlock: PR_SET_IO_FLUSHER")).unwrap_or_else(|| panic!("{log}"));
    assert!(flusher.contains(": ok") || flusher.contains("failed:"), "{flusher}");
    // The server works with it.
    if common::require_tool("nbdcopy") {
        let data = common::pseudo_random_bytes(7, 1 << 20);
        server.copy_in(&data, "memlock", true);
        common::assert_same_blocks("read back under --memlock", &server.copy_out(data.len()), &data);
    }
    server.terminate();

    let quiet = Server::start(&[]);
    assert!(!quiet.log().contains("memlock:"), "memlock is off by default:\n{}", quiet.log());
}

/// The median line of `doctor --measure` for one operation, in milliseconds.
fn median_ms(text: &str, op: &str) -> f64 {
    let line = text.lines().find(|l| l.trim_start().starts_with(op)).unwrap_or_else(|| panic!("no {op:?} in:\n{text}"));
    let v = line.split_whitespace().skip_while(|w| *w != "median").nth(1).unwrap_or_else(|| panic!("{line}"));
    if let Some(us) = v.strip_suffix("µs") {
        us.parse::<f64>().expect("number") / 1000.0
    } else if let Some(ms) = v.strip_suffix("ms") {
        ms.parse().expect("number")
    } else if let Some(s) = v.strip_suffix('s') {
        s.parse::<f64>().expect("number") * 1000.0
    } else {
        panic!("unit of {v:?}")
    }
}

fn derived_interval(text: &str) -> Duration {
    let line =
        text.lines().find(|l| l.contains("as a config line: sync_interval = ")).unwrap_or_else(|| panic!("{text}"));
    let v = line.rsplit('"').nth(1).unwrap_or_else(|| panic!("{line}"));
    spillway::units::parse_duration(v).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn doctor_measures_this_machine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_ok(spillway().args(["doctor", "--measure", "--data-dir"]).arg(dir.path()));
    let text = stdout_of(&out);
    eprintln!("{text}");
    assert!(text.contains("4 KiB write, no sync           n=1000"), "{text}");
    assert!(text.contains("fdatasync after a 4 KiB write  n=50"), "{text}");
    assert!(median_ms(&text, "fdatasync") > 0.0, "{text}");
    let interval = derived_interval(&text);
    assert!((Duration::from_millis(100)..=Duration::from_secs(2)).contains(&interval), "{text}");
    assert_eq!(std::fs::read_dir(dir.path()).expect("read_dir").count(), 0, "doctor left a file behind");
}

#[test]
fn doctor_measures_the_10ms_sync_emulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        run_ok(spillway().args(["doctor", "--measure", "--inject-sync-latency", "10ms", "--data-dir"]).arg(dir.path()));
    let text = stdout_of(&out);
    eprintln!("{text}");
    assert!(text.contains("every sync takes 10ms longer"), "{text}");
    // Each sync sleeps 10 ms before the real fdatasync: a lower bound, not a timing guess.
    assert!(median_ms(&text, "fdatasync") >= 10.0, "{text}");
    assert!(derived_interval(&text) >= Duration::from_millis(200), "20 x 10 ms:\n{text}");
}
