//! shoal-runtime (placeholder, filled in below)
