//! The régua itself: a policy of steps at offsets from the due date, with the rules that
//! keep collection respectful (send window, contact caps, grace for good payers, the
//! prior notice before negativação). Policies are written as YAML or JSON.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveTime;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::calendar::CalendarConfig;
use crate::message::MAX_INVOICES_PER_MESSAGE;
use crate::template::{self, ChannelTemplates, SmsOptions, TemplateError};
use crate::window::{SendWindow, hhmm};

/// A channel a step may use (policies, schedules and opt-outs name channels alike).
pub use crate::channel::Channel;

/// A debtor's risk class, derived from their payment history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskClass {
    Good,
    Regular,
    Risky,
}

impl RiskClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskClass::Good => "good",
            RiskClass::Regular => "regular",
            RiskClass::Risky => "risky",
        }
    }
}

/// A step's offset in days from the due date: `D-5`, `D0`, `D+3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Offset(pub i32);

impl Offset {
    pub fn parse(s: &str) -> Result<Offset, String> {
        let err = || format!("{s:?} is not an offset like D-5, D0 or D+3");
        let rest = s.trim().strip_prefix(['D', 'd']).ok_or_else(err)?;
        let days: i32 = match rest.strip_prefix('+') {
            Some(n) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                n.parse().map_err(|_| err())?
            }
            Some(_) => return Err(err()),
            None if rest == "0" => 0,
            None => match rest.strip_prefix('-') {
                Some(n) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                    -n.parse::<i32>().map_err(|_| err())?
                }
                _ => return Err(err()),
            },
        };
        if days.abs() > 3650 {
            return Err(format!("{s:?} is more than ten years from the due date"));
        }
        Ok(Offset(days))
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("D0"),
            n if n > 0 => write!(f, "D+{n}"),
            n => write!(f, "D{n}"),
        }
    }
}

impl Serialize for Offset {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Offset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Offset::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Send a message on the first usable channel of `channels`; the rest are fallbacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    pub channels: Vec<Channel>,
    pub template: String,
    /// Marks this message as the written prior notice of an escalation level
    /// (`negativacao`: CDC art. 43 §2, Súmula 359 STJ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_notice_of: Option<String>,
}

impl Notify {
    /// The channels to try for a debtor, in order: the debtor's `preferred` channel first
    /// when the step lists it, then the step's own order; only those `usable` for the
    /// debtor (reachable, not opted out). A preference the step does not list is not
    /// used: the policy decides which channels a step may take.
    pub fn channels_for(
        &self,
        preferred: Option<Channel>,
        usable: impl Fn(Channel) -> bool,
    ) -> Vec<Channel> {
        let first = preferred.filter(|p| self.channels.contains(p));
        first
            .into_iter()
            .chain(self.channels.iter().copied().filter(|c| Some(*c) != first))
            .filter(|c| usable(*c))
            .collect()
    }
}

/// Emit `invoice.escalated` with `level`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalate {
    pub level: String,
}

/// One step of a régua. Exactly one of `notify`, `escalate` and `offer` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    /// Offset from the due date. Negative offsets count from the due date as printed;
    /// `D0` and later count from the effective due date (the next business day).
    pub at: Offset,
    /// Local time of day in the debtor's zone; the window's opening when absent.
    #[serde(
        default,
        with = "hhmm::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub time: Option<NaiveTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalate: Option<Escalate>,
    /// Reserved for negotiation offers; accepted and stored, not acted on yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Value>,
}

/// What a step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    Notify(&'a Notify),
    Escalate(&'a Escalate),
    Offer,
}

impl Step {
    /// The step's action; `Offer` for a step without a valid single action (rejected on
    /// write, so only seen on hand-built values).
    pub fn action(&self) -> Action<'_> {
        match (&self.notify, &self.escalate) {
            (Some(n), None) => Action::Notify(n),
            (None, Some(e)) => Action::Escalate(e),
            _ => Action::Offer,
        }
    }
}

/// Which invoices a policy applies to. All given criteria must match; a policy with
/// `default: true` takes the invoices no other policy takes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliesTo {
    #[serde(default)]
    pub default: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<String>,
    /// Any of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub risk: Vec<RiskClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_amount_cents: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_amount_cents: Option<i64>,
}

