//! What every HTTP request passes through before and after its route: the origin check and CORS
//! headers (with the origins SIGHUP last loaded), the client's address, the rate limits of SPEC §7,
//! a deadline for the route, the headers that keep a browser from reading JSON as something else,
//! and one log line naming the route's template, its status and how long it took.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use hyper::body::Incoming;
use tower_service::Service;
use warp::{
    filters::BoxedFilter,
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header},
    reply::{Reply, Response},
};

use super::{
    allow::Methods, caps::ConnectionSlot, client_ip::TrustedProxies, error::ApiError,
    extract::bearer_token,
};
use crate::{
    app::App,
    live::Origins,
    rate::{Key, Limited, Scope},
};

/// The methods and request headers a page on an allowed origin may use.
const CORS_METHODS: &str = "GET, POST";
const CORS_HEADERS: &str = "authorization, content-type";
/// Response headers a page may read besides the CORS-safelisted ones.
const CORS_EXPOSED: &str = "retry-after, allow";
/// How long a browser may reuse a preflight's answer.
const PREFLIGHT_MAX_AGE: &str = "600";

/// Where a request's connection comes from: the socket's peer, and the client behind it (the same
/// address unless the peer is a trusted proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub socket: SocketAddr,
    pub client: IpAddr,
}

/// Pages that load scripts and styles of their own (the API documentation) get no CSP here.
const PAGES_WITH_SCRIPTS: [&str; 2] = ["/docs", "/redoc"];
/// Nothing the JSON routes answer is a document a browser should render or let a page frame.
const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Clone)]
pub struct Front {
    routes: BoxedFilter<(Response,)>,
    methods: Arc<Methods>,
    app: Arc<App>,
    trusted: Arc<TrustedProxies>,
}

impl Front {
    pub fn new(
        routes: BoxedFilter<(Response,)>,
        methods: Arc<Methods>,
        app: Arc<App>,
        trusted: Arc<TrustedProxies>,
    ) -> Self {
        Self {
            routes,
            methods,
            app,
            trusted,
        }
    }

    /// Answers one request that came over the connection holding `slot`.
    pub async fn handle(
        &self,
        peer: SocketAddr,
        slot: Option<ConnectionSlot>,
        mut request: Request<Incoming>,
    ) -> Response {
        let started = Instant::now();
        let method = request.method().clone();
        let route = self.methods.route(request.uri().path()).to_owned();
        let client = self.trusted.client_ip(peer.ip(), request.headers());
        // The rules are shared, not copied: a request holds the set that was current when it came.
        let rules = self.app.live.rules();
        let origins = &rules.origins;
        let origin = request.headers().get(header::ORIGIN).cloned();
        let has_body = has_body(request.headers());
        let early = refuse_or_preflight(origins, origin.as_ref(), &request).or_else(|| {
            let (scope, key) = self.limit_of(&route, &method, client, request.headers())?;
            let refused = rules.rate.check(scope, key).err()?;
            self.app.metrics.rate_limited(scope);
            tracing::debug!(scope = scope.name(), %client, "rate limited");
            Some(rate_limited(refused))
        });
        let refused_early = early.is_some();
        let mut response = match early {
            Some(early) => early,
            None => {
                request.extensions_mut().insert(Peer {
                    socket: peer,
                    client,
                });
                if let Some(slot) = slot {
                    request.extensions_mut().insert(slot);
                }
                let mut routes = warp::service(self.routes.clone());
                let limit = self.app.config.server.request_timeout;
                match tokio::time::timeout(limit.0, routes.call(request)).await {
                    Ok(Ok(response)) => response,
                    Err(_) => ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        format!("the request was not complete within {limit}"),
                    )
                    .into_response(),
                }
            }
        };
        if let Some(origin) = origin.filter(|_| origins.is_restricted())
            && !response
                .headers()
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            && origins.allows(Some(origin.as_bytes()))
        {
            allow_origin(response.headers_mut(), origin);
            response.headers_mut().insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSED),
            );
        }
        protect(&route, response.headers_mut());
        // A body left unread cannot be skipped to reach the next request, so the connection ends
        // after this answer; saying so keeps a client from sending its next request into it.
        let body_unread = refused_early
            || matches!(
                response.status(),
                StatusCode::PAYLOAD_TOO_LARGE
                    | StatusCode::LENGTH_REQUIRED
                    | StatusCode::REQUEST_TIMEOUT
            );
        if has_body && body_unread {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // The route's template only: the path holds ids, and its query may hold an access token.
        let took = started.elapsed();
        let status = response.status();
        self.app.metrics.http_request(&method, &route, status, took);
        tracing::info!(
            method = %method,
            route = %route,
            status = status.as_u16(),
            latency_ms = took.as_secs_f64() * 1000.0,
            "request"
        );
        response
    }

    /// The limit a request to `route` counts against, and for whom (SPEC §7). A chat route counts
    /// per user when the request carries a token that verifies (a signature check, no database),
    /// else per address, so requests without a valid token cannot escape the limit.
    fn limit_of(
        &self,
        route: &str,
        method: &Method,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Option<(Scope, Key)> {
        let scope = scope_of(route, method)?;
        let key = match scope {
            Scope::ChatReads | Scope::ChatWrites => headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(bearer_token)
                .and_then(|token| self.app.auth.user_of_token(token))
                .map_or(Key::Ip(client), Key::User),
            _ => Key::Ip(client),
        };
        Some((scope, key))
    }
}

