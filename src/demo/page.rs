//! The demo app's HTML: the main page (who answered, the injected identity, the forms)
//! and the error and redirect pages. Every printed value is HTML-escaped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http_body_util::Full;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};

use crate::inject::form_decode_pairs;

/// A demo app's response body.
pub(super) type Body = Full<Bytes>;

/// One demo server: the address it answers on and the requests it has seen.
#[derive(Debug)]
pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) hits: AtomicU64,
}

// Default names from the contract's `[inject]` table.
const SESSION_USER: &str = "x-session-user";
const SESSION_ROLES: &str = "x-session-roles";
const SESSION_DATA: &str = "x-session-data";

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
pub(super) fn index_html(
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
        .and_then(|v| form_decode_pairs(v.as_bytes()))
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
pub(super) fn html(status: StatusCode, server: &Server, title: &str, main: &str) -> Response<Body> {
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
pub(super) fn error_page(status: StatusCode, server: &Server, message: &str) -> Response<Body> {
    let main = format!("<p>{}</p><p><a href=/>Back</a></p>", escape(message));
    html(
        status,
        server,
        status.canonical_reason().unwrap_or("error"),
        &main,
    )
}

/// A 400 page with a static message.
pub(super) fn bad_request(server: &Server, message: &str) -> Response<Body> {
    error_page(StatusCode::BAD_REQUEST, server, message)
}

/// `303 See Other` to `/`, the answer to every form.
pub(super) fn see_other(server: &Server) -> Response<Body> {
    let mut resp = html(
        StatusCode::SEE_OTHER,
        server,
        "See Other",
        "<p><a href=/>Continue</a></p>",
    );
    set_header(&mut resp, LOCATION, "/");
    resp
}

pub(super) fn set_header(resp: &mut Response<Body>, name: HeaderName, value: &'static str) {
    resp.headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain"), "plain");
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
}
