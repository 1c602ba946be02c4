//! Least privilege, proven (issue 6/8): `helm install` the chart into the
//! local control plane, then run the operator authenticated as the chart's
//! ServiceAccount (a token from the TokenRequest API, not the admin
//! certificate) through the main scenario of 4/8 and 5/8: the seed example
//! becomes Ready, a ChatApiKey from another namespace is minted, leader
//! election takes the Lease. Then `kubectl auth can-i` checks what the
//! account must NOT be able to do.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{TestNamespace, await_condition, client, kubeconfig_path, kubectl, wait_for};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use securechat_crds::v1alpha1::{ChatApiKey, KeyPhase, SecureChatModel};
use securechat_operator::controller::{self, Context};
use securechat_operator::key_controller;
use securechat_operator::leader::{LeaderElector, LeaseConfig};
use securechat_operator::metrics::Metrics;

fn helm(args: &[&str]) -> String {
    let out = Command::new(common::tool("helm"))
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A client that authenticates with `token` only.
async fn client_with_token(token: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("kubeconfig");
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("config");
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(config).expect("token client")
}

#[tokio::test]
async fn the_operator_runs_the_main_scenario_with_only_the_charts_permissions() {
    let admin = client().await;
    let system = TestNamespace::create(&admin, "lp-system").await;
    let models_ns = TestNamespace::create(&admin, "lp-chat").await;
    let apps = TestNamespace::create(&admin, "lp-apps").await;
    let release = format!("sc{}", &system.name[system.name.len() - 6..]);
    let chart = common::repo_root().join("charts/securechat");
    let watch = format!("watchNamespaces={{{},{}}}", models_ns.name, apps.name);
    helm(&[
        "install",
        &release,
        chart.to_str().unwrap(),
        "-n",
        &system.name,
        "--set",
        &watch,
        "--set",
        "operator.replicas=0",
        "--wait=false",
    ]);
    struct Uninstall(String, String);
    impl Drop for Uninstall {
        fn drop(&mut self) {
            let _ = Command::new(common::tool("helm"))
                .arg("--kubeconfig")
                .arg(kubeconfig_path())
                .args(["uninstall", &self.0, "-n", &self.1])
                .output();
        }
    }
    let _uninstall = Uninstall(release.clone(), system.name.clone());

    // The chart's ServiceAccount and a short-lived token for it.
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), &system.name);
    let account = accounts
        .list(&ListParams::default())
        .await
        .expect("service accounts")
        .items
        .into_iter()
        .find(|sa| sa.name_any() != "default")
        .expect("the chart's ServiceAccount")
        .name_any();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .and_then(|s| s.token)
        .expect("token");
    let client = client_with_token(&token).await;
    // The API server sees the ServiceAccount, not the admin.
    let review = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .expect("SelfSubjectReview");
    let username = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(
        username,
        Some(format!("system:serviceaccount:{}:{account}", system.name))
    );

    // Leader election in the release namespace, then both controllers.
    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig {
            // The chart names the Lease like the operator's account.
            name: account.clone(),
            namespace: system.name.clone(),
            identity: "least-privilege-test".into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(1),
        },
    );
    tokio::time::timeout(Duration::from_secs(30), elector.acquire())
        .await
        .expect("lease acquired in time")
        .expect("lease");
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(Context::new(
        client.clone(),
        "securechat/server:test".into(),
        metrics.clone(),
    ));
    let watched = vec![models_ns.name.clone(), apps.name.clone()];
    let (s1, s2, w1, w2) = (state.clone(), state, watched.clone(), watched);
    let models_task = tokio::spawn(async move { controller::run(s1, &w1).await });
    let keys_task = tokio::spawn(async move { key_controller::run(s2, &w2).await });

    // The seed example (allowing the apps namespace) and its ChatApiKey,
    // applied by the admin as a platform team would.
    let mut model = common::example_doc(
        "examples/chatglm3-secure.yaml",
        "SecureChatModel",
        &models_ns.name,
    );
    model["spec"]["auth"]["apiKeys"]["allowedNamespaces"] =
        serde_yaml::Value::Sequence(vec![apps.name.clone().into()]);
    let model: SecureChatModel = serde_yaml::from_value(model).expect("model");
    let models: Api<SecureChatModel> = Api::namespaced(admin.clone(), &models_ns.name);
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create model");
    let mut key = common::example_doc("examples/chat-apps-key.yaml", "ChatApiKey", &apps.name);
    key["spec"]["modelRef"]["namespace"] = models_ns.name.clone().into();
    let key: ChatApiKey = serde_yaml::from_value(key).expect("key");
    let keys: Api<ChatApiKey> = Api::namespaced(admin.clone(), &apps.name);
    keys.create(&PostParams::default(), &key)
        .await
        .expect("create key");

    await_condition(
        models.clone(),
        &model.name_any(),
        "Ready=True as the ServiceAccount",
        Duration::from_secs(120),
        |m: Option<&SecureChatModel>| {
            m.and_then(|m| m.status.as_ref()).is_some_and(|s| {
                securechat_crds::conditions::condition_status(&s.conditions, "Ready")
                    == Some("True")
            })
        },
    )
    .await;
    await_condition(
        keys.clone(),
        &key.name_any(),
        "the key Active as the ServiceAccount",
        Duration::from_secs(60),
        |k: Option<&ChatApiKey>| {
            k.and_then(|k| k.status.as_ref()).and_then(|s| s.phase) == Some(KeyPhase::Active)
        },
    )
    .await;
    let secret_name = key.spec.secret_name.clone().unwrap();
    wait_for("the consumer Secret", Duration::from_secs(30), || {
        let secrets: Api<Secret> = Api::namespaced(admin.clone(), &apps.name);
        let name = secret_name.clone();
        async move { secrets.get_opt(&name).await.ok().flatten() }
    })
    .await;
    assert_eq!(
        common::kubectl_ok(&[
            "-n",
            &system.name,
            "get",
            "lease",
            &account,
            "-o",
            "jsonpath={.spec.holderIdentity}"
        ]),
        "least-privilege-test"
    );
    assert!(
        !metrics.render().contains("result=\"error\""),
        "no reconcile failed for lack of permissions:\n{}",
        metrics.render()
    );

    // What the account must not be able to do.
    let who = format!("--as=system:serviceaccount:{}:{account}", system.name);
    let can = |args: &[&str]| {
        let mut full = vec!["auth", "can-i", who.as_str()];
        full.extend(args);
        kubectl(&full).1.trim() == "yes"
    };
    assert!(
        can(&["get", "secrets", "-n", &models_ns.name]),
        "it needs its models' Secrets"
    );
    for denied in [
        vec!["get", "secrets", "-n", "kube-system"],
        vec!["list", "secrets", "--all-namespaces"],
        vec!["create", "clusterroles"],
        vec!["create", "clusterrolebindings"],
        vec![
            "create",
            "pods",
            "--subresource=exec",
            "-n",
            &models_ns.name,
        ],
        vec!["create", "pods", "-n", &models_ns.name],
        vec!["delete", "nodes"],
        vec!["update", "customresourcedefinitions"],
        vec![
            "create",
            "serviceaccounts",
            "--subresource=token",
            "-n",
            &models_ns.name,
        ],
        vec!["impersonate", "users"],
        vec!["escalate", "roles", "-n", &models_ns.name],
        vec!["*", "*"],
    ] {
        assert!(!can(&denied), "the operator's account must not: {denied:?}");
    }
    models_task.abort();
    keys_task.abort();
}
