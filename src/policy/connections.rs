//! MCP connections: the body of `PUT /connections/{name}`, validated whole,
//! and how a stored connection becomes an `mcp_servers` entry of the
//! managed `config.yaml`.
//!
//! Secrets never enter the file: a header that carries a credential must
//! be a `${NAME}` reference to an env key (set with `PUT /env/{name}`),
//! which hermes-agent 0.19.0 expands from its environment when it connects
//! (`tools/mcp_tool.py` `_interpolate_env_vars`; the managed overlay's
//! `_expand_env_vars` does the same from the process environment).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use serde_yaml_ng::{Mapping, Value as Yaml};

use super::PolicyError;

/// Connections one tenant may have.
pub const MAX_CONNECTIONS: i64 = 32;
const MAX_HEADERS: usize = 32;
const MAX_ARGS: usize = 64;
const MAX_VALUE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Http,
    Stdio,
}

/// A validated connection (what is stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    pub transport: Transport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    pub enabled: bool,
}

impl Connection {
    /// The `mcp_servers.<name>` entry as hermes-agent reads it (`url` means
    /// HTTP, `command` stdio).
    pub fn to_yaml(&self) -> Yaml {
        let mut m = Mapping::new();
        let s = |v: &str| Yaml::String(v.to_owned());
        if let Some(url) = &self.url {
            m.insert(s("url"), s(url));
        }
        if !self.headers.is_empty() {
            let mut h = Mapping::new();
            for (k, v) in &self.headers {
                h.insert(s(k), s(v));
            }
            m.insert(s("headers"), Yaml::Mapping(h));
        }
        if let Some(cmd) = &self.command {
            m.insert(s("command"), s(cmd));
            m.insert(
                s("args"),
                Yaml::Sequence(self.args.iter().map(|a| s(a)).collect()),
            );
        }
        m.insert(s("enabled"), Yaml::Bool(self.enabled));
        Yaml::Mapping(m)
    }

    /// The env keys its headers reference.
    pub fn env_refs(&self) -> Vec<String> {
        self.headers.values().flat_map(|v| refs(v)).collect()
    }
}

/// `[a-z0-9_-]{1,64}`: connection and skill-bundle names.
pub fn check_name(name: &str) -> Result<(), PolicyError> {
    if (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(PolicyError::Invalid(
            "`name` must match [a-z0-9_-]{1,64}".into(),
        ))
    }
}

/// Parse a `PUT /connections/{name}` body. `reserved` says which env keys
/// a header must not reference (the platform's own, e.g. the gateway key).
pub fn parse(body: Json, reserved: &dyn Fn(&str) -> bool) -> Result<Connection, PolicyError> {
    let bad = |m: String| Err(PolicyError::Invalid(m));
    let Json::Object(mut obj) = body else {
        return bad("the body must be a JSON object".into());
    };
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "transport" | "url" | "command" | "args" | "headers" | "enabled"
        ) {
            return bad(format!("unknown field `{key}`"));
        }
    }
    let transport = match obj.remove("transport") {
        Some(Json::String(t)) if t == "http" => Transport::Http,
        Some(Json::String(t)) if t == "stdio" => Transport::Stdio,
        _ => return bad("`transport` must be \"http\" or \"stdio\"".into()),
    };
    let enabled = match obj.remove("enabled") {
        None => true,
        Some(Json::Bool(b)) => b,
        Some(_) => return bad("`enabled` must be true or false".into()),
    };
    let url = opt_string(&mut obj, "url")?;
    let command = opt_string(&mut obj, "command")?;
    let args = match obj.remove("args") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(items)) if items.len() <= MAX_ARGS => {
            let mut out = Vec::new();
            for (i, a) in items.into_iter().enumerate() {
                match a {
                    Json::String(s) if plain(&s) => out.push(s),
                    _ => {
                        return bad(format!(
                            "`args[{i}]` must be a single-line string of at most {MAX_VALUE} bytes"
                        ));
                    }
                }
            }
            out
        }
        Some(_) => {
            return bad(format!(
                "`args` must be a list of at most {MAX_ARGS} strings"
            ));
        }
    };
    let headers = match obj.remove("headers") {
        None | Some(Json::Null) => BTreeMap::new(),
        Some(Json::Object(m)) if m.len() <= MAX_HEADERS => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                if !header_name(&k) {
                    return bad(format!("`headers.{k}` is not a valid header name"));
                }
                let Json::String(v) = v else {
                    return bad(format!("`headers.{k}` must be a string"));
                };
                if !plain(&v) {
                    return bad(format!(
                        "`headers.{k}` must be a single-line string of at most {MAX_VALUE} bytes"
                    ));
                }
                check_refs(&k, &v, reserved)?;
                out.insert(k, v);
            }
            out
        }
        Some(_) => {
            return bad(format!(
                "`headers` must be an object of at most {MAX_HEADERS} strings"
            ));
        }
    };
    match transport {
        Transport::Http => {
            let Some(u) = &url else {
                return bad("`url` is required for transport \"http\"".into());
            };
            let parsed = reqwest::Url::parse(u).ok().filter(|p| {
                matches!(p.scheme(), "http" | "https")
                    && p.host_str().is_some_and(|h| !h.is_empty())
            });
            match parsed {
                None => return bad("`url` must be an http(s) URL with a host".into()),
                Some(p) if !p.username().is_empty() || p.password().is_some() => {
                    return bad(
                        "`url` must not carry credentials; use a header with a ${NAME} reference"
                            .into(),
                    );
                }
                Some(_) => {}
            }
            if command.is_some() || !args.is_empty() {
                return bad("`command` and `args` are for transport \"stdio\"".into());
            }
        }
        Transport::Stdio => {
            if command.is_none() {
                return bad("`command` is required for transport \"stdio\"".into());
            }
            if url.is_some() || !headers.is_empty() {
                return bad("`url` and `headers` are for transport \"http\"".into());
            }
        }
    }
    Ok(Connection {
        transport,
        url,
        command,
        args,
        headers,
        enabled,
    })
}

