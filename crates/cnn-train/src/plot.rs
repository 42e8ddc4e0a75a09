//! Pictures of a run: `curves.png` (loss, accuracy, learning rate by epoch)
//! and `confusion.png`. Text is drawn with an embedded DejaVu Sans, so the
//! plots come out the same on a machine without any system font.

use std::path::Path;
use std::sync::Once;

use cnn_tensor::{write_atomic, Error, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::{EpochRecord, History};

const FONT: &str = "sans-serif";
const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(255, 127, 14);
const LR: RGBColor = RGBColor(44, 160, 44);

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans is a valid font; a failure here would only mean blank text.
        let _ = register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn draw_err<E: std::fmt::Debug>(path: &Path) -> impl Fn(E) -> Error + '_ {
    move |e| Error::format(format!("draw {}", path.display()), format!("{e:?}"))
}

/// The charts here: f64 by f64 on a bitmap.
type Chart<'a, 'b> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Draws the legend of `chart`'s labelled series at `at`, on a light box.
fn draw_legend<'b>(
    chart: &mut Chart<'b, 'b>,
    at: SeriesLabelPosition,
    font: u32,
    path: &Path,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT, font))
        .draw()
        .map_err(draw_err(path))
}

/// Renders `draw` onto a white `width × height` canvas and writes it as a PNG, atomically.
fn render_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> Result<()>,
) -> Result<()> {
    register_fonts();
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err(path))?;
        draw(&root)?;
        root.present().map_err(draw_err(path))?;
    }
    // Deflate level 1 on rows filtered by the row above: charts are mostly
    // flat runs, which this keeps small. Measured on the digits main job's
    // `curves.png` (1500×460, rewritten every epoch): 5 ms an epoch and 94 KB,
    // against 13 ms and 65 KB with the default level and adaptive filters
    // (`--profile`: "metrics and curves" 5% → 2% of the run).
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new_with_quality(
            &mut png,
            image::codecs::png::CompressionType::Level(1),
            image::codecs::png::FilterType::NoFilter,
        ),
        &rgb,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::format(format!("encode {}", path.display()), e.to_string()))?;
    write_atomic(path, &png)
}

/// A padded range around `values` (at least a small span, so one value still plots).
fn span(values: impl Iterator<Item = f64>, floor_at_zero: bool) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(hi.abs() * 0.05).max(1e-6);
    let lo = if floor_at_zero { (lo - pad).max(0.0) } else { lo - pad };
    (lo, hi + pad)
}

/// A tick label with as many decimals as the axis span needs (`0.05`, `97.5`, `2e-4`).
fn tick_label(y: f64, span: f64) -> String {
    if y != 0.0 && y.abs() < 1e-3 {
        return format!("{y:.0e}");
    }
    let decimals = (2.0 - span.max(1e-12).log10().floor()).clamp(0.0, 4.0) as usize;
    format!("{y:.decimals$}")
}

type Series = (String, RGBColor, Vec<(f64, f64)>);

/// One chart of [`plot_curves`]: some series by epoch.
struct Panel<'a> {
    title: &'a str,
    y_desc: &'a str,
    series: &'a [Series],
    floor_at_zero: bool,
    legend_at: SeriesLabelPosition,
}

