//! Channel adapters, one small module per provider, in vector's sink shape: each has
//! its configuration, its request builder, and its own rule for which failures are
//! retriable. The pipeline ([`crate::pipeline`]) is the same for all of them.

pub mod email;
pub mod sms;
pub mod whatsapp;

use std::time::Duration;
use tracing::Instrument;

use regua_contract::commands::DispatchCommand;
use regua_contract::inbound::Channel;
use regua_domain::template::Rendered;
use regua_platform::Config;

use crate::DispatchError;

/// What a provider call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the message.
    Sent { provider_message_id: String },
    /// The provider refused it for good (an invalid number, a rejected address): the
    /// message moves to the next channel.
    Permanent { reason: String },
    /// It definitely was not sent, and may succeed later (a refused connection, a 5xx,
    /// a 429): retried with backoff, honouring `retry_after`.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// It may or may not have been sent (the request went out and no answer came
    /// back): never retried, reported as `unknown`.
    Unknown { reason: String },
    /// Not sent, never by an adapter: the settlement fence found the invoice paid
    /// ([`regua_platform::fence`]).
    Fenced,
}

/// One message on its way to a provider.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub cmd: &'a DispatchCommand,
    pub rendered: &'a Rendered,
    /// Stable per (command, channel): the e-mail `Message-ID`'s local part.
    pub key: uuid::Uuid,
    /// The signed one-click unsubscribe URL (e-mail).
    pub unsubscribe_url: Option<&'a str>,
    /// Where the provider posts delivery statuses.
    pub status_callback: &'a str,
}

/// A channel's provider client.
#[derive(Debug, Clone)]
pub enum Adapter {
    Email(email::Email),
    Sms(sms::Sms),
    Whatsapp(whatsapp::Whatsapp),
}

impl Adapter {
    /// The adapter of `channel`, configured for this deployment.
    pub fn from_config(channel: Channel, config: &Config) -> Result<Adapter, DispatchError> {
        Ok(match channel {
            Channel::Email => Adapter::Email(email::Email::from_config(config)?),
            Channel::Sms => Adapter::Sms(sms::Sms::from_config(config)?),
            Channel::Whatsapp => Adapter::Whatsapp(whatsapp::Whatsapp::from_config(config)?),
        })
    }

    pub fn channel(&self) -> Channel {
        match self {
            Adapter::Email(_) => Channel::Email,
            Adapter::Sms(_) => Channel::Sms,
            Adapter::Whatsapp(_) => Channel::Whatsapp,
        }
    }

    /// The provider's name in events: `smtp`, `twilio`, `whatsapp_cloud`.
    pub fn provider(&self) -> &'static str {
        match self {
            Adapter::Email(_) => email::PROVIDER,
            Adapter::Sms(_) => sms::PROVIDER,
            Adapter::Whatsapp(_) => whatsapp::PROVIDER,
        }
    }

    /// The provider account the rate limit applies to.
    pub fn account(&self) -> String {
        match self {
            Adapter::Email(e) => format!("{}:{}", email::PROVIDER, e.account()),
            Adapter::Sms(s) => format!("{}:{}", sms::PROVIDER, s.account()),
            Adapter::Whatsapp(w) => format!("{}:{}", whatsapp::PROVIDER, w.account()),
        }
    }

    pub async fn send(&self, out: &Outgoing<'_>) -> Outcome {
        match self {
            Adapter::Email(e) => e.send(out).await,
            Adapter::Sms(s) => s.send(out).await,
            Adapter::Whatsapp(w) => w.send(out).await,
        }
    }
}

/// The recipient's address on `channel`, normalised for matching replies: digits for
/// phones, lowercase for e-mail.
pub fn address_key(cmd: &DispatchCommand, channel: Channel) -> Option<String> {
    match channel {
        Channel::Email => cmd.recipient.email.as_ref().map(|e| e.to_lowercase()),
        Channel::Sms | Channel::Whatsapp => cmd.recipient.phone.as_deref().map(phone_digits),
    }
}

/// A phone's digits (E.164 without the `+`), as WhatsApp spells `wa_id`s.
pub fn phone_digits(phone: &str) -> String {
    phone.chars().filter(char::is_ascii_digit).collect()
}

