"""The one table (terminal and Markdown), the JSON file and the chart."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks.limits import CPU_GAPS_US, rate_after_cpu
from benchmarks.spec import LIMIT_FOR, METRICS, TITLES, WORKLOADS

TIMES = "\u00d7"  # the multiplication sign
PEERS = ("dbos", "temporal")
PEER_LABELS = {"dbos": "DBOS", "temporal": "Temporal"}


@dataclass
class Result:
    system: str  # perdure | dbos | temporal | limit
    backend: str  # sqlite | postgres | sqlite-normal | dev-server
    workload: str  # W1..W7 | L
    status: str = "ok"  # ok | error | timeout | unavailable | skipped
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "backend": self.backend,
            "workload": self.workload,
            "status": self.status,
            "metrics": self.metrics,
            "error": self.error,
        }


class Results:
    def __init__(self, results: list[Result]) -> None:
        self.results = results

    def get(self, system: str, backend: str, workload: str) -> Result | None:
        for r in self.results:
            if r.system == system and r.backend == backend and r.workload == workload:
                return r
        return None

    def peer_backend(self, peer: str, backend: str) -> str:
        # Temporal's dev server has a store of its own; its figures face both backends.
        return "dev-server" if peer == "temporal" else backend


def fmt(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit == "ms" or unit == "s":
        text = f"{value:.3g}" if value < 100 else f"{value:,.0f}"
        return f"{text} {unit}"
    if unit == "KB":
        return f"{value:,.1f} KB"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def ratio_text(value: float | None) -> str:
    if value is None or value <= 0 or math.isnan(value):
        return "—"
    return f"{value:.3g}{TIMES}" if value < 100 else f"{value:,.0f}{TIMES}"


def _cell(result: Result | None, key: str, unit: str) -> tuple[str, float | None]:
    if result is None:
        return "—", None
    if result.status != "ok":
        short = {"unavailable": "n/a", "error": "error", "timeout": "timeout"}.get(
            result.status, result.status
        )
        return short, None
    value = result.metrics.get(key)
    if value is None:
        return "—", None
    return fmt(float(value), unit), float(value)


@dataclass
class Row:
    workload: str
    metric: str
    backend: str
    perdure: str
    limit: str
    peers: dict[str, str]
    vs_limit: str
    vs_peers: dict[str, str]
    target: str
    values: dict[str, float | None]  # raw numbers for the chart


def _target(
    workload: str,
    key: str,
    backend: str,
    p: float | None,
    lim: float | None,
    peer: dict[str, float | None],
) -> str:
    def mark(ok: bool) -> str:
        return "✓" if ok else "✗"

    if p is None:
        return ""
    if workload == "W2" and key == "steps_per_s":
        parts = []
        if peer.get("dbos"):
            parts.append(f"≥20{TIMES} DBOS {mark(p / peer['dbos'] >= 20)}")  # type: ignore[operator]
        if peer.get("temporal"):
            parts.append(f"≥50{TIMES} Temporal {mark(p / peer['temporal'] >= 50)}")  # type: ignore[operator]
        return ", ".join(parts)
    if workload == "W1" and peer.get("dbos"):
        return f"≥10{TIMES} DBOS {mark(p / peer['dbos'] >= 10)}"  # type: ignore[operator]
    if workload == "W4" and lim:
        return f"≥50% of limit {mark(p / lim >= 0.5)}"
    if workload == "W3" and key == "p50_ms" and lim:
        return f"≤3{TIMES} commit latency {mark(p <= 3 * lim)}"
    if workload == "W6" and key == "kb_per_workflow":
        return f"≤20 KB {mark(p <= 20)}"
    if workload == "W6" and key == "complete_after_last_signal_s" and backend == "sqlite":
        return f"≤3 s {mark(p <= 3)}"
    if workload == "W7":
        return f"≤1 s {mark(p <= 1)}"
    return ""


def build_rows(
    results: Results, backends: list[str], peers: list[str], workloads: list[str]
) -> list[Row]:
    rows: list[Row] = []
    for workload in WORKLOADS:
        if workload not in workloads:
            continue
        for metric in METRICS[workload]:
            for backend in backends:
                mine = results.get("perdure", backend, workload)
                p_text, p = _cell(mine, metric.key, metric.unit)
                limit_key = LIMIT_FOR.get((workload, metric.key))
                lim_text, lim = "—", None
                if limit_key is not None:
                    lim_unit = "ms" if limit_key.endswith("_ms") else metric.unit
                    lim_text, lim = _cell(results.get("limit", backend, "L"), limit_key, lim_unit)
                peer_text: dict[str, str] = {}
                peer_val: dict[str, float | None] = {}
                vs_peer: dict[str, str] = {}
                for peer in peers:
                    if backend == "sqlite-normal":
                        peer_text[peer], peer_val[peer] = "—", None
                        vs_peer[peer] = "—"
                        continue
                    pr = results.get(peer, results.peer_backend(peer, backend), workload)
                    peer_text[peer], peer_val[peer] = _cell(pr, metric.key, metric.unit)
                    comparable = True
                    if workload == "W6" and pr is not None and mine is not None:
                        n_peer = pr.metrics.get("workflows")
                        n_mine = mine.metrics.get("workflows")
                        if n_peer and n_peer != n_mine:
                            peer_text[peer] += f" (n={n_peer:,})"
                            comparable = metric.key == "kb_per_workflow"
                    if (
                        peer == "temporal"
                        and metric.key == "kb_per_workflow"
                        and pr
                        and pr.status == "ok"
                    ):
                        server = pr.metrics.get("server_kb_per_workflow")
                        if server is not None:
                            peer_text[peer] += f" + {server:,.0f} KB server"
                    vs_peer[peer] = (
                        ratio_text(p / peer_val[peer])  # type: ignore[operator]
                        if comparable and p is not None and peer_val[peer]
                        else "—"
                    )
                vs_limit = ratio_text(p / lim) if p is not None and lim else "—"
                rows.append(
                    Row(
                        workload=workload,
                        metric=metric.label + (" ↑" if metric.higher_is_better else " ↓"),
                        backend=backend,
                        perdure=p_text,
                        limit=lim_text,
                        peers=peer_text,
                        vs_limit=vs_limit,
                        vs_peers=vs_peer,
                        target=_target(workload, metric.key, backend, p, lim, peer_val),
                        values={"perdure": p, "limit": lim, **peer_val},
                    )
                )
    return rows


LIMIT_ROWS = [
    ("single_commits_per_s", "single-row commits/s, 1 client", "/s"),
    ("single_p50_ms", "single-row commit p50, 1 client", "ms"),
    ("batch_commits_per_s", "100-row commits/s, 1 client", "/s"),
    ("batch1_rows_per_s", "rows/s in 100-row commits, 1 client", "/s"),
    ("batch_rows_per_s", "rows/s in 100-row commits, best", "/s"),
    ("single64_commits_per_s", "single-row commits/s, 64 clients", "/s"),
    ("batch64_rows_per_s", "rows/s in 100-row commits, 64 clients", "/s"),
    *[
        (
            f"after_cpu_{us}us_commits_per_s",
            f"single-row commits/s, 1 client, {us / 1000:g} ms of CPU before each",
            "/s",
        )
        for us in CPU_GAPS_US
    ],
    ("after_cpu_300us_p50_ms", "single-row commit p50, 0.3 ms of CPU before each", "ms"),
    ("floor_steps_per_s", "sequential steps/s, bare asyncio loop (floor.py)", "/s"),
    ("floor_cpu_ms", "CPU per step, bare asyncio loop (floor.py)", "ms"),
]


def _cpu_against_limit(
    results: Results, backends: list[str], workload: str, cpu_key: str
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any], float, float]]:
    """(backend, perdure's metrics, the limit's, perdure's CPU, a raw commit's CPU) for
    each backend where both ran and both CPU figures were measured."""
    for backend in backends:
        mine = results.get("perdure", backend, workload)
        limit = results.get("limit", backend, "L")
        if mine is None or limit is None or mine.status != "ok" or limit.status != "ok":
            continue
        cpu = mine.metrics.get(cpu_key)
        commit_cpu = limit.metrics.get("single_cpu_ms")
        if isinstance(cpu, float) and isinstance(commit_cpu, float):
            yield backend, mine.metrics, limit.metrics, cpu, commit_cpu


def w3_bound_notes(results: Results, backends: list[str]) -> list[str]:
    """W3 read the same way: its round trip is two commits (the start with the first
    step, then the close), with the engine's CPU around them."""
    notes = []
    for backend, mine, limit, cpu, commit_cpu in _cpu_against_limit(
        results, backends, "W3", "cpu_ms_per_round_trip"
    ):
        p50 = mine.get("p50_ms")
        single = limit.get("single_p50_ms")
        if not p50 or not single:
            continue
        extra = max(0.0, cpu - 2 * commit_cpu)
        rate = rate_after_cpu(limit, extra / 2)
        if rate is None:
            continue
        two = 2 / rate * 1000
        note = (
            f"W3 ({backend}): a round trip is two commits and costs perdure's process "
            f"{cpu:.3f} ms of CPU, {extra:.3f} ms more than two raw single-row commits; two "
            f"raw commits with {extra / 2:.3f} ms of CPU before each take {two:.2f} ms, "
            f"{two / single:.1f}x the single-row commit p50 ({single:.3f} ms; the target is "
            f"3x); perdure's p50 is {p50:.2f} ms"
        )
        store = mine.get("store_p50_ms")
        if isinstance(store, float):
            note += (
                f"; the same two commits through perdure's store alone, with no worker and "
                f"no workflow code (benchmarks/store_trip.py), have a p50 of {store:.2f} ms, "
                f"{store / single:.1f}x the single-row p50"
            )
            if store > 3 * single:
                note += (
                    " (writing the run's row and history and then closing it costs more "
                    "than the target before any engine code runs)"
                )
        notes.append(note)
    return notes


