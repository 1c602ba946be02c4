//! `spec.autoscaling` and `spec.expose` against the real control plane
//! (issue 6/9): the HPA the operator renders, handed the Deployment's
//! `replicas` and scaled by the real kube-controller-manager's HPA
//! controller (its conditions surfaced as ScalingReady); KEDA's
//! ScaledObject against KEDA's own CRD, and a clear condition without it;
//! the external Service, Ingress, Gateway API routes with BackendTLSPolicy
//! and the InferencePool, each accepted by the API server with the
//! projects' real CRDs (tests/cluster/third-party-crds.sh), and the
//! exposures that would let clients past `network.ingress` refused.
//!
//! Reasons are compared as literals: they are API.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use securechat_crds::SecureChatModel;
use securechat_operator::FIELD_MANAGER;
use securechat_test_support::cluster::models::{OperatorNamespace, await_reason, condition, model};
use securechat_test_support::cluster::{
    self, TestNamespace, await_condition, client, install_crds, kubectl, kubectl_eventually,
    kubectl_ok, wait_for,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// The third-party CRDs' directory, fetched once into the cache.
fn third_party_crds() -> std::path::PathBuf {
    let script = cluster::repo_root().join("tests/cluster/third-party-crds.sh");
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed (it needs Go and the module proxy):\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn install_third_party(dir: &str, crds: &[&str]) {
    let path = third_party_crds().join(dir);
    kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        path.to_str().expect("utf-8"),
    ]);
    let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let names: Vec<String> = crds.iter().map(|c| format!("crd/{c}")).collect();
    args.extend(names.iter().map(String::as_str));
    kubectl_eventually(&args);
}

/// Whether the operator's field manager owns `spec.replicas` of `d`.
fn operator_owns_replicas(d: &Deployment) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|f| {
        f.manager.as_deref() == Some(FIELD_MANAGER)
            && f.fields_v1
                .as_ref()
                .is_some_and(|v| v.0.pointer("/f:spec/f:replicas").is_some())
    })
}

#[tokio::test]
async fn cel_refuses_contradictory_scaling_and_exposure() {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, "scale-cel").await;
    let models: Api<SecureChatModel> = Api::namespaced(client, &ns.name);
    let cases = [
        (
            json!({"replicas": 2, "autoscaling": {"maxReplicas": 3, "target": "2"}}),
            "replicas and autoscaling: set one, not both",
        ),
        (
            json!({"autoscaling": {"minReplicas": 4, "maxReplicas": 3, "target": "2"}}),
            "minReplicas must not be greater than autoscaling.maxReplicas",
        ),
        (
            json!({"autoscaling": {"minReplicas": 0, "maxReplicas": 3, "target": "2"}}),
            "minReplicas: 0 needs engine KEDA",
        ),
        (
            json!({"autoscaling": {"maxReplicas": 3, "target": "lots"}}),
            "must be a positive quantity",
        ),
        (
            json!({"autoscaling": {"maxReplicas": 3, "target": "2", "engine": "KEDA"}}),
            "autoscaling.keda: required with engine KEDA",
        ),
        (
            json!({"expose": {"ingresses": [
                {"port": "Api", "className": "nginx", "host": "a.example.com", "mode": "Reencrypt",
                 "controller": {"namespaces": {}}},
                {"port": "Api", "className": "nginx", "host": "b.example.com", "mode": "Reencrypt",
                 "controller": {"namespaces": {}}}]}}),
            "at most one Ingress per port",
        ),
        (
            json!({"expose": {"service": {"type": "NodePort", "ports": ["Api"], "nodePorts": {"api": 80}}}}),
            "spec.expose.service.nodePorts.api",
        ),
    ];
    for (i, (spec, expected)) in cases.into_iter().enumerate() {
        let err = models
            .create(
                &PostParams::default(),
                &model(&format!("m{i}"), spec.clone()),
            )
            .await
            .expect_err(&format!("{spec} must be refused"));
        assert!(
            err.to_string().contains(expected),
            "{spec}: expected {expected:?} in {err}"
        );
    }
}

