//! The status page's HTML, rendered on the server from the sampler's [`Snapshot`]:
//! complete without JavaScript. `status.js` then refreshes the same elements (by `id`)
//! from `/status.json` every 2 s. Every value is escaped; nothing is loaded from
//! another origin (the stylesheet and script are served by the admin listener).

use std::fmt::Write as _;

use super::sampler::{Point, RouteView, ServerView, Snapshot};
use crate::session::store::SessionInfo;

/// What the user search found, for the page.
pub(crate) enum Search {
    /// No search.
    None,
    /// The user's sessions.
    Found {
        user: String,
        sessions: Vec<SessionInfo>,
    },
    /// The store could not list them.
    Failed { user: String, why: String },
}

/// Everything one page render needs.
pub(crate) struct PageInput<'a> {
    pub(crate) snapshot: &'a Snapshot,
    pub(crate) search: Search,
    /// A message after an action (`ended 2 sessions of alice`).
    pub(crate) notice: Option<String>,
    pub(crate) csrf: &'a str,
    /// Whether a logout button is shown (the token form is in use).
    pub(crate) token: bool,
}

/// Escapes text for HTML element content and quoted attributes.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
<meta name=viewport content=\"width=device-width,initial-scale=1\">\
<title>{}</title><link rel=stylesheet href=\"/status.css\"></head><body>",
        esc(title)
    )
}

/// The token form (with `error` after a wrong token). Shows no data at all.
pub(crate) fn login(error: Option<&str>) -> String {
    let mut html = head("cloakroom admin: token");
    html.push_str("<main class=login><h1>cloakroom admin</h1>");
    if let Some(error) = error {
        let _ = write!(html, "<p class=error role=alert>{}</p>", esc(error));
    }
    html.push_str(
        "<form method=post action=\"/status/login\">\
<label for=token>Admin token (<code>listen.admin_token</code>)</label>\
<input id=token name=token type=password autocomplete=current-password required autofocus>\
<button type=submit>Open the status page</button></form>\
<p class=muted>The page keeps a signed cookie (HttpOnly, SameSite=Strict) for 12 hours; \
the token itself is not stored.</p></main></body></html>",
    );
    html
}

/// A number with `digits` decimals, or a dash.
fn num(value: Option<f64>, digits: usize) -> String {
    value.map_or_else(|| "–".to_string(), |v| format!("{v:.digits$}"))
}

/// "12 s ago", "3 min ago", ...
pub(crate) fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{} h ago", s / 3600),
    }
}

fn uptime(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// UTC time of unix ms, to the second.
fn utc(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time)
        .to_string()
        .replace('T', " ")
}

/// An SVG polyline of `values` (oldest first) in a 240×40 box; gaps read as 0.
pub(crate) fn sparkline(values: &[f64]) -> String {
    const W: f64 = 240.0;
    const H: f64 = 40.0;
    let max = values.iter().copied().fold(0.0f64, f64::max).max(1e-9);
    let n = values.len().max(2) - 1;
    let mut points = String::with_capacity(values.len() * 12);
    for (i, v) in values.iter().enumerate() {
        #[allow(clippy::cast_precision_loss)]
        let x = W * i as f64 / n as f64;
        let y = H - 2.0 - (H - 4.0) * (v / max);
        let _ = write!(points, "{x:.1},{y:.1} ");
    }
    format!(
        "<svg class=spark viewBox=\"0 0 240 40\" preserveAspectRatio=none aria-hidden=true>\
<polyline fill=none stroke=currentColor stroke-width=1.5 points=\"{}\"/></svg>",
        points.trim_end()
    )
}

fn series(points: &[Point], f: impl Fn(&Point) -> Option<f64>) -> Vec<f64> {
    points.iter().map(|p| f(p).unwrap_or(0.0)).collect()
}

fn card(html: &mut String, id: &str, title: &str, value: &str, values: &[f64]) {
    let _ = write!(
        html,
        "<section class=card><h3>{title}</h3><p class=big id=\"v-{id}\">{}</p><div id=\"s-{id}\">{}</div></section>",
        esc(value),
        sparkline(values)
    );
}

