//! PNG charts of a scenario's results (plotters, bitmap backend): one panel per metric, one
//! horizontal bar per system at its median, with a whisker from p10 to p90 and the median
//! written beside it. Text uses a TrueType font from the system (DejaVu Sans, Debian's
//! fonts-dejavu-core, which scripts/setup installs); without one the chart is not drawn and
//! the scenario says so.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::stats::Summary;

/// The font family name the charts use once a font is registered.
const FAMILY: &str = "cryo-bench";
const FONT_PATHS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// One bar: a system's summary of the panel's metric.
#[derive(Debug, Clone)]
pub struct Bar {
    pub label: String,
    pub summary: Summary,
    /// Drawn in the highlight colour (cryo).
    pub highlight: bool,
}

/// One metric's chart.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub bars: Vec<Bar>,
}

fn register_font() -> Result<()> {
    static FONT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let path = FONT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or_else(|| format!("no DejaVu Sans font (looked in {FONT_PATHS:?})"))?;
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // plotters keeps registered fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable TrueType font", path.display()))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Draws `panels` under `title` into the PNG at `path`.
pub fn draw(path: &Path, title: &str, panels: &[Panel]) -> Result<()> {
    register_font()?;
    let panels: Vec<&Panel> = panels.iter().filter(|p| !p.bars.is_empty()).collect();
    if panels.is_empty() {
        return Ok(());
    }
    let width = 1000u32;
    let heights: Vec<u32> = panels
        .iter()
        .map(|p| 70 + 34 * u32::try_from(p.bars.len()).unwrap_or(u32::MAX / 64))
        .collect();
    let height = 50 + heights.iter().sum::<u32>();
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let root = root.titled(title, (FAMILY, 22)).map_err(|e| err(&e))?;
    let mut rest = root;
    for (panel, h) in panels.iter().zip(&heights) {
        let (area, below) = rest.split_vertically(*h);
        rest = below;
        draw_panel(&area, panel).map_err(|e| err(&e))?;
    }
    rest.present().map_err(|e| err(&e))?;
    Ok(())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
) -> std::result::Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let max = panel
        .bars
        .iter()
        .map(|b| b.summary.p90.max(b.summary.median))
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.25;
    let n = panel.bars.len();
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{} ({})", panel.title, panel.unit), (FAMILY, 16))
        .margin(8)
        .x_label_area_size(24)
        .y_label_area_size(230)
        .build_cartesian_2d(0.0..max, (0..n).into_segmented())?;
    let labels: Vec<String> = panel.bars.iter().map(|b| b.label.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style((FAMILY, 13))
        .draw()?;
    let cryo = RGBColor(0x1f, 0x77, 0xb4);
    let other = RGBColor(0xa0, 0xa0, 0xa0);
    chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
        let colour = if b.highlight { cryo } else { other };
        let mut r = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (b.summary.median, SegmentValue::Exact(i + 1)),
            ],
            colour.filled(),
        );
        r.set_margin(4, 4, 0, 0);
        r
    }))?;
    // p10–p90 whiskers, through the middle of each bar.
    chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
        PathElement::new(
            vec![
                (b.summary.p10, SegmentValue::CenterOf(i)),
                (b.summary.p90, SegmentValue::CenterOf(i)),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    chart.draw_series(panel.bars.iter().enumerate().map(|(i, b)| {
        Text::new(
            format!("{:.1}", b.summary.median),
            (
                b.summary.p90.max(b.summary.median) + max * 0.01,
                SegmentValue::CenterOf(i),
            ),
            (FAMILY, 13),
        )
    }))?;
    Ok(())
}

/// Panels from `(metric, system, summary)` rows, in the order metrics first appear; bars whose
/// system starts with `highlight` are drawn in cryo's colour.
pub fn panels<'a>(
    rows: impl IntoIterator<Item = (&'a str, &'a str, &'a str, &'a Summary)>,
    highlight: &str,
) -> Vec<Panel> {
    let mut out: Vec<Panel> = Vec::new();
    for (metric, unit, system, summary) in rows {
        let bar = Bar {
            label: system.to_string(),
            summary: summary.clone(),
            highlight: system.starts_with(highlight),
        };
        match out.iter_mut().find(|p| p.title == metric) {
            Some(p) => p.bars.push(bar),
            None => out.push(Panel {
                title: metric.to_string(),
                unit: unit.to_string(),
                bars: vec![bar],
            }),
        }
    }
    out
}

/// Draws the chart beside a scenario's JSON and markdown, as `dir/name.png`; a chart that
/// cannot be drawn (no font) is reported, never fatal.
pub fn write(dir: &Path, name: &str, title: &str, panels: &[Panel]) -> Option<PathBuf> {
    let path = dir.join(format!("{name}.png"));
    match draw(&path, title, panels).with_context(|| format!("{name}.png")) {
        Ok(()) => Some(path),
        Err(e) => {
            eprintln!("cryo-bench: no chart: {e:#}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(median: f64) -> Summary {
        Summary {
            n: 3,
            median,
            p10: median * 0.9,
            p90: median * 1.2,
            min: median * 0.8,
            max: median * 1.3,
        }
    }

    #[test]
    fn panels_group_by_metric() {
        let (a, b, c) = (summary(10.0), summary(20.0), summary(5.0));
        let rows = vec![
            ("create", "ms", "cryo 0.1.0", &a),
            ("create", "ms", "runc 1.1.5", &b),
            ("start", "ms", "cryo 0.1.0", &c),
        ];
        let p = panels(rows, "cryo");
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].bars.len(), 2);
        assert!(p[0].bars[0].highlight && !p[0].bars[1].highlight);
        assert_eq!(p[1].title, "start");
    }

    #[test]
    fn a_chart_is_a_png() {
        if register_font().is_err() {
            println!("skipped: no DejaVu Sans font installed (fonts-dejavu-core)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (summary(10.0), summary(20.0));
        let p = panels(
            vec![("total", "ms", "cryo", &a), ("total", "ms", "runc", &b)],
            "cryo",
        );
        let path = write(d.path(), "t", "lifecycle", &p).unwrap();
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 2000);
    }
}
