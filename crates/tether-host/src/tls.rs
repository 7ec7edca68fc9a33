//! The process-wide rustls crypto provider. reqwest is built without a provider of its own, so
//! every HTTP client tether builds (model providers, probes, checks, notifiers) calls
//! [`ensure_provider`] first.

/// Installs `ring` as the process-wide rustls crypto provider unless one is installed already.
pub fn ensure_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
