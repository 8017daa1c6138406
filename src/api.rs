//! The northbound REST API (`/MEC/v1`): one `match` over method and route that shows the whole
//! API, handlers named after their routes, and the JSON views of regions and stored requests in
//! the configured spelling. Pure functions of request and service: no sockets here.

use serde::Serialize;

use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::model::{self, ApiStyle, CreationRequest, Status};
use crate::service::{Region, Removal, Service};
use crate::store::Record;
use crate::util::rfc3339;

/// Base path of the API.
pub const BASE: &str = "/MEC/v1";

/// The resources of the API.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Regions,
    Region(&'a str),
    Requests,
    Request(&'a str),
}

impl Route<'_> {
    fn allow(&self) -> &'static str {
        match self {
            Route::Regions | Route::Region(_) => "GET, HEAD",
            Route::Requests => "GET, HEAD, POST",
            Route::Request(_) => "GET, HEAD, DELETE",
        }
    }
}

fn route(path: &str) -> Option<Route<'_>> {
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

/// Answers one northbound request.
pub fn handle(service: &Service, style: ApiStyle, request: &Request) -> Response {
    dispatch(service, style, request).unwrap_or_else(|e| e.to_response(style))
}

fn dispatch(service: &Service, style: ApiStyle, request: &Request) -> Result<Response, ApiError> {
    let path = request.path();
    let Some(route) = route(path) else {
        return Err(ApiError::NoRoute {
            path: path.to_string(),
        });
    };
    let method = match request.method.as_str() {
        "HEAD" => "GET",
        m => m,
    };
    match (method, &route) {
        ("GET", Route::Regions) => Ok(list_regions(service, style)),
        ("GET", Route::Region(id)) => list_region_requests(service, style, id),
        ("GET", Route::Requests) => list_requests(service, style),
        ("POST", Route::Requests) => create_request(service, style, request),
        ("GET", Route::Request(id)) => get_request(service, style, id),
        ("DELETE", Route::Request(id)) => delete_request(service, style, id),
        _ => Err(ApiError::MethodNotAllowed {
            path: path.to_string(),
            allow: route.allow(),
        }),
    }
}

fn list_regions(service: &Service, style: ApiStyle) -> Response {
    let regions: Vec<RegionView<'_>> = service
        .regions()
        .iter()
        .map(|r| RegionView::new(r, style))
        .collect();
    let body = match style {
        ApiStyle::Spec => serde_json::to_vec(&RegionsSpec { regions }),
        ApiStyle::Camel => serde_json::to_vec(&RegionsCamel { regions }),
    };
    Response::json(200, body.expect("regions serialise"))
}

fn list_region_requests(
    service: &Service,
    style: ApiStyle,
    id: &str,
) -> Result<Response, ApiError> {
    if service.region(id).is_none() {
        return Err(ApiError::RegionNotFound {
            region_id: id.to_string(),
        });
    }
    records_response(&service.list(Some(id)), style)
}

fn list_requests(service: &Service, style: ApiStyle) -> Result<Response, ApiError> {
    records_response(&service.list(None), style)
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
    let body = match style {
        ApiStyle::Spec => serde_json::json!({ "RequestId": id }),
        ApiStyle::Camel => serde_json::json!({ "requestId": id }),
    };
    Ok(Response::json(201, body.to_string().into_bytes())
        .with_header("Location", format!("{BASE}/service/requests/{id}")))
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
fn delete_request(service: &Service, style: ApiStyle, id: &str) -> Result<Response, ApiError> {
    match service.delete(id)? {
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

fn records_response(records: &[Record], style: ApiStyle) -> Result<Response, ApiError> {
    let views = records
        .iter()
        .map(|r| RecordView::new(r, style))
        .collect::<Result<Vec<_>, _>>()?;
    let body = model::with_style(style, || serde_json::to_vec(&views)).expect("records serialise");
    Ok(Response::json(200, body))
}

fn record_json(record: &Record, style: ApiStyle) -> Result<Vec<u8>, ApiError> {
    let view = RecordView::new(record, style)?;
    Ok(model::with_style(style, || serde_json::to_vec(&view)).expect("a record serialises"))
}

#[derive(Serialize)]
struct RegionsSpec<'a> {
    #[serde(rename = "Regions")]
    regions: Vec<RegionView<'a>>,
}

#[derive(Serialize)]
struct RegionsCamel<'a> {
    regions: Vec<RegionView<'a>>,
}

/// One item of the regions list: `{"MECRegionInfo": {"RegionId", "LocationInfo"}}` or its
/// camelCase twin.
#[derive(Serialize)]
struct RegionView<'a> {
    #[serde(rename = "MECRegionInfo", skip_serializing_if = "Option::is_none")]
    spec: Option<RegionInfoSpec<'a>>,
    #[serde(rename = "mecRegionInfo", skip_serializing_if = "Option::is_none")]
    camel: Option<RegionInfoCamel<'a>>,
}

#[derive(Serialize)]
struct RegionInfoSpec<'a> {
    #[serde(rename = "RegionId")]
    region_id: &'a str,
    #[serde(rename = "LocationInfo")]
    location: Location,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegionInfoCamel<'a> {
    region_id: &'a str,
    location_info: Location,
}

#[derive(Serialize)]
struct Location {
    latitude: f64,
    longitude: f64,
    altitude: f64,
    range: f64,
}

impl<'a> RegionView<'a> {
    fn new(region: &'a Region, style: ApiStyle) -> Self {
        let c = &region.config;
        let location = Location {
            latitude: c.latitude,
            longitude: c.longitude,
            altitude: c.altitude,
            range: c.range_km,
        };
        match style {
            ApiStyle::Spec => RegionView {
                spec: Some(RegionInfoSpec {
                    region_id: &c.id,
                    location,
                }),
                camel: None,
            },
            ApiStyle::Camel => RegionView {
                spec: None,
                camel: Some(RegionInfoCamel {
                    region_id: &c.id,
                    location_info: location,
                }),
            },
        }
    }
}

/// A stored request as the API shows it: what the caller sent, plus identity and status.
#[derive(Serialize)]
struct RecordView<'a> {
    #[serde(rename = "RequestId", skip_serializing_if = "Option::is_none")]
    request_id_spec: Option<&'a str>,
    #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
    request_id_camel: Option<&'a str>,
    #[serde(rename = "RegionId", skip_serializing_if = "Option::is_none")]
    region_id_spec: Option<&'a str>,
    #[serde(rename = "regionId", skip_serializing_if = "Option::is_none")]
    region_id_camel: Option<&'a str>,
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
    fn new(record: &'a Record, style: ApiStyle) -> Result<Self, ApiError> {
        let request: CreationRequest =
            serde_json::from_str(&record.request).map_err(|e| ApiError::Internal {
                detail: format!("stored request {} cannot be read: {e}", record.id),
            })?;
        let (id, region) = (Some(record.id.as_str()), Some(record.region_id.as_str()));
        let (request_id_spec, request_id_camel, region_id_spec, region_id_camel) = match style {
            ApiStyle::Spec => (id, None, region, None),
            ApiStyle::Camel => (None, id, None, region),
        };
        Ok(RecordView {
            request_id_spec,
            request_id_camel,
            region_id_spec,
            region_id_camel,
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
