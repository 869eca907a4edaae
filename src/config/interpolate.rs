//! `${ENV_VAR}` interpolation in every string value of the file, before deserialisation.
//!
//! Interpolation works on the TOML document, not on the raw text, so a value with a
//! quote or a newline cannot change the structure of the file, and so every string,
//! including enum values such as `store = "${STORE}"`, can use it. `$${` writes a
//! literal `${`. Keys and comments are never interpolated. Missing variables are
//! collected with the key path of the string that names them.

use toml_edit::{DocumentMut, Formatted, Item, Value};

use super::locate::key_segment;

/// A string value that could not be interpolated: its key path and what is wrong.
#[derive(Debug)]
pub(super) struct InterpolationError {
    pub(super) key: String,
    pub(super) message: String,
}

/// Interpolates every string value of `text`.
///
/// `Ok(None)`: nothing to replace, use `text` as it is. `Ok(Some(new_text))`: the
/// document with values replaced (keys, comments and layout kept).
pub(super) fn interpolate(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, Vec<InterpolationError>> {
    if !text.contains("${") {
        return Ok(None);
    }
    // The caller has already checked the syntax; a document that does not parse here
    // has nothing we could interpolate.
    let Ok(mut doc) = text.parse::<DocumentMut>() else {
        return Ok(None);
    };
    let mut walker = Walker {
        env,
        errors: Vec::new(),
        changed: false,
    };
    for (key, item) in doc.iter_mut() {
        walker.item(item, &key_segment(key.get()));
    }
    if !walker.errors.is_empty() {
        return Err(walker.errors);
    }
    Ok(walker.changed.then(|| doc.to_string()))
}

struct Walker<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<InterpolationError>,
    changed: bool,
}

impl Walker<'_> {
    fn item(&mut self, item: &mut Item, path: &str) {
        match item {
            Item::Table(table) => {
                for (key, child) in table.iter_mut() {
                    self.item(child, &format!("{path}.{}", key_segment(key.get())));
                }
            }
            Item::ArrayOfTables(array) => {
                for (index, table) in array.iter_mut().enumerate() {
                    for (key, child) in table.iter_mut() {
                        let child_path = format!("{path}[{index}].{}", key_segment(key.get()));
                        self.item(child, &child_path);
                    }
                }
            }
            Item::Value(value) => self.value(value, path),
            Item::None => {}
        }
    }

    fn value(&mut self, value: &mut Value, path: &str) {
        match value {
            Value::String(string) if string.value().contains("${") => {
                match expand(string.value(), self.env) {
                    Ok(expanded) => {
                        let decor = string.decor().clone();
                        let mut replaced = Formatted::new(expanded);
                        *replaced.decor_mut() = decor;
                        *string = replaced;
                        self.changed = true;
                    }
                    Err(message) => self.errors.push(InterpolationError {
                        key: path.to_owned(),
                        message,
                    }),
                }
            }
            Value::Array(array) => {
                for (index, child) in array.iter_mut().enumerate() {
                    self.value(child, &format!("{path}[{index}]"));
                }
            }
            Value::InlineTable(table) => {
                for (key, child) in table.iter_mut() {
                    self.value(child, &format!("{path}.{}", key_segment(key.get())));
                }
            }
            _ => {}
        }
    }
}

/// Replaces `${NAME}` with `env(NAME)` and `$${` with `${` in one string.
pub(super) fn expand(input: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar..];
        if let Some(after) = rest.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(
                    "`${` is not closed; write `${NAME}`, or `$${` for a literal `${`".to_owned(),
                );
            };
            let name = &after[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a variable name (letters, digits and _); \
                     write `$${{` for a literal `${{`"
                ));
            }
            match env(name) {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(format!(
                        "environment variable {name} is not set; set it, or write `$${{` for a literal `${{`"
                    ))
                }
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("app.internal".into()),
            "QUOTE" => Some("a\"b\nc".into()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_and_escapes() {
        assert_eq!(
            expand("${HOST}:9001", &env).as_deref(),
            Ok("app.internal:9001")
        );
        assert_eq!(expand("$${HOST} $5 $", &env).as_deref(), Ok("${HOST} $5 $"));
        assert!(expand("${NOPE}", &env)
            .unwrap_err()
            .starts_with("environment variable NOPE is not set"));
        assert!(expand("${HOST", &env).is_err());
        assert!(expand("${1X}", &env).is_err());
    }

    #[test]
    fn interpolates_documents_structurally() {
        let text = "a = \"${QUOTE}\" # note\n[t]\nlist = [\"x\", { v = \"${HOST}\" }]\n";
        let out = interpolate(text, &env).unwrap().unwrap();
        let value: toml::Table = toml::from_str(&out).unwrap();
        assert_eq!(value["a"].as_str(), Some("a\"b\nc"));
        assert_eq!(value["t"]["list"][1]["v"].as_str(), Some("app.internal"));
        assert!(out.contains("# note"));
    }

    #[test]
    fn collects_missing_with_key_paths() {
        let text = "[[r]]\nx = \"${A}\"\n[s]\ny = [\"${B}\"]\n";
        let errors = interpolate(text, &env).err().unwrap();
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["r[0].x", "s.y[0]"]);
    }

    #[test]
    fn untouched_text_is_not_rewritten() {
        assert!(interpolate("a = \"b\"", &env).unwrap().is_none());
    }
}
