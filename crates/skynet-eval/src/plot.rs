//! A sweep's plots, as SVG and PNG (`plotters`):
//!
//! - `pr_curve.svg` / `.png`: precision against recall over the finished points, the
//!   recommended point circled and labelled;
//! - `false_per_hour_<key>.svg` / `.png` for each swept key (`.` and other characters that
//!   do not belong in a file name become `_`): false alarms per hour of footage against the
//!   key's value, one line per combination of the other axes' values, and the limit as a
//!   dashed line.
//!
//! Text is drawn with a TrueType font of the system (DejaVu Sans, from Debian's
//! `fonts-dejavu-core`; `SKYNET_PLOT_FONT` names another file). Without one the plots are
//! drawn without text, and [`Plots::warnings`] says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::sweep::{Axis, PointStatus, SweepRow, format_value};

const SIZE: (u32, u32) = (900, 640);
const FONT: &str = "sans-serif";

/// Where a font is looked for, in order (after `SKYNET_PLOT_FONT`).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("plotting {}: {reason}", path.display())]
    Draw { path: PathBuf, reason: String },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What [`write_plots`] wrote.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plots {
    pub files: Vec<PathBuf>,
    /// E.g. that no font was found, so the plots have no text.
    pub warnings: Vec<String>,
}

/// Registers a system font with plotters, once; `Err` says why there is none.
fn font() -> Result<(), String> {
    static FONT_READY: OnceLock<Result<(), String>> = OnceLock::new();
    FONT_READY
        .get_or_init(|| {
            let env = std::env::var_os("SKYNET_PLOT_FONT").map(PathBuf::from);
            let candidates = env
                .iter()
                .cloned()
                .chain(FONT_PATHS.iter().map(PathBuf::from));
            for path in candidates {
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return Ok(());
                }
            }
            Err(format!(
                "no TrueType font found (looked for {}{}; install fonts-dejavu-core or set \
                 SKYNET_PLOT_FONT): the plots have no text",
                env.map(|p| format!("{}, ", p.display()))
                    .unwrap_or_default(),
                FONT_PATHS[0]
            ))
        })
        .clone()
}

/// `key` as part of a file name: letters, digits, `-` and `_`; anything else becomes `_`.
pub fn sanitize(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() { "_".into() } else { s }
}

/// One point on a plot.
struct Point {
    row: usize,
    recall: f64,
    precision: f64,
    per_hour: f64,
}

/// Writes the plots of a sweep into `dir`: `pr_curve.svg`, `pr_curve.png`, and
/// `false_per_hour_<key>.svg` / `.png` for each axis. Only finished points are drawn.
pub fn write_plots(
    dir: &Path,
    axes: &[Axis],
    rows: &[SweepRow],
    recommended: Option<usize>,
    max_false_per_hour: f64,
) -> Result<Plots, PlotError> {
    let mut plots = Plots::default();
    let text = match font() {
        Ok(()) => true,
        Err(w) => {
            plots.warnings.push(w);
            false
        }
    };
    write_plots_with(
        dir,
        axes,
        rows,
        recommended,
        max_false_per_hour,
        text,
        &mut plots,
    )?;
    Ok(plots)
}

