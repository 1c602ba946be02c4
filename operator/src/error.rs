//! The operator's one error type: what a reconcile can fail on, counted by
//! kind, and which failures are the API server refusing an object (shown in
//! the status) rather than worth a blind retry.

use thiserror::Error;

/// Everything a reconcile can fail on. Each variant has a metric label, so
/// failures are counted by kind, and decides how soon to retry.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),

    #[error("cannot render {what}: {message}")]
    Render { what: &'static str, message: String },

    /// An object of the name the operator would write exists and is not
    /// controlled by the resource it would be written for (see `apply`).
    #[error(
        "{kind} {namespace}/{name} exists and was not created by the operator for this resource; it is left untouched"
    )]
    NotOwned {
        kind: String,
        namespace: String,
        name: String,
    },

    #[error("resource has no {0}")]
    MissingField(&'static str),

    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// HTTP codes with which the API server refuses a write for what it is
/// (400 Bad Request, 403 Forbidden: RBAC or an admission webhook, 422
/// Invalid): the same object sent again is refused again. A conflict (409),
/// throttling (429) or a server error (5xx) is worth a retry instead.
const REFUSED_WRITE_CODES: [u16; 3] = [400, 403, 422];

impl Error {
    /// The API server's message when it refused a write for what it is,
    /// so the resource's status can say why instead of retrying blindly.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Error::Kube(kube::Error::Api(status)) if REFUSED_WRITE_CODES.contains(&status.code) => {
                Some(&status.message)
            }
            _ => None,
        }
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube_api",
            Error::Render { .. } => "render",
            Error::NotOwned { .. } => "not_owned",
            Error::MissingField(_) => "missing_field",
            Error::Finalizer(_) => "finalizer",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16) -> Error {
        Error::Kube(kube::Error::Api(
            Status::failure("Deployment.apps \"m\" is invalid", "Invalid")
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn a_write_refused_for_what_it_is_is_a_refusal_not_a_retry() {
        for code in [400, 403, 422] {
            assert_eq!(
                api(code).refusal(),
                Some("Deployment.apps \"m\" is invalid"),
                "{code}"
            );
        }
        for code in [404, 409, 429, 500, 503] {
            assert_eq!(api(code).refusal(), None, "{code}");
        }
        assert_eq!(Error::MissingField("metadata.name").refusal(), None);
    }
}
