//! Message templates: the shipped texts per channel and locale, a policy's overrides,
//! rendering a [`Message`] into what a provider sends, and the lint a policy
//! passes on write (required variables, the creditor's identity, SMS cost).
//!
//! Texts are minijinja templates. The variables are `name`, `first_name`, `total`,
//! `due_date`, `days_late`, `count`, `invoices` (each `id`, `amount`, `due_date`,
//! `description`), `payment` (`pix`, `boleto`, `url`) and `creditor` (`legal_name`,
//! `cnpj`, `address`, `contact`). E-mail bodies are wrapped in a layout that lists the
//! invoices and payment data and signs with the creditor's identity (CDC art. 42-A)
//! and the one-click unsubscribe link.

use std::collections::{BTreeMap, HashSet};
use std::sync::OnceLock;

use chrono::NaiveDate;
use minijinja::{Environment, Value};
use serde::{Deserialize, Serialize};

use crate::channel::Channel;
use crate::currency::Currency;
use crate::message::{Message, MessageInvoice, MessageKind};
use crate::sms::{self, Segments};

pub mod sandbox;

/// How a policy wants its SMS priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailTemplate {
    pub subject: String,
    pub body: String,
}

/// A WhatsApp template approved by Meta, and what fills its body parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatsappTemplate {
    /// The approved template's name.
    pub name: String,
    /// One minijinja expression per `{{n}}` body parameter, in order.
    pub params: Vec<String>,
}

/// The locales regua ships texts for; any other locale gets the first.
pub const LOCALES: [&str; 2] = ["pt-BR", "en-US"];

const SHIPPED: [(&str, &str); 2] = [
    ("pt-BR", include_str!("templates/pt-BR.yaml")),
    ("en-US", include_str!("templates/en-US.yaml")),
];

/// Why a message could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template `{template}` has no {channel} text for {locale}")]
    NotFound {
        template: String,
        channel: &'static str,
        locale: &'static str,
    },
    #[error("template `{template}` ({channel}): {reason}")]
    Render {
        template: String,
        channel: &'static str,
        reason: String,
    },
    /// The text leaves the policy subset, runs out of fuel or renders too much.
    #[error("template `{template}` ({channel}): {reason}")]
    Limit {
        template: String,
        channel: &'static str,
        reason: String,
    },
}

/// A WhatsApp template message's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhatsappBody {
    pub name: String,
    /// `pt_BR`, as the Cloud API spells languages.
    pub language: String,
    pub params: Vec<String>,
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rendered {
    /// E-mail only.
    pub subject: Option<String>,
    /// The SMS, the e-mail's text part, or the WhatsApp text as the debtor reads it.
    pub text: String,
    /// E-mail only.
    pub html: Option<String>,
    pub whatsapp: Option<WhatsappBody>,
    /// SMS only.
    pub segments: Option<Segments>,
}

/// Links the dispatcher adds to a message.
#[derive(Debug, Clone, Default)]
pub struct Links {
    /// The signed one-click unsubscribe URL (e-mail).
    pub unsubscribe_url: Option<String>,
}

#[derive(Deserialize)]
struct LocaleFile {
    labels: BTreeMap<String, String>,
    templates: BTreeMap<String, ChannelTemplates>,
}

struct Shipped {
    env: Environment<'static>,
    files: BTreeMap<&'static str, LocaleFile>,
}

const EMAIL_TEXT_LAYOUT: &str = "\
{{ greeting }}

{{ body }}

{{ l.invoices }}:
{% for i in invoices %}- {{ l.invoice }} {{ i.id }}{% if i.description %} ({{ i.description }}){% endif %}: {{ i.amount }}, {{ l.due }} {{ i.due_date }}
{% if i.breakdown and not thanks %}  {{ l.principal }} {{ i.principal }}{% if i.fine %} + {{ l.fine }} {{ i.fine }}{% endif %}{% if i.interest %} + {{ l.interest }} {{ i.interest }}{% endif %}{% if i.paid %} - {{ l.paid }} {{ i.paid }}{% endif %} = {{ l.balance }} {{ i.amount }} ({{ l.as_of }} {{ i.as_of }})
{% endif %}{% endfor %}{% if count > 1 %}{{ l.total }}: {{ total }}
{% endif %}{% if not thanks %}{% if payment.pix %}
{{ l.pay_pix }}: {{ payment.pix }}{% endif %}{% if payment.boleto %}
{{ l.pay_boleto }}: {{ payment.boleto }}{% endif %}{% if payment.url %}
{{ l.pay_url }}: {{ payment.url }}{% endif %}

