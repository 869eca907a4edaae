//! Hijack signals: what a session remembers of the client that started it, and how a
//! later request is compared with it (`session.anomaly`).
//!
//! A session keeps two 32-bit FNV-1a fingerprints ([`ClientOrigin`]), the same on every
//! instance (stores are shared):
//! - `agent`: the User-Agent's *family*: the browser (the most specific known product
//!   token: Edge, Opera, Samsung, Yandex, Vivaldi, Firefox, Chrome, Safari by its
//!   `Version/`; else the first product token, e.g. `curl`), its **major** version, and
//!   the platform (Android, iOS, Windows, macOS, ChromeOS, Linux, other). A minor or
//!   patch update (`Chrome/120.0.6099.109` → `Chrome/120.0.6099.130`) is not a change;
//!   another browser, another major version or another platform is.
//! - `network`: the client's IPv4 /24 or IPv6 /48 (IPv4-mapped IPv6 as IPv4). The
//!   client IP is the peer, or behind `listen.trusted_proxies` the nearest untrusted
//!   `X-Forwarded-For` entry.
//!
//! They are recorded when a session starts and again at login (a regeneration
//! re-binds). Pure: no IO.

use std::net::IpAddr;

use http::HeaderValue;

use crate::session::ClientOrigin;

/// Browser product tokens, most specific first (Edge and Opera also send `Chrome/`,
/// Chrome also sends `Safari/`).
const BROWSERS: [(&str, &str); 13] = [
    ("Edg/", "edge"),
    ("EdgA/", "edge"),
    ("EdgiOS/", "edge"),
    ("OPR/", "opera"),
    ("SamsungBrowser/", "samsung"),
    ("YaBrowser/", "yandex"),
    ("Vivaldi/", "vivaldi"),
    ("FxiOS/", "firefox"),
    ("Firefox/", "firefox"),
    ("CriOS/", "chrome"),
    ("Chrome/", "chrome"),
    ("Chromium/", "chrome"),
    ("Version/", "safari"),
];

/// Platform markers, most specific first (Android UAs also say `Linux`).
const PLATFORMS: [(&str, &str); 9] = [
    ("Android", "android"),
    ("iPhone", "ios"),
    ("iPad", "ios"),
    ("iPod", "ios"),
    ("CrOS", "chromeos"),
    ("Windows", "windows"),
    ("Macintosh", "macos"),
    ("Mac OS X", "macos"),
    ("Linux", "linux"),
];

/// What differs between a session's origin and the current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Anomaly {
    pub agent: bool,
    pub network: bool,
}

impl Anomaly {
    /// Whether anything differs.
    pub fn any(self) -> bool {
        self.agent || self.network
    }

    /// The `inject.anomaly` value: `user-agent`, `network` or both, comma-separated.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match (self.agent, self.network) {
            (true, true) => "user-agent, network",
            (true, false) => "user-agent",
            (false, _) => "network",
        })
    }
}

/// The fingerprints of a request from `ip` with `user_agent`.
pub fn origin(user_agent: Option<&HeaderValue>, ip: IpAddr) -> ClientOrigin {
    ClientOrigin {
        agent: agent_of(user_agent),
        network: network_fingerprint(ip),
    }
}

/// Like [`origin`], reusing the connection's last User-Agent fingerprint when the
/// header is byte-for-byte the same (a browser sends the same one on every request),
/// so the family is parsed once per connection rather than once per request.
pub fn origin_cached(
    cache: &AgentCache,
    user_agent: Option<&HeaderValue>,
    ip: IpAddr,
) -> ClientOrigin {
    let network = network_fingerprint(ip);
    let mut slot = crate::lock(&cache.0);
    if let Some((seen, agent)) = slot.as_ref() {
        if seen.as_ref() == user_agent {
            return ClientOrigin {
                agent: *agent,
                network,
            };
        }
    }
    let agent = agent_of(user_agent);
    *slot = Some((user_agent.cloned(), agent));
    ClientOrigin { agent, network }
}

/// A connection's last User-Agent and its fingerprint.
#[derive(Debug, Default)]
pub struct AgentCache(std::sync::Mutex<Option<(Option<HeaderValue>, u32)>>);

fn agent_of(user_agent: Option<&HeaderValue>) -> u32 {
    let agent = user_agent.map_or(&b""[..], HeaderValue::as_bytes);
    agent_fingerprint(std::str::from_utf8(agent).unwrap_or(""))
}

/// What differs between `then` (recorded) and `now`.
pub fn compare(then: ClientOrigin, now: ClientOrigin) -> Anomaly {
    Anomaly {
        agent: then.agent != now.agent,
        network: then.network != now.network,
    }
}

