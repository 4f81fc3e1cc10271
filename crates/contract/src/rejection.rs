//! Stable codes for rejections and warnings. Integrators match on these strings, so a
//! code is never renamed within v1; new codes may be added.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a field, or the whole message, was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The body is not valid JSON (or not UTF-8).
    MalformedJson,
    /// The body is JSON but not an object.
    NotAnObject,
    /// The body exceeds the maximum size.
    PayloadTooLarge,
    /// The subject names no v1 message.
    UnknownSubject,
    /// The tenant in the subject or route does not exist.
    UnknownTenant,
    /// A required field is absent or null.
    MissingField,
    /// A field has the wrong JSON type.
    InvalidType,
    /// A field has the right type but an unacceptable value (empty, too long, bad format).
    InvalidValue,
    /// A CPF whose check digits do not verify.
    InvalidCpf,
    /// A CNPJ whose check digits do not verify.
    InvalidCnpj,
    /// A document that is neither 11 (CPF) nor 14 (CNPJ) digits.
    InvalidDocument,
    /// A phone number that is not E.164.
    InvalidPhone,
    /// An e-mail address that is not valid.
    InvalidEmail,
    /// A currency that is not an active ISO 4217 code.
    InvalidCurrency,
    /// A date that is not `YYYY-MM-DD` or does not exist.
    InvalidDate,
    /// An IANA time zone that does not exist.
    InvalidTimezone,
    /// An amount that is zero or negative.
    AmountNotPositive,
    /// A due date before the issue date.
    DueBeforeIssue,
    /// A late fine above 200 bps on a consumer (CPF) invoice: CDC art. 52 §1.
    FineAboveLegalLimit,
    /// A `customer_id` reference to a customer that is not known.
    UnknownCustomer,
    /// Both an embedded `customer` and a top-level `customer_id`, with different ids.
    CustomerConflict,
}

impl RejectCode {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::MalformedJson => "malformed_json",
            RejectCode::NotAnObject => "not_an_object",
            RejectCode::PayloadTooLarge => "payload_too_large",
            RejectCode::UnknownSubject => "unknown_subject",
            RejectCode::UnknownTenant => "unknown_tenant",
            RejectCode::MissingField => "missing_field",
            RejectCode::InvalidType => "invalid_type",
            RejectCode::InvalidValue => "invalid_value",
            RejectCode::InvalidCpf => "invalid_cpf",
            RejectCode::InvalidCnpj => "invalid_cnpj",
            RejectCode::InvalidDocument => "invalid_document",
            RejectCode::InvalidPhone => "invalid_phone",
            RejectCode::InvalidEmail => "invalid_email",
            RejectCode::InvalidCurrency => "invalid_currency",
            RejectCode::InvalidDate => "invalid_date",
            RejectCode::InvalidTimezone => "invalid_timezone",
            RejectCode::AmountNotPositive => "amount_not_positive",
            RejectCode::DueBeforeIssue => "due_before_issue",
            RejectCode::FineAboveLegalLimit => "fine_above_legal_limit",
            RejectCode::UnknownCustomer => "unknown_customer",
            RejectCode::CustomerConflict => "customer_conflict",
        }
    }
}

/// A non-fatal remark about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WarnCode {
    /// A field that v1 does not define; it was ignored.
    UnknownField,
}

/// One problem with one field. `field` is a JSON path such as `customer.document`; it is
/// empty when the problem concerns the whole message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldIssue<C> {
    pub field: String,
    pub code: C,
    pub message: String,
}
