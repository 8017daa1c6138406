//! The HTTP front end on tiny_http_fork (placeholder; being written).
