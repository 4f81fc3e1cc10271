//! Decoding and stateless validation of inbound payloads: `invoice.upsert`,
//! `invoice.cancel`, `customer.upsert` and `payment.received` (and the PIX webhook's
//! amount), for every service that takes them in.
//!
//! The reader walks the JSON object field by field and records every problem with its
//! path and a stable [`RejectCode`], instead of stopping at the first one as a serde
//! derive would. Unknown fields become warnings. What needs stored state (does the
//! tenant exist, is a referenced customer known) is checked later, by the service that
//! holds that state.

use chrono::{DateTime, NaiveDate, Utc};
use regua_domain::{Currency, Document, DocumentError, Email, Phone, charges};

use crate::events::{CustomerState, DocumentKind, InvoiceState};
use crate::inbound::{Channel, InvoiceCancel, LateFee, PaymentData, PaymentMethod, limits};
use crate::{FieldIssue, InboundKind, RejectCode, WarnCode};
use serde_json::{Map, Value};

/// Everything said about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Issues {
    pub errors: Vec<FieldIssue<RejectCode>>,
    pub warnings: Vec<FieldIssue<WarnCode>>,
}

impl Issues {
    pub fn error(
        &mut self,
        field: impl Into<String>,
        code: RejectCode,
        message: impl Into<String>,
    ) {
        self.errors.push(FieldIssue {
            field: field.into(),
            code,
            message: message.into(),
        });
    }

    fn warn(&mut self, field: impl Into<String>, code: WarnCode, message: impl Into<String>) {
        self.warnings.push(FieldIssue {
            field: field.into(),
            code,
            message: message.into(),
        });
    }

    pub fn is_rejected(&self) -> bool {
        !self.errors.is_empty()
    }
}

/// A customer as given, before the tenant's default time zone is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerDraft {
    pub customer_id: String,
    pub name: String,
    pub document: Option<Document>,
    pub email: Option<Email>,
    pub phone: Option<Phone>,
    pub whatsapp_opt_in: bool,
    pub preferred_channel: Option<Channel>,
    pub timezone: Option<String>,
    pub locale: String,
    pub segment: Option<String>,
}

impl CustomerDraft {
    /// The normalised customer, with `tenant_timezone` when none was given.
    pub fn resolve(&self, tenant_timezone: &str) -> CustomerState {
        CustomerState {
            customer_id: self.customer_id.clone(),
            name: self.name.clone(),
            document: self.document.as_ref().map(|d| d.as_str().to_owned()),
            document_kind: self.document.as_ref().map(document_kind),
            email: self.email.as_ref().map(|e| e.as_str().to_owned()),
            phone: self.phone.as_ref().map(|p| p.as_str().to_owned()),
            whatsapp_opt_in: self.whatsapp_opt_in,
            preferred_channel: self.preferred_channel,
            timezone: self
                .timezone
                .clone()
                .unwrap_or_else(|| tenant_timezone.to_owned()),
            locale: self.locale.clone(),
            segment: self.segment.clone(),
        }
    }
}

pub fn document_kind(d: &Document) -> DocumentKind {
    match d {
        Document::Cpf(_) => DocumentKind::Cpf,
        Document::Cnpj(_) => DocumentKind::Cnpj,
    }
}

/// Who an invoice is owed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerSource {
    /// Upserted together with the invoice.
    Embedded(Box<CustomerDraft>),
    /// Must already be known.
    Reference(String),
}

impl CustomerSource {
    pub fn customer_id(&self) -> &str {
        match self {
            CustomerSource::Embedded(c) => &c.customer_id,
            CustomerSource::Reference(id) => id,
        }
    }
}

/// A valid `invoice.upsert`.
#[derive(Debug, Clone, PartialEq)]
pub struct InvoiceDraft {
    pub invoice_id: String,
    pub revision: Option<u64>,
    pub customer: CustomerSource,
    pub amount_cents: i64,
    pub currency: Currency,
    pub issued_on: NaiveDate,
    pub due_date: NaiveDate,
    pub description: Option<String>,
    pub reference: Option<String>,
    pub payment: Option<PaymentData>,
    pub late_fee: Option<LateFee>,
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
}

