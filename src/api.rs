//! The northbound REST API (`/MEC/v1`): one `match` over method and route that shows the whole
//! API, handlers named after their routes, and the JSON views of regions and stored requests in
//! the configured spelling. Pure functions of request and service: no sockets here.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::config::Secret;
use crate::error::ApiError;
use crate::http::{BodySource, Request, Response, StreamBody};
use crate::leader::Role;
use crate::model::{self, ApiStyle, CreationRequest, Status};
use crate::server::RequestHandler;
use crate::service::{Deletion, Region, Removal, Service, StateProblem};
use crate::store::Record;
use crate::util::rfc3339;

/// The contract's base path and a stored request's path: defined in `model`, so that
/// `error` can name a request without depending on `api`.
pub use crate::model::{BASE, request_location};

/// The resources served.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Regions,
    Region(&'a str),
    Requests,
    Request(&'a str),
    Health,
    Metrics,
    /// This API's OpenAPI 2.0 document.
    OpenApi,
}

impl Route<'_> {
    fn allow(&self) -> &'static str {
        match self {
            Route::Regions | Route::Region(_) | Route::Health | Route::Metrics => "GET, HEAD",
            Route::OpenApi => "GET, HEAD",
            Route::Requests => "GET, HEAD, POST",
            Route::Request(_) => "GET, HEAD, DELETE",
        }
    }

    /// The route's template, a metrics label of bounded cardinality.
    fn template(&self) -> &'static str {
        match self {
            Route::Regions => "/MEC/v1/service/regions",
            Route::Region(_) => "/MEC/v1/service/regions/{RegionId}",
            Route::Requests => "/MEC/v1/service/requests",
            Route::Request(_) => "/MEC/v1/service/requests/{RequestId}",
            Route::Health => "/healthz",
            Route::Metrics => "/metrics",
            Route::OpenApi => "/MEC/v1/swagger.json",
        }
    }

    /// Whether the route needs the bearer token when one is configured.
    fn protected(&self) -> bool {
        !matches!(self, Route::Health)
    }
}

fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/healthz" => return Some(Route::Health),
        "/metrics" => return Some(Route::Metrics),
        "/MEC/v1/swagger.json" => return Some(Route::OpenApi),
        _ => {}
    }
    let rest = path.strip_prefix(BASE)?.strip_prefix("/service/")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["regions"] => Some(Route::Regions),
        ["regions", id] if !id.is_empty() => Some(Route::Region(id)),
        ["requests"] => Some(Route::Requests),
        ["requests", id] if !id.is_empty() => Some(Route::Request(id)),
        _ => None,
    }
}

/// The API: the service, the response spelling and the optional bearer token.
pub struct Api {
    pub service: Arc<Service>,
    pub style: ApiStyle,
    pub token: Option<Secret>,
}

/// The server calls [`handle`](RequestHandler::handle) for a request read in full, and
/// [`answered`](RequestHandler::answered) for every request answered (its own refusals and a
/// panic's 500 included): the metrics count each answered request there, once.
impl RequestHandler for Api {
    /// Answers one request.
    fn handle(&self, request: &Request) -> Response {
        handle_with(self.token.as_ref(), self.style, request, |route| {
            answer(&self.service, self.style, route, request)
        })
    }

    /// Answers on the server's I/O thread the routes that read only the configuration: the
    /// regions (by position too) and the OpenAPI document. The others take the records lock
    /// (listings, `/healthz` and `/metrics` count records), may write to disk (`/healthz`'s
    /// probe of a full state directory) or call platforms: they go to a worker.
    fn handle_inline(&self, request: &Request) -> Option<Response> {
        reads_only_the_configuration(request).then(|| self.handle(request))
    }

    /// Refuses from the head alone, before any body byte is read, a request that lacks the
    /// token where one is needed: the same 401 [`handle`](RequestHandler::handle) would give.
    fn admit(&self, head: &Request) -> Option<Response> {
        admit_with(self.token.as_ref(), self.style, head)
    }

    /// Creations and deletions: they call platforms, so they may wait up to their timeouts.
    fn is_slow(&self, request: &Request) -> bool {
        calls_platforms(request)
    }

    /// Counts an answered request in the metrics, under its route's template (`other` for a
    /// path that is no route), whoever answered it.
    fn answered(&self, request: &Request, status: u16, took: Duration) {
        let template = route(request.path()).map_or("other", |r| r.template());
        self.service
            .metrics
            .northbound(template, &request.method, status, took);
    }

    fn dropped(&self) {
        self.service.metrics.dropped_connection();
    }

    fn body_bytes(&self) -> Option<Arc<AtomicUsize>> {
        Some(self.service.metrics.body_bytes())
    }
}

