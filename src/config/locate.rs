//! Maps between key paths (`routes[0].upstream`) and positions (line:column) in the TOML text.
//!
//! Validation works on the deserialised values and only knows key paths; serde reports
//! byte spans and knows no paths. Both are turned into the same `ConfigError` here by
//! walking a span-keeping `toml_edit::ImDocument` of the text. Positions are 1-based,
//! columns count characters. A key that is not written in the file (a default) points
//! at the nearest table that is, e.g. the `[[routes]]` header of `routes[1].path`.
//!
//! This module never fails: an unknown path or a text that does not parse just yields
//! no position, and the error is still reported without one.

use std::fmt;
use std::ops::{Deref, Range};
use std::path::Path;
use std::sync::Arc;

use toml_edit::{ImDocument, Item, Table, Value};

use super::{Config, ConfigError};

/// The original text of the configuration file, kept so later stages (TLS) can point at
/// a key. Its `Debug` does not print the text, which may hold secrets.
#[derive(Clone, Default)]
pub(crate) struct SourceText(Arc<str>);

impl SourceText {
    pub(crate) fn new(text: &str) -> Self {
        SourceText(Arc::from(text))
    }
}

impl Deref for SourceText {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SourceText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SourceText(<{} bytes>)", self.0.len())
    }
}

impl Config {
    /// An error about `key` (a path like `tls.cert` or `upstreams.app.servers[1]`),
    /// positioned at that key's value in the file this config was loaded from.
    pub fn error_at(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let position = Locator::new(&self.text).position(key);
        ConfigError::new(&self.source, key, message).at(position)
    }
}

/// One segment of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Splits `upstreams."a.b".servers[1]` into segments. Quoted keys may contain `.` and `[`.
fn parse_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    let mut current = String::new();
    let mut pending = false;
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                for q in chars.by_ref() {
                    if q == '"' {
                        break;
                    }
                    current.push(q);
                }
                pending = true;
            }
            '.' => {
                if pending || !current.is_empty() {
                    out.push(Segment::Key(std::mem::take(&mut current)));
                }
                pending = false;
            }
            '[' => {
                if pending || !current.is_empty() {
                    out.push(Segment::Key(std::mem::take(&mut current)));
                }
                pending = false;
                let digits: String = chars.by_ref().take_while(|d| *d != ']').collect();
                if let Ok(index) = digits.trim().parse() {
                    out.push(Segment::Index(index));
                }
            }
            _ => current.push(c),
        }
    }
    if pending || !current.is_empty() {
        out.push(Segment::Key(current));
    }
    out
}

/// Formats one key for a path: bare when TOML allows it, quoted otherwise.
pub(super) fn key_segment(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        format!("\"{name}\"")
    }
}

/// 1-based line and character column of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (u32, u32) {
    let (mut line, mut column) = (1u32, 1u32);
    for (index, c) in text.char_indices() {
        if index >= offset {
            break;
        }
        if c == '\n' {
            line = line.saturating_add(1);
            column = 1;
        } else {
            column = column.saturating_add(1);
        }
    }
    (line, column)
}

/// A node of the document while walking a path.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(Item::Value(v)) | Node::Value(v) => v.span(),
            Node::Item(Item::Table(t)) | Node::Table(t) => t.span(),
            Node::Item(Item::ArrayOfTables(a)) => a.span(),
            Node::Item(Item::None) => None,
        }
    }

    /// The child named `key`, with the span of the key itself.
    fn child(self, key: &str) -> Option<(Node<'a>, Option<Range<usize>>)> {
        match self {
            Node::Item(Item::Table(t)) | Node::Table(t) => t
                .get_key_value(key)
                .map(|(k, item)| (Node::Item(item), k.span())),
            Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)) => {
                t.get_key_value(key)
                    .map(|(k, item)| (Node::Item(item), k.span()))
            }
            _ => None,
        }
    }

    fn index(self, index: usize) -> Option<Node<'a>> {
        match self {
            Node::Item(Item::ArrayOfTables(a)) => a.get(index).map(Node::Table),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                a.get(index).map(Node::Value)
            }
            _ => None,
        }
    }
}

