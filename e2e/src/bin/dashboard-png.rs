//! Draws the Grafana dashboard's panels (kustomize/components/prometheus/
//! dashboard.json) over a metrics log of `bench-scale --metrics-log`, as a
//! PNG: each panel's PromQL evaluated over the scraped series
//! (`nadc_e2e::dashboard`), the benchmark's phases as vertical lines.
//! docs/monitoring.md shows the result and the commands that made it.

use anyhow::Context;
use clap::Parser;
use nadc_e2e::dashboard::{Labels, PanelSeries, Store, evaluate_panels};
use plotters::prelude::*;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Draws the Grafana dashboard's panels over a bench-scale metrics log, as a PNG")]
struct Args {
    /// The metrics log written by `bench-scale --metrics-log`.
    #[arg(long)]
    log: PathBuf,
    /// The Grafana dashboard whose panels are drawn.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../kustomize/components/prometheus/dashboard.json"))]
    dashboard: PathBuf,
    /// The PNG to write.
    #[arg(long, default_value = "dashboard.png")]
    out: PathBuf,
    /// Seconds between two evaluations of each panel.
    #[arg(long, default_value_t = 2.0)]
    step: f64,
    /// What Grafana's $__rate_interval stands for (four scrape intervals or more).
    #[arg(long, default_value = "10s")]
    rate_interval: String,
    /// A TrueType font for the text (Debian: fonts-dejavu-core).
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
    /// Width of the picture in pixels; its height follows from the panels.
    #[arg(long, default_value_t = 1400)]
    width: u32,
}

/// A value as the panel's Grafana unit shows it.
fn format_value(unit: &str, v: f64) -> String {
    match unit {
        "ops" | "reqps" | "wps" => format!("{}/s", short(v)),
        "s" if v != 0.0 && v.abs() < 1.0 => format!("{} ms", short(v * 1000.0)),
        "s" => format!("{} s", short(v)),
        "bytes" => format!("{:.0} MiB", v / (1024.0 * 1024.0)),
        _ => short(v),
    }
}

fn short(v: f64) -> String {
    if v == v.trunc() || v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &PanelSeries,
    x_max: f64,
    step: f64,
    phases: &[(f64, String)],
) -> anyhow::Result<()> {
    let y_max = panel
        .lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 17))
        .margin(6)
        .x_label_area_size(22)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)?;
    chart
        .configure_mesh()
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .x_labels(8)
        .y_labels(5)
        .x_label_formatter(&|x| format!("{x:.0} s"))
        .y_label_formatter(&|y| format_value(&panel.unit, *y))
        .label_style(("sans-serif", 12))
        .draw()?;
    for (x, name) in phases {
        chart.draw_series(LineSeries::new(
            [(*x, 0.0), (*x, y_max)],
            RGBColor(170, 170, 170),
        ))?;
        let number = name.split_whitespace().next().unwrap_or_default();
        chart.draw_series(std::iter::once(Text::new(
            number.to_string(),
            (*x, y_max),
            ("sans-serif", 11)
                .into_font()
                .color(&RGBColor(120, 120, 120)),
        )))?;
    }
    if panel.lines.is_empty() {
        chart.draw_series(std::iter::once(Text::new(
            "no data",
            (x_max * 0.45, y_max * 0.5),
            ("sans-serif", 14)
                .into_font()
                .color(&RGBColor(120, 120, 120)),
        )))?;
        return Ok(());
    }
    for (i, (legend, points)) in panel.lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // Where a query had no value (no reconcile in the window), a gap,
        // as Grafana draws it, not a line across.
        let mut segments = points.chunk_by(|a, b| b.0 - a.0 <= step * 1.5);
        let first = segments.next().unwrap_or_default();
        chart
            .draw_series(LineSeries::new(
                first.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(legend.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
        for segment in segments {
            chart.draw_series(LineSeries::new(
                segment.iter().copied(),
                color.stroke_width(2),
            ))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(200, 200, 200))
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let font = std::fs::read(&args.font).with_context(|| {
        format!(
            "read the font {} (apt-get install fonts-dejavu-core, or pass --font)",
            args.font.display()
        )
    })?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into()))
        .map_err(|_| anyhow::anyhow!("{} is no TrueType font", args.font.display()))?;

    let log = std::fs::read_to_string(&args.log)
        .with_context(|| format!("read {}", args.log.display()))?;
    // The labels Prometheus would add when scraping through the ServiceMonitor.
    let target: Labels = [
        ("job", "k8s-net-attach-def-controller-metrics"),
        ("namespace", "net-attach-def-system"),
        ("pod", "bench-scale operator"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let store = Store::from_log(&log, &target)?;
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&args.dashboard)
            .with_context(|| format!("read {}", args.dashboard.display()))?,
    )?;
    let panels = evaluate_panels(&dashboard, &store, args.step, &args.rate_interval)?;
    let phases: Vec<(f64, String)> = store
        .phases
        .iter()
        .filter(|(_, name)| name != "end")
        .map(|(t, name)| (t - store.start, name.clone()))
        .collect();
    let x_max = store.end - store.start;

    let rows = panels.len().div_ceil(2) as u32;
    let (title_h, row_h) = (54u32, 250u32);
    let height = title_h + rows * row_h;
    let root = BitMapBackend::new(&args.out, (args.width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(title_h);
    let name = dashboard["title"].as_str().unwrap_or("dashboard");
    title.draw_text(
        &format!(
            "{name}: one bench-scale run, {x_max:.0} s, scraped every {:.1} s",
            {
                let scrapes = log.lines().filter(|l| l.contains("\"text\"")).count();
                x_max / (scrapes.max(2) - 1) as f64
            }
        ),
        &("sans-serif", 20).into_font().color(&BLACK),
        (12, 6),
    )?;
    let legend: Vec<String> = phases.iter().map(|(_, n)| n.clone()).collect();
    title.draw_text(
        &format!("phases (grey lines): {}", legend.join(" · ")),
        &("sans-serif", 14).into_font().color(&RGBColor(90, 90, 90)),
        (12, 32),
    )?;
    let areas = body.split_evenly((rows as usize, 2));
    for (area, panel) in areas.iter().zip(&panels) {
        draw_panel(area, panel, x_max, args.step, &phases)?;
    }
    root.present()?;
    println!(
        "{}: {} panels over {x_max:.0} s",
        args.out.display(),
        panels.len()
    );
    Ok(())
}