{{ l.ignore_if_paid }}
{% endif %}
--
{{ l.creditor }}: {{ creditor.legal_name }}, CNPJ {{ creditor.cnpj }}
{{ creditor.address }} | {{ creditor.contact }}
{% if unsubscribe_url %}{{ l.unsubscribe }}: {{ unsubscribe_url }}
{% endif %}";

const EMAIL_HTML_LAYOUT: &str = r#"<!doctype html>
<html><body style="font-family:sans-serif;max-width:600px">
<p>{{ greeting }}</p>
{% for p in paragraphs %}<p>{{ p }}</p>
{% endfor %}<table style="border-collapse:collapse">
<tr><th align="left">{{ l.invoice }}</th><th align="right">{{ l.amount }}</th><th align="left">{{ l.due }}</th></tr>
{% for i in invoices %}<tr><td>{{ i.id }}{% if i.description %} ({{ i.description }}){% endif %}</td><td align="right">{{ i.amount }}</td><td>{{ i.due_date }}</td></tr>
{% if i.breakdown and not thanks %}<tr><td colspan="3" style="font-size:small">{{ l.principal }} {{ i.principal }}{% if i.fine %} + {{ l.fine }} {{ i.fine }}{% endif %}{% if i.interest %} + {{ l.interest }} {{ i.interest }}{% endif %}{% if i.paid %} &minus; {{ l.paid }} {{ i.paid }}{% endif %} = {{ l.balance }} {{ i.amount }} ({{ l.as_of }} {{ i.as_of }})</td></tr>
{% endif %}{% endfor %}{% if count > 1 %}<tr><td>{{ l.total }}</td><td align="right">{{ total }}</td><td></td></tr>
{% endif %}</table>
{% if not thanks %}{% if payment.pix %}<p>{{ l.pay_pix }}:<br><code>{{ payment.pix }}</code></p>
{% endif %}{% if payment.boleto %}<p>{{ l.pay_boleto }}:<br><code>{{ payment.boleto }}</code></p>
{% endif %}{% if payment.url %}<p><a href="{{ payment.url }}">{{ l.pay_url }}</a></p>
{% endif %}<p>{{ l.ignore_if_paid }}</p>
{% endif %}<hr>
<p style="font-size:small">{{ l.creditor }}: {{ creditor.legal_name }}, CNPJ {{ creditor.cnpj }}<br>{{ creditor.address }} | {{ creditor.contact }}</p>
{% if unsubscribe_url %}<p style="font-size:small"><a href="{{ unsubscribe_url }}">{{ l.unsubscribe }}</a></p>
{% endif %}</body></html>
"#;

fn shipped() -> Result<&'static Shipped, String> {
    static SHIPPED_SET: OnceLock<Result<Shipped, String>> = OnceLock::new();
    SHIPPED_SET
        .get_or_init(|| {
            let mut env = Environment::new();
            env.set_fuel(Some(sandbox::SHIPPED_FUEL));
            env.add_template_owned("layout/email.txt", EMAIL_TEXT_LAYOUT)
                .map_err(|e| e.to_string())?;
            env.add_template_owned("layout/email.html", EMAIL_HTML_LAYOUT)
                .map_err(|e| e.to_string())?;
            let mut files = BTreeMap::new();
            for (locale, yaml) in SHIPPED {
                let file: LocaleFile =
                    serde_yaml_ng::from_str(yaml).map_err(|e| format!("{locale}: {e}"))?;
                let greeting = file.labels.get("greeting").cloned().unwrap_or_default();
                env.add_template_owned(format!("{locale}/greeting"), greeting)
                    .map_err(|e| format!("{locale} greeting: {e}"))?;
                for (name, t) in &file.templates {
                    for (key, source) in sources(t) {
                        env.add_template_owned(format!("{locale}/{name}/{key}"), source)
                            .map_err(|e| format!("{locale}/{name}/{key}: {e}"))?;
                    }
                }
                files.insert(locale, file);
            }
            Ok(Shipped { env, files })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Every template source of `t`, keyed by part.
fn sources(t: &ChannelTemplates) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(s) = &t.sms {
        out.push(("sms".to_owned(), s.clone()));
    }
    if let Some(e) = &t.email {
        out.push(("email.subject".to_owned(), e.subject.clone()));
        out.push(("email.body".to_owned(), e.body.clone()));
    }
    if let Some(w) = &t.whatsapp {
        for (i, p) in w.params.iter().enumerate() {
            out.push((format!("whatsapp.{i}"), p.clone()));
        }
    }
    out
}

/// The shipped locale closest to `requested` (same language first, else pt-BR).
pub fn locale_of(requested: &str) -> &'static str {
    if let Some(l) = LOCALES.iter().find(|l| l.eq_ignore_ascii_case(requested)) {
        return l;
    }
    let lang = requested.split(['-', '_']).next().unwrap_or("");
    LOCALES
        .iter()
        .find(|l| {
            l.split('-')
                .next()
                .is_some_and(|x| x.eq_ignore_ascii_case(lang))
        })
        .copied()
        .unwrap_or(LOCALES[0])
}

