//! `mw report`: a self-contained SVG (optionally wrapped in HTML) with a timeline of tasks
//! per worker and a histogram of task run times (the paper's Fig. 5, as a picture).
//!
//! Workers are reconstructed from the journal: per host, tasks are placed greedily on the
//! first lane free at their start time, which recovers the worker slots of a run.

use mw::journal::{JobMeta, StoredTask};
use std::fmt::Write;

const WIDTH: f64 = 900.0;
const LANE_H: f64 = 14.0;
const LEFT: f64 = 160.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Bar {
    lane: usize,
    start: f64,
    end: f64,
    task: u64,
    ok: bool,
}

/// Renders the report as one SVG document.
pub(crate) fn render_svg(meta: &JobMeta, tasks: &[StoredTask]) -> String {
    let timed: Vec<&StoredTask> = tasks
        .iter()
        .filter(|t| t.started.is_some() && t.finished.is_some())
        .collect();
    let t0 = timed
        .iter()
        .filter_map(|t| t.started)
        .fold(f64::INFINITY, f64::min);
    let t1 = timed
        .iter()
        .filter_map(|t| t.finished)
        .fold(f64::NEG_INFINITY, f64::max);
    let span = if t1 > t0 { t1 - t0 } else { 1.0 };

    // Lanes per host.
    let mut hosts: Vec<String> = timed.iter().map(|t| t.host.clone()).collect();
    hosts.sort();
    hosts.dedup();
    let mut bars = Vec::new();
    let mut lane_labels: Vec<String> = Vec::new();
    for host in &hosts {
        let mut mine: Vec<&&StoredTask> = timed.iter().filter(|t| &t.host == host).collect();
        mine.sort_by(|a, b| {
            a.started
                .unwrap_or(0.0)
                .total_cmp(&b.started.unwrap_or(0.0))
        });
        let mut lane_free: Vec<f64> = Vec::new();
        let base = lane_labels.len();
        for t in mine {
            let s = t.started.unwrap_or(t0);
            let e = t.finished.unwrap_or(s).max(s);
            let lane = match lane_free.iter().position(|f| *f <= s + 1e-6) {
                Some(l) => l,
                None => {
                    lane_free.push(0.0);
                    lane_free.len() - 1
                }
            };
            lane_free[lane] = e;
            bars.push(Bar {
                lane: base + lane,
                start: s,
                end: e,
                task: t.index,
                ok: t.state == mw::master::TaskState::Done,
            });
        }
        for l in 0..lane_free.len() {
            let name = if host.is_empty() { "?" } else { host.as_str() };
            lane_labels.push(format!("{name} #{l}"));
        }
    }
    let timeline_h = (lane_labels.len().max(1) as f64) * LANE_H + 40.0;

    // Histogram of wall times.
    let walls: Vec<f64> = tasks
        .iter()
        .filter(|t| t.state == mw::master::TaskState::Done)
        .map(|t| t.wall_secs)
        .collect();
    let bins = 30usize;
    let wmax = walls.iter().cloned().fold(0.0, f64::max).max(1e-9);
    let mut counts = vec![0usize; bins];
    for w in &walls {
        let b = ((w / wmax) * bins as f64).floor() as usize;
        counts[b.min(bins - 1)] += 1;
    }
    let cmax = counts.iter().cloned().max().unwrap_or(1).max(1);
    let hist_h = 200.0;
    let height = 60.0 + timeline_h + hist_h + 80.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" font-family="sans-serif" font-size="11">"#,
        w = WIDTH + LEFT + 20.0
    );
    let done = tasks
        .iter()
        .filter(|t| t.state == mw::master::TaskState::Done)
        .count();
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15">mw job {} ({}): {} tasks, {} done, span {:.2} s</text>"#,
        esc(&meta.id),
        esc(&meta.interface),
        tasks.len(),
        done,
        if timed.is_empty() { 0.0 } else { span }
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="45" font-size="13">Timeline of tasks per worker</text>"#
    );
    let top = 55.0;
    for (i, label) in lane_labels.iter().enumerate() {
        let y = top + i as f64 * LANE_H;
        let _ = writeln!(
            s,
            r#"<text x="10" y="{:.1}">{}</text>"#,
            y + LANE_H - 3.0,
            esc(label)
        );
    }
    for b in &bars {
        let x = LEFT + (b.start - t0) / span * WIDTH;
        let w = ((b.end - b.start) / span * WIDTH).max(0.5);
        let y = top + b.lane as f64 * LANE_H + 1.0;
        let color = if b.ok { "#4a7fb5" } else { "#c0392b" };
        let _ = writeln!(
            s,
            r#"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{h:.1}" fill="{color}"><title>task {} {:.3}s</title></rect>"#,
            b.task,
            b.end - b.start,
            h = LANE_H - 2.0
        );
    }
    let axis_y = top + lane_labels.len().max(1) as f64 * LANE_H + 12.0;
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{axis_y:.1}">0 s</text><text x="{:.1}" y="{axis_y:.1}" text-anchor="end">{:.2} s</text>"#,
        LEFT + WIDTH,
        span
    );
    let htop = 60.0 + timeline_h + 20.0;
    let _ = writeln!(
        s,
        r#"<text x="10" y="{:.1}" font-size="13">Histogram of task run times ({} done tasks)</text>"#,
        htop - 5.0,
        walls.len()
    );
    let bw = WIDTH / bins as f64;
    for (i, c) in counts.iter().enumerate() {
        let h = *c as f64 / cmax as f64 * hist_h;
        let x = LEFT + i as f64 * bw;
        let y = htop + hist_h - h;
        let _ = writeln!(
            s,
            r##"<rect x="{x:.2}" y="{y:.2}" width="{:.2}" height="{h:.2}" fill="#6a9f58"><title>{c} tasks, {:.3}-{:.3} s</title></rect>"##,
            (bw - 1.0).max(0.5),
            wmax * i as f64 / bins as f64,
            wmax * (i + 1) as f64 / bins as f64
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{:.1}">0 s</text><text x="{:.1}" y="{:.1}" text-anchor="end">{:.3} s</text><text x="10" y="{:.1}">max {cmax}</text>"#,
        htop + hist_h + 14.0,
        LEFT + WIDTH,
        htop + hist_h + 14.0,
        wmax,
        htop + 10.0
    );
    s.push_str("</svg>\n");
    s
}

/// Wraps the SVG in a small self-contained HTML page.
pub(crate) fn render_html(meta: &JobMeta, tasks: &[StoredTask], svg: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mw report: {id}</title></head>\n<body>\n<h1>mw report: {id}</h1>\n<p>{n} tasks, interface {iface}.</p>\n{svg}</body></html>\n",
        id = esc(&meta.id),
        n = tasks.len(),
        iface = esc(&meta.interface)
    )
}
