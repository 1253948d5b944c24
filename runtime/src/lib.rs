//! The runtime (issues #4, #5).
