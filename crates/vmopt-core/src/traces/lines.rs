//! The line formats: Valgrind Lackey and vmopt's text format.
//!
//! Both read the input in blocks of [`BLOCK_BYTES`] and parse whole lines,
//! keeping an incomplete last line for the next block. A line longer than
//! [`MAX_LINE_BYTES`] that fills a whole block is reported and skipped to
//! its end, so memory stays bounded even for input without newlines. Line
//! numbers are exact across blocks. The grammar and every message are
//! those of the Python reference parser (`tests/reference/traces`).
//!
//! Text: `[KIND sep] ADDRESS`, KIND one of R W X (read, write, fetch) or
//! I L S M (as in Lackey), any case; sep is whitespace and/or commas;
//! ADDRESS is hex with an optional `0x`; `#` starts a comment.
//!
//! Lackey: `I  addr,size` (fetch), ` L addr,size` (read), ` S addr,size`
//! (write), ` M addr,size` (modify, one write); `==PID==` banners and
//! `SB addr` superblock lines are skipped.

use super::pyfmt::{is_space, repr_bytes, repr_str, show, strip};
use super::source::Source;
use super::{Chunk, Ctx, Decode, Format, TraceResult, FETCH, READ, WRITE};

/// Bytes read per block.
pub const BLOCK_BYTES: usize = 1 << 20;
/// Longest line kept in memory while looking for its end.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Why a line is not a record; completes `file:line: ...`.
pub type Reason = String;

/// Nibble value of each byte, 0xff for bytes that are not hex digits.
const NIBBLE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The canonical Lackey record (`I  hex,size` or ` K hex,size`, at most 16
/// hex and 6 size digits), parsed in one pass; `None` sends the line to
/// [`parse_lackey_line`], which accepts every line this accepts, with the same result.
#[inline]
fn fast_lackey(line: &[u8]) -> Option<(u64, u8)> {
    let (kind, rest) = match line {
        [b'I', b' ', b' ', rest @ ..] => (FETCH, rest),
        [b' ', k, b' ', rest @ ..] => (
            match k {
                b'L' => READ,
                b'S' | b'M' => WRITE,
                _ => return None,
            },
            rest,
        ),
        _ => return None,
    };
    let mut value: u64 = 0;
    let mut i = 0;
    while i < rest.len() && i <= 16 {
        let nib = NIBBLE[rest[i] as usize];
        if nib == 0xff {
            break;
        }
        value = (value << 4) | nib as u64;
        i += 1;
    }
    if i == 0 || i > 16 || rest.get(i) != Some(&b',') {
        return None;
    }
    let size = &rest[i + 1..];
    if size.is_empty() || size.len() > 6 || !size.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some((value, kind))
}

fn hex_value(token: &[u8]) -> Result<u64, Reason> {
    let digits = if token.len() >= 2 && token[0] == b'0' && (token[1] | 0x20) == b'x' {
        &token[2..]
    } else {
        token
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!("cannot parse {} as an address", repr_str(token)));
    }
    let mut value: u64 = 0;
    for &d in digits {
        let nib = NIBBLE[d as usize] as u64;
        if value >> 60 != 0 {
            return Err(format!(
                "address {} does not fit in 64 bits",
                repr_str(token)
            ));
        }
        value = (value << 4) | nib;
    }
    Ok(value)
}

fn check_ascii(line: &[u8]) -> Result<(), Reason> {
    if line.is_ascii() {
        Ok(())
    } else {
        Err(format!(
            "non-ASCII bytes in line {}",
            repr_bytes(&line[..line.len().min(80)])
        ))
    }
}

fn text_kind(token: &[u8]) -> Option<u8> {
    match token {
        [b] => match b.to_ascii_uppercase() {
            b'R' | b'L' => Some(READ),
            b'W' | b'S' | b'M' => Some(WRITE),
            b'X' | b'I' => Some(FETCH),
            _ => None,
        },
        _ => None,
    }
}

