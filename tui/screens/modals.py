"""Small screens over the dashboard: confirm quitting a run, pick a model, help."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList, Static

MODAL_CSS = """
{name} {{ align: center middle; }}
{name} > Vertical {{
    width: auto; max-width: 90%; height: auto; max-height: 90%;
    padding: 1 2; border: thick $primary; background: $surface;
}}
"""


class ConfirmQuit(ModalScreen[bool]):
    """Quitting ends the run: asked once, answered with y or n."""

    DEFAULT_CSS = MODAL_CSS.format(name="ConfirmQuit")
    BINDINGS = [Binding("y", "answer(True)", "Yes, end the run"),
                Binding("n,escape", "answer(False)", "No, keep running")]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("End the run? The record is closed properly. [y/n]", markup=False)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class ModelPicker(ModalScreen[str | None]):
    """The models the backend serves (or the local presets); Enter switches to one."""

    DEFAULT_CSS = MODAL_CSS.format(name="ModelPicker")
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, models: list[str], current: str) -> None:
        super().__init__()
        self.models, self.current = models, current

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Switch model (Enter; Esc cancels). In-flight requests finish on the "
                        "old one.", markup=False)
            # names come from the server: untrusted, shown as plain text
            yield OptionList(*[Content(m + ("  (now)" if m == self.current else ""))
                               for m in self.models])

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.models[event.option_index])

    def action_cancel(self) -> None:
        self.dismiss(None)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = MODAL_CSS.format(name="HelpScreen")
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close")]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Content(self.text))

    def action_close(self) -> None:
        self.dismiss(None)
