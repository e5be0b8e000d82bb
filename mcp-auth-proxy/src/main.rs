//! `mcp-auth-proxy`: MCP servers behind one address, auth added transparently.
//!
//! ```text
//! mcp-auth-proxy serve --config proxy.toml   # run the gateway
//! mcp-auth-proxy check --config proxy.toml   # validate a configuration, every error with its line
//! mcp-auth-proxy seal-store --config proxy.toml  # seal, once, what the store held unsealed
//! mcp-auth-proxy stdio <server-url> [--store PATH] [--browser-command CMD | --no-browser]
//!     [--scope SCOPES]... [--client-id ID [--client-secret-env VAR] [--issuer URL]]
//!     [--header 'Name: value']... [--sign-in-timeout SECONDS] [--allow-loopback-http]
//!                                            # a stdio MCP server bridging to a remote one
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mcp_auth_proxy::{Gateway, ProxyConfig};

/// How long streams may go on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The command line.
#[derive(Parser)]
#[command(
    name = "mcp-auth-proxy",
    version,
    about = "MCP servers behind one address with each upstream's auth added (serve), or a stdio bridge to a remote MCP server that signs its user in (stdio).",
    after_help = "Logs go to stderr (filtered by RUST_LOG); secrets are taken from the environment only. Every configuration key is explained in proxy.example.toml."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway: each upstream at /{name}/mcp, plus /connections, /healthz,
    /// /readyz and /metrics. Prints `listening on URL` on stdout once it listens.
    Serve(ConfigFile),
    /// Validate a configuration: exit 0, or every error with its line.
    Check(ConfigFile),
    /// Seal, once, the tokens and records a store held before `[store]
    /// sealing_key_env` was configured (run it with no gateway using the store).
    SealStore(ConfigFile),
    /// A stdio MCP server for hosts that only speak stdio, bridging to a remote MCP
    /// server over HTTP. Signs the user in through the browser once; credentials are
    /// kept sealed in a local SQLite file shared by every copy.
    Stdio(StdioArgs),
}

#[derive(Args)]
struct ConfigFile {
    /// The gateway's TOML configuration (every key is explained in
    /// proxy.example.toml).
    #[arg(long, short, env = "MCP_AUTH_PROXY_CONFIG", value_name = "FILE")]
    config: PathBuf,
}

#[derive(Args)]
struct StdioArgs {
    /// The remote MCP server's endpoint (https; http only on loopback with
    /// --allow-loopback-http).
    #[arg(value_name = "SERVER_URL")]
    server: String,
    /// The SQLite file holding credentials, the client registration and pending
    /// sign-ins [default: $XDG_DATA_HOME/mcp-auth-proxy/credentials.db].
    #[arg(long, env = "MCP_AUTH_PROXY_STORE", value_name = "PATH")]
    store: Option<PathBuf>,
    /// The program that opens the sign-in link, quoted as in a shell (no expansion),
    /// e.g. "open -a 'Google Chrome'" [default: the system's browser].
    #[arg(long, value_name = "CMD", conflicts_with = "no_browser")]
    browser_command: Option<String>,
    /// Print the sign-in link on stderr instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// Scopes to request besides those the server asks for (space-separated;
    /// repeatable).
    #[arg(long = "scope", value_name = "SCOPES")]
    scopes: Vec<String>,
    /// Use this client, registered beforehand, instead of dynamic registration.
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    /// The environment variable holding the client's secret (never the secret itself:
    /// a command line is visible to every local user). Needs --issuer.
    #[arg(long, value_name = "VAR", requires = "client_id")]
    client_secret_env: Option<String>,
    /// The authorization server --client-id is registered at (exactly as it names
    /// itself); the secret goes to no other. Without it, a public client's issuer is
    /// learned from the server and pinned on first use.
    #[arg(long, value_name = "URL", requires = "client_id")]
    issuer: Option<String>,
    /// A header for every request, `Name: value`; `${VAR}` takes a value from the
    /// environment. An Authorization header replaces OAuth (nothing stored).
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    headers: Vec<String>,
    /// How long a request waits for the user to sign in, 1..3600.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    sign_in_timeout: u64,
    /// Allow plain http for the server and its authorization server on loopback
    /// (development and tests only).
    #[arg(long)]
    allow_loopback_http: bool,
}

impl StdioArgs {
    /// The arguments as the bridge's own parser validates them (URLs, headers, the
    /// secret's variable, the timeout's range): clap reads and documents them, one
    /// parser decides.
    fn to_bridge_args(&self) -> Vec<String> {
        let mut args = vec![self.server.clone()];
        let mut option = |name: &str, value: &str| {
            args.push(name.to_owned());
            args.push(value.to_owned());
        };
        if let Some(store) = &self.store {
            option("--store", &store.to_string_lossy());
        }
        if let Some(command) = &self.browser_command {
            option("--browser-command", command);
        }
        for scope in &self.scopes {
            option("--scope", scope);
        }
        if let Some(id) = &self.client_id {
            option("--client-id", id);
        }
        if let Some(variable) = &self.client_secret_env {
            option("--client-secret-env", variable);
        }
        if let Some(issuer) = &self.issuer {
            option("--issuer", issuer);
        }
        for header in &self.headers {
            option("--header", header);
        }
        option("--sign-in-timeout", &self.sign_in_timeout.to_string());
        if self.no_browser {
            args.push("--no-browser".into());
        }
        if self.allow_loopback_http {
            args.push("--allow-loopback-http".into());
        }
        args
    }
}

