//! `405 Method Not Allowed` with the `Allow` header RFC 9110 §15.5.6 requires. warp's own rejection
//! does not say which path refused the method, so a last filter answers instead, from a table of
//! every path and its methods read off the OpenAPI document (plus the documentation pages, which the
//! document does not describe). Documenting a route is thus what gives it its `Allow`, and a route
//! that is not documented is caught by the tests, not left without one.

use std::sync::Arc;

use utoipa::openapi::OpenApi;
use warp::{
    Filter, Rejection,
    http::{HeaderValue, Method, StatusCode, header},
    path::FullPath,
    reply::{Reply, Response},
};

use super::error::ApiError;

/// Every path teachlyd answers, as OpenAPI templates, with the methods each takes.
#[derive(Debug, Clone)]
pub struct Methods {
    routes: Vec<(Template, Vec<Method>)>,
}

/// What a request log line and a metric name a request by: its route's template, never the raw
/// path (which holds ids, and for a wrong path anything a client typed).
pub const UNMATCHED_ROUTE: &str = "unmatched";

impl Methods {
    /// The operations of `document`, and `pages` (which take GET).
    pub fn new(document: &OpenApi, pages: &[&str]) -> Self {
        let mut routes: Vec<(Template, Vec<Method>)> = document
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let methods = [
                    (Method::GET, &item.get),
                    (Method::POST, &item.post),
                    (Method::PUT, &item.put),
                    (Method::PATCH, &item.patch),
                    (Method::DELETE, &item.delete),
                    (Method::HEAD, &item.head),
                    (Method::OPTIONS, &item.options),
                    (Method::TRACE, &item.trace),
                ]
                .into_iter()
                .filter(|(_, operation)| operation.is_some())
                .map(|(method, _)| method)
                .collect();
                (Template::parse(path), methods)
            })
            .collect();
        routes.extend(
            pages
                .iter()
                .map(|page| (Template::parse(page), vec![Method::GET])),
        );
        Self { routes }
    }

    /// The template of the route `path` belongs to: of those it matches, the one with the most
    /// literal segments (`/users/me` rather than `/users/{id}`).
    pub fn route(&self, path: &str) -> &str {
        self.routes
            .iter()
            .filter(|(template, _)| template.matches(path))
            .max_by_key(|(template, _)| template.literals())
            .map_or(UNMATCHED_ROUTE, |(template, _)| template.text.as_str())
    }

    /// The methods `path` takes, or `None` when no route has that path.
    pub fn allowed(&self, path: &str) -> Option<Vec<Method>> {
        let mut allowed: Vec<Method> = Vec::new();
        let mut known = false;
        for (template, methods) in &self.routes {
            if template.matches(path) {
                known = true;
                for method in methods {
                    if !allowed.contains(method) {
                        allowed.push(method.clone());
                    }
                }
            }
        }
        known.then_some(allowed)
    }
}

/// Answers 405 with `Allow` to a known path asked with a method it does not take; rejects
/// everything else as not found, so that an earlier route's own rejection (413, 411, …) stands.
pub fn wrong_method(
    methods: Arc<Methods>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and_then(move |method: Method, path: FullPath| {
            let allowed = methods.allowed(path.as_str());
            async move {
                match allowed {
                    Some(allowed) if !allowed.contains(&method) => Ok(not_allowed(&allowed)),
                    _ => Err(warp::reject::not_found()),
                }
            }
        })
}

fn not_allowed(allowed: &[Method]) -> Response {
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("this route takes {list} only"),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&list) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// An OpenAPI path template: `{name}` is one segment, a final `{name*}` any number of them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    segments: Vec<Segment>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

impl Template {
    fn parse(template: &str) -> Self {
        let segments = template
            .trim_start_matches('/')
            .split('/')
            .filter(|segment| !segment.is_empty())
            .map(|segment| match segment.strip_prefix('{') {
                Some(name) if name.ends_with("*}") => Segment::Rest,
                Some(_) => Segment::Param,
                None => Segment::Literal(segment.to_owned()),
            })
            .collect();
        Self {
            segments,
            text: template.to_owned(),
        }
    }

    fn literals(&self) -> usize {
        self.segments
            .iter()
            .filter(|segment| matches!(segment, Segment::Literal(_)))
            .count()
    }

    /// Whether warp's filters for this template take `path`: segments compare undecoded, a
    /// parameter is never empty, and one trailing slash is ignored (as `warp::path::end` does).
    fn matches(&self, path: &str) -> bool {
        let Some(path) = path.strip_prefix('/') else {
            return false;
        };
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut segments = path.split('/').filter(|_| !path.is_empty());
        for expected in &self.segments {
            match expected {
                Segment::Rest => return true,
                Segment::Literal(literal) => {
                    if segments.next() != Some(literal.as_str()) {
                        return false;
                    }
                }
                Segment::Param => {
                    if segments.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
            }
        }
        segments.next().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_as_warp_routes_do() {
        let messages = Template::parse("/conversations/{peer_id}/messages");
        assert!(messages.matches("/conversations/7/messages"));
        assert!(messages.matches("/conversations/7/messages/"));
        assert!(messages.matches("/conversations/%FF/messages"));
        assert!(!messages.matches("/conversations//messages"));
        assert!(!messages.matches("/conversations/7/messages//"));
        assert!(!messages.matches("/conversations/7/seen"));
        assert!(!messages.matches("/conversations/7"));
        let docs = Template::parse("/docs/{path*}");
        for path in ["/docs", "/docs/", "/docs/index.html", "/docs/a/b"] {
            assert!(docs.matches(path), "{path}");
        }
        assert!(!docs.matches("/documents"));
        assert!(Template::parse("/health").matches("/health/"));
        assert!(!Template::parse("/health").matches("/"));
    }

    #[test]
    fn a_path_takes_the_methods_of_every_template_it_matches() {
        let mut document = OpenApi::default();
        let operation = utoipa::openapi::path::Operation::default();
        document.paths.add_path_operation(
            "/users/me",
            vec![utoipa::openapi::path::HttpMethod::Get],
            operation.clone(),
        );
        document.paths.add_path_operation(
            "/users/{id}",
            vec![utoipa::openapi::path::HttpMethod::Post],
            operation,
        );
        let methods = Methods::new(&document, &["/docs/{path*}"]);
        assert_eq!(
            methods.allowed("/users/me"),
            Some(vec![Method::GET, Method::POST])
        );
        assert_eq!(methods.allowed("/users/7"), Some(vec![Method::POST]));
        assert_eq!(methods.allowed("/docs/x.css"), Some(vec![Method::GET]));
        assert_eq!(methods.allowed("/nowhere"), None);
        assert_eq!(methods.route("/users/me"), "/users/me");
        assert_eq!(methods.route("/users/7"), "/users/{id}");
        assert_eq!(methods.route("/docs/a/b.css"), "/docs/{path*}");
        assert_eq!(methods.route("/users/7/secret?token=x"), UNMATCHED_ROUTE);
    }
}
