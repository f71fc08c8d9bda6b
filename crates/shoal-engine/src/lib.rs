//! shoal-engine (placeholder, filled in below)
