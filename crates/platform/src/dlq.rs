//! The dead-letter stream (`REGUA_DLQ`), for operators: what is in it, and putting a
//! message back where it came from (`regua dlq list|show|replay`).
//!
//! A replay publishes the dead letter's payload and headers on its original subject,
//! under the original message id (`Regua-Message-Id`, which every consumer uses as its
//! idempotency key) and `Nats-Msg-Id` `dlq-replay:<sequence>`, then deletes it from the
//! dead-letter stream. Replaying it twice is harmless: the second publish is dropped as a
//! duplicate inside the stream's window, and the consumers' own idempotency (the
//! message id, the payment id, the command id, the event id) covers the rest.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use regua_contract::subjects;

use crate::PlatformError;

/// One dead letter, without its payload (which may carry personal data).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Its sequence in `REGUA_DLQ`: what `show` and `replay` take.
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// The consumer that gave up on it.
    pub consumer: String,
    pub tenant: String,
    /// Where it was published first.
    pub subject: String,
    pub reason: String,
    /// The id consumers know it by, if it had one.
    pub message_id: Option<String>,
    pub bytes: usize,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub consumer: Option<String>,
    pub tenant: Option<String>,
}

impl Filter {
    fn subject(&self) -> String {
        let token = |t: &Option<String>| t.clone().unwrap_or_else(|| "*".into());
        subjects::dead_letter(&token(&self.consumer), &token(&self.tenant))
    }
}

fn header<'h>(headers: Option<&'h HeaderMap>, name: &str) -> Option<&'h str> {
    headers
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The id a message is known by: its `Regua-Message-Id`, else the `Nats-Msg-Id` it had
/// before it was dead-lettered.
fn message_id(headers: Option<&HeaderMap>) -> Option<String> {
    header(headers, subjects::HEADER_MESSAGE_ID)
        .or_else(|| header(headers, subjects::HEADER_DLQ_MSG_ID))
        .map(str::to_owned)
}

fn describe(
    seq: u64,
    at: DateTime<Utc>,
    subject: &str,
    headers: Option<&HeaderMap>,
    bytes: usize,
) -> DeadLetter {
    let (consumer, tenant) = subjects::dead_letter_parts(subject).unwrap_or(("?", "?"));
    DeadLetter {
        seq,
        at,
        consumer: consumer.to_owned(),
        tenant: tenant.to_owned(),
        subject: header(headers, subjects::HEADER_DLQ_SUBJECT)
            .unwrap_or("?")
            .to_owned(),
        reason: header(headers, subjects::HEADER_DLQ_REASON)
            .unwrap_or("")
            .to_owned(),
        message_id: message_id(headers),
        bytes,
    }
}

/// The dead letters `filter` selects, oldest first, at most `limit`.
pub async fn list(
    js: &jetstream::Context,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<DeadLetter>, PlatformError> {
    let reader = stream(js)
        .await?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.subject(),
            ..Default::default()
        })
        .await
        .map_err(PlatformError::nats)?;
    let pending = usize::try_from(reader.cached_info().num_pending).unwrap_or(usize::MAX);
    let want = pending.min(limit);
    let mut out = Vec::with_capacity(want);
    if want == 0 {
        return Ok(out);
    }
    let mut msgs = reader.messages().await.map_err(PlatformError::nats)?;
    while out.len() < want {
        let next = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .map_err(|_| PlatformError::Nats("reading the dead letters timed out".into()))?;
        let Some(msg) = next else { break };
        let msg = msg.map_err(PlatformError::nats)?;
        let info = msg.info().map_err(PlatformError::nats)?;
        let at =
            DateTime::<Utc>::from_timestamp(info.published.unix_timestamp(), 0).unwrap_or_default();
        out.push(describe(
            info.stream_sequence,
            at,
            &msg.subject,
            msg.headers.as_ref(),
            msg.payload.len(),
        ));
    }
    Ok(out)
}

/// The dead-letter stream.
async fn stream(js: &jetstream::Context) -> Result<jetstream::stream::Stream, PlatformError> {
    js.get_stream(subjects::STREAM_DEAD_LETTER)
        .await
        .map_err(PlatformError::nats)
}

/// One dead letter with its headers and payload.
pub async fn show(
    js: &jetstream::Context,
    seq: u64,
) -> Result<(DeadLetter, HeaderMap, bytes::Bytes), PlatformError> {
    show_in(&stream(js).await?, seq).await
}

async fn show_in(
    stream: &jetstream::stream::Stream,
    seq: u64,
) -> Result<(DeadLetter, HeaderMap, bytes::Bytes), PlatformError> {
    let m = stream
        .get_raw_message(seq)
        .await
        .map_err(|e| PlatformError::Nats(format!("dead letter {seq}: {e}")))?;
    let at = DateTime::<Utc>::from_timestamp(m.time.unix_timestamp(), 0).unwrap_or_default();
    let letter = describe(seq, at, &m.subject, Some(&m.headers), m.payload.len());
    Ok((letter, m.headers, m.payload))
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    pub seq: u64,
    pub subject: String,
    pub message_id: Option<String>,
    /// The stream had it already (an earlier replay): it was not stored twice.
    pub duplicate: bool,
}

/// Publishes dead letter `seq` again on its original subject and deletes it from the
/// dead-letter stream.
pub async fn replay(js: &jetstream::Context, seq: u64) -> Result<Replayed, PlatformError> {
    let dlq = stream(js).await?;
    let (letter, original, payload) = show_in(&dlq, seq).await?;
    if letter.subject == "?" {
        return Err(PlatformError::Nats(format!(
            "dead letter {seq} has no {} header: nowhere to replay it",
            subjects::HEADER_DLQ_SUBJECT
        )));
    }
    let mut headers = HeaderMap::new();
    for (name, values) in original.iter() {
        let n: &str = name.as_ref();
        let dropped = n.starts_with("Regua-Dlq-")
            || n.eq_ignore_ascii_case("Nats-Msg-Id")
            || n.eq_ignore_ascii_case(subjects::HEADER_REPLY_TO)
            || n.eq_ignore_ascii_case(subjects::HEADER_MESSAGE_ID);
        if !dropped {
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
    }
    if let Some(id) = &letter.message_id {
        headers.insert(subjects::HEADER_MESSAGE_ID, id.as_str());
    }
    headers.insert("Nats-Msg-Id", format!("dlq-replay:{seq}").as_str());
    let ack = js
        .publish_with_headers(letter.subject.clone(), headers, payload)
        .await
        .map_err(PlatformError::nats)?
        .await
        .map_err(PlatformError::nats)?;
    dlq.delete_message(seq)
        .await
        .map_err(|e| PlatformError::Nats(format!("replayed, but not deleted: {e}")))?;
    Ok(Replayed {
        seq,
        subject: letter.subject,
        message_id: letter.message_id,
        duplicate: ack.duplicate,
    })
}
