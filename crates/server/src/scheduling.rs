//! A request's priority and timeout: from its body (`priority`,
//! `timeout`) or, when the body says nothing, its headers (`X-Priority`,
//! `X-Request-Timeout`). The priority orders the engine's queue; the
//! timeout bounds the whole request (queueing and running): a request not
//! started by then never runs, one still running is cancelled, and the
//! client gets 504.

use std::time::Duration;

use axum::http::HeaderMap;
use serde::Deserialize;
use switchyard::Request;
use switchyard::core::Priority;
use tokio::time::Instant;

use crate::error::ApiError;

/// The header naming a priority (`urgent`, `high`, `normal`, `low`).
pub const PRIORITY_HEADER: &str = "x-priority";
/// The header giving a timeout in seconds.
pub const TIMEOUT_HEADER: &str = "x-request-timeout";
/// The longest timeout a request may ask for, in seconds.
pub const MAX_TIMEOUT_SECS: f64 = 24.0 * 3600.0;

/// The scheduling fields every request body may carry.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, utoipa::ToSchema)]
pub struct SchedulingFields {
    /// `urgent`, `high`, `normal` or `low`.
    #[serde(default)]
    pub priority: Option<String>,
    /// Seconds the whole request may take.
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// A request's resolved priority and deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scheduling {
    /// `None`: the model's default.
    pub priority: Option<Priority>,
    /// How long the request may take, and when that ends.
    pub timeout: Option<(Duration, Instant)>,
}

impl Scheduling {
    /// Reads `fields` over `headers`.
    ///
    /// # Errors
    /// 400 for an unknown priority or a timeout that is not a positive
    /// number of seconds up to [`MAX_TIMEOUT_SECS`].
    pub fn resolve(headers: &HeaderMap, fields: &SchedulingFields) -> Result<Self, ApiError> {
        let header = |name: &str| -> Result<Option<String>, ApiError> {
            headers
                .get(name)
                .map(|v| {
                    v.to_str()
                        .map(str::to_owned)
                        .map_err(|_| ApiError::invalid(name, format!("{name} is not text")))
                })
                .transpose()
        };
        let priority = match fields.priority.clone().or(header(PRIORITY_HEADER)?) {
            None => None,
            Some(p) => Some(
                p.parse::<Priority>()
                    .map_err(|e| ApiError::invalid("priority", e.to_string()))?,
            ),
        };
        let seconds = match fields.timeout {
            Some(s) => Some(s),
            None => header(TIMEOUT_HEADER)?
                .map(|s| {
                    s.trim().parse::<f64>().map_err(|_| {
                        ApiError::invalid(
                            "timeout",
                            format!("timeout `{s}` is not a number of seconds"),
                        )
                    })
                })
                .transpose()?,
        };
        let timeout = match seconds {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_SECS => {
                let d = Duration::from_secs_f64(s);
                Some((d, Instant::now() + d))
            }
            Some(s) => {
                return Err(ApiError::invalid(
                    "timeout",
                    format!("timeout is {s}; give seconds above 0 and up to {MAX_TIMEOUT_SECS}"),
                ));
            }
        };
        Ok(Self { priority, timeout })
    }

    /// `request` with this priority and (queue) timeout.
    pub fn apply(&self, mut request: Request) -> Request {
        if let Some(p) = self.priority {
            request = request.with_priority(p);
        }
        if let Some((d, _)) = self.timeout {
            request = request.with_timeout(d);
        }
        request
    }

    /// When the request must be over, if ever.
    pub fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|(_, at)| at)
    }
}

/// The 504 a request past its deadline gets.
pub(crate) fn timed_out() -> ApiError {
    ApiError::from(switchyard::EngineError::TimedOut)
}

/// Awaits `work` until `deadline` (forever without one); past it the work
/// is dropped (which cancels its engine requests) and the answer is 504.
pub(crate) async fn within<T>(
    deadline: Option<Instant>,
    work: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    match deadline {
        None => work.await,
        Some(at) => tokio::time::timeout_at(at, work)
            .await
            .unwrap_or_else(|_| Err(timed_out())),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_body_wins_over_the_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(PRIORITY_HEADER, HeaderValue::from_static("low"));
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static(" 2.5 "));
        let from_headers = Scheduling::resolve(&headers, &SchedulingFields::default());
        let from_headers = from_headers.ok().unwrap_or_default();
        assert_eq!(from_headers.priority, Some(Priority::Low));
        assert_eq!(
            from_headers.timeout.map(|t| t.0),
            Some(Duration::from_millis(2500))
        );
        let fields = SchedulingFields {
            priority: Some("Urgent".into()),
            timeout: Some(1.0),
        };
        let both = Scheduling::resolve(&headers, &fields)
            .ok()
            .unwrap_or_default();
        assert_eq!(both.priority, Some(Priority::Urgent));
        assert_eq!(both.timeout.map(|t| t.0), Some(Duration::from_secs(1)));
    }

    #[test]
    fn bad_priorities_and_timeouts_are_400() {
        let none = HeaderMap::new();
        for (priority, timeout, param) in [
            (Some("soon"), None, "priority"),
            (None, Some(0.0), "timeout"),
            (None, Some(-1.0), "timeout"),
            (None, Some(f64::INFINITY), "timeout"),
            (None, Some(1e12), "timeout"),
        ] {
            let fields = SchedulingFields {
                priority: priority.map(str::to_owned),
                timeout,
            };
            let err = Scheduling::resolve(&none, &fields).err();
            assert_eq!(err.and_then(|e| e.param), Some(param.to_owned()));
        }
        let mut headers = HeaderMap::new();
        headers.insert(TIMEOUT_HEADER, HeaderValue::from_static("soon"));
        assert!(Scheduling::resolve(&headers, &SchedulingFields::default()).is_err());
    }
}
