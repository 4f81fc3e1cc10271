//! WhatsApp through the Cloud API.
//!
//! Configuration: `REGUA_WHATSAPP_API_BASE` (default `https://graph.facebook.com/v21.0`),
//! `REGUA_WHATSAPP_TOKEN`, `REGUA_WHATSAPP_PHONE_NUMBER_ID`, and for the webhook
//! `REGUA_WHATSAPP_APP_SECRET` and `REGUA_WHATSAPP_VERIFY_TOKEN`.
//!
//! Each message is `POST {base}/{phone_number_id}/messages`, a **template** message
//! (reminders go outside the 24-hour window): the approved template's name, the
//! recipient's language (`pt_BR`) and the body parameters. Retriable: 429, 5xx, the
//! throttling codes (4, 80007, 130429, 131048, 131056), temporary errors (1, 2, 131000,
//! 131016), 401/403 and refused connections. Permanent: every other error, such as
//! 131026 (undeliverable), 131047 (outside the window), 100/132xxx (template problems).

use regua_platform::Config;
use serde::Deserialize;
use serde_json::json;

use super::{Outcome, Outgoing, call, phone_digits};
use crate::DispatchError;

pub const PROVIDER: &str = "whatsapp_cloud";

/// Error codes worth another try.
const RETRIABLE_CODES: [i64; 9] = [1, 2, 4, 80007, 130429, 131000, 131016, 131048, 131056];

/// The Cloud API adapter.
#[derive(Debug, Clone)]
pub struct Whatsapp {
    client: reqwest::Client,
    url: String,
    token: regua_platform::Secret,
    phone_number_id: String,
}

#[derive(Deserialize)]
struct Sent {
    messages: Vec<SentMessage>,
}

#[derive(Deserialize)]
struct SentMessage {
    id: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    code: Option<i64>,
    message: Option<String>,
}

impl Whatsapp {
    pub fn from_config(config: &Config) -> Result<Whatsapp, DispatchError> {
        let p = &config.providers;
        for (value, key) in [
            (p.whatsapp_token.expose(), "REGUA_WHATSAPP_TOKEN"),
            (
                p.whatsapp_phone_number_id.as_str(),
                "REGUA_WHATSAPP_PHONE_NUMBER_ID",
            ),
        ] {
            if value.is_empty() {
                return Err(DispatchError::Config(format!(
                    "{key} must be set to run the whatsapp dispatcher"
                )));
            }
        }
        Ok(Whatsapp {
            client: super::http_client(config)?,
            url: format!(
                "{}/{}/messages",
                p.whatsapp_api_base, p.whatsapp_phone_number_id
            ),
            token: p.whatsapp_token.clone(),
            phone_number_id: p.whatsapp_phone_number_id.clone(),
        })
    }

    pub fn account(&self) -> &str {
        &self.phone_number_id
    }

    /// The request body.
    pub fn body(out: &Outgoing<'_>) -> Result<serde_json::Value, Outcome> {
        let to = out
            .cmd
            .recipient
            .phone
            .as_deref()
            .map(phone_digits)
            .ok_or_else(|| Outcome::Permanent {
                reason: "no phone number".into(),
            })?;
        let template = out
            .rendered
            .whatsapp
            .as_ref()
            .ok_or_else(|| Outcome::Permanent {
                reason: "no whatsapp template".into(),
            })?;
        let parameters: Vec<_> = template
            .params
            .iter()
            .map(|p| json!({"type": "text", "text": p}))
            .collect();
        Ok(json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "template",
            "template": {
                "name": template.name,
                "language": {"code": template.language},
                "components": [{"type": "body", "parameters": parameters}],
            },
        }))
    }

    pub async fn send(&self, out: &Outgoing<'_>) -> Outcome {
        let body = match Whatsapp::body(out) {
            Ok(b) => b,
            Err(o) => return o,
        };
        let request = self
            .client
            .post(&self.url)
            .bearer_auth(self.token.expose())
            .json(&body);
        let answer = match call(request, "/{Phone-Number-ID}/messages").await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        if answer.is_success() {
            return answer.accepted(|s: Sent| s.messages.into_iter().next().map(|m| m.id));
        }
        let error = serde_json::from_slice::<ErrorBody>(&answer.body)
            .ok()
            .map(|b| b.error);
        let code = error.as_ref().and_then(|e| e.code);
        let reason = format!(
            "http {}: {} {}",
            answer.status,
            code.map(|c| c.to_string()).unwrap_or_default(),
            error.and_then(|e| e.message).unwrap_or_default()
        );
        let retriable = matches!(answer.status, 429 | 401 | 403 | 500..=599)
            || code.is_some_and(|c| RETRIABLE_CODES.contains(&c));
        answer.refused(reason, retriable)
    }
}
