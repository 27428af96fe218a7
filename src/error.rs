//! The domain error: one enum for every layer below the adapter, which maps it to a gRPC
//! status in one place (`grpc::status`).

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A request field is malformed; `field` is its path in the request, e.g. `events[3].name`.
    #[error("{field}: {message}")]
    InvalidArgument { field: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// A configured limit was exceeded; `field` names what is limited.
    #[error("{field}: {message}")]
    ResourceExhausted { field: String, message: String },
    /// A rate limit was hit; the client may retry after `retry_after`.
    #[error("{message}")]
    RateLimited { message: String, retry_after: std::time::Duration },
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The call raced with a change that invalidated it (e.g. an export during a deletion).
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("shutting down")]
    Unavailable,
    /// A backend this server needs (a ClickHouse shard) cannot be reached: retry later.
    #[error("{0}")]
    BackendUnavailable(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), message: message.into() }
    }

    pub fn exhausted(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::ResourceExhausted { field: field.into(), message: message.into() }
    }

    /// Places a field error under `parent`: field `x` becomes `parent.x`, an empty field
    /// becomes `parent`. Lets hot paths build field paths only when something fails.
    pub fn under(self, parent: &str) -> Self {
        match self {
            Error::InvalidArgument { field, message } if field.is_empty() => Error::invalid(parent, message),
            Error::InvalidArgument { field, message } => Error::invalid(format!("{parent}.{field}"), message),
            Error::ResourceExhausted { field, message } => Error::exhausted(format!("{parent}.{field}"), message),
            other => other,
        }
    }

    /// The canonical gRPC code name, used for per-item errors inside batch replies.
    pub fn code_name(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Error::NotFound(_) => "NOT_FOUND",
            Error::AlreadyExists(_) => "ALREADY_EXISTS",
            Error::FailedPrecondition(_) => "FAILED_PRECONDITION",
            Error::ResourceExhausted { .. } | Error::RateLimited { .. } => "RESOURCE_EXHAUSTED",
            Error::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
            Error::Aborted(_) => "ABORTED",
            Error::Unauthenticated(_) => "UNAUTHENTICATED",
            Error::PermissionDenied(_) => "PERMISSION_DENIED",
            Error::Unavailable | Error::BackendUnavailable(_) => "UNAVAILABLE",
            Error::Storage(_) | Error::Internal(_) => "INTERNAL",
        }
    }
}

/// Characters of a request value echoed in an error message.
pub const ECHO_CHARS: usize = 64;
/// Characters of a whole error message (and of a field path in its details): a backstop so no
/// reply carries an oversized `grpc-message` header, whatever a message echoes.
pub const MESSAGE_CHARS: usize = 1_024;

/// The first `max` characters of `text`, with "…" when cut.
pub fn cap(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => text.into(),
        Some((end, _)) => format!("{}…", &text[..end]).into(),
    }
}

/// A request value as error messages quote it: `{:?}` of its first 64 characters (plus "…").
/// Every message that repeats what the client sent goes through this.
pub fn echo(value: &str) -> String {
    format!("{:?}", cap(value, ECHO_CHARS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoes_are_capped() {
        assert_eq!(echo("abc"), "\"abc\"");
        let long = "é".repeat(1_000_000);
        assert_eq!(echo(&long), format!("\"{}…\"", "é".repeat(ECHO_CHARS)));
    }
}
