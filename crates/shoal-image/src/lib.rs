//! shoal-image (placeholder, filled in below)
