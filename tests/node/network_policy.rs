//! The model's NetworkPolicy, enforced by kube-router on the real node and
//! measured as a matrix of real TCP connections between pods: from a pod
//! whose address is inside a rule's CIDR, one outside it, and one in a
//! namespace a rule allows, to the server's API and web ports; and egress
//! from a pod the policy selects to an address an egress rule allows and to
//! one it does not. Every cell must be as the SecureChatModel says, and one
//! unselected pair shows that what is blocked is the policy, not the
//! network. DNS through the cluster's CoreDNS passes the policy's egress
//! rule for it, over UDP (a lookup) and TCP (a connection to port 53 of
//! the DNS pod, whose other ports stay closed).

use std::time::Duration;

use kube::api::Api;
use securechat_test_support::cluster::node::{Node, connects, resolves};
use securechat_test_support::cluster::{
    InProcessOperator, TestNamespace, client, install_crds, wait_for,
};
use serde_json::json;

use crate::{create_cpu_model, ready_pod};

const SLEEP: &[&str] = &["/bin/sleep", "3600"];
const HTTPD: &[&str] = &["/bin/httpd", "-f", "-p", "9000", "-h", "/tmp"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_network_rules_hold_for_real_connections() {
    let kube = client().await;
    let node = Node::get();
    let _turn = node.take_turn().await;
    install_crds();
    let ns = TestNamespace::create(&kube, "node-np").await;
    let neighbours = TestNamespace::create(&kube, "node-np-b").await;
    let _operator =
        InProcessOperator::start(&ns.name, &format!("securechat-test/{}", ns.name)).await;

    let ip = |pod: &k8s_openapi::api::core::v1::Pod| {
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("pod IP")
    };
    let none = json!({"role": "client"});
    let inside = ip(&node
        .client_pod(&kube, &ns.name, "inside", none.clone(), SLEEP)
        .await);
    node.client_pod(&kube, &ns.name, "outside", none.clone(), SLEEP)
        .await;
    node.client_pod(&kube, &neighbours.name, "neighbour", none.clone(), SLEEP)
        .await;
    let allowed_target = ip(&node
        .client_pod(&kube, &ns.name, "allowed-target", none.clone(), HTTPD)
        .await);
    let other_target = ip(&node
        .client_pod(&kube, &ns.name, "other-target", none.clone(), HTTPD)
        .await);
    // A pod with the model's selector labels: the policy applies to it as
    // to the server, and unlike the server image it has a shell to connect
    // from. (No pod-template-hash label: the ReplicaSet does not adopt it.)
    let selector = securechat_operator::labels::selector("m");
    node.client_pod(&kube, &ns.name, "twin", json!(selector), SLEEP)
        .await;

    let spec = json!({
        "replicas": 1,
        "network": {
            "ingress": [
                {"port": 8000, "from": [format!("{inside}/32")], "description": "one client"},
                {"port": 8501, "fromNamespaces": {"matchLabels": {
                    "kubernetes.io/metadata.name": neighbours.name}}}
            ],
            "egress": [{"port": 9000, "to": [format!("{allowed_target}/32")]}]
        }
    });
    create_cpu_model(&kube, &node, &ns.name, "m", spec).await;
    let server = ready_pod(&kube, &ns.name, "m").await;
    let server = server.status.and_then(|s| s.pod_ip).expect("server pod IP");
    // The cluster DNS pod: the policy's DNS rule opens its port 53 (UDP
    // and TCP, for answers too large for UDP) and nothing else of it.
    let dns = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(kube.clone(), "kube-system")
        .list(&kube::api::ListParams::default().labels("k8s-app=kube-dns"))
        .await
        .expect("list the DNS pods")
        .items
        .into_iter()
        .find_map(|p| p.status?.pod_ip)
        .expect("a CoreDNS pod with an IP (make node-up)");

    // (from namespace, from pod, to address, port, allowed?)
    let matrix = [
        (&ns.name, "inside", server.as_str(), 8000, true),
        (&ns.name, "inside", server.as_str(), 8501, false),
        (&ns.name, "outside", server.as_str(), 8000, false),
        (&ns.name, "outside", server.as_str(), 8501, false),
        (&neighbours.name, "neighbour", server.as_str(), 8000, false),
        (&neighbours.name, "neighbour", server.as_str(), 8501, true),
        (&ns.name, "twin", allowed_target.as_str(), 9000, true),
        (&ns.name, "twin", other_target.as_str(), 9000, false),
        // DNS over TCP to the resolver's pod; its health port stays closed.
        (&ns.name, "twin", dns.as_str(), 53, true),
        (&ns.name, "twin", dns.as_str(), 8080, false),
        // Control: pods the policy does not select reach each other.
        (&ns.name, "outside", other_target.as_str(), 9000, true),
    ];
    // The policy takes effect when kube-router next syncs: wait for one
    // cell that it blocks to be blocked, then measure every cell once.
    wait_for(
        "kube-router to enforce the model's policy",
        Duration::from_secs(60),
        || async { (!connects(&ns.name, "outside", &server, 8000)).then_some(()) },
    )
    .await;
    let measured: Vec<_> = matrix
        .iter()
        .map(|&(from_ns, from, to, port, want)| {
            let got = connects(from_ns, from, to, port);
            (from, to, port, want, got)
        })
        .collect();
    let table: String = measured
        .iter()
        .map(|(from, to, port, want, got)| {
            let verdict = |b: &bool| if *b { "allowed" } else { "blocked" };
            format!(
                "{from:>10} -> {to}:{port:<5} want {:7} got {:7}{}\n",
                verdict(want),
                verdict(got),
                if want == got { "" } else { "  <-- wrong" }
            )
        })
        .collect();
    println!("{table}");
    assert!(
        measured.iter().all(|(_, _, _, want, got)| want == got),
        "the policy does not hold:\n{table}"
    );

    // DNS over UDP (busybox nslookup): the policy's egress rule to kube-dns
    // lets the selected pod resolve the model's Service name through the
    // cluster DNS, as an unselected pod does.
    let name = format!("m.{}.svc.{}", ns.name, node.cluster_domain);
    assert!(
        resolves(&ns.name, "outside", &name),
        "{name} from an unselected pod"
    );
    assert!(
        resolves(&ns.name, "twin", &name),
        "{name} under the model's policy"
    );
}
