//! Contact points: E.164 phone numbers and e-mail addresses. Both are PII: their
//! `Debug` and `Display` are masked so they cannot leak into logs by accident.

use std::fmt;

/// A phone number in E.164 form (`+5511987654321`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

impl Phone {
    /// `+` then 8 to 15 digits, the first not 0. Brazilian numbers (`+55`) must also
    /// have a two-digit area code without zeros and 8 (landline) or 9 (mobile, starting
    /// with 9) subscriber digits.
    pub fn parse(input: &str) -> Option<Phone> {
        let digits = input.strip_prefix('+')?;
        if !(8..=15).contains(&digits.len())
            || !digits.bytes().all(|b| b.is_ascii_digit())
            || digits.starts_with('0')
        {
            return None;
        }
        if let Some(national) = digits.strip_prefix("55") {
            let (area, subscriber) = national.split_at_checked(2)?;
            if area.contains('0') {
                return None;
            }
            let ok = match subscriber.len() {
                8 => true,
                9 => subscriber.starts_with('9'),
                _ => false,
            };
            if !ok {
                return None;
            }
        }
        Some(Phone(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = self.0.get(self.0.len().saturating_sub(2)..).unwrap_or("");
        write!(f, "Phone(***{tail})")
    }
}

/// An e-mail address, with the domain lower-cased.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// A pragmatic subset of RFC 5321: one `@`, a dot-atom local part of at most 64
    /// characters, a domain of at least two labels of letters, digits and hyphens, at
    /// most 254 characters in all.
    pub fn parse(input: &str) -> Option<Email> {
        if input.len() > 254 {
            return None;
        }
        let (local, domain) = input.split_once('@')?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_alphabetic()) && tld.len() >= 2);
        if local_ok && domain_ok {
            Some(Email(format!("{local}@{}", domain.to_ascii_lowercase())))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = self.0.split_once('@').map(|(_, d)| d).unwrap_or("");
        write!(f, "Email(***@{domain})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn phones() {
        assert!(Phone::parse("+5511987654321").is_some());
        assert!(Phone::parse("+551133334444").is_some());
        assert!(Phone::parse("+14155550100").is_some());
        for bad in [
            "5511987654321",
            "+55 11 98765-4321",
            "+5501987654321",
            "+5511887654321",
            "+0123456789",
            "+1",
            "+55119876543210",
        ] {
            assert!(Phone::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse("Maria.Silva+nf@Example.COM.br")
                .unwrap()
                .as_str(),
            "Maria.Silva+nf@example.com.br"
        );
        for bad in [
            "maria",
            "maria@",
            "@example.com",
            "maria@example",
            "ma..ria@example.com",
            "maria@exa_mple.com",
            "maria@example.c0m",
            "a b@example.com",
        ] {
            assert!(Email::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn pii_is_masked_in_debug() {
        let p = Phone::parse("+5511987654321").unwrap();
        assert_eq!(format!("{p:?}"), "Phone(***21)");
        let e = Email::parse("maria@example.com").unwrap();
        assert_eq!(format!("{e:?}"), "Email(***@example.com)");
    }

    proptest! {
        #[test]
        fn never_panic(s in ".{0,80}") {
            let _ = Phone::parse(&s);
            let _ = Email::parse(&s);
        }
    }
}
