//! On-disk compile cache (filled in below).
