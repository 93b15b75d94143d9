//! `mw report`: a self-contained SVG (optionally wrapped in an HTML page) that says what
//! happened to a job: a legend, a timeline of tasks per worker with time ticks, retry and
//! resume markers, throughput over time, slot utilisation, a histogram of run times, and
//! (in the HTML page) the failed tasks with their stderr and the retried tasks.
//!
//! Hand-written SVG rather than a plotting crate: every element carries a `<title>` tooltip
//! (task, attempts, times), which plotters' SVG backend cannot attach; the charts are
//! rectangles, lines and text, and the file stays self-contained with no fonts or scripts.
//!
//! Workers are reconstructed from the journal: per host, tasks are placed greedily on the
//! first lane free at their start time, which recovers the worker slots of a run. Everything
//! read from the journal is escaped; non-finite times are dropped.

use mw::journal::{Event, JobMeta, JournalError, StoredTask};
use mw::master::TaskState;
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

const WIDTH: f64 = 900.0;
const LANE_H: f64 = 14.0;
const LEFT: f64 = 170.0;
const CHART_H: f64 = 120.0;
/// Most task bars a timeline draws (one bar per task of a job of millions would make an SVG
/// of hundreds of MB).
const MAX_DRAWN_BARS: usize = 20_000;

const C_DONE: &str = "#4a7fb5";
const C_FAILED: &str = "#c0392b";
const C_CANCELLED: &str = "#999999";
const C_RETRY: &str = "#e67e22";
const C_RESUME: &str = "#8e44ad";
const C_THROUGHPUT: &str = "#6a9f58";
const C_UTIL: &str = "#2c3e50";

/// How many failed tasks the HTML page lists, and how much stderr each shows.
pub(crate) const LIST_FAILED: usize = 50;
const STDERR_SHOWN: usize = 4096;
/// How many retried tasks the HTML page lists.
const LIST_RETRIED: usize = 200;

/// Most tasks room is made for before reading (more are read all the same).
const MAX_RESERVED: usize = 1 << 24;

/// A task as the report draws it, 48 bytes: a job of millions is drawn from these, not from
/// whole rows (inputs, results and errors took about 800 bytes a task).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReportTask {
    pub(crate) index: u64,
    /// Unix seconds; NaN when not known (or not finite in the journal).
    pub(crate) started: f64,
    /// Unix seconds; NaN when not known.
    pub(crate) finished: f64,
    pub(crate) wall_secs: f64,
    pub(crate) attempts: u32,
    /// Index into [`ReportTasks::hosts`].
    pub(crate) host: u32,
    pub(crate) state: TaskState,
}

impl ReportTask {
    /// Both times known: the task has a bar.
    fn timed(&self) -> bool {
        self.started.is_finite() && self.finished.is_finite()
    }
}

/// Every task of a job, compact, with its host names stored once.
#[derive(Debug, Default)]
pub(crate) struct ReportTasks {
    pub(crate) tasks: Vec<ReportTask>,
    pub(crate) hosts: Vec<String>,
}

impl ReportTasks {
    /// Reads every task's timing from a journal, one row at a time, into room made for the
    /// `expected` tasks counted (a vector grown by doubling would peak at 1.5 times it).
    pub(crate) fn read(
        conn: &mw::journal::Connection,
        path: &Path,
        expected: usize,
    ) -> Result<Self, JournalError> {
        let mut out = ReportTasks {
            tasks: Vec::with_capacity(expected.min(MAX_RESERVED)),
            hosts: Vec::new(),
        };
        let mut ids: HashMap<String, u32> = HashMap::new();
        mw::journal::visit_task_timings(conn, path, |t| -> Result<(), JournalError> {
            let host = match ids.get(t.host) {
                Some(id) => *id,
                None => {
                    let id = u32::try_from(out.hosts.len()).unwrap_or(u32::MAX);
                    ids.insert(t.host.to_string(), id);
                    out.hosts.push(t.host.to_string());
                    id
                }
            };
            out.push(
                t.index,
                t.state,
                t.attempts,
                (t.started, t.finished),
                t.wall_secs,
                host,
            );
            Ok(())
        })?;
        Ok(out)
    }