/// The family of a User-Agent: (browser, major version, platform).
pub fn family(user_agent: &str) -> (&str, &str, &str) {
    let (browser, major) = BROWSERS
        .iter()
        .find_map(|(token, name)| {
            let at = user_agent.find(token)?;
            let version = user_agent.get(at + token.len()..).unwrap_or("");
            Some((*name, leading_digits(version)))
        })
        .unwrap_or_else(|| {
            // The first product token, e.g. `curl/8.5.0` or `python-requests/2.31`.
            let first = user_agent.split_whitespace().next().unwrap_or("");
            match first.split_once('/') {
                Some((name, version)) => (name, leading_digits(version)),
                None => (first, ""),
            }
        });
    let platform = PLATFORMS
        .iter()
        .find(|(marker, _)| user_agent.contains(marker))
        .map_or("other", |(_, name)| name);
    (browser, major, platform)
}

fn leading_digits(text: &str) -> &str {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    text.get(..end).unwrap_or("")
}

fn agent_fingerprint(user_agent: &str) -> u32 {
    let (browser, major, platform) = family(user_agent);
    let mut hash = Fnv::new();
    for part in [browser, major, platform] {
        hash.write(part.as_bytes());
        hash.write(&[0]);
    }
    hash.0
}

fn network_fingerprint(ip: IpAddr) -> u32 {
    let mut hash = Fnv::new();
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            hash.write(&[4, a, b, c]);
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => {
                let [a, b, c, _] = v4.octets();
                hash.write(&[4, a, b, c]);
            }
            None => {
                let bytes = v6.octets();
                hash.write(&[6]);
                hash.write(bytes.get(..6).unwrap_or(&[]));
            }
        },
    }
    hash.0
}

/// 32-bit FNV-1a: tiny, fast and the same everywhere (not a defence by itself: the
/// fingerprints are compared, never trusted).
struct Fnv(u32);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0x811c_9dc5)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u32::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0193);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_LINUX: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.109 Safari/537.36";
    const CHROME_LINUX_PATCH: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.130 Safari/537.36";
    const CHROME_LINUX_NEXT: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/121.0.6167.85 Safari/537.36";
    const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.109 Safari/537.36";
    const EDGE: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.61";
    const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
    const SAFARI_IOS: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    const CHROME_ANDROID: &str = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";

    #[test]
    fn families() {
        assert_eq!(family(CHROME_LINUX), ("chrome", "120", "linux"));
        assert_eq!(family(EDGE), ("edge", "120", "windows"));
        assert_eq!(family(FIREFOX), ("firefox", "121", "linux"));
        assert_eq!(family(SAFARI_IOS), ("safari", "17", "ios"));
        assert_eq!(family(CHROME_ANDROID), ("chrome", "120", "android"));
        assert_eq!(family("curl/8.5.0"), ("curl", "8", "other"));
        assert_eq!(family(""), ("", "", "other"));
    }

    #[test]
    fn a_patch_update_is_the_same_agent_and_other_browsers_are_not() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        let at = |ua: &str| origin(Some(&HeaderValue::from_str(ua).unwrap()), ip);
        let then = at(CHROME_LINUX);
        assert!(!compare(then, at(CHROME_LINUX_PATCH)).any());
        for other in [CHROME_LINUX_NEXT, CHROME_WINDOWS, EDGE, FIREFOX, SAFARI_IOS] {
            assert_eq!(
                compare(then, at(other)),
                Anomaly {
                    agent: true,
                    network: false
                },
                "{other}"
            );
        }
    }

    #[test]
    fn networks_are_compared_by_slash_24_and_slash_48() {
        let at = |ip: &str| origin(None, ip.parse().unwrap());
        assert!(!compare(at("192.0.2.10"), at("192.0.2.200")).any());
        assert!(compare(at("192.0.2.10"), at("192.0.3.10")).network);
        assert!(!compare(at("192.0.2.10"), at("::ffff:192.0.2.99")).any());
        assert!(!compare(at("2001:db8:1::1"), at("2001:db8:1:ffff::2")).any());
        assert!(compare(at("2001:db8:1::1"), at("2001:db8:2::1")).network);
    }

    #[test]
    fn the_cached_origin_is_the_computed_one() {
        let cache = AgentCache::default();
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        for ua in [CHROME_LINUX, CHROME_LINUX, FIREFOX, CHROME_LINUX] {
            let ua = HeaderValue::from_str(ua).unwrap();
            assert_eq!(origin_cached(&cache, Some(&ua), ip), origin(Some(&ua), ip));
        }
        assert_eq!(origin_cached(&cache, None, ip), origin(None, ip));
    }

    #[test]
    fn header_values() {
        let both = Anomaly {
            agent: true,
            network: true,
        };
        assert_eq!(both.header_value(), "user-agent, network");
    }
}
