use super::*;
use crate::proto::Examples;
use proptest::prelude::*;
use serde_json::json;

fn example() -> Value {
    serde_json::to_value(Examples::new().invoice_upsert()).unwrap()
}

fn codes(kind: InboundKind, v: &Value) -> Vec<RejectCode> {
    decode_value(kind, v)
        .issues
        .errors
        .iter()
        .map(|e| e.code)
        .collect()
}

fn with(mut v: Value, path: &[&str], new: Value) -> Value {
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = &mut cur[*p];
    }
    cur.as_object_mut()
        .unwrap()
        .insert(path[path.len() - 1].to_owned(), new);
    v
}

fn without(mut v: Value, field: &str) -> Value {
    v.as_object_mut().unwrap().remove(field);
    v
}

#[test]
fn the_example_is_accepted_with_normalised_values() {
    let d = decode_value(InboundKind::InvoiceUpsert, &example());
    assert!(d.issues.errors.is_empty(), "{:?}", d.issues);
    let Some(Command::UpsertInvoice(i)) = d.command else {
        panic!("not an invoice")
    };
    assert_eq!(i.amount_cents, 15990);
    let CustomerSource::Embedded(c) = &i.customer else {
        panic!("not embedded")
    };
    assert_eq!(c.document.as_ref().unwrap().as_str(), "52998224725");
}

#[test]
fn each_bad_field_gets_its_own_code() {
    let ex = example();
    let cases: Vec<(Value, RejectCode)> = vec![
        (without(ex.clone(), "invoice_id"), RejectCode::MissingField),
        (
            with(ex.clone(), &["amount_cents"], json!("159.90")),
            RejectCode::InvalidType,
        ),
        (
            with(ex.clone(), &["amount_cents"], json!(159.9)),
            RejectCode::InvalidType,
        ),
        (
            with(ex.clone(), &["amount_cents"], json!(-5)),
            RejectCode::AmountNotPositive,
        ),
        (
            with(ex.clone(), &["amount_cents"], json!(0)),
            RejectCode::AmountNotPositive,
        ),
        (
            with(ex.clone(), &["currency"], json!("REAL")),
            RejectCode::InvalidCurrency,
        ),
        (
            with(ex.clone(), &["currency"], json!("brl")),
            RejectCode::InvalidCurrency,
        ),
        (
            with(ex.clone(), &["due_date"], json!("2026-02-30")),
            RejectCode::InvalidDate,
        ),
        (
            with(ex.clone(), &["issued_on"], json!("01/11/2026")),
            RejectCode::InvalidDate,
        ),
        (
            with(ex.clone(), &["due_date"], json!("2026-10-01")),
            RejectCode::DueBeforeIssue,
        ),
        (
            with(
                ex.clone(),
                &["customer", "document"],
                json!("529.982.247-26"),
            ),
            RejectCode::InvalidCpf,
        ),
        (
            with(
                ex.clone(),
                &["customer", "document"],
                json!("11.222.333/0001-82"),
            ),
            RejectCode::InvalidCnpj,
        ),
        (
            with(ex.clone(), &["customer", "document"], json!("1234")),
            RejectCode::InvalidDocument,
        ),
        (
            with(ex.clone(), &["customer", "phone"], json!("11 98765-4321")),
            RejectCode::InvalidPhone,
        ),
        (
            with(ex.clone(), &["customer", "email"], json!("maria@")),
            RejectCode::InvalidEmail,
        ),
        (
            with(
                ex.clone(),
                &["customer", "timezone"],
                json!("America/Recife_X"),
            ),
            RejectCode::InvalidTimezone,
        ),
        (
            with(ex.clone(), &["late_fee", "fine_bps"], json!(1000)),
            RejectCode::FineAboveLegalLimit,
        ),
        (
            with(ex.clone(), &["customer_id"], json!("C-OTHER")),
            RejectCode::CustomerConflict,
        ),
        (
            with(ex.clone(), &["invoice_id"], json!("")),
            RejectCode::InvalidValue,
        ),
        (
            with(ex.clone(), &["revision"], json!(-1)),
            RejectCode::InvalidValue,
        ),
        (
            with(ex.clone(), &["tags"], json!("a,b")),
            RejectCode::InvalidType,
        ),
        (
            without(without(ex.clone(), "customer"), "customer_id"),
            RejectCode::MissingField,
        ),
        (json!([1, 2]), RejectCode::NotAnObject),
    ];
    for (payload, code) in cases {
        let got = codes(InboundKind::InvoiceUpsert, &payload);
        assert!(
            got.contains(&code),
            "expected {code:?}, got {got:?} for {payload}"
        );
    }
}

#[test]
fn a_fine_above_two_percent_is_fine_for_companies() {
    let v = with(
        example(),
        &["customer", "document"],
        json!("11.222.333/0001-81"),
    );
    let v = with(v, &["late_fee", "fine_bps"], json!(1000));
    assert!(codes(InboundKind::InvoiceUpsert, &v).is_empty());
}

#[test]
fn all_problems_are_reported_not_just_the_first() {
    let v = json!({"invoice_id": "X", "amount_cents": -1, "issued_on": "nope", "due_date": "2026-13-01", "customer_id": "C"});
    let got = codes(InboundKind::InvoiceUpsert, &v);
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn unknown_fields_are_warnings() {
    let v = with(example(), &["colour"], json!("red"));
    let v = with(v, &["customer", "nickname"], json!("Mari"));
    let d = decode_value(InboundKind::InvoiceUpsert, &v);
    assert!(d.command.is_some());
    let fields: Vec<&str> = d.issues.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, ["customer.nickname", "colour"]);
}

