"""Where and how a chapter runs: device, seeding, run profile, data directory.

Every chapter declares its budget for each profile once, at the top, and opens with
:func:`start_chapter` (environment report, seeding, device, the budget of this run), so no
chapter carries scattered ``if profile == ...`` checks.
"""

from __future__ import annotations

import atexit
import os
import platform
import random
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch

PROFILES: tuple[str, ...] = ("smoke", "cpu", "gpu")
"""The run profiles: ``smoke`` proves every cell runs (CI), ``cpu`` gives results worth
reading on a laptop, ``gpu`` runs the full recipe on a CUDA device."""

PROFILE_ENV = "TUTORIAL_PROFILE"
DATA_DIR_ENV = "TUTORIAL_DATA_DIR"
RESULTS_DIR_ENV = "TUTORIAL_RESULTS_DIR"
"""Where result records go (:func:`tutorial_lib.results.results_dir`)."""
OFFLINE_ENV = "TUTORIAL_OFFLINE"
"""Set to 1 to skip every download attempt (data sets and pretrained weights)."""
HF_OFFLINE_ENV = "HF_HUB_OFFLINE"
"""Hugging Face's own switch; it also stops :mod:`tutorial_lib.weights` from trying the Hub."""
NONINTERACTIVE_ENV = "TUTORIAL_NONINTERACTIVE"
"""Set to 1 for executions nobody watches (book build, nbmake, scripts): no progress bars."""

_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})

BudgetT = TypeVar("BudgetT")


class UnknownProfileError(ValueError):
    """Raised when a profile name is not one of :data:`PROFILES`."""


def env_flag(name: str) -> bool:
    """Return whether the environment variable ``name`` is switched on (``1``, ``true``, ``yes``
    or ``on``, any case) or off (unset, empty, ``0``, ``false``, ``no`` or ``off``). The one
    parser of the project's boolean flags.

    Raises:
        ValueError: for any other value (``TUTORIAL_OFFLINE=2`` or ``=y`` would otherwise mean
            "off" without a word, and a machine without network would wait on every hub).
    """
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    raise ValueError(
        f"{name}={os.environ[name]!r} is neither on ({', '.join(sorted(_TRUE_WORDS))}) nor off "
        f"({', '.join(sorted(w for w in _FALSE_WORDS if w))}, or unset)"
    )


def offline() -> bool:
    """Return whether downloads are switched off: ``TUTORIAL_OFFLINE`` or ``HF_HUB_OFFLINE``."""
    return env_flag(OFFLINE_ENV) or env_flag(HF_OFFLINE_ENV)


def interactive() -> bool:
    """Return whether someone may be watching (no ``TUTORIAL_NONINTERACTIVE``): progress bars."""
    return not env_flag(NONINTERACTIVE_ENV)


def escape_math(text: str) -> str:
    """Return ``text`` with every ``$`` escaped as ``\\$``: the book renders Markdown outputs
    as MyST, where ``$...$`` is math, so ``$TUTORIAL_DATA_DIR`` would otherwise vanish into a
    formula."""
    return text.replace("$", "\\$")


def notice(message: str) -> None:
    """Show ``message`` as one clearly marked block: a note the reader must not miss (a data or
    weights fallback, a budget adapted to the data there is).

    In a notebook it is displayed as a Markdown block quote (the built book renders it as a
    highlighted note); elsewhere it is printed as one line starting with ``NOTICE:``.
    """
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display

        in_kernel = get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except ImportError:
        in_kernel = False
    if in_kernel:
        quoted = escape_math(message).replace("\n", "\n> ")
        display(Markdown("> **Notice** — " + quoted))
    else:
        print(f"NOTICE: {message}")


