//! TLS for outgoing HTTPS (provider APIs, the OTLP exporter): rustls with the ring
//! crypto provider, installed once per process. reqwest is built without a provider of
//! its own (no C toolchain for aws-lc), so this must run before any client is built:
//! configuration loading, telemetry and the dispatchers all call it.

/// Installs ring as the process's rustls provider; later calls do nothing.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Refused only when a provider is already installed, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
