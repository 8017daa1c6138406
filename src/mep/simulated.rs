//! Simulated driver (placeholder; being written).