fn opt_string(
    obj: &mut serde_json::Map<String, Json>,
    field: &str,
) -> Result<Option<String>, PolicyError> {
    match obj.remove(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if !s.trim().is_empty() && plain(&s) => Ok(Some(s)),
        Some(_) => Err(PolicyError::Invalid(format!(
            "`{field}` must be a non-empty single-line string of at most {MAX_VALUE} bytes"
        ))),
    }
}

fn plain(s: &str) -> bool {
    s.len() <= MAX_VALUE && !s.contains(['\n', '\r', '\0'])
}

fn header_name(k: &str) -> bool {
    (1..=128).contains(&k.len())
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Header names whose value is a credential: literal values are refused.
fn carries_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "authorization",
        "cookie",
        "token",
        "secret",
        "key",
        "password",
        "auth",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// The `${NAME}` / `${env:NAME}` references in a value, as hermes-agent
/// reads them (`\$\{([^}]+)\}`).
fn refs(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = v;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let body = after[..end].trim();
        let name = body.strip_prefix("env:").map(str::trim).unwrap_or(body);
        out.push(name.to_owned());
        rest = &after[end + 1..];
    }
    out
}

fn check_refs(header: &str, v: &str, reserved: &dyn Fn(&str) -> bool) -> Result<(), PolicyError> {
    let names = refs(v);
    for name in &names {
        let valid = name.len() <= 128
            && name.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid {
            return Err(PolicyError::Invalid(format!(
                "`headers.{header}` references `{name}`, which is not an env key name ([A-Z][A-Z0-9_]*)"
            )));
        }
        if reserved(name) {
            return Err(PolicyError::Invalid(format!(
                "`headers.{header}` references `{name}`, which is reserved by the platform"
            )));
        }
    }
    if names.is_empty() && carries_secret(header) {
        return Err(PolicyError::Invalid(format!(
            "`headers.{header}` carries a credential: give it as a ${{NAME}} reference to an env key (PUT /env/{{name}}), never as a literal"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none(_: &str) -> bool {
        false
    }

    #[test]
    fn a_connection_keeps_secrets_out_of_the_file() {
        let c = parse(
            json!({"transport": "http", "url": "https://mcp.example/mcp",
                   "headers": {"Authorization": "Bearer ${GITHUB_TOKEN}", "X-Team": "a"}}),
            &none,
        )
        .expect("valid");
        assert!(c.enabled);
        assert_eq!(c.env_refs(), vec!["GITHUB_TOKEN"]);
        let text = serde_yaml_ng::to_string(&c.to_yaml()).expect("yaml");
        assert!(text.contains("${GITHUB_TOKEN}"), "{text}");

        for (body, field) in [
            (
                json!({"transport": "http", "url": "https://h/", "headers": {"Authorization": "Bearer sk-live"}}),
                "headers.Authorization",
            ),
            (
                json!({"transport": "http", "url": "https://h/", "headers": {"X-Api-Key": "${lower}"}}),
                "headers.X-Api-Key",
            ),
            (
                json!({"transport": "http", "url": "https://h/", "headers": {"Authorization": "${API_SERVER_KEY}"}}),
                "API_SERVER_KEY",
            ),
            (json!({"transport": "http", "url": "ftp://h/"}), "url"),
            (json!({"transport": "http", "url": "https://u:p@h/"}), "url"),
            (json!({"transport": "http"}), "url"),
            (json!({"transport": "stdio"}), "command"),
            (
                json!({"transport": "stdio", "command": "x", "url": "https://h/"}),
                "url",
            ),
            (json!({"transport": "ws", "url": "https://h/"}), "transport"),
            (
                json!({"transport": "stdio", "command": "x", "args": ["a\nb"]}),
                "args[0]",
            ),
            (
                json!({"transport": "stdio", "command": "x", "enabled": "no"}),
                "enabled",
            ),
            (
                json!({"transport": "stdio", "command": "x", "env": {}}),
                "env",
            ),
        ] {
            match parse(body.clone(), &|n: &str| n.starts_with("API_SERVER_")) {
                Err(PolicyError::Invalid(m)) => assert!(m.contains(field), "{body}: {m}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        for name in ["", "A", "a/b", &"x".repeat(65)] {
            assert!(check_name(name).is_err(), "{name}");
        }
        check_name("github_mcp-1").expect("valid name");
    }
}
