//! The controller library's error type.

/// Errors of reconcilers and requests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A JSON document could not be built or read.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// An object lacks a field the apiserver always sets (name, namespace, uid).
    #[error("object is missing {0}")]
    MissingField(&'static str),
    /// A spec the launcher cannot run.
    #[error("invalid spec: {0}")]
    Invalid(#[from] crate::validation::ValidationError),
    /// A user request that does not apply to the object's state.
    #[error("{0}")]
    Request(String),
    /// A launcher could not be reached through its pod, or refused a request.
    #[error("launcher: {0}")]
    Launcher(String),
    /// A local console or VNC listener failed.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// A controller stream ended with an error.
    #[error("controller {0} stopped: {1}")]
    Controller(&'static str, String),
}

impl Error {
    /// Whether this is an HTTP 404 from the apiserver.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Kube(kube::Error::Api(s)) if s.code == 404)
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Maps a 404 to `None`.
pub fn optional<T>(r: std::result::Result<T, kube::Error>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}
