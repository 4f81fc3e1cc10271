//! What every whole-platform scenario shares: the admin token and a configuration on
//! the test's own broker and database.
#![allow(dead_code)]

use std::time::Duration;

use regua_platform::{Config, Secret};
use sqlx::PgPool;

pub const ADMIN: &str = "e2e-admin-token-0123456789";

/// The platform's configuration on `nats_url` and the database `#[sqlx::test]` created
/// for this test, with short waits so scenarios run quickly.
pub fn config(nats_url: &str, pool: &PgPool) -> Config {
    let base = std::env::var("DATABASE_URL").unwrap();
    let base = base.rsplit_once('/').unwrap().0;
    let db = pool.connect_options().get_database().unwrap().to_owned();
    Config {
        nats_url: nats_url.to_owned(),
        database_url: Secret::new(format!("{base}/{db}")),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        admin_token: Some(Secret::new(ADMIN)),
        intake_batch_size: 100,
        intake_ack_wait: Duration::from_secs(5),
        scheduler_poll: Duration::from_millis(50),
        db_max_connections: 8,
        ..Config::default()
    }
}
