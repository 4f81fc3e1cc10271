//! Commands: work one service asks of another. The scheduler publishes a
//! [`DispatchCommand`] on `regua.v1.cmd.<tenant>.dispatch.<channel>` (stream
//! `REGUA_CMD`, work-queue retention). Its `command_id` is derived from (invoice, step,
//! policy version, and how many times the step was planned again after a dispatcher
//! found its window closed) and its `Nats-Msg-Id` is the UUIDv5 of the `command_id` in
//! [`COMMAND_ID_NAMESPACE`], so a step fires once per plan.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::inbound::{Channel, LateFee, PaymentData};

/// The UUIDv5 namespace of command `Nats-Msg-Id`s.
pub const COMMAND_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6f1d_2b0e_9c1a_4f43_9a57_7d0b_3c1e_a001);

/// The creditor, as every collection message must identify it (CDC art. 42-A).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Creditor {
    pub legal_name: String,
    pub cnpj: String,
    pub address: String,
    pub contact: String,
}

/// Who receives the message, and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Recipient {
    pub customer_id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// E.164.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub whatsapp_opt_in: bool,
    pub locale: String,
    pub timezone: String,
}

/// One invoice the message is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommandInvoice {
    pub invoice_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub due_date: NaiveDate,
    /// The next business day on or after `due_date`.
    pub effective_due_date: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_fee: Option<LateFee>,
    /// What is owed on the day the message is decided: principal, fine, interest, what
    /// was already paid, and the balance. Messages state it (transparency is part of
    /// respectful collection); absent for commands from before reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due: Option<crate::events::AmountDue>,
}

/// Why the message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// A régua step.
    Step,
    /// The policy's `on_paid` thank-you.
    Thanks,
}

/// `regua.v1.cmd.<tenant>.dispatch.<channel>`: send one message. It carries everything
/// the dispatcher needs and no secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DispatchCommand {
    /// `<tenant>:<invoice_id>:<step>:v<policy_version>` of the first invoice, then
    /// `:r<k>` when the step was planned again for the k-th time because its message
    /// reached a dispatcher after its window closed.
    pub command_id: String,
    pub kind: CommandKind,
    pub tenant: String,
    pub creditor: Creditor,
    pub recipient: Recipient,
    /// The channel this command is for (the first usable one of the step).
    pub channel: Channel,
    /// The step's other usable channels, in order, should this one fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback: Vec<Channel>,
    pub template: String,
    pub step: String,
    pub policy: String,
    pub policy_version: u32,
    /// More than one when the customer has several invoices at the same step at once:
    /// one message lists them all.
    pub invoices: Vec<CommandInvoice>,
    /// When the scheduler decided to send it (the tenant's time, test clock included).
    pub scheduled_for: DateTime<Utc>,
    /// The send window closes here; a dispatcher holding the command later must not
    /// send it.
    pub not_after: DateTime<Utc>,
    /// The tenant runs on a test clock: the dispatcher stamps what it sends with
    /// `scheduled_for` (simulated time) instead of its own clock.
    #[serde(default)]
    pub test_clock: bool,
    /// The policy's SMS cost rules.
    #[serde(default)]
    pub sms: SmsOptions,
    /// The policy's own texts for `template` in the recipient's locale, when it
    /// overrides the shipped ones (for any channel of the step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<ChannelTemplates>,
}

/// How a policy wants its SMS priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SmsOptions {
    /// A policy whose SMS text renders longer than this is refused on write.
    #[serde(default = "SmsOptions::default_max_segments")]
    pub max_segments: u8,
    /// Rewrite accents into GSM-7 (ã→a, ç→c): accents force UCS-2 and double the cost.
    #[serde(default)]
    pub transliterate: bool,
}

impl SmsOptions {
    fn default_max_segments() -> u8 {
        3
    }
}

impl Default for SmsOptions {
    fn default() -> Self {
        SmsOptions {
            max_segments: SmsOptions::default_max_segments(),
            transliterate: false,
        }
    }
}

/// One template's texts per channel, in one locale (minijinja syntax). A channel left
/// out uses the shipped text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelTemplates {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sms: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<WhatsappTemplate>,
}

/// An e-mail's subject and body text; the layout adds the invoices, the payment data,
/// the creditor's identity and the unsubscribe link, in text and HTML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailTemplate {
    pub subject: String,
    pub body: String,
}

/// A WhatsApp template approved by Meta, and what fills its body parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WhatsappTemplate {
    /// The approved template's name.
    pub name: String,
    /// One minijinja expression per `{{n}}` body parameter, in order.
    pub params: Vec<String>,
}

impl DispatchCommand {
    /// The `Nats-Msg-Id` of a command: UUIDv5 of its id.
    pub fn message_id(command_id: &str) -> uuid::Uuid {
        uuid::Uuid::new_v5(&COMMAND_ID_NAMESPACE, command_id.as_bytes())
    }

    /// The command id of `step` for `invoice_id`: `<tenant>:<invoice_id>:<step>:v<n>`,
    /// then `:r<k>` when the step is planned again for the k-th time because its
    /// message reached a dispatcher after its window closed (a new message, which the
    /// dispatchers must not take for a redelivery of the late one).
    pub fn id_for(
        tenant: &str,
        invoice_id: &str,
        step: &str,
        policy_version: u32,
        refires: u32,
    ) -> String {
        if refires == 0 {
            format!("{tenant}:{invoice_id}:{step}:v{policy_version}")
        } else {
            format!("{tenant}:{invoice_id}:{step}:v{policy_version}:r{refires}")
        }
    }

    /// Whether `command_id` was made by [`DispatchCommand::id_for`] for `invoice_id` of
    /// `tenant` (a merged command is named after its first invoice).
    pub fn is_named_after(command_id: &str, tenant: &str, invoice_id: &str) -> bool {
        command_id
            .strip_prefix(tenant)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.strip_prefix(invoice_id))
            .is_some_and(|rest| rest.starts_with(':'))
    }

    /// The `refires` a command id of [`DispatchCommand::id_for`] was made with.
    pub fn refires_of(command_id: &str) -> u32 {
        command_id
            .rsplit_once(":r")
            .and_then(|(_, k)| k.parse().ok())
            .unwrap_or(0)
    }
}
