//! The tracing frontend (see the crate README / issue #2).
