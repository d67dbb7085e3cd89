"""The GPUs tab: this machine's GPUs through NVML, refreshed every few seconds."""

from __future__ import annotations

from textual import work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from diagnostics.nvml import GpuProbe, probe
from tui.views import gpu_rows, process_lines

REFRESH_SECONDS = 3.0
COLUMNS = ("cuda", "nvml", "name", "used / total", "free", "util", "temp", "power", "cc")


class GpusPane(Vertical):
    def compose(self) -> ComposeResult:
        yield Static("", id="gpus-status")
        yield DataTable(id="gpus-table", zebra_stripes=True, cursor_type="none")
        yield Static("", id="gpus-processes")

    def on_mount(self) -> None:
        self.query_one("#gpus-table", DataTable).add_columns(*COLUMNS)
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
        for row in gpu_rows(result):
            table.add_row(*(row[c] for c in COLUMNS))
        lines = process_lines(result)
        self.query_one("#gpus-processes", Static).update(
            ("processes holding memory:\n" + "\n".join(lines)) if lines else "no processes hold GPU memory")
