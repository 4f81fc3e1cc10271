//! Money as `i64` minor units plus a currency. There is no float anywhere, and every
//! operation is checked.

use std::fmt;

use crate::currency::Currency;

/// An amount in minor units (centavos for BRL) of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    minor: i64,
    currency: Currency,
}

/// Why an operation on [`Money`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amounts in different currencies ({0} and {1})")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount overflow")]
    Overflow,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Money { minor, currency }
    }

    pub fn minor(self) -> i64 {
        self.minor
    }

    pub fn currency(self) -> Currency {
        self.currency
    }

    pub fn is_positive(self) -> bool {
        self.minor > 0
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.minor
            .checked_add(other.minor)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        self.minor
            .checked_sub(other.minor)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or(MoneyError::Overflow)
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }
}

impl fmt::Display for Money {
    /// `BRL 159.90`: the currency's own number of decimals, no rounding.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exp = self.currency.minor_unit_digits();
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        if exp == 0 {
            return write!(f, "{} {sign}{abs}", self.currency);
        }
        let scale = 10u64.pow(u32::from(exp));
        write!(
            f,
            "{} {sign}{}.{:0width$}",
            self.currency,
            abs / scale,
            abs % scale,
            width = usize::from(exp)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brl(minor: i64) -> Money {
        Money::new(minor, Currency::parse("BRL").unwrap())
    }

    #[test]
    fn displays_with_the_currency_exponent() {
        assert_eq!(brl(15990).to_string(), "BRL 159.90");
        assert_eq!(brl(-5).to_string(), "BRL -0.05");
        assert_eq!(
            Money::new(1500, Currency::parse("JPY").unwrap()).to_string(),
            "JPY 1500"
        );
    }

    #[test]
    fn refuses_mixed_currencies_and_overflow() {
        let usd = Money::new(1, Currency::parse("USD").unwrap());
        assert!(matches!(
            brl(1).checked_add(usd),
            Err(MoneyError::CurrencyMismatch(..))
        ));
        assert_eq!(brl(i64::MAX).checked_add(brl(1)), Err(MoneyError::Overflow));
    }

    proptest! {
        #[test]
        fn add_then_sub_is_identity(a in -1_000_000_000_000i64..1_000_000_000_000, b in -1_000_000_000_000i64..1_000_000_000_000) {
            let sum = brl(a).checked_add(brl(b)).unwrap();
            prop_assert_eq!(sum.checked_sub(brl(b)).unwrap(), brl(a));
        }
    }
}
