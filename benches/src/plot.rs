//! A roofline chart of a suite run: each workload at (flops per byte, achieved flop/s) under
//! the measured copy-bandwidth and matmul ceilings. SVG needs no font; PNG uses DejaVu Sans.

use crate::{BenchError, Ceilings, WorkloadResult};
use plotters::prelude::*;
use std::path::Path;

const FONT_PATHS: &[&str] = &["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];

fn register_font() -> Result<(), BenchError> {
    let bytes = FONT_PATHS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| BenchError::Plot("the plot needs DejaVu Sans (Debian package fonts-dejavu-core)".into()))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into_boxed_slice()))
        .map_err(|_| BenchError::Plot("could not load DejaVu Sans".into()))
}

pub fn roofline(path: &Path, results: &[WorkloadResult], c: &Ceilings) -> Result<(), BenchError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "svg" => {
            // Text is laid out with the font's metrics even in SVG.
            register_font()?;
            draw(SVGBackend::new(path, (960, 640)).into_drawing_area(), results, c)
        }
        "png" => {
            register_font()?;
            draw(BitMapBackend::new(path, (960, 640)).into_drawing_area(), results, c)
        }
        _ => Err(BenchError::Plot(format!("{}: the plot path must end in .svg or .png", path.display()))),
    }
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, plotters::coord::Shift>, results: &[WorkloadResult], c: &Ceilings) -> Result<(), BenchError>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| BenchError::Plot(e.to_string());
    root.fill(&WHITE).map_err(err)?;
    let peak = c.matmul_flops_per_s;
    let bw = c.copy_bytes_per_s;
    let (x0, x1) = (0.05f64, 1e4f64);
    let y1 = peak * 3.0;
    let y0 = (bw * x0 / 3.0).min(results.iter().map(|r| r.flops / r.compiled_s).fold(f64::INFINITY, f64::min) / 3.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Kiln roofline on {}", c.device), ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity (flop / byte)")
        .y_desc("achieved flop/s")
        .y_label_formatter(&|v| format!("{:.0e}", v))
        .draw()
        .map_err(err)?;
    let roof: Vec<(f64, f64)> = (0..=200).map(|i| x0 * (x1 / x0).powf(i as f64 / 200.0)).map(|x| (x, (bw * x).min(peak))).collect();
    chart
        .draw_series(LineSeries::new(roof, BLACK.stroke_width(2)))
        .map_err(err)?
        .label(format!("ceiling: {:.0} GB/s, {:.1} TFLOP/s", bw / 1e9, peak / 1e12))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    for (i, r) in results.iter().enumerate() {
        let ai = (r.flops / r.bytes.max(1.0)).clamp(x0, x1);
        let y = (r.flops / r.compiled_s).clamp(y0, y1);
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(std::iter::once(Circle::new((ai, y), 6, color.filled())))
            .map_err(err)?
            .label(format!("{} ({:.3} ms)", r.name, r.compiled_s * 1e3))
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).position(SeriesLabelPosition::LowerRight).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}
