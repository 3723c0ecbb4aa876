"""serve()'s guard against a silent black hole: a model that was ready and stopped serving stops the server."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from tritonkit.defaults import WATCHDOG_GRACE_S, WATCHDOG_INTERVAL_S
from tritonkit.errors import UserError

if TYPE_CHECKING:
    from tritonkit.serve import EmbeddedServer

LOG = logging.getLogger(__name__)


class ModelStoppedServing(UserError):
    """A model that was ready stopped serving while the server runs (raised by serve()'s watchdog)."""


class Watchdog:
    """Every `interval_s`, the models that were healthy at start must still be
    (`EmbeddedServer.unhealthy_models`); one that stays unhealthy for `grace_s` (a server may recover it
    meanwhile: a restarted stub counts again) raises ModelStoppedServing naming it."""

    def __init__(self, server: EmbeddedServer, interval_s: float = WATCHDOG_INTERVAL_S,
                 grace_s: float = WATCHDOG_GRACE_S):
        self.server, self.interval_s, self.grace_s = server, interval_s, grace_s
        server.mark_healthy()
        self._next = time.monotonic() + interval_s
        self._since: dict[str, float] = {}

    def check(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval_s
        problems = self.server.unhealthy_models()
        for name in problems:
            if name not in self._since:
                LOG.warning("model %s is unhealthy: %s", name, problems[name])
        self._since = {name: self._since.get(name, now) for name in problems}  # recovered ones drop out
        for name, since in sorted(self._since.items()):
            if now - since >= self.grace_s:
                raise ModelStoppedServing(
                    f"model {name} stopped serving: {problems[name]}; unhealthy for {now - since:.1f} s, so "
                    f"tritonkit stops the server instead of leaving a model that fails every request\n"
                    f"{self.server.log_excerpt()}",
                    where=str(self.server.options.repository),
                    fix=f"restart `tritonkit serve` (a supervisor's restart policy does this); the log may say "
                        f"why the stub died: {self.server.log_path}")
