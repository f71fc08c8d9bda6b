//! shoal-net (placeholder, filled in below)
