//! The `regua` command line: thin wiring over the service libraries. Development tools
//! (the demo, the provider fakes, the benchmarks) are binaries of `regua-devtools`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use regua_intake::Intake;
use regua_platform::{Config, SystemClock, db, nats, telemetry};

#[derive(Parser)]
#[command(
    name = "regua",
    version,
    about = "regua: respectful, automated debt collection (régua de cobrança)"
)]
struct Cli {
    /// Optional TOML file; environment variables (REGUA_*) override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the intake service: invoices, customers and tenants in over NATS and HTTP.
    Intake,
    /// Run the scheduler: each tenant's régua on a durable schedule, dispatch commands out.
    Scheduler,
    /// Run one channel's dispatcher: guard, render, rate-limit and send its commands.
    Dispatch {
        #[arg(value_enum)]
        channel: ChannelArg,
    },
    /// Run reconciliation: payments in (NATS, HTTP, PIX webhook), matched, settled; the régua stops.
    Reconcile,
    /// Run every service in one process, each as its own task, talking only through NATS.
    All,
    /// Create the database if it is missing, run every service's migrations, and create
    /// or update the NATS streams (run it as the provisioning NATS user).
    Migrate,
    /// Tenant administration.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Régua policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The dead-letter stream: what the consumers gave up on, and replaying it (run it
    /// as the `operator` NATS user of deploy/nats/accounts.conf).
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first: sequence, time, consumer, tenant, original
    /// subject, message id, size and reason (never the payload).
    List {
        #[arg(long)]
        consumer: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one dead letter: its headers and payload (which may hold personal data).
    Show { seq: u64 },
    /// Publish dead letters again on their original subjects, under their original
    /// message ids, and remove them from the dead-letter stream. Idempotent.
    Replay {
        /// Sequences from `regua dlq list`.
        #[arg(required = true)]
        seq: Vec<u64>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ChannelArg {
    Email,
    Sms,
    Whatsapp,
}

impl From<ChannelArg> for regua_contract::inbound::Channel {
    fn from(c: ChannelArg) -> Self {
        match c {
            ChannelArg::Email => regua_contract::inbound::Channel::Email,
            ChannelArg::Sms => regua_contract::inbound::Channel::Sms,
            ChannelArg::Whatsapp => regua_contract::inbound::Channel::Whatsapp,
        }
    }
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy file (YAML or JSON) and write it as the policy's next version.
    Apply {
        /// The policy document.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        tenant: String,
        /// The policy name; defaults to the document's `name`, then the file stem.
        #[arg(long)]
        name: Option<String>,
        /// Move open invoices on this policy to the new version.
        #[arg(long)]
        migrate_open: bool,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant and print it with its API key (shown once).
    Create(NewTenantArgs),
    /// Give a tenant a new API key (printed once), as `POST …/keys:rotate` does, for a
    /// tenant that lost its key: the keys it replaces work for `--grace-secs` more.
    RotateKey {
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = 86_400)]
        grace_secs: u64,
    },
}

/// The same fields as `POST /v1/tenants`, validated by the same code.
#[derive(clap::Args, serde::Serialize)]
struct NewTenantArgs {
    #[arg(long)]
    id: String,
    /// Legal name of the creditor (CDC art. 42-A).
    #[arg(long)]
    legal_name: String,
    #[arg(long)]
    cnpj: String,
    #[arg(long)]
    address: String,
    /// How debtors reach the creditor (phone, e-mail, site).
    #[arg(long)]
    contact: String,
    #[arg(long, default_value = "America/Sao_Paulo")]
    timezone: String,
    /// Simulated time for this tenant (used by the scheduler).
    #[arg(long)]
    test_clock: bool,
    /// RFC 3339 instant at which the test clock starts.
    #[arg(long)]
    now: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref()).context("configuration")?;
    match cli.command {
        Command::Intake => run_services(config, regua::Services::INTAKE).await,
        Command::Scheduler => run_services(config, regua::Services::SCHEDULER).await,
        Command::Reconcile => run_services(config, regua::Services::RECONCILE).await,
        Command::Dispatch { channel } => {
            run_services(config, regua::Services::dispatch(channel.into())).await
        }
        Command::All => {
            let services = all_services(&config);
            run_services(config, services).await
        }
        Command::Policy { command } => {
            let _telemetry = telemetry::init("regua-admin", &config)?;
            policy(config, command).await
        }
        Command::Migrate => {
            let _telemetry = telemetry::init("regua-migrate", &config)?;
            migrate(&config).await
        }
        Command::Tenant { command } => {
            let _telemetry = telemetry::init("regua-admin", &config)?;
            tenant(config, command).await
        }
        Command::Dlq { command } => {
            let _telemetry = telemetry::init("regua-admin", &config)?;
            dead_letters(&config, command).await
        }
    }
}

async fn dead_letters(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    use regua_platform::dlq;
    use std::io::Write;
    let js = nats::jetstream(nats::connect_as(config, "regua-dlq").await?);
    let mut out = std::io::stdout().lock();
    match command {
        DlqCommand::List {
            consumer,
            tenant,
            limit,
            json,
        } => {
            let letters = dlq::list(&js, &dlq::Filter { consumer, tenant }, limit).await?;
            if !json {
                writeln!(
                    out,
                    "SEQ\tAT\tCONSUMER\tTENANT\tSUBJECT\tMESSAGE_ID\tBYTES\tREASON"
                )?;
            }
            for l in &letters {
                if json {
                    writeln!(out, "{}", serde_json::to_string(l)?)?;
                } else {
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        l.seq,
                        l.at.to_rfc3339(),
                        l.consumer,
                        l.tenant,
                        l.subject,
                        l.message_id.as_deref().unwrap_or("-"),
                        l.bytes,
                        l.reason
                    )?;
                }
            }
        }
        DlqCommand::Show { seq } => {
            let (letter, headers, payload) = dlq::show(&js, seq).await?;
            writeln!(out, "{}", serde_json::to_string_pretty(&letter)?)?;
            for (name, values) in headers.iter() {
                for v in values {
                    writeln!(out, "{}: {}", AsRef::<str>::as_ref(name), v.as_str())?;
                }
            }
            writeln!(out)?;
            out.write_all(&payload)?;
            writeln!(out)?;
        }
        DlqCommand::Replay { seq } => {
            for s in seq {
                let r = dlq::replay(&js, s).await?;
                writeln!(out, "{}", serde_json::to_string(&r)?)?;
            }
        }
    }
    Ok(())
}

