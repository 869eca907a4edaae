//! The built-in demo upstream apps that `cloakroom --demo` starts beside the proxy.
//!
//! Each bound address is one "server" of a tiny legacy-style web app: it shows which server
//! answered, the identity headers the proxy injected, and forms that drive the proxy's control
//! headers (`X-Session-Set-User`, `X-Session-Set-Roles`, `X-Session-Set-Data`,
//! `X-Session-Logout`), so a newcomer can click through login, logout and affinity in a browser.
//!
//! This is demo code only and not security relevant: it trusts every header it receives (that
//! is the point of sitting behind the proxy), keeps no state beyond a request counter, and uses
//! the default header names of the contract's `[inject]` and `[control]` tables. It still
//! never panics on bad input: malformed forms get a 400 page, and every printed value is
//! HTML-escaped.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Largest form body the demo reads.
const MAX_FORM_BYTES: usize = 64 * 1024;
/// Longest user name accepted by `POST /login`.
const MAX_USER_CHARS: usize = 64;
/// Longest roles list (after normalising) accepted by `POST /login`.
const MAX_ROLES_BYTES: usize = 512;
/// Longest session data key and value accepted by `POST /data`.
const MAX_DATA_KEY_CHARS: usize = 64;
const MAX_DATA_VALUE_BYTES: usize = 1024;
/// The client must send its request head within this.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

// Default names from the contract's `[inject]` and `[control]` tables.
const SESSION_USER: &str = "x-session-user";
const SESSION_ROLES: &str = "x-session-roles";
const SESSION_DATA: &str = "x-session-data";
const SET_USER: HeaderName = HeaderName::from_static("x-session-set-user");
const SET_ROLES: HeaderName = HeaderName::from_static("x-session-set-roles");
const SET_DATA: HeaderName = HeaderName::from_static("x-session-set-data");
const LOGOUT: HeaderName = HeaderName::from_static("x-session-logout");

type Body = Full<Bytes>;

/// One demo server: the address it answers on and the requests it has seen.
#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    hits: AtomicU64,
}

/// Serves the demo app on each address until `shutdown` resolves.
///
/// Every address is bound before anything is served; the first bind error is returned (the
/// caller reports it with the address). Open connections are dropped at shutdown.
pub async fn serve<F>(addrs: Vec<SocketAddr>, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut listeners = Vec::with_capacity(addrs.len());
    for addr in addrs {
        listeners.push(TcpListener::bind(addr).await?);
    }
    serve_listeners(listeners, shutdown).await
}

/// Serves already-bound listeners until `shutdown` resolves (tests bind port 0 and use this).
async fn serve_listeners<F>(listeners: Vec<TcpListener>, shutdown: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(());
    let mut loops = JoinSet::new();
    for listener in listeners {
        let server = Arc::new(Server {
            addr: listener.local_addr()?,
            hits: AtomicU64::new(0),
        });
        tracing::info!(addr = %server.addr, "demo app listening");
        loops.spawn(accept_loop(listener, server, stop_rx.clone()));
    }
    drop(stop_rx);
    shutdown.await;
    // Dropping the sender closes every receiver: the accept loops end and drop their connections.
    drop(stop_tx);
    while loops.join_next().await.is_some() {}
    Ok(())
}

