//! The OAuth side of MCP authorization: discovery of the authorization server, client
//! registration, the authorization-code flow with PKCE and its callback, and the
//! [`Authorizer`] that runs them for the layers. Knows nothing of Tower.

pub(crate) mod authorize;
pub(crate) mod callback;
pub(crate) mod discovery;
pub(crate) mod exchange;
pub(crate) mod flow;
pub(crate) mod grants;
pub(crate) mod registration;
pub(crate) mod scopes;

pub use crate::challenge::{BearerChallenge, Challenge};
pub use crate::http_client::{
    AuthHttpClient, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT, HttpError,
};
pub use authorize::{AuthorizationCause, Authorizer, AuthorizerBuilder};
pub use callback::{AuthorizationCompleter, CallbackError, CallbackParams};
pub use discovery::{
    AuthorizationServerMetadata, Discovery, DiscoveryError, MAX_METADATA_BYTES,
    ProtectedResourceMetadata, authorization_server_metadata_urls,
    protected_resource_metadata_urls,
};
pub use flow::{AuthorizationRequest, FlowHandle, FlowOutcome, FlowStatus, FlowStore, PendingFlow};
pub use registration::{
    ClientConfig, ClientRegistration, PreRegisteredClient, Registrar, RegistrationError,
    RegistrationSource,
};