fn write_plots_with(
    dir: &Path,
    axes: &[Axis],
    rows: &[SweepRow],
    recommended: Option<usize>,
    max_false_per_hour: f64,
    text: bool,
    plots: &mut Plots,
) -> Result<(), PlotError> {
    std::fs::create_dir_all(dir).map_err(|source| PlotError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let points: Vec<Point> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.status == PointStatus::Ok)
        .filter_map(|(i, r)| {
            let f = r.figures.as_ref()?;
            let ok = [f.recall, f.precision, f.false_alarms_per_hour]
                .iter()
                .all(|v| v.is_finite());
            ok.then_some(Point {
                row: i,
                recall: f.recall,
                precision: f.precision,
                per_hour: f.false_alarms_per_hour,
            })
        })
        .collect();

    let pr = PrPlot {
        points: &points,
        // One axis: the line follows the swept value; several: points only.
        line: axes.len() == 1,
        recommended: recommended.and_then(|r| {
            points
                .iter()
                .find(|p| p.row == r)
                .map(|p| (p, rows[r].describe(axes)))
        }),
        text,
    };
    write_both(dir, "pr_curve", plots, &pr)?;

    let mut used = BTreeMap::new();
    for (a, axis) in axes.iter().enumerate() {
        let mut name = format!("false_per_hour_{}", sanitize(&axis.key));
        let n = used.entry(name.clone()).or_insert(0usize);
        *n += 1;
        if *n > 1 {
            name = format!("{name}_{n}");
        }
        let plot = PerHourPlot::new(axes, a, rows, &points, max_false_per_hour, text);
        write_both(dir, &name, plots, &plot)?;
    }
    Ok(())
}

/// A plot that draws on any backend.
trait Plot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String>;
}

/// Draws one plot into `NAME.svg` and `NAME.png`.
fn write_both<P: Plot>(
    dir: &Path,
    name: &str,
    plots: &mut Plots,
    plot: &P,
) -> Result<(), PlotError> {
    let svg_path = dir.join(format!("{name}.svg"));
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw_on(&root, plot)
            .and_then(|()| root.present().map_err(|e| e.to_string()))
            .map_err(|reason| PlotError::Draw {
                path: svg_path.clone(),
                reason,
            })?;
    }
    std::fs::write(&svg_path, svg).map_err(|source| PlotError::Write {
        path: svg_path.clone(),
        source,
    })?;
    plots.files.push(svg_path);

    let png_path = dir.join(format!("{name}.png"));
    let mut pixels = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        draw_on(&root, plot)
            .and_then(|()| root.present().map_err(|e| e.to_string()))
            .map_err(|reason| PlotError::Draw {
                path: png_path.clone(),
                reason,
            })?;
    }
    image::save_buffer_with_format(
        &png_path,
        &pixels,
        SIZE.0,
        SIZE.1,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .map_err(|e| PlotError::Write {
        path: png_path.clone(),
        source: std::io::Error::other(e),
    })?;
    plots.files.push(png_path);
    Ok(())
}

fn draw_on<DB: DrawingBackend, P: Plot>(
    root: &DrawingArea<DB, Shift>,
    plot: &P,
) -> Result<(), String> {
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    plot.draw(root)
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A chart's frame: caption and label areas only when there is text.
fn builder<'a, 'b, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    caption: &str,
    text: bool,
) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(root);
    b.margin(20);
    if text {
        b.caption(caption, (FONT, 22))
            .x_label_area_size(45)
            .y_label_area_size(60);
    }
    b
}

struct PrPlot<'a> {
    points: &'a [Point],
    line: bool,
    recommended: Option<(&'a Point, String)>,
    text: bool,
}