/// The answer to `request`, in `style`, of an API that answers its routes with `dispatch`:
/// 401 without the token on a protected route (or under the base path), 404 for a path that is
/// no route; [`Api`] and [`ClusterApi`] differ only in `dispatch`.
fn handle_with(
    token: Option<&Secret>,
    style: ApiStyle,
    request: &Request,
    dispatch: impl FnOnce(&Route<'_>) -> Result<Response, ApiError>,
) -> Response {
    let path = request.path();
    let authorized = authorized(token, request);
    match route(path) {
        None if path.starts_with(BASE) && !authorized => ApiError::Unauthorized,
        None => ApiError::NoRoute {
            path: path.to_string(),
        },
        Some(route) if route.protected() && !authorized => ApiError::Unauthorized,
        Some(route) => match dispatch(&route) {
            Ok(response) => return response,
            Err(e) => e,
        },
    }
    .to_response(style)
}

/// The requests that call platforms (a creation, a deletion): the server runs at most
/// `workers` of them at once on its [`crate::server::worker_threads`], so that the other
/// requests are answered while a platform hangs.
fn calls_platforms(request: &Request) -> bool {
    matches!(
        (request.method.as_str(), route(request.path())),
        ("POST", Some(Route::Requests)) | ("DELETE", Some(Route::Request(_)))
    )
}

/// The routes answered from the configuration alone, on the I/O thread: the regions (by
/// position too) and the OpenAPI document.
fn reads_only_the_configuration(request: &Request) -> bool {
    matches!(route(request.path()), Some(Route::Regions | Route::OpenApi))
}

/// The 401 that [`handle_with`] would give, from the head alone (before any body byte is read).
fn admit_with(token: Option<&Secret>, style: ApiStyle, head: &Request) -> Option<Response> {
    let path = head.path();
    let protected = route(path).map_or(path.starts_with(BASE), |r| r.protected());
    (protected && !authorized(token, head)).then(|| ApiError::Unauthorized.to_response(style))
}

/// The answer of `service` to an authorized request on `route`: the whole API in one `match`.
fn answer(
    service: &Service,
    style: ApiStyle,
    route: &Route<'_>,
    request: &Request,
) -> Result<Response, ApiError> {
    match (read_method(request), route) {
        ("GET", Route::Regions) => list_regions(service, style, request.query()),
        ("GET", Route::Region(id)) => list_region_requests(service, style, id, request.query()),
        ("GET", Route::Requests) => list_requests(service, style, request.query()),
        ("POST", Route::Requests) => create_request(service, style, request),
        ("GET", Route::Request(id)) => get_request(service, style, id),
        ("DELETE", Route::Request(id)) => delete_request(service, style, id, request.query()),
        ("GET", Route::Health) => health(service),
        ("GET", Route::Metrics) => Ok(metrics(service)),
        ("GET", Route::OpenApi) => Ok(Response::json(200, OPENAPI.as_bytes().to_vec())),
        _ => Err(ApiError::MethodNotAllowed {
            path: request.path().to_string(),
            allow: route.allow(),
        }),
    }
}

/// The method, `HEAD` answered as `GET`.
fn read_method(request: &Request) -> &str {
    match request.method.as_str() {
        "HEAD" => "GET",
        m => m,
    }
}

/// The API of an instance sharing an etcd store (`[store] kind = "etcd"`), routing by role:
/// the leader answers from its service; a follower answers reads from etcd (linearizable,
/// never stale) and forwards changes to the leader's `advertise_url`, relaying its answer; with
/// no leader known, or etcd unreachable, 503 + `Retry-After`. The regions (by position too)
/// and the OpenAPI document are answered from the configuration on every instance.
pub struct ClusterApi {
    pub cluster: Arc<Cluster>,
    /// The configured regions without records: what every instance answers from itself.
    pub regions: Arc<Service>,
    pub style: ApiStyle,
    pub token: Option<Secret>,
}

impl RequestHandler for ClusterApi {
    fn handle(&self, request: &Request) -> Response {
        handle_with(self.token.as_ref(), self.style, request, |route| {
            self.dispatch(route, request)
        })
    }

    /// As [`Api`]'s: the regions and the OpenAPI document, from the configuration.
    fn handle_inline(&self, request: &Request) -> Option<Response> {
        reads_only_the_configuration(request).then(|| self.handle(request))
    }

    fn admit(&self, head: &Request) -> Option<Response> {
        admit_with(self.token.as_ref(), self.style, head)
    }

    /// As [`Api`]'s (a follower forwards these to its leader, which calls the platforms).
    fn is_slow(&self, request: &Request) -> bool {
        calls_platforms(request)
    }

    fn answered(&self, request: &Request, status: u16, took: Duration) {
        let template = route(request.path()).map_or("other", |r| r.template());
        self.cluster
            .metrics()
            .northbound(template, &request.method, status, took);
    }

    fn dropped(&self) {
        self.cluster.metrics().dropped_connection();
    }

    fn body_bytes(&self) -> Option<Arc<AtomicUsize>> {
        Some(self.cluster.metrics().body_bytes())
    }
}

/// Why a follower answers 503 to a request another instance forwarded to it (the leader changed
/// in between): forwarding it again could go round in circles.
const NOT_FORWARDED_TWICE: &str = "this instance does not lead (any more) and does not forward a \
                                   request another instance forwarded";

impl ClusterApi {
    fn dispatch(&self, route: &Route<'_>, request: &Request) -> Result<Response, ApiError> {
        let style = self.style;
        match (read_method(request), route) {
            ("GET", Route::Health) => Ok(self.health()),
            ("GET", Route::Metrics) => Ok(metrics_text(
                self.cluster.metrics().render(&self.cluster.gauges()),
            )),
            ("GET", Route::Request(id)) => {
                let service = self.reader_of(id)?;
                let response = answer(&service, style, route, request)?;
                self.settled(&service)?;
                Ok(response)
            }
            ("GET", Route::Requests | Route::Region(_)) => {
                let service = self.reader()?;
                if let Some(leader_url) = self.cursor_unplaced(&service, request) {
                    // Only the leader may know where it stood (a request removed lately).
                    match self.cluster.forward_listing(request, &leader_url) {
                        Ok(response) => return Ok(response),
                        Err(e) => log::warn!("a page after a request etcd no longer has: {e}"),
                    }
                }
                let response = answer(&service, style, route, request)?;
                self.settled(&service)?;
                Ok(response)
            }
            ("POST", Route::Requests) | ("DELETE", Route::Request(_)) => {
                match self.cluster.role() {
                    Role::Leader => answer(&*self.leader()?, style, route, request),
                    Role::Follower { .. } if request.forwarded => Err(ApiError::Unavailable {
                        detail: NOT_FORWARDED_TWICE.into(),
                        request_id: None,
                    }),
                    Role::Follower { leader_url } => self.cluster.forward(request, &leader_url),
                    Role::Unknown => Err(self.no_leader()),
                }
            }
            _ => answer(&self.regions, style, route, request),
        }
    }

    /// 503: no leader known, and why if the election's last etcd call said.
    fn no_leader(&self) -> ApiError {
        ApiError::Unavailable {
            detail: self.cluster.no_leader(true),
            request_id: None,
        }
    }

    /// The published service of the term this instance leads.
    fn leader(&self) -> Result<Arc<Service>, ApiError> {
        self.cluster
            .leader_service()
            .ok_or_else(|| ApiError::Unavailable {
                detail: self.cluster.taking_over(true),
                request_id: None,
            })
    }

    /// Once a read's answer is made from `service`: waits until every change made so far is
    /// committed (a leader's records; a follower's read of etcd has nothing to wait for), so
    /// that no answer shows a change etcd may still refuse (no quorum), even one made while
    /// the answer was being read. 503 if it is not committed before the term lapses.
    fn settled(&self, service: &Service) -> Result<(), ApiError> {
        service.settled().map_err(|e| self.cluster.store_error(e))
    }

    /// What reads answer from: the leader's records while its term is valid; a follower's
    /// linearizable read of etcd.
    fn reader(&self) -> Result<Arc<Service>, ApiError> {
        match self.cluster.role() {
            Role::Leader => {
                let service = self.leader()?;
                service
                    .writable()
                    .map_err(|e| self.cluster.store_error(e))?;
                Ok(service)
            }
            Role::Follower { .. } => Ok(Arc::new(self.cluster.read()?)),
            Role::Unknown => Err(self.no_leader()),
        }
    }

    /// The leader's `advertise_url` when this follower's listing `request` names, as
    /// `after`, no record of its read `service` and was not forwarded to it: the leader's
    /// page is asked for instead (see [`Cluster::forward_listing`]).
    fn cursor_unplaced(&self, service: &Service, request: &Request) -> Option<String> {
        let Role::Follower { leader_url } = self.cluster.role() else {
            return None;
        };
        let after = parse_paging(request.query()).ok()?.after?;
        (!request.forwarded && service.page(None, Some(&after), 0).is_none()).then_some(leader_url)
    }

    /// [`reader`](ClusterApi::reader) for one request: a follower reads only its key.
    fn reader_of(&self, id: &str) -> Result<Arc<Service>, ApiError> {
        match self.cluster.role() {
            Role::Follower { .. } => Ok(Arc::new(self.cluster.read_one(id)?)),
            _ => self.reader(),
        }
    }

    /// `GET /healthz`: the role, the leader's URL when known and etcd's reachability; 503
    /// (problem+json with these members, and `Retry-After`) while the role is unknown or the
    /// leader is still recovering.
    fn health(&self) -> Response {
        let role = self.cluster.role();
        let etcd = if self.cluster.etcd_reachable() {
            "reachable"
        } else {
            "unreachable"
        };
        let (name, leader) = match &role {
            Role::Leader => ("leader", Some(self.cluster.advertise_url())),
            Role::Follower { leader_url } => ("follower", Some(leader_url.as_str())),
            Role::Unknown => ("unknown", None),
        };
        let service = self.cluster.leader_service();
        // `/healthz` needs no token: where one protects the rest, etcd's own words (its
        // addresses, user, TLS errors) stay in the log and the authenticated answers.
        let detailed = self.token.is_none();
        let problem = match (&role, &service) {
            (Role::Unknown, _) => Some(self.cluster.no_leader(detailed)),
            (Role::Leader, None) => Some(self.cluster.taking_over(detailed)),
            _ => None,
        };
        let mut body = serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "regions": self.regions.regions().len(),
            "role": name,
            "etcd": etcd,
        });
        if let Some(leader) = leader {
            body["leader"] = leader.into();
        }
        if let Some(service) = service.filter(|_| role == Role::Leader) {
            body["requests"] = service.list_len().into();
            body["reconcilerBacklog"] = service.backlog().into();
        }
        let Some(detail) = problem else {
            return Response::json(200, body.to_string().into_bytes());
        };
        let error = ApiError::Unavailable {
            detail,
            request_id: None,
        };
        body["status"] = 503.into();
        body["type"] = error.type_uri().into();
        body["title"] = error.title().into();
        body["detail"] = error.to_string().into();
        let mut response = error.to_response(self.style);
        response.body = body.to_string().into_bytes();
        response
    }
}

