//! Row reductions: softmax, log_softmax, layer_norm and rms_norm each become one loop kernel
//! that reads its input once and writes its output once, in f32 and bf16, on odd shapes.
#![allow(clippy::result_large_err)] // frontend::Result

mod common;

use frontend::{module_fn, trace, InputSpec, Tensor};
use ir::{DType, KernelKind};
use passes::DeviceProfile;

type Build = fn(&[Tensor]) -> frontend::Result<Tensor>;

fn one_kernel(name: &str, dtype: DType, extra: &[(&str, usize)], f: Build) {
    let mut specs = vec![InputSpec::new("x", dtype, [3, 7, 49])];
    specs.extend(extra.iter().map(|(n, d)| InputSpec::new(*n, dtype, [*d])));
    let m = module_fn(name, move |_v, xs| Ok(vec![f(xs)?]));
    let g = trace(&m, &specs).unwrap().graph;
    let opt = passes::optimize(&g, &DeviceProfile::h200()).unwrap();
    let kg = &opt.kernels;
    assert_eq!(kg.kernels.len(), 1, "{name} {dtype}: {kg}");
    let k = &kg.kernels[0];
    assert_eq!(k.kind, KernelKind::Reduction, "{name}");
    assert_eq!(k.inputs.len(), specs.len(), "{name}: each input read once");
    assert_eq!(k.outputs.len(), 1, "{name}: one write");
    common::assert_kernels_agree(name, &g, kg, 31);
}

#[test]
fn softmax_is_one_kernel() {
    for dt in [DType::F32, DType::BF16] {
        one_kernel("softmax", dt, &[], |x| x[0].softmax(-1));
        one_kernel("log_softmax", dt, &[], |x| x[0].log_softmax(-1));
    }
}

#[test]
fn layer_norm_is_one_kernel() {
    for dt in [DType::F32, DType::BF16] {
        one_kernel("layer_norm", dt, &[("w", 49), ("b", 49)], |x| x[0].layer_norm(&[49], Some(&x[1]), Some(&x[2]), 1e-5));
    }
}

#[test]
fn rms_norm_is_one_kernel() {
    for dt in [DType::F32, DType::BF16] {
        one_kernel("rms_norm", dt, &[("w", 49)], |x| x[0].rms_norm(&[49], Some(&x[1]), Some(1e-6)));
    }
}
