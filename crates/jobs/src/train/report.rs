//! The training report: one self-contained HTML page beside each model version
//! (`report.html`), with inline SVG charts of the held-out slice: ROC and precision-recall
//! curves, a calibration plot, the score distribution per class, and the coefficients by
//! feature name. No scripts, no external files: it opens from disk or from an artifact store.

use std::fmt::Write as _;

use plotters::prelude::*;
use txpipe_core::model::ModelArtifact;

use crate::{JobError, Result};

pub const REPORT_FILE: &str = "report.html";

const SIZE: (u32, u32) = (420, 320);
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);

fn plot_err(e: impl std::fmt::Display) -> JobError {
    JobError::data("drawing the training report", e)
}

/// A curve's points.
type Curve = Vec<(f64, f64)>;

/// Points of a curve, thinned to at most `max` (the first and last kept).
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max {
        return points;
    }
    let step = points.len() as f64 / max as f64;
    let mut out: Vec<(f64, f64)> = (0..max).map(|k| points[(k as f64 * step) as usize]).collect();
    out.push(points[points.len() - 1]);
    out
}

/// ROC (false-positive rate, true-positive rate) and precision-recall (recall, precision)
/// points, from the highest score down.
fn curves(p: &[f64], y: &[u8]) -> (Curve, Curve) {
    let mut order: Vec<usize> = (0..p.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let positives = y.iter().filter(|&&v| v != 0).count().max(1) as f64;
    let negatives = (y.len() as f64 - positives).max(1.0);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut roc = vec![(0.0, 0.0)];
    let mut pr = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if y[i] != 0 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        // One point per distinct score.
        if k + 1 == order.len() || p[order[k + 1]] != p[i] {
            roc.push((fp / negatives, tp / positives));
            pr.push((tp / positives, tp / (tp + fp)));
        }
    }
    (thin(roc, 400), thin(pr, 400))
}

/// Ten bins of predicted probability: (mean predicted, observed rate, rows).
fn calibration(p: &[f64], y: &[u8]) -> Vec<(f64, f64, usize)> {
    let mut bins = [(0.0, 0.0, 0usize); 10];
    for (&pi, &yi) in p.iter().zip(y) {
        let b = ((pi * 10.0) as usize).min(9);
        bins[b].0 += pi;
        bins[b].1 += f64::from(yi);
        bins[b].2 += 1;
    }
    bins.iter().filter(|b| b.2 > 0).map(|&(sp, sy, n)| (sp / n as f64, sy / n as f64, n)).collect()
}

fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, &Curve, RGBColor)],
    diagonal: bool,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .light_line_style(WHITE)
            .draw()
            .map_err(plot_err)?;
        if diagonal {
            chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3))).map_err(plot_err)?;
        }
        for (name, points, color) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .position(SeriesLabelPosition::LowerRight)
                .draw()
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// Share of each class's rows per probability bin (40 bins), as two lines.
fn distribution(p: &[f64], y: &[u8]) -> Result<String> {
    const BINS: usize = 40;
    let mut counts = [[0f64; BINS]; 2];
    for (&pi, &yi) in p.iter().zip(y) {
        counts[usize::from(yi != 0)][((pi * BINS as f64) as usize).min(BINS - 1)] += 1.0;
    }
    let shares: Vec<Vec<(f64, f64)>> = counts
        .iter()
        .map(|c| {
            let total: f64 = c.iter().sum::<f64>().max(1.0);
            c.iter().enumerate().map(|(b, n)| ((b as f64 + 0.5) / BINS as f64, n / total)).collect()
        })
        .collect();
    let top = shares.iter().flatten().map(|p| p.1).fold(0.0, f64::max).max(0.01) * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Scores per class (held-out)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(45)
            .build_cartesian_2d(0f64..1f64, 0f64..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("fraud probability")
            .y_desc("share of the class")
            .light_line_style(WHITE)
            .draw()
            .map_err(plot_err)?;
        for (shares, (name, color)) in shares.iter().zip([("not fraud", BLUE), ("fraud", ORANGE)]) {
            chart
                .draw_series(LineSeries::new(shares.iter().copied(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).map_or_else(|| us.to_string(), |t| t.to_rfc3339())
}

/// The page for `model`, from its held-out probabilities `p` and labels `y`.
pub fn render(model: &ModelArtifact, p: &[f64], y: &[u8]) -> Result<String> {
    let (roc, pr) = curves(p, y);
    let calib = calibration(p, y);
    let calib_points: Vec<(f64, f64)> = calib.iter().map(|&(x, y, _)| (x, y)).collect();
    let h = &model.metrics.holdout;
    let charts = [
        line_chart(
            &format!("ROC (held-out), AUC {:.4}", h.auc_roc),
            "false-positive rate",
            "true-positive rate",
            &[("model", &roc, BLUE)],
            true,
        )?,
        line_chart(
            &format!("Precision-recall (held-out), AP {:.4}", h.auc_pr),
            "recall",
            "precision",
            &[("model", &pr, BLUE)],
            false,
        )?,
        line_chart(
            "Calibration (held-out)",
            "mean predicted",
            "observed fraud rate",
            &[("model", &calib_points, ORANGE)],
            true,
        )?,
        distribution(p, y)?,
    ];

    let mut html = String::new();
    let w = &mut html;
    let title = format!("txpipe model {}", escape(&model.version));
    let _ = write!(
        w,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>\
         body{{font-family:sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse;margin:8px 0 20px}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} th{{background:#f3f3f3}} td.l,th.l{{text-align:left}}\
         .charts{{display:flex;flex-wrap:wrap;gap:12px}} .bar{{display:inline-block;height:10px}}\
         </style></head><body><h1>{title}</h1>"
    );
    let l = &model.lineage;
    let _ = write!(
        w,
        "<p>Created {} from <code>{}</code>, Delta version {}: {} rows read, {} used, event times {} to {}. \
         Fitted before {}, threshold chosen on {} to {}, held out from {}.</p>",
        escape(&model.created_at),
        escape(&l.table),
        l.delta_version,
        l.rows_read,
        l.rows_used,
        time(l.time_from_us),
        time(l.time_to_us),
        time(l.validation_from_us),
        time(l.validation_from_us),
        time(l.holdout_from_us),
        time(l.holdout_from_us),
    );
    let _ = write!(
        w,
        "<h2>Metrics</h2><table><tr><th class=l>slice</th><th>rows</th><th>positives</th><th>AUC-ROC</th><th>AUC-PR</th>\
         <th>log loss</th><th>Brier</th><th>precision</th><th>recall</th><th>F1</th></tr>"
    );
    let m = &model.metrics;
    for (name, e) in [("fitted", &m.train), ("validation", &m.validation), ("held-out", &m.holdout)] {
        let t = &e.at_threshold;
        let _ = write!(
            w,
            "<tr><td class=l>{name}</td><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td>\
             <td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
            e.rows, e.positives, e.auc_roc, e.auc_pr, e.log_loss, e.brier, t.precision, t.recall, t.f1
        );
    }
    let _ = write!(
        w,
        "</table><p>Decision threshold {:.4} (a row is flagged at or above it).</p>",
        model.threshold
    );
    let _ = write!(w, "<div class=charts>");
    for svg in &charts {
        let _ = write!(w, "<div>{svg}</div>");
    }
    let _ = write!(w, "</div>");

    // Coefficients on the standardised scale, largest effect first.
    let names = &model.features.names;
    let coef = &model.model.standardized;
    let mut order: Vec<usize> = (0..names.len().min(coef.len())).collect();
    order.sort_by(|&a, &b| coef[b].abs().total_cmp(&coef[a].abs()).then(a.cmp(&b)));
    let largest = order.first().map_or(1.0, |&j| coef[j].abs().max(1e-12));
    let _ = write!(
        w,
        "<h2>Coefficients</h2><p>Per feature, on the standardised scale (the change in log-odds for one standard \
         deviation), largest effect first; intercept {:.4}.</p><table><tr><th class=l>feature</th><th>standardised</th>\
         <th>raw</th><th class=l></th></tr>",
        model.model.intercept
    );
    for j in order {
        let width = (coef[j].abs() / largest * 200.0).round();
        let color = if coef[j] >= 0.0 { "#ff7f0e" } else { "#1f77b4" };
        let _ = write!(
            w,
            "<tr><td class=l>{}</td><td>{:+.4}</td><td>{:+.4}</td><td class=l><span class=bar style=\"width:{width}px;background:{color}\"></span></td></tr>",
            escape(&names[j]),
            coef[j],
            model.model.coefficients.get(j).copied().unwrap_or(f64::NAN)
        );
    }
    let _ = write!(w, "</table>");
    let hp = &model.hyper_parameters;
    let _ = write!(
        w,
        "<h2>Settings</h2><pre>{}</pre></body></html>",
        escape(&serde_json::to_string_pretty(hp).unwrap_or_default())
    );
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_start_and_end_at_the_corners_and_calibration_bins_count_every_row() {
        let p = [0.9, 0.8, 0.8, 0.3, 0.2, 0.1];
        let y = [1, 1, 0, 0, 1, 0];
        let (roc, pr) = curves(&p, &y);
        assert_eq!(roc.first(), Some(&(0.0, 0.0)));
        assert_eq!(roc.last(), Some(&(1.0, 1.0)));
        // The tie at 0.8 is one point: after it, 2 of 3 positives and 1 of 3 negatives.
        assert_eq!(roc[2], (1.0 / 3.0, 2.0 / 3.0));
        assert_eq!(pr[0], (1.0 / 3.0, 1.0));
        assert_eq!(pr.last(), Some(&(1.0, 0.5)));
        let bins = calibration(&p, &y);
        assert_eq!(bins.iter().map(|b| b.2).sum::<usize>(), 6);
        assert_eq!(bins.last(), Some(&(0.9, 1.0, 1)));
    }
}
