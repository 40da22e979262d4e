//! Test harnesses that start real things.
