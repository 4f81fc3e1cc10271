//! Intake on a real nats-server child process and a fresh Postgres database per test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{ADMIN, Harness};
use regua_contract::subjects;
use regua_testkit::invoice;
use serde_json::{Value, json};
use sqlx::PgPool;

const SUBJ: &str = "regua.v1.in.acme.invoice.upsert";
const CANCEL: &str = "regua.v1.in.acme.invoice.cancel";

fn codes(detail: &Value) -> Vec<String> {
    detail["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["code"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[sqlx::test(migrations = false)]
async fn the_same_msg_id_twice_is_stored_once(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.tenant("acme").await;
    let body = invoice("NF-1", 1);
    assert!(!h.publish_json(SUBJ, "m-1", &body).await);
    // Within the window JetStream itself drops the repeat.
    assert!(h.publish_json(SUBJ, "m-1", &body).await);
    assert_eq!(h.outcome("acme", "m-1").await.0, "accepted");

    // Beyond the window (shrunk here) the repeat reaches intake, which knows the id.
    let mut cfg =
        h.js.get_stream(subjects::STREAM_INBOUND)
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
    cfg.duplicate_window = Duration::from_millis(200);
    h.js.update_stream(cfg).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!h.publish_json(SUBJ, "m-1", &body).await);
    let seq_two = h.count("SELECT count(*) FROM intake.messages").await;
    regua_testkit::eventually(
        "the repeat to be consumed",
        Duration::from_secs(10),
        || async {
            let info =
                h.js.get_stream(subjects::STREAM_INBOUND)
                    .await
                    .unwrap()
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                        subjects::CONSUMER_INTAKE,
                    )
                    .await
                    .unwrap()
                    .info()
                    .await
                    .unwrap()
                    .clone();
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
        },
    )
    .await;
    assert_eq!(seq_two, 1, "one outcome row per message id");
    assert_eq!(h.count("SELECT count(*) FROM intake.invoices").await, 1);
    let opened = h.events("regua.v1.evt.acme.invoice.opened", 1).await;
    assert_eq!(opened.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn the_same_invoice_twice_changes_nothing_the_second_time(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.tenant("acme").await;
    h.publish_json(SUBJ, "a", &invoice("NF-1", 1)).await;
    h.publish_json(SUBJ, "b", &invoice("NF-1", 1)).await;
    // Two workers may take them in either order: one opens, the other is a duplicate.
    let mut outcomes = [
        h.outcome("acme", "a").await.0,
        h.outcome("acme", "b").await.0,
    ];
    outcomes.sort();
    assert_eq!(outcomes, ["accepted", "duplicate"]);
    let mut changed = invoice("NF-1", 1);
    // Written after both outcomes, so it is the newest arrival.
    changed["amount_cents"] = json!(20000);
    h.publish_json(SUBJ, "c", &changed).await;
    assert_eq!(h.outcome("acme", "c").await.0, "accepted");
    let opened = h.events("regua.v1.evt.acme.invoice.opened", 1).await;
    let updated = h.events("regua.v1.evt.acme.invoice.updated", 1).await;
    assert_eq!((opened.len(), updated.len()), (1, 1));
    assert_eq!(updated[0].2["data"]["invoice"]["amount_cents"], 20000);
    // The embedded customer was upserted once: the second and third carried the same one.
    assert_eq!(
        h.events("regua.v1.evt.acme.customer.upserted", 1)
            .await
            .len(),
        1
    );
    // The envelope carries the contract's metadata and its id is the Nats-Msg-Id.
    let (_, msg_id, env) = &opened[0];
    assert_eq!(env["type"], "invoice.opened");
    assert_eq!(env["version"], 1);
    assert_eq!(env["tenant"], "acme");
    assert!(env["causation_id"] == "a" || env["causation_id"] == "b");
    assert_eq!(msg_id.as_deref(), env["id"].as_str());
}

#[sqlx::test(migrations = false)]
async fn revisions_out_of_order_keep_the_newest(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.tenant("acme").await;
    let rev = |r: u64, amount: i64| {
        let mut v = invoice("NF-7", 7);
        v["revision"] = json!(r);
        v["amount_cents"] = json!(amount);
        v
    };
    // Each waits for the previous outcome, so arrival order is the order written.
    for (id, r, amount, expected) in [
        ("r3", 3, 300, "accepted"),
        ("r2", 2, 200, "stale"),
        ("r3-other", 3, 333, "stale"),
        ("r3-same", 3, 300, "duplicate"),
        ("r4", 4, 400, "accepted"),
    ] {
        h.publish_json(SUBJ, id, &rev(r, amount)).await;
        let (o, d) = h.outcome("acme", id).await;
        assert_eq!(o, expected, "{id}");
        if o == "stale" {
            assert!(d["reason"].as_str().unwrap().contains("not newer"), "{d}");
        }
    }
    let (rev_stored, amount): (i64, i64) = sqlx::query_as(
        "SELECT revision, (state->>'amount_cents')::bigint FROM intake.invoices WHERE invoice_id = 'NF-7'",
    )
    .fetch_one(&h.pool)
    .await
    .unwrap();
    assert_eq!((rev_stored, amount), (4, 400));
    let updated = h.events("regua.v1.evt.acme.invoice.updated", 1).await;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0].2["data"]["invoice"]["revision"], 4);
}

