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

impl Error {
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
