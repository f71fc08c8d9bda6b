//! shoal-testkit (placeholder, filled in below)
