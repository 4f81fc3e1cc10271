//! Brazilian tax documents: CPF (people) and CNPJ (companies), with check digits.
//!
//! CNPJ accepts the alphanumeric form in force since July 2026 (IN RFB 2.229/2024): the
//! first twelve characters may be `0-9A-Z`, each valued as its ASCII code minus 48, and
//! the two check digits stay numeric with the same modulo-11 weights.

use std::fmt;

/// A verified CPF or CNPJ, stored without punctuation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Document {
    Cpf(String),
    Cnpj(String),
}

/// Why a document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("CPF check digits do not verify")]
    InvalidCpf,
    #[error("CNPJ check digits do not verify")]
    InvalidCnpj,
    #[error("document must be a CPF (11 digits) or a CNPJ (14 characters)")]
    NotADocument,
}

impl Document {
    /// Accepts the usual punctuation (`529.982.247-25`, `11.222.333/0001-81`).
    pub fn parse(input: &str) -> Result<Document, DocumentError> {
        let cleaned: String = input
            .chars()
            .filter(|c| !matches!(c, '.' | '-' | '/' | ' '))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let all_digits = cleaned.bytes().all(|b| b.is_ascii_digit());
        match cleaned.len() {
            11 if all_digits => {
                if cpf_valid(cleaned.as_bytes()) {
                    Ok(Document::Cpf(cleaned))
                } else {
                    Err(DocumentError::InvalidCpf)
                }
            }
            14 if cleaned.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                if cnpj_valid(cleaned.as_bytes()) {
                    Ok(Document::Cnpj(cleaned))
                } else {
                    Err(DocumentError::InvalidCnpj)
                }
            }
            _ => Err(DocumentError::NotADocument),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Document::Cpf(s) | Document::Cnpj(s) => s,
        }
    }

    /// A person: consumer-protection law (CDC) applies to their debts.
    pub fn is_consumer(&self) -> bool {
        matches!(self, Document::Cpf(_))
    }
}

impl fmt::Display for Document {
    /// Masked, for anything a person may read in a log: only the last two digits show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_str();
        let tail = s.get(s.len().saturating_sub(2)..).unwrap_or("");
        let kind = match self {
            Document::Cpf(_) => "cpf",
            Document::Cnpj(_) => "cnpj",
        };
        write!(f, "{kind}:***{tail}")
    }
}

/// A valid CPF made from `n` (its last nine digits, check digits computed), for demos,
/// tests and benchmarks that need many distinct debtors. Never a real person's on
/// purpose, but shaped like one.
pub fn example_cpf(n: u64) -> String {
    let mut d: Vec<u8> = format!("{:09}", n % 1_000_000_000).into_bytes();
    if d.iter().all(|b| *b == d[0]) {
        d[8] = b'0' + (d[8] - b'0' + 1) % 10;
    }
    for len in [9usize, 10] {
        d.push(cpf_check_digit(&d[..len]));
    }
    String::from_utf8(d).unwrap_or_default()
}

/// A valid head-office CNPJ made from `n` (eight digits, branch 0001), like
/// [`example_cpf`].
pub fn example_cnpj(n: u64) -> String {
    let mut d: Vec<u8> = format!("{:08}0001", n % 100_000_000).into_bytes();
    for weights in [&CNPJ_W1[..], &CNPJ_W2[..]] {
        d.push(cnpj_check_digit(&d, weights));
    }
    String::from_utf8(d).unwrap_or_default()
}

const CNPJ_W1: [u32; 12] = [5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];
const CNPJ_W2: [u32; 13] = [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2];

fn digit(b: u8) -> u32 {
    u32::from(b.saturating_sub(b'0'))
}

/// The CPF check digit (as an ASCII digit) that follows `prefix` (9 or 10 digits):
/// weights count down to 2, remainder 10 becomes 0.
fn cpf_check_digit(prefix: &[u8]) -> u8 {
    let sum: u32 = prefix
        .iter()
        .rev()
        .zip(2u32..)
        .map(|(b, w)| digit(*b) * w)
        .sum();
    let r = (sum * 10) % 11;
    b'0' + if r == 10 { 0 } else { r as u8 }
}

