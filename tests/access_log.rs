//! The access line says why the proxy answered itself: `error` names the kind of
//! failure (`upstream_connect` for a refused upstream's 502), `refused` the refusal
//! (`csrf` for a cross-site POST's 403); a request the upstream answered has neither.
//!
//! The lines are read from a JSON subscriber this binary installs for itself, so no
//! warning has to be joined to a request by its id.

// Helpers outside `#[test]` functions may fail loudly too; clippy.toml only allows
// that inside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::{refused_addr, MockUpstream, TestProxy};
use reqwest::StatusCode;

/// Every access line this test binary logged, as JSON text.
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "warn,cloakroom::access=info",
            ))
            .with_writer(move || Sink(sink.clone()))
            .finish();
        // Before any proxy starts (and before `init_tracing`, which then keeps it).
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        lines
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access line of the request with this `X-Request-Id` (its fields object).
async fn access_line(request_id: &str) -> serde_json::Value {
    let mut found = None;
    common::poll_until(common::SOON, "the access line", || {
        let text = String::from_utf8_lossy(&captured().lock().unwrap()).into_owned();
        found = text
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|line| line["target"] == "cloakroom::access")
            .find(|line| line["fields"]["request_id"] == request_id)
            .map(|line| line["fields"].clone());
        let done = found.is_some();
        async move { done }
    })
    .await;
    found.unwrap()
}

/// A proxy with the access log on, one `/` route without sessions to `server`.
async fn proxy_to(server: &str) -> TestProxy {
    captured();
    TestProxy::builder()
        .config(format!(
            "[log]\naccess = true\n\n[upstreams.app]\nservers = [\"{server}\"]\n\n\
             [[routes]]\npath = \"/\"\nupstream = \"app\"\nsession = false\n"
        ))
        .start()
        .await
}

fn request_id(response: &reqwest::Response) -> String {
    response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_access_line_names_the_upstream_connect_error() {
    let proxy = proxy_to(&refused_addr().to_string()).await;

    let response = proxy.client_h1().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let line = access_line(&request_id(&response)).await;
    assert_eq!(line["status"], 502);
    assert_eq!(line["error"], "upstream_connect");
    assert_eq!(line["refused"], "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_post_access_line_names_the_csrf_refusal() {
    let app = MockUpstream::start("app").await;
    let proxy = proxy_to(&app.server()).await;

    let response = proxy
        .client_h1()
        .post(proxy.url("/.cloakroom/logout"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let line = access_line(&request_id(&response)).await;
    assert_eq!(line["status"], 403);
    assert_eq!(line["refused"], "csrf");
    assert_eq!(line["error"], "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_request_access_line_has_no_error_and_no_refusal() {
    let app = MockUpstream::start("app").await;
    let proxy = proxy_to(&app.server()).await;

    let response = proxy.client_h1().get(proxy.url("/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let line = access_line(&request_id(&response)).await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["error"], "-");
    assert_eq!(line["refused"], "-");
    assert_eq!(line["backend"], app.server());
}
