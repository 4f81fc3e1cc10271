//! What one collection message says, before any channel gives it a shape: who owes,
//! to whom, which invoices and how much today, how to pay, and which texts to use.
//! [`crate::template::render`] turns it into an SMS, an e-mail or a WhatsApp template
//! message. The wire contract's dispatch command maps to it.

use chrono::{DateTime, NaiveDate, Utc};

use crate::charges::AmountDue;
use crate::template::{ChannelTemplates, SmsOptions};

/// Why the message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A régua step.
    Step,
    /// The policy's `on_paid` thank-you.
    Thanks,
}

/// The creditor, as every collection message must identify it (CDC art. 42-A).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creditor {
    pub legal_name: String,
    pub cnpj: String,
    pub address: String,
    pub contact: String,
}

/// Who reads the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub name: String,
    /// BCP 47; texts fall back to the closest shipped locale.
    pub locale: String,
}

/// How to pay. All optional; messages show whichever are present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentData {
    pub pix_copy_paste: Option<String>,
    pub boleto_line: Option<String>,
    pub payment_url: Option<String>,
}

/// One invoice the message is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInvoice {
    pub invoice_id: String,
    /// The principal, in minor units of `currency`.
    pub amount_cents: i64,
    pub currency: String,
    pub due_date: NaiveDate,
    /// The next business day on or after `due_date`.
    pub effective_due_date: NaiveDate,
    pub description: Option<String>,
    pub payment: Option<PaymentData>,
    /// What is owed on the day the message was decided, when known.
    pub due: Option<AmountDue>,
}

/// Invoices one message carries at most: the scheduler merges a customer's invoices due
/// at one instant into one message up to this many (and up to
/// [`MAX_MESSAGE_BYTES`]), and starts another message of the same contact past it.
pub const MAX_INVOICES_PER_MESSAGE: usize = 50;

/// Bytes one dispatch command may take on the wire, about: a quarter of NATS's default
/// maximum payload (1 MiB), so a command never nears it.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// One message to one debtor, about one or more invoices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageKind,
    pub creditor: Creditor,
    pub recipient: Recipient,
    /// The template's name (`lembrete_vencimento`, …).
    pub template: String,
    pub invoices: Vec<MessageInvoice>,
    /// When it was decided, on the tenant's clock: `days_late` counts to this day.
    pub scheduled_for: DateTime<Utc>,
    pub sms: SmsOptions,
    /// The policy's own texts for `template` in the recipient's locale, if any.
    pub templates: Option<ChannelTemplates>,
}
