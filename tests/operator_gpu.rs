//! GPU models against the real control plane (issue 24): their pods run the
//! CUDA server image and must use their GPU; a model that cannot fit the
//! card its spec names is refused before any pod (InsufficientGpuMemory);
//! a pod whose server found no GPU is reported (GpuUnavailable).
//!
//! Reasons are compared as literals: they are API (alerts and scripts
//! match on them), so a renamed constant must fail here.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use securechat_crds::SecureChatModel;
use securechat_crds::files::names::GPU_UNAVAILABLE_MESSAGE;
use securechat_operator::labels::{MODEL_LABEL, Names};
use securechat_test_support::cluster::models::warning;
use securechat_test_support::cluster::{
    InProcessOperator, OPERATOR_SERVER_IMAGE, TestNamespace, await_condition, client, install_crds,
    wait_for,
};
use serde_json::json;

/// A namespace for one test, the operator scoped to it, and its models.
struct Setup {
    client: Client,
    ns: TestNamespace,
    _operator: InProcessOperator,
    models: Api<SecureChatModel>,
}

async fn start(prefix: &str) -> Setup {
    let client = client().await;
    install_crds();
    let ns = TestNamespace::create(&client, prefix).await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;
    let models = Api::namespaced(client.clone(), &ns.name);
    Setup {
        client,
        ns,
        _operator,
        models,
    }
}

