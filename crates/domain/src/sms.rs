//! What an SMS costs: its encoding and number of segments, and transliteration to
//! GSM-7 so that accents do not double the price.
//!
//! GSM-7 (3GPP TS 23.038) packs 160 septets in one segment and 153 per segment of a
//! concatenated message; characters of the extension table take two septets and are
//! never split across segments. Anything outside GSM-7 forces UCS-2: 70 UTF-16 units in
//! one segment, 67 per concatenated segment, surrogate pairs never split.

/// The GSM-7 default alphabet.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\u{1b}ÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// The GSM-7 extension table: each costs an escape plus the character.
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

/// How an SMS is encoded on the air.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// The cost of one SMS text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Segments {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub units: usize,
    pub count: usize,
}

fn gsm7_width(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Counts the segments of `text`.
pub fn segments(text: &str) -> Segments {
    let widths: Option<Vec<usize>> = text.chars().map(gsm7_width).collect();
    let (encoding, widths, single, multi) = match widths {
        Some(w) => (Encoding::Gsm7, w, 160, 153),
        None => (
            Encoding::Ucs2,
            text.chars().map(char::len_utf16).collect(),
            70,
            67,
        ),
    };
    let units: usize = widths.iter().sum();
    let count = if units <= single {
        1
    } else {
        // Greedy packing: a character that does not fit whole starts the next segment.
        let mut count = 1;
        let mut used = 0;
        for w in widths {
            if used + w > multi {
                count += 1;
                used = 0;
            }
            used += w;
        }
        count
    };
    Segments {
        encoding,
        units,
        count,
    }
}

/// Rewrites `text` into GSM-7: accented letters lose their accent (ã→a, ç→c), typographic
/// quotes and dashes become plain ones, and anything else outside GSM-7 becomes `?`.
/// Letters GSM-7 already has (é, à, Ç, ü) are kept.
pub fn transliterate(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if gsm7_width(c).is_some() {
            out.push(c);
            continue;
        }
        let plain = match c {
            'á' | 'â' | 'ã' => "a",
            'Á' | 'Â' | 'Ã' | 'À' => "A",
            'ê' | 'ë' => "e",
            'Ê' | 'Ë' | 'È' => "E",
            'í' | 'î' | 'ï' => "i",
            'Í' | 'Î' | 'Ï' | 'Ì' => "I",
            'ó' | 'ô' | 'õ' => "o",
            'Ó' | 'Ô' | 'Õ' | 'Ò' => "O",
            'ú' | 'û' => "u",
            'Ú' | 'Û' | 'Ù' => "U",
            'ç' => "c",
            '“' | '”' | '„' => "\"",
            '‘' | '’' | '´' | '`' => "'",
            '–' | '—' => "-",
            '…' => "...",
            'ª' => "a",
            'º' => "o",
            '\u{a0}' | '\t' => " ",
            _ => "?",
        };
        out.push_str(plain);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gsm7_single_and_concatenated() {
        let one = "a".repeat(160);
        assert_eq!(
            segments(&one),
            Segments {
                encoding: Encoding::Gsm7,
                units: 160,
                count: 1
            }
        );
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"a".repeat(306)).count, 2);
        assert_eq!(segments(&"a".repeat(307)).count, 3);
    }

    #[test]
    fn the_extension_table_costs_two_septets_and_is_not_split() {
        let s = format!("{}€", "a".repeat(158));
        assert_eq!(segments(&s).units, 160);
        assert_eq!(segments(&s).count, 1);
        // 152 septets, then a two-septet character that cannot straddle the boundary.
        let s = format!("{}€{}", "a".repeat(152), "a".repeat(10));
        let seg = segments(&s);
        assert_eq!(seg.units, 164);
        assert_eq!(seg.count, 2);
        let s = format!("{}€{}", "a".repeat(152), "a".repeat(152));
        assert_eq!(segments(&s).count, 3);
    }

    #[test]
    fn portuguese_accents_force_ucs2() {
        let s = "Olá, sua fatura vence amanhã";
        let seg = segments(s);
        assert_eq!(seg.encoding, Encoding::Ucs2);
        assert_eq!(seg.units, s.chars().count());
        assert_eq!(segments(&"ã".repeat(70)).count, 1);
        assert_eq!(segments(&"ã".repeat(71)).count, 2);
        assert_eq!(segments(&"ã".repeat(134)).count, 2);
        assert_eq!(segments(&"ã".repeat(135)).count, 3);
        // An emoji is a surrogate pair: two units.
        assert_eq!(segments("😀").units, 2);
    }

    #[test]
    fn transliteration_reaches_gsm7_and_keeps_what_gsm7_has() {
        let t = transliterate("Olá João, cobrança – pague já… “obrigado” é à Ç");
        assert_eq!(t, "Ola Joao, cobranca - pague ja... \"obrigado\" é à Ç");
        assert_eq!(segments(&t).encoding, Encoding::Gsm7);
    }

    proptest! {
        #[test]
        fn transliteration_is_always_gsm7_and_never_costs_more(s in "\\PC{0,400}") {
            let t = transliterate(&s);
            prop_assert_eq!(segments(&t).encoding, Encoding::Gsm7);
            prop_assert!(segments(&t).units >= t.chars().count());
        }

        #[test]
        fn segment_count_bounds(s in "[a-zãé€]{0,500}") {
            let seg = segments(&s);
            let (single, per) = match seg.encoding { Encoding::Gsm7 => (160, 153), Encoding::Ucs2 => (70, 67) };
            if seg.units > single {
                prop_assert!(seg.count >= seg.units.div_ceil(per));
            } else {
                prop_assert_eq!(seg.count, 1);
            }
            prop_assert!(seg.count <= seg.units.div_ceil(per - 1).max(1));
        }
    }
}
