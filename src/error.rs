//! The one error type of the northbound API and its single mapping to HTTP status codes and
//! RFC 7807 `application/problem+json` bodies. Every error a caller can see is built here.

use std::fmt;

use serde::Serialize;

use crate::http::{PROBLEM_JSON, Response};
use crate::mep::MepError;
use crate::model::ApiStyle;

/// Everything that can go wrong with a northbound request. Each variant carries the input
/// that caused it, so its message says what to fix.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// No such route.
    NoRoute { path: String },
    /// Known route, wrong method; `allow` lists the methods it has.
    MethodNotAllowed { path: String, allow: &'static str },
    /// No request with this id.
    RequestNotFound { request_id: String },
    /// No region with this id (in the path).
    RegionNotFound { region_id: String },
    /// The body or query is malformed or invalid: `detail` names the field and the reason.
    BadRequest { detail: String },
    /// The `Content-Type` is not JSON.
    UnsupportedMediaType { content_type: String },
    /// The body is larger than `max_body_bytes`.
    PayloadTooLarge { limit: usize },
    /// The client did not send its body within the read bound.
    BodyTimeout,
    /// The client did not send its request head within the read bound.
    HeadTimeout,
    /// The request line alone exceeds `max_head_bytes`.
    UriTooLong { limit: usize },
    /// The head exceeds `max_head_bytes` or `max_headers` (or a chunked body's size lines or
    /// trailers do).
    HeadersTooLarge { detail: String },
    /// An `Expect` other than `100-continue`.
    ExpectationFailed { expect: String },
    /// An HTTP major version other than 1.
    VersionNotSupported,
    /// `max_connections` connections are open.
    TooManyConnections { limit: usize },
    /// The request bodies in memory would pass `max_body_memory_bytes` with this one.
    BodyMemoryFull { limit: usize },
    /// The creation request names a region this plugin does not manage.
    UnknownRegion { region_id: String },
    /// The region's platform cannot express a rule (checked before the platform is called).
    Unsupported {
        region_id: String,
        driver: &'static str,
        detail: String,
    },
    /// Another operation on this request is in progress.
    Conflict { request_id: String, detail: String },
    /// A DELETE of a request whose region is no longer configured while rules of it may be
    /// on that region's platform.
    RegionGone {
        request_id: String,
        region_id: String,
        /// The platform URL the rules were applied on (credentials masked), if recorded.
        platform: Option<String>,
    },
    /// A DELETE of a request whose rules may be on the platform `recorded` (credentials
    /// masked), on which they were applied, while its region is now configured with another
    /// URL, `current`: removing them there could find nothing and forget rules left on
    /// `recorded`. The record is unchanged; `?adopt=true` or `?forget=true` says which it is.
    PlatformChanged {
        request_id: String,
        region_id: String,
        recorded: String,
        current: String,
    },
    /// The platform refused, failed, was unreachable or timed out.
    Mep {
        region_id: String,
        request_id: Option<String>,
        error: MepError,
    },
    /// Authentication is required and missing or wrong.
    Unauthorized,
    /// A bug or an unexpected local failure.
    Internal { detail: String },
    /// A change could not be made durable. `no_space`: the state directory is full (507;
    /// writes resume once there is room), otherwise a write or `fsync` failed (500).
    /// `request_id`: the request the change was about, when its record may stay.
    StateWrite {
        detail: String,
        no_space: bool,
        request_id: Option<String>,
    },
    /// The state directory is full: changes cannot be recorded until it has room (health).
    StateFull { detail: String },
    /// `[server] max_requests` requests are kept already (`stored`: more after the limit
    /// was lowered): a creation is refused before anything is recorded or sent.
    RequestLimit { stored: usize, limit: usize },
    /// The state can no longer be made durable (the journal stopped after a failed `fsync`):
    /// nothing more can be acknowledged until a restart.
    StateUnavailable { detail: String },
    /// Instances sharing an etcd store (`[store] kind = "etcd"`): no leader is known, etcd is
    /// unreachable or without quorum, the leader cannot be reached, or this instance lost its
    /// leadership during the change. 503 with `Retry-After`: another attempt may succeed.
    /// `request_id` when the change's record may stay (a creation recorded PENDING before
    /// the leadership was lost): the answer names it, as [`ApiError::StateWrite`] does.
    /// The request's record would be larger than one etcd transaction takes (`[store] kind =
    /// "etcd"`): nothing was recorded or sent. 413: a smaller request is needed, not a retry.
    RecordTooLarge { detail: String },
    /// A follower forwarded a change and the leader's answer cannot be relayed (larger than the
    /// relay's bound, a Content-Type the API never sends, cut short), or none came once the
    /// change was sent (the forwarding timeout, a connection cut): the change may have been
    /// made. 502, no `Retry-After`: read the requests before retrying.
    LeaderAnswer { detail: String },
    Unavailable {
        detail: String,
        request_id: Option<String>,
    },
}