impl InvoiceDraft {
    /// The invoice as events carry it, owed by a debtor of `debtor_kind`.
    pub fn state(&self, debtor_kind: Option<DocumentKind>) -> InvoiceState {
        InvoiceState {
            invoice_id: self.invoice_id.clone(),
            revision: self.revision,
            customer_id: self.customer.customer_id().to_owned(),
            debtor_kind,
            amount_cents: self.amount_cents,
            currency: self.currency.code().to_owned(),
            issued_on: self.issued_on,
            due_date: self.due_date,
            description: self.description.clone(),
            reference: self.reference.clone(),
            payment: self.payment.clone(),
            late_fee: self.late_fee,
            tags: self.tags.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

/// A valid inbound command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    UpsertInvoice(Box<InvoiceDraft>),
    CancelInvoice(InvoiceCancel),
    UpsertCustomer(Box<CustomerDraft>),
}

impl Command {
    /// The invoice a command concerns, for span attributes.
    pub fn invoice_id(&self) -> Option<&str> {
        match self {
            Command::UpsertInvoice(i) => Some(&i.invoice_id),
            Command::CancelInvoice(c) => Some(&c.invoice_id),
            Command::UpsertCustomer(_) => None,
        }
    }
}

/// The result of decoding one message: a command when there are no errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub command: Option<Command>,
    pub issues: Issues,
}

impl Decoded {
    pub fn rejected(field: &str, code: RejectCode, message: impl Into<String>) -> Decoded {
        let mut issues = Issues::default();
        issues.error(field, code, message);
        Decoded {
            command: None,
            issues,
        }
    }
}

/// Decodes and validates `payload` as a `kind` message. Never panics; every input gets
/// either a command or at least one error.
pub fn decode(kind: InboundKind, payload: &[u8]) -> Decoded {
    if payload.len() > limits::MAX_PAYLOAD_BYTES {
        return Decoded::rejected(
            "",
            RejectCode::PayloadTooLarge,
            format!(
                "payload is {} bytes; the limit is {}",
                payload.len(),
                limits::MAX_PAYLOAD_BYTES
            ),
        );
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            return Decoded::rejected(
                "",
                RejectCode::MalformedJson,
                format!("malformed JSON: {e}"),
            );
        }
    };
    decode_value(kind, &value)
}

/// Like [`decode`], for an already parsed value (HTTP batches).
pub fn decode_value(kind: InboundKind, value: &Value) -> Decoded {
    let mut issues = Issues::default();
    let Some(map) = value.as_object() else {
        issues.error("", RejectCode::NotAnObject, "payload must be a JSON object");
        return Decoded {
            command: None,
            issues,
        };
    };
    let command = match kind {
        InboundKind::InvoiceUpsert => {
            invoice(map, &mut issues).map(|i| Command::UpsertInvoice(Box::new(i)))
        }
        InboundKind::InvoiceCancel => cancel(map, &mut issues).map(Command::CancelInvoice),
        InboundKind::CustomerUpsert => {
            customer(map, "", &mut issues).map(|c| Command::UpsertCustomer(Box::new(c)))
        }
        InboundKind::PaymentReceived => {
            issues.error(
                "",
                RejectCode::UnknownSubject,
                "payment.received is consumed by reconciliation, not intake",
            );
            None
        }
    };
    let command = if issues.is_rejected() { None } else { command };
    Decoded { command, issues }
}

