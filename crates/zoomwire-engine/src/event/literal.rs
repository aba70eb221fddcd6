//! JSON string literals read by hand: the end found and the text unescaped
//! in one walk, eight bytes at a time between escapes, refused exactly
//! where serde_json refuses them (checked against it by the tests below).
//!
//! Two readers on the hot path share it: the WebSocket envelope, whose
//! `content` is an event as a JSON string with an escape every few bytes
//! (`zoom::frame`), and the event tree ([`super::tree`]), whose strings
//! rarely have any.

use std::borrow::Cow;

/// The JSON string literal `text` starts with: its text, unescaped, and the
/// bytes the literal takes (quotes included). Refused as serde_json refuses
/// it: no opening or closing quote, a raw control character, an escape
/// that is not JSON's, a `\u` without four hex digits, an escaped lone
/// surrogate.
///
/// A literal without escapes is borrowed. One with escapes is unescaped
/// into a buffer with room for `room` bytes at first, which grows if it
/// must: a caller that reads one literal filling `text` passes
/// `text.len()` (unescaping never lengthens), one that reads many small
/// ones a small number.
pub(crate) fn string_literal(
    text: &str,
    room: usize,
) -> Result<(Cow<'_, str>, usize), &'static str> {
    const UNCLOSED: &str = "a string is not closed";
    let bytes = text.as_bytes();
    if bytes.first() != Some(&b'"') {
        return Err("a string was expected");
    }
    // Most literals (keys, names) end before any escape: borrowed.
    let mut at = plain_from(bytes, 1);
    match bytes.get(at) {
        Some(b'"') => return Ok((Cow::Borrowed(&text[1..at]), at + 1)),
        Some(_) => {}
        None => return Err(UNCLOSED),
    }
    // Room to spare: a turn of the loop writes at most eleven bytes (seven
    // plain ones, then a character of four).
    const SPARE: usize = 16;
    let mut out = vec![0; room.max(at).min(bytes.len()) + SPARE];
    out[..at - 1].copy_from_slice(&bytes[1..at]);
    let mut written = at - 1;
    loop {
        if written + SPARE > out.len() {
            out.resize(out.len() * 2, 0);
        }
        // Eight bytes at a time up to the next byte that is not plain
        // (copied whole, then counted up to that byte).
        if let Some(chunk) = word_at(bytes, at) {
            out[written..written + 8].copy_from_slice(&chunk);
            let plain = first_not_plain(u64::from_le_bytes(chunk));
            at += plain;
            written += plain;
            if plain == 8 {
                continue;
            }
            // The envelope's escape, `\"`, every few bytes: taken here.
            if plain < 7 && chunk[plain] == b'\\' && chunk[plain + 1] == b'"' {
                out[written] = b'"';
                at += 2;
                written += 1;
                continue;
            }
        }
        let byte = *bytes.get(at).ok_or(UNCLOSED)?;
        if is_plain(byte) {
            out[written] = byte;
            written += 1;
            at += 1;
            continue;
        }
        if byte == b'"' {
            break;
        }
        if byte != b'\\' {
            return Err("a control character in a string");
        }
        let unescaped = match *bytes.get(at + 1).ok_or(UNCLOSED)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let (ch, len) =
                    unicode_escape(&text[at + 1..]).ok_or("a \\u escape that is no character")?;
                written += ch.encode_utf8(&mut out[written..written + 4]).len();
                at += 1 + len;
                continue;
            }
            _ => return Err("an escape that is not JSON's"),
        };
        out[written] = unescaped;
        written += 1;
        at += 2;
    }
    out.truncate(written);
    // Valid text with some ASCII bytes replaced, and whole characters added.
    let string = String::from_utf8(out).map_err(|_| "invalid UTF-8")?;
    Ok((Cow::Owned(string), at + 1))
}