/// Parse one text-format line: `Ok(None)` for blanks and comments.
pub fn parse_text_line(line: &[u8]) -> Result<Option<(u64, u8)>, Reason> {
    check_ascii(line)?;
    let body = match line.iter().position(|&b| b == b'#') {
        Some(cut) => &line[..cut],
        None => line,
    };
    let text = strip(body);
    if text.is_empty() {
        return Ok(None);
    }
    // re.split(r"[\s,]+", text): at most three tokens matter.
    let sep = |b: u8| is_space(b) || b == b',';
    let mut tokens: [&[u8]; 2] = [&[], &[]];
    let mut count = 0;
    let mut i = 0;
    let n = text.len();
    loop {
        let start = i;
        while i < n && !sep(text[i]) {
            i += 1;
        }
        if count < 2 {
            tokens[count] = &text[start..i];
        }
        count += 1;
        if i == n || count > 2 {
            break;
        }
        while i < n && sep(text[i]) {
            i += 1;
        }
        if i == n {
            // A trailing separator run leaves one empty token.
            if count < 2 {
                tokens[count] = &[];
            }
            count += 1;
            break;
        }
    }
    match count {
        1 => Ok(Some((hex_value(tokens[0])?, READ))),
        2 => {
            let kind = text_kind(tokens[0]).ok_or_else(|| {
                format!(
                    "unknown access kind {} (expected one of R W X I L S M)",
                    repr_str(tokens[0])
                )
            })?;
            Ok(Some((hex_value(tokens[1])?, kind)))
        }
        _ => Err(format!("expected '[KIND] ADDRESS', got {}", repr_str(text))),
    }
}

/// Whether `text` (already stripped) starts with a Valgrind `==PID==` banner.
fn is_banner(text: &[u8]) -> bool {
    if !text.starts_with(b"==") {
        return false;
    }
    let digits = text[2..].iter().take_while(|b| b.is_ascii_digit()).count();
    digits > 0 && text[2 + digits..].starts_with(b"==")
}

/// `bytes.strip()` then the banner test, as format detection does it.
pub fn is_lackey_banner(line: &[u8]) -> bool {
    is_banner(super::pyfmt::bytes_strip(line))
}

fn skip_space(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && is_space(text[i]) {
        i += 1;
    }
    i
}

fn is_superblock(text: &[u8]) -> bool {
    if !text.starts_with(b"SB") {
        return false;
    }
    let i = skip_space(text, 2);
    i > 2 && i < text.len() && text[i..].iter().all(u8::is_ascii_hexdigit)
}

/// Parse one Lackey line: `Ok(None)` for banners, `SB` lines and blanks.
pub fn parse_lackey_line(line: &[u8]) -> Result<Option<(u64, u8)>, Reason> {
    check_ascii(line)?;
    let text = strip(line);
    if text.is_empty() || is_banner(text) || is_superblock(text) {
        return Ok(None);
    }
    let bad = || format!("cannot parse {} as a Lackey record", repr_str(text));
    let kind = match text[0] {
        b'I' => FETCH,
        b'L' => READ,
        b'S' | b'M' => WRITE,
        _ => return Err(bad()),
    };
    let a = skip_space(text, 1);
    if a == 1 {
        return Err(bad());
    }
    let comma = a + text[a..]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if comma == a || comma >= text.len() || text[comma] != b',' {
        return Err(bad());
    }
    let size = skip_space(text, comma + 1);
    if size == text.len() || !text[size..].iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    Ok(Some((hex_value(&text[a..comma])?, kind)))
}

/// Reads Lackey or text traces block by block.
pub struct LineDecoder {
    src: Source,
    lackey: bool,
    block_bytes: usize,
    max_line_bytes: usize,
    data: Vec<u8>,
    block: Vec<u8>,
    carry: Vec<u8>,
    lines_before: u64,
    discarding: bool,
    done: bool,
}

impl LineDecoder {
    /// A decoder for `format` (Lackey or text) over `src`, reading
    /// `block_bytes` at a time and giving up on lines longer than `max_line_bytes`.
    pub fn new(
        src: Source,
        format: Format,
        block_bytes: usize,
        max_line_bytes: usize,
    ) -> LineDecoder {
        LineDecoder {
            src,
            lackey: format == Format::Lackey,
            block_bytes,
            max_line_bytes,
            data: Vec::new(),
            block: Vec::new(),
            carry: Vec::new(),
            lines_before: 0,
            discarding: false,
            done: false,
        }
    }

    fn parse_block(&self, block: &[u8], out: &mut Chunk, ctx: &Ctx) -> TraceResult<()> {
        let parse = if self.lackey {
            parse_lackey_line
        } else {
            parse_text_line
        };
        let mut number = self.lines_before;
        let mut start = 0;
        let ends = memchr::memchr_iter(b'\n', block).chain(std::iter::once(block.len()));
        for end in ends {
            let raw = &block[start..end];
            start = end + 1;
            number += 1;
            let line = match raw {
                [rest @ .., b'\r'] => rest,
                _ => raw,
            };
            if line.is_empty() {
                continue;
            }
            if self.lackey {
                if let Some((addr, kind)) = fast_lackey(line) {
                    out.push(addr, kind, 0, 0);
                    continue;
                }
            }
            match parse(line) {
                Ok(Some((addr, kind))) => out.push(addr, kind, 0, 0),
                Ok(None) => {}
                Err(reason) => ctx.bad(
                    format!("{}:{number}: {reason}", ctx.name),
                    Some(number),
                    Some(show(line)),
                )?,
            }
        }
        Ok(())
    }
}