/// Whether `template` has a `channel` text in `locale`, shipped or overridden.
pub fn exists(
    template: &str,
    channel: Channel,
    locale: &str,
    overrides: Option<&ChannelTemplates>,
) -> bool {
    overrides.is_some_and(|o| has(o, channel))
        || shipped().is_ok_and(|s| {
            s.files
                .get(locale_of(locale))
                .and_then(|f| f.templates.get(template))
                .is_some_and(|t| has(t, channel))
        })
}

/// Whether `t` has a text for `channel`.
fn has(t: &ChannelTemplates, channel: Channel) -> bool {
    match channel {
        Channel::Sms => t.sms.is_some(),
        Channel::Email => t.email.is_some(),
        Channel::Whatsapp => t.whatsapp.is_some(),
    }
}

fn format_amount(cents: i64, currency: &str, locale: &str) -> String {
    let digits = Currency::parse(currency).map_or(2, |c| c.minor_unit_digits());
    let (thousands, decimal) = if locale == "pt-BR" {
        ('.', ',')
    } else {
        (',', '.')
    };
    let abs = cents.unsigned_abs();
    let scale = 10u64.pow(u32::from(digits));
    let units = (abs / scale).to_string();
    let mut grouped = String::new();
    for (i, c) in units.chars().enumerate() {
        if i > 0 && (units.len() - i).is_multiple_of(3) {
            grouped.push(thousands);
        }
        grouped.push(c);
    }
    let sign = if cents < 0 { "-" } else { "" };
    let number = if digits == 0 {
        grouped
    } else {
        format!(
            "{grouped}{decimal}{:0width$}",
            abs % scale,
            width = usize::from(digits)
        )
    };
    match (currency, locale) {
        ("BRL", "pt-BR") => format!("{sign}R$ {number}"),
        ("BRL", _) => format!("{sign}R${number}"),
        _ => format!("{sign}{currency} {number}"),
    }
}

fn format_date(d: NaiveDate, locale: &str) -> String {
    if locale == "pt-BR" {
        d.format("%d/%m/%Y").to_string()
    } else {
        d.format("%m/%d/%Y").to_string()
    }
}

fn format_cnpj(cnpj: &str) -> String {
    let c: Vec<char> = cnpj.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if c.len() != 14 {
        return cnpj.to_owned();
    }
    let s = |a: usize, b: usize| c[a..b].iter().collect::<String>();
    format!(
        "{}.{}.{}/{}-{}",
        s(0, 2),
        s(2, 5),
        s(5, 8),
        s(8, 12),
        s(12, 14)
    )
}

#[derive(Serialize)]
struct Ctx<'a> {
    name: &'a str,
    first_name: &'a str,
    total: String,
    due_date: String,
    days_late: i64,
    count: usize,
    invoices: Vec<CtxInvoice<'a>>,
    payment: CtxPayment<'a>,
    creditor: CtxCreditor<'a>,
    thanks: bool,
    unsubscribe_url: Option<&'a str>,
}

#[derive(Serialize)]
struct CtxInvoice<'a> {
    id: &'a str,
    /// What is owed now: the balance on the command's day when reconciliation's
    /// breakdown is known (fine and interest in, payments out), else the principal.
    amount: String,
    due_date: String,
    description: Option<&'a str>,
    /// True when the amount differs from the principal: the layouts then show
    /// principal, fine, interest and what was paid.
    breakdown: bool,
    principal: String,
    fine: Option<String>,
    interest: Option<String>,
    paid: Option<String>,
    as_of: String,
}

#[derive(Serialize, Default)]
struct CtxPayment<'a> {
    pix: Option<&'a str>,
    boleto: Option<&'a str>,
    url: Option<&'a str>,
}