/// Reads the fields of one JSON object, remembering which were read.
struct Obj<'a> {
    map: &'a Map<String, Value>,
    prefix: &'a str,
    read: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    fn new(map: &'a Map<String, Value>, prefix: &'a str) -> Self {
        Obj {
            map,
            prefix,
            read: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// The value of `name`; JSON `null` counts as absent.
    fn get(&mut self, name: &'static str) -> Option<&'a Value> {
        self.read.push(name);
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn missing(&self, issues: &mut Issues, name: &str) {
        issues.error(
            self.path(name),
            RejectCode::MissingField,
            format!("{name} is required"),
        );
    }

    fn wrong_type(&self, issues: &mut Issues, name: &str, expected: &str) {
        issues.error(
            self.path(name),
            RejectCode::InvalidType,
            format!("{name} must be {expected}"),
        );
    }

    fn string(
        &mut self,
        issues: &mut Issues,
        name: &'static str,
        required: bool,
        max_chars: usize,
    ) -> Option<String> {
        let Some(v) = self.get(name) else {
            if required {
                self.missing(issues, name);
            }
            return None;
        };
        let Some(s) = v.as_str() else {
            self.wrong_type(issues, name, "a string");
            return None;
        };
        let trimmed = s.trim();
        if trimmed.is_empty() {
            issues.error(
                self.path(name),
                RejectCode::InvalidValue,
                format!("{name} must not be empty"),
            );
            return None;
        }
        if trimmed.chars().count() > max_chars {
            issues.error(
                self.path(name),
                RejectCode::InvalidValue,
                format!("{name} is longer than {max_chars} characters"),
            );
            return None;
        }
        if trimmed
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            issues.error(
                self.path(name),
                RejectCode::InvalidValue,
                format!("{name} contains control characters"),
            );
            return None;
        }
        Some(trimmed.to_owned())
    }

    /// An id: printable, without whitespace, at most 128 characters.
    fn id(&mut self, issues: &mut Issues, name: &'static str, required: bool) -> Option<String> {
        let s = self.string(issues, name, required, limits::MAX_ID_CHARS)?;
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            issues.error(
                self.path(name),
                RejectCode::InvalidValue,
                format!("{name} must not contain spaces or control characters"),
            );
            return None;
        }
        Some(s)
    }

    /// An optional string that must also pass `parse`; when it does not, `code` is
    /// reported with `message(value)`.
    fn parsed<T>(
        &mut self,
        issues: &mut Issues,
        name: &'static str,
        max_chars: usize,
        code: RejectCode,
        parse: impl FnOnce(&str) -> Option<T>,
        message: impl FnOnce(&str) -> String,
    ) -> Option<T> {
        let raw = self.string(issues, name, false, max_chars)?;
        let parsed = parse(&raw);
        if parsed.is_none() {
            issues.error(self.path(name), code, message(&raw));
        }
        parsed
    }

    fn text(&mut self, issues: &mut Issues, name: &'static str) -> Option<String> {
        self.string(issues, name, false, limits::MAX_TEXT_CHARS)
    }

    fn bool(&mut self, issues: &mut Issues, name: &'static str) -> Option<bool> {
        let v = self.get(name)?;
        let b = v.as_bool();
        if b.is_none() {
            self.wrong_type(issues, name, "true or false");
        }
        b
    }

    /// A non-negative integer no larger than `max`.
    fn unsigned(&mut self, issues: &mut Issues, name: &'static str, max: u64) -> Option<u64> {
        let v = self.get(name)?;
        let Some(n) = v.as_number() else {
            self.wrong_type(issues, name, "an integer");
            return None;
        };
        match n.as_u64() {
            Some(u) if u <= max => Some(u),
            Some(_) => {
                issues.error(
                    self.path(name),
                    RejectCode::InvalidValue,
                    format!("{name} must be at most {max}"),
                );
                None
            }
            None if n.is_i64() => {
                issues.error(
                    self.path(name),
                    RejectCode::InvalidValue,
                    format!("{name} must not be negative"),
                );
                None
            }
            None => {
                self.wrong_type(issues, name, "an integer");
                None
            }
        }
    }

    fn date(&mut self, issues: &mut Issues, name: &'static str) -> Option<NaiveDate> {
        let Some(v) = self.get(name) else {
            self.missing(issues, name);
            return None;
        };
        let Some(s) = v.as_str() else {
            self.wrong_type(issues, name, "a date string YYYY-MM-DD");
            return None;
        };
        let parsed = (s.len() == 10)
            .then(|| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
            .flatten()
            .filter(|d| (1900..=2200).contains(&chrono::Datelike::year(d)));
        if parsed.is_none() {
            issues.error(
                self.path(name),
                RejectCode::InvalidDate,
                format!("{name} must be an existing date YYYY-MM-DD between 1900 and 2200"),
            );
        }
        parsed
    }

    /// An optional CPF or CNPJ, check digits verified.
    fn document(&mut self, issues: &mut Issues, name: &'static str) -> Option<Document> {
        let d = self.string(issues, name, false, 32)?;
        Document::parse(&d)
            .map_err(|e| {
                let code = match e {
                    DocumentError::InvalidCpf => RejectCode::InvalidCpf,
                    DocumentError::InvalidCnpj => RejectCode::InvalidCnpj,
                    DocumentError::NotADocument => RejectCode::InvalidDocument,
                };
                issues.error(self.path(name), code, e.to_string());
            })
            .ok()
    }

    /// A required RFC 3339 instant with an offset.
    fn instant(&mut self, issues: &mut Issues, name: &'static str) -> Option<DateTime<Utc>> {
        let Some(v) = self.get(name) else {
            self.missing(issues, name);
            return None;
        };
        let Some(s) = v.as_str() else {
            self.wrong_type(issues, name, "an RFC 3339 date-time string");
            return None;
        };
        let parsed = DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
            .filter(|t| (1900..=2200).contains(&chrono::Datelike::year(t)));
        if parsed.is_none() {
            issues.error(
                self.path(name),
                RejectCode::InvalidDate,
                format!("{name} must be an RFC 3339 date-time with an offset, e.g. 2026-12-10T14:03:00-03:00"),
            );
        }
        parsed
    }

    fn object(
        &mut self,
        issues: &mut Issues,
        name: &'static str,
    ) -> Option<&'a Map<String, Value>> {
        let v = self.get(name)?;
        let o = v.as_object();
        if o.is_none() {
            self.wrong_type(issues, name, "an object");
        }
        o
    }

    /// Unknown fields become warnings.
    fn finish(self, issues: &mut Issues) {
        for key in self.map.keys() {
            if !self.read.contains(&key.as_str()) {
                issues.warn(
                    self.path(key),
                    WarnCode::UnknownField,
                    "unknown field ignored",
                );
            }
        }
    }
}

fn customer(map: &Map<String, Value>, prefix: &str, issues: &mut Issues) -> Option<CustomerDraft> {
    let mut o = Obj::new(map, prefix);
    let customer_id = o.id(issues, "customer_id", true);
    let name = o.string(issues, "name", true, 200);
    let document = o.document(issues, "document");
    let email = o.parsed(
        issues,
        "email",
        254,
        RejectCode::InvalidEmail,
        Email::parse,
        |_| "email is not a valid address".into(),
    );
    let phone = o.parsed(
        issues,
        "phone",
        20,
        RejectCode::InvalidPhone,
        Phone::parse,
        |_| "phone must be E.164, e.g. +5511987654321".into(),
    );
    let whatsapp_opt_in = o.bool(issues, "whatsapp_opt_in").unwrap_or(false);
    let preferred_channel = o.parsed(
        issues,
        "preferred_channel",
        16,
        RejectCode::InvalidValue,
        |c| Channel::ALL.into_iter().find(|ch| ch.as_str() == c),
        |_| "preferred_channel must be one of email, sms, whatsapp".into(),
    );
    let timezone = o.parsed(
        issues,
        "timezone",
        64,
        RejectCode::InvalidTimezone,
        |tz| tz.parse::<chrono_tz::Tz>().is_ok().then(|| tz.to_owned()),
        |tz| format!("{tz} is not an IANA time zone"),
    );
    let locale = o
        .parsed(
            issues,
            "locale",
            16,
            RejectCode::InvalidValue,
            |l| is_locale(l).then(|| l.to_owned()),
            |_| "locale must look like pt-BR or en-US".into(),
        )
        .unwrap_or_else(|| "pt-BR".to_owned());
    let segment = o.string(issues, "segment", false, 64);
    o.finish(issues);
    Some(CustomerDraft {
        customer_id: customer_id?,
        name: name?,
        document,
        email,
        phone,
        whatsapp_opt_in,
        preferred_channel,
        timezone,
        locale,
        segment,
    })
}

fn is_locale(l: &str) -> bool {
    let mut parts = l.split('-');
    let lang = parts.next().unwrap_or("");
    let region = parts.next();
    parts.next().is_none()
        && (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && region.is_none_or(|r| r.len() == 2 && r.bytes().all(|b| b.is_ascii_uppercase()))
}

fn invoice(map: &Map<String, Value>, issues: &mut Issues) -> Option<InvoiceDraft> {
    let mut o = Obj::new(map, "");
    let invoice_id = o.id(issues, "invoice_id", true);
    let revision = o.unsigned(issues, "revision", i64::MAX.unsigned_abs());
    let customer = invoice_customer(&mut o, issues);
    let amount_cents = amount(&mut o, issues);
    // Absent means BRL; an invalid code is reported and rejects the message.
    let currency = o
        .parsed(
            issues,
            "currency",
            16,
            RejectCode::InvalidCurrency,
            Currency::parse,
            |code| format!("{code} is not an active ISO 4217 code"),
        )
        .unwrap_or(Currency::BRL);
    let issued_on = o.date(issues, "issued_on");
    let due_date = o.date(issues, "due_date");
    if let (Some(i), Some(d)) = (issued_on, due_date)
        && d < i
    {
        issues.error(
            "due_date",
            RejectCode::DueBeforeIssue,
            format!("due_date {d} is before issued_on {i}"),
        );
    }
    let description = o.text(issues, "description");
    let reference = o.id(issues, "reference", false);
    let payment = o.object(issues, "payment").map(|p| payment(p, issues));
    let late_fee = o.object(issues, "late_fee").map(|f| late_fee(f, issues));
    if let (Some(fee), Some(CustomerSource::Embedded(c))) = (&late_fee, &customer)
        && c.document.as_ref().is_some_and(Document::is_consumer)
    {
        check_consumer_fine(fee, issues);
    }
    let tags = tags(&mut o, issues);
    let metadata = metadata(&mut o, issues);
    o.finish(issues);
    Some(InvoiceDraft {
        invoice_id: invoice_id?,
        revision,
        customer: customer?,
        amount_cents: amount_cents?,
        currency,
        issued_on: issued_on?,
        due_date: due_date?,
        description,
        reference,
        payment,
        late_fee,
        tags,
        metadata,
    })
}

/// Reports a late fine that CDC art. 52 §1 forbids on consumer (CPF) debt
/// ([`charges::fine_is_lawful`]).
pub fn check_consumer_fine(fee: &LateFee, issues: &mut Issues) {
    if !charges::fine_is_lawful(fee.fine_bps, true) {
        issues.error(
            "late_fee.fine_bps",
            RejectCode::FineAboveLegalLimit,
            format!(
                "a late fine of {} bps exceeds the 200 bps (2%) that CDC art. 52 §1 allows on consumer (CPF) debt",
                fee.fine_bps
            ),
        );
    }
}

fn invoice_customer(o: &mut Obj<'_>, issues: &mut Issues) -> Option<CustomerSource> {
    let top_id = o.id(issues, "customer_id", false);
    let embedded = o.object(issues, "customer");
    match (embedded, top_id) {
        (None, None) => {
            if !issues
                .errors
                .iter()
                .any(|e| e.field == "customer" || e.field == "customer_id")
            {
                issues.error(
                    "customer",
                    RejectCode::MissingField,
                    "customer (an object) or customer_id is required",
                );
            }
            None
        }
        (None, Some(id)) => Some(CustomerSource::Reference(id)),
        (Some(map), top_id) => {
            let bare_reference = map.len() == 1 && map.contains_key("customer_id");
            let source = if bare_reference {
                let mut r = Obj::new(map, "customer.");
                let id = r.id(issues, "customer_id", true);
                r.finish(issues);
                id.map(CustomerSource::Reference)
            } else {
                customer(map, "customer.", issues).map(|c| CustomerSource::Embedded(Box::new(c)))
            };
            if let (Some(s), Some(top)) = (&source, &top_id)
                && s.customer_id() != top
            {
                issues.error(
                    "customer_id",
                    RejectCode::CustomerConflict,
                    "customer_id differs from customer.customer_id",
                );
            }
            source
        }
    }
}

/// Largest accepted amount: 10^15 minor units, far above any invoice, so that sums of
/// many amounts stay far from `i64` overflow.
const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

fn amount(o: &mut Obj<'_>, issues: &mut Issues) -> Option<i64> {
    let Some(v) = o.get("amount_cents") else {
        o.missing(issues, "amount_cents");
        return None;
    };
    let Some(n) = v.as_number() else {
        o.wrong_type(issues, "amount_cents", "an integer number of cents");
        return None;
    };
    let Some(cents) = n.as_i64() else {
        if n.is_u64() {
            issues.error(
                "amount_cents",
                RejectCode::InvalidValue,
                "amount_cents is too large",
            );
        } else {
            o.wrong_type(
                issues,
                "amount_cents",
                "an integer number of cents, not a fraction",
            );
        }
        return None;
    };
    if cents <= 0 {
        issues.error(
            "amount_cents",
            RejectCode::AmountNotPositive,
            "amount_cents must be greater than zero",
        );
        return None;
    }
    if cents > MAX_AMOUNT_MINOR {
        issues.error(
            "amount_cents",
            RejectCode::InvalidValue,
            "amount_cents is too large",
        );
        return None;
    }
    Some(cents)
}

fn payment(map: &Map<String, Value>, issues: &mut Issues) -> PaymentData {
    let mut o = Obj::new(map, "payment.");
    let pix_copy_paste = o.string(issues, "pix_copy_paste", false, 512);
    let boleto_line = o.string(issues, "boleto_line", false, 128).and_then(|b| {
        let digits = b.chars().filter(char::is_ascii_digit).count();
        let shape_ok = b
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '.'));
        if shape_ok && (44..=48).contains(&digits) {
            Some(b)
        } else {
            issues.error(
                "payment.boleto_line",
                RejectCode::InvalidValue,
                "boleto_line must be the 47- or 48-digit linha digitável (dots and spaces allowed)",
            );
            None
        }
    });
    let payment_url = o.parsed(
        issues,
        "payment_url",
        2048,
        RejectCode::InvalidValue,
        |u| (u.starts_with("https://") || u.starts_with("http://")).then(|| u.to_owned()),
        |_| "payment_url must be an http(s) URL".into(),
    );
    o.finish(issues);
    PaymentData {
        pix_copy_paste,
        boleto_line,
        payment_url,
    }
}