/// This API's OpenAPI 2.0 document, served at `GET /MEC/v1/swagger.json`.
const OPENAPI: &str = include_str!("../openapi/mec-plugin.json");

/// True when no token is configured or the request carries it (compared in constant time).
fn authorized(token: Option<&Secret>, request: &Request) -> bool {
    let Some(token) = token else {
        return true;
    };
    let presented = request.authorization.as_deref().map_or("", bearer_token);
    constant_time_eq(presented.as_bytes(), token.expose().as_bytes())
}

/// The token of an `Authorization: Bearer <token>` value, or "" for any other scheme; the scheme
/// name is case-insensitive (RFC 7235 §2.1: `bearer`, `BEARER`, ...).
fn bearer_token(authorization: &str) -> &str {
    match authorization.trim_start().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("Bearer") => token.trim(),
        _ => "",
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// `GET /healthz`: the plugin is serving and its state is loaded (it only starts serving then);
/// 503 while its state cannot be written: for good once the journal stopped (a restart is
/// needed), or while the state directory is full (until it has room again).
fn health(service: &Service) -> Result<Response, ApiError> {
    match service.state_problem() {
        Some(StateProblem::Stopped(reason)) => {
            return Err(ApiError::StateUnavailable {
                detail: format!("the journal in state_dir stopped: {reason}"),
            });
        }
        Some(StateProblem::NoSpace(reason)) => {
            return Err(ApiError::StateFull { detail: reason });
        }
        None => {}
    }
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "regions": service.regions().len(),
        "requests": service.list_len(),
        "reconcilerBacklog": service.backlog(),
    });
    Ok(Response::json(200, body.to_string().into_bytes()))
}

/// `GET /metrics`: Prometheus text format.
fn metrics(service: &Service) -> Response {
    metrics_text(service.metrics.render(&service.gauges()))
}

/// The metrics exposition as a response.
fn metrics_text(text: String) -> Response {
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        headers: Vec::new(),
        body: text.into_bytes(),
        stream: None,
    }
}

/// A position given as `?latitude=..&longitude=..`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Position {
    latitude: f64,
    longitude: f64,
}

/// The `key=value` pairs of a query, as written (not percent-decoded); an empty pair is
/// skipped and a pair without `=` has an empty value. The one splitter of the listings',
/// regions' and removal's query parsers.
fn query_pairs(query: Option<&str>) -> impl Iterator<Item = (&str, &str)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
}

/// Parses the query of `GET /service/regions`: nothing, or both coordinates, each once. Other
/// parameters (such as the `_=<time>` cache buster some HTTP clients add) are ignored, as by
/// the original plugin, and logged at debug level.
fn parse_position(query: Option<&str>) -> Result<Option<Position>, ApiError> {
    let bad = |detail: String| ApiError::BadRequest { detail };
    let (mut latitude, mut longitude) = (None, None);
    for (key, value) in query_pairs(query) {
        let value = percent_decode_str(value).decode_utf8_lossy();
        let (slot, range) = match key {
            "latitude" => (&mut latitude, 90.0),
            "longitude" => (&mut longitude, 180.0),
            other => {
                debug!(
                    "query parameter '{}' ignored: the regions list takes 'latitude' and 'longitude'",
                    crate::http1::log_text(other, 64)
                );
                continue;
            }
        };
        if slot.is_some() {
            return Err(bad(format!(
                "query parameter '{key}' is given more than once"
            )));
        }
        let number: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
            .ok_or_else(|| {
                bad(format!(
                    "query parameter '{key}' = '{value}' is not a number"
                ))
            })?;
        if !(-range..=range).contains(&number) {
            return Err(bad(format!(
                "query parameter '{key}' = {number} is out of range -{range}..{range}"
            )));
        }
        *slot = Some(number);
    }
    match (latitude, longitude) {
        (None, None) => Ok(None),
        (Some(latitude), Some(longitude)) => Ok(Some(Position {
            latitude,
            longitude,
        })),
        (None, Some(_)) => Err(bad(
            "query parameter 'latitude' is missing (give both or neither)".into(),
        )),
        (Some(_), None) => Err(bad(
            "query parameter 'longitude' is missing (give both or neither)".into(),
        )),
    }
}