impl Decode for LineDecoder {
    fn next_batch(&mut self, out: &mut Chunk, _hint: usize, ctx: &Ctx) -> TraceResult<bool> {
        out.clear();
        if self.done {
            return Ok(false);
        }
        if self.data.len() != self.block_bytes {
            self.data = vec![0; self.block_bytes];
        }
        loop {
            let got = self.src.read(&mut self.data)?;
            if got == 0 {
                self.done = true;
                if !self.carry.is_empty() {
                    let mut last = std::mem::take(&mut self.carry);
                    last.push(b'\n');
                    self.parse_block(&last, out, ctx)?;
                }
                return Ok(false);
            }
            let mut data = &self.data[..got];
            if self.discarding {
                let Some(nl) = memchr::memchr(b'\n', data) else {
                    continue;
                };
                self.discarding = false;
                self.lines_before += 1;
                data = &data[nl + 1..];
            }
            let Some(cut) = memchr::memrchr(b'\n', data) else {
                self.carry.extend_from_slice(data);
                if self.carry.len() > self.max_line_bytes {
                    let number = self.lines_before + 1;
                    let fmt = if self.lackey { "lackey" } else { "text" };
                    ctx.bad(
                        format!(
                            "{}:{number}: line longer than {} bytes (is this really a {fmt} trace?)",
                            ctx.name, self.max_line_bytes
                        ),
                        Some(number),
                        Some(show(&self.carry)),
                    )?;
                    self.carry = Vec::new();
                    self.discarding = true;
                }
                continue;
            };
            let mut block = std::mem::take(&mut self.block);
            block.clear();
            block.extend_from_slice(&self.carry);
            block.extend_from_slice(&data[..=cut]);
            self.carry.clear();
            self.carry.extend_from_slice(&data[cut + 1..]);
            // The block ends with '\n': split yields one empty piece after it.
            let result = self.parse_block(&block[..block.len() - 1], out, ctx);
            self.lines_before += memchr::memchr_iter(b'\n', &block).count() as u64;
            self.block = block;
            result?;
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fast_lackey_agrees_with_the_general_parser(
            line in proptest::string::bytes_regex("(I  | L | S | M |  L |I |X )[0-9a-fA-Fg]{0,18}(,| ,|)[0-9 x]{0,8}").unwrap()
        ) {
            if let Some(rec) = fast_lackey(&line) {
                prop_assert_eq!(parse_lackey_line(&line), Ok(Some(rec)));
            }
        }
    }

    #[test]
    fn text_lines() {
        assert_eq!(parse_text_line(b"W 0x1f"), Ok(Some((0x1f, WRITE))));
        assert_eq!(parse_text_line(b"  1f  # c"), Ok(Some((0x1f, READ))));
        assert_eq!(parse_text_line(b"x,,\t10"), Ok(Some((0x10, FETCH))));
        assert_eq!(parse_text_line(b"# only"), Ok(None));
        assert_eq!(
            parse_text_line(b"Q 1"),
            Err("unknown access kind 'Q' (expected one of R W X I L S M)".into())
        );
        assert_eq!(
            parse_text_line(b"R 1,"),
            Err("expected '[KIND] ADDRESS', got 'R 1,'".into())
        );
        assert_eq!(
            parse_text_line(b"R ,"),
            Err("cannot parse '' as an address".into())
        );
        assert_eq!(
            parse_text_line(b"10000000000000000"),
            Err("address '10000000000000000' does not fit in 64 bits".into())
        );
        assert_eq!(
            parse_text_line(b"00000000000000000001"),
            Ok(Some((1, READ)))
        );
    }

    #[test]
    fn lackey_lines() {
        assert_eq!(
            parse_lackey_line(b"I  0400d7d4,8"),
            Ok(Some((0x0400d7d4, FETCH)))
        );
        assert_eq!(parse_lackey_line(b" M 1f, 4"), Ok(Some((0x1f, WRITE))));
        assert_eq!(parse_lackey_line(b"==123== hello"), Ok(None));
        assert_eq!(parse_lackey_line(b"SB 4000"), Ok(None));
        assert_eq!(
            parse_lackey_line(b" L 1f"),
            Err("cannot parse 'L 1f' as a Lackey record".into())
        );
    }
}