/// Accepts connections on one listener, one task each, until the stop channel closes.
async fn accept_loop(listener: TcpListener, server: Arc<Server>, mut stop: watch::Receiver<()>) {
    // Owns the connection tasks: dropping it at the end aborts them.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_connection(stream, Arc::clone(&server)));
                }
                Err(err) => {
                    tracing::warn!(addr = %server.addr, error = %err, "demo app accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves one HTTP/1.1 connection with keep-alive.
async fn serve_connection(stream: TcpStream, server: Arc<Server>) {
    // Nagle only delays small responses; failure to disable it is harmless.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(req, Arc::clone(&server)));
    let result = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(err) = result {
        tracing::debug!(error = %err, "demo app connection ended with an error");
    }
}

/// Routes one request; cannot fail, every problem becomes an error page.
async fn handle(req: Request<Incoming>, server: Arc<Server>) -> Result<Response<Body>, Infallible> {
    let hits = server.hits.fetch_add(1, Ordering::Relaxed) + 1;
    let path = req.uri().path().to_owned();
    let resp = match (req.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            let mut resp = Response::new(Body::from("ok\n"));
            set_header(&mut resp, CONTENT_TYPE, "text/plain; charset=utf-8");
            set_header(&mut resp, CACHE_CONTROL, "no-store");
            resp
        }
        (&Method::GET | &Method::HEAD, _) => {
            let body = index_html(&server, hits, req.method(), req.uri(), req.headers());
            html(StatusCode::OK, &server, "cloakroom demo", &body)
        }
        (&Method::POST, "/login") => match read_form(req, &server).await {
            Ok(form) => login(&server, &form),
            Err(resp) => resp,
        },
        (&Method::POST, "/logout") => {
            let mut resp = see_other(&server);
            set_header(&mut resp, LOGOUT, "1");
            resp
        }
        (&Method::POST, "/data") => match read_form(req, &server).await {
            Ok(form) => set_data(&server, &form),
            Err(resp) => resp,
        },
        (&Method::POST, "/.cloakroom/logout") => error_page(
            StatusCode::NOT_FOUND,
            &server,
            "This path is answered by the cloakroom proxy itself; this request reached the \
             demo app directly. Open the demo through the proxy (https://localhost:8443).",
        ),
        (&Method::POST, _) => error_page(StatusCode::NOT_FOUND, &server, "No such form target."),
        _ => {
            let mut resp = error_page(
                StatusCode::METHOD_NOT_ALLOWED,
                &server,
                "The demo app answers GET, HEAD and POST only.",
            );
            set_header(&mut resp, http::header::ALLOW, "GET, HEAD, POST");
            resp
        }
    };
    Ok(resp)
}

/// Reads a form-urlencoded body of at most [`MAX_FORM_BYTES`] and decodes it; on failure the
/// error page to answer with.
async fn read_form(
    req: Request<Incoming>,
    server: &Server,
) -> Result<Vec<(String, String)>, Response<Body>> {
    let Ok(collected) = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
    else {
        return Err(error_page(
            StatusCode::PAYLOAD_TOO_LARGE,
            server,
            "The form body could not be read or is larger than 64 KiB.",
        ));
    };
    parse_form(&collected.to_bytes())
        .ok_or_else(|| bad_request(server, "The form body is not valid form-urlencoded UTF-8."))
}

/// `POST /login`: bind the user and roles through the proxy's control headers.
fn login(server: &Server, form: &[(String, String)]) -> Response<Body> {
    let user = form_field(form, "user").unwrap_or("").trim();
    if !valid_user(user) {
        return bad_request(
            server,
            "The user name must be 1 to 64 visible ASCII characters.",
        );
    }
    let Some(roles) = normalize_roles(form_field(form, "roles").unwrap_or("")) else {
        return bad_request(
            server,
            "Roles must be a comma-separated list of visible ASCII words (at most 512 bytes).",
        );
    };
    let (Ok(user), Ok(roles)) = (HeaderValue::from_str(user), HeaderValue::from_str(&roles)) else {
        return bad_request(server, "The user or roles are not valid.");
    };
    let mut resp = see_other(server);
    resp.headers_mut().insert(SET_USER, user);
    if !roles.is_empty() {
        resp.headers_mut().insert(SET_ROLES, roles);
    }
    resp
}

/// `POST /data`: set (or, with an empty value, delete) one session data entry.
fn set_data(server: &Server, form: &[(String, String)]) -> Response<Body> {
    let key = form_field(form, "key").unwrap_or("").trim();
    let value = form_field(form, "value").unwrap_or("");
    let key_chars = key.chars().count();
    if key_chars == 0 || key_chars > MAX_DATA_KEY_CHARS || value.len() > MAX_DATA_VALUE_BYTES {
        return bad_request(
            server,
            "The key must be 1 to 64 characters and the value at most 1024 bytes.",
        );
    }
    let pair = format!("{}={}", urlencode(key), urlencode(value));
    let Ok(pair) = HeaderValue::from_str(&pair) else {
        return bad_request(server, "The key or value is not valid.");
    };
    let mut resp = see_other(server);
    resp.headers_mut().insert(SET_DATA, pair);
    resp
}

/// A user name is 1..=64 characters of visible ASCII or inner spaces (it becomes a header value).
fn valid_user(user: &str) -> bool {
    let len = user.chars().count();
    (1..=MAX_USER_CHARS).contains(&len)
        && user.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        && user.trim() == user
}

/// Trims each comma-separated role and drops empty ones; `None` if a role is not a visible
/// ASCII word or the list is too long.
fn normalize_roles(raw: &str) -> Option<String> {
    let roles: Vec<&str> = raw
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .collect();
    let ok = roles
        .iter()
        .all(|r| r.chars().all(|c| c.is_ascii_graphic() && c != ','));
    let joined = roles.join(",");
    (ok && joined.len() <= MAX_ROLES_BYTES).then_some(joined)
}

/// The first value of a form field.
fn form_field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Decodes an `application/x-www-form-urlencoded` body; `None` on a bad escape or non-UTF-8.
fn parse_form(body: &[u8]) -> Option<Vec<(String, String)>> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (pair.get(..eq)?, pair.get(eq + 1..)?),
                None => (pair, &b""[..]),
            };
            Some((form_decode(key)?, form_decode(value)?))
        })
        .collect()
}

