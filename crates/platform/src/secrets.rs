//! Secrets in one place: the [`Secret`] type that never prints, comparing without an
//! early exit ([`same`]), reading a bearer token, hashing API keys for storage, and
//! signed tokens for links that must not be forged ([`sign`], [`verify`]): the one-click
//! unsubscribe today, and any link a debtor or a console user is given.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// A secret string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Whether `value` is a development or placeholder secret: the development link secret,
/// or anything with `change-me` in it (the examples in deploy/ use it). A process that
/// would use one refuses to start unless told it runs on a laptop or the demo.
pub fn is_placeholder(value: &str) -> bool {
    value == crate::config::DEV_LINK_SECRET || value.to_ascii_lowercase().contains("change-me")
}

/// Whether `a` and `b` are equal, compared without an early exit, so that timing does
/// not reveal how much of a guess was right.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of an `Authorization: Bearer <token>` header, trimmed.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// What an API key is stored and looked up as: its SHA-256 (keys are random and long,
/// so a plain digest is enough).
pub fn key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// A new API key for `owner`: `rk_<owner>_` and 32 random bytes, URL-safe.
pub fn new_api_key(owner: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("rk_{owner}_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// HMAC-SHA256 of `parts` under `key`, fed in order.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => return [0; 32],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Separates a signed token's fields (none may contain it).
const SEP: char = '\u{1f}';

/// Bytes of the MAC a token carries.
const MAC_BYTES: usize = 20;

/// A token naming `fields`, signed with `secret` for `purpose` (a token made for one
/// purpose never verifies for another): the fields, then a truncated HMAC-SHA256,
/// both URL-safe base64, joined by a dot. It carries the fields readably, so put no
/// personal data in them. `None` when a field contains the separator.
pub fn sign(secret: &Secret, purpose: &str, fields: &[&str]) -> Option<String> {
    if fields.iter().any(|f| f.contains(SEP)) {
        return None;
    }
    let payload = fields.join(&SEP.to_string());
    let mac = hmac_sha256(
        secret.expose().as_bytes(),
        &[purpose.as_bytes(), payload.as_bytes()],
    );
    Some(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload.as_bytes()),
        URL_SAFE_NO_PAD.encode(&mac[..MAC_BYTES])
    ))
}

/// The fields of a genuine `purpose` token signed with `secret`; `None` for anything
/// forged, damaged or made for another purpose.
pub fn verify(secret: &Secret, purpose: &str, token: &str) -> Option<Vec<String>> {
    let (payload, mac) = token.split_once('.')?;
    let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    let expected = hmac_sha256(secret.expose().as_bytes(), &[purpose.as_bytes(), &payload]);
    if !same(&expected[..MAC_BYTES], &mac) {
        return None;
    }
    let text = String::from_utf8(payload).ok()?;
    Some(text.split(SEP).map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("s3cret")), "Secret(***)");
    }

    #[test]
    fn placeholders_are_told_apart() {
        assert!(is_placeholder(crate::config::DEV_LINK_SECRET));
        assert!(is_placeholder("Change-Me-to-a-long-random-secret"));
        assert!(is_placeholder("postgres://regua:change-me@db:5432/regua"));
        assert!(!is_placeholder("k3Jq9-long-and-random-0123456789"));
    }

    #[test]
    fn comparison_needs_every_byte() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_header() {
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert("authorization", "Bearer  rk_x ".parse().unwrap());
        assert_eq!(bearer(&h), Some("rk_x"));
        h.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn api_keys_are_random_and_stored_hashed() {
        let (a, b) = (new_api_key("acme"), new_api_key("acme"));
        assert!(a.starts_with("rk_acme_") && a != b);
        assert_eq!(key_hash(&a), key_hash(&a));
        assert_ne!(key_hash(&a), key_hash(&b));
    }

    #[test]
    fn signed_tokens_verify_only_for_their_secret_and_purpose() {
        let secret = Secret::new("0123456789abcdef");
        let token = sign(&secret, "p1", &["acme", "C-1"]).unwrap();
        assert_eq!(
            verify(&secret, "p1", &token),
            Some(vec!["acme".to_owned(), "C-1".to_owned()])
        );
        assert_eq!(verify(&secret, "p2", &token), None);
        assert_eq!(
            verify(&Secret::new("another-secret-00"), "p1", &token),
            None
        );
        let (_, mac) = token.split_once('.').unwrap();
        let forged = format!("{}.{mac}", URL_SAFE_NO_PAD.encode("acme\u{1f}C-2"));
        assert_eq!(verify(&secret, "p1", &forged), None);
        assert_eq!(verify(&secret, "p1", "garbage"), None);
        assert_eq!(sign(&secret, "p1", &["a\u{1f}b"]), None);
    }
}
