//! Outbound HTTP (placeholder; being written).
