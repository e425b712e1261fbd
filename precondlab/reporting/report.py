"""``precondlab report EXPERIMENT ...``: does a preconditioning make distillation faster, where,
and by how much, with intervals over seeds.

For each experiment and each curve metric (``traj_mse/nfe{k}``, ``fid/nfe{k}``, ...): the curves
of every method (mean and 95% band over seeds, seed counts shown), the best-so-far curves, the
iterations each method needs to reach several targets (the baseline's best-so-far at 25, 50, 75
and 100% of its training, and any ``--target``) as a speed-up against the baseline with a
bootstrap interval, the area under the best-so-far curve, and final values. Then what the
analytic teachers allow exactly (consistency gaps), the cost (wall clock, statistics), and what
was run (configs, commits, versions, machines). Written as Markdown beside PNG figures and as one
self-contained HTML file (figures inline); logged as artifacts of a report run in MLflow.
"""

from __future__ import annotations

import base64
import html
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from precondlab.reporting import stats
from precondlab.reporting.runs import COSTS, RunRecord, by_method

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)           # markdown paragraphs and tables
    figures: list[tuple[str, Path]] = field(default_factory=list)   # (caption, png)


@dataclass
class Report:
    title: str
    sections: list[Section]
    # (experiment, metric, target label, method) -> (Interval, or None unless every seed reached it; seeds reaching it; seeds)
    speedups: dict = field(default_factory=dict)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def _metric_order(metric: str) -> tuple:
    """The question's metrics first: trajectory error, FID, the FD substitute; then the others."""
    family, _, nfe = metric.partition("/")
    rank = {"traj_mse": 0, "fid": 1, "fd_classifier": 2, "align_mse": 3, "psnr": 4, "swd": 5}.get(family, 9)
    return rank, nfe