/// Which limit a request counts against, by its route's template; `None` for the documentation, a
/// path no route has, and a preflight.
pub(crate) fn scope_of(route: &str, method: &Method) -> Option<Scope> {
    if method == Method::OPTIONS || route == super::allow::UNMATCHED_ROUTE {
        return None;
    }
    let first = route.split('/').nth(1).unwrap_or_default();
    match first {
        "health" => Some(Scope::Health),
        "ready" => Some(Scope::Ready),
        "auth" => Some(Scope::Auth),
        "ws" => Some(Scope::WsUpgrades),
        // Prometheus scrapes from `metrics.allow` addresses only, on its own schedule.
        "docs" | "redoc" | "api-docs" | "openapi.json" | "metrics" => None,
        _ if method == Method::GET || method == Method::HEAD => Some(Scope::ChatReads),
        _ => Some(Scope::ChatWrites),
    }
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0")
}

fn rate_limited(refused: Limited) -> Response {
    let seconds = refused.retry_after_secs().max(1);
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many requests; try again in {seconds} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// `nosniff` everywhere, and a CSP that allows nothing on every route but the documentation pages.
fn protect(route: &str, headers: &mut HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    let is_page = |page: &&str| {
        route
            .strip_prefix(*page)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if !PAGES_WITH_SCRIPTS.iter().any(is_page) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(API_CSP),
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_documented_route_counts_against_the_limit_spec_7_names() {
        let document = crate::http::docs::document(&Config::default());
        let mut seen = 0;
        for (path, item) in &document.paths.paths {
            let methods = [
                (Method::GET, item.get.is_some()),
                (Method::POST, item.post.is_some()),
            ];
            for (method, _) in methods.iter().filter(|(_, present)| *present) {
                if path == "/metrics" {
                    assert_eq!(scope_of(path, method), None, "Prometheus scrapes unlimited");
                    seen += 1;
                    continue;
                }
                let expected = match path.as_str() {
                    "/health" => Scope::Health,
                    "/ready" => Scope::Ready,
                    auth if auth.starts_with("/auth/") => Scope::Auth,
                    "/ws" | "/ws/chat/{user_id}" => Scope::WsUpgrades,
                    chat if chat.starts_with("/users") || chat.starts_with("/conversations") => {
                        if *method == Method::GET {
                            Scope::ChatReads
                        } else {
                            Scope::ChatWrites
                        }
                    }
                    other => panic!("{method} {other} is not in SPEC §7's table: decide its limit"),
                };
                assert_eq!(scope_of(path, method), Some(expected), "{method} {path}");
                seen += 1;
            }
        }
        assert!(seen >= 13, "{seen} operations");
        for page in crate::http::docs::PAGES {
            assert_eq!(scope_of(page, &Method::GET), None, "{page}");
        }
        assert_eq!(scope_of("/health", &Method::OPTIONS), None);
        assert_eq!(
            scope_of(crate::http::allow::UNMATCHED_ROUTE, &Method::GET),
            None
        );
    }
}
