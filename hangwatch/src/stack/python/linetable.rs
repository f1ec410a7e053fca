//! The source line of a bytecode offset, from a code object's line table: what
//! `PyCode_Addr2Line` computes inside the interpreter, redone on a copy of the table.
use super::layout::LineTableFormat;

/// The line of the instruction at `byte_offset` (bytes from the start of the bytecode) of
/// a code object starting at `first_line`. A negative offset (a frame that has not run its
/// first instruction yet) is the first line, as in CPython; `None` when the table has no
/// line for that instruction or does not reach it.
pub fn line_of(
    format: LineTableFormat,
    table: &[u8],
    first_line: u32,
    byte_offset: i64,
) -> Option<u32> {
    let Ok(offset) = u64::try_from(byte_offset) else {
        return Some(first_line);
    };
    let line = match format {
        LineTableFormat::Lnotab => lnotab(table, first_line, offset),
        LineTableFormat::Pep626 => pep626(table, first_line, offset),
        LineTableFormat::Locations => locations(table, first_line, offset / 2),
    }?;
    u32::try_from(line).ok().filter(|&l| l > 0)
}

/// 3.9: pairs of (bytes advanced, signed lines advanced); the line of `offset` is the one
/// reached by the last pair that starts at or before it.
fn lnotab(table: &[u8], first_line: u32, offset: u64) -> Option<i64> {
    let mut line = i64::from(first_line);
    let mut address = 0u64;
    for pair in table.chunks_exact(2) {
        address += u64::from(pair[0]);
        if address > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    Some(line)
}

/// 3.10 (PEP 626): each pair covers `pair[0]` bytes with the line moved by `pair[1]`
/// (-128: these bytes have no line).
fn pep626(table: &[u8], first_line: u32, offset: u64) -> Option<i64> {
    let mut line = i64::from(first_line);
    let mut end = 0u64;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += u64::from(pair[0]);
        let delta = pair[1] as i8;
        let this_line = (delta != -128).then(|| {
            line += i64::from(delta);
            line
        });
        if (start..end).contains(&offset) {
            return this_line;
        }
    }
    None
}

/// 3.11+: entries of a header byte (bit 7 set, a 4-bit code, a length in code units minus
/// one) and code-dependent operands; see CPython's `Objects/locations.md`.
fn locations(table: &[u8], first_line: u32, unit: u64) -> Option<i64> {
    let mut bytes = table.iter().copied();
    let mut line = i64::from(first_line);
    let mut start = 0u64;
    while let Some(header) = bytes.next() {
        if header & 0x80 == 0 {
            return None; // lost track of the entries: no guess
        }
        let code = (header >> 3) & 15;
        let length = u64::from(header & 7) + 1;
        let has_line = match code {
            15 => false,
            14 => {
                line += signed_varint(&mut bytes)?;
                for _ in 0..3 {
                    varint(&mut bytes)?; // end line, column, end column
                }
                true
            }
            13 => {
                line += signed_varint(&mut bytes)?;
                true
            }
            10..=12 => {
                line += i64::from(code - 10);
                bytes.next()?;
                bytes.next()?;
                true
            }
            _ => {
                bytes.next()?;
                true
            }
        };
        if (start..start + length).contains(&unit) {
            return has_line.then_some(line);
        }
        start += length;
    }
    None
}

/// 6 bits per byte, least significant first, bit 6 set on all but the last.
fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut byte = bytes.next()?;
    let mut value = u64::from(byte & 63);
    let mut shift = 0;
    while byte & 64 != 0 {
        byte = bytes.next()?;
        shift += 6;
        if shift > 60 {
            return None;
        }
        value |= u64::from(byte & 63) << shift;
    }
    Some(value)
}

/// A varint whose low bit is the sign.
fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let value = varint(bytes)?;
    let magnitude = i64::try_from(value >> 1).ok()?;
    Some(if value & 1 != 0 {
        -magnitude
    } else {
        magnitude
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // The tables of the same function, compiled by pyenv's 3.9 to 3.13 (first line 3):
    //   def f(x):        # 3
    //       a = 1        # 4
    //       if x:        # 5
    //           b = 2    # 6
    //                    # 7
    //       return a     # 8
    // with what `dis` / `co_lines()` say each instruction's line is.
    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn lnotab_of_3_9() {
        let table = hex("0001040104010402");
        let lines: Vec<_> = [0, 2, 4, 6, 8, 10, 12, 14]
            .map(|o| line_of(LineTableFormat::Lnotab, &table, 3, o))
            .to_vec();
        let want = [4, 4, 5, 5, 6, 6, 8, 8].map(Some).to_vec();
        assert_eq!(lines, want);
    }

    #[test]
    fn pep626_table_of_3_10() {
        let table = hex("0401040104010402");
        for (offset, line) in [(0, 4), (2, 4), (4, 5), (8, 6), (12, 8), (14, 8)] {
            assert_eq!(
                line_of(LineTableFormat::Pep626, &table, 3, offset),
                Some(line),
                "offset {offset}"
            );
        }
        assert_eq!(line_of(LineTableFormat::Pep626, &table, 3, 16), None);
        // A range without a line.
        assert_eq!(line_of(LineTableFormat::Pep626, &hex("0280"), 3, 0), None);
    }

    #[test]
    fn location_tables_of_3_11_to_3_13() {
        let cases = [
            (
                "8000d808098041d80708f00001050ed80c0d8801e00b0c8048",
                &[
                    (0, 3),
                    (2, 4),
                    (4, 4),
                    (6, 5),
                    (8, 5),
                    (10, 6),
                    (12, 6),
                    (14, 8),
                    (16, 8),
                ][..],
            ),
            (
                "8000d808098041d90708d80c0d8801e00b0c8048",
                &[
                    (0, 3),
                    (2, 4),
                    (4, 4),
                    (6, 5),
                    (8, 5),
                    (10, 6),
                    (14, 8),
                    (16, 8),
                ][..],
            ),
            (
                "8000d808098041de0708d80c0d8801e00b0c8048",
                &[(0, 3), (2, 4), (6, 5), (18, 5), (20, 6), (24, 8), (26, 8)][..],
            ),
        ];
        for (table, lines) in cases {
            let table = hex(table);
            for &(offset, line) in lines {
                assert_eq!(
                    line_of(LineTableFormat::Locations, &table, 3, offset),
                    Some(line),
                    "table {table:02x?} offset {offset}"
                );
            }
        }
    }

    #[test]
    fn edges_are_the_first_line_or_nothing() {
        let table = hex("8000");
        assert_eq!(line_of(LineTableFormat::Locations, &table, 3, -2), Some(3));
        assert_eq!(line_of(LineTableFormat::Locations, &table, 3, 100), None);
        // No location (code 15), then garbage that is not an entry header.
        assert_eq!(line_of(LineTableFormat::Locations, &hex("f8"), 3, 0), None);
        assert_eq!(line_of(LineTableFormat::Locations, &hex("00"), 3, 0), None);
        // A long entry moving the line back: svarint 5 is -2.
        assert_eq!(
            line_of(LineTableFormat::Locations, &hex("8000f005000000"), 10, 2),
            Some(8)
        );
    }
}
