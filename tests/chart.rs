//! The Helm chart (charts/securechat), through the real helm binary that
//! `make tools` builds: lint, golden renders, the values schema, the
//! properties the chart promises (hardened pod, least-privilege RBAC, the
//! alert rules embedded verbatim), and install / upgrade / uninstall against
//! the local control plane.
//!
//! Golden files live in tests/golden/: `<case>.values.yaml` is the input,
//! `<case>.yaml` the expected `helm template` output. After an intended
//! change, regenerate them with `UPDATE_GOLDEN=1 cargo test --test chart`
//! and review the diff.

use std::path::PathBuf;
use std::process::Command;

use securechat_test_support::cluster;
use serde::Deserialize;
use serde_yaml::Value;

const RELEASE: &str = "securechat";
const NAMESPACE: &str = "securechat-system";

fn chart_dir() -> PathBuf {
    cluster::repo_root().join("charts/securechat")
}

fn golden_dir() -> PathBuf {
    cluster::repo_root().join("tests/golden")
}

/// Runs helm; returns (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(cluster::tool("helm"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm ({e}): run `make tools`"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn helm_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = helm(args);
    assert!(ok, "helm {} failed:\n{stderr}", args.join(" "));
    stdout
}

/// `helm template` of the chart with extra arguments (values files, --set).
fn template(extra: &[&str]) -> String {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        NAMESPACE,
    ];
    args.extend_from_slice(extra);
    helm_ok(&args)
}

/// The objects of a multi-document render.
fn objects(rendered: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(rendered)
        .map(|doc| Value::deserialize(doc).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(obj: &Value) -> &str {
    obj["kind"].as_str().unwrap_or_default()
}

fn of_kind<'a>(objs: &'a [Value], k: &str) -> Vec<&'a Value> {
    objs.iter().filter(|o| kind(o) == k).collect()
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn values_file(case: &str) -> PathBuf {
    golden_dir().join(format!("{case}.values.yaml"))
}

fn render_case(case: &str) -> String {
    let values = values_file(case);
    if values.exists() {
        template(&["--values", values.to_str().expect("utf-8 path")])
    } else {
        template(&[])
    }
}

fn check_golden(case: &str) {
    let rendered = render_case(case);
    let path = golden_dir().join(format!("{case}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &rendered).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); create it with UPDATE_GOLDEN=1",
            path.display()
        )
    });
    if rendered != expected {
        let diff = first_difference(&expected, &rendered);
        panic!(
            "helm template for case {case} differs from {}:\n{diff}\n\
             If the change is intended: UPDATE_GOLDEN=1 cargo test --test chart, then review the diff.",
            path.display()
        );
    }
}

fn first_difference(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<_>, Vec<_>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i).copied(), a.get(i).copied());
        if x != y {
            return format!(
                "first difference at line {}:\n  expected: {x:?}\n  actual:   {y:?}",
                i + 1
            );
        }
    }
    "no line differs (trailing newline?)".into()
}

#[test]
fn helm_lint_passes_for_default_and_non_default_values() {
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    helm_ok(&["lint", "--strict", chart]);
    let values = values_file("namespaced-monitoring");
    helm_ok(&[
        "lint",
        "--strict",
        chart,
        "--values",
        values.to_str().expect("utf-8 path"),
    ]);
}

#[test]
fn golden_default() {
    check_golden("default");
}

#[test]
fn golden_namespaced_with_monitoring() {
    check_golden("namespaced-monitoring");
}

