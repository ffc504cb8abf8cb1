//! Loading the one TOML file that both binaries share, with `WATCHPOST_*` environment
//! overrides applied before deserialising.
//!
//! `WATCHPOST_<SECTION>_<KEY>` overrides `[section] key`: `WATCHPOST_PROXY_LISTEN` sets
//! `[proxy] listen`, `WATCHPOST_GATEWAY_RISK_REJECT_THRESHOLD` sets
//! `[gateway] risk_reject_threshold`. The value is read as a TOML value when it parses as one
//! (numbers, booleans, arrays such as `["a","b"]`) and as a string otherwise. `REDIS_URL` and
//! `DATABASE_URL` set `[redis] url` and `[postgres] url`. The environment is passed in as a
//! list of pairs so that tests never touch the process environment.

use serde::de::DeserializeOwned;

/// Environment variable prefix of config overrides.
pub const ENV_PREFIX: &str = "WATCHPOST_";
/// Overrides `[redis] url`.
pub const ENV_REDIS_URL: &str = "REDIS_URL";
/// Overrides `[postgres] url`.
pub const ENV_DATABASE_URL: &str = "DATABASE_URL";
/// Key that encrypts stored secrets (admin API).
pub const ENV_SECRET_KEY: &str = "WATCHPOST_SECRET_KEY";
/// The key being retired during a rotation: still decrypts, never encrypts (admin API).
pub const ENV_SECRET_KEY_PREVIOUS: &str = "WATCHPOST_SECRET_KEY_PREVIOUS";

/// A config that could not be loaded; the message names the file, key or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("invalid config{}: {message}", .path.as_deref().map(|p| format!(" in {p}")).unwrap_or_default())]
    Invalid {
        path: Option<String>,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// Which sections a binary reads, and therefore which `WATCHPOST_<SECTION>_…` names it claims.
/// Variables naming another binary's section are left alone; variables that name none of the
/// sections in `sections` are ignored (they may belong to the other binary).
pub fn load<T: DeserializeOwned>(
    path: Option<&str>,
    sections: &[&str],
    env: &[(String, String)],
) -> Result<T, ConfigError> {
    let text = match path {
        Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
            path: p.to_string(),
            source,
        })?,
        None => String::new(),
    };
    load_str(&text, path, sections, env)
}

/// [`load`] on text already read; `path` is only used in messages.
pub fn load_str<T: DeserializeOwned>(
    text: &str,
    path: Option<&str>,
    sections: &[&str],
    env: &[(String, String)],
) -> Result<T, ConfigError> {
    let shown = path.unwrap_or("<defaults>").to_string();
    let mut root: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: shown.clone(),
        message: e.message().to_string(),
    })?;
    apply_env(&mut root, sections, env)?;
    T::deserialize(toml::Value::Table(root)).map_err(|e| ConfigError::Invalid {
        path: path.map(str::to_string),
        message: e.message().to_string(),
    })
}

fn apply_env(
    root: &mut toml::Table,
    sections: &[&str],
    env: &[(String, String)],
) -> Result<(), ConfigError> {
    for (var, value) in env {
        let target = if var == ENV_REDIS_URL && sections.contains(&"redis") {
            Some(("redis".to_string(), "url".to_string()))
        } else if var == ENV_DATABASE_URL && sections.contains(&"postgres") {
            Some(("postgres".to_string(), "url".to_string()))
        } else if let Some(rest) = var.strip_prefix(ENV_PREFIX) {
            let rest = rest.to_ascii_lowercase();
            // Longest section name first so that a section whose name is a prefix of another
            // cannot capture its variables.
            let mut secs: Vec<&&str> = sections.iter().collect();
            secs.sort_by_key(|s| std::cmp::Reverse(s.len()));
            secs.into_iter().find_map(|s| {
                rest.strip_prefix(&format!("{s}_"))
                    .filter(|k| !k.is_empty())
                    .map(|k| (s.to_string(), k.to_string()))
            })
        } else {
            None
        };
        let Some((section, key)) = target else {
            continue;
        };
        let parsed = parse_env_value(value);
        let table = root
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match table {
            toml::Value::Table(t) => {
                t.insert(key, parsed);
            }
            _ => {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: format!("[{section}] in the config file is not a table"),
                })
            }
        }
    }
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    // Parse as the right-hand side of a TOML assignment; fall back to a plain string.
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// The process environment as pairs, for [`load`]. Call it once, in `main`.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct Root {
        proxy: Proxy,
        redis: Redis,
    }
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Proxy {
        listen: String,
        upstreams: Vec<String>,
        workers: u32,
    }
    impl Default for Proxy {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:8080".into(),
                upstreams: vec![],
                workers: 1,
            }
        }
    }
    #[derive(Debug, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Redis {
        url: String,
    }
    impl Default for Redis {
        fn default() -> Self {
            Self {
                url: "redis://127.0.0.1:6379".into(),
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_without_a_file() {
        let r: Root = load_str("", None, &["proxy", "redis"], &[]).expect("defaults");
        assert_eq!(r.proxy.listen, "127.0.0.1:8080");
    }

    #[test]
    fn env_overrides_file_and_types_values() {
        let text = "[proxy]\nlisten = \"0.0.0.0:1\"\n[admin]\nlisten = \"x\"\n";
        let r: Root = load_str(
            text,
            Some("f.toml"),
            &["proxy", "redis"],
            &env(&[
                ("WATCHPOST_PROXY_LISTEN", "127.0.0.1:9"),
                ("WATCHPOST_PROXY_WORKERS", "4"),
                ("WATCHPOST_PROXY_UPSTREAMS", "[\"a:1\",\"b:2\"]"),
                ("REDIS_URL", "redis://h:1"),
                ("WATCHPOST_ADMIN_LISTEN", "ignored by this binary"),
                ("UNRELATED", "x"),
            ]),
        )
        .expect("loads");
        assert_eq!(r.proxy.listen, "127.0.0.1:9");
        assert_eq!(r.proxy.workers, 4);
        assert_eq!(r.proxy.upstreams, vec!["a:1", "b:2"]);
        assert_eq!(r.redis.url, "redis://h:1");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load_str::<Root>("[proxy]\nlistne = \"x\"\n", Some("f.toml"), &["proxy"], &[])
            .expect_err("typo");
        assert!(err.to_string().contains("listne"), "{err}");
        assert!(err.to_string().contains("f.toml"), "{err}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let err = load_str::<Root>("[proxy]\nworkers = \"many\"\n", None, &["proxy"], &[])
            .expect_err("type");
        assert!(err.to_string().contains("invalid"), "{err}");
        let err = load_str::<Root>(
            "",
            None,
            &["proxy"],
            &env(&[("WATCHPOST_PROXY_WORKERS", "lots")]),
        )
        .expect_err("env type");
        assert!(err.to_string().contains("invalid"), "{err}");
    }

    #[test]
    fn syntax_error_names_the_file() {
        let err =
            load_str::<Root>("[proxy", Some("bad.toml"), &["proxy"], &[]).expect_err("syntax");
        assert!(err.to_string().contains("bad.toml"), "{err}");
    }
}
