//! Signatures: Twilio's `X-Twilio-Signature`, Meta's `X-Hub-Signature-256`, and the
//! signed one-click unsubscribe links regua serves (the platform's signed tokens,
//! [`regua_platform::secrets`]). Comparisons are constant-time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use regua_contract::inbound::Channel;
use regua_platform::Secret;
use regua_platform::secrets::{self, hmac_sha256, same};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Twilio's signature of a callback: base64 HMAC-SHA1, keyed by the auth token, of the
/// full URL followed by every POST parameter's name and value, sorted by name.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).unwrap_or_else(|_| {
        // HMAC takes keys of any length; this branch cannot run.
        HmacSha1::new_from_slice(b"-").unwrap_or_else(|_| unreachable_hmac())
    });
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

#[allow(clippy::panic)]
fn unreachable_hmac<T>() -> T {
    panic!("hmac refused a key")
}

/// Whether `signature` is Twilio's signature of this callback.
pub fn twilio_verify(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let expected = twilio_signature(auth_token, url, params);
    same(expected.as_bytes(), signature.as_bytes())
}

/// Meta's signature of a webhook body: `sha256=<hex HMAC-SHA256(app_secret, body)>`.
pub fn hub_signature(app_secret: &str, body: &[u8]) -> String {
    format!(
        "sha256={}",
        hex::encode(hmac_sha256(app_secret.as_bytes(), &[body]))
    )
}

/// Whether `header` is Meta's signature of `body`.
pub fn hub_verify(app_secret: &str, body: &[u8], header: &str) -> bool {
    if app_secret.is_empty() {
        return false;
    }
    same(
        hub_signature(app_secret, body).as_bytes(),
        header.as_bytes(),
    )
}

/// Who an unsubscribe link is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSubject {
    pub tenant: String,
    pub customer_id: String,
    pub channel: Channel,
}

/// What unsubscribe tokens are signed for: a token for anything else never verifies.
const UNSUBSCRIBE: &str = "regua-unsubscribe-v1";

/// The token of an unsubscribe link: the subject and its MAC, URL-safe. `None` for ids
/// that cannot be signed (a control character in them).
pub fn link_token(secret: &Secret, s: &LinkSubject) -> Option<String> {
    secrets::sign(
        secret,
        UNSUBSCRIBE,
        &[&s.tenant, &s.customer_id, s.channel.as_str()],
    )
}

/// The subject of a genuine token; `None` for anything forged or damaged.
pub fn link_verify(secret: &Secret, token: &str) -> Option<LinkSubject> {
    let fields = secrets::verify(secret, UNSUBSCRIBE, token)?;
    let [tenant, customer_id, channel] = <[String; 3]>::try_from(fields).ok()?;
    Some(LinkSubject {
        tenant,
        customer_id,
        channel: Channel::parse(&channel)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn twilio_signature_matches_twilios_documented_example() {
        // https://www.twilio.com/docs/usage/security#validating-requests
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let sig = twilio_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
        );
        assert_eq!(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
        assert!(twilio_verify(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
            &sig
        ));
        assert!(!twilio_verify(
            "12345",
            "https://example.com/other",
            &params,
            &sig
        ));
    }

    #[test]
    fn hub_signature_round_trips_and_rejects_tampering() {
        let body = br#"{"object":"whatsapp_business_account"}"#;
        let sig = hub_signature("s3cret", body);
        assert!(sig.starts_with("sha256="));
        assert!(hub_verify("s3cret", body, &sig));
        assert!(!hub_verify("s3cret", b"{}", &sig));
        assert!(!hub_verify("other", body, &sig));
        assert!(!hub_verify("", body, &sig));
    }

    #[test]
    fn link_tokens_verify_and_cannot_be_forged() {
        let s = LinkSubject {
            tenant: "acme".into(),
            customer_id: "C-1".into(),
            channel: Channel::Email,
        };
        let (key, other) = (
            Secret::new("0123456789abcdef"),
            Secret::new("another-secret-00"),
        );
        let token = link_token(&key, &s).unwrap();
        assert_eq!(link_verify(&key, &token), Some(s));
        assert_eq!(link_verify(&other, &token), None);
        let (_, mac) = token.split_once('.').unwrap();
        let forged = format!(
            "{}.{mac}",
            URL_SAFE_NO_PAD.encode("acme\u{1f}C-2\u{1f}email")
        );
        assert_eq!(link_verify(&key, &forged), None);
        assert_eq!(link_verify(&key, "garbage"), None);
    }
}
