//! Configuration: defaults, then an optional TOML file, then `REGUA_*` environment
//! variables. Every key is validated at startup; a bad value stops startup with a
//! message that names both the file key and the variable.
//!
//! [`KEYS`] is the one list of settings, with their defaults and what each does; the
//! reference in `docs/configuration.md` is generated from it ([`reference`]) and a test
//! fails when it is stale, so the two cannot drift.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::secrets::Secret;

/// Log output shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// TLS to NATS (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsTls {
    pub ca: std::path::PathBuf,
    /// Certificate and key, for a server that verifies its clients (mutual TLS).
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// What one replica's HTTP server accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    /// Requests per second per tenant key, per replica; 0: no limit.
    pub tenant_rate: u32,
    pub tenant_burst: u32,
}

/// Validated settings for every service.
#[derive(Debug, Clone)]
pub struct Config {
    pub nats_url: String,
    /// The service's NATS user; also names its private reply inbox (`_INBOX_<user>`).
    pub nats_user: Option<String>,
    pub nats_password: Option<Secret>,
    /// TLS to NATS: the CA that signed the servers' certificates (TLS is then required)
    /// and, for servers that verify clients, this client's certificate and key.
    pub nats_tls: Option<NatsTls>,
    /// Whether this process creates or updates the streams (the provisioning identity)
    /// or only checks they exist (a least-privilege service user).
    pub nats_provision: bool,
    /// Copies of each stream, when provisioning.
    pub nats_stream_replicas: usize,
    pub database_url: Secret,
    pub http_addr: SocketAddr,
    pub admin_token: Option<Secret>,
    pub log: String,
    pub log_format: LogFormat,
    pub db_max_connections: u32,
    pub intake_batch_size: usize,
    pub intake_max_deliver: i64,
    pub intake_workers: usize,
    pub intake_ack_wait: Duration,
    pub scheduler_batch_size: usize,
    pub scheduler_poll: Duration,
    pub scheduler_workers: usize,
    pub reconcile_batch_size: usize,
    pub reconcile_workers: usize,
    pub reconcile_ack_wait: Duration,
    pub http_outcome_wait: Duration,
    /// What one replica's HTTP server accepts ([`crate::http::Limits`]).
    pub http: HttpSettings,
    pub drain_timeout: Duration,
    pub public_url: String,
    pub link_secret: Secret,
    pub providers: Providers,
    pub dispatch: DispatchSettings,
    /// Whether a process may start with development or placeholder secrets
    /// ([`crate::secrets::is_placeholder`]): a laptop or the demo only.
    pub allow_development_secrets: bool,
    /// Whether `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set: the
    /// exporter itself reads the standard `OTEL_*` variables.
    pub otlp_export: bool,
}

/// Provider accounts, per deployment.
#[derive(Debug, Clone)]
pub struct Providers {
    pub smtp_url: Secret,
    pub email_from: String,
    pub twilio_api_base: String,
    pub twilio_account_sid: String,
    pub twilio_auth_token: Secret,
    pub twilio_from: String,
    pub whatsapp_api_base: String,
    pub whatsapp_token: Secret,
    pub whatsapp_phone_number_id: String,
    pub whatsapp_app_secret: Secret,
    pub whatsapp_verify_token: Secret,
    pub timeout: Duration,
}

/// How the channel dispatchers work.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Messages per second per channel's provider account, across every replica; 0 is
    /// unlimited.
    pub email_rate: u32,
    pub sms_rate: u32,
    pub whatsapp_rate: u32,
    pub batch_size: usize,
    pub workers: usize,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub ack_wait: Duration,
    /// Whether commands of test-clock tenants may reach the configured providers: only
    /// where those are sandboxes (the fakes, a provider's test account). Otherwise the
    /// dispatcher skips them (`test_clock`).
    pub test_clock_sends: bool,
}

impl DispatchSettings {
    /// The rate limit of `channel`'s provider account (0 = unlimited).
    pub fn rate(&self, channel: regua_contract::inbound::Channel) -> u32 {
        use regua_contract::inbound::Channel;
        match channel {
            Channel::Email => self.email_rate,
            Channel::Sms => self.sms_rate,
            Channel::Whatsapp => self.whatsapp_rate,
        }
    }
}

