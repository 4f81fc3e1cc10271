//! Provider fakes that speak the real wire formats, for the tests and the README's
//! demo: an SMTP server, a Twilio-shaped HTTP server and a Meta-shaped one, each
//! sending signed callbacks the way the real provider does. Signatures are computed
//! here independently of regua's own verification code.

pub mod meta;
pub mod smtp;
pub mod twilio;

pub use meta::FakeMeta;
pub use smtp::SmtpSink;
pub use twilio::FakeTwilio;

use regua_platform::{Config, Secret};

/// One message a fake received, for people to read.
#[derive(Debug, Clone)]
pub struct InboxLine {
    pub at: std::time::Instant,
    pub channel: &'static str,
    pub to: String,
    /// The e-mail subject, the SMS text, the WhatsApp template and parameters.
    pub text: String,
}

/// All three fakes, with the credentials regua must be configured with.
#[derive(Clone)]
pub struct FakeProviders {
    pub smtp: SmtpSink,
    pub twilio: FakeTwilio,
    pub meta: FakeMeta,
}

/// The fakes' credentials (fake values, for loopback only).
pub const TWILIO_SID: &str = "ACfake00000000000000000000000000";
pub const TWILIO_TOKEN: &str = "fake-twilio-auth-token";
pub const TWILIO_FROM: &str = "+15005550006";
pub const WA_PHONE_NUMBER_ID: &str = "1098765432";
pub const WA_TOKEN: &str = "fake-whatsapp-token";
pub const WA_APP_SECRET: &str = "fake-whatsapp-app-secret";
pub const WA_VERIFY_TOKEN: &str = "fake-verify-token";

impl FakeProviders {
    pub async fn start() -> std::io::Result<FakeProviders> {
        FakeProviders::start_on("127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0").await
    }

    /// On fixed addresses (the demo's).
    pub async fn start_on(smtp: &str, twilio: &str, meta: &str) -> std::io::Result<FakeProviders> {
        Ok(FakeProviders {
            smtp: SmtpSink::start_on(smtp).await?,
            twilio: FakeTwilio::start_on(twilio, TWILIO_SID, TWILIO_TOKEN).await?,
            meta: FakeMeta::start_on(meta, WA_PHONE_NUMBER_ID, WA_TOKEN, WA_APP_SECRET).await?,
        })
    }

    /// Everything the fakes received, newest last, as one line each.
    pub fn inbox(&self) -> Vec<InboxLine> {
        let mut lines: Vec<InboxLine> = Vec::new();
        for m in self.smtp.mails() {
            lines.push(InboxLine {
                at: m.at,
                channel: "email",
                to: m.to.join(", "),
                text: m.subject(),
            });
        }
        for s in self.twilio.sent() {
            lines.push(InboxLine {
                at: s.at,
                channel: "sms",
                to: s.to.clone(),
                text: s.body.clone(),
            });
        }
        for w in self.meta.sent() {
            lines.push(InboxLine {
                at: w.at,
                channel: "whatsapp",
                to: w.to.clone(),
                text: format!("[{}] {}", w.template_name(), w.params().join(" | ")),
            });
        }
        lines.sort_by_key(|l| l.at);
        lines
    }

    /// Points `config`'s providers at the fakes.
    pub fn configure(&self, config: &mut Config) {
        let p = &mut config.providers;
        p.smtp_url = Secret::new(self.smtp.url());
        p.twilio_api_base = self.twilio.base();
        p.twilio_account_sid = TWILIO_SID.into();
        p.twilio_auth_token = Secret::new(TWILIO_TOKEN);
        p.twilio_from = TWILIO_FROM.into();
        p.whatsapp_api_base = self.meta.base();
        p.whatsapp_token = Secret::new(WA_TOKEN);
        p.whatsapp_phone_number_id = WA_PHONE_NUMBER_ID.into();
        p.whatsapp_app_secret = Secret::new(WA_APP_SECRET);
        p.whatsapp_verify_token = Secret::new(WA_VERIFY_TOKEN);
    }

    /// Once regua listens at `public_url`, send Meta's notifications there.
    pub fn webhooks_to(&self, public_url: &str) {
        self.meta
            .webhook(&format!("{public_url}/webhooks/whatsapp"));
    }
}
