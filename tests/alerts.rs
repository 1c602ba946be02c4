//! The shipped alert rules (charts/securechat/files/prometheus-rules.yaml),
//! through promtool (built by `make tools`): the rules parse and pass its
//! linter, and the unit tests in tests/alerts/ — series that cross each
//! threshold and series beside them that must stay quiet — pass.
//!
//! That the metric names exist is checked where they are exported:
//! server/tests/alert_metrics.rs scrapes a running server; the operator's
//! are checked here against its metrics registry.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use securechat_test_support::cluster;
use serde_yaml::Value;

fn rules_file() -> PathBuf {
    cluster::repo_root().join("charts/securechat/files/prometheus-rules.yaml")
}

fn unit_tests_file() -> PathBuf {
    cluster::repo_root().join("tests/alerts/prometheus-rules.test.yaml")
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new(cluster::tool("promtool"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): run `make tools`"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn yaml(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn promtool_check_rules_accepts_the_shipped_rules() {
    let rules = rules_file();
    let (ok, output) = promtool(&[
        "check",
        "rules",
        "--lint=all",
        "--lint-fatal",
        rules.to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "promtool check rules failed:\n{output}");
    assert!(output.contains("SUCCESS"), "{output}");
}

#[test]
fn promtool_rejects_a_broken_rule() {
    // The check above is only worth something if promtool really parses the
    // expressions: a rules file with a PromQL syntax error must fail.
    let dir = std::env::temp_dir().join(format!("securechat-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let broken = dir.join("broken.yaml");
    std::fs::write(
        &broken,
        "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: sum by (namespace (x)\n",
    )
    .expect("write");
    let (ok, output) = promtool(&["check", "rules", broken.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "promtool accepted a broken expression:\n{output}");
}

#[test]
fn promtool_unit_tests_pass() {
    let tests = unit_tests_file();
    let (ok, output) = promtool(&["test", "rules", tests.to_str().expect("utf-8 path")]);
    assert!(ok, "promtool test rules failed:\n{output}");
}

/// (alert name, severity) of every rule in the shipped file.
fn shipped_alerts() -> BTreeSet<(String, String)> {
    let rules = yaml(&rules_file());
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| {
            Some((
                r["alert"].as_str()?.to_string(),
                r["labels"]["severity"].as_str()?.to_string(),
            ))
        })
        .collect()
}

#[test]
fn every_alert_and_severity_is_seen_firing_in_the_unit_tests() {
    let shipped = shipped_alerts();
    assert!(shipped.len() >= 12, "rules file lost alerts: {shipped:?}");
    let tests = yaml(&unit_tests_file());
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = case["alertname"].as_str().expect("alertname").to_string();
            let expected = case["exp_alerts"]
                .as_sequence()
                .cloned()
                .unwrap_or_default();
            if expected.is_empty() {
                quiet.insert(name.clone());
            }
            for alert in expected {
                if let Some(severity) = alert["exp_labels"]["severity"].as_str() {
                    fired.insert((name.clone(), severity.to_string()));
                }
            }
        }
    }
    let untested: Vec<_> = shipped.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts never seen firing in {}: {untested:?}",
        unit_tests_file().display()
    );
    // Every alert either has an explicit "not yet / not this" case, or its
    // firing case sits beside series that must not fire (exp_alerts lists
    // are exact); the explicit ones are worth keeping.
    assert!(quiet.len() >= 8, "few explicit quiet cases: {quiet:?}");
}

/// Every `securechat_operator_*` series a rule reads is one the operator
/// exports: a renamed metric would leave its alert silently dead.
#[test]
fn the_operator_metrics_the_rules_read_exist() {
    let text = std::fs::read_to_string(rules_file()).expect("rules");
    let used: BTreeSet<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("securechat_operator_") && !w.ends_with('_'))
        .map(str::to_string)
        .collect();
    assert!(!used.is_empty(), "the rules read no operator metric");
    // Every labelled series appears once something was counted.
    let metrics = securechat_operator::metrics::Metrics::new();
    metrics.reconciled(
        "ns",
        "m",
        std::time::Duration::from_millis(5),
        Some("kube_api"),
    );
    metrics.material_failed("tls");
    let exported = metrics.render();
    for name in &used {
        assert!(
            exported
                .lines()
                .any(|l| l.split(['{', ' ']).next() == Some(name.as_str())),
            "the rules read {name}, which the operator does not export:\n{exported}"
        );
    }
}

/// Every shipped alert has its runbook: a section of the chart's
/// RUNBOOKS.md headed by its name, which is where the alert relay's
/// default link (`{alertname}` in lower case, the heading's anchor) lands.
#[test]
fn every_alert_has_a_runbook_section() {
    let runbooks =
        std::fs::read_to_string(cluster::repo_root().join("charts/securechat/RUNBOOKS.md"))
            .expect("charts/securechat/RUNBOOKS.md");
    let headings: BTreeSet<&str> = runbooks
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(str::trim)
        .collect();
    let missing: Vec<String> = shipped_alerts()
        .into_iter()
        .map(|(alert, _)| alert)
        .filter(|alert| !headings.contains(alert.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts without a RUNBOOKS.md section: {missing:?}"
    );
}
