//! What every HTTP request passes through before and after its route: the origin check and CORS
//! headers (with the origins SIGHUP last loaded), the peer's address for the routes, and one log
//! line naming the route's template, its status and how long it took.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use hyper::body::Incoming;
use tower_service::Service;
use warp::{
    filters::BoxedFilter,
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header},
    reply::{Reply, Response},
};

use super::{allow::Methods, error::ApiError};
use crate::live::{Live, Origins};

/// The methods and request headers a page on an allowed origin may use.
const CORS_METHODS: &str = "GET, POST";
const CORS_HEADERS: &str = "authorization, content-type";
/// Response headers a page may read besides the CORS-safelisted ones.
const CORS_EXPOSED: &str = "retry-after, allow";
/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The address of the client a request came from, as the routes see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

#[derive(Clone)]
pub struct Front {
    routes: BoxedFilter<(Response,)>,
    methods: Arc<Methods>,
    live: Arc<Live>,
}

impl Front {
    pub fn new(routes: BoxedFilter<(Response,)>, methods: Arc<Methods>, live: Arc<Live>) -> Self {
        Self {
            routes,
            methods,
            live,
        }
    }

    pub async fn handle(&self, peer: SocketAddr, mut request: Request<Incoming>) -> Response {
        let started = Instant::now();
        let method = request.method().clone();
        let route = self.methods.route(request.uri().path()).to_owned();
        // The rules are shared, not copied: a request holds the set that was current when it came.
        let rules = self.live.rules();
        let origins = &rules.origins;
        let origin = request.headers().get(header::ORIGIN).cloned();
        let response = match refuse_or_preflight(origins, origin.as_ref(), &request) {
            Some(early) => early,
            None => {
                request.extensions_mut().insert(Peer(peer));
                let mut routes = warp::service(self.routes.clone());
                let Ok(mut response) = routes.call(request).await;
                if let Some(origin) = origin.filter(|_| origins.is_restricted()) {
                    allow_origin(response.headers_mut(), origin);
                    response.headers_mut().insert(
                        header::ACCESS_CONTROL_EXPOSE_HEADERS,
                        HeaderValue::from_static(CORS_EXPOSED),
                    );
                }
                response
            }
        };
        // The route's template only: the path holds ids, and its query may hold an access token.
        tracing::info!(
            method = %method,
            route = %route,
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        response
    }
}

/// A request from an origin that is not allowed is refused before any route sees it; a preflight
/// from an allowed one is answered here. Everything else goes on to the routes.
fn refuse_or_preflight<B>(
    origins: &Origins,
    origin: Option<&HeaderValue>,
    request: &Request<B>,
) -> Option<Response> {
    let origin = origin?;
    if !origins.is_restricted() {
        return None;
    }
    if !origins.allows(Some(origin.as_bytes())) {
        return Some(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                "this origin is not in server.cors_origins",
            )
            .into_response(),
        );
    }
    let headers = request.headers();
    let asked_method = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD);
    if request.method() != Method::OPTIONS || asked_method.is_none() {
        return None;
    }
    Some(preflight(origin, asked_method, headers))
}

fn preflight(
    origin: &HeaderValue,
    asked_method: Option<&HeaderValue>,
    headers: &HeaderMap,
) -> Response {
    let refuse = |detail: String| {
        ApiError::new(StatusCode::FORBIDDEN, "cors_not_allowed", detail).into_response()
    };
    let method_ok = asked_method.is_some_and(|method| {
        CORS_METHODS
            .split(", ")
            .any(|allowed| allowed.as_bytes() == method.as_bytes())
    });
    if !method_ok {
        return refuse(format!("a page may only use {CORS_METHODS} on this API"));
    }
    let asked_headers = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .flat_map(|value| value.to_str().unwrap_or("\u{0}").split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty());
    for name in asked_headers {
        if !CORS_HEADERS.split(", ").any(|allowed| allowed == name) {
            return refuse(format!("a page may only send the headers {CORS_HEADERS}"));
        }
    }
    let mut response = Response::new(Default::default());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let answer = response.headers_mut();
    allow_origin(answer, origin.clone());
    answer.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(CORS_METHODS),
    );
    answer.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(CORS_HEADERS),
    );
    answer.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    response
}

fn allow_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    // Caches must not hand one origin's answer to another.
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}
