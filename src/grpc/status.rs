//! The single mapping from the domain error to a gRPC status, with standard error details
//! (BadRequest field violations, RetryInfo).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::{Error, MESSAGE_CHARS, cap};

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let message = cap(&err.to_string(), MESSAGE_CHARS).into_owned();
        match err {
            Error::InvalidArgument { field, message: description } => {
                let (field, description) = (cap(&field, MESSAGE_CHARS), cap(&description, MESSAGE_CHARS));
                let details = ErrorDetails::with_bad_request_violation(field, description);
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::ResourceExhausted { .. } => {
                let details = ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(1)));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Error::RateLimited { retry_after, .. } => {
                let details = ErrorDetails::with_retry_info(Some(retry_after));
                Status::with_error_details(Code::ResourceExhausted, message, details)
            }
            Error::DeadlineExceeded(_) => Status::deadline_exceeded(message),
            Error::Aborted(_) => Status::aborted(message),
            Error::NotFound(_) => Status::not_found(message),
            Error::AlreadyExists(_) => Status::already_exists(message),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::Unavailable | Error::BackendUnavailable(_) => Status::unavailable(message),
            Error::Storage(_) | Error::Internal(_) => {
                tracing::error!(error = %message, "request failed");
                Status::internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_capped() {
        let long = "é".repeat(1_000_000);
        let status = Status::from(Error::NotFound(format!("user {long} not found")));
        assert_eq!(status.message().chars().count(), MESSAGE_CHARS + 1);
        let status = Status::from(Error::invalid(long.clone(), long));
        assert!(status.message().chars().count() <= MESSAGE_CHARS + 1);
        assert!(status.into_http::<()>().headers().iter().map(|(_, v)| v.len()).sum::<usize>() < 16 * 1024);
    }
}