/// The whole page.
pub(crate) fn page(input: &PageInput<'_>) -> String {
    let s = input.snapshot;
    let mut html = head("cloakroom status");
    let _ = write!(
        html,
        "<header><h1>cloakroom</h1><span id=facts class=muted>v{} · up {} · config generation {} · \
{} connections · {} tunnels</span><span id=stamp class=muted>sampled {}</span>",
        esc(s.proxy.version),
        uptime(s.proxy.uptime_s),
        s.proxy.generation,
        s.proxy.connections,
        s.proxy.tunnels,
        if s.at_ms == 0 { "not yet".to_string() } else { utc(s.at_ms) },
    );
    if input.token {
        let _ = write!(
            html,
            "<form method=post action=\"/status/logout\" class=inline>\
<input type=hidden name=csrf value=\"{}\"><button type=submit class=quiet>Log out</button></form>",
            esc(input.csrf)
        );
    }
    html.push_str("</header><main>");
    if let Some(notice) = &input.notice {
        let _ = write!(html, "<p class=notice role=status>{}</p>", esc(notice));
    }

    let last = s.series.last();
    html.push_str("<div class=cards>");
    card(
        &mut html,
        "rps",
        "Requests/s",
        &num(last.map(|p| p.requests), 0),
        &series(&s.series, |p| Some(p.requests)),
    );
    card(
        &mut html,
        "err",
        "5xx/s",
        &num(last.map(|p| p.errors), 0),
        &series(&s.series, |p| Some(p.errors)),
    );
    card(
        &mut html,
        "p99",
        "p99 latency (ms)",
        &num(last.and_then(|p| p.p99_ms), 1),
        &series(&s.series, |p| p.p99_ms),
    );
    #[allow(clippy::cast_precision_loss)]
    card(
        &mut html,
        "ses",
        "Live sessions",
        &s.sessions.live.map_or("–".into(), |n| n.to_string()),
        &series(&s.series, |p| p.sessions.map(|n| n as f64)),
    );
    html.push_str("</div><p class=muted>Last 10 minutes, one point a second.</p>");

    html.push_str(
        "<h2>Upstream servers</h2><div class=scroll><table><thead><tr><th>upstream</th><th>server</th>\
<th>state</th><th class=n>in flight</th><th class=n>req/s</th><th class=n>errors</th>\
<th class=n>p50 ms</th><th class=n>p99 ms</th><th>last check</th><th>changed</th></tr></thead>\
<tbody id=servers>",
    );
    for upstream in &s.upstreams {
        for server in &upstream.servers {
            server_row(&mut html, &upstream.name, server, s.at_ms);
        }
    }
    html.push_str("</tbody></table></div>");

    html.push_str(
        "<h2>Routes</h2><div class=scroll><table><thead><tr><th>route</th><th>upstream</th>\
<th class=n>req/s</th><th class=n>2xx</th><th class=n>3xx</th><th class=n>4xx</th><th class=n>5xx</th>\
<th class=n>p99 ms</th><th>refused (last min)</th></tr></thead><tbody id=routes>",
    );
    for route in &s.routes {
        route_row(&mut html, route);
    }
    html.push_str(
        "</tbody></table></div><p class=muted>Status counts over the last minute; rates over 10 s.</p>",
    );

    let ss = &s.sessions;
    let ended = if ss.ended_per_min.is_empty() {
        "none".to_string()
    } else {
        ss.ended_per_min
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let store_health = match (ss.store_ok, &ss.store_error) {
        (None, _) => "no server-side store".to_string(),
        (Some(true), _) => format!("ok, answered in {} ms", num(ss.store_probe_ms, 1)),
        (Some(false), error) => format!("failing: {}", error.as_deref().unwrap_or("?")),
    };
    let _ = write!(
        html,
        "<h2>Sessions</h2><dl class=facts id=sessions>\
<dt>live</dt><dd id=ses-live>{}</dd><dt>created / min</dt><dd id=ses-created>{}</dd>\
<dt>ended / min</dt><dd id=ses-ended>{}</dd><dt>store</dt><dd id=ses-store>{}</dd>\
<dt>store health</dt><dd id=ses-health class=\"{}\">{}</dd>\
<dt>load p99 / errors per min</dt><dd id=ses-load>{} ms / {}</dd></dl>",
        ss.live.map_or("–".into(), |n| n.to_string()),
        ss.created_per_min,
        esc(&ended),
        ss.store,
        if ss.store_ok == Some(false) {
            "bad"
        } else {
            ""
        },
        esc(&store_health),
        num(ss.store_load_p99_ms, 2),
        ss.store_errors_per_min,
    );

    search(&mut html, input);

    let reload = match &s.proxy.reload {
        None => "none since start".to_string(),
        Some(r) if r.ok => format!(
            "{}: ok, generation {} live",
            utc(r.at_ms),
            r.generation.unwrap_or(0)
        ),
        Some(r) => format!(
            "{}: refused, the running config stays: {}",
            utc(r.at_ms),
            r.error.as_deref().unwrap_or("?")
        ),
    };
    let warnings = if s.proxy.warnings.is_empty() {
        "none".to_string()
    } else {
        s.proxy.warnings.join("\n")
    };
    let _ = write!(
        html,
        "<h2>Proxy</h2><dl class=facts><dt>last reload</dt><dd id=reload class=pre>{}</dd>\
<dt><code>check</code> warnings</dt><dd id=warnings class=pre>{}</dd></dl>\
<p class=muted><a href=\"/status.json\">status.json</a> · <a href=\"/metrics\">metrics</a> · \
<a href=\"/\">refresh</a></p></main><script src=\"/status.js\"></script></body></html>",
        esc(&reload),
        esc(&warnings),
    );
    html
}

fn server_row(html: &mut String, upstream: &str, server: &ServerView, now_ms: u64) {
    let state = match (server.up, server.draining) {
        (false, _) => "<span class=\"badge down\">DOWN</span>",
        (true, true) => "<span class=\"badge drain\">UP · draining</span>",
        (true, false) => "<span class=\"badge up\">UP</span>",
    };
    let check = match &server.check {
        None => "–".to_string(),
        Some(c) if !c.ok => format!("fail: {} ({})", c.detail, ago(now_ms, c.at_ms)),
        Some(c) => format!(
            "{} ({})",
            if c.ok { "pass" } else { "fail" },
            ago(now_ms, c.at_ms)
        ),
    };
    let changed = match (server.changed_ms, &server.down_reason) {
        (None, _) => "since start".to_string(),
        (Some(at), Some(why)) => format!("{}: {why}", ago(now_ms, at)),
        (Some(at), None) => ago(now_ms, at),
    };
    let _ = write!(
        html,
        "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{state}</td><td class=n>{}</td><td class=n>{}</td>\
<td class=n>{}</td><td class=n>{}</td><td class=n>{}</td><td class=wrap>{}</td><td class=wrap>{}</td></tr>",
        if server.up { "" } else { "down" },
        esc(upstream),
        esc(&server.name),
        server.in_flight,
        num(Some(server.rps), 1),
        server
            .error_rate
            .map_or("–".into(), |r| format!("{:.1}%", r * 100.0)),
        num(server.p50_ms, 1),
        num(server.p99_ms, 1),
        esc(&check),
        esc(&changed),
    );
}

fn route_row(html: &mut String, route: &RouteView) {
    let refused = if route.refused.is_empty() {
        "–".to_string()
    } else {
        route
            .refused
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let c = route.classes;
    let _ = write!(
        html,
        "<tr><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td class=n>{}</td>\
<td class=n>{}</td><td class=\"n{}\">{}</td><td class=n>{}</td><td>{}</td></tr>",
        esc(&route.name),
        esc(&route.upstream),
        num(Some(route.rps), 1),
        c[1],
        c[2],
        c[3],
        if c[4] > 0 { " bad" } else { "" },
        c[4],
        num(route.p99_ms, 1),
        esc(&refused),
    );
}

fn search(html: &mut String, input: &PageInput<'_>) {
    let user = match &input.search {
        Search::None => "",
        Search::Found { user, .. } | Search::Failed { user, .. } => user,
    };
    let _ = write!(
        html,
        "<h2>Find a user</h2><form method=get action=\"/\" class=search role=search>\
<label for=user class=sr>User</label><input id=user name=user value=\"{}\" placeholder=\"user name\" \
autocomplete=off><button type=submit>Search</button></form>",
        esc(user)
    );
    match &input.search {
        Search::None => {}
        Search::Failed { why, .. } => {
            let _ = write!(html, "<p class=error>{}</p>", esc(why));
        }
        Search::Found { user, sessions } if sessions.is_empty() => {
            let _ = write!(html, "<p id=found>No live session of {}.</p>", esc(user));
        }
        Search::Found { user, sessions } => {
            let csrf = esc(input.csrf);
            let u = esc(user);
            let _ = write!(
                html,
                "<p id=found>{} live session{} of <strong>{u}</strong>.</p>\
<form method=post action=\"/status/end\" class=inline><input type=hidden name=csrf value=\"{csrf}\">\
<input type=hidden name=user value=\"{u}\"><input type=hidden name=all value=1>\
<button type=submit class=danger id=end-all>End all sessions of {u}</button></form>\
<div class=scroll><table><thead><tr><th>session (public id)</th><th>roles</th><th>created</th>\
<th>last seen</th><th></th></tr></thead><tbody id=user-sessions>",
                sessions.len(),
                if sessions.len() == 1 { "" } else { "s" },
            );
            for info in sessions {
                let id = info.public_id.encode();
                let _ = write!(
                    html,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>\
<form method=post action=\"/status/end\" class=inline><input type=hidden name=csrf value=\"{csrf}\">\
<input type=hidden name=user value=\"{u}\"><input type=hidden name=id value=\"{}\">\
<button type=submit class=danger>End</button></form></td></tr>",
                    esc(&id),
                    esc(info.roles.as_deref().unwrap_or("–")),
                    utc(info.created),
                    utc(info.last_seen),
                    esc(&id),
                );
            }
            html.push_str("</tbody></table></div>");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn sparkline_scales_to_its_box() {
        let svg = sparkline(&[0.0, 5.0, 10.0]);
        assert!(
            svg.contains("points=\"0.0,38.0 120.0,20.0 240.0,2.0\""),
            "{svg}"
        );
        assert!(sparkline(&[]).contains("points=\"\""));
    }

    #[test]
    fn the_page_renders_without_samples_and_the_login_shows_no_data() {
        let snapshot = Snapshot::default();
        let html = page(&PageInput {
            snapshot: &snapshot,
            search: Search::Found {
                user: "<bob>".into(),
                sessions: Vec::new(),
            },
            notice: None,
            csrf: "t",
            token: true,
        });
        assert!(html.contains("No live session of &lt;bob&gt;"));
        assert!(!html.contains("http://") && !html.contains("https://"));
        let form = login(Some("wrong token"));
        assert!(form.contains("wrong token") && !form.contains("servers"));
    }
}
