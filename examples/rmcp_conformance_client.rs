//! The conformance client of `examples/conformance_client.rs` with rmcp doing the MCP
//! side: rmcp's Streamable HTTP transport (`tower_mcp_auth::rmcp::StackClient`) on the
//! same layer stack, for the official MCP conformance suite's client scenarios.
//! Initialize, list the tools, call each one; answer `elicitation/create` with the
//! schema's defaults; SSE resumption is rmcp's, over this crate's `get_stream`.
//! Authorization is entirely the layers' job, as in the hand-written client.
//!
//! `CLIENT=rmcp scripts/conformance.sh` runs every scenario with it, strictly, one at a time.

// The hand-written client's stack builders and context (its own `main` and MCP code
// go unused here).
#[allow(dead_code)]
#[path = "conformance_client.rs"]
mod hand_written;

use rmcp::ServiceExt as _;
use rmcp::handler::client::ClientHandler;
use rmcp::model::{
    CallToolRequestParams, ClientConfig, ElicitRequestParams, ElicitResult, ElicitationAction,
};
use rmcp::service::{RequestContext, RoleClient};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tower::BoxError;
use tower_mcp_auth::UserAssertion;
use tower_mcp_auth::rmcp::{StackClient, find_error};

use hand_written::{
    ConformanceContext, OVERALL_TIMEOUT, arguments_for, client_stack, cross_app_stack,
    schema_defaults,
};

/// Accepts every form elicitation with the requested schema's defaults.
#[derive(Clone)]
struct Conformance {
    info: ClientConfig,
}

impl ClientHandler for Conformance {
    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, rmcp::ErrorData> {
        match request {
            ElicitRequestParams::FormElicitationParams {
                requested_schema, ..
            } => {
                let schema = serde_json::to_value(&requested_schema).unwrap_or(Value::Null);
                Ok(ElicitResult::new(ElicitationAction::Accept)
                    .with_content(schema_defaults(&schema)))
            }
            _ => Ok(ElicitResult::new(ElicitationAction::Decline)),
        }
    }

    fn get_info(&self) -> ClientConfig {
        self.info.clone()
    }
}

async fn run(server: String, context: ConformanceContext) -> Result<(), BoxError> {
    let (service, assertion) = match (&context.idp_id_token, &context.idp_token_endpoint) {
        (Some(id_token), Some(idp)) => (
            cross_app_stack(&server, &context, idp).await?,
            Some(UserAssertion::new(id_token.as_str())),
        ),
        _ => (client_stack(&server, &context).await?, None),
    };
    let mut client = StackClient::new(service);
    if let Some(assertion) = assertion {
        client = client.with_assertion(assertion);
    }
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(server),
    );
    let info: ClientConfig = serde_json::from_value(json!({
        "protocolVersion": "2025-11-25",
        "capabilities": {"elicitation": {"form": {}}},
        "clientInfo": {"name": "tower-mcp-auth-rmcp-conformance", "version": env!("CARGO_PKG_VERSION")},
    }))?;
    let peer = Conformance { info }
        .serve(transport)
        .await
        .map_err(|error| match find_error(&error) {
            Some(found) => format!("{error} ({found})"),
            None => error.to_string(),
        })?;
    eprintln!(
        "initialized: {:?}",
        peer.peer_info().map(|i| i.server_info.clone())
    );
    let tools = peer.list_all_tools().await?;
    for tool in tools {
        let schema = serde_json::to_value(&*tool.input_schema)?;
        let arguments = match arguments_for(&schema) {
            Value::Object(map) => map,
            _ => Default::default(),
        };
        let result = peer
            .call_tool(CallToolRequestParams::new(tool.name.clone()).with_arguments(arguments))
            .await?;
        eprintln!("tools/call {}: {:?}", tool.name, result.content);
    }
    peer.cancel().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "tower_mcp_auth=debug,rmcp=info".into()),
        )
        .init();
    let Some(server) = std::env::args().nth(1) else {
        eprintln!("usage: rmcp_conformance_client <server-url>");
        return std::process::ExitCode::from(2);
    };
    let context = match std::env::var("MCP_CONFORMANCE_CONTEXT") {
        Ok(json) => match serde_json::from_str(&json) {
            Ok(context) => context,
            Err(error) => {
                eprintln!("unreadable MCP_CONFORMANCE_CONTEXT: {error}");
                return std::process::ExitCode::from(2);
            }
        },
        Err(_) => ConformanceContext::default(),
    };
    match tokio::time::timeout(OVERALL_TIMEOUT, run(server, context)).await {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(error)) => {
            eprintln!("failed: {error}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("gave up after {OVERALL_TIMEOUT:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