/// Where the run of plain bytes ([`is_plain`]) that starts at `at` ends:
/// the index of the first byte that is not plain, or the length.
fn plain_from(bytes: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = word_at(bytes, at) {
        let plain = first_not_plain(u64::from_le_bytes(chunk));
        at += plain;
        if plain < 8 {
            return at;
        }
    }
    at + bytes[at..]
        .iter()
        .position(|&b| !is_plain(b))
        .unwrap_or(bytes.len() - at)
}

/// The eight bytes at `at`, when there are eight.
fn word_at(bytes: &[u8], at: usize) -> Option<[u8; 8]> {
    bytes.get(at..at + 8)?.try_into().ok()
}

/// How many of the eight bytes of `word` (little-endian: the first byte is
/// the lowest) come before the first one that is not plain ([`is_plain`]):
/// a quote, a backslash or a byte below 0x20. The word tricks serde_json
/// uses too: each test flags its lowest matching byte exactly (and may flag
/// bytes above it wrongly, which the lowest set bit never sees).
fn first_not_plain(word: u64) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let quote = zero(word ^ (ONES * u64::from(b'"')));
    let backslash = zero(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    ((quote | backslash | control).trailing_zeros() / 8) as usize
}

/// Whether a byte stands for itself in a JSON string: not a quote, a
/// backslash or a control character. A table, as serde_json's.
fn is_plain(byte: u8) -> bool {
    const PLAIN: [bool; 256] = {
        let mut plain = [true; 256];
        let mut control = 0;
        while control < 0x20 {
            plain[control] = false;
            control += 1;
        }
        plain[b'"' as usize] = false;
        plain[b'\\' as usize] = false;
        plain
    };
    PLAIN[usize::from(byte)]
}

