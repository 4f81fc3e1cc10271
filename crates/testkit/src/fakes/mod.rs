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
        Ok(FakeProviders {
            smtp: SmtpSink::start().await?,
            twilio: FakeTwilio::start(TWILIO_SID, TWILIO_TOKEN).await?,
            meta: FakeMeta::start(WA_PHONE_NUMBER_ID, WA_TOKEN, WA_APP_SECRET).await?,
        })
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
