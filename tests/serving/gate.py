"""Injected forwards: hold the runtime's worker inside a batch, or make a forward fail, while a
test acts.

A runtime runs a forward through `model.forward`, or through `model.forward_stages` when the
batch may pause at block boundaries (preemption, on by default for a stitched model): an
injected forward replaces both, the staged one running it whole (no pause)."""

import threading


def patch_forward(monkeypatch, model, forward) -> None:
    """Serve `model` with `forward(x, subnet=0)` on both of the runtime's paths."""

    def forward_stages(x, subnet=0):
        return forward(x, subnet=subnet)
        yield  # unreachable: makes this a generator that never pauses

    monkeypatch.setattr(model, "forward", forward)
    monkeypatch.setattr(model, "forward_stages", forward_stages)


class Gate:
    """Patches the model's forward to block (once entered) until released."""

    def __init__(self, monkeypatch, model, times=1):
        self.entered, self.release = threading.Event(), threading.Event()
        self.calls = 0
        self.original = original = model.forward  # the unpatched forward, for expected outputs

        def forward(x, subnet=0):
            self.calls += 1
            if self.calls <= times:
                self.entered.set()
                self.release.wait(60)
            return original(x, subnet=subnet)

        patch_forward(monkeypatch, model, forward)
