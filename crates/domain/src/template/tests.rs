use super::*;
use crate::sms::Encoding;

const SHIPPED_NAMES: [&str; 6] = [
    "lembrete_vencimento",
    "vence_hoje",
    "aviso_atraso",
    "aviso_atraso_firme",
    "aviso_previo_negativacao",
    "agradecimento",
];

#[test]
fn every_shipped_template_renders_on_every_channel_and_locale() {
    for locale in LOCALES {
        for name in SHIPPED_NAMES {
            let cmd = sample_message(name, locale, SmsOptions::default());
            for channel in Channel::ALL {
                assert!(
                    exists(name, channel, locale, None),
                    "{locale}/{name}/{channel:?}"
                );
                let r = render(&cmd, channel, &Links::default())
                    .unwrap_or_else(|e| panic!("{locale}/{name}: {e}"));
                let all = format!(
                    "{} {} {:?}",
                    r.subject.clone().unwrap_or_default(),
                    r.text,
                    r.whatsapp
                );
                assert!(all.contains("Maria"), "{locale}/{name}/{channel:?}: {all}");
                assert!(
                    all.contains("Companhia Exemplo"),
                    "{locale}/{name}/{channel:?}: {all}"
                );
                let amount = if locale == "pt-BR" {
                    "R$ 12.345,67"
                } else {
                    "R$12,345.67"
                };
                assert!(all.contains(amount), "{locale}/{name}/{channel:?}: {all}");
            }
        }
    }
}

#[test]
fn shipped_texts_pass_their_own_lint_and_fit_three_segments() {
    let shipped = shipped().unwrap();
    for (locale, file) in &shipped.files {
        for (name, t) in &file.templates {
            assert_eq!(lint(t), Vec::new(), "{locale}/{name}");
            let cmd = sample_message(name, locale, SmsOptions::default());
            let r = render(&cmd, Channel::Sms, &Links::default()).unwrap();
            assert!(
                r.segments.unwrap().count <= 3,
                "{locale}/{name}: {}",
                r.text
            );
        }
    }
}

#[test]
fn email_carries_the_invoices_payment_data_creditor_identity_and_unsubscribe_link() {
    let mut cmd = sample_message("aviso_atraso", "pt-BR", SmsOptions::default());
    cmd.recipient.name = "Zé <b>Silva</b>".into();
    let links = Links {
        unsubscribe_url: Some("https://regua.example/u/abc".into()),
    };
    let r = render(&cmd, Channel::Email, &links).unwrap();
    let subject = r.subject.unwrap();
    assert_eq!(
        subject,
        "Não identificamos o pagamento da fatura vencida em 10/12/2026"
    );
    assert!(r.text.starts_with("Olá, Zé."), "{}", r.text);
    assert!(
        r.text
            .contains("NF-2026-000123: R$ 12.345,67, Vencimento 10/12/2026"),
        "{}",
        r.text
    );
    assert!(r.text.contains("CNPJ 11.222.333/0001-81"), "{}", r.text);
    assert!(r.text.contains("https://pay.example.com/i/AbCdEf123456"));
    assert!(
        r.text
            .contains("Descadastre-se: https://regua.example/u/abc")
    );
    let html = r.html.unwrap();
    assert!(html.contains("CNPJ 11.222.333&#x2f;0001-81"), "{html}");
    assert!(
        html.contains("https:&#x2f;&#x2f;regua.example&#x2f;u&#x2f;abc"),
        "{html}"
    );
    // Names are escaped in HTML.
    cmd.recipient.name = "<script>x</script> Silva".into();
    let r = render(&cmd, Channel::Email, &links).unwrap();
    assert!(!r.html.unwrap().contains("<script>"));
}

#[test]
fn thanks_has_no_payment_data() {
    let mut cmd = sample_message("agradecimento", "pt-BR", SmsOptions::default());
    cmd.kind = MessageKind::Thanks;
    let r = render(&cmd, Channel::Email, &Links::default()).unwrap();
    assert!(!r.text.contains("Pagar on-line"), "{}", r.text);
    assert!(r.text.contains("Obrigado"));
}

#[test]
fn whatsapp_fills_the_approved_template() {
    let cmd = sample_message("vence_hoje", "pt-BR", SmsOptions::default());
    let r = render(&cmd, Channel::Whatsapp, &Links::default()).unwrap();
    let w = r.whatsapp.unwrap();
    assert_eq!(w.name, "regua_vence_hoje");
    assert_eq!(w.language, "pt_BR");
    assert_eq!(
        w.params,
        vec![
            "Maria",
            "R$ 12.345,67",
            "10/12/2026",
            "Companhia Exemplo de Serviços Ltda"
        ]
    );
}

#[test]
fn transliteration_turns_ucs2_into_gsm7_and_fewer_segments() {
    let plain = sample_message("aviso_previo_negativacao", "pt-BR", SmsOptions::default());
    let r = render(&plain, Channel::Sms, &Links::default()).unwrap();
    let before = r.segments.unwrap();
    assert_eq!(before.encoding, Encoding::Ucs2);
    let cheap = sample_message(
        "aviso_previo_negativacao",
        "pt-BR",
        SmsOptions {
            max_segments: 3,
            transliterate: true,
        },
    );
    let r = render(&cheap, Channel::Sms, &Links::default()).unwrap();
    let after = r.segments.unwrap();
    assert_eq!(after.encoding, Encoding::Gsm7);
    assert!(after.count < before.count, "{before:?} -> {after:?}");
    assert!(r.text.contains("Servicos"), "{}", r.text);
}

