//! Binding a tenant to the server: discovery (with the 2025-03-26 fallback), the
//! allowed issuers, and the tenant's client registration.

use super::*;

impl Authorizer {
    /// Discovery and the tenant's client registration; sets the tenant's binding.
    pub(super) async fn bind(
        &self,
        tenant: &str,
        cause: &AuthorizationCause,
    ) -> Result<Bound, Error> {
        let inner = &*self.inner;
        let challenge = cause.challenge.as_ref();
        let (resource_metadata, metadata) = self.discover(challenge).await?;
        let resource = resource_metadata
            .as_ref()
            .map_or_else(|| inner.server.to_string(), |m| m.resource.clone());
        let authorization_endpoint =
            endpoint(&metadata, metadata.authorization_endpoint.as_deref())?;
        let token_endpoint = endpoint(&metadata, metadata.token_endpoint.as_deref())?;
        inner
            .policy
            .check(&authorization_endpoint)
            .and_then(|()| inner.policy.check(&token_endpoint))
            .map_err(|refused| Error::Discovery(DiscoveryError::Refused(refused)))?;

        let mut config = inner.client.clone();
        config.resource = resource;
        let mut client = inner
            .registrar
            .client_for(tenant, &metadata, &config)
            .await
            .map_err(Error::Registration)?;
        if cause.client_rejected && inner.registrar.rejected(tenant, &client).await {
            tracing::info!(tenant, issuer = %client.issuer, "client rejected; registering anew");
            client = inner
                .registrar
                .client_for(tenant, &metadata, &config)
                .await
                .map_err(Error::Registration)?;
        }
        let binding = client.binding().map_err(|error| {
            Error::Discovery(DiscoveryError::NotFound {
                tried: vec![format!("usable resource and token endpoint ({error})")],
            })
        })?;
        inner
            .bindings
            .set(tenant, binding.clone())
            .map_err(|full| Error::Store(crate::fault::StoreError::new(full)))?;

        Ok(Bound {
            resource_metadata,
            metadata,
            binding,
            authorization_endpoint,
        })
    }

    /// Resource metadata (if the server publishes it) and authorization server metadata.
    pub(super) async fn discover(
        &self,
        challenge: Option<&BearerChallenge>,
    ) -> Result<
        (
            Option<Arc<ProtectedResourceMetadata>>,
            Arc<AuthorizationServerMetadata>,
        ),
        Error,
    > {
        let inner = &*self.inner;
        let hinted = challenge.is_some_and(|c| c.resource_metadata.is_some());
        match inner
            .discovery
            .protected_resource(&inner.server, challenge)
            .await
        {
            Ok(resource) => {
                let named = &resource.authorization_servers[0];
                self.check_allowed(named)?;
                let issuer: Url = named.parse().map_err(|_| {
                    Error::Discovery(DiscoveryError::NotFound {
                        tried: vec![named.clone()],
                    })
                })?;
                let metadata = inner
                    .discovery
                    .authorization_server(&issuer)
                    .await
                    .map_err(Error::Discovery)?;
                if metadata.supports_s256() != Some(true) {
                    return Err(Error::Discovery(DiscoveryError::S256Unsupported {
                        issuer: metadata.issuer.clone(),
                    }));
                }
                Ok((Some(resource), metadata))
            }
            // A server that points at metadata it does not serve is broken, not legacy.
            Err(DiscoveryError::NotFound { .. }) if !hinted => {
                tracing::debug!(server = %inner.server, "no resource metadata; 2025-03-26 discovery");
                let metadata = inner
                    .discovery
                    .legacy_authorization_server(&inner.server)
                    .await
                    .map_err(Error::Discovery)?;
                self.check_allowed(&metadata.issuer)?;
                Ok((None, metadata))
            }
            Err(error) => Err(Error::Discovery(error)),
        }
    }
}

impl Authorizer {
    fn check_allowed(&self, issuer: &str) -> Result<(), Error> {
        match &self.inner.allowed_issuers {
            Some(allowed) if !allowed.iter().any(|a| a == issuer) => Err(Error::Discovery(
                DiscoveryError::AuthorizationServerNotAllowed {
                    issuer: issuer.to_owned(),
                },
            )),
            _ => Ok(()),
        }
    }
}

pub(super) fn endpoint(
    metadata: &AuthorizationServerMetadata,
    value: Option<&str>,
) -> Result<Url, Error> {
    value.and_then(|v| v.parse().ok()).ok_or_else(|| {
        Error::Discovery(DiscoveryError::NotFound {
            tried: vec![format!("endpoints in the metadata of {}", metadata.issuer)],
        })
    })
}