/// Every service; a channel whose provider is not configured is left out with a
/// warning (`regua dispatch <channel>` refuses to start instead).
fn all_services(config: &Config) -> regua::Services {
    let mut channels = Vec::new();
    for channel in regua_contract::inbound::Channel::ALL {
        match regua_dispatch::channels::Adapter::from_config(channel, config) {
            Ok(_) => channels.push(channel),
            Err(e) => eprintln!(
                "regua all: not running the {} dispatcher: {e}",
                channel.as_str()
            ),
        }
    }
    regua::Services {
        // Built once per process, for its whole life.
        dispatch: Box::leak(channels.into_boxed_slice()),
        ..regua::Services::ALL
    }
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    db::ensure_database(config.database_url.expose()).await?;
    let pool = db::connect(config.database_url.expose(), 2).await?;
    Intake::migrate(&pool).await?;
    regua_scheduler::Scheduler::migrate(&pool).await?;
    regua_dispatch::Dispatcher::migrate(&pool).await?;
    regua_reconcile::Reconcile::migrate(&pool).await?;
    tracing::info!("migrations applied");
    let client = nats::connect_as(config, "regua-migrate").await?;
    nats::ensure_streams(
        &nats::jetstream(client),
        nats::Streams::Provision {
            replicas: config.nats_stream_replicas,
        },
    )
    .await?;
    tracing::info!("streams provisioned");
    Ok(())
}

/// Runs every service until SIGINT/SIGTERM, then drains: stop taking messages, finish
/// batches in hand, flush outboxes.
async fn run_services(config: Config, services: regua::Services) -> anyhow::Result<()> {
    refuse_development_secrets(&config, services)?;
    let _telemetry = telemetry::init("regua", &config)?;
    let mut platform = regua::Platform::start(&config, Arc::new(SystemClock), services).await?;
    tracing::info!(addr = %platform.addr, "regua running");
    tokio::select! {
        () = regua_platform::shutdown::signal() => tracing::info!("stopping: draining work in hand"),
        r = &mut platform.http => {
            r.context("http server task")?.context("http server")?;
        }
    }
    if !platform.drain(&config).await {
        tracing::warn!(timeout = ?config.drain_timeout, "drain timed out; unacked messages will be redelivered");
    }
    Ok(())
}

