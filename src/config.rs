//! Flat, Samza-style configuration: a TOML file is read as dotted keys
//! (`stores.counts.key.serde = "string"` and `[stores.counts] key.serde = "string"` are the
//! same key), each key is taken by the part of gregor that owns it, and any key nobody took
//! is an error naming the key and the file.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;

/// A configuration error, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{file}: invalid TOML: {message}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// A key nobody knows.
    #[error("{file}: unknown key `{key}`")]
    UnknownKey {
        /// The file.
        file: String,
        /// The dotted key.
        key: String,
    },
    /// A required key is missing.
    #[error("{file}: missing required key `{key}`")]
    Missing {
        /// The file.
        file: String,
        /// The dotted key.
        key: String,
    },
    /// A key has a value of the wrong type or out of range.
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Dotted keys and their values, with the name of where they came from.
#[derive(Debug, Clone)]
pub struct FlatConfig {
    source: String,
    entries: BTreeMap<String, toml::Value>,
}

impl FlatConfig {
    /// Reads and flattens a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml_str(&file, &text)
    }

    /// Parses and flattens TOML text; `source` names it in errors.
    pub fn from_toml_str(source: &str, text: &str) -> Result<Self, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    file: source.to_string(),
                    message: e.to_string(),
                })?;
        let mut entries = BTreeMap::new();
        flatten("", toml::Value::Table(table), &mut entries);
        Ok(FlatConfig {
            source: source.to_string(),
            entries,
        })
    }

    /// An empty config named `source`.
    pub fn empty(source: &str) -> Self {
        FlatConfig {
            source: source.to_string(),
            entries: BTreeMap::new(),
        }
    }

    /// Sets `key` (used by programs building config in code).
    pub fn set(&mut self, key: &str, value: impl Into<toml::Value>) {
        self.entries.insert(key.to_string(), value.into());
    }

    /// The name of the file this came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.source.clone(),
            key: key.to_string(),
            message,
        }
    }

    /// Removes and returns a string.
    pub fn take_str(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.invalid(key, format!("expected a string, found {}", v.type_str()))),
        }
    }

    /// Removes and returns a required string.
    pub fn require_str(&mut self, key: &str) -> Result<String, ConfigError> {
        self.take_str(key)?.ok_or_else(|| ConfigError::Missing {
            file: self.source.clone(),
            key: key.to_string(),
        })
    }

    /// Removes and returns a non-negative integer.
    pub fn take_u64(&mut self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if i >= 0 => Ok(Some(i as u64)),
            Some(toml::Value::Integer(i)) => {
                Err(self.invalid(key, format!("must not be negative, found {i}")))
            }
            Some(v) => {
                Err(self.invalid(key, format!("expected an integer, found {}", v.type_str())))
            }
        }
    }

    /// Removes and returns an integer that must lie in `range`; the error names the key, the
    /// file, the value found and the allowed range.
    pub fn take_u64_in(
        &mut self,
        key: &str,
        range: RangeInclusive<u64>,
    ) -> Result<Option<u64>, ConfigError> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if u64::try_from(i).is_ok_and(|u| range.contains(&u)) => {
                Ok(Some(i as u64))
            }
            Some(toml::Value::Integer(i)) => Err(self.invalid(
                key,
                format!(
                    "must be between {} and {}, found {i}",
                    range.start(),
                    range.end()
                ),
            )),
            Some(v) => {
                Err(self.invalid(key, format!("expected an integer, found {}", v.type_str())))
            }
        }
    }

    /// Removes and returns an integer that must be `special` or lie in `range` (e.g. -1 for
    /// "unlimited"); the error names the key, the file, the value found and what is allowed.
    pub fn take_i64_in(
        &mut self,
        key: &str,
        special: Option<i64>,
        range: RangeInclusive<i64>,
    ) -> Result<Option<i64>, ConfigError> {
        match self.take_i64(key)? {
            None => Ok(None),
            Some(i) if Some(i) == special || range.contains(&i) => Ok(Some(i)),
            Some(i) => {
                let or = special.map_or(String::new(), |s| format!("{s} or "));
                Err(self.invalid(
                    key,
                    format!(
                        "must be {or}between {} and {}, found {i}",
                        range.start(),
                        range.end()
                    ),
                ))
            }
        }
    }

    /// Removes and returns a number that must be `special` or lie in `range`; the error
    /// names the key, the file, the value found and what is allowed.
    pub fn take_f64_in(
        &mut self,
        key: &str,
        special: Option<f64>,
        range: RangeInclusive<f64>,
    ) -> Result<Option<f64>, ConfigError> {
        match self.take_f64(key)? {
            None => Ok(None),
            Some(f) if Some(f) == special || range.contains(&f) => Ok(Some(f)),
            Some(f) => {
                let or = special.map_or(String::new(), |s| format!("{s} or "));
                Err(self.invalid(
                    key,
                    format!(
                        "must be {or}between {} and {}, found {f}",
                        range.start(),
                        range.end()
                    ),
                ))
            }
        }
    }

    /// Removes and returns an integer.
    pub fn take_i64(&mut self, key: &str) -> Result<Option<i64>, ConfigError> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => Ok(Some(i)),
            Some(v) => {
                Err(self.invalid(key, format!("expected an integer, found {}", v.type_str())))
            }
        }
    }

    /// Removes and returns a number (integer or float).
    pub fn take_f64(&mut self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) => Ok(Some(i as f64)),
            Some(toml::Value::Float(f)) => Ok(Some(f)),
            Some(v) => Err(self.invalid(key, format!("expected a number, found {}", v.type_str()))),
        }
    }

    /// Removes and returns a boolean.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(toml::Value::Boolean(b)) => Ok(Some(b)),
            Some(v) => Err(self.invalid(
                key,
                format!("expected true or false, found {}", v.type_str()),
            )),
        }
    }

    /// Removes and returns a list of strings (a single string counts as a list of one).
    pub fn take_str_list(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        match self.entries.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s])),
            Some(toml::Value::Array(a)) => a
                .into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    v => Err(self.invalid(
                        key,
                        format!(
                            "expected a list of strings, found an item of type {}",
                            v.type_str()
                        ),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.invalid(
                key,
                format!("expected a list of strings, found {}", v.type_str()),
            )),
        }
    }

    /// Parses `key` with `parse`, which names the accepted values on failure.
    pub fn take_parsed<T>(
        &mut self,
        key: &str,
        accepted: &str,
        parse: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.take_str(key)? {
            None => Ok(None),
            Some(s) => parse(&s).map(Some).ok_or_else(|| {
                self.invalid(
                    key,
                    format!("unknown value \"{s}\", expected one of {accepted}"),
                )
            }),
        }
    }

    /// The distinct names `x` of keys `<prefix>.x.…` (e.g. store names under `stores`).
    pub fn children(&self, prefix: &str) -> Vec<String> {
        let p = format!("{prefix}.");
        let mut names: Vec<String> = self
            .entries
            .keys()
            .filter_map(|k| k.strip_prefix(&p))
            .map(|rest| rest.split('.').next().unwrap_or(rest).to_string())
            .collect();
        names.dedup();
        names
    }

    /// Every key starting with `prefix`, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Removes and returns a value as is.
    pub fn take_raw(&mut self, key: &str) -> Option<toml::Value> {
        self.entries.remove(key)
    }

    /// Fails on the first key nobody took.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self.entries.into_keys().next() {
            None => Ok(()),
            Some(key) => Err(ConfigError::UnknownKey {
                file: self.source,
                key,
            }),
        }
    }
}