fn late_fee(map: &Map<String, Value>, issues: &mut Issues) -> LateFee {
    let mut o = Obj::new(map, "late_fee.");
    let fine_bps = o.unsigned(issues, "fine_bps", 10_000).unwrap_or(0);
    let monthly_interest_bps = o
        .unsigned(issues, "monthly_interest_bps", 10_000)
        .unwrap_or(0);
    o.finish(issues);
    LateFee {
        fine_bps: u32::try_from(fine_bps).unwrap_or(u32::MAX),
        monthly_interest_bps: u32::try_from(monthly_interest_bps).unwrap_or(u32::MAX),
    }
}

fn tags(o: &mut Obj<'_>, issues: &mut Issues) -> Vec<String> {
    let Some(v) = o.get("tags") else {
        return Vec::new();
    };
    let Some(items) = v.as_array() else {
        o.wrong_type(issues, "tags", "an array of strings");
        return Vec::new();
    };
    if items.len() > limits::MAX_TAGS {
        issues.error(
            "tags",
            RejectCode::InvalidValue,
            format!("at most {} tags", limits::MAX_TAGS),
        );
        return Vec::new();
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str().map(str::trim) {
            Some(t)
                if !t.is_empty() && t.chars().count() <= 64 && !t.chars().any(char::is_control) =>
            {
                out.push(t.to_owned())
            }
            Some(_) => issues.error(
                format!("tags[{i}]"),
                RejectCode::InvalidValue,
                "a tag is 1 to 64 printable characters",
            ),
            None => issues.error(
                format!("tags[{i}]"),
                RejectCode::InvalidType,
                "tags must be strings",
            ),
        }
    }
    out
}

