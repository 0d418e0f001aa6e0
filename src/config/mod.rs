//! Configuration: the settings of `spillway serve` ([`settings`]), the TOML file
//! ([`file`]), platform detection ([`detect`]) and profiles ([`profile`]), and
//! `spillway doctor` ([`doctor`]). [`resolve`] puts them together:
//! built-in default < profile < config file < command-line flag.

pub mod detect;
pub mod doctor;
pub mod file;
pub mod profile;
pub mod settings;

use std::path::{Path, PathBuf};

use thiserror::Error;

use detect::Detected;
use profile::{Profile, ProfileChoice};
use settings::{Settings, SettingsArgs};

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
}

/// The effective settings and how they came about.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub settings: Settings,
    pub profile: Profile,
    /// Why this profile (for the log and the doctor).
    pub profile_reason: String,
    pub detected: Detected,
    /// The config file read, if any.
    pub config_file: Option<PathBuf>,
}

/// Combine the layers. `config`: the `--config` file (else the default path, if it
/// exists); `flags`: the command line; `root`: where detection reads `/proc` and `/sys`.
pub fn resolve(config: Option<&Path>, flags: &SettingsArgs, root: &Path) -> Result<Resolved, ConfigError> {
    let (file_layer, config_file) = file::load(config)?;
    let mut early = Settings::default();
    early.apply(&file_layer);
    early.apply(flags);
    let probe = detect::probe_for_root(root);
    let detected = detect::detect(root, probe.as_ref(), &early.data_dir);
    let choice = flags.profile.or(file_layer.profile).unwrap_or(ProfileChoice::Auto);
    let (profile, profile_reason) = Profile::choose(choice, &detected);
    let mut settings = Settings::default();
    settings.apply(&profile.layer(detected.mem_total));
    settings.apply(&file_layer);
    settings.apply(flags);
    Ok(Resolved { settings, profile, profile_reason, detected, config_file })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    /// Flags of `serve` that have no config key, and why.
    const NOT_IN_THE_FILE: &[&str] = &[
        // The file itself.
        "config",
        // An override for one run, not a setting.
        "force",
        // Benchmarks only.
        "inject-sync-latency",
        "inject-write-bandwidth",
        "inject-backend-latency",
        // Tests only (hidden).
        "detect-root",
        "help",
    ];

    #[test]
    fn every_serve_flag_has_a_config_key() {
        let printed = file::print_defaults();
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").expect("serve subcommand");
        let mut checked = 0;
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if NOT_IN_THE_FILE.contains(&long) {
                continue;
            }
            let key = long.replace('-', "_");
            let set = printed.lines().any(|l| l.starts_with(&format!("{key} = ")));
            let example = printed.lines().any(|l| l.starts_with(&format!("# {key} = ")));
            assert!(set || example, "--{long} has no key {key} in `config --print-defaults`:\n{printed}");
            checked += 1;
        }
        assert!(checked >= 28, "only {checked} flags checked");
        // And the other way: no key that is not a flag.
        for (key, _) in file::keys() {
            let long = key.replace('_', "-");
            assert!(serve.get_arguments().any(|a| a.get_long() == Some(long.as_str())), "key {key} is no serve flag");
        }
    }

    #[test]
    fn flag_beats_file_beats_profile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spillway.toml");
        std::fs::write(&path, "profile = \"jetson-sd\"\nmax_dirty = \"48M\"\nmemlock = false\ncache_bytes = \"8M\"\n")
            .expect("write");
        let flags = SettingsArgs { cache_bytes: Some(16 << 20), ..Default::default() };
        let r = resolve(Some(&path), &flags, Path::new("/")).expect("resolves");
        assert_eq!(r.profile, Profile::JetsonSd);
        assert_eq!(r.settings.sync_interval, profile::SLOW_SYNC_INTERVAL, "profile over default");
        assert_eq!(r.settings.upload_parallel, 2, "profile over default");
        assert_eq!(r.settings.max_dirty, 48 << 20, "file over profile");
        assert!(!r.settings.memlock, "file over profile");
        assert_eq!(r.settings.cache_bytes, 16 << 20, "flag over file");
        assert_eq!(r.config_file.as_deref(), Some(path.as_path()));
        // The flag picks the profile over the file.
        let flags = SettingsArgs { profile: Some(ProfileChoice::Server), ..Default::default() };
        let r = resolve(Some(&path), &flags, Path::new("/")).expect("resolves");
        assert_eq!(r.profile, Profile::Server);
        assert_eq!(r.settings.sync_interval, Settings::default().sync_interval);
    }

    #[test]
    fn a_missing_explicit_config_file_is_an_error() {
        let e = resolve(Some(Path::new("/nonexistent/spillway.toml")), &SettingsArgs::default(), Path::new("/"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/spillway.toml"), "{e}");
    }
}