fn flatten(prefix: &str, value: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        v => {
            out.insert(prefix.to_string(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_dotted_keys_flatten_alike() {
        let mut c = FlatConfig::from_toml_str(
            "job.toml",
            "[stores.counts]\nkey.serde = \"string\"\n[job]\ncommit.ms = 5",
        )
        .unwrap();
        assert_eq!(c.children("stores"), vec!["counts"]);
        assert_eq!(
            c.take_str("stores.counts.key.serde").unwrap().as_deref(),
            Some("string")
        );
        assert_eq!(c.take_u64("job.commit.ms").unwrap(), Some(5));
        c.finish().unwrap();
    }

    #[test]
    fn unknown_keys_and_wrong_types_name_key_and_file() {
        let mut c = FlatConfig::from_toml_str("job.toml", "[job]\ncommit.ms = \"soon\"\nbogus = 1")
            .unwrap();
        let e = c.take_u64("job.commit.ms").unwrap_err().to_string();
        assert!(
            e.contains("job.toml") && e.contains("job.commit.ms") && e.contains("integer"),
            "{e}"
        );
        let e = c.finish().unwrap_err().to_string();
        assert!(e.contains("job.toml") && e.contains("job.bogus"), "{e}");
    }

    #[test]
    fn ranges_name_key_file_value_and_bounds() {
        let mut c = FlatConfig::from_toml_str(
            "job.toml",
            "a = 0\nb = -3\nc = 5\nd = -1\ne = 7\nf = nan\ng = -3\nh = 0.0\ni = 3\nj = 2.5",
        )
        .unwrap();
        let e = c.take_u64_in("a", 1..=10).unwrap_err().to_string();
        assert!(
            e.contains("job.toml") && e.contains("`a`") && e.contains("between 1 and 10, found 0"),
            "{e}"
        );
        let e = c.take_u64_in("b", 0..=10).unwrap_err().to_string();
        assert!(e.contains("between 0 and 10, found -3"), "{e}");
        assert_eq!(c.take_u64_in("c", 1..=10).unwrap(), Some(5));
        assert_eq!(c.take_i64_in("d", Some(-1), 20..=100).unwrap(), Some(-1));
        let e = c
            .take_i64_in("e", Some(-1), 20..=100)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must be -1 or between 20 and 100, found 7"),
            "{e}"
        );
        let e = c
            .take_f64_in("f", Some(0.0), 1.0..=100.0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`f`") && e.contains("NaN"), "{e}");
        let e = c
            .take_f64_in("g", Some(0.0), 1.0..=100.0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("must be 0 or between 1 and 100, found -3"),
            "{e}"
        );
        assert_eq!(
            c.take_f64_in("h", Some(0.0), 1.0..=100.0).unwrap(),
            Some(0.0)
        );
        assert_eq!(
            c.take_f64_in("i", Some(0.0), 1.0..=100.0).unwrap(),
            Some(3.0)
        );
        assert_eq!(c.take_f64_in("j", None, 1.0..=100.0).unwrap(), Some(2.5));
        assert_eq!(c.take_u64_in("missing", 1..=10).unwrap(), None);
        c.finish().unwrap();
    }
}
