//! What the tests that run `regua` as its own processes share.

use std::process::Stdio;

/// `regua <args>` on the NATS server at `nats` and the database at `db`, logging only
/// warnings, exporting no traces, killed when dropped. Callers add their settings.
pub fn regua(args: &[&str], nats: &str, db: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_regua"));
    cmd.args(args)
        .env("REGUA_NATS_URL", nats)
        .env("REGUA_DATABASE_URL", db)
        .env("REGUA_LOG", "warn")
        .env("REGUA_TEST_CLOCK_SENDS", "true")
        .env("REGUA_ALLOW_DEVELOPMENT_SECRETS", "true")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    cmd
}