/// Parses the query of `DELETE /service/requests/{id}`: `forget=true|false` and
/// `adopt=true|false` (values percent-decoded), each at most once (both true is refused only
/// for a request they contradict each other on: [`Deletion::ForgetAndAdopt`]); other
/// parameters are ignored (debug log).
fn parse_deletion(query: Option<&str>) -> Result<Deletion, ApiError> {
    let bad = |detail: String| ApiError::BadRequest { detail };
    let (mut forget, mut adopt) = (None, None);
    for (key, value) in query_pairs(query) {
        let slot = match key {
            "forget" => &mut forget,
            "adopt" => &mut adopt,
            _ => {
                debug!(
                    "query parameter '{}' ignored: a DELETE takes 'forget' and 'adopt'",
                    crate::http1::log_text(key, 64)
                );
                continue;
            }
        };
        if slot.is_some() {
            return Err(bad(format!(
                "query parameter '{key}' is given more than once"
            )));
        }
        // Decoded before it is compared, as the other parsers' values are: `%74rue` is `true`,
        // and the value a refusal shows is the one compared.
        let value = percent_decode_str(value).decode_utf8_lossy();
        *slot = Some(match &*value {
            "true" => true,
            "false" => false,
            other => {
                return Err(bad(format!(
                    "query parameter '{key}' = '{other}' must be true or false"
                )));
            }
        });
    }
    match (forget == Some(true), adopt == Some(true)) {
        (true, true) => Ok(Deletion::ForgetAndAdopt),
        (true, false) => Ok(Deletion::Forget),
        (false, true) => Ok(Deletion::Adopt),
        (false, false) => Ok(Deletion::Remove),
    }
}

/// Great-circle distance in km (haversine, mean Earth radius).
fn distance_km(a: Position, b: Position) -> f64 {
    const EARTH_RADIUS_KM: f64 = 6371.0088;
    let (lat1, lat2) = (a.latitude.to_radians(), b.latitude.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.longitude - a.longitude).to_radians();
    // libm's functions, not `f64::sin` & co., which would link the C library's libm.so
    // (see Cargo.toml).
    let h = libm::sin(dlat / 2.0).powi(2)
        + libm::cos(lat1) * libm::cos(lat2) * libm::sin(dlon / 2.0).powi(2);
    2.0 * EARTH_RADIUS_KM * libm::asin(h.sqrt().min(1.0))
}

/// `GET /service/regions`, optionally only those whose circle covers a position, nearest
/// first.
fn list_regions(
    service: &Service,
    style: ApiStyle,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let position = parse_position(query)?;
    let mut regions: Vec<(f64, &Region)> = service
        .regions()
        .iter()
        .map(|r| {
            let centre = Position {
                latitude: r.config.latitude,
                longitude: r.config.longitude,
            };
            (position.map_or(0.0, |p| distance_km(p, centre)), r)
        })
        .filter(|(distance, r)| position.is_none() || *distance <= r.config.range_km)
        .collect();
    regions.sort_by(|a, b| a.0.total_cmp(&b.0));
    let view = RegionsView {
        regions: regions
            .into_iter()
            .map(|(_, r)| RegionView::new(r))
            .collect(),
    };
    let body = style.to_vec(&view).expect("regions serialise");
    Ok(Response::json(200, body))
}

fn list_region_requests(
    service: &Service,
    style: ApiStyle,
    id: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    if service.region(id).is_none() {
        return Err(ApiError::RegionNotFound {
            region_id: id.to_string(),
        });
    }
    let path = format!("{BASE}/service/regions/{id}");
    listing(service, style, Some(id), &path, query)
}

fn list_requests(
    service: &Service,
    style: ApiStyle,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    listing(
        service,
        style,
        None,
        &format!("{BASE}/service/requests"),
        query,
    )
}

/// What a query value keeps unencoded (RFC 3986 unreserved characters).
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Largest `limit` of a listing page.
pub const MAX_PAGE: usize = 1_000_000;

/// A listing's query: `limit` (1..=[`MAX_PAGE`]; none: every record) and `after` (a
/// RequestId), each at most once. Other parameters are ignored, as they always were here
/// (callers add cache-busting ones).
#[derive(Debug, Default, PartialEq)]
struct Paging {
    limit: Option<usize>,
    after: Option<String>,
}

fn parse_paging(query: Option<&str>) -> Result<Paging, ApiError> {
    let bad = |detail: String| ApiError::BadRequest { detail };
    let mut paging = Paging::default();
    for (key, value) in query_pairs(query) {
        let value = percent_decode_str(value).decode_utf8_lossy();
        let repeated = || bad(format!("query parameter '{key}' is given more than once"));
        match key {
            "limit" => {
                if paging.limit.is_some() {
                    return Err(repeated());
                }
                // Digits only: Rust's integers also take a leading '+'.
                let limit = Some(&*value)
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| {
                        bad(format!(
                            "query parameter 'limit' = '{value}' is not an integer in 1..={MAX_PAGE}"
                        ))
                    })?;
                paging.limit = Some(limit);
            }
            "after" => {
                if paging.after.is_some() {
                    return Err(repeated());
                }
                if value.is_empty() {
                    return Err(bad(
                        "query parameter 'after' is empty; give a RequestId".into()
                    ));
                }
                paging.after = Some(value.into_owned());
            }
            _ => {}
        }
    }
    Ok(paging)
}

/// A listing (all requests, or one region's, at `path`): the page the query asks for, in
/// creation order, with `Link: <...>; rel="next"` when more follow.
fn listing(
    service: &Service,
    style: ApiStyle,
    region_id: Option<&str>,
    path: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let paging = parse_paging(query)?;
    let page = service
        .page(
            region_id,
            paging.after.as_deref(),
            paging.limit.unwrap_or(usize::MAX),
        )
        .ok_or_else(|| ApiError::BadRequest {
            detail: format!(
                "query parameter 'after' = '{}' names no stored request (deleted since?); list \
                 again from the start",
                paging.after.as_deref().unwrap_or("")
            ),
        })?;
    let next = match (page.more, page.records.last(), paging.limit) {
        (true, Some(last), Some(limit)) => Some(format!(
            "<{path}?limit={limit}&after={}>; rel=\"next\"",
            utf8_percent_encode(&last.id, QUERY_VALUE)
        )),
        _ => None,
    };
    // Pulled record by record by the I/O loop from the pointers taken under the lock, as the
    // client reads: a listing holds one piece of its views at a time, whatever its length,
    // and no worker waits on a client slow to read it. A stored request that cannot be read
    // (a bug) cuts the connection, since the status line is already out.
    let response = Response::pull(200, crate::http::JSON, Listing::new(page.records, style));
    Ok(match next {
        Some(link) => response.with_header("Link", link),
        None => response,
    })
}

