"""A forward that blocks: hold the runtime's worker inside a batch while a test acts."""

import threading


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

        monkeypatch.setattr(model, "forward", forward)