    /// Adds a task; times that are absent or not finite become NaN.
    pub(crate) fn push(
        &mut self,
        index: u64,
        state: TaskState,
        attempts: u32,
        (started, finished): (Option<f64>, Option<f64>),
        wall_secs: f64,
        host: u32,
    ) {
        let known = |v: Option<f64>| v.filter(|x| x.is_finite()).unwrap_or(f64::NAN);
        self.tasks.push(ReportTask {
            index,
            started: known(started),
            finished: known(finished),
            wall_secs,
            attempts,
            host,
            state,
        });
    }

    fn host(&self, t: &ReportTask) -> &str {
        usize::try_from(t.host)
            .ok()
            .and_then(|h| self.hosts.get(h))
            .map_or("", String::as_str)
    }
}

/// Everything a report is drawn from.
pub(crate) struct ReportData<'a> {
    pub(crate) meta: &'a JobMeta,
    pub(crate) tasks: &'a ReportTasks,
    /// The first [`LIST_FAILED`] failed tasks, whole (the page shows their inputs).
    pub(crate) failed: &'a [StoredTask],
    pub(crate) events: &'a [Event],
    pub(crate) logs_dir: &'a Path,
}

/// Text from the journal or a task (a name, a host, an exit, a reason) for HTML or SVG:
/// every control character, newline and tab included, escaped visibly
/// ([`mw_bundle::text::escape_controls_one_line`]), then the markup characters. Raw
/// control characters would reach a terminal that shows the file, and most make an SVG
/// (XML) invalid.
fn esc(s: &str) -> String {
    html(&mw_bundle::text::escape_controls_one_line(s))
}

/// [`esc`] for a `<pre>` block: its newlines and tabs are kept.
fn esc_pre(s: &str) -> String {
    html(&mw_bundle::text::escape_controls(s))
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The sample points `t0 + span * i / samples` (i in 0..=samples) at or after `x`: the
/// first such i (samples + 1 when none).
fn first_sample_from(x: f64, t0: f64, span: f64, samples: usize) -> usize {
    let at = |i: usize| t0 + span * i as f64 / samples as f64;
    let guess = ((x - t0) / span * samples as f64).ceil();
    let mut i = if guess.is_finite() && guess > 0.0 {
        (guess as usize).min(samples + 1)
    } else {
        0
    };
    while i > 0 && at(i - 1) >= x {
        i -= 1;
    }
    while i <= samples && at(i) < x {
        i += 1;
    }
    i
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `n` ticks over `span`.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_num(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else {
        let decimals = (-step.log10().floor()) as usize;
        format!("{v:.decimals$}")
    }
}

/// Ticks and labels along an x axis of `span` seconds starting at `LEFT`.
fn x_axis(s: &mut String, y: f64, span: f64, unit: &str) {
    let step = tick_step(span, 8.0);
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#333"/>"##,
        LEFT + WIDTH
    );
    let mut v = 0.0;
    let mut k = 0;
    while v <= span + 1e-9 && k < 50 {
        let x = LEFT + v / span * WIDTH;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}{unit}</text>"##,
            y + 4.0,
            y + 15.0,
            fmt_num(v, step)
        );
        k += 1;
        v = step * k as f64;
    }
}

/// Ticks and labels along a y axis from 0 to `max` over `h` pixels ending at `bottom`.
fn y_axis(s: &mut String, bottom: f64, h: f64, max: f64, label: &str, whole: bool) {
    let step = tick_step(max, 4.0);
    // Counts tick at whole numbers.
    let step = if whole { step.max(1.0).round() } else { step };
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{LEFT}" y2="{bottom:.1}" stroke="#333"/>"##,
        bottom - h
    );
    let mut v = 0.0;
    let mut k = 0;
    while v <= max + 1e-9 && k < 20 {
        let y = bottom - v / max * h;
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 4.0,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(v, step)
        );
        k += 1;
        v = step * k as f64;
    }
    let _ = writeln!(
        s,
        r#"<text x="10" y="{:.1}">{}</text>"#,
        bottom - h / 2.0,
        esc(label)
    );
}

fn colour(state: TaskState) -> &'static str {
    match state {
        TaskState::Done => C_DONE,
        TaskState::Cancelled => C_CANCELLED,
        _ => C_FAILED,
    }
}

/// Renders the report as one standalone SVG document.
pub(crate) fn render_svg(d: &ReportData<'_>) -> String {
    let mut s = String::new();
    write_svg(d, &mut s);
    s
}

