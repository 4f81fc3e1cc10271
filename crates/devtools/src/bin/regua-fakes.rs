//! `regua-fakes`: the provider fakes (SMTP, Twilio-shaped, Meta-shaped) on fixed local
//! ports, for the demo (see [`regua_devtools::fakes`]).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "regua-fakes",
    about = "Run the provider fakes (SMTP, Twilio-shaped, Meta-shaped) for the demo"
)]
struct Cli {
    #[command(flatten)]
    fakes: regua_devtools::fakes::FakesArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    regua_devtools::fakes::run(Cli::parse().fakes).await
}