/// Draws a titled chart of `p`'s series over `epochs`, with a legend.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    path: &Path,
    epochs: usize,
    p: Panel<'_>,
) -> Result<()> {
    let Panel { title, y_desc, series, floor_at_zero, legend_at } = p;
    let err = draw_err(path);
    let (y0, y1) = span(series.iter().flat_map(|s| s.2.iter().map(|p| p.1)), floor_at_zero);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22).into_font().style(FontStyle::Bold))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0.5f64..(epochs.max(1) as f64 + 0.5), y0..y1)
        .map_err(&err)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .x_labels(epochs.clamp(2, 10))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| tick_label(*y, y1 - y0))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(&err)?;
    for (name, color, points) in series.iter().filter(|s| !s.2.is_empty()) {
        let color = *color;
        chart
            .draw_series(
                LineSeries::new(points.iter().copied(), color.stroke_width(2)).point_size(3),
            )
            .map_err(&err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    draw_legend(&mut chart, legend_at, 15, path)
}

/// Draws `curves.png`: loss (train, validation), accuracy in % (train,
/// validation) and the learning rate, each by epoch, with titles, axis labels
/// and legends.
///
/// # Errors
/// [`Error::Io`] when the file cannot be written; [`Error::Format`] if drawing fails.
pub fn plot_curves(history: &History, path: &Path) -> Result<()> {
    let pts = |f: &dyn Fn(&EpochRecord) -> Option<f64>| points(history, f);
    let loss = [
        ("train".into(), TRAIN, pts(&|r| Some(r.train_loss))),
        ("validation".into(), VAL, pts(&|r| r.val_loss)),
    ];
    let acc = [
        ("train".into(), TRAIN, pts(&|r| Some(100.0 * r.train_accuracy))),
        ("validation".into(), VAL, pts(&|r| r.val_accuracy.map(|a| 100.0 * a))),
    ];
    let lr = [("lr (end of epoch)".into(), LR, pts(&|r| Some(r.lr)))];
    let panels = [
        Panel::falling("Loss", "cross-entropy", &loss),
        Panel::accuracy("Accuracy", &acc),
        Panel::falling("Learning rate", "lr", &lr),
    ];
    draw_row(path, history.epochs.len(), panels)
}

/// `(epoch, f(record))` for every record of `history` where `f` has a value.
fn points(history: &History, f: &dyn Fn(&EpochRecord) -> Option<f64>) -> Vec<(f64, f64)> {
    history.epochs.iter().filter_map(|r| f(r).map(|v| (r.epoch as f64, v))).collect()
}

impl<'a> Panel<'a> {
    /// A chart of values that fall toward zero (losses, the lr): the axis
    /// floored at zero, the legend top right.
    fn falling(title: &'a str, y_desc: &'a str, series: &'a [Series]) -> Self {
        let legend_at = SeriesLabelPosition::UpperRight;
        Panel { title, y_desc, series, floor_at_zero: true, legend_at }
    }

    /// A chart of top-1 accuracies in %, the legend bottom right.
    fn accuracy(title: &'a str, series: &'a [Series]) -> Self {
        let (y_desc, legend_at) = ("top-1 accuracy (%)", SeriesLabelPosition::LowerRight);
        Panel { title, y_desc, series, floor_at_zero: false, legend_at }
    }
}

/// Three charts side by side over `epochs`, written as one 1500×460 PNG.
fn draw_row(path: &Path, epochs: usize, panels: [Panel<'_>; 3]) -> Result<()> {
    render_png(path, (1500, 460), |root| {
        for (area, p) in root.split_evenly((1, 3)).iter().zip(panels) {
            panel(area, path, epochs, p)?;
        }
        Ok(())
    })
}

/// Draws several runs side by side (f32 against bf16, two recipes): the
/// training loss, the validation loss and the validation accuracy by epoch,
/// one colour per run, labelled by `runs`' names.
///
/// # Errors
/// As [`plot_curves`]; [`Error::Config`] for no runs or more than ten.
pub fn plot_runs(runs: &[(String, History)], path: &Path) -> Result<()> {
    if runs.is_empty() || runs.len() > PALETTE.len() {
        return Err(Error::config(
            "plot_runs",
            format!("{} runs: expected 1 to {}", runs.len(), PALETTE.len()),
        ));
    }
    let epochs = runs.iter().map(|(_, h)| h.epochs.len()).max().unwrap_or(0);
    let series = |f: &dyn Fn(&EpochRecord) -> Option<f64>| -> Vec<Series> {
        let each = runs.iter().zip(PALETTE);
        each.map(|((name, h), color)| (name.clone(), color, points(h, f))).collect()
    };
    let train_loss = series(&|r| Some(r.train_loss));
    let val_loss = series(&|r| r.val_loss);
    let val_acc = series(&|r| r.val_accuracy.map(|a| 100.0 * a));
    let panels = [
        Panel::falling("Training loss", "cross-entropy", &train_loss),
        Panel::falling("Validation loss", "cross-entropy", &val_loss),
        Panel::accuracy("Validation accuracy", &val_acc),
    ];
    draw_row(path, epochs, panels)
}

/// Draws `confusion.png`: true class by row, predicted class by column, each
/// cell shaded by its share of the row, with counts written in when there
/// are at most 20 classes.
///
/// # Errors
/// As [`plot_curves`]; [`Error::Config`] for an empty or non-square matrix.
pub fn plot_confusion(confusion: &[Vec<u64>], classes: &[String], path: &Path) -> Result<()> {
    let c = confusion.len();
    if c == 0 || confusion.iter().any(|r| r.len() != c) {
        return Err(Error::config("plot_confusion", "the matrix must be square and not empty"));
    }
    let side = (60 + 36 * c as u32).clamp(420, 1400);
    render_png(path, (side + 90, side + 60), |root| {
        let err = draw_err(path);
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Confusion matrix (rows: true class)",
                (FONT, 22).into_font().style(FontStyle::Bold),
            )
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..c as f64, c as f64..0f64)
            .map_err(&err)?;
        let name = |v: &f64| -> String {
            let i = v.floor() as usize;
            if (v - v.floor() - 0.5).abs() > 0.01 || i >= c {
                return String::new();
            }
            classes.get(i).cloned().unwrap_or_else(|| i.to_string()).chars().take(10).collect()
        };
        let step = c.div_ceil(20);
        let ticks: Vec<f64> = (0..c).step_by(step).map(|i| i as f64 + 0.5).collect();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted class")
            .y_desc("true class")
            .x_labels(ticks.len() * 2 + 1)
            .y_labels(ticks.len() * 2 + 1)
            .x_label_formatter(&name)
            .y_label_formatter(&name)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 16))
            .draw()
            .map_err(&err)?;
        let cells = confusion.iter().enumerate().flat_map(|(i, row)| {
            let total = row.iter().sum::<u64>().max(1) as f64;
            row.iter().enumerate().map(move |(j, &v)| {
                // Any mistake at all stays visible: non-zero cells start at a 20% tint.
                let share = if v == 0 { 0.0 } else { 0.2 + 0.8 * v as f64 / total };
                let shade = (255.0 * (1.0 - share)) as u8;
                let color = if i == j {
                    RGBColor(shade, shade.saturating_add(20), 255)
                } else {
                    RGBColor(255, shade, shade)
                };
                Rectangle::new(
                    [(j as f64, i as f64), (j as f64 + 1.0, i as f64 + 1.0)],
                    color.filled(),
                )
            })
        });
        chart.draw_series(cells).map_err(&err)?;
        if c <= 20 {
            let size = if c <= 12 { 15 } else { 11 };
            let texts = confusion.iter().enumerate().flat_map(|(i, row)| {
                let total = row.iter().sum::<u64>().max(1) as f64;
                row.iter().enumerate().filter(|(_, &v)| v > 0).map(move |(j, &v)| {
                    let color = if v as f64 / total > 0.6 { WHITE } else { BLACK };
                    Text::new(
                        v.to_string(),
                        (j as f64 + 0.5, i as f64 + 0.5),
                        (FONT, size).into_font().color(&color).pos(
                            plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Center,
                                plotters::style::text_anchor::VPos::Center,
                            ),
                        ),
                    )
                })
            });
            chart.draw_series(texts).map_err(&err)?;
        }
        Ok(())
    })
}