_FLOOR = (
    "a bare asyncio loop doing only what every step of any engine does "
    "(benchmarks/floor.py) reaches"
)
_STORE_ALONE = (
    "the same steps through perdure's store alone, with no worker and no workflow code "
    "(benchmarks/store_trip.py), reach"
)


def _reaches(what: str, rate: float, cpu_ms: float, back_to_back: float) -> str:
    """A loop read against the back-to-back limit: its rate, share and CPU a step."""
    return (
        f"; {what} {rate:,.0f}/s, {rate / back_to_back:.0%} of back-to-back, "
        f"at {cpu_ms:.3f} ms of CPU a step"
    )


def w4_bound_notes(results: Results, backends: list[str]) -> list[str]:
    """W4 read against a raw commit loop that spends perdure's CPU per step between
    its commits: how much of the gap to the back-to-back limit is the CPU's own cost,
    and how much the engine's."""
    notes = []
    for backend, mine, limit, cpu, commit_cpu in _cpu_against_limit(
        results, backends, "W4", "cpu_ms_per_step"
    ):
        steps = mine.get("steps_per_s")
        back_to_back = limit.get("single_commits_per_s")
        # The raw loop's own commit costs CPU too (SQLite's WAL writes, the driver):
        # what the engine adds is the rest.
        extra = max(0.0, cpu - commit_cpu)
        bound = rate_after_cpu(limit, extra)
        if bound is None or not steps or not back_to_back:
            continue
        note = (
            f"W4 ({backend}): a step costs perdure's process {cpu:.3f} ms of CPU, "
            f"{extra:.3f} ms more than a raw single-row commit ({commit_cpu:.3f} ms; the "
            f"server's not counted); a raw loop spending {extra:.3f} ms before each commit "
            f"reaches {bound:,.0f}/s, {bound / back_to_back:.0%} of the back-to-back "
            f"{back_to_back:,.0f}/s (a commit that follows work is slower); perdure's "
            f"{steps:,.0f} steps/s are {steps / bound:.0%} of that"
        )
        floor, floor_cpu = limit.get("floor_steps_per_s"), limit.get("floor_cpu_ms")
        if isinstance(floor, float) and isinstance(floor_cpu, float):
            note += _reaches(_FLOOR, floor, floor_cpu, back_to_back)
            note += f": perdure's step costs {cpu / floor_cpu:.1f}x its CPU"
        store, store_cpu = mine.get("store_steps_per_s"), mine.get("store_cpu_ms_per_step")
        if isinstance(store, float) and isinstance(store_cpu, float):
            note += _reaches(_STORE_ALONE, store, store_cpu, back_to_back)
        pages = mine.get("wal_pages_per_commit")
        raw_pages = limit.get("single_wal_pages_per_commit")
        if isinstance(pages, float) and isinstance(raw_pages, float):
            note += (
                f"; each of its commits wrote {pages:.1f} pages to the WAL, the raw loop's "
                f"{raw_pages:.1f} (the raw loop: its row and its index entry; a W4 step: the "
                "page its events go to, and on many appends SQLite rebalances the "
                "history's B-tree leaves: three pages more)"
            )
        notes.append(note)
    return notes