/// `Retry-After` of [`ApiError::Unavailable`], in seconds: about the time a follower needs to
/// notice a lost leader (a third of the default lease) and a new one to recover.
pub const UNAVAILABLE_RETRY_AFTER_S: u32 = 2;

impl ApiError {
    /// The HTTP status code of this error: the only place where errors map to codes.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest { .. } => 400,
            ApiError::Unauthorized => 401,
            ApiError::NoRoute { .. }
            | ApiError::RequestNotFound { .. }
            | ApiError::RegionNotFound { .. } => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::BodyTimeout | ApiError::HeadTimeout => 408,
            ApiError::UriTooLong { .. } => 414,
            ApiError::ExpectationFailed { .. } => 417,
            ApiError::HeadersTooLarge { .. } => 431,
            ApiError::VersionNotSupported => 505,
            ApiError::TooManyConnections { .. } | ApiError::BodyMemoryFull { .. } => 503,
            ApiError::Conflict { .. }
            | ApiError::RegionGone { .. }
            | ApiError::PlatformChanged { .. } => 409,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::UnsupportedMediaType { .. } => 415,
            ApiError::UnknownRegion { .. } | ApiError::Unsupported { .. } => 422,
            ApiError::Mep { error, .. } if error.is_timeout() => 504,
            ApiError::Mep { .. } => 502,
            ApiError::Internal { .. } => 500,
            ApiError::StateWrite { no_space: true, .. } | ApiError::RequestLimit { .. } => 507,
            ApiError::StateWrite { .. } => 500,
            ApiError::StateUnavailable { .. } | ApiError::StateFull { .. } => 503,
            ApiError::Unavailable { .. } => 503,
            ApiError::RecordTooLarge { .. } => 413,
            ApiError::LeaderAnswer { .. } => 502,
        }
    }

    /// Short, stable title of the problem type.
    pub fn title(&self) -> &'static str {
        match self {
            ApiError::NoRoute { .. } => "Not Found",
            ApiError::MethodNotAllowed { .. } => "Method Not Allowed",
            ApiError::RequestNotFound { .. } => "Request not found",
            ApiError::RegionNotFound { .. } => "Region not found",
            ApiError::BadRequest { .. } => "Invalid request",
            ApiError::UnsupportedMediaType { .. } => "Unsupported media type",
            ApiError::PayloadTooLarge { .. } => "Body too large",
            ApiError::BodyTimeout => "Body not received in time",
            ApiError::HeadTimeout => "Request not received in time",
            ApiError::UriTooLong { .. } => "Request target too long",
            ApiError::HeadersTooLarge { .. } => "Request head too large",
            ApiError::ExpectationFailed { .. } => "Expectation not supported",
            ApiError::VersionNotSupported => "HTTP version not supported",
            ApiError::TooManyConnections { .. } => "Too many connections",
            ApiError::BodyMemoryFull { .. } => "Too many request bodies at once",
            ApiError::UnknownRegion { .. } => "Unknown region",
            ApiError::Unsupported { .. } => "Rule not supported by the region's platform",
            ApiError::Conflict { .. } => "Operation in progress",
            ApiError::RegionGone { .. } => "Region no longer configured",
            ApiError::PlatformChanged { .. } => "Region's platform URL changed",
            ApiError::Mep { error, .. } if error.is_timeout() => "MEC platform timed out",
            ApiError::Mep { .. } => "MEC platform error",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Internal { .. } => "Internal error",
            ApiError::StateWrite { no_space: true, .. } => "Insufficient storage",
            ApiError::StateWrite { .. } => "State not written",
            ApiError::RequestLimit { .. } => "Request limit reached",
            ApiError::StateUnavailable { .. } | ApiError::StateFull { .. } => "State not writable",
            ApiError::Unavailable { .. } => "Temporarily unavailable",
            ApiError::RecordTooLarge { .. } => "Request too large to record",
            ApiError::LeaderAnswer { .. } => "Leader's answer not relayed",
        }
    }

    /// The problem `type` URI.
    pub fn type_uri(&self) -> &'static str {
        match self {
            ApiError::NoRoute { .. } => "urn:mec-plugin:problem:no-route",
            ApiError::MethodNotAllowed { .. } => "urn:mec-plugin:problem:method-not-allowed",
            ApiError::RequestNotFound { .. } => "urn:mec-plugin:problem:request-not-found",
            ApiError::RegionNotFound { .. } => "urn:mec-plugin:problem:region-not-found",
            ApiError::BadRequest { .. } => "urn:mec-plugin:problem:invalid-request",
            ApiError::UnsupportedMediaType { .. } => {
                "urn:mec-plugin:problem:unsupported-media-type"
            }
            ApiError::PayloadTooLarge { .. } => "urn:mec-plugin:problem:body-too-large",
            ApiError::BodyTimeout => "urn:mec-plugin:problem:body-timeout",
            ApiError::HeadTimeout => "urn:mec-plugin:problem:request-timeout",
            ApiError::UriTooLong { .. } => "urn:mec-plugin:problem:uri-too-long",
            ApiError::HeadersTooLarge { .. } => "urn:mec-plugin:problem:head-too-large",
            ApiError::ExpectationFailed { .. } => "urn:mec-plugin:problem:expectation-failed",
            ApiError::VersionNotSupported => "urn:mec-plugin:problem:http-version",
            ApiError::TooManyConnections { .. } => "urn:mec-plugin:problem:too-many-connections",
            ApiError::BodyMemoryFull { .. } => "urn:mec-plugin:problem:body-memory-full",
            ApiError::UnknownRegion { .. } => "urn:mec-plugin:problem:unknown-region",
            ApiError::Unsupported { .. } => "urn:mec-plugin:problem:unsupported-rule",
            ApiError::Conflict { .. } => "urn:mec-plugin:problem:conflict",
            ApiError::RegionGone { .. } => "urn:mec-plugin:problem:region-gone",
            ApiError::PlatformChanged { .. } => "urn:mec-plugin:problem:platform-changed",
            ApiError::Mep { error, .. } if error.is_timeout() => {
                "urn:mec-plugin:problem:mep-timeout"
            }
            ApiError::Mep { .. } => "urn:mec-plugin:problem:mep-error",
            ApiError::Unauthorized => "urn:mec-plugin:problem:unauthorized",
            ApiError::Internal { .. } => "urn:mec-plugin:problem:internal",
            ApiError::StateWrite { no_space: true, .. } => {
                "urn:mec-plugin:problem:insufficient-storage"
            }
            ApiError::StateWrite { .. } => "urn:mec-plugin:problem:state-not-written",
            ApiError::RequestLimit { .. } => "urn:mec-plugin:problem:request-limit",
            ApiError::StateUnavailable { .. } => "urn:mec-plugin:problem:state-unavailable",
            ApiError::StateFull { .. } => "urn:mec-plugin:problem:state-full",
            ApiError::Unavailable { .. } => "urn:mec-plugin:problem:unavailable",
            ApiError::RecordTooLarge { .. } => "urn:mec-plugin:problem:record-too-large",
            ApiError::LeaderAnswer { .. } => "urn:mec-plugin:problem:leader-answer",
        }
    }

    /// The request whose record may stay after this error (a creation the platform refused,
    /// a change that could not be recorded, a DELETE refused because its region's platform
    /// URL changed): the answer names it and its `Location`.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ApiError::Mep { request_id, .. }
            | ApiError::StateWrite { request_id, .. }
            | ApiError::Unavailable { request_id, .. } => request_id.as_deref(),
            ApiError::PlatformChanged { request_id, .. } => Some(request_id),
            _ => None,
        }
    }

    /// The problem+json response for this error. `style` picks the spelling of the
    /// `RequestId` extension member carried by errors after which a record may stay (see
    /// [`request_id`](ApiError::request_id)), which also get its `Location`, and of
    /// `RegionId`; [`ApiError::PlatformChanged`] also names the recorded platform
    /// (`platform`) and the configured one (`currentPlatform`).
    pub fn to_response(&self, style: ApiStyle) -> Response {
        #[derive(Serialize)]
        struct Problem<'a> {
            #[serde(rename = "type")]
            type_uri: &'a str,
            title: &'a str,
            status: u16,
            detail: String,
            #[serde(rename = "RequestId", skip_serializing_if = "Option::is_none")]
            request_id: Option<&'a str>,
            #[serde(rename = "RegionId", skip_serializing_if = "Option::is_none")]
            region_id: Option<&'a str>,
            /// The platform a record's rules were applied on, and its region's current one.
            #[serde(skip_serializing_if = "Option::is_none")]
            platform: Option<&'a str>,
            #[serde(rename = "currentPlatform", skip_serializing_if = "Option::is_none")]
            current_platform: Option<&'a str>,
        }
        let request_id = self.request_id();
        let (region_id, platform, current_platform) = match self {
            ApiError::PlatformChanged {
                region_id,
                recorded,
                current,
                ..
            } => (Some(&**region_id), Some(&**recorded), Some(&**current)),
            _ => (None, None, None),
        };
        let problem = Problem {
            type_uri: self.type_uri(),
            title: self.title(),
            status: self.status(),
            detail: self.to_string(),
            request_id,
            region_id,
            platform,
            current_platform,
        };
        let body = style.to_vec(&problem).expect("a problem always serialises");
        let mut response = Response {
            status: self.status(),
            content_type: PROBLEM_JSON,
            headers: Vec::new(),
            body,
            stream: None,
        };
        match self {
            ApiError::MethodNotAllowed { allow, .. } => {
                response = response.with_header("Allow", *allow);
            }
            ApiError::Unauthorized => {
                response = response.with_header("WWW-Authenticate", "Bearer realm=\"mec-plugin\"");
            }
            ApiError::TooManyConnections { .. } | ApiError::BodyMemoryFull { .. } => {
                response = response.with_header("Retry-After", "1");
            }
            ApiError::Unavailable { .. } => {
                response =
                    response.with_header("Retry-After", UNAVAILABLE_RETRY_AFTER_S.to_string());
            }
            _ => {}
        }
        if let Some(id) = request_id {
            response = response.with_header("Location", crate::model::request_location(id));
        }
        response
    }
}