/// Refuses to run `services` with a development or placeholder secret among those they
/// use, unless `REGUA_ALLOW_DEVELOPMENT_SECRETS` says this is a laptop or the demo.
fn refuse_development_secrets(config: &Config, services: regua::Services) -> anyhow::Result<()> {
    use regua_contract::inbound::Channel;
    if config.allow_development_secrets {
        return Ok(());
    }
    let p = &config.providers;
    let mut used: Vec<(&str, Option<&str>)> = vec![
        ("REGUA_DATABASE_URL", Some(config.database_url.expose())),
        (
            "REGUA_NATS_PASSWORD",
            config.nats_password.as_ref().map(|s| s.expose()),
        ),
    ];
    if services.intake {
        used.push((
            "REGUA_ADMIN_TOKEN",
            config.admin_token.as_ref().map(|s| s.expose()),
        ));
    }
    if !services.dispatch.is_empty() {
        used.push(("REGUA_LINK_SECRET", Some(config.link_secret.expose())));
    }
    for channel in services.dispatch {
        match channel {
            Channel::Email => used.push(("REGUA_SMTP_URL", Some(p.smtp_url.expose()))),
            Channel::Sms => used.push((
                "REGUA_TWILIO_AUTH_TOKEN",
                Some(p.twilio_auth_token.expose()),
            )),
            Channel::Whatsapp => used.extend([
                ("REGUA_WHATSAPP_TOKEN", Some(p.whatsapp_token.expose())),
                (
                    "REGUA_WHATSAPP_APP_SECRET",
                    Some(p.whatsapp_app_secret.expose()),
                ),
                (
                    "REGUA_WHATSAPP_VERIFY_TOKEN",
                    Some(p.whatsapp_verify_token.expose()),
                ),
            ]),
        }
    }
    let bad: Vec<&str> = used
        .into_iter()
        .filter(|(_, v)| v.is_some_and(regua_platform::secrets::is_placeholder))
        .map(|(name, _)| name)
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to start with development or placeholder secrets in {}: set real ones \
         (REGUA_ALLOW_DEVELOPMENT_SECRETS=true is for a laptop or the demo only)",
        bad.join(", ")
    )
}

async fn tenant(config: Config, command: TenantCommand) -> anyhow::Result<()> {
    let args = match command {
        TenantCommand::Create(args) => args,
        TenantCommand::RotateKey { id, grace_secs } => {
            let pool = db::connect(config.database_url.expose(), 2).await?;
            regua_platform::tenancy::migrate(&pool).await?;
            anyhow::ensure!(
                regua_platform::tenancy::exists(&pool, &id).await?,
                "no tenant {id}"
            );
            let now = regua_platform::Clock::now(&SystemClock);
            let mut tx = pool.begin().await?;
            let rotated = regua_platform::tenancy::rotate_key(
                &mut tx,
                &id,
                now,
                std::time::Duration::from_secs(grace_secs),
            )
            .await?;
            tx.commit().await?;
            let out = serde_json::to_string_pretty(&rotated)?;
            std::io::Write::write_all(&mut std::io::stdout(), format!("{out}\n").as_bytes())?;
            return Ok(());
        }
    };
    let body = serde_json::to_value(&args)?;
    let new = regua_intake::tenants::validate_new_tenant(&body).map_err(|issues| {
        let lines: Vec<String> = issues
            .errors
            .iter()
            .map(|e| format!("{}: {} ({})", e.field, e.message, e.code.as_str()))
            .collect();
        anyhow::anyhow!("invalid tenant:\n  {}", lines.join("\n  "))
    })?;
    db::ensure_database(config.database_url.expose()).await?;
    let pool = db::connect(config.database_url.expose(), 2).await?;
    Intake::migrate(&pool).await?;
    let now = regua_platform::Clock::now(&SystemClock);
    let created = regua_intake::tenants::create_tenant(&pool, now, new, None).await?;
    // The outbox row is published by the next running intake's relay.
    let out = serde_json::to_string_pretty(&created)?;
    std::io::Write::write_all(&mut std::io::stdout(), format!("{out}\n").as_bytes())?;
    Ok(())
}

async fn policy(config: Config, command: PolicyCommand) -> anyhow::Result<()> {
    let PolicyCommand::Apply {
        file,
        tenant,
        name,
        migrate_open,
    } = command;
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let name = match name {
        Some(n) => n,
        None => regua_domain::policy::Policy::document(&text)
            .ok()
            .and_then(|d| d.get("name").and_then(|n| n.as_str()).map(str::to_owned))
            .or_else(|| file.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .context("give --name")?,
    };
    db::ensure_database(config.database_url.expose()).await?;
    let pool = db::connect(config.database_url.expose(), 2).await?;
    regua_scheduler::Scheduler::migrate(&pool).await?;
    let clock: regua_platform::SharedClock = Arc::new(SystemClock);
    let written =
        regua_scheduler::http::apply(&pool, &clock, &tenant, &name, &text, Some(migrate_open))
            .await
            .map_err(|p| {
                anyhow::anyhow!(
                    "policy rejected: {}",
                    serde_json::to_string_pretty(&p.body()).unwrap_or_default()
                )
            })?;
    let out = serde_json::to_string_pretty(&written)?;
    std::io::Write::write_all(&mut std::io::stdout(), format!("{out}\n").as_bytes())?;
    Ok(())
}