/// A parsed view of the text that answers "where is this key" and "which key is here".
pub(super) struct Locator<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> Locator<'a> {
    /// Parses `text`; a text that does not parse gives a locator that finds nothing.
    pub(super) fn new(text: &'a str) -> Self {
        Locator {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// Parses `text`, or returns its syntax error.
    pub(super) fn parse(text: &'a str) -> Result<Self, toml_edit::TomlError> {
        ImDocument::parse(text).map(|doc| Locator {
            text,
            doc: Some(doc),
        })
    }

    /// Where `key_path`'s value starts; for a key not in the file, its nearest written parent.
    pub(super) fn position(&self, key_path: &str) -> Option<(u32, u32)> {
        self.walk_path(key_path)
            .and_then(|(_, best)| best)
            .map(|offset| line_col(self.text, offset))
    }

    /// Whether `key_path` is written in the file (rather than left to its default).
    pub(super) fn exists(&self, key_path: &str) -> bool {
        self.walk_path(key_path).is_some_and(|(found, _)| found)
    }

    /// Follows `key_path`: whether every segment was found, and the start offset of the
    /// deepest one found.
    fn walk_path(&self, key_path: &str) -> Option<(bool, Option<usize>)> {
        let doc = self.doc.as_ref()?;
        let mut node = Node::Item(doc.as_item());
        let mut best: Option<usize> = None;
        for segment in parse_path(key_path) {
            let next = match &segment {
                Segment::Key(key) => node.child(key).map(|(child, key_span)| {
                    if let Some(span) = key_span {
                        best = Some(span.start);
                    }
                    child
                }),
                Segment::Index(index) => node.index(*index),
            };
            let Some(child) = next else {
                return Some((false, best));
            };
            node = child;
            if let Some(span) = node.span() {
                best = Some(span.start);
            }
        }
        Some((true, best))
    }

    /// The deepest key path whose key or value span contains byte `offset` ("" if none).
    pub(super) fn key_at(&self, offset: usize) -> String {
        let Some(doc) = self.doc.as_ref() else {
            return String::new();
        };
        let mut best = (0usize, String::new());
        walk(Node::Item(doc.as_item()), "", 0, offset, &mut best);
        best.1
    }
}

fn contains(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.contains(&offset) || s.start == offset)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key_segment(key)
    } else {
        format!("{path}.{}", key_segment(key))
    }
}

/// Depth-first search for the deepest path at `offset`; `best` holds (depth, path).
fn walk(node: Node<'_>, path: &str, depth: usize, offset: usize, best: &mut (usize, String)) {
    let mut visit = |child: Node<'_>, child_path: String, key_span: Option<Range<usize>>| {
        if (contains(key_span, offset) || contains(child.span(), offset)) && depth + 1 > best.0 {
            *best = (depth + 1, child_path.clone());
        }
        walk(child, &child_path, depth + 1, offset, best);
    };
    match node {
        Node::Item(Item::Table(t)) | Node::Table(t) => {
            for (key, _) in t.iter() {
                if let Some((k, item)) = t.get_key_value(key) {
                    visit(Node::Item(item), join(path, key), k.span());
                }
            }
        }
        Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)) => {
            for (key, _) in t.iter() {
                if let Some((k, item)) = t.get_key_value(key) {
                    visit(Node::Item(item), join(path, key), k.span());
                }
            }
        }
        Node::Item(Item::ArrayOfTables(a)) => {
            for (index, table) in a.iter().enumerate() {
                visit(Node::Table(table), format!("{path}[{index}]"), None);
            }
        }
        Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
            for (index, value) in a.iter().enumerate() {
                visit(Node::Value(value), format!("{path}[{index}]"), None);
            }
        }
        _ => {}
    }
}

/// A TOML syntax error (from `toml_edit`) as a `ConfigError` with its position.
pub(super) fn syntax_error(file: &Path, text: &str, error: &toml_edit::TomlError) -> ConfigError {
    let position = error.span().map(|span| line_col(text, span.start));
    ConfigError::new(file, "", one_line(error.message())).at(position)
}