/// The `detail` text: what was wrong and where.
impl fmt::Display for ApiError {
    // Longer than 80 lines and kept whole: one arm per variant, so the messages read as one
    // table (like `status` and `title`) and the compiler checks that every variant has one;
    // split into helpers that each match part of the enum, they would be scattered.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::NoRoute { path } => write!(f, "no resource at {path}"),
            ApiError::MethodNotAllowed { path, allow } => {
                write!(f, "{path} does not support this method; allowed: {allow}")
            }
            ApiError::RequestNotFound { request_id } => {
                write!(f, "no MEC service request with RequestId '{request_id}'")
            }
            ApiError::RegionNotFound { region_id } => {
                write!(f, "no region with RegionId '{region_id}'")
            }
            ApiError::BadRequest { detail } => f.write_str(detail),
            ApiError::UnsupportedMediaType { content_type } => write!(
                f,
                "Content-Type '{content_type}' is not accepted; send application/json"
            ),
            ApiError::PayloadTooLarge { limit } => {
                write!(
                    f,
                    "the body exceeds the limit of {limit} bytes (max_body_bytes)"
                )
            }
            ApiError::BodyTimeout => f.write_str("the request body was not received in time"),
            ApiError::HeadTimeout => {
                f.write_str("the request head was not received in time (read_timeout_ms)")
            }
            ApiError::UriTooLong { limit } => write!(
                f,
                "the request line exceeds the head limit of {limit} bytes (max_head_bytes)"
            ),
            ApiError::HeadersTooLarge { detail } => {
                write!(f, "{detail} (max_head_bytes, max_headers)")
            }
            ApiError::ExpectationFailed { expect } => {
                let shown: String = expect.chars().take(64).collect();
                write!(f, "Expect '{shown}' is not supported; only 100-continue is")
            }
            ApiError::VersionNotSupported => f.write_str("only HTTP/1.0 and HTTP/1.1 are served"),
            ApiError::TooManyConnections { limit } => write!(
                f,
                "{limit} connections are open (max_connections); retry later"
            ),
            ApiError::BodyMemoryFull { limit } => write!(
                f,
                "the request bodies being received or handled would take more than {limit} bytes \
                 of memory with this one (max_body_memory_bytes); retry later"
            ),
            ApiError::UnknownRegion { region_id } => write!(
                f,
                "RegionId '{region_id}' is not a region of this plugin; GET /MEC/v1/service/regions lists them"
            ),
            ApiError::Unsupported {
                region_id,
                driver,
                detail,
            } => write!(
                f,
                "region '{region_id}' ({driver} platform) cannot apply this request: {detail}"
            ),
            ApiError::Conflict { request_id, detail } => {
                write!(f, "request '{request_id}': {detail}")
            }
            ApiError::RegionGone {
                request_id,
                region_id,
                platform,
            } => write!(
                f,
                "request '{request_id}' has rules that may be on the platform {} of region '{region_id}', which is no longer configured, so they cannot be removed; configure the region again to remove them, or DELETE with ?forget=true to drop the record and leave them there",
                platform.as_deref().unwrap_or("(URL not recorded)")
            ),
            ApiError::PlatformChanged {
                request_id,
                region_id,
                recorded,
                current,
            } => write!(
                f,
                "request '{request_id}' has rules that may be on the platform {recorded}, on which they were applied, but region '{region_id}' is now configured with the platform {current}, so they are removed from neither; if {current} is the same platform at a new address, DELETE with ?adopt=true to record it there and remove them from it; if it is another platform, DELETE with ?forget=true to drop the record and leave them on {recorded} (or configure the region's url back to {recorded} to remove them)"
            ),
            ApiError::Mep {
                region_id,
                request_id,
                error,
            } => {
                write!(f, "region '{region_id}': {error}")?;
                if let Some(id) = request_id {
                    write!(
                        f,
                        " (request {id} is recorded as FAILED; no rule of it stays on the platform unless its record says so)"
                    )?;
                }
                Ok(())
            }
            ApiError::Unauthorized => {
                f.write_str("a valid 'Authorization: Bearer <token>' header is required")
            }
            ApiError::Internal { detail } => f.write_str(detail),
            ApiError::StateWrite {
                detail,
                no_space,
                request_id,
            } => {
                write!(f, "the change could not be recorded: {detail}")?;
                if *no_space {
                    f.write_str("; reads keep working and changes resume once it has room")?;
                }
                if let Some(id) = request_id {
                    write!(
                        f,
                        "; request {id} may stay recorded (see its Location) and is finished by \
                         the reconciler"
                    )?;
                }
                Ok(())
            }
            ApiError::RequestLimit { stored, limit } => write!(
                f,
                "{stored} requests are stored and [server] max_requests is {limit}: delete {} \
                 before creating one (nothing was recorded or sent)",
                (stored + 1).saturating_sub(*limit).max(1)
            ),
            ApiError::StateFull { detail } => write!(
                f,
                "{detail}; reads keep working, changes answer 507 until the state directory has \
                 room again (free space there; no restart needed)"
            ),
            ApiError::StateUnavailable { detail } => write!(
                f,
                "{detail}; nothing more can be recorded or acknowledged: restart the service (it reloads what is on disk)"
            ),
            ApiError::RecordTooLarge { detail } => write!(
                f,
                "{detail}; nothing was recorded or sent: split the request's rules over several \
                 requests"
            ),
            ApiError::LeaderAnswer { detail } => f.write_str(detail),
            ApiError::Unavailable { detail, request_id } => {
                write!(f, "{detail}; retry after {UNAVAILABLE_RETRY_AFTER_S} s")?;
                if let Some(id) = request_id {
                    write!(
                        f,
                        " (request {id} may stay recorded: the leader that takes over rolls it \
                         back to FAILED; GET or DELETE it there)"
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: &ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.to_response(ApiStyle::Spec).body).unwrap()
    }

    #[test]
    fn every_problem_has_type_title_status_and_detail() {
        let e = ApiError::RequestNotFound {
            request_id: "abc".into(),
        };
        let r = e.to_response(ApiStyle::Spec);
        assert_eq!(r.status, 404);
        assert_eq!(r.content_type, PROBLEM_JSON);
        let b = body(&e);
        assert_eq!(b["status"], 404);
        assert_eq!(b["title"], "Request not found");
        assert!(
            b["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:mec-plugin:problem:")
        );
        assert!(b["detail"].as_str().unwrap().contains("abc"));
    }

    /// Review 3, L1: with 5 stored and `max_requests = 2` the detail said "2 requests are
    /// stored".
    #[test]
    fn the_request_limit_says_how_many_are_stored_and_the_limit() {
        let e = ApiError::RequestLimit {
            stored: 5,
            limit: 2,
        };
        assert_eq!(e.status(), 507);
        let detail = body(&e)["detail"].as_str().unwrap().to_string();
        assert!(
            detail.starts_with(
                "5 requests are stored and [server] max_requests is 2: delete 4 before creating one"
            ),
            "{detail}"
        );
        let at = ApiError::RequestLimit {
            stored: 2,
            limit: 2,
        };
        assert!(
            body(&at)["detail"]
                .as_str()
                .unwrap()
                .contains("delete 1 before")
        );
        assert_eq!(body(&at)["type"], "urn:mec-plugin:problem:request-limit");
    }

    #[test]
    fn method_not_allowed_carries_allow_header() {
        let e = ApiError::MethodNotAllowed {
            path: "/x".into(),
            allow: "GET, POST",
        };
        let r = e.to_response(ApiStyle::Spec);
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, POST"));
    }

    #[test]
    fn mep_timeout_is_504_and_refusal_is_502_with_request_id_in_either_spelling() {
        let timeout = ApiError::Mep {
            region_id: "2".into(),
            request_id: Some("r1".into()),
            error: MepError::Timeout {
                url: "http://127.0.0.1:1/x".into(),
            },
        };
        assert_eq!(timeout.status(), 504);
        assert_eq!(body(&timeout)["RequestId"], "r1");
        let camel: serde_json::Value =
            serde_json::from_slice(&timeout.to_response(ApiStyle::Camel).body).unwrap();
        assert_eq!(camel["requestId"], "r1");
        assert!(camel.get("RequestId").is_none());
        let refused = ApiError::Mep {
            region_id: "2".into(),
            request_id: None,
            error: MepError::Refused {
                url: "u".into(),
                status: 500,
                detail: "boom".into(),
            },
        };
        assert_eq!(refused.status(), 502);
        assert!(
            body(&refused)["detail"]
                .as_str()
                .unwrap()
                .contains("region '2'")
        );
    }
}