def limit_rows(results: Results, backends: list[str]) -> list[tuple[str, str, str]]:
    out = []
    for key, label, unit in LIMIT_ROWS:
        for backend in backends:
            r = results.get("limit", backend, "L")
            if r is None:
                continue
            if r.status == "ok" and key not in r.metrics:
                continue
            text, _ = _cell(r, key, unit)
            out.append((label, backend, text))
    return out


def _headers(peers: list[str]) -> list[str]:
    return [
        "W",
        "metric",
        "backend",
        "perdure",
        "DB limit",
        *[PEER_LABELS[p] for p in peers],
        "perdure/limit",
        *[f"perdure/{PEER_LABELS[p]}" for p in peers],
        "issue 5 target",
    ]


def _cells(row: Row, peers: list[str]) -> list[str]:
    return [
        row.workload,
        row.metric,
        row.backend,
        row.perdure,
        row.limit,
        *[row.peers.get(p, "—") for p in peers],
        row.vs_limit,
        *[row.vs_peers.get(p, "—") for p in peers],
        row.target,
    ]


def rich_table(rows: list[Row], limits: list[tuple[str, str, str]], peers: list[str]) -> Any:
    from rich.table import Table

    table = Table(title="perdure benchmarks (issue 5)", show_lines=False, header_style="bold")
    for i, h in enumerate(_headers(peers)):
        table.add_column(h, justify="left" if i < 3 or h == "issue 5 target" else "right")
    previous = None
    for row in rows:
        if previous is not None and row.workload != previous:
            table.add_section()
        previous = row.workload
        table.add_row(*_cells(row, peers))
    if limits:
        table.add_section()
        width = len(_headers(peers))
        for label, backend, text in limits:
            table.add_row("DB", label, backend, "", text, *[""] * (width - 5))
    return table