impl Plot for PrPlot<'_> {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let mut chart = builder(root, "Precision against recall over the sweep", self.text)
            .build_cartesian_2d(0f64..1.05f64, 0f64..1.05f64)
            .map_err(s)?;
        let mut mesh = chart.configure_mesh();
        if self.text {
            mesh.x_desc("recall").y_desc("precision");
        }
        mesh.draw().map_err(s)?;
        let blue = RGBColor(31, 119, 180);
        if self.line && self.points.len() > 1 {
            chart
                .draw_series(LineSeries::new(
                    self.points.iter().map(|p| (p.recall, p.precision)),
                    blue.stroke_width(2),
                ))
                .map_err(s)?;
        }
        chart
            .draw_series(
                self.points
                    .iter()
                    .map(|p| Circle::new((p.recall, p.precision), 4, blue.filled())),
            )
            .map_err(s)?;
        if let Some((p, desc)) = &self.recommended {
            let red = RGBColor(214, 39, 40);
            chart
                .draw_series(std::iter::once(Circle::new(
                    (p.recall, p.precision),
                    9,
                    red.stroke_width(3),
                )))
                .map_err(s)?;
            if self.text {
                let lines = [
                    format!("recommended: {desc}"),
                    format!(
                        "recall {:.2}, precision {:.2}, {} false alarms/h",
                        p.recall,
                        p.precision,
                        format_value((p.per_hour * 100.0).round() / 100.0)
                    ),
                ];
                // Written towards the middle of the plot, so it stays inside.
                let right = p.recall > 0.5;
                let below = p.precision > 0.5;
                let h = if right { HPos::Right } else { HPos::Left };
                let dx = if right { -14 } else { 14 };
                let dys = if below { [14, 33] } else { [-33, -14] };
                let style = TextStyle::from((FONT, 15).into_font())
                    .color(&red)
                    .pos(Pos::new(h, VPos::Top));
                chart
                    .draw_series(std::iter::once(
                        EmptyElement::at((p.recall, p.precision))
                            + Text::new(lines[0].clone(), (dx, dys[0]), style.clone())
                            + Text::new(lines[1].clone(), (dx, dys[1]), style),
                    ))
                    .map_err(s)?;
            }
        }
        Ok(())
    }
}

struct PerHourPlot {
    key: String,
    x_range: (f64, f64),
    y_max: f64,
    /// One line per combination of the other axes' values: its name and its points
    /// (value, false alarms per hour), in the axis' order.
    lines: Vec<(String, Vec<(f64, f64)>)>,
    limit: f64,
    text: bool,
}

impl PerHourPlot {
    fn new(
        axes: &[Axis],
        a: usize,
        rows: &[SweepRow],
        points: &[Point],
        limit: f64,
        text: bool,
    ) -> Self {
        let axis = &axes[a];
        let lo = axis.values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = axis
            .values
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() && hi.is_finite() {
            (lo, hi)
        } else {
            (0.0, 1.0)
        };
        let pad = if hi > lo {
            (hi - lo) * 0.05
        } else {
            0.5_f64.max(lo.abs() * 0.1)
        };
        let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for p in points {
            let row = &rows[p.row];
            let Some(&x) = row.values.get(&axis.key) else {
                continue;
            };
            let others = axes
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != a)
                .filter_map(|(_, o)| {
                    row.values
                        .get(&o.key)
                        .map(|v| format!("{}={}", o.key, format_value(*v)))
                })
                .collect::<Vec<_>>()
                .join(", ");
            lines.entry(others).or_default().push((x, p.per_hour));
        }
        let mut lines: Vec<(String, Vec<(f64, f64)>)> = lines.into_iter().collect();
        for (_, l) in &mut lines {
            l.sort_by(|x, y| x.0.total_cmp(&y.0));
        }
        let y_top = points
            .iter()
            .map(|p| p.per_hour)
            .fold(if limit.is_finite() { limit } else { 0.0 }, f64::max);
        PerHourPlot {
            key: axis.key.clone(),
            x_range: (lo - pad, hi + pad),
            y_max: if y_top > 0.0 { y_top * 1.1 } else { 1.0 },
            lines,
            limit,
            text,
        }
    }
}