def _curve_figure(metric: str, groups: dict[str, list[RunRecord]], out: Path, best: bool, title: str) -> Path | None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drawn = False
    for method, runs in groups.items():
        curves = [r.curves[metric] for r in runs if r.curves.get(metric)]
        if best:
            curves = [stats.best_so_far(c, metric) for c in curves]
        if not curves:
            continue
        steps, table = stats.mean_curve(curves)
        if not steps:
            continue
        mean = table.mean(axis=0)
        (line,) = ax.plot(steps, mean, label=f"{method} (n={len(curves)})")
        if len(curves) > 1:
            bands = [stats.bootstrap_mean(table[:, i]) for i in range(len(steps))]
            ax.fill_between(steps, [b.low for b in bands], [b.high for b in bands], color=line.get_color(), alpha=0.2)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("training iteration")
    ax.set_ylabel(f"{'best-so-far ' if best else ''}{metric}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{_slug(title)}{'_best' if best else ''}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _speedup_figure(rows: list[tuple[str, str, stats.Interval | None, str]], out: Path, title: str) -> Path | None:
    """One line per (method, target): the speed-up and its interval, or "not reached" (seeds reaching it)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in rows if r[2] is None or math.isfinite(r[2].value)]
    if not any(r[2] is not None for r in rows):
        return None
    fig, ax = plt.subplots(figsize=(8.0, 0.35 * len(rows) + 1.2))
    labels = []
    for i, (method, target, interval, seeds) in enumerate(rows):
        if interval is None:   # drawn as a label, not as a speed-up of 0
            ax.plot([1.0], [i], marker="x", color="gray", ls="none")
            labels.append(f"{method} | {target} | not reached ({seeds} seeds)")
            continue
        lo = interval.low if math.isfinite(interval.low) else interval.value
        hi = interval.high if math.isfinite(interval.high) else interval.value
        ax.errorbar(interval.value, i, xerr=[[interval.value - lo], [hi - interval.value]], fmt="o", capsize=3)
        labels.append(f"{method} | {target}")
    ax.axvline(1.0, color="gray", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.set_xlabel("speed-up: baseline's iterations / method's (> 1: faster; x: not reached)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path = out / f"{_slug(title)}_speedup.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build(records: list[RunRecord], out: Path, baseline: str = "ctm", targets: dict | None = None,
          notes: list[str] | None = None, resamples: int = 2000, artifacts=None) -> Report:
    """The report's sections; figures are written to ``out``. ``targets`` maps a metric to extra
    target values; ``artifacts(run_id, path) -> local path or None`` fetches plots and configs."""
    out.mkdir(parents=True, exist_ok=True)
    targets = targets or {}
    sections: list[Section] = []
    speedups = {}
    experiments = sorted({r.experiment for r in records})
    overview = Section("Overview")
    overview.text.append(f"{len(records)} finished runs in {len(experiments)} experiment(s); baseline "
                         f"`{baseline}`; intervals are 95% percentile bootstrap intervals over seeds "
                         f"({resamples} resamples); `n` is the number of seeds.")
    overview.text.extend(f"- {note}" for note in (notes or []))
    sections.append(overview)

    for experiment in experiments:
        groups = by_method([r for r in records if r.experiment == experiment])
        runs_table = [[m, len(rs), ", ".join(str(r.seed) for r in rs), f"{min(r.steps for r in rs)}-{max(r.steps for r in rs)}"]
                      for m, rs in groups.items()]
        head = Section(f"Experiment `{experiment}`")
        head.text.append(_table(["method", "runs", "seeds", "iterations"], runs_table))
        if baseline not in groups:
            head.text.append(f"**No `{baseline}` runs here**: no speed-ups against it (choose another with --baseline).")
        sections.append(head)
        metrics = sorted({m for rs in groups.values() for r in rs for m in r.curves}, key=_metric_order)
        for metric in metrics:
            sections.append(_metric_section(experiment, metric, groups, baseline, targets.get(metric, []), out,
                                            resamples, speedups))
        sections.append(_cost_section(experiment, groups, resamples))
        gap = _gap_section(experiment, groups)
        if gap is not None:
            sections.append(gap)
        sections.append(_provenance_section(experiment, groups, out, artifacts))
    title = f"precondlab report: {', '.join(experiments)} ({time.strftime('%Y-%m-%d %H:%M')})"
    return Report(title, sections, speedups)


def _metric_section(experiment, metric, groups, baseline, extra_targets, out, resamples, speedups) -> Section:
    section = Section(f"{experiment}: {metric}")
    with_metric = {m: [r for r in rs if r.curves.get(metric)] for m, rs in groups.items()}
    missing = {m: len(groups[m]) - len(rs) for m, rs in with_metric.items() if len(rs) < len(groups[m])}
    if missing:
        section.text.append("Runs without this metric (left out here): " +
                            ", ".join(f"{m}: {k}" for m, k in missing.items()) + ".")
    with_metric = {m: rs for m, rs in with_metric.items() if rs}
    direction = "higher" if stats.higher_is_better(metric) else "lower"
    for best in (False, True):
        fig = _curve_figure(metric, with_metric, out, best, f"{experiment} {metric}")
        if fig is not None:
            what = "best-so-far value" if best else "value"
            section.figures.append((f"{metric} ({direction} is better): {what} per iteration, mean over seeds and "
                                    f"95% band", fig))
    # final values and area under the best-so-far curve
    common_end = min(r.steps for rs in with_metric.values() for r in rs) if with_metric else 0
    rows = []
    for method, rs in with_metric.items():
        finals = [r.curves[metric][-1][1] for r in rs]
        bests = [stats.best_so_far(r.curves[metric], metric)[-1][1] for r in rs]
        areas = [stats.area(r.curves[metric], metric, common_end) for r in rs]
        rows.append([method, stats.bootstrap_mean(finals, resamples).text(),
                     stats.bootstrap_mean(bests, resamples).text(), stats.bootstrap_mean(areas, resamples).text()])
    section.text.append(_table(["method", "final", "best", f"mean best-so-far over [0, {common_end}]"], rows))
    # iterations to targets, as speed-ups against the baseline
    if baseline not in with_metric:
        return section
    base_curves = [r.curves[metric] for r in with_metric[baseline]]
    target_list = stats.baseline_targets(base_curves, metric, FRACTIONS) + [(f"{v:g} (given)", v) for v in extra_targets]
    rows, plotted = [], []
    for label, value in target_list:
        base_iters = [stats.iterations_to(c, value, metric) for c in base_curves]
        for method, rs in with_metric.items():
            its = [stats.iterations_to(r.curves[metric], value, metric) for r in rs]
            reached = sum(math.isfinite(i) for i in its)
            mean_its = stats.bootstrap_mean([i for i in its if math.isfinite(i)], resamples)
            if method == baseline:
                rows.append([label, f"{value:.4g}", method, f"{reached}/{len(its)}", mean_its.text(), "1 (baseline)"])
                continue
            # a speed-up only where every seed reached the target: a mean over seeds that include
            # "never" is not a number of iterations (it used to show as a speed-up of 0)
            ratio = stats.bootstrap_ratio(base_iters, its, resamples) if reached == len(its) else None
            speedups[(experiment, metric, label, method)] = (ratio, reached, len(its))
            shown = ratio.text() if ratio is not None else f"never reached by {len(its) - reached} of {len(its)} seeds"
            if ratio is not None and not all(math.isfinite(i) for i in base_iters):
                shown += " (the baseline misses it in some seeds)"
            rows.append([label, f"{value:.4g}", method, f"{reached}/{len(its)}", mean_its.text(), shown])
            plotted.append((method, label, ratio, f"{reached}/{len(its)}"))
    section.text.append(f"Iterations to reach a target ({direction} is better; a run reaches a target when its "
                        f"best value so far is at or beyond it). Targets `P% (S it)`: the value every `{baseline}` "
                        f"run had reached by step S, P% of its training. Speed-up: `{baseline}`'s mean iterations "
                        f"over the method's (> 1: faster), with its 95% interval:")
    section.text.append(_table(["target", "value", "method", "seeds reaching it", "iterations", "speed-up"], rows))
    fig = _speedup_figure(plotted, out, f"{experiment} {metric}")
    if fig is not None:
        section.figures.append((f"speed-up against {baseline} per target (95% interval)", fig))
    return section


def _cost_section(experiment, groups, resamples) -> Section:
    section = Section(f"{experiment}: cost")
    keys = [k for k in COSTS if any(k in r.final for rs in groups.values() for r in rs)]
    rows = [[m] + [stats.bootstrap_mean([r.final[k] for r in rs if k in r.final], resamples).text() for k in keys]
            for m, rs in groups.items()]
    section.text.append(_table(["method"] + keys, rows) if keys else "No cost metrics were logged.")
    return section


def _gap_section(experiment, groups) -> Section | None:
    keys = sorted({k for rs in groups.values() for r in rs for k in r.final if k.startswith(("gap_t/", "gap_s/"))})
    if not keys:
        return None
    section = Section(f"{experiment}: exact consistency gaps (analytic teacher)")
    section.text.append("E|F* - D_ref|^2 / d of the best student of each preconditioning, against D(x_t, t) "
                        "(gap_t) and D(x_s, s) (gap_s), for the jumps the runs logged (lower: the student's job is "
                        "closer to the teacher's denoiser).")
    rows = []
    for m, rs in groups.items():
        if any(k in rs[0].final for k in keys):
            rows.append([m] + [f"{rs[0].final[k]:.4g}" if k in rs[0].final else "-" for k in keys])
    section.text.append(_table(["method"] + keys, rows))
    return section


def _provenance_section(experiment, groups, out, artifacts) -> Section:
    section = Section(f"{experiment}: what was run")
    rows = []
    for m, rs in groups.items():
        commits = sorted({r.tags.get("mlflow.source.git.commit", "?")[:12] + ("+dirty" if r.tags.get("precondlab.git_dirty") == "true" else "") for r in rs})
        versions = sorted({r.tags.get("precondlab.version", "?") for r in rs})
        machines = sorted({r.tags.get("precondlab.machine") or r.tags.get("precondlab.host", "?") for r in rs})
        rows.append([m, ", ".join(r.run_id[:8] for r in rs), ", ".join(commits), ", ".join(versions), "; ".join(machines)])
    section.text.append(_table(["method", "runs", "git commits", "precondlab", "machines"], rows))
    if artifacts is None:
        return section
    for m, rs in groups.items():
        first = rs[0]
        for name, caption in (("plots/l_s_curves.png", f"{m}: l_t and s_t of the generalized ODE"),
                              ("plots/coefficients.png", f"{m}: f and g against CTM's")):
            local = artifacts(first.run_id, name)
            if local is not None:
                dest = out / f"{_slug(experiment)}_{_slug(m)}_{Path(name).name}"
                dest.write_bytes(Path(local).read_bytes())
                section.figures.append((caption, dest))
        config = artifacts(first.run_id, "operative_config.gin")
        if config is not None:
            section.text.append(f"<details><summary>{m}: operative config of run {first.run_id[:8]}</summary>\n\n"
                                f"```\n{Path(config).read_text()}\n```\n</details>")
    return section


def write_markdown(report: Report, out: Path) -> Path:
    lines = [f"# {report.title}", ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for text in section.text:
            lines += [text, ""]
        for caption, path in section.figures:
            lines += [f"![{caption}]({path.name})", "", f"*{caption}*", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _md_table_to_html(text: str) -> str:
    rows = [line.strip().strip("|").split("|") for line in text.strip().splitlines() if not line.startswith("|---")]
    head, body = rows[0], rows[1:]
    return ("<table><thead><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr></thead><tbody>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in body)
            + "</tbody></table>")


def write_html(report: Report, out: Path) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
             "font-size:0.85em}img{max-width:100%}pre{background:#f6f6f6;padding:0.5em;overflow:auto;"
             "font-size:0.8em}</style></head><body>", f"<h1>{html.escape(report.title)}</h1>"]
    for section in report.sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for text in section.text:
            if text.startswith("| "):
                parts.append(_md_table_to_html(text))
            elif text.startswith("<details>"):
                summary, _, rest = text.partition("</summary>")
                code = rest.split("```")[1] if "```" in rest else rest
                parts.append(f"{summary}</summary><pre>{html.escape(code.strip())}</pre></details>")
            else:
                parts.append(f"<p>{html.escape(text)}</p>")
        for caption, path in section.figures:
            data = base64.b64encode(path.read_bytes()).decode()
            parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


__all__ = ["Report", "Section", "build", "write_html", "write_markdown"]