#[tokio::test]
async fn the_hpa_owns_the_replica_count_and_its_conditions_show() {
    let OperatorNamespace {
        client,
        ns,
        operator: _operator,
        models,
    } = OperatorNamespace::start("scale-hpa").await;
    let spec = json!({"autoscaling": {"minReplicas": 2, "maxReplicas": 4, "target": "2",
        "behavior": {"scaleDownStabilizationSeconds": 5, "scaleDownPeriodSeconds": 15}}});
    models
        .create(&PostParams::default(), &model("auto", spec))
        .await
        .expect("create");

    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns.name);
    let hpa = wait_for("the HPA", WAIT, || {
        let hpas = hpas.clone();
        async move { hpas.get_opt("auto").await.expect("get hpa") }
    })
    .await;
    let hpa_spec = hpa.spec;
    assert_eq!((hpa_spec.min_replicas, hpa_spec.max_replicas), (Some(2), 4));
    let metric = &hpa_spec.metrics.expect("metrics")[0];
    assert_eq!(
        metric.pods.as_ref().expect("pods metric").metric.name,
        "securechat_requests_waiting"
    );

    // The real HPA controller raises the Deployment to minReplicas (it
    // clamps to the bounds before reading metrics); the operator neither
    // owns nor reverts the count, and the PDB follows it.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let d = wait_for("the HPA to scale the Deployment to 2", WAIT, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get_opt("auto").await.expect("get")?;
            (d.spec.replicas == Some(2)).then_some(d)
        }
    })
    .await;
    assert!(
        !operator_owns_replicas(&d),
        "the operator must leave spec.replicas to the HPA"
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    wait_for("a PDB for 2 replicas", WAIT, || {
        let pdbs = pdbs.clone();
        async move { pdbs.get_opt("auto").await.expect("get pdb") }
    })
    .await;

    // No custom-metrics adapter here: the HPA says it cannot read the
    // metric, and the model says so in ScalingReady (not a Ready blocker).
    let message = await_reason(
        &models,
        "auto",
        "ScalingReady",
        "False",
        "MetricsUnavailable",
        "",
    )
    .await;
    assert!(message.contains("ScalingActive=False"), "{message}");
    assert!(message.contains("securechat_requests_waiting"), "{message}");

    // A scale the autoscaler makes (as through the scale subresource) is
    // kept through reconciles, and the status counts against it.
    deployments
        .patch_scale(
            "auto",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .expect("scale");
    let m = await_condition(
        models.clone(),
        "auto",
        "status x/3",
        WAIT,
        |m: Option<&SecureChatModel>| {
            m.and_then(|m| m.status.as_ref()?.replicas.clone())
                .is_some_and(|r| r.ends_with("/3"))
        },
    )
    .await;
    assert!(m.spec.replicas.is_none());
    let d = deployments.get("auto").await.expect("get");
    assert_eq!(d.spec.replicas, Some(3));

    // Autoscaling off: the HPA goes, the operator takes the count back
    // (the default 1) and ScalingReady leaves the status.
    models
        .patch(
            "auto",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"autoscaling": null, "replicas": 1}})),
        )
        .await
        .expect("turn autoscaling off");
    wait_for("the HPA to be deleted", WAIT, || {
        let hpas = hpas.clone();
        async move {
            hpas.get_opt("auto")
                .await
                .expect("get")
                .is_none()
                .then_some(())
        }
    })
    .await;
    await_condition(
        models.clone(),
        "auto",
        "no ScalingReady",
        WAIT,
        |m: Option<&SecureChatModel>| {
            m.is_some_and(|m| condition(Some(m), "ScalingReady").is_none())
        },
    )
    .await;
    let d = wait_for("replicas back to 1", WAIT, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("auto").await.expect("get");
            (d.spec.replicas == Some(1)).then_some(d)
        }
    })
    .await;
    assert!(operator_owns_replicas(&d));
}

#[tokio::test]
async fn keda_gets_a_scaled_object_and_a_condition_without_keda() {
    // KEDA's CRD is cluster-wide; this test alone installs it, so it can
    // first make sure it is absent.
    let (ok, _, stderr) = kubectl(&[
        "delete",
        "crd",
        "scaledobjects.keda.sh",
        "--ignore-not-found",
        "--wait=true",
    ]);
    assert!(ok, "delete KEDA's CRD: {stderr}");
    let OperatorNamespace {
        client,
        ns,
        operator: _operator,
        models,
    } = OperatorNamespace::start("scale-keda").await;
    let spec = json!({"autoscaling": {"minReplicas": 0, "maxReplicas": 3, "target": "4",
        "metric": "SequencesRunning", "engine": "KEDA",
        "keda": {"prometheusAddress": "http://prometheus.monitoring.svc:9090",
                 "activationQuery": "sum(rate(gateway_requests_total{model=\"k\"}[2m]))"}}});
    models
        .create(&PostParams::default(), &model("k", spec))
        .await
        .expect("create");
    let message = await_reason(
        &models,
        "k",
        "ScalingReady",
        "False",
        "KedaNotInstalled",
        "",
    )
    .await;
    assert!(message.contains("install KEDA"), "{message}");

    install_third_party("keda-v2.20.2", &["scaledobjects.keda.sh"]);
    let api = ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    };
    let objects: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns.name, &api);
    let object = wait_for("the ScaledObject", WAIT, || {
        let objects = objects.clone();
        async move { objects.get_opt("k").await.ok().flatten() }
    })
    .await;
    let spec = &object.data["spec"];
    assert_eq!(spec["minReplicaCount"], 0);
    assert_eq!(spec["maxReplicaCount"], 3);
    assert_eq!(spec["triggers"][0]["type"], "prometheus");
    assert_eq!(spec["triggers"][0]["metadata"]["threshold"], "4");
    assert!(
        spec["triggers"][0]["metadata"]["query"]
            .as_str()
            .is_some_and(|q| q.starts_with("sum(securechat_sequences_running{")),
        "{spec}"
    );
    // KEDA itself does not run here: no condition from it yet.
    await_reason(&models, "k", "ScalingReady", "False", "Pending", "").await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client, &ns.name);
    assert!(hpas.get_opt("k").await.expect("get").is_none());
}

