use super::*;
use crate::alert_relay::payload::{PayloadError, parse};

/// What Alertmanager 0.35 posted for the shipped certificate rule in
/// operator/tests/alert_relay.rs (one alert, trimmed of other labels).
fn certificate_notification(status: &str, ends_at: &str) -> Notification {
    let body = format!(
        r#"{{
        "version": "4", "groupKey": "{{}}:{{alertname=\"SecureChatCertificateExpiring\"}}",
        "truncatedAlerts": 0, "status": "{status}", "receiver": "securechat-critical",
        "groupLabels": {{"alertname": "SecureChatCertificateExpiring", "namespace": "team-a", "model": "llama"}},
        "commonLabels": {{"alertname": "SecureChatCertificateExpiring", "namespace": "team-a", "model": "llama", "severity": "critical"}},
        "commonAnnotations": {{}},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": [{{
            "status": "{status}",
            "labels": {{"alertname": "SecureChatCertificateExpiring", "namespace": "team-a", "model": "llama", "severity": "critical"}},
            "annotations": {{
                "summary": "TLS certificate of team-a/llama expires within 24 hours",
                "description": "The serving certificate expires in 59m 58s; clients will refuse the connection after that."
            }},
            "startsAt": "2026-12-06T16:40:00.123Z",
            "endsAt": "{ends_at}",
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=x",
            "fingerprint": "5c0a7a3f0b1d2e4f"
        }}]
    }}"#
    );
    parse(body.as_bytes()).expect("parses")
}

fn runbooks() -> Runbooks {
    Runbooks {
        template: Some("https://wiki.example/securechat#{alertname}".into()),
    }
}

#[test]
fn a_firing_certificate_says_what_expires_when_where_and_what_to_do() {
    let n = certificate_notification("firing", "0001-01-01T00:00:00Z");
    let m = render(&n, Flavor::WeCom, &runbooks(), 4096);
    assert_eq!(
        m.title,
        "[FIRING:1] SecureChatCertificateExpiring team-a/llama (critical)"
    );
    assert_eq!(
        m.markdown,
        "## <font color=\"warning\">FIRING</font> SecureChatCertificateExpiring team-a/llama (critical)\n\
         ### <font color=\"warning\">FIRING</font> critical: TLS certificate of team-a/llama expires within 24 hours\n\
         **Model**: team-a/llama\n\
         **Since**: 2026-12-06 16:40:00 UTC\n\
         > The serving certificate expires in 59m 58s; clients will refuse the connection after that.\n\
         [Runbook: SecureChatCertificateExpiring](https://wiki.example/securechat#securechatcertificateexpiring) · \
         [Query](http://prometheus.example:9090/graph?g0.expr=x)"
    );
}

#[test]
fn dingtalk_gets_paragraphs_and_no_colours() {
    let n = certificate_notification("firing", "0001-01-01T00:00:00Z");
    let m = render(&n, Flavor::DingTalk, &runbooks(), 4096);
    assert!(!m.markdown.contains("<font"), "{}", m.markdown);
    assert!(
        m.markdown.starts_with(
            "## **FIRING** SecureChatCertificateExpiring team-a/llama (critical)\n\n\
             ### **FIRING** critical: TLS certificate of team-a/llama expires within 24 hours\n\n\
             **Model**: team-a/llama\n\n"
        ),
        "{}",
        m.markdown
    );
}

#[test]
fn a_resolved_alert_says_when_it_ended() {
    let n = certificate_notification("resolved", "2026-12-06T17:05:30Z");
    let m = render(&n, Flavor::WeCom, &runbooks(), 4096);
    assert!(m.title.starts_with("[RESOLVED:1] "), "{}", m.title);
    assert!(
        m.markdown.contains(
            "**Resolved**: 2026-12-06 17:05:30 UTC (firing since 2026-12-06 16:40:00 UTC)"
        ),
        "{}",
        m.markdown
    );
    assert!(m.markdown.contains("<font color=\"info\">RESOLVED</font>"));
}