/// The signing secret used when `REGUA_LINK_SECRET` is not set: fine for a laptop,
/// never for production (anyone could forge unsubscribe links).
pub const DEV_LINK_SECRET: &str = "regua-development-link-secret";

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("unknown key `{key}` in config file {path}")]
    UnknownKey { key: String, path: String },
    #[error("invalid value for `{key}` ({env}): {reason}")]
    Invalid {
        key: &'static str,
        env: String,
        reason: String,
    },
}

/// One setting: its file key (the environment variable is `REGUA_` and the key in upper
/// case), its default (empty: unset) and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    pub name: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
}

/// Every setting, in the order the reference lists them.
pub const KEYS: &[Key] = &[
    Key {
        name: "nats_url",
        default: "nats://127.0.0.1:4222",
        doc: "The NATS server (JetStream enabled).",
    },
    Key {
        name: "nats_user",
        default: "",
        doc: "The service's own NATS user ([deploy/nats/accounts.conf](../deploy/nats/accounts.conf)); replies then arrive on its private inbox `_INBOX_<user>`. Unset: no authentication.",
    },
    Key {
        name: "nats_password",
        default: "",
        doc: "Its password; only with `nats_user`.",
    },
    Key {
        name: "nats_tls_ca",
        default: "",
        doc: "PEM file of the CA that signed the NATS servers' certificates: set, TLS is required and the server verified. Unset: plain TCP (a trusted network only).",
    },
    Key {
        name: "nats_tls_cert",
        default: "",
        doc: "This client's PEM certificate, for a NATS server that verifies clients (with `nats_tls_key`; only with `nats_tls_ca`).",
    },
    Key {
        name: "nats_tls_key",
        default: "",
        doc: "Its PEM private key.",
    },
    Key {
        name: "nats_provision",
        default: "true",
        doc: "`true`: create or update the streams at startup; `false` under a least-privilege user, which only checks they exist (`regua migrate` provisions them).",
    },
    Key {
        name: "nats_stream_replicas",
        default: "1",
        doc: "Copies of each stream when provisioning, 1 to 5 (3 on a 3-node JetStream cluster).",
    },
    Key {
        name: "database_url",
        default: "postgres://postgres:postgres@127.0.0.1:5432/regua",
        doc: "The PostgreSQL database, created if missing.",
    },
    Key {
        name: "http_addr",
        default: "127.0.0.1:8080",
        doc: "Where the HTTP API, `/healthz`, `/readyz` and `/metrics` listen.",
    },
    Key {
        name: "admin_token",
        default: "",
        doc: "Bearer token of `POST /v1/tenants`, at least 16 characters. Unset: tenant administration over HTTP is off.",
    },
    Key {
        name: "log",
        default: "info,sqlx=warn",
        doc: "A tracing `EnvFilter` directive.",
    },
    Key {
        name: "log_format",
        default: "text",
        doc: "`text`, or `json` for machines.",
    },
    Key {
        name: "db_max_connections",
        default: "10",
        doc: "Connections per pool, 1 to 1000. Each in-order consumer (the scheduler has two, dispatch and reconciliation one each) holds one more of its own for its lease, standing by or not.",
    },
    Key {
        name: "intake_batch_size",
        default: "500",
        doc: "Inbound messages per transaction, 1 to 1000.",
    },
    Key {
        name: "intake_max_deliver",
        default: "5",
        doc: "Deliveries of an inbound message before it is dead-lettered, 1 to 100.",
    },
    Key {
        name: "intake_workers",
        default: "2",
        doc: "Concurrent intake batches per process, 1 to 16.",
    },
    Key {
        name: "intake_ack_wait_secs",
        default: "60",
        doc: "How soon a crashed intake worker's messages are redelivered.",
    },
    Key {
        name: "scheduler_batch_size",
        default: "500",
        doc: "Events per scheduler transaction; due steps per claim (1 to 5000).",
    },
    Key {
        name: "scheduler_poll_ms",
        default: "250",
        doc: "How often due steps are claimed when nothing wakes the scheduler (10 to 60000).",
    },
    Key {
        name: "scheduler_workers",
        default: "2",
        doc: "Concurrent claims per process, each over its own share of the customers (1 to 16).",
    },
    Key {
        name: "reconcile_batch_size",
        default: "200",
        doc: "Payments fetched per batch (1 to 5000).",
    },
    Key {
        name: "reconcile_workers",
        default: "8",
        doc: "Payment groups (one transaction each) in flight per process (1 to 64).",
    },
    Key {
        name: "reconcile_ack_wait_secs",
        default: "30",
        doc: "How soon a crashed replica's payments come back.",
    },
    Key {
        name: "http_outcome_wait_ms",
        default: "5000",
        doc: "How long an HTTP submission waits for its committed outcome before answering 202 `pending`.",
    },
    Key {
        name: "http_max_body_bytes",
        default: "2097152",
        doc: "Largest request body any route reads (413 beyond).",
    },
    Key {
        name: "http_header_timeout_ms",
        default: "10000",
        doc: "A client has this long to send a request's headers; the connection is closed after it.",
    },
    Key {
        name: "http_request_timeout_secs",
        default: "60",
        doc: "A request (reading its body included) that takes longer gets 408.",
    },
    Key {
        name: "http_max_concurrency",
        default: "512",
        doc: "Requests one replica serves at once; beyond, 503 with `Retry-After` (health routes excepted).",
    },
    Key {
        name: "http_tenant_rate",
        default: "50",
        doc: "Requests per second one tenant's key may make on one replica's tenant routes (0: no limit); beyond, 429 with `Retry-After`.",
    },
    Key {
        name: "http_tenant_burst",
        default: "100",
        doc: "Requests a tenant may make at once above `http_tenant_rate` before it is limited.",
    },
    Key {
        name: "drain_timeout_secs",
        default: "20",
        doc: "Graceful stop: finish the batches in hand and flush the outbox within this.",
    },
    Key {
        name: "public_url",
        default: "http://127.0.0.1:8080",
        doc: "How providers and debtors reach regua: Twilio's `StatusCallback`, the unsubscribe links.",
    },
    Key {
        name: "link_secret",
        default: DEV_LINK_SECRET,
        doc: "Signs the links regua gives out (unsubscribe), at least 16 characters. The default is for a laptop: set your own.",
    },
    Key {
        name: "allow_development_secrets",
        default: "false",
        doc: "`true` lets a service start with the development link secret or a placeholder (`change-me…`) in a secret it uses; only for a laptop or the demo. With `false` it refuses to start, naming the settings to set.",
    },
    Key {
        name: "smtp_url",
        default: "smtp://127.0.0.1:2525",
        doc: "The SMTP relay: `smtps://` for TLS, `?tls=required` (or `opportunistic`) for STARTTLS, `user:password@` for AUTH.",
    },
    Key {
        name: "email_from",
        default: "Regua <cobranca@regua.local>",
        doc: "The sender; its display name is replaced by the creditor's.",
    },
    Key {
        name: "twilio_api_base",
        default: "https://api.twilio.com",
        doc: "Twilio's API (the fakes in development).",
    },
    Key {
        name: "twilio_account_sid",
        default: "",
        doc: "Required by `regua dispatch sms`.",
    },
    Key {
        name: "twilio_auth_token",
        default: "",
        doc: "Required by `regua dispatch sms`; also verifies Twilio's callbacks.",
    },
    Key {
        name: "twilio_from",
        default: "",
        doc: "Required by `regua dispatch sms`: an E.164 number or a Messaging Service `MG…`.",
    },
    Key {
        name: "whatsapp_api_base",
        default: "https://graph.facebook.com/v21.0",
        doc: "The WhatsApp Cloud API (the fakes in development).",
    },
    Key {
        name: "whatsapp_token",
        default: "",
        doc: "Required by `regua dispatch whatsapp`.",
    },
    Key {
        name: "whatsapp_phone_number_id",
        default: "",
        doc: "Required by `regua dispatch whatsapp`.",
    },
    Key {
        name: "whatsapp_app_secret",
        default: "",
        doc: "Verifies the WhatsApp webhook's `X-Hub-Signature-256`.",
    },
    Key {
        name: "whatsapp_verify_token",
        default: "",
        doc: "Answers the WhatsApp webhook's verification handshake.",
    },
    Key {
        name: "email_rate_per_sec",
        default: "50",
        doc: "E-mails per second per provider account, across all replicas (0 = unlimited).",
    },
    Key {
        name: "sms_rate_per_sec",
        default: "30",
        doc: "SMS per second per provider account, across all replicas (0 = unlimited).",
    },
    Key {
        name: "whatsapp_rate_per_sec",
        default: "80",
        doc: "WhatsApp messages per second per provider account, across all replicas (0 = unlimited).",
    },
    Key {
        name: "dispatch_batch_size",
        default: "64",
        doc: "Commands fetched and sent concurrently per batch (1 to 1000).",
    },
    Key {
        name: "dispatch_workers",
        default: "2",
        doc: "Concurrent dispatch batches per process (1 to 16).",
    },
    Key {
        name: "dispatch_max_attempts",
        default: "5",
        doc: "Provider calls on transient failures before dead-lettering (1 to 50).",
    },
    Key {
        name: "dispatch_retry_base_ms",
        default: "1000",
        doc: "First retry backoff; it doubles, jittered, at least `Retry-After`, at most 5 min.",
    },
    Key {
        name: "dispatch_ack_wait_secs",
        default: "60",
        doc: "How soon a crashed dispatcher's commands come back.",
    },
    Key {
        name: "test_clock_sends",
        default: "false",
        doc: "Whether messages of test-clock tenants may go to the configured providers. Set `true` only where those are sandboxes (the fakes, a provider's test account); with `false` the dispatcher skips them (`message.skipped`, reason `test_clock`), so a simulation never reaches a real debtor.",
    },
    Key {
        name: "provider_timeout_ms",
        default: "10000",
        doc: "Timeout of a provider call (100 to 120000).",
    },
];