#[derive(Serialize)]
struct CtxCreditor<'a> {
    legal_name: &'a str,
    cnpj: String,
    address: &'a str,
    contact: &'a str,
}

/// The variables a template may use.
pub const VARIABLES: [&str; 11] = [
    "name",
    "first_name",
    "total",
    "due_date",
    "days_late",
    "count",
    "invoices",
    "payment",
    "creditor",
    "thanks",
    "unsubscribe_url",
];

fn context<'a>(cmd: &'a Message, locale: &str, links: &'a Links) -> Ctx<'a> {
    let currency = cmd.invoices.first().map_or("BRL", |i| i.currency.as_str());
    // Invoices in one command share a currency (the scheduler merges per customer and
    // currency); the sum is checked, and a sum that overflows shows the first amount.
    // A step shows what is owed on the day; the thank-you shows what was paid.
    let thanks = cmd.kind == MessageKind::Thanks;
    let owed = |i: &MessageInvoice| match (&i.due, thanks) {
        (Some(d), false) => d.balance_cents,
        (Some(d), true) if d.paid_cents > 0 => d.paid_cents,
        _ => i.amount_cents,
    };
    let total = cmd
        .invoices
        .iter()
        .try_fold(0i64, |acc, i| acc.checked_add(owed(i)))
        .unwrap_or_else(|| cmd.invoices.first().map_or(0, owed));
    let earliest = cmd.invoices.iter().map(|i| i.due_date).min();
    let effective = cmd.invoices.iter().map(|i| i.effective_due_date).min();
    let days_late = effective.map_or(0, |d| {
        (cmd.scheduled_for.date_naive() - d).num_days().max(0)
    });
    let payment = cmd
        .invoices
        .iter()
        .find_map(|i| i.payment.as_ref())
        .map(|p| CtxPayment {
            pix: p.pix_copy_paste.as_deref(),
            boleto: p.boleto_line.as_deref(),
            url: p.payment_url.as_deref(),
        })
        .unwrap_or_default();
    let name = cmd.recipient.name.as_str();
    Ctx {
        name,
        first_name: name.split_whitespace().next().unwrap_or(name),
        total: format_amount(total, currency, locale),
        due_date: earliest.map(|d| format_date(d, locale)).unwrap_or_default(),
        days_late,
        count: cmd.invoices.len(),
        invoices: cmd
            .invoices
            .iter()
            .map(|i| {
                let money = |c: i64| format_amount(c, &i.currency, locale);
                let nonzero = |c: i64| (c != 0).then(|| money(c));
                let d = i.due.as_ref();
                CtxInvoice {
                    id: &i.invoice_id,
                    amount: money(owed(i)),
                    due_date: format_date(i.due_date, locale),
                    description: i.description.as_deref(),
                    breakdown: d.is_some_and(|d| d.balance_cents != i.amount_cents),
                    principal: money(i.amount_cents),
                    fine: d.and_then(|d| nonzero(d.fine_cents)),
                    interest: d.and_then(|d| nonzero(d.interest_cents)),
                    paid: d.and_then(|d| nonzero(d.paid_cents)),
                    as_of: d.map(|d| format_date(d.on, locale)).unwrap_or_default(),
                }
            })
            .collect(),
        payment,
        creditor: CtxCreditor {
            legal_name: &cmd.creditor.legal_name,
            cnpj: format_cnpj(&cmd.creditor.cnpj),
            address: &cmd.creditor.address,
            contact: &cmd.creditor.contact,
        },
        thanks,
        unsubscribe_url: links.unsubscribe_url.as_deref(),
    }
}