/// A listing's body: the JSON array of `records` (views in `style`), made a piece at a time
/// (see [`BodySource`]): at most `want` bytes a piece, and one record's view in memory at a
/// time, whatever the length of the records (a piece of a 1 MB request is one of many).
pub struct Listing {
    records: Vec<Arc<Record>>,
    /// The next record to write; `None` before the opening bracket.
    next: Option<usize>,
    style: ApiStyle,
    identity: [String; 2],
    /// What is made and not yet handed out, from `sent` on (the rest of a view, a bracket).
    made: Vec<u8>,
    sent: usize,
}

impl Listing {
    pub fn new(records: Vec<Arc<Record>>, style: ApiStyle) -> Self {
        Listing {
            records,
            next: None,
            style,
            identity: identity(style),
            made: Vec::new(),
            sent: 0,
        }
    }

    /// Makes what follows into `made`: the opening bracket, or a comma and the next view, or
    /// the closing bracket. `false` when the listing is complete.
    fn make_next(&mut self) -> io::Result<bool> {
        self.made.clear();
        self.sent = 0;
        let i = match self.next {
            None => {
                self.made.push(b'[');
                self.next = Some(0);
                return Ok(true);
            }
            Some(i) => i,
        };
        let Some(record) = self.records.get(i) else {
            if i == self.records.len() {
                self.made.push(b']');
                self.next = Some(i + 1);
                return Ok(true);
            }
            return Ok(false);
        };
        if i > 0 {
            self.made.push(b',');
        }
        if self.style.may_rename(&record.request) {
            write_record_view(&mut self.made, record, self.style)?;
        } else {
            let identity = [self.identity[0].as_str(), self.identity[1].as_str()];
            write_record_as_stored(&mut self.made, record, identity)?;
        }
        self.next = Some(i + 1);
        Ok(true)
    }
}

impl BodySource for Listing {
    fn fill(&mut self, out: &mut Vec<u8>, want: usize) -> io::Result<bool> {
        let goal = out.len() + want.max(1);
        while out.len() < goal {
            if self.sent == self.made.len() && !self.make_next()? {
                self.made = Vec::new();
                return Ok(false);
            }
            let take = (self.made.len() - self.sent).min(goal - out.len());
            out.extend_from_slice(&self.made[self.sent..self.sent + take]);
            self.sent += take;
        }
        Ok(true)
    }
}

/// Writes the JSON array of `records` (views in `style`) to `out`, as a [`Listing`] pulled to
/// its end.
pub fn write_listing(
    out: &mut dyn Write,
    records: &[Arc<Record>],
    style: ApiStyle,
) -> io::Result<()> {
    StreamBody::Pull(Box::new(Listing::new(records.to_vec(), style))).write_to(out)
}

/// `{"RequestId":` and `,"RegionId":` in `style`, what [`write_record_as_stored`] writes
/// before the id and the region id.
fn identity(style: ApiStyle) -> [String; 2] {
    [("{\"", "RequestId"), (",\"", "RegionId")]
        .map(|(before, key)| format!("{before}{}\":", style.key(key)))
}

/// Writes [`RecordView`] of `record` in `style` (its request parsed back). Kept out of line so
/// that the listing's loop stays small around its usual, unparsed path.
#[inline(never)]
fn write_record_view(out: &mut dyn Write, record: &Record, style: ApiStyle) -> io::Result<()> {
    let view = RecordView::new(record).map_err(|e| io::Error::other(e.to_string()))?;
    // Into a buffer first, as every view is written (`ApiStyle::to_vec`).
    out.write_all(&style.to_vec(&view)?)
}

/// Writes what [`RecordView`] serialises to without parsing the record's request, when the
/// listing's spelling renames no key of it (always in the spec spelling): the request is kept
/// as the compact JSON of its spec spelling, so its members are copied between the view's own
/// (a listing reads every record: parsing each one back into a `CreationRequest` was most of
/// its time). `identity`: what comes before the id and the region id, `{"RequestId":` and
/// `,"RegionId":` in the listing's spelling.
fn write_record_as_stored(
    out: &mut dyn Write,
    record: &Record,
    identity: [&str; 2],
) -> io::Result<()> {
    let members = record
        .request
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| {
            io::Error::other(format!("stored request {} is not a JSON object", record.id))
        })?;
    out.write_all(identity[0].as_bytes())?;
    serde_json::to_writer(&mut *out, &*record.id)?;
    out.write_all(identity[1].as_bytes())?;
    serde_json::to_writer(&mut *out, &*record.region_id)?;
    if !members.is_empty() {
        out.write_all(b",")?;
        out.write_all(members.as_bytes())?;
    }
    out.write_all(b",\"status\":")?;
    serde_json::to_writer(&mut *out, &record.status)?;
    if let Some(detail) = &record.detail {
        out.write_all(b",\"statusDetail\":")?;
        serde_json::to_writer(&mut *out, &**detail)?;
    }
    write!(
        out,
        ",\"createdAt\":\"{}\",\"lastModified\":\"{}\"}}",
        rfc3339(record.created_at),
        rfc3339(record.last_modified)
    )
}

fn create_request(
    service: &Service,
    style: ApiStyle,
    request: &Request,
) -> Result<Response, ApiError> {
    check_json_content_type(request)?;
    let creation: CreationRequest =
        model::parse_creation(&request.body).map_err(|detail| ApiError::BadRequest { detail })?;
    let id = service.create(creation)?;
    let body = style
        .to_vec(&Created { request_id: &id })
        .expect("an id serialises");
    Ok(Response::json(201, body).with_header("Location", request_location(&id)))
}

fn get_request(service: &Service, style: ApiStyle, id: &str) -> Result<Response, ApiError> {
    let record = service.get(id).ok_or_else(|| ApiError::RequestNotFound {
        request_id: id.to_string(),
    })?;
    Ok(Response::json(200, record_json(&record, style)?))
}

/// The contract answers a successful removal with 201; the body is the final state of the
/// request (status DELETED). When the platform cannot remove the rules now, the removal is
/// accepted (202) and finished by the reconciler; the body shows the request DELETING.
///
/// `?forget=true` drops the record of a request whose region is no longer configured, or whose
/// region's platform URL changed since its rules were applied (either is otherwise refused
/// with 409), leaving its rules on that platform; `?adopt=true` takes the changed URL for the
/// same platform and removes the rules there.
fn delete_request(
    service: &Service,
    style: ApiStyle,
    id: &str,
    query: Option<&str>,
) -> Result<Response, ApiError> {
    let how = parse_deletion(query)?;
    match service.delete_as(id, how)? {
        Removal::Done(record) => Ok(Response::json(201, record_json(&record, style)?)),
        Removal::Accepted(record) => Ok(Response::json(202, record_json(&record, style)?)),
    }
}

