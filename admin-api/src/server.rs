//! The HTTP server: server-wide layers (request ids, tracing, error envelope, panics,
//! timeout, body limit) and graceful shutdown.

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::{
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderName, HeaderValue},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::{catch_panic::CatchPanicLayer, trace::TraceLayer};

use crate::{error::ApiError, extract::ClientIpRule, state::AppState, StartupError};

/// The request id header: taken from the client when sane, generated otherwise, echoed on the
/// response, and used in error envelopes, logs and audit rows.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the complete application: routes plus every server-wide layer.
pub fn app(state: AppState) -> Router {
    let timeout = state.config().request_timeout();
    let body_limit = state.config().admin.body_limit_bytes;
    let client_ip = ClientIpRule::new(&state.config().admin.trusted_cidrs);
    let audit_key =
        crate::extract::AuditKey(state.config().secret_key.clone().map(std::sync::Arc::new));
    let metrics_route = Router::new()
        .route(
            crate::metrics::METRICS_PATH,
            axum::routing::get(crate::metrics::serve),
        )
        .with_state(state.clone());
    let router = crate::routes::router(state.clone())
        .merge(metrics_route)
        .merge(crate::console::routes())
        // Inside the router's layer, so that each request's matched route is known.
        .layer(middleware::from_fn_with_state(state, crate::metrics::track))
        .layer(middleware::from_fn_with_state(
            client_ip,
            crate::extract::client_addr,
        ))
        .layer(axum::Extension(audit_key));
    with_layers(router, timeout, body_limit)
}

/// Wraps a router in the server-wide layers.
fn with_layers(router: Router, timeout: Duration, body_limit: usize) -> Router {
    router.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn(request_id))
            .layer(
                TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }),
            )
            .layer(middleware::from_fn(crate::error::render_errors))
            .layer(CatchPanicLayer::new())
            .layer(middleware::from_fn_with_state(timeout, request_timeout))
            .layer(DefaultBodyLimit::max(body_limit)),
    )
}

fn sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| b.is_ascii_graphic())
}

async fn request_id(mut request: Request, next: Next) -> Response {
    let id = match request.headers().get(REQUEST_ID_HEADER) {
        Some(v) if sane_request_id(v) => v.clone(),
        _ => {
            let generated = ulid::Ulid::new().to_string();
            let value = HeaderValue::from_str(&generated)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            request
                .headers_mut()
                .insert(REQUEST_ID_HEADER, value.clone());
            value
        }
    };
    let mut response = next.run(request).await;
    response.headers_mut().insert(REQUEST_ID_HEADER, id);
    response
}

async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Serves `state` on `listener` until `shutdown` resolves, then drains in-flight requests.
/// Meanwhile keeps the gateway config in Redis current ([`crate::gateway_sync`]) and deletes
/// old sign-in events ([`crate::sign_in_events`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let sync = crate::gateway_sync::run(state.clone());
    let retention = tokio::spawn(crate::sign_in_events::run(state.clone()));
    let app = app(state);
    let server = std::future::IntoFuture::into_future(
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown),
    );
    // The sync loop never ends by itself; it stops with the server.
    let served = tokio::select! {
        served = server => served.map_err(StartupError::Io),
        () = sync => Ok(()),
    };
    retention.abort();
    served
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{body::Body, routing::get};
    use tower::ServiceExt;

    async fn envelope_of(router: Router, path: &str) -> (u16, serde_json::Value, String) {
        let app = with_layers(router, Duration::from_millis(50), 4096);
        let request = http::Request::builder()
            .uri(path)
            .body(Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("infallible");
        let status = response.status().as_u16();
        let id = response
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        let body = serde_json::from_slice(&bytes).expect("json body");
        (status, body, id)
    }

    #[tokio::test]
    async fn panics_become_a_500_envelope_without_details() {
        let router = Router::new().route(
            "/boom",
            get(|| async {
                if std::hint::black_box(true) {
                    panic!("secret detail");
                }
                "unreachable"
            }),
        );
        let (status, body, id) = envelope_of(router, "/boom").await;
        assert_eq!(status, 500);
        assert_eq!(body["error"]["code"], "INTERNAL_ERROR");
        assert_eq!(body["error"]["request_id"], id.as_str());
        assert!(!body.to_string().contains("secret detail"), "{body}");
    }

    #[tokio::test]
    async fn slow_requests_become_a_503_envelope() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let (status, body, _) = envelope_of(router, "/slow").await;
        assert_eq!(status, 503);
        assert_eq!(body["error"]["code"], "UNAVAILABLE");
        assert_eq!(body["error"]["message"], "request timed out");
    }

    #[test]
    fn request_ids_from_clients_are_bounded() {
        assert!(sane_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!sane_request_id(&HeaderValue::from_static("")));
        assert!(!sane_request_id(&HeaderValue::from_static("a b")));
        let long = "x".repeat(129);
        assert!(!sane_request_id(
            &HeaderValue::from_str(&long).expect("header")
        ));
    }
}
