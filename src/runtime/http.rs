//! `/healthz` (the process answers), `/readyz` (ready to serve: caches
//! synced, or a healthy standby), `/metrics` (Prometheus text format).

use super::metrics::Metrics;
use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub ready: watch::Receiver<bool>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if *s.ready.borrow() {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: caches not synced or the API server is unreachable",
        )
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    // nadc_ready says what /readyz would answer now.
    s.metrics.ready.set(i64::from(*s.ready.borrow()));
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

/// Binds the HTTP address. Done before anything else starts, so that a port
/// already in use stops the process with a clear error instead of leaving it
/// running without probes or metrics.
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on --http-addr {addr}: {e} (is another process using it? choose another address with --http-addr or HTTP_ADDR)"
        )
    })
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let res = router
            .oneshot(
                axum::http::Request::get(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = res.status();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn binding_a_taken_address_names_the_flag() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err().to_string();
        assert!(err.contains(&format!("--http-addr {addr}")), "{err}");
    }

    #[tokio::test]
    async fn readiness_follows_the_flag_and_metrics_render() {
        let (tx, rx) = watch::channel(false);
        let metrics = Arc::new(Metrics::default());
        metrics.slice_write("update");
        let r = router(HttpState { metrics, ready: rx });
        assert_eq!(get(r.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(r.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        tx.send(true).unwrap();
        assert_eq!(get(r.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, body) = get(r.clone(), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("nadc_endpointslice_writes_total{verb=\"update\"} 1"),
            "{body}"
        );
        assert!(body.contains("\nnadc_ready 1\n"), "{body}");
        tx.send(false).unwrap();
        let (_, body) = get(r, "/metrics").await;
        assert!(body.contains("\nnadc_ready 0\n"), "{body}");
    }
}