#[sqlx::test(migrations = false)]
async fn cancel_before_upsert_leaves_a_tombstone(pool: PgPool) {
    let h = Harness::start(pool).await;
    let key = h.tenant("acme").await;
    h.publish_json(
        CANCEL,
        "c1",
        &json!({"invoice_id": "NF-9", "reason": "sold to another"}),
    )
    .await;
    assert_eq!(h.outcome("acme", "c1").await.0, "accepted");
    h.publish_json(SUBJ, "u1", &invoice("NF-9", 9)).await;
    let (o, d) = h.outcome("acme", "u1").await;
    assert_eq!(o, "stale");
    assert!(d["reason"].as_str().unwrap().contains("canceled"));
    h.publish_json(CANCEL, "c2", &json!({"invoice_id": "NF-9"}))
        .await;
    assert_eq!(h.outcome("acme", "c2").await.0, "duplicate");

    let canceled = h.events("regua.v1.evt.acme.invoice.canceled", 1).await;
    assert_eq!(canceled.len(), 1);
    assert_eq!(canceled[0].2["data"]["was_open"], false);
    assert!(
        h.events("regua.v1.evt.acme.invoice.opened", 0)
            .await
            .is_empty()
    );

    let (status, body) = h.get(&key, "/v1/tenants/acme/invoices/NF-9").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "canceled");
    assert_eq!(body["cancel_reason"], "sold to another");

    // Cancel after open says so.
    h.publish_json(SUBJ, "u2", &invoice("NF-10", 10)).await;
    assert_eq!(h.outcome("acme", "u2").await.0, "accepted");
    h.publish_json(CANCEL, "c3", &json!({"invoice_id": "NF-10"}))
        .await;
    assert_eq!(h.outcome("acme", "c3").await.0, "accepted");
    let canceled = h.events("regua.v1.evt.acme.invoice.canceled", 2).await;
    assert_eq!(canceled[1].2["data"]["was_open"], true);
    // A cancel in a later batch updates the stored row: it keeps the invoice's data.
    let (_, body) = h.get(&key, "/v1/tenants/acme/invoices/NF-10").await;
    assert_eq!(body["status"], "canceled");
    assert_eq!(body["customer_id"], "C-10");
    assert_eq!(body["invoice"]["invoice_id"], "NF-10");
    // A changed customer in a later batch updates its stored row.
    let mut renamed = invoice("NF-11", 10);
    renamed["customer"]["name"] = json!("Cliente Dez");
    h.publish_json(SUBJ, "u3", &renamed).await;
    assert_eq!(h.outcome("acme", "u3").await.0, "accepted");
    let (_, body) = h.get(&key, "/v1/tenants/acme/customers/C-10").await;
    assert_eq!(body["customer"]["name"], "Cliente Dez", "{body}");
}

