//! SMS through the Twilio Messages API.
//!
//! Configuration: `REGUA_TWILIO_API_BASE` (default `https://api.twilio.com`),
//! `REGUA_TWILIO_ACCOUNT_SID`, `REGUA_TWILIO_AUTH_TOKEN` and `REGUA_TWILIO_FROM` (a
//! number, or a Messaging Service sid `MG…`).
//!
//! Each message is `POST {base}/2010-04-01/Accounts/{sid}/Messages.json`, form-encoded,
//! with basic auth and a `StatusCallback`. Retriable: 429 (honouring `Retry-After`),
//! 5xx, 401/403 (credentials: ops must fix them, the message waits in the DLQ) and
//! refused connections. Permanent: every other 4xx, such as 21211 (invalid `To`),
//! 21614 (not a mobile number) or 21610 (the number replied STOP).

use regua_platform::Config;
use serde::Deserialize;

use super::{Outcome, Outgoing, call};
use crate::DispatchError;

pub const PROVIDER: &str = "twilio";

/// The Twilio adapter.
#[derive(Debug, Clone)]
pub struct Sms {
    client: reqwest::Client,
    url: String,
    sid: String,
    token: regua_platform::Secret,
    from: String,
}

#[derive(Deserialize)]
struct Created {
    sid: String,
}

#[derive(Deserialize)]
struct ApiError {
    code: Option<i64>,
    message: Option<String>,
}

impl Sms {
    pub fn from_config(config: &Config) -> Result<Sms, DispatchError> {
        let p = &config.providers;
        for (value, key) in [
            (p.twilio_account_sid.as_str(), "REGUA_TWILIO_ACCOUNT_SID"),
            (p.twilio_auth_token.expose(), "REGUA_TWILIO_AUTH_TOKEN"),
            (p.twilio_from.as_str(), "REGUA_TWILIO_FROM"),
        ] {
            if value.is_empty() {
                return Err(DispatchError::Config(format!(
                    "{key} must be set to run the sms dispatcher"
                )));
            }
        }
        Ok(Sms {
            client: super::http_client(config)?,
            url: format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                p.twilio_api_base, p.twilio_account_sid
            ),
            sid: p.twilio_account_sid.clone(),
            token: p.twilio_auth_token.clone(),
            from: p.twilio_from.clone(),
        })
    }

    pub fn account(&self) -> &str {
        &self.sid
    }

    pub async fn send(&self, out: &Outgoing<'_>) -> Outcome {
        let Some(to) = out.cmd.recipient.phone.as_deref() else {
            return Outcome::Permanent {
                reason: "no phone number".into(),
            };
        };
        let from_key = if self.from.starts_with("MG") {
            "MessagingServiceSid"
        } else {
            "From"
        };
        let form = [
            ("To", to),
            (from_key, self.from.as_str()),
            ("Body", out.rendered.text.as_str()),
            ("StatusCallback", out.status_callback),
        ];
        let request = self
            .client
            .post(&self.url)
            .basic_auth(&self.sid, Some(self.token.expose()))
            .form(&form);
        let answer = match call(request, "/2010-04-01/Accounts/{AccountSid}/Messages.json").await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        if answer.is_success() {
            return answer.accepted(|c: Created| Some(c.sid));
        }
        let detail = serde_json::from_slice::<ApiError>(&answer.body)
            .map(|e| {
                format!(
                    "{} {}",
                    e.code.map(|c| c.to_string()).unwrap_or_default(),
                    e.message.unwrap_or_default()
                )
            })
            .unwrap_or_default();
        answer.refused(
            format!("http {}: {}", answer.status, detail.trim()),
            matches!(answer.status, 429 | 401 | 403 | 500..=599),
        )
    }
}
