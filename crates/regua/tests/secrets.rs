//! A service refuses to start with development or placeholder secrets among those it
//! uses, naming them, unless REGUA_ALLOW_DEVELOPMENT_SECRETS says it runs on a laptop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Stdio;
use std::time::Duration;

/// Runs `regua <args>` with `env` and no allowance; it must exit at once, unsuccessfully,
/// saying why.
async fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_regua"));
    cmd.args(args)
        .env_remove("REGUA_ALLOW_DEVELOPMENT_SECRETS")
        .env_remove("REGUA_LINK_SECRET")
        .env_remove("REGUA_ADMIN_TOKEN")
        .envs(env.iter().copied())
        // Nothing listens here: a process that got past the check would hang connecting.
        .env("REGUA_NATS_URL", "nats://127.0.0.1:9")
        .env(
            "REGUA_DATABASE_URL",
            "postgres://regua:s3cret-pw@127.0.0.1:9/regua",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("it refuses at once instead of starting")
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn placeholder_secrets_stop_the_services_that_use_them() {
    // A dispatcher with the development link secret (the default).
    let err = refused(&["dispatch", "email"], &[]).await;
    assert!(err.contains("REGUA_LINK_SECRET"), "{err}");
    // Intake with the example's admin token.
    let err = refused(
        &["intake"],
        &[("REGUA_ADMIN_TOKEN", "change-me-to-a-long-random-token")],
    )
    .await;
    assert!(err.contains("REGUA_ADMIN_TOKEN"), "{err}");
    assert!(
        !err.contains("REGUA_LINK_SECRET"),
        "intake signs no links: {err}"
    );
}