/// An HTTP client for provider APIs: rustls with the ring provider, the configured
/// timeout, pooled connections.
pub fn http_client(config: &Config) -> Result<reqwest::Client, DispatchError> {
    regua_platform::tls::init();
    reqwest::Client::builder()
        .timeout(config.providers.timeout)
        .connect_timeout(config.providers.timeout.min(Duration::from_secs(5)))
        .pool_max_idle_per_host(256)
        .user_agent(concat!("regua/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| DispatchError::Config(format!("http client: {e}")))
}

/// A reqwest error's outcome: a failed connection never reached the provider
/// (transient); a timeout or a broken exchange after the request went out may have
/// been sent (unknown).
pub fn request_error(e: &reqwest::Error) -> Outcome {
    if e.is_connect() || e.is_builder() {
        Outcome::Transient {
            reason: format!("connection: {}", without_url(e)),
            retry_after: None,
        }
    } else {
        Outcome::Unknown {
            reason: format!("no answer: {}", without_url(e)),
        }
    }
}

fn without_url(e: &reqwest::Error) -> String {
    // URLs may carry account ids; the kind of failure is what matters.
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "<provider>");
    }
    s
}

/// A provider's HTTP answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// A success answer's provider message id, found by `id`; an answer without one is
    /// unknown (the provider accepted something).
    pub fn accepted<T: serde::de::DeserializeOwned>(
        &self,
        id: impl FnOnce(T) -> Option<String>,
    ) -> Outcome {
        match serde_json::from_slice::<T>(&self.body).ok().and_then(id) {
            Some(provider_message_id) => Outcome::Sent {
                provider_message_id,
            },
            None => Outcome::Unknown {
                reason: "accepted with an unreadable answer".into(),
            },
        }
    }

    /// An error answer's outcome: retriable when `retriable` says so.
    pub fn refused(&self, reason: String, retriable: bool) -> Outcome {
        let reason = redact(&reason);
        if retriable {
            Outcome::Transient {
                reason,
                retry_after: self.retry_after,
            }
        } else {
            Outcome::Permanent { reason }
        }
    }
}

/// Sends `request` and reads the answer; what goes wrong before an answer is the
/// outcome. The call is an HTTP client span with the OpenTelemetry HTTP conventions;
/// `template` (`url.template`) names the route without the account ids in the URL.
pub async fn call(
    request: reqwest::RequestBuilder,
    template: &'static str,
) -> Result<Answer, Outcome> {
    let (client, built) = request.build_split();
    let request = built.map_err(|e| request_error(&e))?;
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "http client",
        otel.name = format!("{method} {template}"),
        otel.kind = "client",
        http.request.method = method.as_str(),
        url.template = template,
        url.scheme = request.url().scheme(),
        server.address = request.url().host_str().unwrap_or(""),
        server.port = request.url().port_or_known_default().unwrap_or(0),
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let sent = client.execute(request).instrument(span.clone()).await;
    let response = sent.map_err(|e| {
        span.record(
            "error.type",
            if e.is_timeout() {
                "timeout"
            } else {
                "connection"
            },
        );
        request_error(&e)
    })?;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if !status.is_success() {
        span.record("error.type", status.as_str());
    }
    let retry_after = retry_after(response.headers());
    match response.bytes().await {
        Ok(body) => Ok(Answer {
            status: status.as_u16(),
            retry_after,
            body,
        }),
        Err(e) if status.is_success() => Err(Outcome::Unknown {
            reason: format!("accepted but the answer broke: {e}"),
        }),
        Err(_) => Ok(Answer {
            status: status.as_u16(),
            retry_after,
            body: bytes::Bytes::new(),
        }),
    }
}

/// `Retry-After` in seconds (the HTTP-date form is treated as absent).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

/// A provider's error text without phone numbers or e-mail addresses in it (Twilio
/// repeats the `To` number in its messages): reasons go into events and the database.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().filter(char::is_ascii_digit).count() >= 8 {
            out.push_str("***");
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || (c == '+' && run.is_empty()) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out.split(' ')
        .map(|w| if w.contains('@') { "***" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_numbers_and_addresses_and_keeps_error_codes() {
        assert_eq!(
            redact("http 400: 21211 The 'To' number +5511900000001 is not a valid phone number."),
            "http 400: 21211 The 'To' number *** is not a valid phone number."
        );
        assert_eq!(
            redact("550 5.1.1 <joao@example.com> unknown"),
            "550 5.1.1 *** unknown"
        );
        assert_eq!(
            redact("(#131026) Message undeliverable"),
            "(#131026) Message undeliverable"
        );
    }
}
