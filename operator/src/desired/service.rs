//! The model's Service: one ClusterIP with the API and web ports.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Input;
use crate::labels::{self, Names};

/// One ClusterIP Service with the API and web ports, both HTTPS.
pub fn service(input: &Input) -> Service {
    let ports = &input.model.spec.ports;
    let port = |name: &str, number: i32| ServicePort {
        name: Some(name.to_string()),
        port: number,
        target_port: Some(IntOrString::String(name.to_string())),
        protocol: Some("TCP".into()),
        app_protocol: Some("https".into()),
        ..Default::default()
    };
    Service {
        metadata: input.metadata(Names::service(&input.name)),
        spec: Some(ServiceSpec {
            selector: Some(labels::selector(&input.name)),
            ports: Some(vec![port("api", ports.api), port("web", ports.web)]),
            type_: Some("ClusterIP".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::test_support::model;

    #[test]
    fn exposes_both_ports_by_name() {
        let m = model(
            "chat",
            serde_json::json!({"ports": {"api": 9000, "web": 9443}}),
        );
        let svc = service(&Input::new(&m, "img").expect("input"));
        let ports = svc.spec.expect("spec").ports.expect("ports");
        let pairs: Vec<_> = ports
            .iter()
            .map(|p| (p.name.clone().unwrap_or_default(), p.port))
            .collect();
        assert_eq!(
            pairs,
            [("api".to_string(), 9000), ("web".to_string(), 9443)]
        );
        assert!(
            ports
                .iter()
                .all(|p| p.app_protocol.as_deref() == Some("https"))
        );
    }
}