/// Accepts `application/json`, `application/<x>+json` (any parameters) and a missing header.
fn check_json_content_type(request: &Request) -> Result<(), ApiError> {
    let Some(ct) = &request.content_type else {
        return Ok(());
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType {
            content_type: ct.clone(),
        })
    }
}

/// [`RecordView`] of `record` in `style`: written as stored when `style` renames nothing in
/// its request (always in the spec spelling), as a listing does.
fn record_json(record: &Record, style: ApiStyle) -> Result<Vec<u8>, ApiError> {
    if !style.may_rename(&record.request) {
        let identity = identity(style);
        let mut out = Vec::with_capacity(record.request.len() + 256);
        write_record_as_stored(&mut out, record, [&identity[0], &identity[1]]).map_err(|e| {
            ApiError::Internal {
                detail: e.to_string(),
            }
        })?;
        return Ok(out);
    }
    let view = RecordView::new(record)?;
    Ok(style.to_vec(&view).expect("a record serialises"))
}

// The views: each serialises once, with the contract's keys; `ApiStyle` writes them in the
// configured spelling (`model::spelling`).

/// The answer to a creation.
#[derive(Serialize)]
struct Created<'a> {
    #[serde(rename = "RequestId")]
    request_id: &'a str,
}

/// The regions list: `{"Regions": [{"MECRegionInfo": {"RegionId", "LocationInfo"}}]}`.
#[derive(Serialize)]
struct RegionsView<'a> {
    #[serde(rename = "Regions")]
    regions: Vec<RegionView<'a>>,
}

/// One item of the regions list.
#[derive(Serialize)]
struct RegionView<'a> {
    #[serde(rename = "MECRegionInfo")]
    info: RegionInfo<'a>,
}

#[derive(Serialize)]
struct RegionInfo<'a> {
    #[serde(rename = "RegionId")]
    region_id: &'a str,
    #[serde(rename = "LocationInfo")]
    location: Location,
}

#[derive(Serialize)]
struct Location {
    latitude: f64,
    longitude: f64,
    altitude: f64,
    range: f64,
}

impl<'a> RegionView<'a> {
    fn new(region: &'a Region) -> Self {
        let c = &region.config;
        RegionView {
            info: RegionInfo {
                region_id: &c.id,
                location: Location {
                    latitude: c.latitude,
                    longitude: c.longitude,
                    altitude: c.altitude,
                    range: c.range_km,
                },
            },
        }
    }
}

/// A stored request as the API shows it: what the caller sent, plus identity and status.
/// [`write_record_as_stored`] writes the same bytes without parsing the request.
#[derive(Serialize)]
struct RecordView<'a> {
    #[serde(rename = "RequestId")]
    request_id: &'a str,
    #[serde(rename = "RegionId")]
    region_id: &'a str,
    #[serde(flatten)]
    request: CreationRequest,
    status: Status,
    #[serde(rename = "statusDetail", skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(rename = "createdAt")]
    created_at: String,
    #[serde(rename = "lastModified")]
    last_modified: String,
}