/// What selecting a policy looks at.
#[derive(Debug, Clone, Copy)]
pub struct InvoiceFacts<'a> {
    pub segment: Option<&'a str>,
    pub tags: &'a [String],
    pub risk: RiskClass,
    pub amount_cents: i64,
}

impl AppliesTo {
    /// Whether the criteria (ignoring `default`) match.
    pub fn matches(&self, f: &InvoiceFacts<'_>) -> bool {
        (self.segments.is_empty()
            || f.segment
                .is_some_and(|s| self.segments.iter().any(|x| x == s)))
            && (self.tags.is_empty() || f.tags.iter().any(|t| self.tags.contains(t)))
            && (self.risk.is_empty() || self.risk.contains(&f.risk))
            && self.min_amount_cents.is_none_or(|m| f.amount_cents >= m)
            && self.max_amount_cents.is_none_or(|m| f.amount_cents <= m)
    }

    fn has_criteria(&self) -> bool {
        !self.segments.is_empty()
            || !self.tags.is_empty()
            || !self.risk.is_empty()
            || self.min_amount_cents.is_some()
            || self.max_amount_cents.is_some()
    }
}

/// Contact caps per customer, across every channel and invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caps {
    #[serde(default = "one")]
    pub per_day: u32,
    #[serde(default = "three")]
    pub per_7_days: u32,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            per_day: 1,
            per_7_days: 3,
        }
    }
}

/// How a payment history maps to a [`RiskClass`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskRules {
    /// Good: has paid before, never more than this many days late.
    #[serde(default = "good_max")]
    pub good_max_days_late: u32,
    /// Risky: once paid this many days late or more...
    #[serde(default = "risky_days")]
    pub risky_min_days_late: u32,
    /// ...or paid late this many times.
    #[serde(default = "risky_count")]
    pub risky_min_late_payments: u32,
}

fn good_max() -> u32 {
    3
}
fn risky_days() -> u32 {
    30
}
fn risky_count() -> u32 {
    3
}

impl Default for RiskRules {
    fn default() -> Self {
        RiskRules {
            good_max_days_late: 3,
            risky_min_days_late: 30,
            risky_min_late_payments: 3,
        }
    }
}

/// A customer's payment history, kept by the scheduler from `invoice.paid` events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentHistory {
    pub paid: u32,
    pub paid_late: u32,
    pub max_days_late: u32,
}

impl PaymentHistory {
    /// Records one paid invoice, `days_late` after its effective due date (0 = on time).
    pub fn record(&mut self, days_late: u32) {
        self.paid = self.paid.saturating_add(1);
        if days_late > 0 {
            self.paid_late = self.paid_late.saturating_add(1);
        }
        self.max_days_late = self.max_days_late.max(days_late);
    }
}

impl RiskRules {
    /// `regular` for a customer with no history.
    pub fn classify(&self, h: &PaymentHistory) -> RiskClass {
        if h.paid == 0 {
            RiskClass::Regular
        } else if h.max_days_late >= self.risky_min_days_late
            || h.paid_late >= self.risky_min_late_payments
        {
            RiskClass::Risky
        } else if h.max_days_late <= self.good_max_days_late {
            RiskClass::Good
        } else {
            RiskClass::Regular
        }
    }
}

/// A policy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub applies_to: AppliesTo,
    /// Among matching non-default policies the highest priority wins (then the name).
    #[serde(default)]
    pub priority: i32,
    pub steps: Vec<Step>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_paid: Option<Notify>,
    #[serde(default)]
    pub send_window: SendWindow,
    #[serde(default)]
    pub caps: Caps,
    /// Days that after-due steps move later for good payers.
    #[serde(default)]
    pub grace_days: u32,
    #[serde(default)]
    pub calendar: CalendarConfig,
    #[serde(default)]
    pub risk_rules: RiskRules,
    /// How SMS texts are priced: at most `max_segments` segments (checked on write),
    /// and optional transliteration to GSM-7.
    #[serde(default)]
    pub sms: SmsOptions,
    /// The policy's own texts: template name, then locale (`pt-BR`, `en-US`), then
    /// channel. Anything not given uses the shipped text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, BTreeMap<String, ChannelTemplates>>,
}

