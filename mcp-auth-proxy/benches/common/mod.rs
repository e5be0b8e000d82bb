//! What the benches that run the `mcp-auth-proxy` binary share: the process, its start,
//! and the CPU time it used.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A child process killed when dropped.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The gateway's binary with an anonymous identity, a SQLite store in `dir` and one
/// upstream `bench` at `upstream`'s `/mcp`, its `[[upstream]]` table ending in
/// `upstream_lines`; `env` is set for the process. Returns it once it listens, and its
/// port.
pub fn gateway(
    dir: &Path,
    tag: &str,
    upstream: u16,
    upstream_lines: &str,
    env: &[(&str, &str)],
) -> (Running, u16) {
    let config = format!(
        "listen = \"127.0.0.1:0\"\n[store]\nsqlite = \"{}\"\n[identity]\nmode = \"anonymous\"\n\
         [[upstream]]\nname = \"bench\"\nurl = \"http://127.0.0.1:{upstream}/mcp\"\n{upstream_lines}",
        dir.join(format!("gateway-{tag}.db")).display()
    );
    let path = dir.join(format!("gateway-{tag}.toml"));
    std::fs::write(&path, config).expect("config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_mcp-auth-proxy"));
    command
        .args(["serve", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    listening(command)
}

/// Starts `command` (stdout piped), a server whose first line on stdout is
/// `listening on http://ADDRESS`; returns it and the port it listens on.
pub fn listening(mut command: Command) -> (Running, u16) {
    let mut child = command.spawn().expect("the server's process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("listening line");
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    (Running(child), port)
}

/// The CPU time process `pid` has used (user + system), in clock ticks of 10 ms.
pub fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // After the command name in parentheses: utime and stime are fields 14, 15.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}