fn metadata(o: &mut Obj<'_>, issues: &mut Issues) -> Map<String, Value> {
    let Some(map) = o.object(issues, "metadata") else {
        return Map::new();
    };
    let size = serde_json::to_vec(map)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > limits::MAX_METADATA_BYTES {
        issues.error(
            "metadata",
            RejectCode::InvalidValue,
            format!(
                "metadata is {size} bytes serialized; the limit is {}",
                limits::MAX_METADATA_BYTES
            ),
        );
        return Map::new();
    }
    // Postgres cannot store U+0000 in text or jsonb.
    if contains_nul(&Value::Object(map.clone())) {
        issues.error(
            "metadata",
            RejectCode::InvalidValue,
            "metadata must not contain the NUL character",
        );
        return Map::new();
    }
    map.clone()
}

fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

fn cancel(map: &Map<String, Value>, issues: &mut Issues) -> Option<InvoiceCancel> {
    let mut o = Obj::new(map, "");
    let invoice_id = o.id(issues, "invoice_id", true);
    let revision = o.unsigned(issues, "revision", i64::MAX.unsigned_abs());
    let reason = o.text(issues, "reason");
    o.finish(issues);
    Some(InvoiceCancel {
        invoice_id: invoice_id?,
        revision,
        reason,
    })
}

