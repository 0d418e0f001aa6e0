//! Human sizes on the command line: `1G`, `512MiB`, `4096`.

/// Parse a size: a number with an optional K, M, G, T or P suffix (powers of 1024;
/// `KiB`/`KB`-style spellings are accepted and mean the same).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("{s:?} is not a size: expected a number like 1G, 512M or 4096"));
    }
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: number too large"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use K, M, G, T or P)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?}: size does not fit in 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("3KiB"), Ok(3072));
        assert_eq!(parse_size(" 2 t "), Ok(2 << 40));
        assert!(parse_size("G").is_err());
        assert!(parse_size("12X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999P").is_err());
    }
}

/// Parse a duration: a number with an optional `us`, `ms`, `s` or `m` suffix (bare numbers
/// are milliseconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration: expected e.g. 100ms, 2s or 1m"))?;
    let us = match unit.trim() {
        "us" => n,
        "" | "ms" => n.saturating_mul(1000),
        "s" => n.saturating_mul(1_000_000),
        "m" => n.saturating_mul(60_000_000),
        other => return Err(format!("{s:?}: unknown unit {other:?} (use us, ms, s or m)")),
    };
    Ok(std::time::Duration::from_micros(us))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("250"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5h").is_err());
    }
}

/// A size the way [`parse_size`] reads it, in the largest unit that keeps it exact:
/// `4K`, `128M`, `1G`, `1000`.
pub fn format_size(n: u64) -> String {
    for (shift, unit) in [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n % (1u64 << shift) == 0 {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

/// A duration the way [`parse_duration`] reads it: `30s`, `1m`, `250ms`, `50us` (whole
/// microseconds; anything finer is dropped).
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if d.as_micros() % 1000 != 0 {
        format!("{}us", d.as_micros())
    } else if ms != 0 && ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms != 0 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_read_back() {
        for n in [0, 1, 1000, 4096, 128 << 20, 1 << 30, (1 << 30) + 1, 3 << 40] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        }
        assert_eq!(format_size(128 << 20), "128M");
        for ms in [0, 1, 100, 1000, 30_000, 60_000, 61_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{ms}");
        }
        assert_eq!(format_duration(Duration::from_secs(30)), "30s");
        assert_eq!(format_duration(Duration::from_micros(50)), "50us");
        assert_eq!(parse_duration(&format_duration(Duration::from_micros(1500))), Ok(Duration::from_micros(1500)));
    }
}