/// One problem with a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyIssue {
    pub field: String,
    pub code: &'static str,
    pub message: String,
}

/// The prior notice needed before this escalation level, and how many days before.
pub const NEGATIVACAO: &str = "negativacao";
/// Minimum days between the written notice and negativação (this product's rule; the
/// law asks for prior written notice and bureaus wait 10 days).
pub const NEGATIVACAO_NOTICE_DAYS: i32 = 10;

/// Whether `s` is a valid policy, step, template or level name: 1-64 characters of
/// `a-z`, `0-9`, `_` and `-`.
pub fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Policy {
    /// Parses a YAML or JSON document (JSON is YAML), then validates it. Every problem
    /// found is reported; a document that does not parse reports where it broke.
    pub fn parse(text: &str) -> Result<Policy, Vec<PolicyIssue>> {
        Policy::from_value(Policy::document(text)?)
    }

    /// Reads a YAML or JSON document without validating it as a policy.
    pub fn document(text: &str) -> Result<Value, Vec<PolicyIssue>> {
        serde_yaml_ng::from_str(text).map_err(|e| {
            vec![PolicyIssue {
                field: String::new(),
                code: "syntax",
                message: format!("not YAML or JSON: {e}"),
            }]
        })
    }

    /// Validates an already-parsed document.
    pub fn from_value(value: Value) -> Result<Policy, Vec<PolicyIssue>> {
        let policy: Policy = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            vec![PolicyIssue {
                field: if field == "." { String::new() } else { field },
                code: "invalid",
                message: e.into_inner().to_string(),
            }]
        })?;
        let issues = policy.check();
        if issues.is_empty() {
            Ok(policy)
        } else {
            Err(issues)
        }
    }

    /// The rules serde cannot express.
    pub fn check(&self) -> Vec<PolicyIssue> {
        let mut out = Vec::new();
        let mut issue = |field: String, code: &'static str, message: String| {
            out.push(PolicyIssue {
                field,
                code,
                message,
            })
        };
        if self.steps.is_empty() {
            issue(
                "steps".into(),
                "required",
                "a policy needs at least one step".into(),
            );
        }
        if self.steps.len() > 50 {
            issue("steps".into(), "too_many", "at most 50 steps".into());
        }
        if self.applies_to.default && self.applies_to.has_criteria() {
            issue(
                "applies_to".into(),
                "conflict",
                "a default policy takes every invoice; give criteria or default, not both".into(),
            );
        }
        if let (Some(min), Some(max)) = (
            self.applies_to.min_amount_cents,
            self.applies_to.max_amount_cents,
        ) && min > max
        {
            issue(
                "applies_to.max_amount_cents".into(),
                "invalid_range",
                "max_amount_cents is below min_amount_cents".into(),
            );
        }
        let check_notify =
            |field: String, n: &Notify, issue: &mut dyn FnMut(String, &'static str, String)| {
                if n.channels.is_empty() {
                    issue(
                        format!("{field}.channels"),
                        "required",
                        "list at least one channel".into(),
                    );
                }
                let mut seen = n.channels.clone();
                seen.sort();
                seen.dedup();
                if seen.len() != n.channels.len() {
                    issue(
                        format!("{field}.channels"),
                        "duplicate",
                        "a channel is listed twice".into(),
                    );
                }
                if !valid_name(&n.template) {
                    issue(
                        format!("{field}.template"),
                        "invalid_name",
                        "template names are 1-64 characters of a-z, 0-9, '_' or '-'".into(),
                    );
                }
            };
        let mut names: Vec<&str> = Vec::new();
        let mut prev: Option<Offset> = None;
        for (i, step) in self.steps.iter().enumerate() {
            let field = format!("steps[{i}]");
            if !valid_name(&step.name) {
                issue(
                    format!("{field}.name"),
                    "invalid_name",
                    "step names are 1-64 characters of a-z, 0-9, '_' or '-'".into(),
                );
            }
            if names.contains(&step.name.as_str()) {
                issue(
                    format!("{field}.name"),
                    "duplicate",
                    format!("step {} appears twice", step.name),
                );
            }
            names.push(&step.name);
            if let Some(p) = prev
                && step.at <= p
            {
                issue(
                    format!("{field}.at"),
                    "out_of_order",
                    format!(
                        "steps must be in increasing offset order; {} is not after {p}",
                        step.at
                    ),
                );
            }
            prev = Some(step.at);
            let actions = usize::from(step.notify.is_some())
                + usize::from(step.escalate.is_some())
                + usize::from(step.offer.is_some());
            if actions != 1 {
                issue(
                    field.clone(),
                    "one_action",
                    "a step has exactly one of notify, escalate or offer".into(),
                );
            }
            if let Some(n) = &step.notify {
                check_notify(format!("{field}.notify"), n, &mut issue);
            }
            if let Some(e) = &step.escalate {
                if !valid_name(&e.level) {
                    issue(
                        format!("{field}.escalate.level"),
                        "invalid_name",
                        "levels are 1-64 characters of a-z, 0-9, '_' or '-'".into(),
                    );
                }
                if step.at.0 <= 0 {
                    issue(
                        format!("{field}.at"),
                        "too_early",
                        "escalation comes after the due date, never before".into(),
                    );
                }
                if e.level == NEGATIVACAO {
                    let noticed = self.steps[..i].iter().any(|s| {
                        s.notify
                            .as_ref()
                            .is_some_and(|n| n.prior_notice_of.as_deref() == Some(NEGATIVACAO))
                            && s.at.0 <= step.at.0 - NEGATIVACAO_NOTICE_DAYS
                    });
                    if !noticed {
                        issue(
                            format!("{field}.escalate"),
                            "prior_notice_required",
                            format!(
                                "negativação needs an earlier notify step with prior_notice_of: negativacao at least {NEGATIVACAO_NOTICE_DAYS} days before (CDC art. 43 §2, Súmula 359 STJ)"
                            ),
                        );
                    }
                }
            }
            if let Some(offer) = &step.offer
                && !offer.is_object()
            {
                issue(
                    format!("{field}.offer"),
                    "invalid",
                    "offer is an object (reserved for negotiation)".into(),
                );
            }
        }
        if let Some(n) = &self.on_paid {
            check_notify("on_paid".into(), n, &mut issue);
        }
        for (field, message) in self.send_window.check() {
            let f = if field.is_empty() {
                "send_window".to_owned()
            } else {
                format!("send_window.{field}")
            };
            issue(f, "invalid_window", message);
        }
        if self.caps.per_day == 0 || self.caps.per_7_days == 0 {
            issue(
                "caps".into(),
                "invalid_caps",
                "caps must allow at least one message".into(),
            );
        }
        if self.caps.per_day > self.caps.per_7_days {
            issue(
                "caps.per_day".into(),
                "invalid_caps",
                "per_day cannot exceed per_7_days".into(),
            );
        }
        if self.grace_days > 60 {
            issue(
                "grace_days".into(),
                "too_large",
                "grace_days is at most 60".into(),
            );
        }
        if self.risk_rules.good_max_days_late >= self.risk_rules.risky_min_days_late {
            issue(
                "risk_rules.good_max_days_late".into(),
                "invalid_range",
                "good_max_days_late must be below risky_min_days_late".into(),
            );
        }
        self.check_templates(&mut issue);
        out
    }

    /// The policy's own texts for `template` in the shipped locale closest to `locale`.
    pub fn texts(&self, template: &str, locale: &str) -> Option<&ChannelTemplates> {
        let by_locale = self.templates.get(template)?;
        by_locale
            .get(locale)
            .or_else(|| by_locale.get(template::locale_of(locale)))
    }

    /// Template checks: every notify's template has a text for each of its channels in
    /// every shipped locale, the policy's own texts pass the lint, and SMS texts fit
    /// `sms.max_segments`.
    fn check_templates(&self, issue: &mut impl FnMut(String, &'static str, String)) {
        for (name, by_locale) in &self.templates {
            for (locale, t) in by_locale {
                if !template::LOCALES.contains(&locale.as_str()) {
                    issue(
                        format!("templates.{name}.{locale}"),
                        "unknown_locale",
                        format!("locale must be one of {}", template::LOCALES.join(", ")),
                    );
                }
                for i in template::lint(t) {
                    issue(
                        format!("templates.{name}.{locale}.{}", i.field),
                        i.code,
                        i.message,
                    );
                }
            }
        }
        if !(1..=10).contains(&self.sms.max_segments) {
            issue(
                "sms.max_segments".into(),
                "invalid_range",
                "max_segments is between 1 and 10".into(),
            );
        }
        let notifies = self
            .steps
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.notify.as_ref().map(|n| (format!("steps[{i}].notify"), n)))
            .chain(self.on_paid.as_ref().map(|n| ("on_paid".to_owned(), n)));
        for (field, n) in notifies {
            for locale in template::LOCALES {
                let own = self.texts(&n.template, locale);
                for &channel in &n.channels {
                    if !template::exists(&n.template, channel, locale, own) {
                        issue(
                            format!("{field}.template"),
                            "unknown_template",
                            format!(
                                "template `{}` has no {} text for {locale}: add it under templates.{}.{locale}",
                                n.template,
                                channel.as_str(),
                                n.template
                            ),
                        );
                        continue;
                    }
                    // Rendered on write with as many invoices as one message carries,
                    // so a text over its limits is refused here, not at send.
                    let mut sample = template::sample_message(&n.template, locale, self.sms);
                    sample.templates = own.cloned();
                    let mut full = sample.clone();
                    full.invoices = vec![sample.invoices[0].clone(); MAX_INVOICES_PER_MESSAGE];
                    let links = template::Links::default();
                    if let Err(e) = template::render(&full, channel, &links) {
                        let code = match e {
                            TemplateError::Limit { .. } => "template_limit",
                            _ => "template_error",
                        };
                        issue(format!("{field}.template"), code, e.to_string());
                        continue;
                    }
                    if channel != Channel::Sms {
                        continue;
                    }
                    match template::render(&sample, Channel::Sms, &links) {
                        Ok(r) => {
                            let seg = r.segments.map_or(1, |s| s.count);
                            if seg > usize::from(self.sms.max_segments) {
                                issue(
                                    format!("{field}.template"),
                                    "sms_too_long",
                                    format!(
                                        "the {locale} SMS of `{}` takes {seg} segments, over sms.max_segments = {}{}",
                                        n.template,
                                        self.sms.max_segments,
                                        if self.sms.transliterate {
                                            ""
                                        } else {
                                            " (sms.transliterate: true halves the cost of accented texts)"
                                        }
                                    ),
                                );
                            }
                        }
                        Err(e) => {
                            issue(format!("{field}.template"), "template_error", e.to_string())
                        }
                    }
                }
            }
        }
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// The starter policy every tenant gets, in pt-BR, following the practice in DOMAIN.md.
pub const PADRAO_YAML: &str = include_str!("padrao.yaml");

/// The name of the starter policy.
pub const PADRAO: &str = "padrao";

/// [`PADRAO_YAML`], parsed.
pub fn padrao() -> Policy {
    // The file is checked by a unit test; an empty policy is never returned in practice.
    Policy::parse(PADRAO_YAML).unwrap_or_else(|_| Policy {
        description: None,
        applies_to: AppliesTo {
            default: true,
            ..AppliesTo::default()
        },
        priority: 0,
        steps: Vec::new(),
        on_paid: None,
        send_window: SendWindow::default(),
        caps: Caps::default(),
        grace_days: 0,
        calendar: CalendarConfig::default(),
        risk_rules: RiskRules::default(),
        sms: SmsOptions::default(),
        templates: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debtors_preferred_channel_goes_first_when_the_step_lists_it() {
        let n = Notify {
            channels: vec![Channel::Whatsapp, Channel::Sms, Channel::Email],
            template: "t".into(),
            prior_notice_of: None,
        };
        let all = |_: Channel| true;
        assert_eq!(
            n.channels_for(Some(Channel::Email), all),
            vec![Channel::Email, Channel::Whatsapp, Channel::Sms]
        );
        assert_eq!(
            n.channels_for(None, all),
            vec![Channel::Whatsapp, Channel::Sms, Channel::Email]
        );
        // Unusable for the debtor: the step's order, without it.
        assert_eq!(
            n.channels_for(Some(Channel::Email), |c| c != Channel::Email),
            vec![Channel::Whatsapp, Channel::Sms]
        );
        let email_only = Notify {
            channels: vec![Channel::Email],
            ..n
        };
        assert_eq!(
            email_only.channels_for(Some(Channel::Whatsapp), all),
            vec![Channel::Email],
            "a preference the step does not list is not used"
        );
    }

    #[test]
    fn offsets_parse_and_print() {
        for (s, n) in [("D-5", -5), ("D0", 0), ("D+3", 3), ("d+15", 15)] {
            assert_eq!(Offset::parse(s), Ok(Offset(n)));
        }
        for bad in ["D", "5", "D+", "D-x", "D3", "D+-3", "D+99999"] {
            assert!(Offset::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Offset(-5).to_string(), "D-5");
        assert_eq!(Offset(3).to_string(), "D+3");
    }

    #[test]
    fn padrao_is_valid_and_follows_practice() {
        let p = Policy::parse(PADRAO_YAML).unwrap();
        assert!(p.applies_to.default);
        let first = &p.steps[0];
        assert!(first.at.0 < 0, "a reminder before the due date");
        assert!(p.steps.iter().any(|s| s.at.0 == 0), "a due-today message");
        let neg = p
            .steps
            .iter()
            .find(|s| s.escalate.as_ref().is_some_and(|e| e.level == NEGATIVACAO))
            .unwrap();
        let notice = p
            .steps
            .iter()
            .find(|s| {
                s.notify
                    .as_ref()
                    .is_some_and(|n| n.prior_notice_of.is_some())
            })
            .unwrap();
        assert!(neg.at.0 - notice.at.0 >= NEGATIVACAO_NOTICE_DAYS);
        assert!(p.on_paid.is_some(), "thanks after payment");
        assert_eq!(padrao(), p);
    }

    #[test]
    fn bad_policies_get_field_level_errors() {
        let bad = r#"
steps:
  - name: a
    at: D+3
    notify: {channels: [], template: "Bad Name"}
  - name: a
    at: D+1
    escalate: {level: negativacao}
caps: {per_day: 4, per_7_days: 3}
"#;
        let issues = Policy::parse(bad).unwrap_err();
        let fields: Vec<&str> = issues.iter().map(|i| i.field.as_str()).collect();
        for f in [
            "steps[0].notify.channels",
            "steps[0].notify.template",
            "steps[1].name",
            "steps[1].at",
            "steps[1].escalate",
            "caps.per_day",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
        let structural = Policy::parse(
            "steps:\n  - name: a\n    at: X+1\n    notify: {channels: [fax], template: t}\n",
        )
        .unwrap_err();
        assert_eq!(structural.len(), 1);
        assert!(
            structural[0].field.starts_with("steps[0]"),
            "{structural:?}"
        );
        assert!(Policy::parse("{").unwrap_err()[0].code == "syntax");
        assert!(
            Policy::parse("steps: []\nsurprise: 1").unwrap_err()[0]
                .message
                .contains("surprise")
        );
    }

    #[test]
    fn risk_classes() {
        let r = RiskRules::default();
        let mut h = PaymentHistory::default();
        assert_eq!(r.classify(&h), RiskClass::Regular);
        h.record(0);
        assert_eq!(r.classify(&h), RiskClass::Good);
        h.record(10);
        assert_eq!(r.classify(&h), RiskClass::Regular);
        h.record(45);
        assert_eq!(r.classify(&h), RiskClass::Risky);
    }

    #[test]
    fn selection_criteria() {
        let a = AppliesTo {
            segments: vec!["varejo".into()],
            min_amount_cents: Some(100),
            ..AppliesTo::default()
        };
        let tags = vec!["x".to_owned()];
        let f = InvoiceFacts {
            segment: Some("varejo"),
            tags: &tags,
            risk: RiskClass::Good,
            amount_cents: 500,
        };
        assert!(a.matches(&f));
        assert!(!a.matches(&InvoiceFacts {
            amount_cents: 50,
            ..f
        }));
        assert!(!a.matches(&InvoiceFacts { segment: None, ..f }));
    }
}

#[cfg(test)]
mod readme {
    use super::*;

    /// The policy example in the policy reference (docs/policies.md, once the README's)
    /// is a valid policy.
    #[test]
    fn the_readme_example_is_valid() {
        let readme = include_str!("../../../docs/policies.md");
        let start = readme.find("# The régua: policies").unwrap();
        let block = &readme[start..];
        let yaml = block
            .split("```yaml\n")
            .nth(1)
            .unwrap()
            .split("```")
            .next()
            .unwrap();
        let p = Policy::parse(yaml).unwrap();
        assert_eq!(p.steps.len(), 5);
        assert!(p.steps.iter().any(|s| s.offer.is_some()));
    }

    fn issues(yaml: &str) -> Vec<(String, &'static str)> {
        Policy::parse(yaml)
            .unwrap_err()
            .into_iter()
            .map(|i| (i.field, i.code))
            .collect()
    }

    #[test]
    fn an_sms_over_the_segment_budget_is_refused_and_transliteration_helps() {
        let base = "steps:\n  - name: aviso\n    at: D+3\n    notify:\n      channels: [sms]\n      template: aviso_previo_negativacao\n";
        let strict = format!("{base}sms:\n  max_segments: 1\n");
        let got = issues(&strict);
        assert!(
            got.contains(&("steps[0].notify.template".into(), "sms_too_long")),
            "{got:?}"
        );
        // The shipped pt-BR text takes 2 UCS-2 segments and fits 2 GSM-7 ones.
        let two = format!("{base}sms:\n  max_segments: 2\n  transliterate: true\n");
        Policy::parse(&two).unwrap();
    }

    #[test]
    fn own_texts_are_linted_and_unknown_templates_named() {
        let yaml = r#"
steps:
  - name: lembrete
    at: D-2
    notify:
      channels: [sms, email]
      template: meu_lembrete
templates:
  meu_lembrete:
    pt-BR:
      sms: "Oi {{ first_name }}, pague {{ total }} ate {{ due_date }}"
"#;
        let got = issues(yaml);
        assert!(
            got.contains(&(
                "templates.meu_lembrete.pt-BR.sms".into(),
                "missing_creditor"
            )),
            "{got:?}"
        );
        // No e-mail text, and no text at all for en-US.
        assert!(
            got.contains(&("steps[0].notify.template".into(), "unknown_template")),
            "{got:?}"
        );
        let fixed = r#"
steps:
  - name: lembrete
    at: D-2
    notify:
      channels: [sms]
      template: meu_lembrete
templates:
  meu_lembrete:
    pt-BR:
      sms: "{{ creditor.legal_name }} ({{ creditor.cnpj }}): {{ first_name }}, pague {{ total }} ate {{ due_date }}"
    en-US:
      sms: "{{ creditor.legal_name }} ({{ creditor.cnpj }}): {{ first_name }}, pay {{ total }} by {{ due_date }}"
"#;
        let p = Policy::parse(fixed).unwrap();
        assert!(p.texts("meu_lembrete", "pt-BR").is_some());
        assert!(p.texts("meu_lembrete", "pt").is_some());
    }

    #[test]
    fn texts_outside_the_subset_or_over_their_limits_are_refused_on_write() {
        let policy = |sms: &str| {
            format!(
                "steps:\n  - {{name: x, at: D+1, notify: {{channels: [sms], template: t}}}}\ntemplates:\n  t:\n    pt-BR: {{sms: \"{sms}\"}}\n    en-US: {{sms: \"{sms}\"}}\n"
            )
        };
        let ok = "{{ creditor.legal_name }} {{ creditor.cnpj }}: {{ first_name }} {{ total }} {{ due_date }}";
        Policy::parse(&policy(ok)).unwrap();
        let got = issues(&policy(&format!("{ok}{{{{ name ~ name }}}}")));
        assert!(
            got.contains(&("templates.t.pt-BR.sms".into(), "template_forbidden")),
            "{got:?}"
        );
        // In the subset, but 26^4 iterations over the sample's name: out of fuel.
        let spins = "{% for a in name %}{% for b in name %}{% for c in name %}{% for d in name %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}";
        let got = issues(&policy(&format!("{ok}{spins}")));
        assert!(
            got.contains(&("steps[0].notify.template".into(), "template_limit")),
            "{got:?}"
        );
    }
}
