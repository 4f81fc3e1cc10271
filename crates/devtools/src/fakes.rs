//! `regua-fakes`: the provider fakes (SMTP, Twilio-shaped, Meta-shaped) on fixed local
//! ports, for the demo. Every message they receive is printed as it arrives, and
//! `http://<inbox>/` lists them (newest first).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::response::Html;
use regua_testkit::fakes::{self, FakeProviders};

use crate::say;

/// Where the fakes listen.
#[derive(clap::Args)]
pub struct FakesArgs {
    #[arg(long, default_value = "127.0.0.1:2525")]
    pub smtp: String,
    #[arg(long, default_value = "127.0.0.1:8025")]
    pub twilio: String,
    #[arg(long, default_value = "127.0.0.1:8026")]
    pub meta: String,
    /// The page listing what the fakes received.
    #[arg(long, default_value = "127.0.0.1:8029")]
    pub inbox: String,
    /// regua's public URL, where Meta's status notifications go.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub public_url: String,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn inbox_page(State(f): State<Arc<FakeProviders>>) -> Html<String> {
    let lines = f.inbox();
    let mut rows = String::new();
    for l in lines.iter().rev().take(500) {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            l.channel,
            escape(&l.to),
            escape(&l.text)
        ));
    }
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>regua fake providers</title></head><body style=\"font-family:sans-serif\">\
         <h1>What the fake providers received ({} messages)</h1>\
         <table border=\"1\" cellpadding=\"4\" style=\"border-collapse:collapse\">\
         <tr><th>channel</th><th>to</th><th>subject / text / template</th></tr>{rows}</table></body></html>",
        lines.len()
    ))
}

pub async fn run(args: FakesArgs) -> anyhow::Result<()> {
    let f = Arc::new(
        FakeProviders::start_on(&args.smtp, &args.twilio, &args.meta)
            .await
            .context("starting the fake providers (are the ports free?)")?,
    );
    f.webhooks_to(&args.public_url);
    let listener = tokio::net::TcpListener::bind(&args.inbox)
        .await
        .with_context(|| format!("binding the inbox page on {}", args.inbox))?;
    let app = axum::Router::new()
        .route("/", axum::routing::get(inbox_page))
        .with_state(Arc::clone(&f));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    say(&format!(
        "fake providers: smtp://{} · twilio http://{} (sid {}) · whatsapp http://{} (phone id {}) · inbox http://{}/",
        args.smtp,
        args.twilio,
        fakes::TWILIO_SID,
        args.meta,
        fakes::WA_PHONE_NUMBER_ID,
        args.inbox
    ));
    let mut printed = 0;
    // One signal future for the whole run: one made per tick misses a SIGTERM that
    // arrives between ticks.
    let stop = regua_platform::shutdown::signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let lines = f.inbox();
        for l in lines.iter().skip(printed) {
            let text: String = l.text.chars().take(160).collect();
            say(&format!("{:<8} {:<28} {text}", l.channel, l.to));
        }
        printed = lines.len();
    }
    Ok(())
}
