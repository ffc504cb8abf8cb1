//! The operator console: a single-page app served at `/console/` from assets compiled into the
//! binary (hand-written HTML, CSS and one ES module; no build step, no CDN, nothing fetched at
//! run time).
//!
//! The page talks to the same JSON API as any other client, with a bearer token it keeps in
//! memory only (a reload signs out): no cookie is ever set, so there is no CSRF surface. Every
//! console response carries a strict Content-Security-Policy (no inline script or style, no
//! `eval`, no framing), `X-Content-Type-Options: nosniff` and `Cache-Control: no-cache` (the
//! browser revalidates, so a new binary's assets are picked up at once).

use axum::{
    http::{header, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::get,
    Router,
};

/// Where the console is mounted.
pub const CONSOLE_PATH: &str = "/console/";

/// The console's Content-Security-Policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
    object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const CONSOLE_CSS: &str = include_str!("../console/console.css");
const ICON_SVG: &str = include_str!("../console/icon.svg");

/// The console's routes (outside the OpenAPI document: they serve a page, not the API).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent(CONSOLE_PATH) }),
        )
        .route(
            CONSOLE_PATH,
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/console.css",
            get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }),
        )
        .route(
            "/console/icon.svg",
            get(|| async { asset("image/svg+xml", ICON_SVG) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            HeaderValue::from_static("same-origin"),
        ),
    ];
    (StatusCode::OK, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    async fn get_path(path: &str) -> Response {
        let request = http::Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request");
        routes::<()>().oneshot(request).await.expect("infallible")
    }

    #[tokio::test]
    async fn every_asset_has_the_security_headers() {
        for (path, kind) in [
            ("/console/", "text/html"),
            ("/console/app.js", "text/javascript"),
            ("/console/console.css", "text/css"),
            ("/console/icon.svg", "image/svg+xml"),
        ] {
            let response = get_path(path).await;
            assert_eq!(response.status(), 200, "{path}");
            let h = response.headers();
            let csp = h[header::CONTENT_SECURITY_POLICY].to_str().expect("csp");
            assert!(csp.contains("default-src 'self'"), "{csp}");
            assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
            assert!(!csp.contains("unsafe-"), "{csp}");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
            assert!(
                h[header::CONTENT_TYPE]
                    .to_str()
                    .is_ok_and(|v| v.starts_with(kind)),
                "{path}"
            );
        }
    }

    #[tokio::test]
    async fn the_bare_path_redirects_to_the_console() {
        let response = get_path("/console").await;
        assert_eq!(response.status(), 308);
        assert_eq!(response.headers()[header::LOCATION], CONSOLE_PATH);
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        // The CSP refuses them; this keeps the page honest about it.
        assert!(!INDEX_HTML.contains("<script>"));
        assert!(!INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<style"));
        assert!(INDEX_HTML.contains("<script type=\"module\" src=\"app.js\"></script>"));
        // Data never goes through HTML parsing.
        assert!(!APP_JS.contains("innerHTML"));
        assert!(!APP_JS.contains("outerHTML"));
        assert!(!APP_JS.contains("insertAdjacentHTML"));
        assert!(!APP_JS.contains("document.write"));
    }
}
