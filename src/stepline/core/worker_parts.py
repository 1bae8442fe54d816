"""What a ``Worker`` is composed of: a source of functions (which ones exist now, and which the next claim may take)
and an executor of claimed runs. The in-process worker uses ``StaticFunctions`` and ``core.executor.Executor``; the
server's worker (``server/http_worker.py``) the registry's HTTP functions, with a per-app claim limit, and
``HttpExecutor``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol, TypeVar

from stepline.core.function import FunctionDef, FunctionSpec
from stepline.core.triggers import CronTrigger
from stepline.storage.records import ClaimedRun


class ClaimableFunction(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def gates_claims(self) -> bool:
        """Its runs are claimed through flow control (concurrency limits, priority)."""
        ...


F = TypeVar("F", bound=ClaimableFunction)
F_contra = TypeVar("F_contra", bound=ClaimableFunction, contravariant=True)
F_co = TypeVar("F_co", bound=ClaimableFunction, covariant=True)


class LeaseHolder(Protocol):
    """A run in flight, as lease renewal sees it (``StepDriver`` in-process)."""

    stop: BaseException | None
    lease_until: int | None


class RunExecutor(Protocol[F_contra]):
    @property
    def drivers(self) -> Mapping[str, LeaseHolder]:
        """Run id -> the live execution of that run."""
        ...

    async def execute(self, fn: F_contra, claimed: ClaimedRun) -> None: ...


class FunctionSource(Protocol[F_co]):
    @property
    def functions(self) -> Mapping[str, F_co]:
        """The functions now (a new mapping object whenever the set changes)."""
        ...

    @property
    def concurrency(self) -> int | None:
        """Most runs executing at once for this set (None: the worker's own ``concurrency``)."""
        ...

    async def refresh(self) -> None:
        """Before a claim: learn of functions added or removed (e.g. apps synced by another node)."""

    def claimable(self, active: Iterable[str], free: int) -> tuple[list[str] | None, int]:
        """Given the function ids of the runs executing and the free slots: the functions the next claim may take
        (None: all of them) and at most how many runs."""
        ...

    def cron_specs(self) -> list[FunctionSpec]:
        """The routing specs of the cron functions, for the scheduler."""
        ...


class StaticFunctions:
    """The functions of an in-process app: fixed."""

    concurrency = None

    def __init__(self, functions: Iterable[FunctionDef]) -> None:
        self.functions: dict[str, FunctionDef] = {f.id: f for f in functions}

    async def refresh(self) -> None:
        pass

    def claimable(self, active: Iterable[str], free: int) -> tuple[list[str] | None, int]:
        return None, free

    def cron_specs(self) -> list[FunctionSpec]:
        return [
            FunctionSpec.from_record(f.record())
            for f in self.functions.values()
            if any(isinstance(t, CronTrigger) for t in f.triggers)
        ]