#[test]
fn values_schema_rejects_bad_values_with_clear_messages() {
    let cases = [
        (
            "operator.replicas=-1",
            "at '/operator/replicas': minimum: got -1, want 0",
        ),
        (
            "operator.replicas=two",
            "at '/operator/replicas': got string, want integer",
        ),
        (
            "operator.logFormat=xml",
            "at '/operator/logFormat': value must be one of 'json', 'text'",
        ),
        (
            "operator.logLevel=verbose",
            "at '/operator/logLevel': value must be one of 'error', 'warn', 'info', 'debug', 'trace'",
        ),
        ("metrics.port=80", "at '/metrics/port': minimum: got 80"),
        (
            "watchNamespaces={Bad_NS}",
            "at '/watchNamespaces/0': 'Bad_NS' does not match pattern",
        ),
        (
            "watchNamespaces={a,a}",
            "at '/watchNamespaces': items at 0 and 1 are equal",
        ),
        (
            "operatr.replicas=1",
            "additional properties 'operatr' not allowed",
        ),
        (
            "operator.leaderElection.enabled=false,operator.replicas=2",
            "at '/operator/replicas': maximum: got 2, want 1",
        ),
        (
            "serverImage.digest=abc",
            "at '/serverImage/digest': 'abc' does not match pattern",
        ),
        (
            "monitoring.enabled=yes",
            "at '/monitoring/enabled': got string, want boolean",
        ),
        (
            "monitoring.interval=30 seconds",
            "at '/monitoring/interval': '30 seconds' does not match pattern",
        ),
        (
            "operator.image.pullPolicy=Sometimes",
            "at '/operator/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'",
        ),
    ];
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    for (set, message) in cases {
        let (ok, _, stderr) = helm(&["template", RELEASE, chart, "--set", set]);
        assert!(!ok, "--set {set} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema")
                && stderr.contains(message),
            "--set {set}: expected {message:?} in:\n{stderr}"
        );
    }
}

/// The operator container of a render.
fn operator_container(objs: &[Value]) -> &Value {
    let deployments = of_kind(objs, "Deployment");
    assert_eq!(deployments.len(), 1, "one Deployment");
    &deployments[0]["spec"]["template"]["spec"]["containers"][0]
}

#[test]
fn operator_pod_is_hardened_and_probed_on_the_metrics_port() {
    let objs = objects(&template(&[]));
    let deployment = of_kind(&objs, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(65532));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let c = operator_container(&objs);
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(sc["runAsUser"].as_i64(), Some(65532));
    assert_eq!(strings(&sc["capabilities"]["drop"]), vec!["ALL"]);
    assert!(sc["capabilities"]["add"].is_null(), "no capability added");
    assert_eq!(c["ports"][0]["containerPort"].as_i64(), Some(8080));
    assert_eq!(c["ports"][0]["name"].as_str(), Some("http-metrics"));
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["port"].as_str(),
            Some("http-metrics"),
            "{probe}"
        );
    }
    // The metrics Service targets that port.
    let service = of_kind(&objs, "Service")[0];
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"].as_str(),
        Some("http-metrics")
    );
}

#[test]
fn operator_args_follow_the_values() {
    let args = |objs: &[Value]| -> Vec<String> {
        strings(&operator_container(objs)["args"])
            .into_iter()
            .map(String::from)
            .collect()
    };
    let default = args(&objects(&template(&[])));
    assert_eq!(default[0], "run");
    assert!(
        !default.iter().any(|a| a.starts_with("--namespace")),
        "default watches all namespaces: {default:?}"
    );
    for expected in [
        "--server-image=securechat/server:0.1.0",
        "--server-cuda-image=securechat/server:0.1.0-cuda",
        "--log-level=info",
        "--log-format=json",
        "--max-concurrent-reconciles=8",
        "--metrics-address=0.0.0.0:8080",
        "--leader-elect",
        "--leader-election-namespace=securechat-system",
        "--leader-election-lease=securechat-operator",
    ] {
        assert!(
            default.iter().any(|a| a == expected),
            "{expected} not in {default:?}"
        );
    }
    let digest = format!("sha256:{}", "ab".repeat(32));
    let custom = args(&objects(&template(&[
        "--set",
        "watchNamespaces={team-a,team-b}",
        "--set",
        "operator.logLevel=debug",
        "--set",
        "operator.logFormat=text",
        "--set",
        "operator.leaderElection.enabled=false",
        "--set",
        "operator.maxConcurrentReconciles=32",
        "--set",
        "serverImage.repository=registry.example/securechat-server",
        "--set",
        &format!("serverImage.digest={digest}"),
        "--set",
        "serverImage.cuda.tag=0.1.0-cuda12",
    ])));
    for expected in [
        "--namespace=team-a".to_string(),
        "--namespace=team-b".to_string(),
        "--log-level=debug".to_string(),
        "--log-format=text".to_string(),
        "--max-concurrent-reconciles=32".to_string(),
        format!("--server-image=registry.example/securechat-server@{digest}"),
        "--server-cuda-image=registry.example/securechat-server:0.1.0-cuda12".to_string(),
    ] {
        assert!(custom.contains(&expected), "{expected} not in {custom:?}");
    }
    assert!(
        !custom.iter().any(|a| a.starts_with("--leader-elect")),
        "leader election off: {custom:?}"
    );
    // What the chart passes, the binary accepts: a flag it does not know
    // would crash-loop the operator's pod.
    for rendered in [&default, &custom] {
        let command_line =
            std::iter::once("securechat-operator".to_string()).chain(rendered.clone());
        if let Err(e) = securechat_operator::cli::Cli::parse_from_args(command_line) {
            panic!("the operator rejects the chart's args {rendered:?}:\n{e}");
        }
    }
}