def get_device() -> torch.device:
    """Return the device to compute on: the current CUDA device when present, else Apple's MPS
    (Metal) device when present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_profile() -> str:
    """Return the run profile.

    ``TUTORIAL_PROFILE`` wins when set; otherwise ``gpu`` when CUDA is available, else ``cpu``.

    Raises:
        UnknownProfileError: if ``TUTORIAL_PROFILE`` names no known profile.
    """
    requested = os.environ.get(PROFILE_ENV, "").strip().lower()
    if not requested:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if requested not in PROFILES:
        raise UnknownProfileError(
            f"{PROFILE_ENV}={os.environ[PROFILE_ENV]!r} is not a run profile; "
            f"use one of {', '.join(PROFILES)} (or unset it to choose automatically)."
        )
    return requested


def select_budget(budgets: Mapping[str, BudgetT], profile: str | None = None) -> BudgetT:
    """Return the budget a chapter declared for the current (or the given) profile.

    ``budgets`` must map every profile in :data:`PROFILES` and nothing else, so that a
    chapter cannot forget one.

    Raises:
        ValueError: if ``budgets`` misses a profile or names an unknown one.
        UnknownProfileError: if ``profile`` (or ``TUTORIAL_PROFILE``) is unknown.
    """
    missing = [name for name in PROFILES if name not in budgets]
    extra = [name for name in budgets if name not in PROFILES]
    if missing or extra:
        raise ValueError(
            f"a budget must give exactly the profiles {PROFILES}; "
            f"missing {missing}, unknown {extra}"
        )
    chosen = get_profile() if profile is None else profile
    if chosen not in PROFILES:
        raise UnknownProfileError(f"profile {chosen!r} is not one of {', '.join(PROFILES)}")
    return budgets[chosen]


def seed_everything(seed: int = 0, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a seeded torch generator.

    With ``deterministic`` the cheap determinism switches are set too (cuDNN picks
    deterministic kernels and skips autotuning); ops without a deterministic version still run.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def project_root(start: Path | None = None) -> Path | None:
    """Return the checkout this code runs in (the folder holding ``_toc.yml``), or ``None``."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "_toc.yml").is_file() and (folder / "tutorial_lib").is_dir():
            return folder
    return None


def _configured_or_checkout_folder(variable: str, name: str) -> Path:
    """Return the folder the environment variable ``variable`` names, else ``name`` at the top
    of the checkout (so chapters executed from ``chapters/`` share one copy), else ``./name``.
    The one rule behind :func:`data_dir` and :func:`tutorial_lib.results.results_dir`."""
    configured = os.environ.get(variable)
    if configured:
        return Path(configured).expanduser().resolve()
    root = project_root()
    return (root / name) if root is not None else (Path.cwd() / name).resolve()


def data_dir() -> Path:
    """Return the data directory: ``TUTORIAL_DATA_DIR`` if set, else ``data/`` at the top of
    the checkout (so chapters executed from ``chapters/`` share one copy), else ``./data``."""
    return _configured_or_checkout_folder(DATA_DIR_ENV, "data")


def display_path(path: Path | str) -> str:
    """Return ``path`` as a reader should see it on a page: relative to the folder it lives in
    rather than as the absolute path of the machine that ran the code.

    ``$TUTORIAL_DATA_DIR/...`` and ``$TUTORIAL_RESULTS_DIR/...`` when those variables hold it;
    ``tutorial_lib/...`` inside the package (the bundled samples); ``data/...`` or
    ``results/...`` inside the checkout; ``<site-packages>/...`` for installed packages;
    ``<temporary folder>/...`` and ``~/...`` for the temporary folder and the home folder.
    Anything else is returned unchanged.
    """
    import site
    import sysconfig

    resolved = Path(path).expanduser().resolve()
    package = Path(__file__).resolve().parent
    bases: list[tuple[Path, str]] = []
    for variable in (DATA_DIR_ENV, RESULTS_DIR_ENV):
        if os.environ.get(variable):
            bases.append((Path(os.environ[variable]).expanduser().resolve(), f"${variable}"))
    bases.append((package, "tutorial_lib"))
    root = project_root()
    if root is not None:
        bases.append((root, "."))
    for folder in {sysconfig.get_paths()["purelib"], *site.getsitepackages()}:
        bases.append((Path(folder).resolve(), "<site-packages>"))
    bases += [
        (Path(tempfile.gettempdir()).resolve(), "<temporary folder>"),
        (Path.home().resolve(), "~"),
    ]
    # The innermost folder that holds the path wins: a virtual environment inside the checkout
    # reads <site-packages>/..., not .venv/lib/python3.11/site-packages/...
    holding = [
        (base, label) for base, label in bases if resolved == base or base in resolved.parents
    ]
    if not holding:
        return str(resolved)
    base, label = max(holding, key=lambda pair: len(pair[0].parts))
    relative = resolved.relative_to(base).as_posix()
    if label == ".":
        return relative or "."
    return label if relative == "." else f"{label}/{relative}"