/// The CNPJ check digit (as an ASCII digit) for the characters under `weights`.
fn cnpj_check_digit(d: &[u8], weights: &[u32]) -> u8 {
    let sum: u32 = d.iter().zip(weights).map(|(b, w)| digit(*b) * w).sum();
    let r = sum % 11;
    b'0' + if r < 2 { 0 } else { (11 - r) as u8 }
}

fn cpf_valid(d: &[u8]) -> bool {
    if d.iter().all(|b| *b == d[0]) {
        // 000.000.000-00, 111.111.111-11, ... pass the arithmetic but are not issued.
        return false;
    }
    cpf_check_digit(&d[..9]) == d[9] && cpf_check_digit(&d[..10]) == d[10]
}

fn cnpj_valid(d: &[u8]) -> bool {
    if !d[12].is_ascii_digit() || !d[13].is_ascii_digit() {
        return false;
    }
    if d.iter().all(|b| *b == d[0]) {
        return false;
    }
    cnpj_check_digit(d, &CNPJ_W1) == d[12] && cnpj_check_digit(d, &CNPJ_W2) == d[13]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_valid_documents_with_punctuation() {
        assert_eq!(
            Document::parse("529.982.247-25"),
            Ok(Document::Cpf("52998224725".into()))
        );
        assert_eq!(
            Document::parse("11.222.333/0001-81"),
            Ok(Document::Cnpj("11222333000181".into()))
        );
        // Alphanumeric CNPJ, the example published by the Receita Federal.
        assert_eq!(
            Document::parse("12.ABC.345/01DE-35"),
            Ok(Document::Cnpj("12ABC34501DE35".into()))
        );
    }

    #[test]
    fn refuses_bad_check_digits_and_shapes() {
        assert_eq!(
            Document::parse("529.982.247-26"),
            Err(DocumentError::InvalidCpf)
        );
        assert_eq!(
            Document::parse("111.111.111-11"),
            Err(DocumentError::InvalidCpf)
        );
        assert_eq!(
            Document::parse("11.222.333/0001-82"),
            Err(DocumentError::InvalidCnpj)
        );
        assert_eq!(Document::parse("12345"), Err(DocumentError::NotADocument));
        assert_eq!(
            Document::parse("5299822472A"),
            Err(DocumentError::NotADocument)
        );
    }

    #[test]
    fn display_masks_all_but_two_digits() {
        let d = Document::parse("52998224725").unwrap();
        assert_eq!(d.to_string(), "cpf:***25");
    }

    #[test]
    fn generated_examples_verify() {
        for n in [0, 1, 111_111_111, 529_982_247, 999_999_999, 12_345] {
            assert!(Document::parse(&example_cpf(n)).is_ok(), "{n}");
            assert!(
                matches!(Document::parse(&example_cnpj(n)), Ok(Document::Cnpj(_))),
                "{n}"
            );
        }
        assert_eq!(example_cpf(529_982_247), "52998224725");
        assert_eq!(example_cnpj(11_222_333), "11222333000181");
    }

    proptest! {
        #[test]
        fn every_generated_cpf_verifies_and_a_changed_check_digit_breaks_it(
            base in proptest::array::uniform9(0u8..10),
            pos in 9usize..11,
            delta in 1u8..10,
        ) {
            // The mapping of remainder 10 to 0 lets some data-digit changes verify,
            // so only changes of the check digits themselves are always detected.
            prop_assume!(base.iter().any(|x| *x != base[0]));
            let n = base.iter().fold(0u64, |acc, d| acc * 10 + u64::from(*d));
            let cpf = example_cpf(n);
            prop_assert!(Document::parse(&cpf).is_ok());
            let mut bytes = cpf.into_bytes();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let mutated = String::from_utf8(bytes).unwrap();
            prop_assert!(Document::parse(&mutated).is_err());
        }

        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = Document::parse(&s);
        }
    }
}