impl<'a> RecordView<'a> {
    /// The view of a record; its request is read back from the compact text it is kept as.
    fn new(record: &'a Record) -> Result<Self, ApiError> {
        let request = model::read_stored(&record.request).map_err(|e| ApiError::Internal {
            detail: format!("stored request {} cannot be read: {e}", record.id),
        })?;
        Ok(RecordView {
            request_id: &record.id,
            region_id: &record.region_id,
            request,
            status: record.status,
            detail: record.detail.as_deref(),
            created_at: rfc3339(record.created_at),
            last_modified: rfc3339(record.last_modified),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_cover_the_contract() {
        assert_eq!(route("/MEC/v1/service/regions"), Some(Route::Regions));
        assert_eq!(route("/MEC/v1/service/regions/"), Some(Route::Regions));
        assert_eq!(route("/MEC/v1/service/regions/2"), Some(Route::Region("2")));
        assert_eq!(route("/MEC/v1/service/requests"), Some(Route::Requests));
        assert_eq!(
            route("/MEC/v1/service/requests/abc"),
            Some(Route::Request("abc"))
        );
        assert_eq!(route("/MEC/v1/service/requests/a/b"), None);
        assert_eq!(route("/MEC/v1/service"), None);
        assert_eq!(route("/MEC/v2/service/regions"), None);
        assert_eq!(route("/"), None);
    }

    #[test]
    fn health_is_503_once_the_state_can_no_longer_be_written() {
        let dir = std::env::temp_dir().join(format!("mec-api-health-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = crate::store::Store::open(&dir, true).unwrap();
        let service =
            Service::with_store(Vec::new(), store, crate::service::RetryPolicy::default());
        assert_eq!(health(&service).unwrap().status, 200);
        service.stop_journal("fsync of journal-1 failed: EIO");
        let e = health(&service).unwrap_err();
        assert_eq!(e.status(), 503);
        let detail = e.to_string();
        assert!(
            detail.contains("fsync of journal-1 failed: EIO") && detail.contains("restart"),
            "{detail}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_listing_written_record_by_record_is_the_json_array_of_the_views_in_both_spellings() {
        let traffic = model::parse_creation(
            include_str!("../examples/traffic-and-dns-camel.json").as_bytes(),
        )
        .unwrap();
        let stored = [serde_json::to_string(&traffic).unwrap(), "{}".to_string()];
        let records: Vec<Arc<Record>> = (0..3)
            .map(|i| {
                let mut r = Record::new(
                    format!("id-{i}").into(),
                    "2".into(),
                    format!(r#"{{"appDNSRule":[{{"dnsRuleId":"d{i}","domainName":"a.b","ipAddressType":"IP_V4","ipAddress":"1.2.3.4"}}],"appLatency":{{"timeUnit":"ms","latency":2.50}}}}"#).into(),
                    Status::Created,
                    Arc::from([]),
                    0,
                    1_700_000_000_000 + i,
                );
                r.detail = (i == 1).then(|| "why \"so\"".into());
                Arc::new(r)
            })
            .chain(stored.iter().enumerate().map(|(i, text)| {
                Arc::new(Record::new(
                    format!("stored-{i}").into(),
                    "3".into(),
                    text.as_str().into(),
                    Status::Failed,
                    Arc::from([]),
                    0,
                    1_700_000_000_000,
                ))
            }))
            .collect();
        for style in [ApiStyle::Spec, ApiStyle::Camel] {
            let mut streamed = Vec::new();
            write_listing(&mut streamed, &records, style).unwrap();
            let views: Vec<RecordView<'_>> = records
                .iter()
                .map(|r| RecordView::new(r).unwrap())
                .collect();
            let whole = style.to_vec(&views).unwrap();
            assert_eq!(
                String::from_utf8(streamed).unwrap(),
                String::from_utf8(whole).unwrap(),
                "{style:?}"
            );
        }
        let mut empty = Vec::new();
        write_listing(&mut empty, &[], ApiStyle::Spec).unwrap();
        assert_eq!(empty, b"[]");

        // Pulled a piece at a time, no piece is longer than asked, whatever the records'
        // length (a request of 1 MB included), and the pieces make the same array.
        let big = format!(
            r#"{{"transportDependencies":[{{"transport":{{"type":"RPC","protocol":"p","version":"1","security":{{"pad":"{}"}}}},"serializers":"PROTOBUF3","labels":[]}}]}}"#,
            "y".repeat(1 << 20)
        );
        let mut records = records;
        records.push(Arc::new(Record::new(
            "big".into(),
            "2".into(),
            big.as_str().into(),
            Status::Created,
            Arc::from([]),
            0,
            1_700_000_000_000,
        )));
        for style in [ApiStyle::Spec, ApiStyle::Camel] {
            let mut listing = Listing::new(records.clone(), style);
            let (mut pieces, mut joined) = (0, Vec::new());
            loop {
                let mut piece = Vec::new();
                let more = listing.fill(&mut piece, 1000).unwrap();
                assert!(piece.len() <= 1000, "{}", piece.len());
                joined.extend_from_slice(&piece);
                pieces += 1;
                if !more {
                    break;
                }
            }
            assert!(pieces > 1000, "{pieces}");
            let mut whole = Vec::new();
            write_listing(&mut whole, &records, style).unwrap();
            assert_eq!(joined, whole, "{style:?}");
        }
    }

    /// Two regions of the simulated platform (one with a position filter to cut).
    const GOLDEN_REGIONS: &str = "[[region]]\nid = \"2\"\nlatitude = 43.6143899\nlongitude = 7.068931\naltitude = 0.0\nrange_km = 10.0\n[region.mep]\ndriver = \"simulated\"\n[[region]]\nid = \"3\"\nlatitude = 45.0703\nlongitude = 7.6869\naltitude = 12.5\nrange_km = 2.5\n[region.mep]\ndriver = \"simulated\"\n";

    /// Records of every shape a view shows: a DNS-only request, one with traffic filters
    /// (whose `Protocol` and `Token` the camel spelling renames), free-form objects whose
    /// keys are spelled like renamed ones (kept as sent), a detail to escape, an empty one.
    fn golden_records() -> Vec<Arc<Record>> {
        let traffic = model::parse_creation(
            include_str!("../examples/traffic-and-dns-camel.json")
                .replace(
                    "\"protocol\": [\"tcp\"]",
                    "\"protocol\": [\"tcp\"], \"token\": [\"t\"]",
                )
                .as_bytes(),
        )
        .unwrap();
        let free_form = model::parse_creation(
            br#"{"RegionId":"3","transportDependencies":[{"transport":{"type":"RPC","protocol":"p","version":"1","security":{"Protocol":["x"],"RequestId":"y","Regions":{"Token":1}}},"serializers":"JSON","labels":[]}]}"#,
        )
        .unwrap();
        let requests = [
            include_str!("../examples/dns-only.json"),
            &serde_json::to_string(&traffic).unwrap(),
            &serde_json::to_string(&free_form).unwrap(),
            "{}",
        ]
        .map(|text| {
            let parsed = model::parse_creation(text.as_bytes()).ok();
            parsed.map_or_else(|| text.to_string(), |r| serde_json::to_string(&r).unwrap())
        });
        requests
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let status = [
                    Status::Created,
                    Status::Failed,
                    Status::Deleting,
                    Status::Deleted,
                ][i];
                let mut r = Record::new(
                    format!("id-{i}").into(),
                    ["2", "2", "3", "3"][i].into(),
                    text.as_str().into(),
                    status,
                    Arc::from([]),
                    0,
                    1_700_000_000_000 + i as i64 * 1_234,
                );
                r.last_modified += 60_000;
                r.detail = (i == 1).then(|| "why \"so\" \u{e9}\n".into());
                Arc::new(r)
            })
            .collect()
    }

    /// Every view the API renders, in one text: regions, records, listings, problems and the
    /// creation's answer, each in both spellings.
    fn every_view_in_both_spellings() -> String {
        let config = crate::config::Config::parse(GOLDEN_REGIONS, "golden.toml").unwrap();
        let regions = config
            .regions
            .iter()
            .map(|r| Region {
                config: r.clone(),
                driver: crate::mep::build(&r.id, &r.mep),
            })
            .collect();
        let service = Arc::new(Service::with_regions(regions));
        let records = golden_records();
        let mut out = String::new();
        let mut section = |name: String, bytes: &[u8]| {
            out.push_str(&format!("== {name}\n{}\n", String::from_utf8_lossy(bytes)));
        };
        for style in [ApiStyle::Spec, ApiStyle::Camel] {
            for query in [None, Some("latitude=45.07&longitude=7.68")] {
                let r = list_regions(&service, style, query).unwrap();
                section(format!("{style:?} regions {query:?}"), &r.body);
            }
            for record in &records {
                let body = record_json(record, style).unwrap();
                section(format!("{style:?} record {}", record.id), &body);
            }
            let mut listing = Vec::new();
            write_listing(&mut listing, &records, style).unwrap();
            section(format!("{style:?} listing"), &listing);
            let errors = [
                ApiError::Mep {
                    region_id: "2".into(),
                    request_id: Some("id-1".into()),
                    error: crate::mep::MepError::Timeout {
                        url: "http://127.0.0.1:1/x".into(),
                    },
                },
                ApiError::RequestNotFound {
                    request_id: "nope".into(),
                },
            ];
            for e in errors {
                section(
                    format!("{style:?} problem {}", e.status()),
                    &e.to_response(style).body,
                );
            }
            let api = Api {
                service: service.clone(),
                style,
                token: None,
            };
            let created = api.handle(&Request::json(
                "POST",
                "/MEC/v1/service/requests",
                include_str!("../examples/dns-only.json"),
            ));
            let text = String::from_utf8(created.body).unwrap();
            let id = created
                .headers
                .iter()
                .find(|(n, _)| *n == "Location")
                .unwrap()
                .1
                .clone();
            let id = id.rsplit('/').next().unwrap();
            section(
                format!("{style:?} created"),
                text.replace(id, "<id>").as_bytes(),
            );
        }
        out
    }

    /// The golden file holds what the views rendered before both spellings were written by one
    /// serialiser (commit "api: golden bytes of every view"); the API must not change a byte.
    #[test]
    fn every_view_renders_the_bytes_it_always_did_in_both_spellings() {
        let expected = include_str!("../tests/golden/views-in-both-spellings.txt");
        let got = every_view_in_both_spellings();
        // Line by line first, for a readable failure.
        for (e, g) in expected.lines().zip(got.lines()) {
            assert_eq!(e, g);
        }
        assert_eq!(expected, got);
    }

    #[test]
    fn a_record_shown_in_either_spelling_can_be_sent_again_as_it_was() {
        for record in golden_records().iter().filter(|r| r.request.len() > 2) {
            for style in [ApiStyle::Spec, ApiStyle::Camel] {
                let shown = record_json(record, style).unwrap();
                let again = model::parse_creation(&shown).unwrap();
                assert_eq!(&*again.region_id, &*record.region_id, "{style:?}");
                assert_eq!(
                    serde_json::to_string(&again).unwrap(),
                    &*record.request,
                    "{style:?}"
                );
            }
        }
    }

    #[test]
    fn a_listing_query_is_a_limit_and_a_cursor_each_once() {
        assert_eq!(parse_paging(None).unwrap(), Paging::default());
        assert_eq!(
            parse_paging(Some("burst=3&limit=2")).unwrap().limit,
            Some(2),
            "other parameters are ignored"
        );
        assert_eq!(
            parse_paging(Some("limit=5&after=a%2Db")).unwrap(),
            Paging {
                limit: Some(5),
                after: Some("a-b".into())
            }
        );
        for (query, needle) in [
            ("limit=0", "1..=1000000"),
            ("limit=1000001", "1..=1000000"),
            ("limit=-1", "'limit'"),
            ("limit=%2B1", "'limit' = '+1'"),
            ("limit=", "'limit' = ''"),
            ("after=", "'after' is empty"),
            ("limit=1&limit=1", "more than once"),
            ("after=a&after=b", "more than once"),
        ] {
            let e = parse_paging(Some(query)).unwrap_err().to_string();
            assert!(e.contains(needle), "{query}: {e}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_matched_whatever_its_case() {
        for header in [
            "Bearer t0k",
            "bearer t0k",
            "BEARER t0k",
            "bEaReR t0k",
            "Bearer  t0k ",
        ] {
            assert_eq!(bearer_token(header), "t0k", "{header}");
        }
        for header in ["Basic t0k", "Bearert0k", "Bearer", "t0k", "", "Bear t0k"] {
            assert_eq!(bearer_token(header), "", "{header}");
        }
    }

    #[test]
    fn tokens_are_compared_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn forget_and_adopt_are_true_false_or_absent() {
        let remove = Ok(Deletion::Remove);
        assert_eq!(parse_deletion(None), remove);
        assert_eq!(parse_deletion(Some("_=1")), remove);
        assert_eq!(parse_deletion(Some("forget=true")), Ok(Deletion::Forget));
        assert_eq!(parse_deletion(Some("forget=false&x=1")), remove);
        assert_eq!(parse_deletion(Some("adopt=true")), Ok(Deletion::Adopt));
        assert_eq!(
            parse_deletion(Some("forget=true&adopt=true")),
            Ok(Deletion::ForgetAndAdopt)
        );
        assert_eq!(
            parse_deletion(Some("adopt=true&forget=false")),
            Ok(Deletion::Adopt)
        );
        for bad in [
            "forget=yes",
            "forget",
            "forget=true&forget=true",
            "adopt=1",
            "adopt=false&adopt=false",
        ] {
            assert!(parse_deletion(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn forget_and_adopt_values_are_percent_decoded_before_they_are_compared() {
        assert_eq!(parse_deletion(Some("forget=%74rue")), Ok(Deletion::Forget));
        assert_eq!(parse_deletion(Some("adopt=%74%72ue")), Ok(Deletion::Adopt));
        assert_eq!(
            parse_deletion(Some("forget=%66alse&adopt=fals%65")),
            Ok(Deletion::Remove)
        );
        // The value shown is the value compared.
        let e = parse_deletion(Some("forget=%79es"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'forget' = 'yes' must be true or false"), "{e}");
        // Decoding does not make a value more lenient than its plain form.
        for bad in [
            "forget=%20true",
            "adopt=TRUE",
            "adopt=%54rue",
            "forget=true%00",
        ] {
            assert!(parse_deletion(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_position_query_is_both_coordinates_or_none() {
        assert_eq!(parse_position(None).unwrap(), None);
        assert_eq!(parse_position(Some("")).unwrap(), None);
        assert_eq!(
            parse_position(Some("latitude=43.6&longitude=%2D7.5")).unwrap(),
            Some(Position {
                latitude: 43.6,
                longitude: -7.5
            })
        );
        for (query, needle) in [
            ("latitude=1", "'longitude' is missing"),
            ("longitude=1", "'latitude' is missing"),
            ("latitude=x&longitude=1", "'latitude' = 'x' is not a number"),
            ("latitude=91&longitude=1", "out of range"),
            ("latitude=1&longitude=-180.1", "out of range"),
            ("latitude=NaN&longitude=1", "not a number"),
            ("lat=1&longitude=1", "'latitude' is missing"),
            (
                "latitude=1&longitude=2&latitude=3",
                "'latitude' is given more than once",
            ),
            (
                "longitude=2&latitude=1&longitude=2",
                "'longitude' is given more than once",
            ),
        ] {
            let e = parse_position(Some(query)).unwrap_err().to_string();
            assert!(e.contains(needle), "{query}: {e}");
        }
        // Unknown parameters (a client's cache buster) are ignored; known ones still checked.
        assert_eq!(parse_position(Some("_=1&x")).unwrap(), None);
        assert_eq!(
            parse_position(Some("_=1&latitude=1&longitude=2")).unwrap(),
            Some(Position {
                latitude: 1.0,
                longitude: 2.0
            })
        );
        assert!(parse_position(Some("_=1&latitude=x&longitude=2")).is_err());
    }

    #[test]
    fn great_circle_distances_are_right() {
        let sophia = Position {
            latitude: 43.6143899,
            longitude: 7.068931,
        };
        let turin = Position {
            latitude: 45.0703,
            longitude: 7.6869,
        };
        let d = distance_km(sophia, turin);
        assert!((d - 168.0).abs() < 2.0, "{d}");
        assert!(distance_km(sophia, sophia) < 1e-9);
    }

    #[test]
    fn json_content_types_are_accepted_and_others_refused() {
        let mut r = Request::json("POST", "/x", "{}");
        assert!(check_json_content_type(&r).is_ok());
        r.content_type = Some("application/json; charset=utf-8".into());
        assert!(check_json_content_type(&r).is_ok());
        r.content_type = Some("application/merge-patch+json".into());
        assert!(check_json_content_type(&r).is_ok());
        r.content_type = None;
        assert!(check_json_content_type(&r).is_ok());
        r.content_type = Some("application/x-www-form-urlencoded".into());
        assert_eq!(check_json_content_type(&r).unwrap_err().status(), 415);
    }
}
