//! The platform's part of a service's schema: the outbox table it owns, and migrations
//! reissued after release, against a real Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use regua_platform::db::{self, Reissued};
use regua_platform::outbox::{self, Outbox, OutboxMessage};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{PgPool, SqlSafeStr};

fn migrator(sql: &'static str) -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "first".into(),
        MigrationType::Simple,
        sql.into_sql_str(),
        false,
    )])
}

#[sqlx::test(migrations = false)]
async fn a_reissued_migration_is_accepted_where_its_earlier_text_was_applied(pool: PgPool) {
    let earlier = "CREATE TABLE reissue.kept (a int); CREATE TABLE reissue.moved (b int);";
    let current = "CREATE TABLE reissue.kept (a int);";
    db::migrate(&pool, migrator(earlier), "reissue", &[])
        .await
        .unwrap();
    assert!(
        db::migrate(&pool, migrator(current), "reissue", &[])
            .await
            .is_err(),
        "a changed migration is refused unless it is declared reissued"
    );
    let applied: &'static str =
        Box::leak(hex::encode(migrator(earlier).iter().next().unwrap().checksum.as_ref()).into());
    let reissued = [Reissued {
        version: 1,
        applied,
    }];
    db::migrate(&pool, migrator(current), "reissue", &reissued)
        .await
        .unwrap();
    db::migrate(&pool, migrator(current), "reissue", &reissued)
        .await
        .unwrap();
    let moved: bool = sqlx::query_scalar("SELECT to_regclass('reissue.moved') IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(moved, "nothing of the reissued migration runs again");
}

#[sqlx::test(migrations = false)]
async fn the_platform_makes_a_services_outbox_once(pool: PgPool) {
    const OUTBOX: Outbox = Outbox::new("newservice.outbox");
    outbox::migrate(&pool, OUTBOX).await.unwrap();
    outbox::migrate(&pool, OUTBOX).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let message = |n: u8| OutboxMessage {
        id: uuid::Uuid::from_u128(u128::from(n)),
        subject: format!("regua.v1.evt.acme.test.{n}"),
        payload: vec![n],
        traceparent: None,
    };
    OUTBOX
        .enqueue(&mut tx, &[message(1), message(2)])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(OUTBOX.depth(&pool).await.unwrap(), 2);
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM newservice._outbox_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        applied,
        vec![1, 2],
        "the table, then its parked messages, once each"
    );
    let parked: bool =
        sqlx::query_scalar("SELECT to_regclass('newservice.outbox_parked') IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(parked);
}