/// The character of `uXXXX` (or of a surrogate pair `uXXXX\\uXXXX`) at the
/// start of `escape`, and the bytes it took.
fn unicode_escape(escape: &str) -> Option<(char, usize)> {
    // Four hex digits: `from_str_radix` alone would take a sign too.
    let hex = |at: usize| {
        let digits = escape.get(at..at + 4)?;
        digits
            .bytes()
            .all(|b| b.is_ascii_hexdigit())
            .then(|| u32::from_str_radix(digits, 16).ok())?
    };
    let unit = hex(1)?;
    if !(0xD800..0xE000).contains(&unit) {
        return Some((char::from_u32(unit)?, 5));
    }
    if unit >= 0xDC00 || escape.get(5..7) != Some("\\u") {
        return None;
    }
    let low = hex(7).filter(|low| (0xDC00..0xE000).contains(low))?;
    let ch = char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00))?;
    Some((ch, 11))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `literal` read by [`string_literal`] when it is one whole literal,
    /// as serde_json takes a whole text: one that ends early is refused.
    /// Read with room for the whole text and with none: the same.
    fn whole_literal(literal: &str) -> Option<String> {
        let read = |capacity| {
            string_literal(literal, capacity)
                .ok()
                .filter(|(_, length)| *length == literal.len())
                .map(|(text, _)| text.into_owned())
        };
        let text = read(literal.len());
        assert_eq!(read(0), text, "{literal}");
        text
    }

    #[test]
    fn an_escaped_quote_is_read_wherever_it_falls_in_a_word() {
        // `\"` at every place in the eight bytes read at once, then what
        // may follow it there: plain bytes, another escape, the closing
        // quote, a raw control character (refused), the end of the text.
        let after = [
            "abcdefghij",
            "ab",
            r#"\"xy"#,
            r"\n\t",
            "",
            "a\u{1}b",
            r"\u00e9z",
        ];
        for before in 0..16 {
            for after in after {
                let body = format!("{}\\\"{after}", "p".repeat(before));
                for literal in [format!("\"{body}\""), format!("\"{body}")] {
                    let expected = serde_json::from_str::<String>(&literal).ok();
                    assert_eq!(whole_literal(&literal), expected, "{literal}");
                }
            }
        }
    }

    #[test]
    fn string_literals_are_read_as_serde_json_reads_them() {
        // Runs of text between JSON's escapes, each code unit also written
        // as `\uXXXX` in either case: any unit (lone surrogates included) or
        // a surrogate pair; and what serde_json refuses in a string.
        let mut rng = fastrand::Rng::with_seed(10);
        let piece = |rng: &mut fastrand::Rng| match rng.u8(0..8) {
            0 => [r#"\""#, r"\\", r"\/", r"\b", r"\f", r"\n", r"\r", r"\t"][rng.usize(0..8)]
                .to_string(),
            1 => format!(r"\u{:04x}", rng.u32(0..0x10000)),
            2 => format!(
                r"\u{:04X}\u{:04x}",
                rng.u32(0xD800..0xDC00),
                rng.u32(0xDC00..0xE000)
            ),
            3 => "é€😀".to_string(),
            4 if rng.u8(0..8) == 0 => {
                let odd = [
                    r"\x", r"\u12", r"\u12g4", r"\u+12a", r"\u-12a", "\u{1}", "\u{1f}", "\u{7f}",
                    "\n", r"\",
                ];
                odd[rng.usize(0..odd.len())].to_string()
            }
            _ => "plain text".chars().take(rng.usize(0..11)).collect(),
        };
        let (mut refused, mut read) = (0, 0);
        for _ in 0..50_000 {
            let body: String = (0..rng.usize(0..8)).map(|_| piece(&mut rng)).collect();
            let literal = format!("\"{body}\"");
            let expected = serde_json::from_str::<String>(&literal).ok();
            refused += usize::from(expected.is_none());
            let got = whole_literal(&literal);
            read += usize::from(got.is_some());
            assert_eq!(got, expected, "{literal}");
            // What follows a literal does not change it.
            if let Some(expected) = expected {
                let after = [r#","k":"v"}"#, " ]", "\""][rng.usize(0..3)];
                let followed = format!("{literal}{after}");
                let (text, length) = string_literal(&followed, followed.len()).unwrap();
                assert_eq!((&*text, length), (&*expected, literal.len()), "{literal}");
            }
        }
        assert!(
            refused > 2_000 && read > 30_000,
            "{refused} refused, {read} read"
        );
        assert!(matches!(
            string_literal(r#""no escapes","#, 0),
            Ok((Cow::Borrowed("no escapes"), 12))
        ));
        for unclosed in ["", "x", r#"""#, r#""abc"#, r#""ab\""#, r#""ab\"#] {
            assert!(string_literal(unclosed, 0).is_err(), "{unclosed}");
        }
    }

    #[test]
    fn a_word_is_scanned_as_its_bytes_one_by_one() {
        let mut rng = fastrand::Rng::with_seed(8);
        let edges = [
            b'"', b'\\', 0x1f, 0, 0x20, 0x21, 0x7f, 0x80, 0xff, 0x5b, 0x5d,
        ];
        for _ in 0..200_000 {
            let bytes: [u8; 8] = std::array::from_fn(|_| match rng.u8(0..3) {
                0 => edges[rng.usize(0..edges.len())],
                _ => rng.u8(..),
            });
            let expected = bytes.iter().position(|&b| !is_plain(b)).unwrap_or(8);
            assert_eq!(
                first_not_plain(u64::from_le_bytes(bytes)),
                expected,
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn escapes_at_every_offset_of_a_long_literal_are_read() {
        let escapes = [
            r#"\""#,
            r"\u00e9",
            r"\ud83d\ude00",
            "é",
            "\u{1}",
            r"\q",
            r"\",
        ];
        for escape in escapes {
            for offset in 0..24 {
                let literal = format!("\"{}{escape}{}\"", "a".repeat(offset), "b".repeat(30));
                let expected = serde_json::from_str::<String>(&literal).ok();
                assert_eq!(whole_literal(&literal), expected, "{literal}");
            }
        }
    }
}