#[sqlx::test(migrations = false)]
async fn every_rejection_code_is_reported_and_published(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.tenant("acme").await;
    let good = invoice("NF-R", 3);
    let set = |path: &[&str], v: Value| {
        let mut x = good.clone();
        let mut cur = &mut x;
        for p in &path[..path.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[path[path.len() - 1]] = v;
        serde_json::to_vec(&x).unwrap()
    };
    let mut no_customer = good.clone();
    no_customer.as_object_mut().unwrap().remove("customer");
    let reference_to = |id: &str, fine: u32| {
        let mut x = no_customer.clone();
        x["customer_id"] = json!(id);
        x["late_fee"]["fine_bps"] = json!(fine);
        serde_json::to_vec(&x).unwrap()
    };
    // A consumer customer known from an earlier message, for the referenced-fine case.
    h.publish_json(
        "regua.v1.in.acme.customer.upsert",
        "cust",
        &good["customer"],
    )
    .await;
    assert_eq!(h.outcome("acme", "cust").await.0, "accepted");

    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (
            "malformed_json",
            SUBJ,
            b"{\"invoice_id\": ".to_vec(),
            "malformed_json",
        ),
        ("not_an_object", SUBJ, b"[1,2,3]".to_vec(), "not_an_object"),
        (
            "payload_too_large",
            SUBJ,
            vec![b' '; 70 * 1024],
            "payload_too_large",
        ),
        (
            "unknown_subject",
            "regua.v1.in.acme.invoice.delete",
            serde_json::to_vec(&good).unwrap(),
            "unknown_subject",
        ),
        (
            "unknown_tenant",
            "regua.v1.in.nobody.invoice.upsert",
            serde_json::to_vec(&good).unwrap(),
            "unknown_tenant",
        ),
        (
            "missing_field",
            SUBJ,
            {
                let mut x = good.clone();
                x.as_object_mut().unwrap().remove("due_date");
                serde_json::to_vec(&x).unwrap()
            },
            "missing_field",
        ),
        (
            "invalid_type",
            SUBJ,
            set(&["amount_cents"], json!("15990")),
            "invalid_type",
        ),
        (
            "invalid_value",
            SUBJ,
            set(&["invoice_id"], json!("has space")),
            "invalid_value",
        ),
        (
            "invalid_cpf",
            SUBJ,
            set(&["customer", "document"], json!("529.982.247-26")),
            "invalid_cpf",
        ),
        (
            "invalid_cnpj",
            SUBJ,
            set(&["customer", "document"], json!("11.222.333/0001-80")),
            "invalid_cnpj",
        ),
        (
            "invalid_document",
            SUBJ,
            set(&["customer", "document"], json!("123")),
            "invalid_document",
        ),
        (
            "invalid_phone",
            SUBJ,
            set(&["customer", "phone"], json!("987654321")),
            "invalid_phone",
        ),
        (
            "invalid_email",
            SUBJ,
            set(&["customer", "email"], json!("not-an-email")),
            "invalid_email",
        ),
        (
            "invalid_currency",
            SUBJ,
            set(&["currency"], json!("XYZ")),
            "invalid_currency",
        ),
        (
            "invalid_date",
            SUBJ,
            set(&["due_date"], json!("2026-02-31")),
            "invalid_date",
        ),
        (
            "invalid_timezone",
            SUBJ,
            set(&["customer", "timezone"], json!("Mars/Olympus")),
            "invalid_timezone",
        ),
        (
            "amount_not_positive",
            SUBJ,
            set(&["amount_cents"], json!(-100)),
            "amount_not_positive",
        ),
        (
            "due_before_issue",
            SUBJ,
            set(&["due_date"], json!("2026-10-01")),
            "due_before_issue",
        ),
        (
            "fine_above_legal_limit",
            SUBJ,
            set(&["late_fee", "fine_bps"], json!(500)),
            "fine_above_legal_limit",
        ),
        (
            "fine_on_referenced_consumer",
            SUBJ,
            reference_to("C-3", 500),
            "fine_above_legal_limit",
        ),
        (
            "unknown_customer",
            SUBJ,
            reference_to("C-404", 100),
            "unknown_customer",
        ),
        (
            "customer_conflict",
            SUBJ,
            set(&["customer_id"], json!("C-other")),
            "customer_conflict",
        ),
    ];
    for (id, subject, body, _) in &cases {
        h.publish(subject, Some(id), body).await;
    }
    for (id, subject, _, code) in &cases {
        let tenant = subjects::parse_inbound(subject).unwrap().tenant;
        let (outcome, detail) = h.outcome(tenant, id).await;
        assert_eq!(outcome, "rejected", "{id}");
        assert!(
            codes(&detail).contains(&code.to_string()),
            "{id}: expected {code}, got {detail}"
        );
    }
    let mut rejected = h
        .events("regua.v1.evt.*.intake.rejected", cases.len())
        .await;
    assert_eq!(rejected.len(), cases.len());
    rejected.retain(|(_, _, e)| e["data"]["message_id"] == "payload_too_large");
    let data = &rejected[0].2["data"];
    assert_eq!(data["source_subject"], SUBJ);
    assert_eq!(data["payload_truncated"], true);
    assert_eq!(data["payload"].as_str().unwrap().len(), 4096);
    assert!(data["stream_sequence"].as_u64().is_some());
    // The unknown tenant's rejection is published under its own token.
    assert_eq!(
        h.events("regua.v1.evt.nobody.intake.rejected", 1)
            .await
            .len(),
        1
    );
    // Nothing was stored for any of them.
    assert_eq!(h.count("SELECT count(*) FROM intake.invoices").await, 0);
}

