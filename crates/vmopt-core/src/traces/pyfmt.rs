//! Python's text rules, so messages match the reference reader byte for byte.
//!
//! Trace messages quote offending text with Python's `repr` and strip lines
//! with `str.strip()`; these helpers do the same on ASCII bytes.

/// Whether `b` is whitespace for Python's `str.strip()` and `re`'s `\s` (ASCII part).
#[inline]
pub fn is_space(b: u8) -> bool {
    matches!(b, 9..=13 | 28..=32)
}

/// Whether `b` is whitespace for `bytes.strip()` (no `\x1c`..`\x1f`).
#[inline]
pub fn is_bytes_space(b: u8) -> bool {
    matches!(b, 9..=13 | 32)
}

/// `s.strip()` of a Python `str` holding these bytes.
pub fn strip(s: &[u8]) -> &[u8] {
    strip_by(s, is_space)
}

/// `s.strip()` of Python `bytes`.
pub fn bytes_strip(s: &[u8]) -> &[u8] {
    strip_by(s, is_bytes_space)
}

fn strip_by(s: &[u8], space: fn(u8) -> bool) -> &[u8] {
    let start = s.iter().position(|&b| !space(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !space(b)).map_or(start, |i| i + 1);
    &s[start..end]
}

fn quoted(prefix: &str, s: &[u8]) -> String {
    let quote = if s.contains(&b'\'') && !s.contains(&b'"') {
        b'"'
    } else {
        b'\''
    };
    let mut out = String::with_capacity(s.len() + 3);
    out.push_str(prefix);
    out.push(quote as char);
    for &b in s {
        match b {
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            _ if b == quote => {
                out.push('\\');
                out.push(quote as char);
            }
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push(quote as char);
    out
}

/// `repr()` of a Python `str` of ASCII characters.
pub fn repr_str(s: &[u8]) -> String {
    quoted("", s)
}

/// `repr()` of Python `bytes`.
pub fn repr_bytes(s: &[u8]) -> String {
    quoted("b", s)
}

/// `line[:200].decode("ascii", errors="backslashreplace").strip()`: a line as shown in errors.
pub fn show(line: &[u8]) -> String {
    let cut = &line[..line.len().min(200)];
    let mut out = String::with_capacity(cut.len());
    for &b in cut {
        if b < 0x80 {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    let trimmed = strip(out.as_bytes());
    String::from_utf8_lossy(trimmed).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_follows_python() {
        assert_eq!(repr_str(b"ab"), "'ab'");
        assert_eq!(repr_str(b"a'b"), "\"a'b\"");
        assert_eq!(repr_str(b"a'\"b"), "'a\\'\"b'");
        assert_eq!(repr_str(b"\x7f\x01\t\\"), "'\\x7f\\x01\\t\\\\'");
        assert_eq!(repr_bytes(b"\x80z"), "b'\\x80z'");
    }

    #[test]
    fn strip_follows_python() {
        assert_eq!(strip(b" \x1c a \x1f"), b"a");
        assert_eq!(bytes_strip(b" \x1c a "), b"\x1c a");
        assert_eq!(strip(b"   "), b"");
        assert_eq!(show(b" \xff x "), "\\xff x");
    }
}