def markdown_table(rows: list[Row], limits: list[tuple[str, str, str]], peers: list[str]) -> str:
    headers = _headers(peers)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(row, peers)) + " |")
    if limits:
        lines += ["", "| database limit | backend | value |", "|---|---|---|"]
        for label, backend, text in limits:
            lines.append(f"| {label} | {backend} | {text} |")
    return "\n".join(lines)


def workload_legend() -> str:
    return "\n".join(f"- **{w}**: {TITLES[w]}" for w in WORKLOADS)


def chart(rows: list[Row], peers: list[str], backends: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {  # metric -> short label for the x axis
        ("W1", "workflows/s"): "W1 workflows/s",
        ("W2", "steps/s"): "W2 steps/s",
        ("W4", "steps/s"): "W4 steps/s",
        ("W5", "children/s (fan-out + gather)"): "W5 children/s",
        ("W3", "p50 latency"): "W3 p50 (ms)",
        ("W6", "memory per waiting wf"): "W6 KB per wf",
        ("W6", "all done after last signal"): "W6 done after\nsignals (s)",
        ("W7", "time to next step"): "W7 to next\nstep (s)",
    }

    def picked(r: Row) -> bool:
        return (r.workload, r.metric[:-2]) in shown and r.backend in backends

    up = [r for r in rows if r.metric.endswith("↑") and picked(r)]
    down = [r for r in rows if r.metric.endswith("↓") and picked(r)]
    series = ["perdure", *peers, "limit"]
    colors = {"perdure": "#1f77b4", "dbos": "#ff7f0e", "temporal": "#2ca02c", "limit": "#7f7f7f"}
    labels = {"perdure": "perdure", "limit": "DB limit", **PEER_LABELS}
    fig, axes = plt.subplots(2, 1, figsize=(11, 7.5), dpi=80)
    for ax, group, title in (
        (axes[0], up, "higher is better (log scale)"),
        (axes[1], down, "lower is better (log scale)"),
    ):
        names = [f"{shown[(r.workload, r.metric[:-2])]}\n{r.backend}" for r in group]
        width = 0.8 / len(series)
        for j, s in enumerate(series):
            xs, ys = [], []
            for i, r in enumerate(group):
                v = r.values.get(s)
                if v:
                    xs.append(i + (j - (len(series) - 1) / 2) * width)
                    ys.append(v)
            ax.bar(xs, ys, width=width, label=labels[s], color=colors[s])
        ax.set_yscale("log")
        ax.set_xticks(range(len(group)))
        ax.set_xticklabels(names, fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", which="major", alpha=0.3)
    axes[0].legend(fontsize=8, ncol=len(series))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
