//! [`RefreshCoordinatorBuilder`]: the store, the HTTP client and the configuration of
//! a [`RefreshCoordinator`].

use super::*;

/// Builds a [`RefreshCoordinator`].
pub struct RefreshCoordinatorBuilder {
    pub(super) store: Arc<dyn CredentialStore>,
    pub(super) http: Option<AuthHttpClient>,
    pub(super) config: RefreshConfig,
}

impl RefreshCoordinatorBuilder {
    /// Uses `http` for token requests (default: [`AuthHttpClient::new`]).
    pub fn http_client(mut self, http: AuthHttpClient) -> Self {
        self.http = Some(http);
        self
    }

    /// Uses `config` (default: [`RefreshConfig::default`]).
    pub fn config(mut self, config: RefreshConfig) -> Self {
        self.config = config;
        self
    }

    /// Builds the coordinator.
    pub fn build(self) -> RefreshCoordinator {
        let config = self.config;
        let cooldowns = moka::sync::Cache::builder()
            .max_capacity(1_000_000)
            .time_to_live(crate::limits::clamp(config.max_cooldown))
            .build();
        let hot = self.store.is_shared().then(|| {
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                // What other processes wrote (a new login, a step-up) is seen within a
                // second: one store read per key and second at most on the hot path.
                .time_to_live(SHARED_CACHE_TTL)
                .build()
        });
        RefreshCoordinator {
            inner: Arc::new(Inner {
                serve_rule: config.serve_rule(),
                store: self.store,
                http: self.http.unwrap_or_default(),
                config,
                flights: Arc::new(SingleFlight::new()),
                cooldowns,
                hot,
                counters: Counters::default(),
            }),
        }
    }
}

impl fmt::Debug for RefreshCoordinatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshCoordinatorBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
