//! shoal-api (placeholder, filled in below)
