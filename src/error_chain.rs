//! One way to print an error with its causes, and the redaction every such text goes
//! through: a connection URL's password (`redis://user:PASSWORD@host`) or a
//! `password=...` pair never reaches a log line or an admin answer.

use std::borrow::Cow;

/// An error and its causes, `a: b: c`, each redacted ([`redact`]); a cause whose text
/// the line already holds (an error that prints its source itself) is not repeated.
pub fn display_chain(error: &dyn std::error::Error) -> String {
    let mut text = redact(&error.to_string()).into_owned();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        let cause_text = redact(&cause_text);
        if !text.contains(&*cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `text` with connection secrets replaced by `***`: the password of every
/// `scheme://user:password@` and the value of every `password=` pair (libpq style).
pub fn redact(text: &str) -> Cow<'_, str> {
    if !text.contains("://") && !text.to_ascii_lowercase().contains("password=") {
        return Cow::Borrowed(text);
    }
    Cow::Owned(redact_pairs(&redact_urls(text)))
}

/// The password of every `scheme://user:password@host` in `text`.
fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority ends at the first '/', '?', '#' or whitespace.
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rfind('@') {
            Some(userinfo_end) => {
                let (userinfo, host) = authority.split_at(userinfo_end);
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..=colon]);
                        out.push_str("***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// The value of every `password=VALUE` (up to whitespace) in `text`.
fn redact_pairs(text: &str) -> String {
    const KEY: &str = "password=";
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    while let Some(found) = lower.get(from..).and_then(|l| l.find(KEY)) {
        let value_start = from + found + KEY.len();
        out.push_str(text.get(from..value_start).unwrap_or_default());
        out.push_str("***");
        let value_len = text
            .get(value_start..)
            .and_then(|v| v.find(char::is_whitespace))
            .unwrap_or(text.len() - value_start);
        from = value_start + value_len;
    }
    out.push_str(text.get(from..).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_and_password_pairs_are_redacted() {
        assert_eq!(
            redact("connect redis://app:s3cret@10.0.0.1:6379/0 failed"),
            "connect redis://app:***@10.0.0.1:6379/0 failed"
        );
        assert_eq!(
            redact("postgres://u:p%40ss@db/x and rediss://:tok@h"),
            "postgres://u:***@db/x and rediss://:***@h"
        );
        assert_eq!(
            redact("host=db user=app Password=hunter2 dbname=s"),
            "host=db user=app Password=*** dbname=s"
        );
        assert_eq!(redact("redis://db:6379/0"), "redis://db:6379/0");
        assert_eq!(redact("redis://user@db"), "redis://user@db");
        assert_eq!(redact("no secrets here"), "no secrets here");
    }

    #[test]
    fn the_chain_prints_each_cause_once_redacted() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("dial redis://u:pw@h failed")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped: {0}")]
        struct Repeats(#[source] Inner);
        assert_eq!(
            display_chain(&Outer(Inner)),
            "outer: dial redis://u:***@h failed"
        );
        assert_eq!(
            display_chain(&Repeats(Inner)),
            "wrapped: dial redis://u:***@h failed"
        );
    }
}
