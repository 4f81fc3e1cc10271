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
            "Companhia Exemplo de Serviços Ltda",
            "11.222.333/0001-81"
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
    // The legal name alone is not the creditor's identity: the CNPJ is missing.
    let whatsapp: Vec<&str> = issues
        .iter()
        .filter(|i| i.field == "whatsapp" && i.code == "missing_creditor")
        .map(|i| i.message.as_str())
        .collect();
    assert_eq!(whatsapp.len(), 1, "{issues:?}");
    assert!(whatsapp[0].contains("CNPJ"), "{issues:?}");
}

#[test]
fn sms_and_whatsapp_carry_the_creditors_legal_name_and_cnpj() {
    for locale in LOCALES {
        for name in SHIPPED_NAMES {
            let cmd = sample_message(name, locale, SmsOptions::default());
            let sms = render(&cmd, Channel::Sms, &Links::default()).unwrap();
            assert!(
                sms.text.contains("Companhia Exemplo de Serviços Ltda")
                    && sms.text.contains("11.222.333/0001-81"),
                "{locale}/{name}: {}",
                sms.text
            );
            let wa = render(&cmd, Channel::Whatsapp, &Links::default()).unwrap();
            let params = wa.whatsapp.unwrap().params;
            assert!(
                params.contains(&"Companhia Exemplo de Serviços Ltda".to_owned())
                    && params.contains(&"11.222.333/0001-81".to_owned()),
                "{locale}/{name}: {params:?}"
            );
        }
    }
    // A policy's SMS without the CNPJ is refused; with it, accepted.
    let without =
        sms_only("{{ creditor.legal_name }}: {{ first_name }}, {{ total }}, {{ due_date }}");
    assert!(
        lint(&without)
            .iter()
            .any(|i| i.code == "missing_creditor" && i.message.contains("creditor.cnpj")),
        "{:?}",
        lint(&without)
    );
    assert_eq!(lint(&sms_only(REQUIRED)), Vec::new());
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

fn sms_only(text: &str) -> ChannelTemplates {
    ChannelTemplates {
        sms: Some(text.into()),
        ..Default::default()
    }
}

fn render_sms(text: &str) -> Result<Rendered, TemplateError> {
    let mut cmd = sample_message("x", "pt-BR", SmsOptions::default());
    cmd.templates = Some(sms_only(text));
    render(&cmd, Channel::Sms, &Links::default())
}

const REQUIRED: &str = "{{ creditor.legal_name }} CNPJ {{ creditor.cnpj }}: {{ first_name }}, {{ total }}, {{ due_date }}";

#[test]
fn policy_texts_that_could_build_huge_values_are_refused_by_the_lint() {
    for (bad, what) in [
        (
            "{% for c in ('x' * 100000000)|list %}{{ c }}{% endfor %}",
            "`*`",
        ),
        ("{{ name ~ name }}", "`~`"),
        ("{{ name + name }}", "`+`"),
        ("{{ 2 ** 64 }}", "`**`"),
        ("{{ [name, name]|first }}", "list literals"),
        ("{{ {'a': name} }}", "map literals"),
        ("{{ (name, name)|first }}", "tuples"),
        ("{% set x = name %}{{ x }}", "`{% set %}`"),
        ("{% macro m() %}{% endmacro %}", "`{% macro %}`"),
        ("{{ range(10)|length }}", "functions"),
        ("{{ name|replace('a', name) }}", "filter `replace`"),
        (
            "{{ invoices|map(attribute='id')|join(', ') }}",
            "filter `map`",
        ),
        (
            "{% if name is divisibleby(3) %}x{% endif %}",
            "test `divisibleby`",
        ),
    ] {
        let issues = lint(&sms_only(&format!("{REQUIRED} {bad}")));
        let forbidden: Vec<&TemplateIssue> = issues
            .iter()
            .filter(|i| i.code == "template_forbidden")
            .collect();
        assert!(
            forbidden
                .iter()
                .any(|i| i.field == "sms" && i.message.contains(what)),
            "{bad}: {issues:?}"
        );
        // And at send, for a text stored before the rule: refused, not run.
        assert!(
            matches!(render_sms(bad), Err(TemplateError::Limit { .. })),
            "{bad}"
        );
    }
    let long = format!("{REQUIRED}{}", " ".repeat(sandbox::MAX_SOURCE));
    assert_eq!(lint(&sms_only(&long))[0].code, "template_too_long");
}

#[test]
fn policy_texts_keep_conditions_loops_filters_and_tests() {
    let text = "{{ creditor.legal_name|upper }}: {{ first_name|title }}, {{ total }} \
                ({{ due_date }}){% if days_late > 5 and payment.url is defined %} {{ payment.url|default('') }}{% endif %} \
                {{ invoices|length }}: {% for i in invoices %}{{ i.id }}{% if not loop.last %}, {% endif %}{% endfor %} \
                {{ invoices[0].id }} {{ name[0:5]|lower }} {{ creditor.cnpj }}";
    assert_eq!(lint(&sms_only(text)), Vec::new());
    let r = render_sms(text).unwrap();
    assert!(
        r.text
            .starts_with("COMPANHIA EXEMPLO DE SERVIÇOS LTDA: Maria"),
        "{}",
        r.text
    );
    assert!(
        r.text.contains("1: NF-2026-000123 NF-2026-000123 maria"),
        "{}",
        r.text
    );
}

#[test]
fn renders_stop_at_their_fuel_and_output_cap() {
    // Inside the subset, but 26^4 iterations: out of fuel.
    let spins = "{% for a in name %}{% for b in name %}{% for c in name %}{% for d in name %}\
                 {% endfor %}{% endfor %}{% endfor %}{% endfor %}";
    match render_sms(spins) {
        Err(TemplateError::Limit { reason, .. }) => assert!(reason.contains("fuel"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // 26^2 copies of the creditor: past the output cap.
    let floods = "{% for a in name %}{% for b in name %}{{ creditor }}{% endfor %}{% endfor %}";
    match render_sms(floods) {
        Err(TemplateError::Limit { reason, .. }) => {
            assert!(reason.contains("more than 16384 bytes"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // The shipped texts, with as many invoices as one message carries, stay far inside.
    for locale in LOCALES {
        for name in SHIPPED_NAMES {
            let mut cmd = sample_message(name, locale, SmsOptions::default());
            cmd.invoices = vec![cmd.invoices[0].clone(); crate::message::MAX_INVOICES_PER_MESSAGE];
            for channel in Channel::ALL {
                render(&cmd, channel, &Links::default())
                    .unwrap_or_else(|e| panic!("{locale}/{name}/{channel:?}: {e}"));
            }
        }
    }
}