/// Ten distinguishable colors (matplotlib's tab10), for charts with many series.
pub(crate) const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// A chart of named lines, for the tuning report and `cnn init-stats`.
#[derive(Debug, Clone, Default)]
pub struct LineChart {
    /// The title above the chart.
    pub title: String,
    /// The x axis label.
    pub x_desc: String,
    /// The y axis label.
    pub y_desc: String,
    /// `(name, points)` per line; non-finite points are left out.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// A log₁₀ x axis.
    pub log_x: bool,
    /// A log₁₀ y axis.
    pub log_y: bool,
    /// A dashed horizontal reference line and its legend name (ln C, a threshold).
    pub reference: Option<(f64, String)>,
}

fn to_axis(v: f64, log: bool) -> Option<f64> {
    let v = if log { (v > 0.0).then(|| v.log10())? } else { v };
    v.is_finite().then_some(v)
}

fn axis_label(v: f64, log: bool, span: f64) -> String {
    if log {
        let p = 10f64.powf(v);
        if (0.01..1000.0).contains(&p) {
            // Three significant digits, without trailing zeros: 0.0631, 2.51, 100.
            let decimals = (2.0 - p.log10().floor()).max(0.0) as usize;
            let s = format!("{p:.decimals$}");
            if s.contains('.') {
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                s
            }
        } else if (v - v.round()).abs() < 1e-6 {
            format!("1e{}", v.round() as i64)
        } else {
            format!("{p:.2e}")
        }
    } else {
        tick_label(v, span)
    }
}