/// Every RBAC rule of a render, with the namespace it applies in (None:
/// cluster-wide).
fn rbac_rules(objs: &[Value]) -> Vec<(Option<String>, &Value)> {
    objs.iter()
        .filter(|o| kind(o) == "ClusterRole" || kind(o) == "Role")
        .flat_map(|role| {
            let ns = role["metadata"]["namespace"].as_str().map(String::from);
            role["rules"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(move |rule| (ns.clone(), rule))
        })
        .collect()
}

#[test]
fn rbac_is_least_privilege_without_wildcards() {
    for objs in [
        objects(&template(&[])),
        objects(&render_case("namespaced-monitoring")),
    ] {
        for (_, rule) in rbac_rules(&objs) {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).contains(&"*"),
                    "wildcard in {field}: {rule:?}"
                );
            }
            let verbs = strings(&rule["verbs"]);
            for forbidden in ["escalate", "bind", "impersonate", "deletecollection"] {
                assert!(!verbs.contains(&forbidden), "{forbidden} granted: {rule:?}");
            }
            let resources = strings(&rule["resources"]);
            for forbidden in [
                "pods/exec",
                "pods/attach",
                "pods/portforward",
                "clusterroles",
                "clusterrolebindings",
                "roles",
                "rolebindings",
                "customresourcedefinitions",
                "namespaces",
                "nodes",
            ] {
                assert!(
                    !resources.contains(&forbidden),
                    "{forbidden} granted: {rule:?}"
                );
            }
            // Pods and Events are only read.
            if resources.contains(&"pods") {
                assert_eq!(verbs, vec!["get", "list", "watch"], "{rule:?}");
            }
        }
    }
}

#[test]
fn watched_namespaces_get_roles_and_nothing_cluster_wide() {
    let objs = objects(&render_case("namespaced-monitoring"));
    assert!(of_kind(&objs, "ClusterRole").is_empty());
    assert!(of_kind(&objs, "ClusterRoleBinding").is_empty());
    let secret_namespaces: Vec<_> = rbac_rules(&objs)
        .into_iter()
        .filter(|(_, rule)| strings(&rule["resources"]).contains(&"secrets"))
        .map(|(ns, _)| ns.expect("namespaced"))
        .collect();
    assert_eq!(secret_namespaces, vec!["chat", "chat-apps"]);
    // Each Role is bound to the operator's ServiceAccount in the release
    // namespace.
    for binding in of_kind(&objs, "RoleBinding") {
        assert_eq!(
            binding["subjects"][0]["name"].as_str(),
            Some("securechat-operator")
        );
        assert_eq!(
            binding["subjects"][0]["namespace"].as_str(),
            Some(NAMESPACE)
        );
    }
    // The release namespace holds only the leader-election Role: the Lease,
    // and every verb but create limited to its name.
    let lease_rules: Vec<_> = rbac_rules(&objs)
        .into_iter()
        .filter(|(ns, _)| ns.as_deref() == Some(NAMESPACE))
        .map(|(_, rule)| rule)
        .collect();
    assert_eq!(lease_rules.len(), 2, "{lease_rules:?}");
    for rule in lease_rules {
        assert_eq!(strings(&rule["resources"]), vec!["leases"]);
        let verbs = strings(&rule["verbs"]);
        if verbs != vec!["create"] {
            assert_eq!(
                strings(&rule["resourceNames"]),
                vec!["securechat-operator"],
                "{rule:?}"
            );
        }
    }

    // Default: one ClusterRole, bound cluster-wide.
    let objs = objects(&template(&[]));
    assert_eq!(of_kind(&objs, "ClusterRole").len(), 1);
    assert_eq!(of_kind(&objs, "ClusterRoleBinding").len(), 1);
    assert_eq!(
        of_kind(&objs, "Role").len(),
        1,
        "only the leader-election Role"
    );
}

