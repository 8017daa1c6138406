//! LL-MEC driver (placeholder; being written).
