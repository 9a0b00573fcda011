//! Format detection from a trace's name and first bytes.
//!
//! In order: the NumPy magic means npy (a `.npy` name without it is an
//! error); a `.champsimtrace` name means ChampSim (the cloudsuite variant
//! if the name says `cloudsuite`); a first drmemtrace `HEADER` entry
//! followed by a thread, pid or marker entry means drmemtrace; a raw
//! extension (`.bin`, `.raw`, `.u64`) or binary content means raw; text is
//! Lackey if a Valgrind banner appears or Lackey records are at least as
//! common as text records in the first lines, else text. Compression
//! suffixes (`.gz`, `.zst`, `.zstd`, `.xz`) are ignored in names.

use super::drmemtrace::{ENTRY_BYTES, TYPE_HEADER, TYPE_PID, TYPE_THREAD};
use super::lines::{is_lackey_banner, parse_lackey_line, parse_text_line};
use super::pyfmt::{bytes_strip, repr_str, show};
use super::{Format, TraceError, TraceResult};

/// Decompressed bytes looked at.
pub const SNIFF_BYTES: usize = 64 * 1024;
const SNIFF_LINES: usize = 20;
const COMPRESSED_EXTS: [&str; 4] = [".gz", ".zst", ".zstd", ".xz"];
const RAW_EXTS: [&str; 3] = [".bin", ".raw", ".u64"];
const TYPE_MARKER: u16 = 28;

/// The lower-cased suffixes of the last path component, as `PurePath(name).suffixes`.
fn suffixes(name: &str) -> Vec<String> {
    let last = name.rsplit('/').next().unwrap_or("");
    if last.ends_with('.') {
        return Vec::new();
    }
    let trimmed = last.trim_start_matches('.');
    trimmed
        .split('.')
        .skip(1)
        .map(|s| format!(".{}", s.to_lowercase()))
        .collect()
}

/// The extension that names the format, ignoring compression suffixes.
pub fn logical_ext(name: &str) -> String {
    let mut s = suffixes(name);
    while s
        .last()
        .is_some_and(|x| COMPRESSED_EXTS.contains(&x.as_str()))
    {
        s.pop();
    }
    s.pop().unwrap_or_default()
}

/// Whether `head` looks like UTF-8 text: no NUL, decodes (a cut-off last
/// character is fine), at most 1% control bytes.
pub fn is_text(head: &[u8]) -> bool {
    if head.contains(&0) {
        return false;
    }
    if let Err(e) = std::str::from_utf8(head) {
        if e.error_len().is_some() {
            return false;
        }
    }
    let controls = head
        .iter()
        .filter(|&&b| b < 32 && !matches!(b, 9 | 10 | 12 | 13))
        .count();
    controls * 100 <= head.len()
}

fn looks_like_drmemtrace(head: &[u8]) -> bool {
    if head.len() < 2 * ENTRY_BYTES {
        return false;
    }
    let ty = |i: usize| u16::from_le_bytes([head[i * ENTRY_BYTES], head[i * ENTRY_BYTES + 1]]);
    ty(0) == TYPE_HEADER && matches!(ty(1), TYPE_THREAD | TYPE_PID | TYPE_MARKER)
}

fn detect_text(name: &str, head: &[u8], at_eof: bool) -> TraceResult<Format> {
    let mut lines: Vec<&[u8]> = head.split(|&b| b == b'\n').collect();
    if !at_eof {
        lines.pop();
    }
    let (mut lackey, mut text, mut seen) = (0usize, 0usize, 0usize);
    let mut first_bad: Option<(usize, &[u8])> = None;
    for (i, line) in lines.iter().enumerate() {
        if bytes_strip(line).is_empty() {
            continue;
        }
        if is_lackey_banner(line) {
            return Ok(Format::Lackey);
        }
        seen += 1;
        let l = parse_lackey_line(line);
        let t = parse_text_line(line);
        lackey += matches!(l, Ok(Some(_))) as usize;
        text += matches!(t, Ok(Some(_))) as usize;
        if l.is_err() && t.is_err() && first_bad.is_none() {
            first_bad = Some((i + 1, line));
        }
        if seen >= SNIFF_LINES {
            break;
        }
    }
    if lackey > 0 && lackey >= text {
        return Ok(Format::Lackey);
    }
    let Some((number, line)) = first_bad.filter(|_| text == 0) else {
        return Ok(Format::Text);
    };
    let shown = show(line);
    let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
    Err(TraceError {
        message: format!(
            "{name}:{number}: cannot detect the trace format: {} is neither a Lackey nor a text \
             record; pass --format (format= in Python), one of: {}",
            repr_str(shown.as_bytes()),
            names.join(", ")
        ),
        path: Some(name.to_owned()),
        line: Some(number as u64),
        content: Some(shown),
    })
}

/// The format of the trace `name` whose first decompressed bytes are `head`.
pub fn detect(name: &str, head: &[u8], at_eof: bool) -> TraceResult<Format> {
    if head.starts_with(b"\x93NUMPY") {
        return Ok(Format::Npy);
    }
    let ext = logical_ext(name);
    if ext == ".npy" {
        return Err(TraceError::new(
            name,
            format!(
                "{name}: not a .npy file (it does not start with the NumPy magic \\x93NUMPY); \
                 pass format= to read it as something else"
            ),
        ));
    }
    if ext == ".champsimtrace" {
        let last = name.rsplit('/').next().unwrap_or("").to_lowercase();
        return Ok(if last.contains("cloudsuite") {
            Format::ChampSimCloudsuite
        } else {
            Format::ChampSim
        });
    }
    if looks_like_drmemtrace(head) {
        return Ok(Format::DrMemtrace);
    }
    if RAW_EXTS.contains(&ext.as_str()) || !is_text(head) {
        return Ok(Format::Raw);
    }
    detect_text(name, head, at_eof)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions() {
        assert_eq!(logical_ext("a/b.champsimtrace.xz"), ".champsimtrace");
        assert_eq!(logical_ext("t.NPY.gz"), ".npy");
        assert_eq!(logical_ext(".hidden"), "");
        assert_eq!(logical_ext("x."), "");
        assert_eq!(logical_ext("<stdin>"), "");
    }

    #[test]
    fn detects_by_content() {
        assert_eq!(
            detect("t", b"I  0400d7d4,8\n L 1f,4\n", true),
            Ok(Format::Lackey)
        );
        assert_eq!(detect("t", b"R 1f\nW 20\n", true), Ok(Format::Text));
        assert_eq!(detect("t", b"\x00\x01\x02", true), Ok(Format::Raw));
        let err = detect("t", b"zz\n", true).unwrap_err();
        assert!(err
            .message
            .starts_with("t:1: cannot detect the trace format: 'zz'"));
        assert!(err.message.contains("--format"));
    }
}
