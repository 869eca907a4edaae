//! Configuration errors: where (file, line, column, key path) and what to do about it.
//!
//! A `ConfigError` renders as `proxy.toml:14:12: routes[0].upstream: no upstream named "ap"
//! (known: app, static)`: the file as it was given, the 1-based line and column when the
//! text gives one, the key path when there is one, then the message. Messages say how to
//! fix the problem. Loading collects every error it can find into `ConfigErrors`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{message}", Location(.file, *.line, *.column), KeyPrefix(.key))]
pub struct ConfigError {
    /// The configuration file, as given on the command line.
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column (in characters), when known.
    pub column: Option<u32>,
    /// Key path such as `routes[0].upstream`; empty when the error is about the whole file.
    pub key: String,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl ConfigError {
    /// An error without a position.
    pub fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            column: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error at a 1-based `(line, column)`.
    #[must_use]
    pub fn at(mut self, position: Option<(u32, u32)>) -> Self {
        if let Some((line, column)) = position {
            self.line = Some(line);
            self.column = Some(column);
        }
        self
    }
}

/// `file:line:column: ` or `file: `.
struct Location<'a>(&'a Path, Option<u32>, Option<u32>);

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.display())?;
        match (self.1, self.2) {
            (Some(line), Some(column)) => write!(f, ":{line}:{column}")?,
            (Some(line), None) => write!(f, ":{line}")?,
            (None, _) => {}
        }
        f.write_str(": ")
    }
}

/// `key: ` or nothing.
struct KeyPrefix<'a>(&'a str);

impl fmt::Display for KeyPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

/// Every problem found in one configuration file; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", Lines(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors in the order they were found (file order within a stage).
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

struct Lines<'a>(&'a [ConfigError]);

impl fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_position_and_key() {
        let e = ConfigError::new(
            Path::new("proxy.toml"),
            "routes[0].upstream",
            r#"no upstream named "ap" (known: app, static)"#,
        )
        .at(Some((14, 11)));
        assert_eq!(
            e.to_string(),
            r#"proxy.toml:14:11: routes[0].upstream: no upstream named "ap" (known: app, static)"#
        );
    }

    #[test]
    fn display_omits_unknown_parts() {
        let e = ConfigError::new(Path::new("/etc/proxy.toml"), "", "cannot read");
        assert_eq!(e.to_string(), "/etc/proxy.toml: cannot read");
        let e = ConfigError::new(Path::new("p.toml"), "tls", "missing");
        assert_eq!(e.to_string(), "p.toml: tls: missing");
    }

    #[test]
    fn errors_one_per_line() {
        let errors = ConfigErrors(vec![
            ConfigError::new(Path::new("a.toml"), "x", "one").at(Some((1, 2))),
            ConfigError::new(Path::new("a.toml"), "y", "two"),
        ]);
        assert_eq!(errors.to_string(), "a.toml:1:2: x: one\na.toml: y: two");
        let as_error: &dyn std::error::Error = &errors;
        assert!(as_error.to_string().contains("two"));
    }
}
