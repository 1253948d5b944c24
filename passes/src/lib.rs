//! The optimizer (issue #3).