/// A deserialisation error as a `ConfigError`.
///
/// `parsed` is the text serde saw (after `${ENV}` interpolation); when it differs from
/// `original`, the key path found in `parsed` is looked up again in `original` so the
/// position is that of the file the operator wrote.
pub(super) fn serde_error(
    file: &Path,
    original: &Locator<'_>,
    parsed: &str,
    error: &toml::de::Error,
) -> ConfigError {
    let offset = error.span().map(|span| span.start);
    let (key, position) = match offset {
        Some(offset) if parsed == original.text => {
            (original.key_at(offset), Some(line_col(parsed, offset)))
        }
        Some(offset) => {
            let key = Locator::new(parsed).key_at(offset);
            let position = original
                .position(&key)
                .or_else(|| Some(line_col(parsed, offset)));
            (key, position)
        }
        None => (String::new(), None),
    };
    let mut message = one_line(error.message());
    if let Some(suggestion) = did_you_mean(&message) {
        message.push_str(&format!("; did you mean `{suggestion}`?"));
    }
    ConfigError::new(file, key, message).at(position)
}

/// Joins a multi-line parser message into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// For serde's "unknown field `upstreem`, expected one of `host`, `path`, ..." (or
/// "unknown variant"), the expected name within edit distance 2 of the unknown one.
fn did_you_mean(message: &str) -> Option<String> {
    if !(message.starts_with("unknown field") || message.starts_with("unknown variant")) {
        return None;
    }
    let mut quoted = message.split('`').skip(1).step_by(2);
    let unknown = quoted.next()?;
    quoted
        .map(|candidate| (levenshtein(unknown, candidate), candidate))
        .filter(|(distance, _)| *distance <= 2)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate.to_owned())
}

/// Edit distance over characters (insert, delete, substitute).
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = Vec::with_capacity(b.len() + 1);
        current.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            let insert = current[j] + 1;
            let delete = previous[j + 1] + 1;
            current.push(substitute.min(insert).min(delete));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"[tls]
cert = "c.pem"
key = "k.pem"

[upstreams.app]
servers = ["127.0.0.1:1", { addr = "127.0.0.1:2", weight = 3 }]

[[routes]]
upstream = "app"

[[routes]]
path = "/x"
upstream = "ap"
"#;

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse_path(r#"upstreams."a.b".servers[1].weight"#),
            vec![
                Segment::Key("upstreams".into()),
                Segment::Key("a.b".into()),
                Segment::Key("servers".into()),
                Segment::Index(1),
                Segment::Key("weight".into()),
            ]
        );
        assert_eq!(
            parse_path("routes[0]"),
            vec![Segment::Key("routes".into()), Segment::Index(0)]
        );
    }

    #[test]
    fn positions_point_at_values() {
        let l = Locator::new(TEXT);
        assert_eq!(l.position("tls.cert"), Some((2, 8)));
        assert_eq!(l.position("routes[1].upstream"), Some((13, 12)));
        assert_eq!(l.position("upstreams.app.servers[1]"), Some((6, 27)));
        assert_eq!(l.position("upstreams.app.servers[1].weight"), Some((6, 60)));
        // Not written: the nearest parent that is.
        assert_eq!(l.position("routes[0].path"), Some((8, 1)));
        assert_eq!(l.position("session.cookie"), None);
        assert!(l.exists("upstreams.app.servers[1].weight"));
        assert!(!l.exists("upstreams.app.servers[2]"));
        assert!(!l.exists("routes[0].path"));
    }

    #[test]
    fn key_at_finds_deepest() {
        let l = Locator::new(TEXT);
        let offset = TEXT.find("\"ap\"").unwrap_or_default();
        assert_eq!(l.key_at(offset), "routes[1].upstream");
        let offset = TEXT.find("weight").unwrap_or_default();
        assert_eq!(l.key_at(offset), "upstreams.app.servers[1].weight");
        assert_eq!(l.key_at(0), "tls");
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 5), (1, 1));
    }

    #[test]
    fn suggestions() {
        assert_eq!(levenshtein("upstreem", "upstream"), 1);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(
            did_you_mean("unknown field `upstreem`, expected one of `host`, `path`, `upstream`")
                .as_deref(),
            Some("upstream")
        );
        assert_eq!(
            did_you_mean("unknown field `zzz`, expected `a` or `b`"),
            None
        );
        assert_eq!(
            did_you_mean("unknown variant `roundrobin`, expected one of `round_robin`, `random`")
                .as_deref(),
            Some("round_robin")
        );
    }

    #[test]
    fn key_segments_quote_when_needed() {
        assert_eq!(key_segment("app"), "app");
        assert_eq!(key_segment("a.b"), "\"a.b\"");
    }
}