impl Plot for PerHourPlot {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
        let caption = format!("False alarms per hour against {}", self.key);
        let mut chart = builder(root, &caption, self.text)
            .build_cartesian_2d(self.x_range.0..self.x_range.1, 0f64..self.y_max)
            .map_err(s)?;
        let mut mesh = chart.configure_mesh();
        if self.text {
            mesh.x_desc(self.key.as_str())
                .y_desc("false alarms per hour of footage");
        }
        mesh.draw().map_err(s)?;
        if self.limit.is_finite() && self.limit >= 0.0 && self.limit <= self.y_max {
            let grey = RGBColor(120, 120, 120);
            let series = chart
                .draw_series(DashedLineSeries::new(
                    [(self.x_range.0, self.limit), (self.x_range.1, self.limit)],
                    8,
                    6,
                    grey.stroke_width(1),
                ))
                .map_err(s)?;
            if self.text {
                series
                    .label(format!("limit: {} per hour", format_value(self.limit)))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], grey));
            }
        }
        let legend = self.text && self.lines.len() > 1 && self.lines.len() <= 12;
        for (i, (name, line)) in self.lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            if line.len() > 1 {
                chart
                    .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))
                    .map_err(s)?;
            }
            let series = chart
                .draw_series(line.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(s)?;
            if legend {
                series
                    .label(name.clone())
                    .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
            }
        }
        if self.text {
            chart
                .configure_series_labels()
                .label_font((FONT, 14))
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::Figures;
    use crate::sweep::{grid, parse_axis};

    fn rows(axes: &[Axis]) -> Vec<SweepRow> {
        grid(axes)
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let t = p[0].1;
                let mut r = SweepRow::new(i, p, format!("points/{i:03}"), PointStatus::Ok);
                r.figures = Some(Figures {
                    recall: 1.0 - t,
                    precision: 0.4 + t,
                    false_alarms_per_hour: 4.0 * (1.0 - t) + i as f64 * 0.01,
                    ..Figures::default()
                });
                r
            })
            .collect()
    }

    fn check(dir: &Path, names: &[&str]) {
        for name in names {
            let svg = std::fs::read_to_string(dir.join(format!("{name}.svg"))).unwrap();
            assert!(svg.contains("<svg"), "{name}");
            let png = std::fs::read(dir.join(format!("{name}.png"))).unwrap();
            assert!(png.len() > 1000, "{name}");
            assert_eq!(&png[1..4], b"PNG", "{name}");
            let img = image::load_from_memory(&png).unwrap();
            assert_eq!((img.width(), img.height()), SIZE);
        }
    }

    #[test]
    fn one_axis_writes_both_plots() {
        let dir = tempfile::tempdir().unwrap();
        let axes = vec![parse_axis("detect.threshold=0.2:0.6:0.1").unwrap()];
        let mut rows = rows(&axes);
        rows[4].status = PointStatus::Failed;
        rows[4].figures = None;
        let plots = write_plots(dir.path(), &axes, &rows, Some(2), 1.0).unwrap();
        assert_eq!(plots.files.len(), 4);
        check(dir.path(), &["pr_curve", "false_per_hour_detect_threshold"]);
        if plots.warnings.is_empty() {
            let svg = std::fs::read_to_string(dir.path().join("pr_curve.svg")).unwrap();
            assert!(svg.contains("recommended: detect.threshold=0.4"), "{svg}");
        }
    }

    #[test]
    fn grid_and_no_text() {
        let dir = tempfile::tempdir().unwrap();
        let axes = vec![
            parse_axis("detect.threshold=0.2:0.6:0.2").unwrap(),
            parse_axis("cameras.0.rules.0.min_frames=1:3:1").unwrap(),
        ];
        let rows = rows(&axes);
        let mut plots = Plots::default();
        write_plots_with(dir.path(), &axes, &rows, Some(0), 1.0, false, &mut plots).unwrap();
        check(
            dir.path(),
            &[
                "pr_curve",
                "false_per_hour_detect_threshold",
                "false_per_hour_cameras_0_rules_0_min_frames",
            ],
        );
        let plots = write_plots(dir.path(), &axes, &rows, None, 1.0).unwrap();
        assert_eq!(plots.files.len(), 6);
        // Nothing finished: empty plots, still written.
        let none: Vec<SweepRow> = Vec::new();
        write_plots(dir.path(), &axes, &none, None, 1.0).unwrap();
        check(dir.path(), &["pr_curve"]);
    }

    #[test]
    fn sanitizes_keys() {
        assert_eq!(sanitize("risk.levels.iii"), "risk_levels_iii");
        assert_eq!(sanitize("a/b c-d_e"), "a_b_c-d_e");
        assert_eq!(sanitize(""), "_");
    }
}