#[test]
fn prometheus_rule_embeds_the_shipped_rules_file() {
    let objs = objects(&render_case("namespaced-monitoring"));
    let rules = of_kind(&objs, "PrometheusRule");
    assert_eq!(rules.len(), 1);
    let file = chart_dir().join("files/prometheus-rules.yaml");
    let file: Value =
        serde_yaml::from_str(&std::fs::read_to_string(file).expect("read rules file"))
            .expect("rules file parses");
    assert_eq!(rules[0]["spec"], file);
    assert_eq!(
        rules[0]["metadata"]["labels"]["release"].as_str(),
        Some("kube-prometheus-stack"),
        "monitoring.labels reach the PrometheusRule"
    );
    assert_eq!(of_kind(&objs, "ServiceMonitor").len(), 1);
    assert_eq!(of_kind(&objs, "PodMonitor").len(), 1);
    // Monitoring off (the default): no Prometheus Operator objects, so the
    // chart installs where their CRDs do not exist.
    let objs = objects(&template(&[]));
    for k in ["PrometheusRule", "ServiceMonitor", "PodMonitor"] {
        assert!(of_kind(&objs, k).is_empty(), "{k} rendered by default");
    }
}

#[test]
fn chart_ships_the_generated_crds() {
    // The chart's crds/ directory is what crdgen writes (its --check runs in
    // `make test`); here: helm installs both with the chart.
    let rendered = template(&["--include-crds"]);
    let objs = objects(&rendered);
    let crds: Vec<_> = of_kind(&objs, "CustomResourceDefinition")
        .into_iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        crds,
        vec![
            "chatapikeys.securechat.dev",
            "securechatmodels.securechat.dev"
        ]
    );
}

// ---------------------------------------------------------------------------
// Against the local control plane (`make cluster-up`).

fn kubeconfig() -> String {
    cluster::kubeconfig_path()
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// `kubectl auth can-i` as the chart's ServiceAccount.
fn can_i(sa: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i", "--as", sa];
    all.extend_from_slice(args);
    let (_, stdout, stderr) = cluster::kubectl(&all);
    match stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl auth can-i {args:?}: {other:?} {stderr}"),
    }
}

