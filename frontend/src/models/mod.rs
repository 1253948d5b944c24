//! Models used across Kiln's tests and benchmarks.

pub mod gpt2;
pub mod mlp;

pub use gpt2::{causal_attention, AttentionCore, AttentionSpelling, Block, CausalSelfAttention, Gpt2, Gpt2Config, Gpt2Mlp};
pub use mlp::{Mlp, MlpConfig};
