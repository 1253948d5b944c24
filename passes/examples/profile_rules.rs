//! Saturation time per rule family on GPT-2 of a given depth (scaling check).
use frontend::models::gpt2::{Gpt2, Gpt2Config};
fn main() {
    let layers: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(12);
    let cfg = Gpt2Config { n_layer: layers, ..Gpt2Config::small() };
    let g = frontend::trace(&Gpt2::new(cfg), &[cfg.input_spec(1, 64)]).unwrap().graph;
    for fam in ["algebra", "movement", "attention"] {
        let rules = passes::rules::family(fam);
        let t = std::time::Instant::now();
        let (_, r) = passes::simplify_with(&g, &passes::DeviceProfile::h200(), &rules, &passes::Limits::default()).unwrap();
        println!("{fam}: {:?} ({} iterations, saturate {:?})", t.elapsed(), r.iterations, r.time_saturate);
    }
}