/// Decodes one form component: `+` is a space, `%XX` a byte; the result must be UTF-8.
fn form_decode(input: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex_value(*bytes.next()?)?;
                let lo = hex_value(*bytes.next()?)?;
                out.push(hi << 4 | lo);
            }
            _ => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (so `%20` for a space, which
/// both form and plain percent decoders read back correctly).
fn urlencode(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for b in input.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Escapes text for HTML element content and double-quoted attribute values.
fn escape(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A header's value as text (lossy: the page only displays it).
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    headers
        .get(name)
        .map(|v| String::from_utf8_lossy(v.as_bytes()))
}

/// Whether a received header is one the page lists.
fn is_shown_header(name: &str) -> bool {
    name.starts_with("x-session-")
        || name.starts_with("x-forwarded-")
        || name == "host"
        || name == "cookie"
}

/// The body of the main page (everything inside `<main>`).
fn index_html(
    server: &Server,
    hits: u64,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
) -> String {
    let mut out = String::with_capacity(4096);
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let _ = write!(
        out,
        "<p>Request <code>{} {}</code> was answered by <strong>server {}</strong>, \
         which has seen {hits} request(s) since it started (local state).</p>",
        escape(method.as_str()),
        escape(target),
        server.addr,
    );
    if !headers.contains_key("x-forwarded-for") {
        out.push_str(
            "<p class=warn>No <code>X-Forwarded-For</code>: this request probably reached the \
             demo app directly. Open it through the proxy (https://localhost:8443).</p>",
        );
    }

    out.push_str("<h2>Session</h2>");
    if let Some(user) = header_text(headers, SESSION_USER) {
        let roles = header_text(headers, SESSION_ROLES).unwrap_or_default();
        let roles = if roles.is_empty() {
            "no roles".into()
        } else {
            roles
        };
        let _ = write!(
            out,
            "<p>Logged in as <strong>{}</strong> ({}).</p>\
             <form method=post action=/logout><button>Log out (app-driven)</button></form>\
             <form method=post action=/.cloakroom/logout><button>Log out (proxy endpoint)</button></form>",
            escape(&user),
            escape(&roles),
        );
    } else {
        out.push_str(
            "<p>Not logged in.</p><form method=post action=/login>\
             <label>user <input name=user required maxlength=64></label> \
             <label>roles <input name=roles placeholder=\"admin,editor\"></label> \
             <button>Log in</button></form>",
        );
    }
    if let Some(data) = headers
        .get(SESSION_DATA)
        .and_then(|v| parse_form(v.as_bytes()))
    {
        out.push_str("<table><tr><th>data key</th><th>value</th></tr>");
        for (key, value) in &data {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(key),
                escape(value)
            );
        }
        out.push_str("</table>");
    }
    out.push_str(
        "<form method=post action=/data><label>key <input name=key required maxlength=64></label> \
         <label>value <input name=value></label> <button>Set session data</button></form>\
         <p class=note>An empty value deletes the key.</p>",
    );

    out.push_str(
        "<h2>Headers this server received</h2><table><tr><th>name</th><th>value</th></tr>",
    );
    let mut shown: Vec<(&str, String)> = headers
        .iter()
        .filter(|(name, _)| is_shown_header(name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    shown.sort_by(|a, b| a.0.cmp(b.0));
    for (name, value) in &shown {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(value)
        );
    }
    if shown.is_empty() {
        out.push_str("<tr><td colspan=2>(none)</td></tr>");
    }
    out.push_str(
        "</table><p class=note>The <code>X-Session-*</code> headers are injected by the proxy, which \
         removes any a client sends. The session cookie is not visible here: the proxy strips it \
         from the <code>Cookie</code> header before forwarding.</p>\
         <p><a href=/>Reload to see which server answers (affinity)</a></p>",
    );
    out
}

/// A stable colour per port, so the two servers are easy to tell apart.
fn server_hue(addr: SocketAddr) -> u32 {
    u32::from(addr.port()).wrapping_mul(137) % 360
}

/// A complete HTML page with the no-store headers.
fn html(status: StatusCode, server: &Server, title: &str, main: &str) -> Response<Body> {
    let hue = server_hue(server.addr);
    let page = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\"><title>{title}</title>\
         <style>body{{font:15px/1.5 system-ui,sans-serif;margin:0;color:#222}}\
         header{{background:hsl({hue},60%,40%);color:#fff;padding:.8em 1.5em}}\
         header h1{{margin:0;font-size:1.3em}}main{{padding:0 1.5em 1.5em;max-width:60em}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:.2em .6em;\
         text-align:left;vertical-align:top}}td{{font-family:monospace;word-break:break-all}}\
         form{{margin:.5em 0}}.note{{color:#666;font-size:.9em}}\
         .warn{{background:#fff3cd;padding:.4em .8em}}</style></head>\
         <body><header><h1>{title}</h1><div>server {addr}</div></header><main>{main}</main></body></html>",
        title = escape(title),
        addr = server.addr,
    );
    let mut resp = Response::new(Body::from(page));
    *resp.status_mut() = status;
    set_header(&mut resp, CONTENT_TYPE, "text/html; charset=utf-8");
    set_header(&mut resp, CACHE_CONTROL, "no-store");
    resp
}

/// An error page with a static message.
fn error_page(status: StatusCode, server: &Server, message: &str) -> Response<Body> {
    let main = format!("<p>{}</p><p><a href=/>Back</a></p>", escape(message));
    html(
        status,
        server,
        status.canonical_reason().unwrap_or("error"),
        &main,
    )
}

/// A 400 page with a static message.
fn bad_request(server: &Server, message: &str) -> Response<Body> {
    error_page(StatusCode::BAD_REQUEST, server, message)
}

/// `303 See Other` to `/`, the answer to every form.
fn see_other(server: &Server) -> Response<Body> {
    let mut resp = html(
        StatusCode::SEE_OTHER,
        server,
        "See Other",
        "<p><a href=/>Continue</a></p>",
    );
    set_header(&mut resp, LOCATION, "/");
    resp
}

fn set_header(resp: &mut Response<Body>, name: HeaderName, value: &'static str) {
    resp.headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn form_decode_handles_plus_percent_and_missing_values() {
        let form = parse_form(b"user=J%C3%B6rg+M&roles=a%2Cb&&flag&empty=").unwrap();
        assert_eq!(
            form,
            vec![
                ("user".into(), "Jörg M".into()),
                ("roles".into(), "a,b".into()),
                ("flag".into(), String::new()),
                ("empty".into(), String::new()),
            ]
        );
        assert_eq!(
            parse_form(b"a=b=c").unwrap(),
            vec![("a".into(), "b=c".into())]
        );
        assert_eq!(parse_form(b"").unwrap(), vec![]);
    }

    #[test]
    fn form_decode_rejects_bad_escapes_and_non_utf8() {
        assert_eq!(parse_form(b"a=%"), None);
        assert_eq!(parse_form(b"a=%4"), None);
        assert_eq!(parse_form(b"a=%zz"), None);
        assert_eq!(parse_form(b"a=%FF"), None);
        assert_eq!(parse_form(b"a=\xff"), None);
    }

    #[test]
    fn urlencode_round_trips_through_form_decode() {
        let raw = "a b&c=d/é%+";
        let encoded = urlencode(raw);
        assert_eq!(encoded, "a%20b%26c%3Dd%2F%C3%A9%25%2B");
        assert_eq!(form_decode(encoded.as_bytes()).as_deref(), Some(raw));
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn user_and_roles_validation() {
        assert!(valid_user("alice"));
        assert!(valid_user("Alice Smith"));
        assert!(!valid_user(""));
        assert!(!valid_user(&"a".repeat(65)));
        assert!(!valid_user("tab\there"));
        assert!(!valid_user("jörg"));
        assert_eq!(
            normalize_roles(" admin , ,dev,").as_deref(),
            Some("admin,dev")
        );
        assert_eq!(normalize_roles("").as_deref(), Some(""));
        assert_eq!(normalize_roles("two words"), None);
    }

    #[test]
    fn index_escapes_injected_values_and_shows_logout_forms() {
        let server = Server {
            addr: "127.0.0.1:9001".parse().unwrap(),
            hits: AtomicU64::new(0),
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-session-user", HeaderValue::from_static("<b>eve</b>"));
        headers.insert("x-session-roles", HeaderValue::from_static("admin"));
        headers.insert(
            "x-session-data",
            HeaderValue::from_static("theme=dark%3Cx%3E"),
        );
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.insert("accept", HeaderValue::from_static("text/html"));
        let uri: http::Uri = "/x?q='a'&b".parse().unwrap();
        let body = index_html(&server, 3, &Method::GET, &uri, &headers);
        assert!(body.contains("Logged in as <strong>&lt;b&gt;eve&lt;/b&gt;</strong> (admin)"));
        assert!(body.contains("action=/logout"));
        assert!(body.contains("action=/.cloakroom/logout"));
        assert!(body.contains("<td>dark&lt;x&gt;</td>"));
        assert!(body.contains("GET /x?q=&#39;a&#39;&amp;b"));
        assert!(!body.contains("accept"));
        assert!(!body.contains("class=warn"));
    }

    async fn roundtrip(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_pages_and_control_headers_on_each_listener() {
        let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = (first.local_addr().unwrap(), second.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_listeners(vec![first, second], async {
            let _ = stopped.await;
        }));

        for addr in [a, b] {
            let page = roundtrip(
                addr,
                "GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page}");
            assert!(page.contains(&format!("server {addr}")), "{page}");
            assert!(page.contains("action=/login"), "{page}");
        }

        let body = "user=alice&roles=admin%2C+dev";
        let login = roundtrip(
            a,
            &format!(
                "POST /login HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
        .await;
        let head = login.to_ascii_lowercase();
        assert!(login.starts_with("HTTP/1.1 303 See Other\r\n"), "{login}");
        assert!(head.contains("\r\nlocation: /\r\n"), "{login}");
        assert!(
            head.contains("\r\nx-session-set-user: alice\r\n"),
            "{login}"
        );
        assert!(
            head.contains("\r\nx-session-set-roles: admin,dev\r\n"),
            "{login}"
        );

        let bad = roundtrip(
            a,
            "POST /login HTTP/1.1\r\nHost: demo\r\nConnection: close\r\nContent-Length: 5\r\n\r\nuser=",
        )
        .await;
        assert!(bad.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{bad}");
        assert!(
            !bad.to_ascii_lowercase().contains("x-session-set-user"),
            "{bad}"
        );

        let health = roundtrip(
            b,
            "GET /healthz HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            health.starts_with("HTTP/1.1 200 OK\r\n") && health.ends_with("\r\n\r\nok\n"),
            "{health}"
        );

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn serve_reports_bind_errors() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let result = serve(vec![addr], std::future::pending()).await;
        assert!(result.is_err());
    }
}
