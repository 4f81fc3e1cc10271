//! Pure domain rules, with no I/O: money in integer minor units, ISO 4217 currencies,
//! Brazilian tax documents (CPF and CNPJ with check digits), E.164 phones and e-mail
//! addresses, and the régua: policies, the business calendar, send windows, caps and
//! the schedule decisions. Services validate with these and keep their own I/O elsewhere.

pub mod calendar;
pub mod channel;
pub mod charges;
pub mod contact;
pub mod currency;
pub mod document;
pub mod message;
pub mod money;
pub mod policy;
pub mod schedule;
pub mod sms;
pub mod template;
pub mod window;

pub use channel::Channel;
pub use contact::{Email, Phone};
pub use currency::Currency;
pub use document::{Document, DocumentError};
pub use money::{Money, MoneyError};