def package_version(package: str) -> str:
    """Return the installed version of the distribution ``package`` (``"2.5.1"``), or
    ``"not installed"`` when it is absent; never raises."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_has_native_bf16() -> bool:
    """Return whether this CPU multiplies bfloat16 matrices natively (AVX-512-BF16 or AMX
    tiles), so that bf16 can be faster than float32 there; elsewhere PyTorch emulates bf16 on
    the CPU, more slowly than float32. False on non-x86 CPUs."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu, x86 only
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def environment_report() -> str:
    """Return a two-line description of the run: the versions, then the device, the profile and
    the data directory (each line fits the book's 100-column code cells)."""
    device = get_device()
    device_name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu"
    )
    return (
        f"Python {platform.python_version()} | torch {torch.__version__} | "
        f"torchvision {package_version('torchvision')} | "
        f"transformers {package_version('transformers')}\n"
        f"device {device.type} ({device_name}, {torch.get_num_threads()} threads"
        f"{', native bf16' if cpu_has_native_bf16() else ''}) | "
        f"profile {get_profile()} | data {display_path(data_dir())}"
    )


def print_environment() -> None:
    """Print :func:`environment_report`, plus a warning under the ``smoke`` profile that the
    numbers which follow only prove the code runs."""
    print(environment_report())
    if get_profile() == "smoke":
        print(
            "SMOKE PROFILE: tiny data and budgets so that every cell runs in seconds;\n"
            "the numbers below mean nothing about the methods."
        )


def cuda_only_note(what: str) -> bool:
    """Return ``True`` when CUDA is present; otherwise print a one-line note that ``what``
    needs a GPU and return ``False``. Guards the cells that only make sense on a GPU."""
    if torch.cuda.is_available():
        return True
    print(f"Skipped on this machine (no CUDA device):\n  {what}.")
    return False


@dataclass(frozen=True)
class ChapterRun(Generic[BudgetT]):
    """What :func:`start_chapter` hands a chapter: its budget, device, seeded generator, the
    profile and the start time, plus a scratch folder removed when the kernel exits."""

    budget: BudgetT
    device: torch.device
    generator: torch.Generator
    profile: str
    started: float
    _scratch: Path

    def seconds(self) -> float:
        """Return the seconds since the chapter started (for its result record)."""
        return time.perf_counter() - self.started

    def scratch_dir(self, name: str) -> Path:
        """Return a new, empty folder ``name-N`` for checkpoints and other throw-away files;
        everything under it is deleted when the Python process ends."""
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self._scratch))


def start_chapter(budgets: Mapping[str, BudgetT], seed: int = 0) -> ChapterRun[BudgetT]:
    """Open a chapter: print the environment report, seed every generator with ``seed``, pick
    the device and select the budget of the current profile (see :func:`select_budget`). The
    ``gpu`` profile on a machine without CUDA is announced with :func:`notice`: its budget then
    runs on the CPU.

    Returns:
        A :class:`ChapterRun` with ``budget``, ``device``, ``generator`` and ``profile``.

    Raises:
        ValueError: if ``budgets`` does not give exactly the profiles in :data:`PROFILES`.
        UnknownProfileError: if ``TUTORIAL_PROFILE`` names no known profile.
    """
    budget = select_budget(budgets)
    print_environment()
    if get_profile() == "gpu" and not torch.cuda.is_available():
        notice(
            f"{PROFILE_ENV}=gpu asks for the full GPU budget, but this machine has no CUDA "
            f"device: everything below runs that budget on the {get_device().type.upper()}, "
            f"which can take hours. Unset {PROFILE_ENV} (or set it to cpu) for a budget "
            "sized for this machine."
        )
    generator = seed_everything(seed)
    scratch = Path(tempfile.mkdtemp(prefix="tutorial-"))
    atexit.register(shutil.rmtree, scratch, True)
    return ChapterRun(budget, get_device(), generator, get_profile(), time.perf_counter(), scratch)
