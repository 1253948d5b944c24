//! Kiln facade (filled in as stages land).
pub use ir;