#[tokio::test]
async fn helm_install_upgrade_uninstall_in_the_local_control_plane() {
    let client = cluster::client().await;
    cluster::install_crds();
    let ns = cluster::TestNamespace::create(&client, "chart").await;
    let kubeconfig = kubeconfig();
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let release = "sc";
    let base = [
        "--kubeconfig",
        kubeconfig.as_str(),
        "--namespace",
        ns.name.as_str(),
    ];
    let watch = format!("watchNamespaces={{{}}}", ns.name);

    // The default (cluster-wide) install is validated by the API server
    // without creating anything cluster-scoped.
    let mut args = vec!["install", release, chart, "--dry-run=server"];
    args.extend_from_slice(&base);
    helm_ok(&args);

    let mut args = vec!["install", release, chart, "--set", &watch];
    args.extend_from_slice(&base);
    helm_ok(&args);
    let deployment = format!("deployment/{release}-securechat-operator");
    let args_of = || {
        cluster::kubectl_ok(&[
            "get",
            &deployment,
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].args}",
        ])
    };
    assert!(args_of().contains(&format!("--namespace={}", ns.name)));
    cluster::kubectl_ok(&[
        "get",
        "serviceaccount,service,role,rolebinding",
        "-n",
        &ns.name,
    ]);

    // What the ServiceAccount may and may not do.
    let sa = format!(
        "system:serviceaccount:{}:{release}-securechat-operator",
        ns.name
    );
    let lease = format!("leases.coordination.k8s.io/{release}-securechat-operator");
    let n = ns.name.as_str();
    for (allowed, args) in [
        (
            true,
            vec!["list", "securechatmodels.securechat.dev", "-n", n],
        ),
        (
            true,
            vec![
                "patch",
                "securechatmodels.securechat.dev",
                "--subresource=status",
                "-n",
                n,
            ],
        ),
        (true, vec!["create", "secrets", "-n", n]),
        (true, vec!["patch", "deployments.apps", "-n", n]),
        (true, vec!["create", "leases.coordination.k8s.io", "-n", n]),
        (true, vec!["update", lease.as_str(), "-n", n]),
        (
            false,
            vec!["update", "leases.coordination.k8s.io/other", "-n", n],
        ),
        (false, vec!["get", "secrets", "-n", "kube-system"]),
        (false, vec!["list", "secrets", "--all-namespaces"]),
        (
            false,
            vec!["create", "clusterroles.rbac.authorization.k8s.io"],
        ),
        (
            false,
            vec!["create", "rolebindings.rbac.authorization.k8s.io", "-n", n],
        ),
        (false, vec!["create", "pods", "--subresource=exec", "-n", n]),
        (false, vec!["create", "pods", "-n", n]),
        (
            false,
            vec!["delete", "securechatmodels.securechat.dev", "-n", n],
        ),
        (
            false,
            vec!["update", "customresourcedefinitions.apiextensions.k8s.io"],
        ),
    ] {
        assert_eq!(can_i(&sa, &args), allowed, "can-i {args:?}");
    }

    // A resource the release does not own survives the uninstall, as do the
    // CRDs (Helm never deletes what it installed from crds/).
    let model = std::env::temp_dir().join(format!("{n}-model.yaml"));
    std::fs::write(
        &model,
        "apiVersion: securechat.dev/v1alpha1\nkind: SecureChatModel\nmetadata:\n  name: empty\nspec: {}\n",
    )
    .expect("write model manifest");
    cluster::kubectl_ok(&["apply", "-n", n, "-f", model.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_file(&model);

    let mut args = vec![
        "upgrade",
        release,
        chart,
        "--reuse-values",
        "--set",
        "operator.logLevel=debug",
    ];
    args.extend_from_slice(&base);
    helm_ok(&args);
    assert!(args_of().contains("--log-level=debug"));
    let mut args = vec!["status", release, "-o", "json"];
    args.extend_from_slice(&base);
    let status: serde_json::Value =
        serde_json::from_str(&helm_ok(&args)).expect("helm status JSON");
    assert_eq!(status["version"], 2, "second revision: {status}");

    let mut args = vec!["uninstall", release, "--wait"];
    args.extend_from_slice(&base);
    helm_ok(&args);
    let (found, _, _) = cluster::kubectl(&["get", &deployment, "-n", n]);
    assert!(!found, "the operator Deployment is gone");
    assert_eq!(
        cluster::kubectl_ok(&["get", "role,rolebinding", "-n", n, "-o", "name"]).trim(),
        "",
        "RBAC is gone"
    );
    cluster::kubectl_ok(&["get", "crd/securechatmodels.securechat.dev"]);
    cluster::kubectl_ok(&["get", "securechatmodel/empty", "-n", n]);
}

// ---------------------------------------------------------------------------
// Alert delivery: the relay (alertRelay) and the AlertmanagerConfig
// (alertmanagerConfig), with tests/golden/alert-relay.values.yaml. The
// relay itself is tested end to end in operator/tests/alert_relay.rs.

fn alert_relay_deployment(objs: &[Value]) -> &Value {
    of_kind(objs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "securechat-alert-relay")
        .expect("the alert relay's Deployment")
}

#[test]
fn alert_relay_is_off_by_default_and_hardened_without_api_access() {
    let objs = objects(&template(&[]));
    assert_eq!(of_kind(&objs, "Deployment").len(), 1, "only the operator");
    assert!(of_kind(&objs, "AlertmanagerConfig").is_empty());

    let chart = chart_dir();
    let values = values_file("alert-relay");
    helm_ok(&[
        "lint",
        "--strict",
        chart.to_str().expect("utf-8 path"),
        "--values",
        values.to_str().expect("utf-8 path"),
    ]);
    let objs = objects(&render_case("alert-relay"));
    let deployment = alert_relay_deployment(&objs);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], Value::Bool(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), vec!["ALL"]);
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some("/healthz"));
    }
    // The relay's pods are not the operator's: neither selector picks the
    // other's pods.
    let operator = of_kind(&objs, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "securechat-operator")
        .expect("operator");
    let component = |d: &Value| {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
            .as_str()
            .map(String::from)
    };
    assert_ne!(component(operator), component(deployment));
    let service = of_kind(&objs, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "securechat-alert-relay")
        .expect("the relay's Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    // Only the Alertmanager of alertRelay.allowedFrom may post: anyone
    // else could message the on-call groups.
    let policies = of_kind(&objs, "NetworkPolicy");
    assert_eq!(policies.len(), 1, "one NetworkPolicy, the relay's");
    let spec = &policies[0]["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(strings(&spec["policyTypes"]), ["Ingress"]);
    let rule = &spec["ingress"][0];
    assert_eq!(
        rule["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str(),
        Some("alertmanager")
    );
    assert_eq!(rule["ports"][0]["port"].as_str(), Some("http"));
    assert_eq!(spec["ingress"].as_sequence().map(Vec::len), Some(1));
}

#[test]
fn alert_relay_args_are_the_binarys_and_each_robot_is_its_mounted_secret() {
    let objs = objects(&render_case("alert-relay"));
    let pod = &alert_relay_deployment(&objs)["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let args: Vec<String> = strings(&c["args"]).into_iter().map(String::from).collect();
    let command_line = std::iter::once("securechat-operator".to_string()).chain(args.clone());
    let cli = securechat_operator::cli::Cli::parse_from_args(command_line)
        .unwrap_or_else(|e| panic!("the relay rejects the chart's args {args:?}:\n{e}"));
    let securechat_operator::cli::Command::AlertRelay(relay) = cli.command else {
        panic!("the chart does not start alert-relay: {args:?}");
    };
    assert_eq!(relay.listen_address.port(), 8080);
    assert_eq!(
        relay.runbook_url_template.as_deref(),
        Some("https://wiki.example/securechat#{alertname}")
    );
    // Each robot's directory is its Secret's mount, read-only; no URL or
    // key is an argument.
    let mounts = c["volumeMounts"].as_sequence().expect("mounts");
    let volumes = pod["volumes"].as_sequence().expect("volumes");
    let names: Vec<&str> = relay.robots.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["oncall-wecom", "oncall-dingtalk", "team-wecom"]);
    for robot in &relay.robots {
        let mount = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == robot.dir.to_str())
            .unwrap_or_else(|| panic!("nothing mounted at {}", robot.dir.display()));
        assert_eq!(mount["readOnly"], Value::Bool(true));
        let volume = volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("volume of the mount");
        assert_eq!(
            volume["secret"]["secretName"].as_str(),
            Some(format!("robot-{}", robot.name).as_str())
        );
    }
    assert!(
        !args
            .iter()
            .any(|a| a.contains("qyapi") || a.contains("dingtalk.com")),
        "{args:?}"
    );
}

/// (severity, robots) of the plain example's receivers, by the URL paths.
fn example_routing() -> Vec<(String, Vec<String>)> {
    let file = chart_dir().join("files/alertmanager.yml");
    let config: Value = serde_yaml::from_str(&std::fs::read_to_string(file).expect("read"))
        .expect("the example parses");
    let receivers = config["receivers"].as_sequence().expect("receivers");
    let mut routing = Vec::new();
    for route in config["route"]["routes"].as_sequence().expect("routes") {
        let severity = strings(&route["matchers"])
            .into_iter()
            .find_map(|m| m.strip_prefix("severity=\"")?.strip_suffix('"'))
            .expect("a severity matcher")
            .to_string();
        let receiver = receivers
            .iter()
            .find(|r| r["name"] == route["receiver"])
            .expect("the route's receiver");
        let robots = receiver["webhook_configs"]
            .as_sequence()
            .expect("webhooks")
            .iter()
            .map(|w| {
                let url = w["url"].as_str().expect("url");
                url.rsplit('/').next().expect("robot").to_string()
            })
            .collect();
        routing.push((severity, robots));
    }
    routing
}

#[test]
fn alertmanager_config_routes_like_the_plain_example_to_the_relay_service() {
    let objs = objects(&render_case("alert-relay"));
    let configs = of_kind(&objs, "AlertmanagerConfig");
    assert_eq!(configs.len(), 1);
    let config = configs[0];
    assert_eq!(config["apiVersion"], "monitoring.coreos.com/v1alpha1");
    assert_eq!(
        config["metadata"]["labels"]["alertmanagerConfig"].as_str(),
        Some("securechat")
    );
    let spec = &config["spec"];
    let mut routing = Vec::new();
    for route in spec["route"]["routes"].as_sequence().expect("routes") {
        let severity = route["matchers"]
            .as_sequence()
            .expect("matchers")
            .iter()
            .find(|m| m["name"] == "severity")
            .and_then(|m| m["value"].as_str())
            .expect("severity")
            .to_string();
        let receiver = spec["receivers"]
            .as_sequence()
            .expect("receivers")
            .iter()
            .find(|r| r["name"] == route["receiver"])
            .expect("receiver");
        let robots = receiver["webhookConfigs"]
            .as_sequence()
            .expect("webhookConfigs")
            .iter()
            .map(|w| {
                let url = w["url"].as_str().expect("url");
                let robot = url
                    .strip_prefix(
                        "http://securechat-alert-relay.securechat-system.svc:8080/robots/",
                    )
                    .unwrap_or_else(|| panic!("{url} is not the relay Service"));
                assert_eq!(w["sendResolved"], Value::Bool(true));
                robot.to_string()
            })
            .collect();
        routing.push((severity, robots));
    }
    assert_eq!(routing, example_routing());
    assert_eq!(
        strings(&spec["route"]["groupBy"]),
        ["alertname", "namespace", "model"]
    );
    assert_eq!(
        strings(&spec["inhibitRules"][0]["equal"]),
        ["alertname", "namespace", "model"]
    );
}

#[test]
fn alert_delivery_values_refuse_what_cannot_work_with_clear_messages() {
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    let values = values_file("alert-relay");
    let values = values.to_str().expect("utf-8 path");
    let cases: [(&[&str], &str); 5] = [
        (
            &["--set", "alertmanagerConfig.enabled=true"],
            "alertmanagerConfig.enabled sends to the alert relay: set alertRelay.enabled too",
        ),
        (
            &["--set", "alertRelay.enabled=true"],
            "alertRelay.enabled needs at least one robot in alertRelay.robots",
        ),
        (
            &[
                "-f",
                values,
                "--set",
                "alertmanagerConfig.warningRobots={nobody}",
            ],
            "alertmanagerConfig names robot \"nobody\", which is not in alertRelay.robots",
        ),
        (
            &["-f", values, "--set", "alertRelay.robots[0].type=slack"],
            "at '/alertRelay/robots/0/type': value must be one of 'wecom', 'dingtalk'",
        ),
        (
            &["-f", values, "--set", "alertRelay.robots[0].name=on call"],
            "at '/alertRelay/robots/0/name': 'on call' does not match pattern",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec!["template", RELEASE, chart];
        args.extend_from_slice(extra);
        let (ok, _, stderr) = helm(&args);
        assert!(!ok, "{extra:?} was accepted");
        assert!(
            stderr.contains(message),
            "{extra:?}: expected {message:?} in:\n{stderr}"
        );
    }
}
