//! The external programs tests run as real peers: `redis-server` and headless Chromium
//! (Debian's packages, installed by the README's test command). Shared with the
//! gateway's tests in `mcp-auth-proxy/tests/`.

use std::time::Duration;

use tower::BoxError;

/// A real `redis-server` (Debian's package, installed by the README's test command) on
/// a free loopback port, with no persistence; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the test command installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut pong = [0u8; 7];
                if stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut pong).is_ok() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// Kills it (SIGKILL), as an outage.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Headless Chromium (Debian's `chromium`, installed by the README's test command).
pub fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

pub fn profile(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chromium-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("profile dir");
    dir
}

/// Runs headless Chromium on `url` with a fresh profile and `mode` (`--dump-dom` or
/// `--screenshot=…`); returns what it printed.
pub async fn run_chromium(url: &url::Url, name: &str, mode: &str) -> Result<String, BoxError> {
    run_chromium_with(url, name, &[mode]).await
}

/// [`run_chromium`] with more switches (`args`, the mode among them).
pub async fn run_chromium_with(
    url: &url::Url,
    name: &str,
    args: &[&str],
) -> Result<String, BoxError> {
    let output = tokio::time::timeout(
        Duration::from_secs(90),
        tokio::process::Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=900,560",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile(name).display()))
            .args(args)
            .arg(url.as_str())
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .map_err(|_| "chromium did not finish within 90 s")?
    .map_err(|e| {
        format!(
            "cannot run {} ({e}); the test command installs it",
            chromium()
        )
    })?;
    if !output.status.success() {
        return Err(format!(
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
