//! Option requests of the fixed newstyle negotiation, parsed into a typed enum.

use crate::consts::*;

/// What the client asked for in one option request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`: choose an export and enter transmission (no way to fail softly).
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    ListMetaContext(MetaRequest),
    SetMetaContext(MetaRequest),
    /// Any option we do not implement; it gets `NBD_REP_ERR_UNSUP`.
    Unsupported(u32),
}

/// Payload of `NBD_OPT_INFO` and `NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub infos: Vec<u16>,
}

/// Payload of `NBD_OPT_LIST_META_CONTEXT` and `NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest {
    pub export: String,
    pub queries: Vec<String>,
}

/// A known option whose payload does not parse: it gets `NBD_REP_ERR_INVALID`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid option {option}: {reason}")]
pub struct OptionError {
    pub option: u32,
    pub reason: &'static str,
}

/// Parse one option's payload. Never panics, whatever the bytes.
pub fn decode_option(option: u32, data: &[u8]) -> Result<ClientOption, OptionError> {
    let invalid = |reason| OptionError { option, reason };
    let no_data = |opt: ClientOption| {
        if data.is_empty() {
            Ok(opt)
        } else {
            Err(invalid("this option takes no data"))
        }
    };
    match option {
        OPT_EXPORT_NAME => Ok(ClientOption::ExportName(
            string(data).ok_or_else(|| invalid("export name is not valid UTF-8 of at most 4096 bytes"))?,
        )),
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => no_data(ClientOption::List),
        OPT_STARTTLS => no_data(ClientOption::StartTls),
        OPT_STRUCTURED_REPLY => no_data(ClientOption::StructuredReply),
        OPT_INFO | OPT_GO => {
            let req = info_request(data).map_err(invalid)?;
            Ok(if option == OPT_GO { ClientOption::Go(req) } else { ClientOption::Info(req) })
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let req = meta_request(data).map_err(invalid)?;
            Ok(if option == OPT_SET_META_CONTEXT {
                ClientOption::SetMetaContext(req)
            } else {
                ClientOption::ListMetaContext(req)
            })
        }
        other => Ok(ClientOption::Unsupported(other)),
    }
}

/// A cursor over option data that refuses to read past the end.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A 32-bit length followed by that many bytes of UTF-8.
    fn string32(&mut self) -> Result<String, &'static str> {
        let len = self.u32().ok_or("string length runs past the option data")? as usize;
        let bytes = self.take(len).ok_or("string runs past the option data")?;
        string(bytes).ok_or("string is not valid UTF-8 of at most 4096 bytes")
    }
}

fn string(bytes: &[u8]) -> Option<String> {
    if bytes.len() > MAX_STRING {
        return None;
    }
    std::str::from_utf8(bytes).ok().map(str::to_owned)
}

fn info_request(data: &[u8]) -> Result<InfoRequest, &'static str> {
    let mut c = Cursor { data };
    let name = c.string32()?;
    let count = c.u16().ok_or("information request count runs past the option data")?;
    let mut infos = Vec::with_capacity(usize::from(count).min(c.data.len() / 2));
    for _ in 0..count {
        infos.push(c.u16().ok_or("information requests run past the option data")?);
    }
    if !c.data.is_empty() {
        return Err("trailing bytes after the information requests");
    }
    Ok(InfoRequest { name, infos })
}

fn meta_request(data: &[u8]) -> Result<MetaRequest, &'static str> {
    let mut c = Cursor { data };
    let export = c.string32()?;
    let count = c.u32().ok_or("query count runs past the option data")?;
    // Each query needs at least its 4-byte length, so a count beyond that is a lie.
    if count as usize > c.data.len() / 4 {
        return Err("query count exceeds the option data");
    }
    let mut queries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        queries.push(c.string32()?);
    }
    if !c.data.is_empty() {
        return Err("trailing bytes after the queries");
    }
    Ok(MetaRequest { export, queries })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go_bytes(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut v = (name.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            v.extend_from_slice(&i.to_be_bytes());
        }
        v
    }

    #[test]
    fn go_parses() {
        let d = go_bytes("disk", &[INFO_BLOCK_SIZE, INFO_NAME]);
        assert_eq!(
            decode_option(OPT_GO, &d),
            Ok(ClientOption::Go(InfoRequest { name: "disk".into(), infos: vec![3, 1] }))
        );
    }

    #[test]
    fn go_with_lying_lengths_is_invalid() {
        let mut d = go_bytes("disk", &[1]);
        d[3] = 200; // name length beyond the data
        assert!(decode_option(OPT_GO, &d).is_err());
        let mut d = go_bytes("disk", &[1]);
        d.push(0); // trailing byte
        assert!(decode_option(OPT_GO, &d).is_err());
        let d = go_bytes("disk", &[1]);
        assert!(decode_option(OPT_GO, &d[..d.len() - 1]).is_err());
    }

    #[test]
    fn meta_parses_and_rejects_short_queries() {
        let mut d = 0u32.to_be_bytes().to_vec();
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&15u32.to_be_bytes());
        d.extend_from_slice(b"base:allocation");
        assert_eq!(
            decode_option(OPT_SET_META_CONTEXT, &d),
            Ok(ClientOption::SetMetaContext(MetaRequest {
                export: String::new(),
                queries: vec!["base:allocation".into()]
            }))
        );
        d.truncate(d.len() - 1);
        assert!(decode_option(OPT_SET_META_CONTEXT, &d).is_err());
        let mut huge = 0u32.to_be_bytes().to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_option(OPT_LIST_META_CONTEXT, &huge).is_err());
    }

    #[test]
    fn no_data_options_reject_data() {
        assert!(decode_option(OPT_LIST, b"x").is_err());
        assert!(decode_option(OPT_STRUCTURED_REPLY, b"x").is_err());
        assert_eq!(decode_option(OPT_LIST, b""), Ok(ClientOption::List));
    }

    #[test]
    fn unknown_is_unsupported() {
        assert_eq!(decode_option(4, b"abc"), Ok(ClientOption::Unsupported(4)));
        assert_eq!(decode_option(OPT_EXTENDED_HEADERS, b""), Ok(ClientOption::Unsupported(11)));
        assert_eq!(decode_option(0xdead_beef, b""), Ok(ClientOption::Unsupported(0xdead_beef)));
    }

    #[test]
    fn overlong_names_are_invalid() {
        let name = "a".repeat(MAX_STRING + 1);
        assert!(decode_option(OPT_EXPORT_NAME, name.as_bytes()).is_err());
        assert!(decode_option(OPT_GO, &go_bytes(&name, &[])).is_err());
    }
}