/// Renders `cmd` for `channel`: the policy's override when it has one, else the
/// shipped text of the recipient's locale.
pub fn render(cmd: &Message, channel: Channel, links: &Links) -> Result<Rendered, TemplateError> {
    let locale = locale_of(&cmd.recipient.locale);
    let err = |reason: String| TemplateError::Render {
        template: cmd.template.clone(),
        channel: channel.as_str(),
        reason,
    };
    let stopped = |s: sandbox::Stopped| match s {
        sandbox::Stopped::Error(reason) => err(reason),
        limit => TemplateError::Limit {
            template: cmd.template.clone(),
            channel: channel.as_str(),
            reason: limit.to_string(),
        },
    };
    let shipped = shipped().map_err(err)?;
    // A shipped template, on the shipped fuel and output cap.
    let shipped_part = |name: &str, ctx: &Value| -> Result<String, TemplateError> {
        let t = shipped
            .env
            .get_template(name)
            .map_err(|e| err(e.to_string()))?;
        sandbox::render(&t, ctx, sandbox::MAX_SHIPPED_OUTPUT).map_err(stopped)
    };
    let ctx = Value::from_serialize(context(cmd, locale, links));
    let overrides = cmd.templates.as_ref();
    let file = shipped.files.get(locale);
    let base = file.and_then(|f| f.templates.get(&cmd.template));
    if !overrides.is_some_and(|o| has(o, channel)) && !base.is_some_and(|b| has(b, channel)) {
        return Err(TemplateError::NotFound {
            template: cmd.template.clone(),
            channel: channel.as_str(),
            locale,
        });
    }
    // Renders part `key`: the override's source when given, else the shipped template.
    let part = |key: &str, source: Option<&str>| -> Result<String, TemplateError> {
        match source {
            Some(src) => sandbox::render_policy(src, &ctx).map_err(stopped),
            None => shipped_part(&format!("{locale}/{}/{key}", cmd.template), &ctx),
        }
    };
    match channel {
        Channel::Sms => {
            let source = overrides.and_then(|o| o.sms.as_deref());
            let mut text = part("sms", source)?.trim().to_owned();
            if cmd.sms.transliterate {
                text = sms::transliterate(&text);
            }
            let segments = sms::segments(&text);
            Ok(Rendered {
                subject: None,
                text,
                html: None,
                whatsapp: None,
                segments: Some(segments),
            })
        }
        Channel::Email => {
            let own = overrides.and_then(|o| o.email.as_ref());
            let subject = part("email.subject", own.map(|e| e.subject.as_str()))?
                .trim()
                .to_owned();
            let body = part("email.body", own.map(|e| e.body.as_str()))?
                .trim()
                .to_owned();
            let greeting = shipped_part(&format!("{locale}/greeting"), &ctx)?;
            let labels = file.map(|f| &f.labels);
            let paragraphs: Vec<&str> = body
                .split("\n\n")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .collect();
            let layout_ctx = minijinja::context! {
                l => Value::from_serialize(labels),
                greeting => greeting,
                body => body,
                paragraphs => paragraphs,
                ..ctx.clone()
            };
            let text = shipped_part("layout/email.txt", &layout_ctx)?;
            let html = shipped_part("layout/email.html", &layout_ctx)?;
            Ok(Rendered {
                subject: Some(subject),
                text,
                html: Some(html),
                whatsapp: None,
                segments: None,
            })
        }
        Channel::Whatsapp => {
            let own: Option<&WhatsappTemplate> = overrides.and_then(|o| o.whatsapp.as_ref());
            // One of them is there: checked above.
            let Some(w) = own.or(base.and_then(|b| b.whatsapp.as_ref())) else {
                return Err(err("no whatsapp text".into()));
            };
            let (name, count) = (w.name.clone(), w.params.len());
            let mut params = Vec::with_capacity(count);
            for i in 0..count {
                let source = own.and_then(|w| w.params.get(i)).map(String::as_str);
                params.push(part(&format!("whatsapp.{i}"), source)?);
            }
            let text = format!("[{name}] {}", params.join(" | "));
            Ok(Rendered {
                subject: None,
                text,
                html: None,
                whatsapp: Some(WhatsappBody {
                    name,
                    language: locale.replace('-', "_"),
                    params,
                }),
                segments: None,
            })
        }
    }
}

/// One problem a template has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateIssue {
    /// Where, relative to the template: `sms`, `email.body`, `whatsapp.params[1]`.
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

/// What every collection message must mention, per channel: the debtor, the amount,
/// the due date and, by CDC art. 42-A, the creditor's legal name and CNPJ (its address
/// and contact are on the e-mail, and behind the payment link). E-mail gets the
/// greeting, the invoice list and the creditor from the layout, so its texts need only
/// the amount.
fn required(channel: Channel) -> &'static [(&'static [&'static str], &'static str)] {
    const NAME: (&[&str], &str) = (&["name", "first_name"], "the debtor's name");
    const AMOUNT: (&[&str], &str) = (&["total", "invoices"], "the amount (`total`)");
    const DUE: (&[&str], &str) = (&["due_date", "invoices"], "the due date (`due_date`)");
    const CREDITOR: (&[&str], &str) = (
        &["creditor.legal_name"],
        "the creditor's legal name (`creditor.legal_name`, CDC art. 42-A)",
    );
    const CNPJ: (&[&str], &str) = (
        &["creditor.cnpj"],
        "the creditor's CNPJ (`creditor.cnpj`, CDC art. 42-A)",
    );
    match channel {
        Channel::Email => &[AMOUNT],
        Channel::Sms | Channel::Whatsapp => &[NAME, AMOUNT, DUE, CREDITOR, CNPJ],
    }
}

