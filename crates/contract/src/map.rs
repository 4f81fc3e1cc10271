//! The wire's types mapped to and from the domain's vocabulary. The domain owns its
//! words (a channel, a template's texts, what an invoice owes); the wire spells the same
//! things for integrators and other services. Keeping them apart means a wire change
//! cannot move a rule, and a rule cannot quietly change the wire: every crossing is one
//! of these conversions.

use regua_domain::charges;
use regua_domain::message as dm;
use regua_domain::template as dt;

use crate::commands::{
    ChannelTemplates, CommandInvoice, CommandKind, Creditor, DispatchCommand, EmailTemplate,
    SmsOptions, WhatsappTemplate,
};
use crate::events::AmountDue;
use crate::inbound::{Channel, PaymentData};

impl From<Channel> for regua_domain::Channel {
    fn from(c: Channel) -> Self {
        match c {
            Channel::Email => regua_domain::Channel::Email,
            Channel::Sms => regua_domain::Channel::Sms,
            Channel::Whatsapp => regua_domain::Channel::Whatsapp,
        }
    }
}

impl From<regua_domain::Channel> for Channel {
    fn from(c: regua_domain::Channel) -> Self {
        match c {
            regua_domain::Channel::Email => Channel::Email,
            regua_domain::Channel::Sms => Channel::Sms,
            regua_domain::Channel::Whatsapp => Channel::Whatsapp,
        }
    }
}

impl From<dt::SmsOptions> for SmsOptions {
    fn from(o: dt::SmsOptions) -> Self {
        SmsOptions {
            max_segments: o.max_segments,
            transliterate: o.transliterate,
        }
    }
}

impl From<SmsOptions> for dt::SmsOptions {
    fn from(o: SmsOptions) -> Self {
        dt::SmsOptions {
            max_segments: o.max_segments,
            transliterate: o.transliterate,
        }
    }
}

impl From<dt::ChannelTemplates> for ChannelTemplates {
    fn from(t: dt::ChannelTemplates) -> Self {
        ChannelTemplates {
            sms: t.sms,
            email: t.email.map(|e| EmailTemplate {
                subject: e.subject,
                body: e.body,
            }),
            whatsapp: t.whatsapp.map(|w| WhatsappTemplate {
                name: w.name,
                params: w.params,
            }),
        }
    }
}

impl From<ChannelTemplates> for dt::ChannelTemplates {
    fn from(t: ChannelTemplates) -> Self {
        dt::ChannelTemplates {
            sms: t.sms,
            email: t.email.map(|e| dt::EmailTemplate {
                subject: e.subject,
                body: e.body,
            }),
            whatsapp: t.whatsapp.map(|w| dt::WhatsappTemplate {
                name: w.name,
                params: w.params,
            }),
        }
    }
}

impl From<charges::AmountDue> for AmountDue {
    fn from(d: charges::AmountDue) -> Self {
        AmountDue {
            on: d.on,
            principal_cents: d.principal_cents,
            fine_cents: d.fine_cents,
            interest_cents: d.interest_cents,
            paid_cents: d.paid_cents,
            balance_cents: d.balance_cents,
            days_late: d.days_late,
        }
    }
}

impl From<AmountDue> for charges::AmountDue {
    fn from(d: AmountDue) -> Self {
        charges::AmountDue {
            on: d.on,
            principal_cents: d.principal_cents,
            fine_cents: d.fine_cents,
            interest_cents: d.interest_cents,
            paid_cents: d.paid_cents,
            balance_cents: d.balance_cents,
            days_late: d.days_late,
        }
    }
}

impl From<&PaymentData> for dm::PaymentData {
    fn from(p: &PaymentData) -> Self {
        dm::PaymentData {
            pix_copy_paste: p.pix_copy_paste.clone(),
            boleto_line: p.boleto_line.clone(),
            payment_url: p.payment_url.clone(),
        }
    }
}

impl From<&Creditor> for dm::Creditor {
    fn from(c: &Creditor) -> Self {
        dm::Creditor {
            legal_name: c.legal_name.clone(),
            cnpj: c.cnpj.clone(),
            address: c.address.clone(),
            contact: c.contact.clone(),
        }
    }
}

impl From<CommandKind> for dm::MessageKind {
    fn from(k: CommandKind) -> Self {
        match k {
            CommandKind::Step => dm::MessageKind::Step,
            CommandKind::Thanks => dm::MessageKind::Thanks,
        }
    }
}

impl From<&CommandInvoice> for dm::MessageInvoice {
    fn from(i: &CommandInvoice) -> Self {
        dm::MessageInvoice {
            invoice_id: i.invoice_id.clone(),
            amount_cents: i.amount_cents,
            currency: i.currency.clone(),
            due_date: i.due_date,
            effective_due_date: i.effective_due_date,
            description: i.description.clone(),
            payment: i.payment.as_ref().map(Into::into),
            due: i.due.clone().map(Into::into),
        }
    }
}

impl DispatchCommand {
    /// What the message says, in the domain's words, for rendering.
    pub fn message(&self) -> dm::Message {
        dm::Message {
            kind: self.kind.into(),
            creditor: (&self.creditor).into(),
            recipient: dm::Recipient {
                name: self.recipient.name.clone(),
                locale: self.recipient.locale.clone(),
            },
            template: self.template.clone(),
            invoices: self.invoices.iter().map(Into::into).collect(),
            scheduled_for: self.scheduled_for,
            sms: self.sms.into(),
            templates: self.templates.clone().map(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_map_both_ways_by_name() {
        for c in Channel::ALL {
            let d: regua_domain::Channel = c.into();
            assert_eq!(d.as_str(), c.as_str());
            assert_eq!(Channel::from(d), c);
        }
    }

    #[test]
    fn template_settings_survive_the_round_trip() {
        let wire = ChannelTemplates {
            sms: Some("{{ name }}".into()),
            email: Some(EmailTemplate {
                subject: "s".into(),
                body: "b".into(),
            }),
            whatsapp: Some(WhatsappTemplate {
                name: "n".into(),
                params: vec!["p".into()],
            }),
        };
        let back: ChannelTemplates = dt::ChannelTemplates::from(wire.clone()).into();
        assert_eq!(back, wire);
        let sms = SmsOptions {
            max_segments: 2,
            transliterate: true,
        };
        assert_eq!(SmsOptions::from(dt::SmsOptions::from(sms)), sms);
    }
}
