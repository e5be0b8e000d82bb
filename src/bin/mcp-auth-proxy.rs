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

use tower_mcp_auth::proxy::{Gateway, ProxyConfig};

/// How long streams may go on after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: mcp-auth-proxy <serve|check|seal-store> --config <file>\n       mcp-auth-proxy stdio <server-url> [--store PATH] [--browser-command CMD | --no-browser]\n           [--scope SCOPES]... [--client-id ID [--client-secret-env VAR] [--issuer URL]]\n           [--header 'Name: value, ${VAR} from the environment']... [--sign-in-timeout SECONDS] [--allow-loopback-http]";

fn config_path(args: &[String]) -> Option<PathBuf> {
    let at = args.iter().position(|a| a == "--config")?;
    args.get(at + 1).map(PathBuf::from)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("stdio") {
        return stdio(&args[1..]);
    }
    let (Some(command), Some(path)) = (args.first(), config_path(&args)) else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let config = match ProxyConfig::load(&path) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match command.as_str() {
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
        "serve" => serve(config),
        "seal-store" => seal_store(&config),
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
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
    let options = match tower_mcp_auth::proxy::stdio::BridgeOptions::parse(args) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("mcp-auth-proxy stdio: {error}\n{USAGE}");
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
    let result = runtime.block_on(tower_mcp_auth::proxy::stdio::run(options));
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
fn metrics_recorder() -> Option<tower_mcp_auth::proxy::PrometheusHandle> {
    let handle = tower_mcp_auth::proxy::PrometheusRecorder::new().install();
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