#[test]
fn the_alerts_own_runbook_url_wins_and_none_means_no_link() {
    let mut n = certificate_notification("firing", "0001-01-01T00:00:00Z");
    n.alerts[0].annotations.insert(
        RUNBOOK_ANNOTATION.into(),
        "https://runbooks.example/cert".into(),
    );
    let m = render(&n, Flavor::WeCom, &runbooks(), 4096);
    assert!(
        m.markdown
            .contains("[Runbook: SecureChatCertificateExpiring](https://runbooks.example/cert)"),
        "{}",
        m.markdown
    );
    n.alerts[0].annotations.clear();
    let m = render(&n, Flavor::WeCom, &Runbooks::default(), 4096);
    assert!(!m.markdown.contains("Runbook"), "{}", m.markdown);
}

#[test]
fn api_keys_and_materials_are_named() {
    let mut n = certificate_notification("firing", "0001-01-01T00:00:00Z");
    let labels = &mut n.alerts[0].labels;
    labels.insert("name".into(), "ci-bot".into());
    labels.insert("key_id".into(), "k-7f3a".into());
    labels.insert("material".into(), "tls".into());
    let m = render(&n, Flavor::WeCom, &Runbooks::default(), 4096);
    assert!(
        m.markdown.contains("**API key**: ci-bot (k-7f3a)"),
        "{}",
        m.markdown
    );
    assert!(m.markdown.contains("**Material**: tls"), "{}", m.markdown);
}

#[test]
fn firing_alerts_come_before_resolved_ones() {
    let mut n = certificate_notification("firing", "0001-01-01T00:00:00Z");
    let mut resolved = n.alerts[0].clone();
    resolved.status = Status::Resolved;
    resolved
        .annotations
        .insert("summary".into(), "the resolved one".into());
    n.alerts.insert(0, resolved);
    let m = render(&n, Flavor::WeCom, &Runbooks::default(), 4096);
    let firing = m
        .markdown
        .find("critical: TLS certificate")
        .expect("firing");
    let resolved = m.markdown.find("the resolved one").expect("resolved");
    assert!(firing < resolved, "{}", m.markdown);
    assert!(m.title.starts_with("[FIRING:1] "), "{}", m.title);
}

#[test]
fn large_groups_keep_whole_alerts_within_the_limit_and_count_the_rest() {
    let mut n = certificate_notification("firing", "0001-01-01T00:00:00Z");
    let one = n.alerts[0].clone();
    n.alerts = (0..60)
        .map(|i| {
            let mut a = one.clone();
            a.labels.insert("model".into(), format!("model-{i:02}"));
            a
        })
        .collect();
    n.truncated_alerts = 5;
    let m = render(&n, Flavor::WeCom, &runbooks(), 4096);
    assert!(m.markdown.len() <= 4096, "{} bytes", m.markdown.len());
    let shown = m.markdown.matches("**Model**:").count();
    assert!(shown > 3 && shown < 60, "{shown} alerts shown");
    let expected_more = format!(
        "…and {} more alert(s): [Alertmanager](http://alertmanager.example:9093)",
        60 - shown + 5
    );
    assert!(m.markdown.ends_with(&expected_more), "{}", m.markdown);
    // Whole blocks: the last one shown ends with its links.
    let before_more = m.markdown.trim_end_matches(&expected_more);
    assert!(
        before_more
            .trim_end()
            .ends_with("(http://prometheus.example:9090/graph?g0.expr=x)"),
        "{before_more}"
    );
}

#[test]
fn one_huge_alert_is_cut_on_a_character_boundary() {
    let mut n = certificate_notification("firing", "0001-01-01T00:00:00Z");
    n.alerts[0]
        .annotations
        .insert("description".into(), "证书过期".repeat(2000));
    for max in [4096, 4095, 4094, 300] {
        let m = render(&n, Flavor::WeCom, &Runbooks::default(), max);
        assert!(m.markdown.len() <= max, "{} > {max}", m.markdown.len());
        assert!(
            m.markdown.len() >= max - 3,
            "{} bytes for {max}",
            m.markdown.len()
        );
        assert!(m.markdown.contains("TLS certificate of team-a/llama"));
    }
}

#[test]
fn payloads_of_another_version_or_without_alerts_are_refused() {
    let v3 = br#"{"version":"3","status":"firing","alerts":[]}"#;
    assert!(matches!(parse(v3), Err(PayloadError::Version(v)) if v == "3"));
    let empty = br#"{"version":"4","status":"firing","alerts":[]}"#;
    assert!(matches!(parse(empty), Err(PayloadError::NoAlerts)));
    let err = parse(b"status=firing").unwrap_err();
    assert!(
        err.to_string().contains("not Alertmanager's webhook JSON"),
        "{err}"
    );
}
