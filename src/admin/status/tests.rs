//! The JSON endpoint's shape: what `status.js` and scripts read from `/status.json`.

use super::sampler::{Point, RouteView, ServerView, SessionsView, UpstreamView};
use super::*;

fn sample() -> Snapshot {
    Snapshot {
        at_ms: 1_700_000_000_000,
        upstreams: vec![UpstreamView {
            name: "app".into(),
            servers: vec![
                ServerView {
                    name: "127.0.0.1:9001".into(),
                    up: true,
                    rps: 12.5,
                    error_rate: Some(0.0),
                    ..ServerView::default()
                },
                ServerView {
                    name: "127.0.0.1:9002".into(),
                    up: false,
                    down_reason: Some("connect refused".into()),
                    ..ServerView::default()
                },
            ],
            ..UpstreamView::default()
        }],
        routes: vec![RouteView {
            name: "/".into(),
            upstream: "app".into(),
            classes: [0, 10, 0, 1, 0],
            refused: vec![("csrf", 1)],
            ..RouteView::default()
        }],
        sessions: SessionsView {
            store: "memory",
            live: Some(3),
            ..SessionsView::default()
        },
        series: vec![Point {
            at_ms: 1,
            requests: 4.0,
            ..Point::default()
        }],
        ..Snapshot::default()
    }
}

#[test]
fn the_json_names_what_the_page_shows() {
    let value = serde_json::to_value(sample()).unwrap();
    let servers = &value["upstreams"][0]["servers"];
    assert_eq!(servers[0]["up"], true);
    assert_eq!(servers[1]["up"], false);
    assert_eq!(servers[1]["down_reason"], "connect refused");
    assert_eq!(servers[0]["rps"], 12.5);
    assert_eq!(value["routes"][0]["classes"][1], 10);
    assert_eq!(value["routes"][0]["refused"][0][0], "csrf");
    assert_eq!(value["sessions"]["live"], 3);
    assert_eq!(value["sessions"]["store"], "memory");
    assert_eq!(value["series"][0]["requests"], 4.0);
    for key in [
        "version",
        "uptime_s",
        "generation",
        "connections",
        "tunnels",
        "warnings",
    ] {
        assert!(value["proxy"].get(key).is_some(), "proxy.{key}");
    }
}

#[test]
fn ten_minutes_of_history_stay_small() {
    let mut snapshot = sample();
    snapshot.series = vec![
        Point {
            at_ms: 1_700_000_000_000,
            requests: 1234.0,
            errors: 3.0,
            p99_ms: Some(12.5),
            sessions: Some(100_000),
        };
        sampler::HISTORY
    ];
    let json = serde_json::to_vec(&snapshot).unwrap();
    eprintln!(
        "status.json with 10 minutes of history: {} bytes",
        json.len()
    );
    assert!(json.len() < 100_000, "{} bytes", json.len());
}

#[test]
fn the_page_and_its_assets_stay_under_200_kb_and_name_no_other_origin() {
    let mut snapshot = sample();
    snapshot.series = vec![
        Point {
            at_ms: 1_700_000_000_000,
            requests: 1234.0,
            errors: 3.0,
            p99_ms: Some(12.5),
            sessions: Some(100_000),
        };
        sampler::HISTORY
    ];
    let body = page::page(&PageInput {
        snapshot: &snapshot,
        search: Search::None,
        notice: None,
        csrf: "x",
        token: false,
    });
    let json = serde_json::to_vec(&snapshot).unwrap();
    let total = body.len() + CSS.len() + JS.len() + json.len();
    eprintln!(
        "with 10 minutes of history: page {} + css {} + js {} + one status.json {} = {total} bytes",
        body.len(),
        CSS.len(),
        JS.len(),
        json.len()
    );
    assert!(total < 200 * 1024, "{total} bytes");
    for text in [body.as_str(), CSS, JS] {
        assert!(
            !text.contains("//cdn") && !text.contains("https://"),
            "{text}"
        );
        assert!(!text.contains("@import") && !text.contains("url("));
    }
}

#[test]
fn page_paths_are_recognised() {
    assert!(owns("/") && owns("/status.json") && owns("/status/end"));
    assert!(!owns("/metrics") && !owns("/sessions"));
}
