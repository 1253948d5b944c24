//! Device memory stays flat (issue #8): 10,000 calls of a compiled GPT-2 (tiny) replayed as a
//! CUDA graph, half of them with new output addresses (rebinding the graph in place), and 20
//! executors of the same artifact made and dropped. Free device memory (`cuMemGetInfo`) is
//! read after a warm-up and at the end. Without the `cuda` feature or a GPU it skips.

#[cfg(feature = "cuda")]
#[test]
fn device_memory_stays_flat() -> Result<(), Box<dyn std::error::Error>> {
    use codegen::gpu::{compile_graph, GpuOptions, SmVersion};
    use frontend::models::{Gpt2, Gpt2Config};
    use runtime::cuda::{driver_present, CudaError, CudaExecutor};

    if !driver_present() {
        println!("skipping device_memory_stays_flat: no CUDA driver found");
        return Ok(());
    }
    let cfg = Gpt2Config::tiny();
    let traced = frontend::trace(&Gpt2::new(cfg.clone()), &[cfg.input_spec(2, 9)])?;
    let art = compile_graph(&traced.graph, &GpuOptions { sm: SmVersion::Sm90 })?;
    let mut ex = match CudaExecutor::new(art.clone(), 0) {
        Err(CudaError::NoDevice { message, .. }) => {
            println!("skipping device_memory_stays_flat: no CUDA device ({message})");
            return Ok(());
        }
        r => r?,
    };
    let bytes = |b: u32| art.buffers[b as usize].shape.iter().product::<usize>() * art.buffers[b as usize].dtype.size_bytes();
    let inputs = traced.random_inputs(5);
    let ins = art.inputs.iter().zip(&inputs).map(|(&b, v)| {
        let t = ex.alloc(bytes(b))?;
        let raw: Vec<u8> = v.data.iter().flat_map(|&x| match v.dtype {
            ir::DType::F32 => (x as f32).to_le_bytes().to_vec(),
            ir::DType::I64 => (x as i64).to_le_bytes().to_vec(),
            ir::DType::I32 => (x as i32).to_le_bytes().to_vec(),
            d => panic!("GPT-2 tiny has no {d} input"),
        }).collect();
        t.upload(&raw)?;
        Ok(t)
    }).collect::<Result<Vec<_>, CudaError>>()?;
    let outs: Vec<Vec<_>> = (0..2)
        .map(|_| art.outputs.iter().map(|&b| ex.alloc(bytes(b))).collect::<Result<Vec<_>, CudaError>>())
        .collect::<Result<_, _>>()?;
    let ip: Vec<u64> = ins.iter().map(|t| t.ptr).collect();
    let op: Vec<Vec<u64>> = outs.iter().map(|o| o.iter().map(|t| t.ptr).collect()).collect();
    let mut free_after_warmup = 0;
    let calls = 10_000;
    for i in 0..calls {
        // SAFETY: live allocations of the artifact's input and output sizes.
        unsafe { ex.run_graph(&ip, &op[(i / 2) % 2], None)? };
        if i == 200 {
            ex.synchronize()?;
            free_after_warmup = ex.device_memory()?.0;
        }
    }
    ex.synchronize()?;
    let free_end = ex.device_memory()?.0;
    let grew = free_after_warmup.saturating_sub(free_end);
    println!(
        "device memory over {calls} graph calls ({} rebinds, {} captures): {} bytes less free after warm-up",
        ex.updates, ex.captures, grew
    );
    assert!(grew <= 2 << 20, "device memory grew by {grew} bytes over {calls} calls");
    assert_eq!(ex.captures, 1, "new addresses rebind the graph, never rebuild it");

    // Executors of the same artifact, made and dropped.
    drop(ex);
    drop(outs);
    drop(ins);
    let probe = CudaExecutor::new(art.clone(), 0)?;
    let before = probe.device_memory()?.0;
    for _ in 0..20 {
        let e = CudaExecutor::new(art.clone(), 0)?;
        drop(e);
    }
    let after = probe.device_memory()?.0;
    let grew = before.saturating_sub(after);
    println!("device memory over 20 executors made and dropped: {grew} bytes less free");
    assert!(grew <= 2 << 20, "device memory grew by {grew} bytes over 20 executors");
    Ok(())
}