/// The environment variable of file key `key`.
pub fn env_name(key: &str) -> String {
    format!("REGUA_{}", key.to_ascii_uppercase())
}

/// The configuration reference, in Markdown, generated from [`KEYS`]
/// (`docs/configuration.md` is exactly this).
pub fn reference() -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated from crates/platform/src/config.rs (KEYS); a test fails when this file is stale. \
         Regenerate with: REGUA_BLESS_DOCS=1 cargo test -p regua-platform configuration_reference_is_fresh -->\n\n\
         Every setting has a default, can be set in a TOML file (`regua --config regua.toml …`, \
         the file keys below; see [deploy/regua.example.toml](../deploy/regua.example.toml)) and \
         is overridden by its environment variable. A bad value stops startup with a message \
         naming both. Trace export reads the standard `OTEL_*` variables \
         (`OTEL_EXPORTER_OTLP_ENDPOINT`: OTLP/HTTP; unset: no export).\n\n\
         | environment variable | file key | default | |\n|---|---|---|---|\n",
    );
    for k in KEYS {
        let default = match k.default {
            "" => "unset".to_owned(),
            DEV_LINK_SECRET => "a development value".to_owned(),
            d => format!("`{d}`"),
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {default} | {} |\n",
            env_name(k.name),
            k.name,
            k.doc
        ));
    }
    out
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are constants that parse; a failure here is a bug caught by tests.
        Config::from_sources(None, |_| None).unwrap_or_else(|_| unreachable_defaults())
    }
}