impl LineChart {
    /// Draws the chart into a `width × height` PNG, atomically.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written; [`Error::Format`] if drawing fails.
    pub fn write_png(&self, path: &Path, (width, height): (u32, u32)) -> Result<()> {
        let pts: Vec<(String, Vec<(f64, f64)>)> = self
            .series
            .iter()
            .map(|(n, p)| {
                let p = p
                    .iter()
                    .filter_map(|&(x, y)| Some((to_axis(x, self.log_x)?, to_axis(y, self.log_y)?)))
                    .collect();
                (n.clone(), p)
            })
            .collect();
        let reference = self
            .reference
            .as_ref()
            .and_then(|(y, name)| Some((to_axis(*y, self.log_y)?, name.clone())));
        let (x0, x1) = span(pts.iter().flat_map(|s| s.1.iter().map(|p| p.0)), false);
        let (y0, y1) = span(
            pts.iter().flat_map(|s| s.1.iter().map(|p| p.1)).chain(reference.iter().map(|r| r.0)),
            !self.log_y,
        );
        render_png(path, (width, height), |root| {
            let err = draw_err(path);
            let mut chart = ChartBuilder::on(root)
                .caption(&self.title, (FONT, 22).into_font().style(FontStyle::Bold))
                .margin(14)
                .x_label_area_size(42)
                .y_label_area_size(70)
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(&err)?;
            chart
                .configure_mesh()
                .x_desc(self.x_desc.as_str())
                .y_desc(self.y_desc.as_str())
                .x_label_formatter(&|x| axis_label(*x, self.log_x, x1 - x0))
                .y_label_formatter(&|y| axis_label(*y, self.log_y, y1 - y0))
                .label_style((FONT, 14))
                .axis_desc_style((FONT, 16))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(&err)?;
            for (i, (name, points)) in pts.iter().enumerate().filter(|(_, s)| !s.1.is_empty()) {
                let color = PALETTE[i % PALETTE.len()];
                let marker = if points.len() <= 40 { 3 } else { 0 };
                chart
                    .draw_series(
                        LineSeries::new(points.iter().copied(), color.stroke_width(2))
                            .point_size(marker),
                    )
                    .map_err(&err)?
                    .label(name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
                    });
            }
            if let Some((y, name)) = &reference {
                let dashes = (0..40).map(|i| {
                    let a = x0 + (x1 - x0) * (2 * i) as f64 / 80.0;
                    let b = x0 + (x1 - x0) * (2 * i + 1) as f64 / 80.0;
                    PathElement::new(vec![(a, *y), (b, *y)], BLACK.stroke_width(1))
                });
                chart.draw_series(dashes).map_err(&err)?.label(name.as_str()).legend(|(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(1))
                });
            }
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 14, path)
        })
    }
}

/// A scatter of `(x, y, value)` points on log₁₀ axes, each colored by its
/// value from blue (lowest) to red (highest), the best ringed: the coarse
/// search's learning rate × weight decay by validation accuracy.
///
/// # Errors
/// As [`LineChart::write_png`].
pub fn plot_scatter(
    path: &Path,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    points: &[(f64, f64, f64)],
) -> Result<()> {
    let pts: Vec<(f64, f64, f64)> = points
        .iter()
        .filter_map(|&(x, y, v)| Some((to_axis(x, true)?, to_axis(y, true)?, v)))
        .collect();
    let (x0, x1) = span(pts.iter().map(|p| p.0), false);
    let (y0, y1) = span(pts.iter().map(|p| p.1), false);
    let (v0, v1) = pts
        .iter()
        .map(|p| p.2)
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    let color = |v: f64| {
        let t = if v1 > v0 && v.is_finite() { (v - v0) / (v1 - v0) } else { 0.5 };
        RGBColor((40.0 + 200.0 * t) as u8, 60, (240.0 - 200.0 * t) as u8)
    };
    render_png(path, (760, 560), |root| {
        let err = draw_err(path);
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20).into_font().style(FontStyle::Bold))
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(70)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&|x| axis_label(*x, true, x1 - x0))
            .y_label_formatter(&|y| axis_label(*y, true, y1 - y0))
            .label_style((FONT, 14))
            .axis_desc_style((FONT, 16))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(&err)?;
        chart
            .draw_series(pts.iter().map(|&(x, y, v)| Circle::new((x, y), 7, color(v).filled())))
            .map_err(&err)?;
        if let Some(best) =
            pts.iter().filter(|p| p.2.is_finite()).max_by(|a, b| a.2.total_cmp(&b.2))
        {
            chart
                .draw_series(std::iter::once(Circle::new(
                    (best.0, best.1),
                    11,
                    BLACK.stroke_width(2),
                )))
                .map_err(&err)?
                .label(format!("best: {:.2}% (red high, blue low)", 100.0 * best.2))
                .legend(|(x, y)| Circle::new((x + 10, y), 6, BLACK.stroke_width(2)));
            draw_legend(&mut chart, SeriesLabelPosition::LowerRight, 14, path)?;
        }
        Ok(())
    })
}
