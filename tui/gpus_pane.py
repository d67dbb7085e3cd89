"""The GPUs tab: this machine's GPUs through NVML, refreshed every few seconds."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from diagnostics.nvml import GpuProbe, probe
from planner.units import GIB

REFRESH_SECONDS = 3.0


class GpusPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("", id="gpus-status")
        yield DataTable(id="gpus-table", zebra_stripes=True, cursor_type="none")
        yield Static("", id="gpus-processes")

    def on_mount(self) -> None:
        self.query_one("#gpus-table", DataTable).add_columns("cuda", "nvml", "name", "used / total GiB", "free GiB", "util",
                                                       "temp", "power", "cc")
        self.refresh_gpus()
        self.set_interval(REFRESH_SECONDS, self._tick)

    def _tick(self) -> None:
        if self.is_on_screen:  # the tab is mounted at start-up: no NVML traffic while nobody looks at it
            self.refresh_gpus()

    @work(exclusive=True, thread=True, group="gpus")
    def refresh_gpus(self) -> None:
        result = probe()
        self.app.call_from_thread(self.show, result)

    def show(self, result: GpuProbe) -> None:
        status = self.query_one("#gpus-status", Static)
        table = self.query_one("#gpus-table", DataTable)
        table.clear()
        if result.status != "ok":
            status.update(f"[b]No NVIDIA GPU here.[/]\n{result.reason}\n\nPlans use the catalog GPU chosen on the "
                          "Plan tab; `ftplan gpus` says the same from a shell.")
            table.display = False
            return
        table.display = True
        status.update(f"driver {result.driver_version}, CUDA {result.cuda_driver_version}"
                      + (f", CUDA_VISIBLE_DEVICES={result.cuda_visible_devices!r}"
                         if result.cuda_visible_devices is not None else "") + f" — refreshed every {REFRESH_SECONDS:g} s")
        for g in result.gpus:
            used = (f"{g.memory_used / GIB:.1f} / {g.memory_total / GIB:.1f}" if g.memory_total is not None
                    and g.memory_used is not None else "lost")
            table.add_row("–" if g.cuda_index is None else str(g.cuda_index), g.label.removeprefix("GPU "), g.name,
                          used, "–" if g.memory_free is None else f"{g.memory_free / GIB:.1f}",
                          "–" if g.utilization_gpu is None else f"{g.utilization_gpu}%",
                          "–" if g.temperature_c is None else f"{g.temperature_c}°C",
                          "–" if g.power_w is None else f"{g.power_w:.0f} W", g.compute_capability or "–")
        lines = [f"{g.label}: pid {p.pid} {p.name or ''} "
                 + ("?" if p.used_memory is None else f"{p.used_memory / GIB:.2f} GiB") + (" (ftplan)" if p.own else "")
                 for g in result.gpus for p in g.processes]
        self.query_one("#gpus-processes", Static).update(
            ("processes holding memory:\n" + "\n".join(lines)) if lines else "no processes hold GPU memory")