/// Lints a policy's own texts: they compile, use only known variables, and mention
/// what the channel's message must carry.
pub fn lint(t: &ChannelTemplates) -> Vec<TemplateIssue> {
    let env = Environment::new();
    let mut issues = Vec::new();
    let mut check = |channel: Channel, parts: Vec<(String, &str)>| {
        let mut used: HashSet<String> = HashSet::new();
        for (field, source) in parts {
            for f in sandbox::check(source) {
                issues.push(TemplateIssue {
                    field: field.clone(),
                    code: f.code,
                    message: f.message,
                });
            }
            match env.template_from_str(source) {
                Ok(tmpl) => {
                    for v in tmpl.undeclared_variables(true) {
                        let root = v.split('.').next().unwrap_or("").to_owned();
                        if !VARIABLES.contains(&root.as_str()) {
                            issues.push(TemplateIssue {
                                field: field.clone(),
                                code: "unknown_variable",
                                message: format!(
                                    "`{v}` is not a template variable (known: {})",
                                    VARIABLES.join(", ")
                                ),
                            });
                        }
                        used.insert(v);
                    }
                }
                Err(e) => issues.push(TemplateIssue {
                    field: field.clone(),
                    code: "template_syntax",
                    message: e.to_string(),
                }),
            }
        }
        for (names, what) in required(channel) {
            if !names.iter().any(|n| used.contains(*n)) {
                issues.push(TemplateIssue {
                    field: channel.as_str().to_owned(),
                    code: if names.iter().any(|n| n.starts_with("creditor")) {
                        "missing_creditor"
                    } else {
                        "missing_variable"
                    },
                    message: format!("the {} text must mention {what}", channel.as_str()),
                });
            }
        }
    };
    if let Some(s) = &t.sms {
        check(Channel::Sms, vec![("sms".to_owned(), s.as_str())]);
    }
    if let Some(e) = &t.email {
        check(
            Channel::Email,
            vec![
                ("email.subject".to_owned(), e.subject.as_str()),
                ("email.body".to_owned(), e.body.as_str()),
            ],
        );
    }
    if let Some(w) = &t.whatsapp {
        check(
            Channel::Whatsapp,
            w.params
                .iter()
                .enumerate()
                .map(|(i, p)| (format!("whatsapp.params[{i}]"), p.as_str()))
                .collect(),
        );
    }
    if t.whatsapp.as_ref().is_some_and(|w| w.name.is_empty()) {
        issues.push(TemplateIssue {
            field: "whatsapp.name".into(),
            code: "required",
            message: "the approved template's name is required".into(),
        });
    }
    issues
}

/// A message with long but realistic values, to price SMS texts at policy write.
pub fn sample_message(template: &str, locale: &str, sms: SmsOptions) -> Message {
    use crate::message::{Creditor, PaymentData, Recipient};
    let due = NaiveDate::from_ymd_opt(2026, 12, 10).unwrap_or_default();
    Message {
        kind: MessageKind::Step,
        creditor: Creditor {
            legal_name: "Companhia Exemplo de Serviços Ltda".into(),
            cnpj: "11222333000181".into(),
            address: "Av. Paulista, 1000, São Paulo - SP".into(),
            contact: "0800 000 0000".into(),
        },
        recipient: Recipient {
            name: "Maria Aparecida dos Santos".into(),
            locale: locale.into(),
        },
        template: template.into(),
        invoices: vec![MessageInvoice {
            invoice_id: "NF-2026-000123".into(),
            amount_cents: 1_234_567,
            currency: "BRL".into(),
            due_date: due,
            effective_due_date: due,
            description: None,
            payment: Some(PaymentData {
                pix_copy_paste: None,
                boleto_line: None,
                payment_url: Some("https://pay.example.com/i/AbCdEf123456".into()),
            }),
            due: None,
        }],
        scheduled_for: due.and_hms_opt(12, 0, 0).unwrap_or_default().and_utc(),
        sms,
        templates: None,
    }
}

#[cfg(test)]
mod tests;
