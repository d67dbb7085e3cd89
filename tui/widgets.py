"""Small widgets of the TUI: the memory bar, the spec summary, lists with vim keys. They display results;
they compute nothing."""

from __future__ import annotations

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable, OptionList, Static

from planner.memory import COMPONENTS
from planner.result import Estimate
from planner.units import fmt_count, fmt_gib, gib_unit

# j/k as in lazygit and k9s, beside the arrows
VIM_KEYS = [Binding("j", "cursor_down", "down", show=False), Binding("k", "cursor_up", "up", show=False)]


class KeyTable(DataTable):
    BINDINGS = VIM_KEYS


class KeyOptionList(OptionList):
    BINDINGS = VIM_KEYS

COLORS = {"weights": "dodger_blue2", "reference": "steel_blue", "generation": "magenta", "master_weights": "purple", "optimizer": "dark_orange3",
          "gradients": "gold3", "activations": "green3", "logits": "cyan", "temporaries": "grey50",
          "overhead": "grey35"}
LABELS = {"weights": "weights", "reference": "reference", "generation": "generation", "master_weights": "master", "optimizer": "optimizer", "gradients": "gradients",
          "activations": "activations", "logits": "logits", "temporaries": "temporaries", "overhead": "overhead"}


class MemoryBar(Static):
    """A stacked bar of the peak phase's components (plus overhead), scaled to the GPU when there is one."""

    _result: Estimate | None = None

    def on_resize(self) -> None:
        # The bar is drawn to the widget's width: redraw when the layout settles or the terminal changes.
        self.show(self._result)

    def show(self, result: Estimate | None) -> None:
        self._result = result
        if result is None:
            self.update("")
            return
        mem = result.memory
        parts = [(k, mem.peak.get(k, 0)) for k in COMPONENTS] + [("overhead", mem.overhead)]
        capacity = result.fit.capacity if result.fit else None
        scale = max(mem.total, capacity or 0) or 1
        width = max(20, self.size.width - 2 if self.size.width else 60)
        bar = Text()
        used = 0
        for key, value in parts:
            cells = round(value / scale * width)
            if value and not cells:
                cells = 1
            bar.append("█" * cells, style=COLORS[key])
            used += cells
        if capacity is not None:
            mark = min(width, round(capacity / scale * width))
            if mark >= used:
                bar.append(" " * (mark - used) + "▏", style="bold")
            else:
                bar.stylize("reverse", mark, min(used, mark + 1))
        unit, size = gib_unit(scale)
        legend = Text()
        for key, value in parts:
            if value:
                legend.append("■ ", style=COLORS[key])
                legend.append(f"{LABELS[key]} {value / size:.1f}  ")
        scale_note = f"{unit}; bar to {fmt_gib(scale, 1)}" + ("; ▏ marks the GPU" if capacity else "")
        self.update(Text.assemble(bar, "\n", legend, "\n", Text(scale_note, style="dim")))


class SpecSummary(Static):
    def show(self, result: Estimate | None, error: str | None = None) -> None:
        if error:
            self.update(Text(error, style="bold red"))
            return
        if result is None:
            self.update("")
            return
        m, p = result.model, result.params
        title = m.name + (f" → {m.stands_for}" if m.stands_for else "")
        heads = f"{m.heads}/{m.kv_heads}" if m.kv_heads != m.heads else str(m.heads)
        lines = [Text(title, style="bold"),
                 Text(f"{m.architecture} · {fmt_count(p.total)} params · {m.layers} layers · hidden {m.hidden_size}"),
                 Text(f"heads {heads} (head dim {m.head_dim}) · MLP {m.intermediate_size} · vocab {m.vocab_size:,}"
                      + (f" · context {m.context:,}" if m.context else "")),
                 Text(f"trainable {fmt_count(p.trainable)} ({p.trainable_fraction:.2%})"
                      + (f" · {m.experts}" if m.experts else ""), style="dim")]
        text = Text("\n").join(lines)
        if text != self.content:  # most form changes leave the model's summary as it was: no repaint
            self.update(text)
