//! Code generation (issues #4, #5).
