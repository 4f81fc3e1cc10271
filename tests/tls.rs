//! TLS to NATS and to Postgres, as a service connects: a nats-server child running the
//! shipped deploy/nats/tls.conf (with certificates made here by openssl) takes a client
//! that trusts its CA and presents a certificate it signed (mutual TLS), and refuses one
//! without a certificate, one that does not trust the server, and a plain one; the
//! database pool speaks TLS when the URL asks for it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::path::{Path, PathBuf};

use regua_platform::config::NatsTls;
use regua_platform::{Config, db, nats};
use regua_testkit::NatsServer;
use sqlx::PgPool;

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, signed by it.
fn certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=regua test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=regua test {name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let mut args = vec![
            "x509".to_owned(),
            "-req".into(),
            "-in".into(),
            format!("{name}.csr"),
            "-CA".into(),
            "ca.crt".into(),
            "-CAkey".into(),
            "ca.key".into(),
            "-CAcreateserial".into(),
            "-days".into(),
            "2".into(),
            "-out".into(),
            format!("{name}.crt"),
        ];
        args.extend(["-extfile".into(), ext.into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        openssl(dir, &args);
    }
}

async fn server(dir: &Path) -> NatsServer {
    let tls = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/nats/tls.conf"
    ))
    .unwrap();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let (cert, key, ca) = (path("server.crt"), path("server.key"), path("ca.crt"));
    NatsServer::with_config(
        "jetstream {}\ninclude ./tls.conf\n",
        &[("tls.conf", &tls)],
        &[
            ("NATS_TLS_CERT", &cert),
            ("NATS_TLS_KEY", &key),
            ("NATS_TLS_CA", &ca),
        ],
    )
    .await
}

fn config(url: &str, tls: Option<NatsTls>) -> Config {
    Config {
        nats_url: url.to_owned(),
        nats_tls: tls,
        ..Config::default()
    }
}

async fn works(config: &Config) -> bool {
    let connect = nats::connect_as(config, "tls-test");
    // (Refused connections show as the stream requests timing out: the client retries
    // its first connect in the background.)
    let Ok(Ok(client)) = tokio::time::timeout(std::time::Duration::from_secs(5), connect).await
    else {
        return false;
    };
    let js = nats::jetstream(client);
    nats::ensure_streams(&js, nats::Streams::Provision { replicas: 1 })
        .await
        .is_ok()
}

#[tokio::test]
async fn nats_takes_only_clients_that_speak_tls_and_trust_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let file = |f: &str| -> PathBuf { dir.path().join(f) };
    let ca_only = NatsTls {
        ca: file("ca.crt"),
        client: None,
    };
    let with_cert = NatsTls {
        ca: file("ca.crt"),
        client: Some((file("client.crt"), file("client.key"))),
    };

    let s = server(dir.path()).await;
    assert!(
        works(&config(&s.url(), Some(with_cert))).await,
        "mutual TLS"
    );
    assert!(
        !works(&config(&s.url(), Some(ca_only))).await,
        "no client certificate, no connection"
    );
    assert!(
        !works(&config(&s.url(), None)).await,
        "plain TCP is refused"
    );
    let other_ca = NatsTls {
        ca: file("client.crt"),
        client: Some((file("client.crt"), file("client.key"))),
    };
    assert!(
        !works(&config(&s.url(), Some(other_ca))).await,
        "a server the CA did not sign is refused"
    );
}

#[sqlx::test(migrations = false)]
async fn postgres_speaks_tls_when_the_url_asks(pool: PgPool) {
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let base = std::env::var("DATABASE_URL").unwrap();
    let base = base.rsplit_once('/').unwrap().0;
    let ssl_on: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        ssl_on, "on",
        "this test needs a Postgres with ssl = on (Debian's default)"
    );
    let tls = db::connect(&format!("{base}/{db}?sslmode=require"), 1)
        .await
        .unwrap();
    let used: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&tls)
        .await
        .unwrap();
    assert!(used, "the connection is encrypted");
}
