//! The config file (`/etc/spillway/spillway.toml`): loading it, and printing a complete
//! commented one with every default (`spillway config --print-defaults`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;

use super::settings::{Settings, SettingsArgs};
use super::ConfigError;

/// Read when `--config` is not given and the file exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/spillway/spillway.toml";

/// Parse a config file. Unknown keys are refused, naming the key.
pub fn parse(text: &str, path: &Path) -> Result<SettingsArgs, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
}

/// Load `explicit`, or [`DEFAULT_CONFIG_PATH`] if that exists. Returns the layer and the
/// file it came from (`None`: no file, an empty layer).
pub fn load(explicit: Option<&Path>) -> Result<(SettingsArgs, Option<PathBuf>), ConfigError> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_PATH);
            if !p.exists() {
                return Ok((SettingsArgs::default(), None));
            }
            p
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    Ok((parse(&text, &path)?, Some(path)))
}

/// The config keys, in `--help` order: each flag's long name with `-` written `_`, and its
/// help text.
pub fn keys() -> Vec<(String, String)> {
    let cmd = SettingsArgs::augment_args(clap::Command::new("spillway"));
    cmd.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            let help = a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_default();
            Some((long.replace('-', "_"), help))
        })
        .collect()
}

/// An example value for a key whose default is "not set", shown commented out.
fn example(key: &str) -> &'static str {
    match key {
        "unix" => "\"/run/spillway/nbd.sock\"",
        "size" => "\"1G\"",
        "export" => "[\"default\"]",
        "backend" => "\"s3://BUCKET/PREFIX\"",
        "s3_endpoint" => "\"http://127.0.0.1:9000\"",
        "metrics_listen" => "\"127.0.0.1:9108\"",
        _ => "\"\"",
    }
}

/// A complete config file: every key with its help text as a comment. Keys with a default
/// value are set to it; keys whose default is "not set" are commented out, with an example.
pub fn print_defaults() -> String {
    let defaults = Settings::default().to_layer();
    let table = match toml::Table::try_from(&defaults) {
        Ok(t) => t,
        // Every field is a string, number, bool or list: serializing cannot fail.
        Err(e) => unreachable!("the default settings do not serialize: {e}"),
    };
    let mut out = String::new();
    out.push_str(
        "# spillway configuration: /etc/spillway/spillway.toml, or the file named by --config.\n\
         # Every key is a `spillway serve` flag with `-` written `_`. Precedence: built-in\n\
         # default < profile < this file < command-line flag. Unknown keys are refused.\n\
         # Sizes: \"4096\", \"4K\", \"128M\", \"1G\" (powers of 1024). Durations: \"100ms\", \"2s\", \"1m\".\n\
         # The values below are the built-in defaults; the profile (docs/profiles.md) may\n\
         # replace some of them, unless this file sets them.\n",
    );
    for (key, help) in keys() {
        out.push('\n');
        for line in wrap(&help, 86) {
            let _ = writeln!(out, "# {line}");
        }
        match table.get(&key) {
            Some(v) => {
                let _ = writeln!(out, "{key} = {v}");
            }
            None => {
                let _ = writeln!(out, "# {key} = {}", example(&key));
            }
        }
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_defaults_parse_back_to_the_defaults() {
        let text = print_defaults();
        let layer = parse(&text, Path::new("printed")).expect("printed defaults parse");
        let mut s = Settings::default();
        s.apply(&layer);
        assert_eq!(s, Settings::default());
        // Every set key is the whole default layer: nothing was left out of the file.
        assert_eq!(layer, Settings::default().to_layer());
    }

    #[test]
    fn the_commented_examples_parse_too() {
        let uncommented: String = print_defaults()
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(rest)
                    if rest.contains(" = ") && keys().iter().any(|(k, _)| rest.starts_with(&format!("{k} = "))) =>
                {
                    format!("{rest}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let layer = parse(&uncommented, Path::new("uncommented")).expect("examples parse");
        assert_eq!(layer.unix.as_deref(), Some(Path::new("/run/spillway/nbd.sock")));
        assert_eq!(layer.size, Some(1 << 30));
        assert_eq!(layer.exports, vec!["default".to_owned()]);
        assert!(layer.backend.is_some() && layer.s3_endpoint.is_some() && layer.metrics_listen.is_some());
    }

    #[test]
    fn every_key_documents_its_default() {
        for (key, help) in keys() {
            assert!(help.contains("[default:"), "the help of {key} does not say its default: {help:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let e = parse("sync_interval = \"1s\"\nsync_intervall = \"2s\"\n", Path::new("/x.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sync_intervall"), "{msg}");
        assert!(msg.contains("/x.toml"), "{msg}");
    }

    #[test]
    fn bad_values_are_refused_with_their_key() {
        let e = parse("max_dirty = \"12X\"\n", Path::new("f")).unwrap_err().to_string();
        assert!(e.contains("max_dirty") && e.contains("12X"), "{e}");
        let e = parse("durability = \"sometimes\"\n", Path::new("f")).unwrap_err().to_string();
        assert!(e.contains("durability") && e.contains("batched"), "{e}");
    }

    #[test]
    fn values_read_as_on_the_command_line() {
        let l = parse(
            "size = 4096\nmax_dirty = \"32M\"\nsync_interval = \"250ms\"\ncodec = \"zstd:5\"\nprofile = \"jetson-sd\"\n\
             export = [\"a\", \"b\"]\nmemlock = true\nlisten = \"127.0.0.1:0\"\n",
            Path::new("f"),
        )
        .expect("parses");
        assert_eq!(l.size, Some(4096));
        assert_eq!(l.max_dirty, Some(32 << 20));
        assert_eq!(l.sync_interval, Some(std::time::Duration::from_millis(250)));
        assert_eq!(l.codec, Some(crate::codec::Compression::Zstd(5)));
        assert_eq!(l.profile, Some(crate::config::profile::ProfileChoice::JetsonSd));
        assert_eq!(l.exports, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(l.memlock, Some(true));
    }
}