/// A valid `payment.received`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentDraft {
    pub payment_id: String,
    pub invoice_id: Option<String>,
    pub reference: Option<String>,
    pub amount_cents: i64,
    pub currency: Currency,
    pub paid_at: DateTime<Utc>,
    pub method: PaymentMethod,
    pub payer_document: Option<Document>,
}

/// Decodes and validates a `payment.received` body (NATS or HTTP) field by field, like
/// every other inbound message: a draft, or every problem found.
pub fn decode_payment(payload: &[u8]) -> (Option<PaymentDraft>, Issues) {
    let mut issues = Issues::default();
    if payload.len() > limits::MAX_PAYLOAD_BYTES {
        issues.error(
            "",
            RejectCode::PayloadTooLarge,
            format!(
                "payload is {} bytes; the limit is {}",
                payload.len(),
                limits::MAX_PAYLOAD_BYTES
            ),
        );
        return (None, issues);
    }
    let value: Value = match serde_json::from_slice(payload) {
        Ok(v) => v,
        Err(e) => {
            issues.error(
                "",
                RejectCode::MalformedJson,
                format!("malformed JSON: {e}"),
            );
            return (None, issues);
        }
    };
    let Some(map) = value.as_object() else {
        issues.error("", RejectCode::NotAnObject, "payload must be a JSON object");
        return (None, issues);
    };
    let mut o = Obj::new(map, "");
    let payment_id = o.id(&mut issues, "payment_id", true);
    let invoice_id = o.id(&mut issues, "invoice_id", false);
    let reference = o.id(&mut issues, "reference", false);
    let amount_cents = amount(&mut o, &mut issues);
    let currency = o
        .parsed(
            &mut issues,
            "currency",
            16,
            RejectCode::InvalidCurrency,
            Currency::parse,
            |code| format!("{code} is not an active ISO 4217 code"),
        )
        .unwrap_or(Currency::BRL);
    let paid_at = o.instant(&mut issues, "paid_at");
    let method = match o.string(&mut issues, "method", true, 16) {
        Some(m) => {
            let parsed = serde_json::from_value::<PaymentMethod>(Value::String(m.clone())).ok();
            if parsed.is_none() {
                issues.error(
                    "method",
                    RejectCode::InvalidValue,
                    format!("method {m:?} is not one of pix, boleto, card, transfer, cash"),
                );
            }
            parsed
        }
        None => None,
    };
    let payer_document = o.document(&mut issues, "payer_document");
    o.finish(&mut issues);
    if issues.is_rejected() {
        return (None, issues);
    }
    let draft = (|| {
        Some(PaymentDraft {
            payment_id: payment_id?,
            invoice_id,
            reference,
            amount_cents: amount_cents?,
            currency,
            paid_at: paid_at?,
            method: method?,
            payer_document,
        })
    })();
    (draft, issues)
}

/// A PIX `valor` ("123.45": digits, a point, exactly two decimals, as the Banco
/// Central's API writes it) as integer centavos, read digit by digit: never a float.
pub fn pix_valor(valor: &str) -> Option<i64> {
    let (int, frac) = valor.split_once('.')?;
    if int.is_empty()
        || int.len() > 15
        || frac.len() != 2
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (int.len() > 1 && int.starts_with('0'))
    {
        return None;
    }
    let whole: i64 = int.parse().ok()?;
    let cents: i64 = frac.parse().ok()?;
    whole.checked_mul(100)?.checked_add(cents)
}

#[cfg(test)]
mod tests;
