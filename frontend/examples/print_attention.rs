//! Prints the traced attention core in one spelling: `cargo run -p kiln-frontend --example print_attention [spelling-index]`.
use frontend::models::{AttentionCore, AttentionSpelling};
use frontend::trace;
use ir::DType;

fn main() {
    let i: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let spelling = AttentionSpelling::ALL[i % AttentionSpelling::ALL.len()];
    let core = AttentionCore { spelling, block_size: 8, dtype: DType::BF16 };
    match trace(&core, &core.input_specs(1, 2, 5, 4)) {
        Ok(t) => println!("# {spelling:?}\n{}", t.graph),
        Err(e) => eprintln!("error: {e}"),
    }
}