#[sqlx::test(migrations = false)]
async fn unknown_fields_are_accepted_with_warnings(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.tenant("acme").await;
    let mut body = invoice("NF-W", 4);
    body["colour"] = json!("red");
    h.publish_json(SUBJ, "w", &body).await;
    let (o, d) = h.outcome("acme", "w").await;
    assert_eq!(o, "accepted");
    assert_eq!(d["warnings"][0]["field"], "colour");
    assert_eq!(d["warnings"][0]["code"], "unknown_field");
}

#[sqlx::test(migrations = false)]
async fn http_single_batch_and_reads(pool: PgPool) {
    let h = Harness::start(pool).await;
    let key = h.tenant("acme").await;
    let other = h.tenant("beta").await;
    let url = |p: &str| format!("{}{p}", h.base);

    // Single: 202 with the real outcome, then 422 with field errors.
    let r = h
        .http
        .post(url("/v1/tenants/acme/invoices"))
        .bearer_auth(&key)
        .json(&invoice("NF-H1", 11))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["outcome"], "accepted");
    let mut bad = invoice("NF-H2", 12);
    bad["amount_cents"] = json!(-1);
    bad["customer"]["document"] = json!("111.111.111-11");
    let r = h
        .http
        .post(url("/v1/tenants/acme/invoices"))
        .bearer_auth(&key)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let p: Value = r.json().await.unwrap();
    assert_eq!(codes(&p).len(), 2, "{p}");
    // A stateful rejection (unknown customer) comes back as 422 too.
    let mut unknown = invoice("NF-H3", 13);
    unknown.as_object_mut().unwrap().remove("customer");
    unknown["customer_id"] = json!("C-nobody");
    let r = h
        .http
        .post(url("/v1/tenants/acme/invoices"))
        .bearer_auth(&key)
        .json(&unknown)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        codes(&r.json::<Value>().await.unwrap()),
        ["unknown_customer"]
    );

    // Idempotency-Key makes a retry a duplicate.
    for expected in ["accepted", "duplicate"] {
        let r = h
            .http
            .post(url("/v1/tenants/acme/invoices"))
            .bearer_auth(&key)
            .header("Idempotency-Key", "erp-77")
            .json(&invoice("NF-H4", 14))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        assert_eq!(r.json::<Value>().await.unwrap()["outcome"], expected);
    }

    // Batch: a result per item, in order.
    let mut items = vec![
        invoice("NF-B1", 21),
        invoice("NF-B2", 22),
        invoice("NF-B3", 23),
    ];
    let mut b = invoice("NF-B4", 24);
    b["due_date"] = json!("2020-01-01");
    items.insert(1, b);
    items.push(json!("not an object"));
    let r = h
        .http
        .post(url("/v1/tenants/acme/invoices:batch"))
        .bearer_auth(&key)
        .json(&json!({"invoices": items}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    let outcomes: Vec<&str> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["accepted", "rejected", "accepted", "accepted", "rejected"]
    );
    assert_eq!(body["results"][1]["errors"][0]["code"], "due_before_issue");
    assert_eq!(body["results"][1]["invoice_id"], "NF-B4");
    assert_eq!(body["summary"]["accepted"], 3);
    let too_many: Vec<Value> = (0..1001).map(|i| invoice(&format!("X{i}"), i)).collect();
    let r = h
        .http
        .post(url("/v1/tenants/acme/invoices:batch"))
        .bearer_auth(&key)
        .json(&json!({"invoices": too_many}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    // Reads, and tenant isolation.
    let r = h
        .http
        .get(url("/v1/tenants/acme/invoices/NF-B3"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let inv: Value = r.json().await.unwrap();
    assert_eq!(inv["status"], "open");
    assert_eq!(inv["invoice"]["debtor_kind"], "cpf");
    let r = h
        .http
        .get(url("/v1/tenants/acme/customers/C-23"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["customer"]["timezone"],
        "America/Sao_Paulo"
    );
    let r = h
        .http
        .get(url("/v1/tenants/acme/invoices/NF-B3"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h
        .http
        .get(url("/v1/tenants/acme/invoices/NF-B3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .http
        .get(url("/v1/tenants/acme/invoices/NF-none"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = h
        .http
        .get(url("/v1/tenants/acme/messages/erp-77"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "accepted");

    // Tenant administration.
    let r = h
        .http
        .post(url("/v1/tenants"))
        .bearer_auth("wrong-token-000000000")
        .json(&regua_testkit::tenant("gamma"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = h
        .http
        .post(url("/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&regua_testkit::tenant("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = h
        .http
        .post(url("/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"id": "Bad.Id", "cnpj": "123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let fields: Vec<String> = r.json::<Value>().await.unwrap()["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    for f in ["id", "legal_name", "cnpj", "address", "contact"] {
        assert!(fields.contains(&f.to_owned()), "{f} in {fields:?}");
    }
    assert_eq!(h.events("regua.v1.evt.*.tenant.created", 2).await.len(), 2);

    // The contract documents.
    let api: Value = h
        .http
        .get(url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["openapi"], "3.1.0");
    assert!(api["paths"]["/v1/tenants/{tenant}/invoices:batch"].is_object());
    assert!(api["paths"]["/v1/tenants/{tenant}/payments"]["post"].is_object());
    assert!(api["components"]["schemas"]["PaymentReceived"].is_object());
    assert_eq!(
        h.http.get(url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        h.http.get(url("/readyz")).send().await.unwrap().status(),
        200
    );
}

#[sqlx::test(migrations = false)]
async fn a_poison_message_is_dead_lettered_and_does_not_block(pool: PgPool) {
    let h = Harness::start_with(pool, common::config(3)).await;
    h.tenant("acme").await;
    // A fault only this invoice triggers: the database refuses it, every time.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.invoice_id = 'POISON' THEN RAISE EXCEPTION 'poison invoice refused'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON intake.invoices FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
    )
    .execute(&h.pool)
    .await
    .unwrap();
    h.publish_json(SUBJ, "before", &invoice("NF-A", 1)).await;
    h.publish_json(SUBJ, "poison", &invoice("POISON", 2)).await;
    h.publish_json(SUBJ, "after", &invoice("NF-B", 3)).await;
    assert_eq!(h.outcome("acme", "before").await.0, "accepted");
    assert_eq!(h.outcome("acme", "after").await.0, "accepted");
    let dlq = regua_testkit::eventually("the dead letter", Duration::from_secs(30), || async {
        let d = regua_testkit::read_stream(&h.js, subjects::STREAM_DEAD_LETTER, ">").await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].0, "regua.v1.dlq.intake.acme");
    assert_eq!(dlq[0].2["invoice_id"], "POISON");
    let stream = h.js.get_stream(subjects::STREAM_DEAD_LETTER).await.unwrap();
    let raw = stream
        .get_last_raw_message_by_subject("regua.v1.dlq.intake.acme")
        .await
        .unwrap();
    let reason = raw
        .headers
        .get(subjects::HEADER_DLQ_REASON)
        .unwrap()
        .as_str()
        .to_owned();
    assert!(
        reason.contains("after 3 deliveries") && reason.contains("poison invoice refused"),
        "{reason}"
    );
    assert_eq!(
        raw.headers
            .get(subjects::HEADER_DLQ_SUBJECT)
            .unwrap()
            .as_str(),
        SUBJ
    );
    // No outcome row: the dead letter is its outcome, and the invoice was not stored.
    assert_eq!(
        h.count("SELECT count(*) FROM intake.messages WHERE message_id = 'poison'")
            .await,
        0
    );
    assert_eq!(h.count("SELECT count(*) FROM intake.invoices").await, 2);
}

#[sqlx::test(migrations = false)]
async fn random_and_mutated_messages_each_get_one_outcome(pool: PgPool) {
    use rand::{Rng, SeedableRng};
    let h = Harness::start(pool).await;
    h.tenant("acme").await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let n = 300;
    for i in 0..n {
        let body: Vec<u8> = match i % 3 {
            0 => (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect(),
            1 => {
                let mut v = invoice(&format!("M-{i}"), i);
                let keys: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
                let k = &keys[rng.random_range(0..keys.len())];
                v[k] = match rng.random_range(0..4) {
                    0 => Value::Null,
                    1 => json!(rng.random::<i64>()),
                    2 => json!("🙂\u{0007}"),
                    _ => json!({"nested": [1, 2]}),
                };
                serde_json::to_vec(&v).unwrap()
            }
            _ => serde_json::to_vec(&invoice(&format!("M-{i}"), i)).unwrap(),
        };
        h.publish(SUBJ, Some(&format!("rnd-{i}")), &body).await;
    }
    regua_testkit::eventually(
        "every message's outcome",
        Duration::from_secs(60),
        || async {
            let c = h
                .count("SELECT count(*) FROM intake.messages WHERE message_id LIKE 'rnd-%'")
                .await;
            (c == i64::try_from(n).unwrap()).then_some(())
        },
    )
    .await;
    let by: Vec<(String, i64)> =
        sqlx::query_as("SELECT outcome, count(*) FROM intake.messages GROUP BY 1 ORDER BY 1")
            .fetch_all(&h.pool)
            .await
            .unwrap();
    let rejected = by
        .iter()
        .find(|(o, _)| o == "rejected")
        .map_or(0, |(_, c)| *c);
    let accepted = by
        .iter()
        .find(|(o, _)| o == "accepted")
        .map_or(0, |(_, c)| *c);
    assert!(rejected >= 100 && accepted >= 100, "{by:?}");
    assert_eq!(
        h.events(
            "regua.v1.evt.acme.intake.rejected",
            usize::try_from(rejected).unwrap()
        )
        .await
        .len(),
        usize::try_from(rejected).unwrap()
    );
}

#[sqlx::test(migrations = false)]
async fn an_upsert_and_a_cancel_in_one_batch_keep_the_invoice_data(pool: PgPool) {
    use regua_contract::InboundKind;
    use regua_contract::decode::decode;
    use regua_intake::store::{Inbound, Outcome, apply_batch};

    let h = Harness::start(pool).await;
    h.tenant("acme").await;
    let item = |id: &str, seq: u64, subject: &str, kind: InboundKind, body: Value| {
        let payload = serde_json::to_vec(&body).unwrap();
        Inbound {
            tenant: "acme".into(),
            message_id: id.into(),
            subject: subject.into(),
            stream_seq: Some(seq),
            decoded: decode(kind, &payload),
            payload: payload.into(),
            traceparent: None,
        }
    };
    let items = [
        item("u", 1, SUBJ, InboundKind::InvoiceUpsert, invoice("NF-B", 5)),
        item(
            "c",
            2,
            CANCEL,
            InboundKind::InvoiceCancel,
            json!({"invoice_id": "NF-B", "reason": "duplicate bill"}),
        ),
    ];
    let intake = h.intake.as_ref().unwrap();
    let applied = apply_batch(&h.pool, &intake.tenants, intake.clock.now(), &items)
        .await
        .unwrap();
    assert_eq!(
        applied.iter().map(|a| a.outcome).collect::<Vec<_>>(),
        [Outcome::Accepted, Outcome::Accepted]
    );
    let stored = regua_intake::store::get_invoice(&h.pool, "acme", "NF-B")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, "canceled");
    assert_eq!(stored.customer_id.as_deref(), Some("C-5"));
    assert_eq!(stored.invoice.unwrap()["amount_cents"], 15990);
}

/// An `Idempotency-Key` is the caller's within its tenant: JetStream's duplicate window
/// spans every tenant's messages, and one tenant's key must not drop another's message.
#[sqlx::test(migrations = false)]
async fn idempotency_keys_are_scoped_by_tenant(pool: PgPool) {
    let h = Harness::start(pool).await;
    let keys = [
        ("alfa", h.tenant("alfa").await),
        ("beta", h.tenant("beta").await),
    ];
    let post = |tenant: &str, key: &str, idempotency: &str| {
        h.http
            .post(format!("{}/v1/tenants/{tenant}/invoices", h.base))
            .bearer_auth(key)
            .header("Idempotency-Key", idempotency)
            .json(&invoice("NF-1", 1))
            .send()
    };
    for (tenant, key) in &keys {
        let r = post(tenant, key, "erp-1").await.unwrap();
        assert_eq!(r.status(), 202, "{tenant}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["outcome"], "accepted", "{tenant}: {body}");
        assert_eq!(body["message_id"], "erp-1");
    }
    // Within a tenant, a retry is still a duplicate, and the outcome is read by the key.
    let (tenant, key) = (&keys[0].0, &keys[0].1);
    let r = post(tenant, key, "erp-1").await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "duplicate");
    let r = h
        .http
        .get(format!("{}/v1/tenants/beta/messages/erp-1", h.base))
        .bearer_auth(&keys[1].1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["outcome"], "accepted");
    // A key that cannot be one is refused, never silently ignored.
    let r = post(tenant, key, &"k".repeat(201)).await.unwrap();
    assert_eq!(r.status(), 422);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["errors"][0]["field"], "Idempotency-Key", "{p}");
}

/// A message id is at most 200 bytes however it comes (an HTTP `Idempotency-Key`, a
/// `Regua-Message-Id` or a `Nats-Msg-Id`): a longer one is rejected, with the reason,
/// under the stream sequence instead (never stored or logged whole), and the message
/// after it is accepted.
#[sqlx::test(migrations = false)]
async fn an_over_long_message_id_is_rejected_and_blocks_nothing(pool: PgPool) {
    let h = Harness::start(pool).await;
    h.tenant("acme").await;
    let long = "x".repeat(subjects::MAX_MESSAGE_ID_BYTES + 1);
    h.publish_json(SUBJ, &long, &invoice("NF-1", 1)).await;
    h.publish_json(SUBJ, "m-2", &invoice("NF-2", 2)).await;
    assert_eq!(h.outcome("acme", "m-2").await.0, "accepted");
    let (outcome, detail) = h.outcome("acme", "seq-1").await;
    assert_eq!(outcome, "rejected");
    assert!(detail.to_string().contains("the message id"), "{detail}");
    let longest: i32 = sqlx::query_scalar("SELECT max(length(message_id)) FROM intake.messages")
        .fetch_one(&h.pool)
        .await
        .unwrap();
    assert!(longest <= subjects::MAX_MESSAGE_ID_BYTES as i32);
}

/// A tenant rotates its API key: the new one works at once, the old one until the
/// grace it chose ends (here at once: grace 0); a revoked key stops at once; the last
/// working key cannot be revoked; no listing shows a key; another tenant's key never
/// opens these routes.
#[sqlx::test(migrations = false)]
async fn api_keys_rotate_with_a_grace_and_revoke_at_once(pool: PgPool) {
    let h = Harness::start(pool).await;
    let first = h.tenant("acme").await;
    let other = h.tenant("beta").await;
    let keys = "/v1/tenants/acme/keys";
    let post = |key: &str, body: Value| {
        h.http
            .post(format!("{}/v1/tenants/acme/keys:rotate", h.base))
            .bearer_auth(key.to_owned())
            .json(&body)
            .send()
    };
    assert_eq!(post(&other, json!({})).await.unwrap().status(), 404);
    let r = post(&first, json!({"grace_seconds": 3600})).await.unwrap();
    assert_eq!(r.status(), 201);
    let rotated: Value = r.json().await.unwrap();
    let second = rotated["api_key"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    // Both work during the grace.
    assert_eq!(h.get(&first, keys).await.0, 200);
    let (status, listed) = h.get(&second, keys).await;
    assert_eq!(status, 200);
    let listed = listed["keys"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|k| k["active"] == true));
    assert!(
        listed[0]["expires_at"].is_string(),
        "the old key has an end"
    );
    assert!(
        !listed.iter().any(|k| k.to_string().contains(&first)),
        "no key is ever shown"
    );
    // A rotation with no grace ends the others at once.
    let r = post(&second, json!({"grace_seconds": 0})).await.unwrap();
    assert_eq!(r.status(), 201);
    let third = r.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(h.get(&first, keys).await.0, 401);
    assert_eq!(h.get(&second, keys).await.0, 401);
    let (_, listed) = h.get(&third, keys).await;
    let active: Vec<&Value> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["active"] == true)
        .collect();
    assert_eq!(active.len(), 1);
    let id = active[0]["key_id"].as_str().unwrap();
    // The last working key cannot be revoked; a revoked key stops at once.
    let delete = |key: &str, id: &str| {
        h.http
            .delete(format!("{}/v1/tenants/acme/keys/{id}", h.base))
            .bearer_auth(key.to_owned())
            .send()
    };
    assert_eq!(delete(&third, id).await.unwrap().status(), 409);
    let r = post(&third, json!({"grace_seconds": 3600})).await.unwrap();
    let fourth = r.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(delete(&fourth, id).await.unwrap().status(), 204);
    assert_eq!(h.get(&third, keys).await.0, 401, "revoked within its grace");
    assert_eq!(h.get(&fourth, keys).await.0, 200);
    let bad = post(&fourth, json!({"grace_seconds": -1})).await.unwrap();
    assert_eq!(bad.status(), 422);
}