/// Appends the report's SVG to `s` (one growing string: a large job's page is not built
/// twice).
fn write_svg(d: &ReportData<'_>, s: &mut String) {
    let all = &d.tasks.tasks;
    let t0 = all
        .iter()
        .filter(|t| t.timed())
        .map(|t| t.started)
        .fold(f64::INFINITY, f64::min);
    let t1 = all
        .iter()
        .filter(|t| t.timed())
        .map(|t| t.finished)
        .fold(f64::NEG_INFINITY, f64::max);
    let span = if t1 > t0 { t1 - t0 } else { 1.0 };
    let t0 = if t0.is_finite() { t0 } else { 0.0 };

    // Lanes per host: the timed tasks (their positions in `all`) sorted once by host, then
    // start (many hosts, e.g. forged ones, do not mean one pass over every task per host).
    // A bar is a position in this order and its lane: 8 bytes per task.
    let mut by_host: Vec<usize> = (0..all.len()).filter(|i| all[*i].timed()).collect();
    by_host.sort_by(|a, b| {
        let (a, b) = (&all[*a], &all[*b]);
        d.tasks
            .host(a)
            .cmp(d.tasks.host(b))
            .then(a.started.total_cmp(&b.started))
    });
    let mut bar_lane: Vec<u32> = Vec::with_capacity(by_host.len());
    let mut lane_labels: Vec<String> = Vec::new();
    for mine in by_host.chunk_by(|a, b| all[*a].host == all[*b].host) {
        let host = d.tasks.host(&all[mine[0]]);
        let mut lane_free: Vec<f64> = Vec::new();
        let base = lane_labels.len();
        for t in mine {
            let t = &all[*t];
            let (s, e) = (t.started, t.finished.max(t.started));
            let lane = match lane_free.iter().position(|f| *f <= s + 1e-6) {
                Some(l) => l,
                None => {
                    lane_free.push(0.0);
                    lane_free.len() - 1
                }
            };
            lane_free[lane] = e;
            bar_lane.push(u32::try_from(base + lane).unwrap_or(u32::MAX));
        }
        for l in 0..lane_free.len() {
            let name = if host.is_empty() { "?" } else { host };
            lane_labels.push(format!("{} #{l}", truncate(name, 20)));
        }
    }
    let bars = || {
        by_host.iter().zip(&bar_lane).map(|(t, lane)| {
            let t = &all[*t];
            (t, *lane as usize, t.started, t.finished.max(t.started))
        })
    };
    let lanes = lane_labels.len().max(1);
    let in_span = |at: f64| at.is_finite() && at >= t0 - 1e-6 && at <= t0 + span + 1e-6;
    let retries: Vec<&Event> = d
        .events
        .iter()
        .filter(|e| e.kind == "retry" && in_span(e.at))
        .collect();
    let resumes: Vec<&Event> = d
        .events
        .iter()
        .filter(|e| (e.kind == "resumed" || e.kind == "retry-requested") && in_span(e.at))
        .collect();

    let count = |st: TaskState| all.iter().filter(|t| t.state == st).count();
    let (done, failed, cancelled) = (
        count(TaskState::Done),
        count(TaskState::Failed),
        count(TaskState::Cancelled),
    );

    let timeline_top = 95.0;
    let timeline_h = lanes as f64 * LANE_H;
    let timeline_axis = timeline_top + timeline_h + 18.0;
    let thr_top = timeline_axis + 55.0;
    let util_top = thr_top + CHART_H + 60.0;
    let hist_top = util_top + CHART_H + 60.0;
    let height = hist_top + CHART_H + 45.0;
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height:.0}" viewBox="0 0 {w} {height:.0}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="#ffffff"/>"##,
        w = WIDTH + LEFT + 30.0
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15">mw job {} ({}): {} tasks: {done} done, {failed} failed, {cancelled} cancelled; span {:.2} s</text>"#,
        esc(&d.meta.id),
        esc(&d.meta.interface),
        all.len(),
        if by_host.is_empty() { 0.0 } else { span }
    );
    // Legend.
    let legend = [
        (C_DONE, "done", false),
        (C_FAILED, "failed", false),
        (C_CANCELLED, "cancelled", false),
        (C_RETRY, "retry (a failed attempt)", true),
        (C_RESUME, "master resumed / mw retry", true),
    ];
    let mut x = 10.0;
    for (c, label, is_line) in legend {
        if is_line {
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="34" x2="{:.1}" y2="46" stroke="{c}" stroke-width="2" stroke-dasharray="3,2"/>"#,
                x + 5.0,
                x + 5.0
            );
        } else {
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="35" width="10" height="10" fill="{c}"/>"#
            );
        }
        let _ = writeln!(s, r#"<text x="{:.1}" y="44">{label}</text>"#, x + 14.0);
        x += 24.0 + label.len() as f64 * 6.2;
    }

    let _ = writeln!(
        s,
        r#"<text x="10" y="{:.1}" font-size="13">Timeline of tasks per worker slot (last attempt of each task)</text>"#,
        timeline_top - 12.0
    );
    for (i, label) in lane_labels.iter().enumerate() {
        let y = timeline_top + i as f64 * LANE_H;
        let _ = writeln!(
            s,
            r#"<text x="10" y="{:.1}">{}</text>"#,
            y + LANE_H - 3.0,
            esc(label)
        );
    }
    // At most MAX_DRAWN_BARS bars are drawn (every k-th, said above the timeline); the
    // charts below count every task.
    let every = by_host.len().div_ceil(MAX_DRAWN_BARS).max(1);
    if every > 1 {
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="{:.1}" font-size="10">timeline: 1 in {every} of {} tasks drawn</text>"#,
            timeline_top - 10.0,
            by_host.len()
        );
    }
    for (t, lane, start, end) in bars().step_by(every) {
        let x = LEFT + (start - t0) / span * WIDTH;
        let w = ((end - start) / span * WIDTH).max(0.5);
        let y = timeline_top + lane as f64 * LANE_H + 1.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x:.2}" y="{y:.1}" width="{w:.2}" height="{h:.1}" fill="{c}"><title>task {} {} after {} attempt(s), {:.3}s</title></rect>"#,
            t.index,
            t.state.as_str(),
            t.attempts,
            end - start,
            h = LANE_H - 2.0,
            c = colour(t.state)
        );
    }
    for e in &retries {
        let x = LEFT + (e.at - t0) / span * WIDTH;
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{C_RETRY}" stroke-width="1.5" stroke-dasharray="3,2"><title>retry: task {} {}</title></line>"#,
            timeline_top - 4.0,
            timeline_top + timeline_h,
            e.task.map(|t| t.to_string()).unwrap_or_default(),
            esc(e.detail.as_deref().unwrap_or(""))
        );
    }
    for e in &resumes {
        let x = LEFT + (e.at - t0) / span * WIDTH;
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{C_RESUME}" stroke-width="2" stroke-dasharray="6,3"><title>{}: {}</title></line>"#,
            timeline_top - 8.0,
            timeline_top + timeline_h + 4.0,
            esc(&e.kind),
            esc(e.detail.as_deref().unwrap_or(""))
        );
    }
    x_axis(s, timeline_axis - 8.0, span, " s");

    // Throughput over time: tasks finished per bin.
    let bins = 40usize;
    let bin_w = span / bins as f64;
    let mut finished_per_bin = vec![0usize; bins];
    for t in all.iter().filter(|t| t.timed()) {
        let b = (((t.finished - t0) / span) * bins as f64).floor();
        let b = if b.is_finite() && b >= 0.0 {
            b as usize
        } else {
            0
        };
        finished_per_bin[b.min(bins - 1)] += 1;
    }
    let rate_max = finished_per_bin
        .iter()
        .map(|c| *c as f64 / bin_w)
        .fold(0.0, f64::max)
        .max(1e-9);
    let _ = writeln!(
        s,
        r#"<text x="10" y="{:.1}" font-size="13">Throughput: tasks finished per second ({:.3} s bins)</text>"#,
        thr_top - 12.0,
        bin_w
    );
    let bw = WIDTH / bins as f64;
    for (i, c) in finished_per_bin.iter().enumerate() {
        let rate = *c as f64 / bin_w;
        let h = rate / rate_max * CHART_H;
        let _ = writeln!(
            s,
            r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{h:.2}" fill="{C_THROUGHPUT}"><title>{c} finished in {:.2}-{:.2} s ({rate:.2}/s)</title></rect>"#,
            LEFT + i as f64 * bw,
            thr_top + CHART_H - h,
            (bw - 1.0).max(0.5),
            i as f64 * bin_w,
            (i + 1) as f64 * bin_w
        );
    }
    y_axis(s, thr_top + CHART_H, CHART_H, rate_max, "tasks/s", false);
    x_axis(s, thr_top + CHART_H, span, " s");

    // Slot utilisation: share of the slots busy, sampled. A bar covers the samples with
    // start <= at < end: one pass over the bars adds +1/-1 at those bounds.
    let samples = 200usize;
    let mut starts_ends = vec![0i64; samples + 2];
    for (_, _, start, end) in bars() {
        let (from, to) = (
            first_sample_from(start, t0, span, samples),
            first_sample_from(end, t0, span, samples),
        );
        if from < to {
            starts_ends[from] += 1;
            starts_ends[to] -= 1;
        }
    }
    let mut points = Vec::with_capacity(samples + 1);
    let mut busy_sum = 0.0;
    let mut busy = 0i64;
    for (i, change) in starts_ends.iter().enumerate().take(samples + 1) {
        busy += change;
        let u = busy.max(0) as f64 / lanes as f64;
        busy_sum += u;
        points.push(format!(
            "{:.1},{:.1}",
            LEFT + WIDTH * i as f64 / samples as f64,
            util_top + CHART_H - u * CHART_H
        ));
    }
    let mean_util = busy_sum / (samples + 1) as f64 * 100.0;
    let _ = writeln!(
        s,
        r#"<text x="10" y="{:.1}" font-size="13">Slot utilisation: share of the {lanes} slot(s) busy (mean {mean_util:.0}%)</text>"#,
        util_top - 12.0
    );
    let _ = writeln!(
        s,
        r#"<polyline fill="none" stroke="{C_UTIL}" stroke-width="1.5" points="{}"><title>mean utilisation {mean_util:.0}%</title></polyline>"#,
        points.join(" ")
    );
    y_axis(s, util_top + CHART_H, CHART_H, 100.0, "% busy", false);
    x_axis(s, util_top + CHART_H, span, " s");

    // Histogram of wall times of done tasks.
    let walls = || {
        all.iter()
            .filter(|t| t.state == TaskState::Done && t.wall_secs.is_finite() && t.wall_secs >= 0.0)
            .map(|t| t.wall_secs)
    };
    let hbins = 30usize;
    let wmax = walls().fold(0.0, f64::max).max(1e-9);
    let mut counts = vec![0usize; hbins];
    let mut walls_counted = 0usize;
    for w in walls() {
        let b = ((w / wmax) * hbins as f64).floor() as usize;
        counts[b.min(hbins - 1)] += 1;
        walls_counted += 1;
    }
    let cmax = counts.iter().cloned().max().unwrap_or(1).max(1);
    let _ = writeln!(
        s,
        r#"<text x="10" y="{:.1}" font-size="13">Histogram of task run times ({} done tasks)</text>"#,
        hist_top - 12.0,
        walls_counted
    );
    let hbw = WIDTH / hbins as f64;
    for (i, c) in counts.iter().enumerate() {
        let h = *c as f64 / cmax as f64 * CHART_H;
        let _ = writeln!(
            s,
            r##"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{h:.2}" fill="#6a9f58"><title>{c} tasks, {:.3}-{:.3} s</title></rect>"##,
            LEFT + i as f64 * hbw,
            hist_top + CHART_H - h,
            (hbw - 1.0).max(0.5),
            wmax * i as f64 / hbins as f64,
            wmax * (i + 1) as f64 / hbins as f64
        );
    }
    y_axis(s, hist_top + CHART_H, CHART_H, cmax as f64, "tasks", true);
    x_axis(s, hist_top + CHART_H, wmax, " s");
    s.push_str("</svg>\n");
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Wraps the SVG in a self-contained HTML page with the failed tasks (and their stderr)
/// and the retried tasks.
pub(crate) fn render_html(d: &ReportData<'_>) -> String {
    let mut h = String::new();
    let id = esc(&d.meta.id);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>mw report: {id}</title>\n<style>body{{font-family:sans-serif;margin:1em 2em}}pre{{background:#f4f4f4;padding:.5em;overflow-x:auto;max-height:20em}}td,th{{padding:2px 8px;text-align:left}}</style></head>\n<body>\n<h1>mw report: {id}</h1>\n<p>{n} tasks, interface {iface}.</p>\n",
        n = d.tasks.tasks.len(),
        iface = esc(&d.meta.interface)
    );
    write_svg(d, &mut h);
    let failed = d
        .tasks
        .tasks
        .iter()
        .filter(|t| t.state == TaskState::Failed)
        .count();
    if failed == 0 {
        h.push_str("<h2>Failed tasks</h2>\n<p>None.</p>\n");
    } else {
        let _ = writeln!(
            h,
            "<h2>Failed tasks ({failed}{})</h2>",
            if failed > d.failed.len() {
                format!(", the first {}", d.failed.len())
            } else {
                String::new()
            }
        );
        for t in d.failed.iter().take(LIST_FAILED) {
            let stderr = mw::task_logs::read(
                d.logs_dir,
                mw::TaskId(t.index),
                t.attempts.max(1),
                mw::task_logs::Stream::Stderr,
            )
            .map(|b| String::from_utf8_lossy(&b).into_owned());
            let _ = writeln!(
                h,
                "<h3 id=\"task-{i}\">task {i}: {exit} after {a} attempt(s)</h3>\n<p>input <code>{input}</code></p>",
                i = t.index,
                exit = esc(t.exit.as_deref().unwrap_or("")),
                a = t.attempts,
                input = esc(&truncate(&t.input.to_string(), 300))
            );
            let reason = crate::output::failure_reason(t.error.as_deref().unwrap_or(""));
            let _ = writeln!(h, "<p>{}</p>", esc(&reason));
            if let Some(err) = stderr {
                let tail = last_chars(&err, STDERR_SHOWN);
                let _ = writeln!(
                    h,
                    "<p>stderr (last attempt):</p><pre>{}</pre>",
                    esc_pre(&tail)
                );
            }
        }
    }
    let retried = || d.tasks.tasks.iter().filter(|t| t.attempts > 1);
    let _ = writeln!(h, "<h2>Retried tasks ({})</h2>", retried().count());
    if retried().next().is_none() {
        h.push_str("<p>None.</p>\n");
    } else {
        h.push_str("<table><tr><th>task</th><th>attempts</th><th>outcome</th></tr>\n");
        for t in retried().take(LIST_RETRIED) {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                t.index,
                t.attempts,
                t.state.as_str()
            );
        }
        h.push_str("</table>\n");
    }
    h.push_str("</body></html>\n");
    h
}