#[allow(clippy::panic)]
fn unreachable_defaults() -> Config {
    panic!("built-in configuration defaults do not parse")
}

impl Config {
    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        // The one place that reads the process environment.
        #[allow(clippy::disallowed_methods)]
        Config::from_sources(file, |name| std::env::var(name).ok())
    }

    /// Like [`Config::load`], with the environment given as a function (for tests).
    pub fn from_sources(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        // Every process and test builds a configuration before any HTTPS client.
        crate::tls::init();
        let mut raw: BTreeMap<&'static str, String> = KEYS
            .iter()
            .map(|k| (k.name, k.default.to_owned()))
            .collect();
        if let Some(path) = file {
            let display = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: display.clone(),
                reason: e.to_string(),
            })?;
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::File {
                        path: display.clone(),
                        reason: e.to_string(),
                    })?;
            for (k, v) in table {
                let Some(key) = KEYS.iter().map(|k| k.name).find(|name| *name == k) else {
                    return Err(ConfigError::UnknownKey {
                        key: k,
                        path: display,
                    });
                };
                let value = match v {
                    toml::Value::String(s) => s,
                    other => other.to_string(),
                };
                raw.insert(key, value);
            }
        }
        for key in KEYS {
            if let Some(v) = env(&env_name(key.name)) {
                raw.insert(key.name, v);
            }
        }
        let mut config = Config::parse(&raw)?;
        config.otlp_export = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|k| env(k).is_some_and(|v| !v.is_empty()));
        Ok(config)
    }

    fn parse(raw: &BTreeMap<&'static str, String>) -> Result<Config, ConfigError> {
        let get = |k: &str| raw.get(k).map(String::as_str).unwrap_or("");
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            key,
            env: env_name(key),
            reason,
        };
        let nats_url = get("nats_url").to_owned();
        if nats_url.is_empty() || nats_url.contains(char::is_whitespace) {
            return Err(invalid(
                "nats_url",
                "must be a NATS URL such as nats://host:4222".into(),
            ));
        }
        let nats_user = match get("nats_user") {
            "" => None,
            u if u
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
            {
                Some(u.to_owned())
            }
            _ => {
                return Err(invalid(
                    "nats_user",
                    "must be letters, digits, `-` or `_` (it names the reply inbox)".into(),
                ));
            }
        };
        let nats_password = match get("nats_password") {
            "" => None,
            p if nats_user.is_some() => Some(Secret::new(p)),
            _ => {
                return Err(invalid(
                    "nats_password",
                    "is set without REGUA_NATS_USER".into(),
                ));
            }
        };
        let nats_tls = match (
            get("nats_tls_ca"),
            get("nats_tls_cert"),
            get("nats_tls_key"),
        ) {
            ("", "", "") => None,
            ("", _, _) => {
                return Err(invalid(
                    "nats_tls_cert",
                    "a client certificate needs REGUA_NATS_TLS_CA".into(),
                ));
            }
            (ca, "", "") => Some(NatsTls {
                ca: ca.into(),
                client: None,
            }),
            (ca, cert, key) if !cert.is_empty() && !key.is_empty() => Some(NatsTls {
                ca: ca.into(),
                client: Some((cert.into(), key.into())),
            }),
            _ => {
                return Err(invalid(
                    "nats_tls_key",
                    "REGUA_NATS_TLS_CERT and REGUA_NATS_TLS_KEY go together".into(),
                ));
            }
        };
        let boolean = |key: &'static str| -> Result<bool, ConfigError> {
            match get(key) {
                "true" => Ok(true),
                "false" => Ok(false),
                other => Err(invalid(key, format!("`{other}` is not one of true, false"))),
            }
        };
        let nats_provision = boolean("nats_provision")?;
        let database_url = get("database_url").to_owned();
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(invalid(
                "database_url",
                "must start with postgres:// or postgresql://".into(),
            ));
        }
        let http_addr = get("http_addr").parse::<SocketAddr>().map_err(|e| {
            invalid(
                "http_addr",
                format!("{e} (expected host:port, e.g. 127.0.0.1:8080)"),
            )
        })?;
        let admin_token = match get("admin_token") {
            "" => None,
            t if t.len() < 16 => {
                return Err(invalid(
                    "admin_token",
                    "must be at least 16 characters".into(),
                ));
            }
            t => Some(Secret::new(t)),
        };
        let log = get("log").to_owned();
        let log_format = match get("log_format") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    "log_format",
                    format!("`{other}` is not one of text, json"),
                ));
            }
        };
        let number = |key: &'static str, min: u64, max: u64| -> Result<u64, ConfigError> {
            let v: u64 = get(key)
                .parse()
                .map_err(|_| invalid(key, format!("`{}` is not a whole number", get(key))))?;
            if (min..=max).contains(&v) {
                Ok(v)
            } else {
                Err(invalid(key, format!("{v} is outside {min}..={max}")))
            }
        };
        let url = |key: &'static str, schemes: &[&str]| -> Result<String, ConfigError> {
            let v = get(key).trim_end_matches('/').to_owned();
            if schemes.iter().any(|s| v.starts_with(&format!("{s}://"))) && !v.contains(' ') {
                Ok(v)
            } else {
                Err(invalid(
                    key,
                    format!("`{v}` must be a {} URL", schemes.join(" or ")),
                ))
            }
        };
        let rate = |key: &'static str| -> Result<u32, ConfigError> {
            Ok(u32::try_from(number(key, 0, 100_000)?).unwrap_or(0))
        };
        let link_secret = get("link_secret");
        if link_secret.len() < 16 {
            return Err(invalid(
                "link_secret",
                "must be at least 16 characters".into(),
            ));
        }
        let providers = Providers {
            smtp_url: Secret::new(url("smtp_url", &["smtp", "smtps"])?),
            email_from: get("email_from").to_owned(),
            twilio_api_base: url("twilio_api_base", &["http", "https"])?,
            twilio_account_sid: get("twilio_account_sid").to_owned(),
            twilio_auth_token: Secret::new(get("twilio_auth_token")),
            twilio_from: get("twilio_from").to_owned(),
            whatsapp_api_base: url("whatsapp_api_base", &["http", "https"])?,
            whatsapp_token: Secret::new(get("whatsapp_token")),
            whatsapp_phone_number_id: get("whatsapp_phone_number_id").to_owned(),
            whatsapp_app_secret: Secret::new(get("whatsapp_app_secret")),
            whatsapp_verify_token: Secret::new(get("whatsapp_verify_token")),
            timeout: Duration::from_millis(number("provider_timeout_ms", 100, 120_000)?),
        };
        if providers.email_from.is_empty() || !providers.email_from.contains('@') {
            return Err(invalid(
                "email_from",
                "must be an address such as `Acme <cobranca@acme.com.br>`".into(),
            ));
        }
        let dispatch = DispatchSettings {
            email_rate: rate("email_rate_per_sec")?,
            sms_rate: rate("sms_rate_per_sec")?,
            whatsapp_rate: rate("whatsapp_rate_per_sec")?,
            batch_size: usize::try_from(number("dispatch_batch_size", 1, 1000)?).unwrap_or(64),
            workers: usize::try_from(number("dispatch_workers", 1, 16)?).unwrap_or(2),
            max_attempts: u32::try_from(number("dispatch_max_attempts", 1, 50)?).unwrap_or(5),
            retry_base: Duration::from_millis(number("dispatch_retry_base_ms", 1, 600_000)?),
            ack_wait: Duration::from_secs(number("dispatch_ack_wait_secs", 1, 3600)?),
            test_clock_sends: boolean("test_clock_sends")?,
        };
        Ok(Config {
            public_url: url("public_url", &["http", "https"])?,
            link_secret: Secret::new(link_secret),
            allow_development_secrets: boolean("allow_development_secrets")?,
            providers,
            dispatch,
            nats_url,
            nats_user,
            nats_password,
            nats_tls,
            nats_provision,
            nats_stream_replicas: usize::try_from(number("nats_stream_replicas", 1, 5)?)
                .unwrap_or(1),
            database_url: Secret::new(database_url),
            http_addr,
            admin_token,
            log,
            log_format,
            db_max_connections: u32::try_from(number("db_max_connections", 1, 1000)?).unwrap_or(10),
            intake_batch_size: usize::try_from(number("intake_batch_size", 1, 1000)?)
                .unwrap_or(500),
            intake_max_deliver: i64::try_from(number("intake_max_deliver", 1, 100)?).unwrap_or(5),
            intake_workers: usize::try_from(number("intake_workers", 1, 16)?).unwrap_or(2),
            intake_ack_wait: Duration::from_secs(number("intake_ack_wait_secs", 1, 3600)?),
            scheduler_batch_size: usize::try_from(number("scheduler_batch_size", 1, 5000)?)
                .unwrap_or(500),
            scheduler_poll: Duration::from_millis(number("scheduler_poll_ms", 10, 60_000)?),
            scheduler_workers: usize::try_from(number("scheduler_workers", 1, 16)?).unwrap_or(2),
            reconcile_batch_size: usize::try_from(number("reconcile_batch_size", 1, 5000)?)
                .unwrap_or(200),
            reconcile_workers: usize::try_from(number("reconcile_workers", 1, 64)?).unwrap_or(8),
            reconcile_ack_wait: Duration::from_secs(number("reconcile_ack_wait_secs", 1, 3600)?),
            http_outcome_wait: Duration::from_millis(number("http_outcome_wait_ms", 0, 60_000)?),
            http: HttpSettings {
                max_body_bytes: usize::try_from(number("http_max_body_bytes", 1024, 1 << 30)?)
                    .unwrap_or(2 << 20),
                header_timeout: Duration::from_millis(number(
                    "http_header_timeout_ms",
                    100,
                    600_000,
                )?),
                request_timeout: Duration::from_secs(number("http_request_timeout_secs", 1, 3600)?),
                max_concurrency: usize::try_from(number("http_max_concurrency", 1, 100_000)?)
                    .unwrap_or(512),
                tenant_rate: u32::try_from(number("http_tenant_rate", 0, 1_000_000)?).unwrap_or(50),
                tenant_burst: u32::try_from(number("http_tenant_burst", 1, 1_000_000)?)
                    .unwrap_or(100),
            },
            drain_timeout: Duration::from_secs(number("drain_timeout_secs", 1, 3600)?),
            otlp_export: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_parse() {
        let c = Config::default();
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert!(c.admin_token.is_none());
    }

    #[test]
    fn file_then_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regua.toml");
        std::fs::write(
            &path,
            "http_addr = \"0.0.0.0:9000\"\nintake_batch_size = 100\n",
        )
        .unwrap();
        let c =
            Config::from_sources(Some(&path), env(&[("REGUA_INTAKE_BATCH_SIZE", "250")])).unwrap();
        assert_eq!(c.http_addr.to_string(), "0.0.0.0:9000");
        assert_eq!(c.intake_batch_size, 250);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::from_sources(None, env(&[("REGUA_HTTP_ADDR", "nope")])).unwrap_err();
        assert!(e.to_string().contains("REGUA_HTTP_ADDR"), "{e}");
        let e =
            Config::from_sources(None, env(&[("REGUA_DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(e.to_string().contains("database_url"), "{e}");
        let e = Config::from_sources(None, env(&[("REGUA_ADMIN_TOKEN", "short")])).unwrap_err();
        assert!(e.to_string().contains("REGUA_ADMIN_TOKEN"), "{e}");
    }

    #[test]
    fn the_shipped_example_file_parses() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/regua.example.toml");
        let c = Config::from_sources(Some(&path), env(&[])).unwrap();
        assert_eq!(c.intake_batch_size, 500);
    }

    #[test]
    fn nats_identity_settings_are_checked() {
        let c = Config::from_sources(
            None,
            env(&[
                ("REGUA_NATS_USER", "dispatch"),
                ("REGUA_NATS_PASSWORD", "s3cret-s3cret"),
                ("REGUA_NATS_PROVISION", "false"),
                ("REGUA_NATS_STREAM_REPLICAS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats_user.as_deref(), Some("dispatch"));
        assert!(!c.nats_provision);
        assert_eq!(c.nats_stream_replicas, 3);
        assert!(!format!("{c:?}").contains("s3cret"));
        for (k, v, named) in [
            ("REGUA_NATS_PASSWORD", "x", "REGUA_NATS_PASSWORD"),
            ("REGUA_NATS_USER", "a.b", "REGUA_NATS_USER"),
            ("REGUA_NATS_PROVISION", "yes", "REGUA_NATS_PROVISION"),
            (
                "REGUA_NATS_STREAM_REPLICAS",
                "0",
                "REGUA_NATS_STREAM_REPLICAS",
            ),
        ] {
            let e = Config::from_sources(None, env(&[(k, v)])).unwrap_err();
            assert!(e.to_string().contains(named), "{k}={v}: {e}");
        }
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regua.toml");
        std::fs::write(&path, "http_adr = \"0.0.0.0:9000\"\n").unwrap();
        let e = Config::from_sources(Some(&path), env(&[])).unwrap_err();
        assert!(e.to_string().contains("http_adr"), "{e}");
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn configuration_reference_is_fresh() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
        let generated = reference();
        if std::env::var("REGUA_BLESS_DOCS").is_ok_and(|v| v == "1") {
            std::fs::write(&path, &generated).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            on_disk == generated,
            "docs/configuration.md is stale; regenerate with REGUA_BLESS_DOCS=1 cargo test -p regua-platform configuration_reference_is_fresh"
        );
    }

    #[test]
    fn every_key_is_read_and_the_example_file_names_each() {
        let example = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../deploy/regua.example.toml"),
        )
        .unwrap();
        for k in KEYS {
            assert!(
                example.contains(&format!("{} =", k.name)),
                "deploy/regua.example.toml does not mention {}",
                k.name
            );
        }
        let source = include_str!("config.rs");
        let parse =
            &source[source.find("fn parse(").unwrap()..source.find("#[cfg(test)]").unwrap()];
        for k in KEYS {
            assert!(
                parse.contains(&format!("\"{}\"", k.name)),
                "{} is listed but never read",
                k.name
            );
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let c =
            Config::from_sources(None, env(&[("REGUA_ADMIN_TOKEN", "0123456789abcdef")])).unwrap();
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }
}