#[test]
fn overrides_replace_one_channel_and_unknown_locales_fall_back() {
    let mut cmd = sample_message("lembrete_vencimento", "es-AR", SmsOptions::default());
    cmd.templates = Some(ChannelTemplates {
        sms: Some(
            "{{ creditor.legal_name }}: {{ name }} deve {{ total }} até {{ due_date }}".into(),
        ),
        ..Default::default()
    });
    let r = render(&cmd, Channel::Sms, &Links::default()).unwrap();
    assert_eq!(
        r.text,
        "Companhia Exemplo de Serviços Ltda: Maria Aparecida dos Santos deve R$ 12.345,67 até 10/12/2026"
    );
    // E-mail is not overridden: the shipped pt-BR text.
    let r = render(&cmd, Channel::Email, &Links::default()).unwrap();
    assert!(r.subject.unwrap().starts_with("Lembrete"));
    assert_eq!(locale_of("en"), "en-US");
    assert_eq!(locale_of("pt_br"), "pt-BR");
}

#[test]
fn missing_templates_are_named() {
    let cmd = sample_message("nao_existe", "pt-BR", SmsOptions::default());
    let e = render(&cmd, Channel::Sms, &Links::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "template `nao_existe` has no sms text for pt-BR"
    );
}

#[test]
fn lint_reports_missing_creditor_missing_variables_unknown_variables_and_syntax() {
    let t = ChannelTemplates {
        sms: Some("Oi {{ first_name }}, pague {{ total }} ate {{ due_date }}".into()),
        email: Some(EmailTemplate {
            subject: "Fatura {{ valor }}".into(),
            body: "{% if %}".into(),
        }),
        whatsapp: Some(WhatsappTemplate {
            name: "x".into(),
            params: vec!["{{ creditor.legal_name }}".into()],
        }),
    };
    let issues = lint(&t);
    let codes: Vec<(&str, &str)> = issues.iter().map(|i| (i.field.as_str(), i.code)).collect();
    assert!(codes.contains(&("sms", "missing_creditor")), "{issues:?}");
    assert!(
        codes.contains(&("email.subject", "unknown_variable")),
        "{issues:?}"
    );
    assert!(
        codes.contains(&("email.body", "template_syntax")),
        "{issues:?}"
    );
    assert!(
        codes.contains(&("whatsapp", "missing_variable")),
        "{issues:?}"
    );
    assert!(
        !codes.contains(&("whatsapp", "missing_creditor")),
        "{issues:?}"
    );
}

#[test]
fn messages_state_what_is_owed_today_with_fine_interest_and_payments() {
    use crate::charges::AmountDue;
    let mut cmd = sample_message("aviso_atraso", "pt-BR", SmsOptions::default());
    let principal = cmd.invoices[0].amount_cents;
    let due = AmountDue {
        on: cmd.invoices[0].due_date + chrono::TimeDelta::days(5),
        principal_cents: principal,
        fine_cents: 200,
        interest_cents: 27,
        paid_cents: 5_000,
        balance_cents: principal + 227 - 5_000,
        days_late: 5,
    };
    cmd.invoices[0].due = Some(due.clone());
    let links = Links::default();
    let email = render(&cmd, Channel::Email, &links).unwrap();
    let balance = format_amount(due.balance_cents, "BRL", "pt-BR");
    assert!(email.text.contains(&balance), "{}", email.text);
    for part in [
        "Valor original",
        "multa R$ 2,00",
        "juros R$ 0,27",
        "já pago R$ 50,00",
    ] {
        assert!(email.text.contains(part), "{part} in {}", email.text);
        assert!(
            email.html.as_deref().unwrap().contains(part),
            "{part} in the html"
        );
    }
    // The short channels state the balance itself.
    let sms = render(&cmd, Channel::Sms, &links).unwrap();
    assert!(sms.text.contains(&balance), "{}", sms.text);
    assert!(!sms.text.contains(&format_amount(principal, "BRL", "pt-BR")));
}

#[test]
fn the_thank_you_states_what_was_paid() {
    use crate::charges::AmountDue;
    let mut cmd = sample_message("agradecimento", "pt-BR", SmsOptions::default());
    cmd.kind = MessageKind::Thanks;
    let principal = cmd.invoices[0].amount_cents;
    cmd.invoices[0].due = Some(AmountDue {
        on: cmd.invoices[0].due_date,
        principal_cents: principal,
        fine_cents: 0,
        interest_cents: 0,
        paid_cents: principal + 450,
        balance_cents: 0,
        days_late: 3,
    });
    let sms = render(&cmd, Channel::Sms, &Links::default()).unwrap();
    assert!(
        sms.text
            .contains(&format_amount(principal + 450, "BRL", "pt-BR")),
        "{}",
        sms.text
    );
}
