//! The `=ybegin` and `=yend` lines around a single-part yEnc body.

use super::YencError;

/// Fields of the `=ybegin` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    pub line: usize,
    pub size: u64,
    pub name: String,
}

/// Fields of the `=yend` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub size: u64,
    pub crc32: Option<u32>,
}

/// The value of `key=` in a keyword line: up to the next space, or (for `name`) to the end.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let at = line.find(&pat)? + pat.len();
    let rest = &line[at..];
    if key == "name" {
        return Some(rest);
    }
    Some(rest.split(' ').next().unwrap_or(rest))
}

fn number<T: std::str::FromStr>(line: &str, key: &'static str) -> Result<T, YencError> {
    let v = field(line, key).ok_or(YencError::BadHeader(key))?;
    v.parse().map_err(|_| YencError::BadHeader(key))
}

fn line_text(line: &[u8]) -> Result<&str, YencError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    std::str::from_utf8(line).map_err(|_| YencError::BadHeader("utf-8"))
}

/// Where the `=ybegin` line starts (at the start of the input or of a line), and its fields
/// and the offset just past it.
pub fn parse_begin(bytes: &[u8]) -> Result<(Begin, usize), YencError> {
    let start = if bytes.starts_with(b"=ybegin ") {
        0
    } else {
        bytes.windows(9).position(|w| w == b"\n=ybegin ").ok_or(YencError::MissingBegin)? + 1
    };
    let eol = bytes[start..].iter().position(|&b| b == b'\n').ok_or(YencError::MissingBegin)? + start + 1;
    let text = line_text(&bytes[start..eol])?;
    if field(text, "part").is_some() || bytes[eol..].starts_with(b"=ypart ") {
        return Err(YencError::Multipart);
    }
    let begin = Begin {
        line: number(text, "line")?,
        size: number(text, "size")?,
        name: field(text, "name").ok_or(YencError::BadHeader("name"))?.to_owned(),
    };
    Ok((begin, eol))
}

/// The last `=yend` line at or after `from`, at the start of a line: its offset and fields.
pub fn parse_end(bytes: &[u8], from: usize) -> Result<(End, usize), YencError> {
    let tail = &bytes[from..];
    let at = match tail.windows(6).rposition(|w| w == b"\n=yend") {
        Some(p) => Some(p + 1),
        None => tail.starts_with(b"=yend").then_some(0),
    };
    let at = at.ok_or(YencError::MissingEnd)?;
    let rest = &tail[at..];
    let eol = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |p| p + 1);
    let text = line_text(&rest[..eol])?;
    let crc32 = match field(text, "crc32") {
        None => None,
        Some(hex) if hex.len() == 8 => Some(u32::from_str_radix(hex, 16).map_err(|_| YencError::BadHeader("crc32"))?),
        Some(_) => return Err(YencError::BadHeader("crc32")),
    };
    Ok((End { size: number(text, "size")?, crc32 }, from + at))
}