async fn create(models: &Api<SecureChatModel>, name: &str, spec: serde_json::Value) {
    let model: SecureChatModel = serde_json::from_value(json!({
        "apiVersion": "securechat.dev/v1alpha1", "kind": "SecureChatModel",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("model");
    models
        .create(&PostParams::default(), &model)
        .await
        .expect("create the model");
}

/// The Ready condition's (status, reason, message), once `reason` is it.
async fn await_ready_reason(models: &Api<SecureChatModel>, name: &str, reason: &str) -> String {
    let ready = |m: Option<&SecureChatModel>| {
        m?.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .cloned()
    };
    let model = await_condition(
        models.clone(),
        name,
        &format!("Ready=False/{reason}"),
        Duration::from_secs(90),
        |m: Option<&SecureChatModel>| {
            ready(m).is_some_and(|c| c.status == "False" && c.reason == reason)
        },
    )
    .await;
    ready(Some(&model)).expect("Ready").message
}

/// The model's Deployment's server container, once there is one.
async fn server_container(
    client: &Client,
    namespace: &str,
    model: &str,
) -> k8s_openapi::api::core::v1::Container {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let name = Names::deployment(model);
    wait_for(
        &format!("the Deployment {name}"),
        Duration::from_secs(60),
        || {
            let (deployments, name) = (deployments.clone(), name.clone());
            async move {
                let d = deployments.get_opt(&name).await.ok()??;
                d.spec.template.spec?.containers.into_iter().next()
            }
        },
    )
    .await
}

#[tokio::test]
async fn gpu_models_run_the_cuda_image_on_their_gpu_and_cpu_models_the_default() {
    // Bound whole: the operator runs as long as the setup lives.
    let setup = start("gpu-image").await;
    let Setup {
        client, ns, models, ..
    } = &setup;
    let a100 = json!({"gpu": {"count": 1, "product": "NVIDIA-A100-SXM4-80GB"}});
    create(models, "gpu", json!({"resources": a100})).await;
    create(models, "cpu", json!({})).await;
    create(
        models,
        "own",
        json!({"image": "registry.example/server:mine", "resources": a100}),
    )
    .await;

    let gpu = server_container(client, &ns.name, "gpu").await;
    // The operator's default image (`securechat/server:test`) with the
    // `-cuda` tag suffix `make images` gives the CUDA build.
    assert_eq!(gpu.image.as_deref(), Some("securechat/server:test-cuda"));
    let args = gpu.args.clone().expect("args");
    assert!(
        args.windows(2).any(|w| w == ["--device", "cuda"]),
        "{args:?}"
    );
    let env = gpu.env.clone().unwrap_or_default();
    assert!(
        env.iter().any(|e| e.name == "NVIDIA_DRIVER_CAPABILITIES"
            && e.value.as_deref() == Some("compute,utility")),
        "{env:?}"
    );
    assert!(!env.iter().any(|e| e.name == "NVIDIA_VISIBLE_DEVICES"));
    assert_eq!(
        gpu.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError")
    );

    let cpu = server_container(client, &ns.name, "cpu").await;
    assert_eq!(cpu.image.as_deref(), Some(OPERATOR_SERVER_IMAGE));
    assert!(!cpu.args.expect("args").iter().any(|a| a == "--device"));

    let own = server_container(client, &ns.name, "own").await;
    assert_eq!(own.image.as_deref(), Some("registry.example/server:mine"));
}

#[tokio::test]
async fn a_6b_half_precision_model_is_refused_on_a_16gb_card_and_deployed_on_an_h100() {
    let setup = start("gpu-memory").await;
    let Setup {
        client, ns, models, ..
    } = &setup;
    let chatglm = json!({"family": "ChatGLM3",
        "source": {"huggingFace": {"repo": "THUDM/chatglm3-6b"}}});
    create(
        models,
        "t4",
        json!({"model": chatglm,
               "resources": {"gpu": {"count": 1, "product": "Tesla-T4"}}}),
    )
    .await;
    create(
        models,
        "h100",
        json!({"model": chatglm,
               "resources": {"gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}}}),
    )
    .await;

    let message = await_ready_reason(models, "t4", "InsufficientGpuMemory").await;
    assert!(
        message.contains("Tesla-T4") && message.contains("15.4 GiB"),
        "{message}"
    );
    let note = warning(client, &ns.name, "t4", "InsufficientGpuMemory").await;
    assert!(note.contains("Tesla-T4"), "{note}");
    // Stalled for kstatus: a GitOps apply waiting on it fails now.
    let t4 = models.get("t4").await.expect("t4");
    let stalled = t4
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled"))
        .expect("Stalled");
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "InsufficientGpuMemory")
    );

    // The H100 model gets its Deployment; by then the refused one has
    // been reconciled past the check too, and has none.
    let h100 = server_container(client, &ns.name, "h100").await;
    assert!(h100.args.expect("args").iter().any(|a| a == "cuda"));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments
            .get_opt(&Names::deployment("t4"))
            .await
            .expect("get")
            .is_none(),
        "no pods for a model that cannot fit its card"
    );
    let h100 = models.get("h100").await.expect("h100");
    let reasons: Vec<&str> = h100
        .status
        .iter()
        .flat_map(|s| s.conditions.iter())
        .map(|c| c.reason.as_str())
        .collect();
    assert!(!reasons.contains(&"InsufficientGpuMemory"), "{reasons:?}");
}

#[tokio::test]
async fn a_gpu_pod_whose_server_found_no_gpu_is_reported_as_gpu_unavailable() {
    let setup = start("gpu-missing").await;
    let Setup {
        client, ns, models, ..
    } = &setup;
    // An L4 no node has: the model's own pods stay Pending.
    create(
        models,
        "chat",
        json!({"resources": {"gpu": {"count": 1, "product": "NVIDIA-L4"}}}),
    )
    .await;
    // A pod of the model whose server exited as a GPU pod without a GPU
    // does (the kubelet's part played by a status write): held out of the
    // scheduler by a gate, so no kubelet (kwok) rewrites its status.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "chat-crashed", "labels": {MODEL_LABEL: "chat"}},
        "spec": {
            "schedulingGates": [{"name": "securechat.dev/test"}],
            "containers": [{"name": "server", "image": "securechat/server:0.1.0-cuda"}]
        }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");
    let exit = format!(
        "Error: --device cuda:0: {GPU_UNAVAILABLE_MESSAGE}: CUDA_ERROR_NO_DEVICE, no CUDA-capable device is detected"
    );
    pods.patch_status(
        "chat-crashed",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"containerStatuses": [{
            "name": "server", "image": "securechat/server:0.1.0-cuda", "imageID": "",
            "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": exit}}
        }]}})),
    )
    .await
    .expect("write the pod's status");

    let message = await_ready_reason(models, "chat", "GpuUnavailable").await;
    assert!(message.contains(GPU_UNAVAILABLE_MESSAGE), "{message}");
    let note = warning(client, &ns.name, "chat", "GpuUnavailable").await;
    assert!(note.contains("CUDA_ERROR_NO_DEVICE"), "{note}");
}