fn main() -> ExitCode {
    // Help and --version exit 0; a usage error exits 2 with what was wrong.
    let cli = Cli::parse();
    let (command, file) = match cli.command {
        Command::Stdio(args) => return stdio(&args.to_bridge_args()),
        Command::Serve(file) => ("serve", file),
        Command::Check(file) => ("check", file),
        Command::SealStore(file) => ("seal-store", file),
    };
    let path = file.config;
    let config = match ProxyConfig::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match command {
        "check" => {
            println!(
                "{}: ok ({} upstream{}, listening on {})",
                path.display(),
                config.upstreams.len(),
                if config.upstreams.len() == 1 { "" } else { "s" },
                config.listen
            );
            ExitCode::SUCCESS
        }
        "seal-store" => seal_store(&config),
        _ => serve(config),
    }
}

/// Seals, once, what the store held before `sealing_key_env` was configured.
fn seal_store(config: &ProxyConfig) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(Gateway::seal_existing(config)) {
        Ok(report) => {
            println!(
                "sealed {} credentials and {} records ({} values were sealed already)",
                report.credentials, report.records, report.already_sealed
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("seal-store: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: ProxyConfig) -> ExitCode {
    // Logs go to stderr, structured by tracing; no secret is ever a field.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_http=info".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let gateway = match Gateway::new(&config) {
            Ok(gateway) => match metrics_recorder() {
                Some(handle) => gateway.with_metrics(handle),
                None => gateway,
            },
            Err(error) => {
                tracing::error!(%error, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, listen = %config.listen, "cannot listen");
                return ExitCode::FAILURE;
            }
        };
        tokio::spawn(return_memory_after_peaks());
        let shutdown = shutdown_signal();
        let addr = listener.local_addr().unwrap_or(config.listen);
        // The address on stdout, for supervisors and tests that asked for port 0.
        println!("listening on http://{addr}");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // No Nagle: an SSE event is a small write, and on a keep-alive connection
        // Nagle with delayed ACKs holds it ~40 ms.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = axum::serve(
            listener,
            gateway
                .router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        });
        let mut server = std::pin::pin!(server.into_future());
        tokio::select! {
            result = &mut server => return exit(result),
            () = shutdown => {}
        }
        tracing::info!(grace = ?SHUTDOWN_GRACE, "shutting down; letting streams finish");
        let _ = stop.send(true);
        match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(result) => exit(result),
            Err(_) => {
                tracing::warn!("streams still open after the grace period; closing them");
                ExitCode::SUCCESS
            }
        }
    })
}

/// `stdio`: stdout carries JSON-RPC only; every log line goes to stderr.
fn stdio(args: &[String]) -> ExitCode {
    let options = match mcp_auth_proxy::bridge::BridgeOptions::parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!(
                "mcp-auth-proxy stdio: {error}\n(mcp-auth-proxy stdio --help explains every option)"
            );
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(mcp_auth_proxy::bridge::run(options));
    // The blocking read of stdin may still be pending: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mcp-auth-proxy stdio: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The process-wide Prometheus recorder for the crate's counters (`/metrics`).
fn metrics_recorder() -> Option<mcp_auth_proxy::MetricsExposition> {
    let handle = mcp_auth_proxy::MetricsRecorder::new().install();
    match &handle {
        Some(_) => tower_mcp_auth::metrics::describe(),
        None => tracing::warn!("another metrics recorder is installed; /metrics disabled"),
    }
    handle
}

fn exit(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Registers the handlers now, not when first polled: a supervisor (or a test) may send
/// SIGTERM the moment it reads the address, and an unregistered SIGTERM kills the process.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = signal(SignalKind::terminate())
            .and_then(|terminate| Ok((terminate, signal(SignalKind::interrupt())?)));
        async move {
            match handlers {
                Ok((mut terminate, mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                Err(error) => {
                    // The default dispositions still stop the process, only without grace.
                    tracing::warn!(%error, "cannot handle shutdown signals; no graceful shutdown");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Hands freed memory back to the system after a peak of streams. glibc's allocator
/// keeps what it took (a peak of 10,000 streams left ~80% of its memory resident after
/// they closed); `malloc_trim` returns the free pages. Checked every 2 s, trimmed when
/// the number of open streams fell, at most every 10 s (or at once when none are left).
async fn return_memory_after_peaks() {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut last = 0;
    let mut trimmed = std::time::Instant::now();
    loop {
        tick.tick().await;
        let open = mcp_auth_proxy::open_streams();
        if open < last && (open == 0 || trimmed.elapsed() >= Duration::from_secs(10)) {
            trim();
            trimmed = std::time::Instant::now();
        }
        last = open;
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: `malloc_trim` takes no pointer and only releases free memory of glibc's
    // own allocator, which this process uses; it is safe to call from any thread.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