#[tokio::test]
async fn exposure_is_accepted_by_the_real_crds_and_keeps_network_rules() {
    install_third_party(
        "gateway-api-v1.6.3",
        &[
            "httproutes.gateway.networking.k8s.io",
            "tlsroutes.gateway.networking.k8s.io",
            "backendtlspolicies.gateway.networking.k8s.io",
        ],
    );
    install_third_party(
        "inference-extension-v1.6.2",
        &["inferencepools.inference.networking.k8s.io"],
    );
    let OperatorNamespace {
        client,
        ns,
        operator: _operator,
        models,
    } = OperatorNamespace::start("expose").await;
    let edge = json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}}});
    // The seed's security group: the web UI to the world, the API to a VPC.
    let spec = json!({
        "network": {"ingress": [
            {"port": 8501, "from": ["0.0.0.0/0"]},
            {"port": 8000, "from": ["10.0.0.0/16"]}
        ]},
        "expose": {
            "service": {"type": "LoadBalancer", "ports": ["Api", "Web"]},
            "ingresses": [{"port": "Api", "className": "nginx", "host": "api.example.com",
                           "mode": "Reencrypt", "controller": edge}],
            "routes": [
                {"port": "Web", "mode": "Reencrypt", "parentRefs": [{"name": "public", "namespace": "edge"}],
                 "hostnames": ["chat.example.com"], "gatewayPods": edge},
                {"port": "Api", "mode": "Passthrough", "parentRefs": [{"name": "public", "namespace": "edge"}],
                 "hostnames": ["api-tls.example.com"], "gatewayPods": edge}
            ],
            "inferencePool": {"endpointPicker": {"service": "x-epp", "port": 9002}, "gatewayPods": edge}
        }
    });
    models
        .create(&PostParams::default(), &model("x", spec))
        .await
        .expect("create");

    // The passthrough route on the VPC-only API is refused, by name.
    let message = await_reason(&models, "x", "NetworkReady", "False", "RuleRefused", "").await;
    assert!(message.contains("expose.routes[1]"), "{message}");
    assert!(message.contains("10.0.0.0/16"), "{message}");

    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let external = wait_for("the external Service", WAIT, || {
        let services = services.clone();
        async move { services.get_opt("x-external").await.expect("get") }
    })
    .await;
    let spec = external.spec.expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    assert_eq!(
        spec.load_balancer_source_ranges,
        Some(vec!["0.0.0.0/0".to_string(), "10.0.0.0/16".to_string()])
    );

    let ingress = Api::<Ingress>::namespaced(client.clone(), &ns.name)
        .get("x-api")
        .await
        .expect("the API's Ingress");
    let annotations = ingress.metadata.annotations.expect("annotations");
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/whitelist-source-range"],
        "10.0.0.0/16"
    );
    // ingress-nginx verifies the pods with a Secret: the CA certificate
    // alone, no key.
    let bundle = wait_for("the CA bundle Secret", WAIT, || {
        let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
        async move { secrets.get_opt("x-ca-bundle").await.expect("get") }
    })
    .await;
    let keys: Vec<&String> = bundle.data.as_ref().expect("data").keys().collect();
    assert_eq!(keys, ["ca.crt"]);

    let dynamic = |group: &str, kind: &str, plural: &str| {
        let api = ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: format!("{group}/v1"),
            kind: kind.into(),
            plural: plural.into(),
        };
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &api)
    };
    let gw = "gateway.networking.k8s.io";
    let route = dynamic(gw, "HTTPRoute", "httproutes")
        .get("x-web")
        .await
        .expect("the web HTTPRoute");
    assert_eq!(
        route.data["spec"]["rules"][0]["backendRefs"][0]["port"],
        8501
    );
    let policy = dynamic(gw, "BackendTLSPolicy", "backendtlspolicies")
        .get("x-web")
        .await
        .expect("the BackendTLSPolicy");
    assert_eq!(
        policy.data["spec"]["validation"]["caCertificateRefs"][0]["name"],
        "x-ca-bundle"
    );
    assert!(
        dynamic(gw, "TLSRoute", "tlsroutes")
            .get_opt("x-api")
            .await
            .expect("get")
            .is_none(),
        "the refused passthrough route must not exist"
    );
    let pool = dynamic(
        "inference.networking.k8s.io",
        "InferencePool",
        "inferencepools",
    )
    .get("x")
    .await
    .expect("the InferencePool");
    assert_eq!(pool.data["spec"]["targetPorts"][0]["number"], 8000);

    // The proxies are admitted to their ports; the refused route opened
    // nothing: the Ingress and the pool to the API, the HTTPRoute to web.
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &ns.name)
        .get("x")
        .await
        .expect("policy");
    let rules = policy.spec.expect("spec").ingress.expect("ingress");
    let mut edge_ports: Vec<String> = rules
        .iter()
        .filter(|r| {
            r.from.iter().flatten().any(|p| {
                p.namespace_selector
                    .as_ref()
                    .and_then(|s| s.match_labels.as_ref())
                    .is_some_and(|l| {
                        l.get("kubernetes.io/metadata.name").map(String::as_str) == Some("edge")
                    })
            })
        })
        .flat_map(|r| r.ports.iter().flatten().filter_map(|p| p.port.clone()))
        .map(|p| format!("{p:?}"))
        .collect();
    edge_ports.sort();
    assert_eq!(
        edge_ports,
        ["Int(8000)", "Int(8000)", "Int(8501)"],
        "{rules:?}"
    );

    let m = models.get("x").await.expect("model");
    let endpoints = m.status.expect("status").external_endpoints;
    assert!(
        endpoints
            .iter()
            .any(|e| e == "https://api.example.com/ (Ingress x-api)"),
        "{endpoints:?}"
    );
    assert!(
        endpoints
            .iter()
            .any(|e| e.starts_with("https://chat.example.com/ (HTTPRoute")),
        "{endpoints:?}"
    );

    // NodePort instead: Kubernetes assigns the port and the status shows it.
    models
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"expose": {"service": {"type": "NodePort", "ports": ["Web"]}}}}),
            ),
        )
        .await
        .expect("patch to NodePort");
    await_condition(
        models.clone(),
        "x",
        "a NodePort in the status",
        WAIT,
        |m: Option<&SecureChatModel>| {
            m.and_then(|m| m.status.as_ref()).is_some_and(|s| {
                s.external_endpoints
                    .iter()
                    .any(|e| e.starts_with("NodePort 3"))
            })
        },
    )
    .await;

    // Exposure removed: everything it made goes.
    models
        .patch(
            "x",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"expose": null}})),
        )
        .await
        .expect("remove expose");
    wait_for("exposure objects deleted", WAIT, || {
        let services = services.clone();
        let ingresses = Api::<Ingress>::namespaced(client.clone(), &ns.name);
        let pools = dynamic(
            "inference.networking.k8s.io",
            "InferencePool",
            "inferencepools",
        );
        async move {
            let gone = services.get_opt("x-external").await.expect("get").is_none()
                && ingresses.get_opt("x-api").await.expect("get").is_none()
                && pools.get_opt("x").await.expect("get").is_none();
            gone.then_some(())
        }
    })
    .await;
}

/// A kind whose API group no cluster has: the API server answers a
/// plain-text 404 for it, not a NotFound Status.
#[derive(kube::CustomResource, serde::Serialize, serde::Deserialize, Clone, Debug)]
#[kube(
    group = "never-installed.securechat.dev",
    version = "v1",
    kind = "NeverInstalled",
    namespaced,
    schema = "disabled"
)]
struct NeverInstalledSpec {}

/// Removing what a model does not ask for (a KEDA ScaledObject, Gateway
/// API routes) when the kind's CRDs are not installed finds nothing to
/// remove instead of failing the reconcile (on the real node, without
/// KEDA or Gateway API, every model with `autoscaling` or `expose` failed
/// each reconcile before writing its status).
#[tokio::test]
async fn removing_a_kind_the_cluster_does_not_have_is_a_no_op() {
    let kube = client().await;
    let owner = model("m", json!({}));
    let mut writer = securechat_operator::apply::Writer::new(kube);
    writer
        .delete_if_present::<NeverInstalled, _>(&owner, "default", "m")
        .await
        .expect("nothing to delete");
    assert!(writer.changes.is_empty());
}
