//! A checked LZO1X decompressor for kdump pages: every length and distance is bounded, so a
//! corrupt page is an error, never a panic or an allocation past the page.
//!
//! The format (as liblzo's lzo1x_decompress_safe reads it): an optional
//! first literal run, then instructions whose top bits pick a match kind —
//! M2 (`1LLDDDSS`/`01LDDDSS` + one byte: 3-8 bytes within 2 KiB), M3
//! (`001LLLLL` + two bytes: within 16 KiB), M4 (`0001HLLL` + two bytes:
//! 16-48 KiB; distance 0 ends the stream) and, below 16, a literal run
//! (after a match that copied no literals) or M1 (a 2- or 3-byte match).
//! Each match's low two bits `SS` give 0-3 literals that follow it.
//! `lzokay-native` (a dev-dependency) compresses the streams its tests
//! decode; it is not used here because it panics on corrupt input.

/// Why a stream did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LzoError {
    /// The input ended inside an instruction.
    Truncated,
    /// A match reaches back before the start of the output.
    LookBehind,
    /// The output would pass the given limit.
    TooLong,
}

impl std::fmt::Display for LzoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LzoError::Truncated => "the stream ends inside an instruction",
            LzoError::LookBehind => "a match reaches before the start of the page",
            LzoError::TooLong => "the stream decodes to more than a page",
        })
    }
}

struct Input<'a> {
    src: &'a [u8],
    pos: usize,
}

impl Input<'_> {
    fn byte(&mut self) -> Result<u8, LzoError> {
        let b = *self.src.get(self.pos).ok_or(LzoError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn le16(&mut self) -> Result<usize, LzoError> {
        Ok(usize::from(self.byte()?) | usize::from(self.byte()?) << 8)
    }

    /// `base` plus a run of zero bytes (255 each) and the non-zero byte that ends it.
    fn long_length(&mut self, base: usize) -> Result<usize, LzoError> {
        let mut n = base;
        loop {
            match self.byte()? {
                0 => n += 255,
                b => return Ok(n + usize::from(b)),
            }
        }
    }

    fn bytes(&mut self, n: usize) -> Result<&[u8], LzoError> {
        let end = self.pos.checked_add(n).ok_or(LzoError::Truncated)?;
        let s = self.src.get(self.pos..end).ok_or(LzoError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
}

fn literals(
    out: &mut Vec<u8>,
    inp: &mut Input<'_>,
    n: usize,
    limit: usize,
) -> Result<(), LzoError> {
    if out.len() + n > limit {
        return Err(LzoError::TooLong);
    }
    out.extend_from_slice(inp.bytes(n)?);
    Ok(())
}

fn copy_match(out: &mut Vec<u8>, dist: usize, len: usize, limit: usize) -> Result<(), LzoError> {
    if dist == 0 || dist > out.len() {
        return Err(LzoError::LookBehind);
    }
    if out.len() + len > limit {
        return Err(LzoError::TooLong);
    }
    let from = out.len() - dist;
    for i in 0..len {
        let b = out[from + i]; // overlapping copies repeat, as LZ77 means
        out.push(b);
    }
    Ok(())
}

/// Decode `src`, producing at most `limit` bytes.
pub fn decompress(src: &[u8], limit: usize) -> Result<Vec<u8>, LzoError> {
    let mut out = Vec::with_capacity(limit.min(1 << 16));
    let mut inp = Input { src, pos: 0 };
    let mut state = 0usize;
    match src.first() {
        Some(&b) if b >= 22 => {
            inp.pos = 1;
            literals(&mut out, &mut inp, usize::from(b) - 17, limit)?;
            state = 4;
        }
        Some(&b) if b >= 18 => {
            inp.pos = 1;
            state = usize::from(b) - 17;
            literals(&mut out, &mut inp, state, limit)?;
        }
        _ => {}
    }
    loop {
        let inst = usize::from(inp.byte()?);
        let (dist, len, next);
        if inst >= 64 {
            // M2
            let h = usize::from(inp.byte()?);
            dist = (h << 3) + ((inst >> 2) & 7) + 1;
            len = if inst >= 128 {
                5 + ((inst >> 5) & 3)
            } else {
                3 + ((inst >> 5) & 1)
            };
            next = inst & 3;
        } else if inst >= 32 {
            // M3
            let l = inst & 31;
            len = 2 + if l == 0 { inp.long_length(31)? } else { l };
            let d = inp.le16()?;
            dist = (d >> 2) + 1;
            next = d & 3;
        } else if inst >= 16 {
            // M4; distance 16384 exactly ends the stream
            let l = inst & 7;
            len = 2 + if l == 0 { inp.long_length(7)? } else { l };
            let d = inp.le16()?;
            let far = ((inst & 8) << 11) + (d >> 2);
            if far == 0 {
                return Ok(out);
            }
            dist = far + 16384;
            next = d & 3;
        } else if state == 0 {
            // A literal run of 4 or more.
            let l = inst & 15;
            let n = 3 + if l == 0 { inp.long_length(15)? } else { l };
            literals(&mut out, &mut inp, n, limit)?;
            state = 4;
            continue;
        } else {
            // M1: 2 bytes after 1-3 literals, 3 bytes (2 KiB further) after a literal run.
            let h = usize::from(inp.byte()?);
            let (extra, l) = if state == 4 { (2049, 3) } else { (1, 2) };
            dist = (h << 2) + (inst >> 2) + extra;
            len = l;
            next = inst & 3;
        }
        copy_match(&mut out, dist, len, limit)?;
        literals(&mut out, &mut inp, next, limit)?;
        state = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_what_lzokay_compresses_and_refuses_corruption() {
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let alphabet = 1 + (round % 40) as u64;
            let page: Vec<u8> = (0..4096)
                .map(|i| {
                    if round % 3 == 0 && i % 97 < 50 {
                        0
                    } else {
                        (next() % alphabet) as u8
                    }
                })
                .collect();
            let packed = lzokay_native::compress(&page).unwrap();
            assert_eq!(decompress(&packed, 4096).unwrap(), page, "round {round}");
            assert_eq!(decompress(&packed, 4095), Err(LzoError::TooLong));
            assert_eq!(
                decompress(&packed[..packed.len() - 3], 4096),
                Err(LzoError::Truncated)
            );
            let mut bad = packed.clone();
            let at = (next() as usize) % bad.len();
            bad[at] ^= 1 << (next() % 8);
            let _ = decompress(&bad, 4096); // any answer, never a panic
        }
        // Five literals, then an M3 copy 100 bytes back: before the start.
        let far = [22, 1, 2, 3, 4, 5, 0x21, 0x8c, 0x01, 0x11, 0, 0];
        assert_eq!(decompress(&far, 4096), Err(LzoError::LookBehind));
        let near = [22, 1, 2, 3, 4, 5, 0x21, 0x10, 0x00, 0x11, 0, 0]; // 3 bytes from 5 back
        assert_eq!(decompress(&near, 4096).unwrap(), [1, 2, 3, 4, 5, 1, 2, 3]);
        assert_eq!(decompress(&[], 4096), Err(LzoError::Truncated));
    }
}
