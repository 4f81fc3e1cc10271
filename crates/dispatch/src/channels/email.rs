//! E-mail over SMTP (lettre).
//!
//! Configuration: `REGUA_SMTP_URL` (`smtp://host:port`, `smtps://` for TLS, `?tls=
//! required` for STARTTLS, `user:password@` for AUTH) and `REGUA_EMAIL_FROM`.
//!
//! Each message is multipart/alternative (text and HTML), from the creditor's legal
//! name at the configured address, with a stable `Message-ID` and the RFC 8058
//! one-click unsubscribe headers. Retriable: 4xx replies and refused connections.
//! Permanent: 5xx replies (a rejected address) and addresses that do not parse. A
//! broken exchange after the data went out is unknown.

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use regua_platform::Config;
use tracing::Instrument;

use super::{Outcome, Outgoing, redact};
use crate::DispatchError;

pub const PROVIDER: &str = "smtp";

/// The SMTP adapter.
#[derive(Clone)]
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    account: String,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl Email {
    pub fn from_config(config: &Config) -> Result<Email, DispatchError> {
        let url = config.providers.smtp_url.expose();
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| DispatchError::Config(format!("REGUA_SMTP_URL: {e}")))?
            .timeout(Some(config.providers.timeout))
            .build();
        let from: Mailbox = config
            .providers
            .email_from
            .parse()
            .map_err(|e| DispatchError::Config(format!("REGUA_EMAIL_FROM: {e}")))?;
        // The account is the server, without credentials.
        let account = url
            .rsplit('@')
            .next()
            .unwrap_or(url)
            .trim_start_matches("smtp://")
            .trim_start_matches("smtps://")
            .split(['/', '?'])
            .next()
            .unwrap_or("")
            .to_owned();
        Ok(Email {
            transport,
            from,
            account,
        })
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The message as it goes on the wire.
    pub fn build(&self, out: &Outgoing<'_>) -> Result<Message, Outcome> {
        let permanent = |reason: String| Outcome::Permanent { reason };
        let address = out
            .cmd
            .recipient
            .email
            .as_deref()
            .ok_or_else(|| permanent("no e-mail address".into()))?;
        let to = Mailbox::new(
            Some(out.cmd.recipient.name.clone()),
            address
                .parse()
                .map_err(|e: lettre::address::AddressError| {
                    permanent(format!("invalid address: {}", redact(&e.to_string())))
                })?,
        );
        let from = Mailbox::new(
            Some(out.cmd.creditor.legal_name.clone()),
            self.from.email.clone(),
        );
        let domain = self.from.email.domain().to_owned();
        let mut builder = Message::builder()
            .from(from)
            .to(to)
            .subject(out.rendered.subject.clone().unwrap_or_default())
            .message_id(Some(format!("<{}@{domain}>", out.key)));
        if let Some(url) = &out.unsubscribe_url {
            builder = builder
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe"),
                    format!("<{url}>"),
                ))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".to_owned(),
                ));
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                out.rendered.text.clone(),
                out.rendered.html.clone().unwrap_or_default(),
            ))
            .map_err(|e| permanent(format!("cannot build the message: {e}")))
    }

    pub async fn send(&self, out: &Outgoing<'_>) -> Outcome {
        let message = match self.build(out) {
            Ok(m) => m,
            Err(outcome) => return outcome,
        };
        let message_id = message
            .headers()
            .get_raw("Message-ID")
            .unwrap_or_default()
            .to_owned();
        let (host, port) = self
            .account
            .rsplit_once(':')
            .map_or((self.account.as_str(), ""), |(h, p)| (h, p));
        let span = tracing::info_span!(
            "smtp send",
            otel.kind = "client",
            network.protocol.name = "smtp",
            server.address = host,
            server.port = port.parse::<u16>().unwrap_or(25),
            error.type = tracing::field::Empty,
        );
        match self.transport.send(message).instrument(span.clone()).await {
            Ok(_) => Outcome::Sent {
                provider_message_id: message_id,
            },
            Err(e) => {
                let outcome = classify(&e);
                span.record(
                    "error.type",
                    if e.is_permanent() {
                        "permanent"
                    } else {
                        "transient"
                    },
                );
                outcome
            }
        }
    }
}

/// The SMTP retry rule.
fn classify(e: &lettre::transport::smtp::Error) -> Outcome {
    let reason = redact(&e.to_string());
    if e.is_permanent() {
        Outcome::Permanent { reason }
    } else if e.is_transient() || reason.starts_with("Connection error") || e.is_tls() {
        Outcome::Transient {
            reason,
            retry_after: None,
        }
    } else {
        Outcome::Unknown { reason }
    }
}
