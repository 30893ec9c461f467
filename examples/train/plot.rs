//! PNG plots of a metrics log: train loss per step with the eval loss per epoch, the loss
//! scale on a log axis with skipped steps marked, and throughput.

use hemi::metrics::Record;
use hemi::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

/// TrueType fonts tried for the labels (plotters draws text through ab_glyph).
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/opentype/noto/NotoSans-Regular.ttf",
];

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        path: path.display().to_string(),
        msg: format!("plot: {e}"),
    }
}

/// Registers the first font found as plotters' "sans-serif" (once per process).
fn font(path: &Path) -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        FONTS.iter().any(|f| match std::fs::read(f) {
            Ok(bytes) => {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            }
            Err(_) => false,
        })
    });
    if ok {
        Ok(())
    } else {
        Err(err(path, format!("no TrueType font for the labels (looked for {FONTS:?}; Debian: apt-get install fonts-dejavu-core)")))
    }
}

/// `(lo, hi)` of the values, widened when flat.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        (lo - 0.5 * lo.abs().max(1.0), hi + 0.5 * hi.abs().max(1.0))
    } else {
        (lo, hi)
    }
}

/// A panel's chart builder: caption, margins and label areas shared by the three panels.
fn chart<'a, 'b>(
    area: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    caption: &str,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut b = ChartBuilder::on(area);
    b.caption(caption, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64);
    b
}

/// Draws the three panels of `records` into the PNG `path` (1200 × 1200).
pub fn plot(records: &[Record], path: &Path) -> Result<()> {
    font(path)?;
    let e = |x| err(path, x);
    let mut train = Vec::new(); // (step, loss, scale, skipped, images/s)
    let mut eval = Vec::new(); // (step, loss, accuracy)
    for r in records {
        match *r {
            Record::Train {
                step,
                loss,
                loss_scale,
                skipped,
                images_per_s,
                ..
            } => train.push((step as f64, loss, loss_scale, skipped, images_per_s)),
            Record::Eval {
                step,
                loss,
                accuracy,
                ..
            } => eval.push((step as f64, loss, accuracy)),
        }
    }
    let steps = train.last().map_or(1.0, |t| t.0.max(1.0));
    let root = BitMapBackend::new(path, (1200, 1200)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let panels = root.split_evenly((3, 1));

    // Loss: train per step, eval per epoch.
    let (_, hi) = range(train.iter().map(|t| t.1).chain(eval.iter().map(|v| v.1)));
    let mut c = chart(&panels[0], "loss")
        .build_cartesian_2d(0f64..steps, 0f64..hi * 1.05)
        .map_err(e)?;
    c.configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(e)?;
    let finite = |v: f64| v.is_finite();
    c.draw_series(LineSeries::new(
        train.iter().filter(|t| finite(t.1)).map(|t| (t.0, t.1)),
        &BLUE,
    ))
    .map_err(e)?
    .label("train (per step)")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    c.draw_series(LineSeries::new(
        eval.iter().map(|v| (v.0, v.1)),
        RED.stroke_width(2),
    ))
    .map_err(e)?
    .label("eval (per epoch)")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    c.draw_series(
        eval.iter()
            .map(|v| Circle::new((v.0, v.1), 4, RED.filled())),
    )
    .map_err(e)?;
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;

    // Loss scale on a log axis (log2, the scaler's own steps; ticks read 2^k), skipped
    // steps marked.
    let scales: Vec<(f64, f64, bool)> = train
        .iter()
        .filter_map(|t| t.2.filter(|s| *s > 0.0).map(|s| (t.0, s.log2(), t.3)))
        .collect();
    if scales.is_empty() {
        panels[1]
            .titled(
                "loss scale: none (no GradScaler: fp32 or bf16)",
                ("sans-serif", 22),
            )
            .map_err(e)?;
    } else {
        let (lo, hi) = range(scales.iter().map(|s| s.1));
        let (bottom, top) = ((lo - 1.0).floor(), (hi + 1.0).ceil());
        let mut c = chart(&panels[1], "loss scale (log axis; skipped steps marked x)")
            .build_cartesian_2d(0f64..steps, bottom..top)
            .map_err(e)?;
        // One tick per power of two (labels only on whole exponents).
        let label = |v: &f64| {
            if (v - v.round()).abs() < 1e-6 {
                format!("2^{}", v.round())
            } else {
                String::new()
            }
        };
        c.configure_mesh()
            .x_desc("step")
            .y_desc("scale")
            .y_labels((top - bottom) as usize + 1)
            .y_label_formatter(&label)
            .draw()
            .map_err(e)?;
        c.draw_series(LineSeries::new(scales.iter().map(|s| (s.0, s.1)), &BLUE))
            .map_err(e)?;
        c.draw_series(
            scales
                .iter()
                .filter(|s| s.2)
                .map(|s| Cross::new((s.0, s.1), 6, RED.stroke_width(2))),
        )
        .map_err(e)?;
    }

    // Throughput.
    let (_, hi) = range(train.iter().map(|t| t.4));
    let mut c = chart(&panels[2], "throughput")
        .build_cartesian_2d(0f64..steps, 0f64..hi * 1.05)
        .map_err(e)?;
    c.configure_mesh()
        .x_desc("step")
        .y_desc("images/s")
        .draw()
        .map_err(e)?;
    c.draw_series(LineSeries::new(
        train.iter().filter(|t| finite(t.4)).map(|t| (t.0, t.4)),
        &GREEN,
    ))
    .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