#[test]
fn malformed_and_oversized_bodies_are_rejected() {
    assert_eq!(
        decode(InboundKind::InvoiceUpsert, b"{\"invoice_id\": ")
            .issues
            .errors[0]
            .code,
        RejectCode::MalformedJson
    );
    let big = vec![b' '; limits::MAX_PAYLOAD_BYTES + 1];
    assert_eq!(
        decode(InboundKind::InvoiceUpsert, &big).issues.errors[0].code,
        RejectCode::PayloadTooLarge
    );
}

#[test]
fn a_bare_customer_reference_is_a_reference() {
    let v = with(example(), &["customer"], json!({"customer_id": "C-9"}));
    let Some(Command::UpsertInvoice(i)) = decode_value(InboundKind::InvoiceUpsert, &v).command
    else {
        panic!("rejected")
    };
    assert_eq!(i.customer, CustomerSource::Reference("C-9".into()));
}

#[test]
fn nul_in_metadata_is_rejected_before_it_reaches_postgres() {
    let v = with(example(), &["metadata"], json!({"k": "a\u{0000}b"}));
    assert!(codes(InboundKind::InvoiceUpsert, &v).contains(&RejectCode::InvalidValue));
}

/// Exactly one outcome: a command, or at least one error, never both or neither.
fn one_outcome(d: &Decoded) -> bool {
    d.command.is_some() != d.issues.is_rejected()
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(json!("2026-12-10")),
        Just(json!("529.982.247-25")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "invoice_id",
    "revision",
    "customer",
    "customer_id",
    "amount_cents",
    "currency",
    "issued_on",
    "due_date",
    "description",
    "payment",
    "late_fee",
    "tags",
    "metadata",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_get_exactly_one_outcome(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        for kind in [InboundKind::InvoiceUpsert, InboundKind::InvoiceCancel, InboundKind::CustomerUpsert] {
            prop_assert!(one_outcome(&decode(kind, &bytes)));
        }
    }

    #[test]
    fn mutated_valid_payloads_get_exactly_one_outcome(
        drop in prop::collection::vec(0usize..FIELDS.len(), 0..3),
        replace in prop::collection::vec((0usize..FIELDS.len(), arb_json()), 0..3),
        replace_customer in prop::collection::vec(("[a-z_]{1,16}", arb_json()), 0..3),
        extra in prop::collection::btree_map("[a-z]{1,10}", arb_json(), 0..2),
    ) {
        let mut v = example();
        let obj = v.as_object_mut().unwrap();
        for i in drop { obj.remove(FIELDS[i]); }
        for (i, val) in replace { obj.insert(FIELDS[i].to_owned(), val); }
        if let Some(Value::Object(c)) = obj.get_mut("customer") {
            for (k, val) in replace_customer { c.insert(k, val); }
        }
        for (k, val) in extra { obj.entry(k).or_insert(val); }
        let bytes = serde_json::to_vec(&v).unwrap();
        let d = decode(InboundKind::InvoiceUpsert, &bytes);
        prop_assert!(one_outcome(&d), "{d:?}");
    }
}

#[test]
fn pix_valor_is_read_exactly_never_through_a_float() {
    assert_eq!(pix_valor("0.01"), Some(1));
    assert_eq!(pix_valor("159.90"), Some(15_990));
    // 0.1 + 0.2 style traps: digits only, exactly.
    assert_eq!(pix_valor("1234567890123.29"), Some(123_456_789_012_329));
    for bad in [
        "1.5", "1", "1.505", "-1.00", "1,50", " 1.50", "01.50", "1e2", ".50", "1.5a", "",
    ] {
        assert_eq!(pix_valor(bad), None, "{bad:?}");
    }
}

#[test]
fn a_payment_is_decoded_field_by_field() {
    let (draft, issues) = decode_payment(
        br#"{"payment_id":"PAY-1","invoice_id":"NF-1","amount_cents":15990,"paid_at":"2026-12-10T14:03:00-03:00","method":"boleto","payer_document":"529.982.247-25","extra":1}"#,
    );
    let d = draft.unwrap();
    assert_eq!(d.amount_cents, 15_990);
    assert_eq!(d.currency.code(), "BRL");
    assert_eq!(d.paid_at.to_rfc3339(), "2026-12-10T17:03:00+00:00");
    assert_eq!(d.payer_document.unwrap().as_str(), "52998224725");
    assert_eq!(issues.warnings[0].field, "extra");

    let (draft, issues) = decode_payment(br#"{"amount_cents":0,"currency":"XXY","method":"pix"}"#);
    assert!(draft.is_none());
    let codes: Vec<(&str, RejectCode)> = issues
        .errors
        .iter()
        .map(|e| (e.field.as_str(), e.code))
        .collect();
    assert_eq!(
        codes,
        [
            ("payment_id", RejectCode::MissingField),
            ("amount_cents", RejectCode::AmountNotPositive),
            ("currency", RejectCode::InvalidCurrency),
            ("paid_at", RejectCode::MissingField),
        ]
    );
}