fn last_chars(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    format!("…{}", mw_bundle::text::tail(s, max))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed expectation is a test failure
    use super::*;

    /// A job of 50,000 tasks draws at most MAX_DRAWN_BARS of them and says so; 50,000 tasks on
    /// 50,000 (forged) hosts are grouped in one sort, not one pass per host.
    #[test]
    fn a_large_job_draws_a_bounded_timeline() {
        let meta = JobMeta {
            id: "big-1".into(),
            name: "big".into(),
            interface: "multicore".into(),
            workers: Some(2),
            job_text: String::new(),
            job_path: String::new(),
            created: 0.0,
        };
        let dir = std::path::PathBuf::from("/nonexistent");
        for many_hosts in [false, true] {
            let mut tasks = ReportTasks::default();
            if !many_hosts {
                tasks.hosts.push("h".into());
            }
            for i in 0..50_000u64 {
                let host = if many_hosts {
                    tasks.hosts.push(format!("h{i}"));
                    u32::try_from(i).unwrap()
                } else {
                    0
                };
                let start = (i / 2) as f64;
                tasks.push(
                    i,
                    TaskState::Done,
                    1,
                    (Some(start), Some(start + 1.0)),
                    1.0,
                    host,
                );
            }
            let d = ReportData {
                meta: &meta,
                tasks: &tasks,
                failed: &[],
                events: &[],
                logs_dir: &dir,
            };
            let svg = render_svg(&d);
            let bars = svg.matches("<title>task ").count();
            assert!(bars <= MAX_DRAWN_BARS, "{bars} bars drawn");
            assert!(bars >= MAX_DRAWN_BARS / 2, "{bars} bars drawn");
            assert!(svg.contains("1 in 3 of 50000 tasks drawn"), "no note");
        }
    }
}
