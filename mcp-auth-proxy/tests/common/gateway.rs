//! The `mcp-auth-proxy` binary as the gateway tests run it: a TOML file in a directory
//! of its own, secrets from the environment, the listening address from its first line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use tower_mcp_auth::client::ReqwestService;

pub const BINARY: &str = env!("CARGO_BIN_EXE_mcp-auth-proxy");

pub struct Proxy {
    pub child: Child,
    pub url: String,
    pub dir: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("proxy")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the gateway with `config` (listening on a free port); returns once it
/// printed its address.
pub fn start(name: &str, config: &str, env: &[(&str, &str)]) -> Proxy {
    start_limited(name, config, env, None)
}

/// [`start`], with at most `open_files` file descriptors when given (`ulimit -n`).
pub fn start_limited(
    name: &str,
    config: &str,
    env: &[(&str, &str)],
    open_files: Option<u32>,
) -> Proxy {
    let dir = dir(name);
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let serve = format!("exec '{BINARY}' serve --config '{}'", path.display());
    let script = match open_files {
        Some(limit) => format!("ulimit -n {limit} && {serve}"),
        None => serve,
    };
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .envs(env.iter().copied())
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
        .to_owned();
    Proxy { child, url, dir }
}

pub fn config(trusted: &str, upstreams: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:0"
max_body_bytes = 65536

[store]
sqlite = "gateway.db"

[identity]
mode = "trusted-header"
header = "x-user"
trusted_sources = ["{trusted}"]
{upstreams}"#
    )
}

pub fn http() -> reqwest::Client {
    ReqwestService::builder().unwrap().build().unwrap()
}

pub fn call(id: u64, tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": {"text": "hi"}}})
    .to_string()
}

pub async fn post(url: &str, user: Option<&str>, body: String) -> reqwest::Response {
    let mut request = http()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        // The caller's own token must never reach the upstream.
        .header("authorization", "Bearer caller-token-must-stay-home")
        .body(body);
    if let Some(user) = user {
        request = request.header("x-user", user);
    }
    request.send().await.unwrap()
}

/// A JSON-RPC message from a JSON or SSE body.
pub fn message(content_type: &str, body: &str) -> Value {
    if content_type.starts_with("text/event-stream") {
        let data: String = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .collect();
        serde_json::from_str(&data).unwrap()
    } else {
        serde_json::from_str(body).unwrap()
    }
}

/// A port free now, for a gateway that must know its own public URL before it starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
