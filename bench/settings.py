#!/usr/bin/env python3
"""What pydantic-settings would cost the gateway's start (issue 18): gateway/settings.py against
the same settings as pydantic-settings models.

    .venv/bin/python bench/settings.py              # 5 rounds
    .venv/bin/python bench/settings.py --rounds 3

The pydantic-settings side is made from gateway/settings.py's own dataclasses (each section a
pydantic model with the same fields and defaults, `GATEWAY_` prefix, `__` nesting, the TOML file
as a source), so both read the same config/gateway.toml with the same overrides. It has none of
the hand-written checks (`_validate`): its figures are a lower bound. In the same run,
alternating, each round:
  floor        `python -c pass`, a fresh interpreter (ms)
  --version    `gateway --version` as installed: the console script, fresh interpreter (ms)
  --version+ps the same with `import pydantic_settings` first: what the CLI would import (ms)
  import       `import gateway.settings` / `import pydantic_settings` after `import gateway.cli`'s
               other imports (sqlmodel brings pydantic along already), fresh interpreters (ms)
  importtime   `python -X importtime`'s own cumulative figure for each, after those imports (ms)
  build        making the 14 pydantic-settings models (class creation, at every start) (ms)
  load         one load of config/gateway.toml with three environment overrides, in process (µs)
Every wall-clock figure is the median of 9 runs and is also given as a ratio to the floor.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "config" / "gateway.toml"
ENV = {"GATEWAY_SMTP__PORT": "2526", "GATEWAY_DAEMON__LOG_LEVEL": "WARNING",
       "GATEWAY_MAIL__ADDRESSES": '["a@x.example", "b@x.example"]'}
GATEWAY = Path(sys.executable).with_name("gateway")


def wall_ms(argv: list[str], runs: int = 9) -> float:
    def once() -> float:
        started = time.perf_counter()
        subprocess.run(argv, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started

    return statistics.median(once() for _ in range(runs)) * 1000


PRELUDE = "import gateway.errors, gateway.model, store.transact; "  # what gateway.cli imports beside settings


def importtime_ms(module: str, runs: int = 9) -> float:
    """`python -X importtime`'s own cumulative figure for `module`, after the CLI's other imports."""
    def once() -> float:
        err = subprocess.run([sys.executable, "-X", "importtime", "-c", PRELUDE + f"import {module}"], check=True,
                             cwd=ROOT, capture_output=True, text=True).stderr
        rows = [line.split("|") for line in err.splitlines() if line.startswith("import time:")]
        return sum(int(cum) for _, cum, name in rows if name.rstrip() == f" {module}") / 1000

    return statistics.median(once() for _ in range(runs))


def pydantic_settings_class() -> Any:
    """gateway.settings.Settings as pydantic-settings models, field for field."""
    from pydantic import BaseModel, ConfigDict, create_model
    from pydantic_settings import BaseSettings, SettingsConfigDict, TomlConfigSettingsSource

    from gateway import settings as gs

    made: dict[type, Any] = {}

    def model_of(cls: type) -> Any:
        if cls in made:
            return made[cls]
        hints = typing.get_type_hints(cls)
        fields: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
            if dataclasses.is_dataclass(tp):
                tp = model_of(tp)  # type: ignore[arg-type]
                default: Any = tp()
            elif inner:  # `X | None`, or a tuple of X
                sub = model_of(inner[0])
                tp = tuple[sub, ...] if typing.get_origin(tp) is tuple else sub | None
                default = f.default if f.default is not dataclasses.MISSING else ()
            else:
                default = f.default if f.default is not dataclasses.MISSING else ...
            fields[f.name] = (tp, default)
        made[cls] = create_model(cls.__name__, __config__=ConfigDict(frozen=True, extra="forbid"), **fields)
        return made[cls]

    sections = {f.name: (model_of(f.type if isinstance(f.type, type) else typing.get_type_hints(gs.Settings)[f.name]),
                         model_of(typing.get_type_hints(gs.Settings)[f.name])())
                for f in dataclasses.fields(gs.Settings) if f.name != "base_dir"}

    class Base(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__", frozen=True,
                                          extra="forbid", toml_file=CONFIG)

        @classmethod
        def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, env_settings: Any,
                                       dotenv_settings: Any, file_secret_settings: Any) -> tuple[Any, ...]:
            return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    assert BaseModel
    return create_model("Settings", __base__=Base, base_dir=(str, "."), **sections)


def load_times(n: int) -> tuple[float, float, float]:
    import pydantic_settings  # noqa: F401  (its import is measured apart)

    from gateway.settings import load_settings

    started = time.perf_counter()
    cls = pydantic_settings_class()
    build = time.perf_counter() - started
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(ENV)
    try:
        ours = cls()  # warm both
        load_settings(CONFIG)
        assert ours.smtp.port == load_settings(CONFIG).smtp.port == 2526
        assert ours.mail.addresses == load_settings(CONFIG).mail.addresses
        started = time.perf_counter()
        for _ in range(n):
            load_settings(CONFIG)
        hand = (time.perf_counter() - started) / n
        started = time.perf_counter()
        for _ in range(n):
            cls()
        pyd = (time.perf_counter() - started) / n
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return hand * 1e6, pyd * 1e6, build * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    try:
        import pydantic_settings  # noqa: F401
    except ImportError:
        sys.exit("bench/settings.py compares against pydantic-settings: `.venv/bin/pip install pydantic-settings`")
    py = sys.executable
    print(f"load average at start: {Path('/proc/loadavg').read_text().split()[:3]}")
    rows: dict[str, list[float]] = {}
    for r in range(1, args.rounds + 1):
        got = {
            "floor": wall_ms([py, "-c", "pass"]),
            "--version": wall_ms([str(GATEWAY), "--version"]),
            "--version+ps": wall_ms([py, "-c", "import pydantic_settings; import sys; from gateway.cli import main; "
                                               "sys.argv = ['gateway', '--version']; main()"]),
            "--version (python -c)": wall_ms([py, "-c", "import sys; from gateway.cli import main; "
                                                        "sys.argv = ['gateway', '--version']; main()"]),
            "cli imports": wall_ms([py, "-c", PRELUDE]),
            "+ gateway.settings": wall_ms([py, "-c", PRELUDE + "import gateway.settings"]),
            "+ pydantic_settings": wall_ms([py, "-c", PRELUDE + "import pydantic_settings"]),
        }
        got_self = {"importtime gateway.settings": importtime_ms("gateway.settings"),
                    "importtime pydantic_settings": importtime_ms("pydantic_settings")}
        hand, pyd, build = load_times(200)
        for k, v in got.items():
            rows.setdefault(k, []).append(v)
        for k, v in got_self.items():
            rows.setdefault(k, []).append(v)
        rows.setdefault("build the models (ms)", []).append(build)
        rows.setdefault("load hand (µs)", []).append(hand)
        rows.setdefault("load pydantic-settings (µs)", []).append(pyd)
        print(f"round {r}: " + "; ".join(f"{k} {v:.1f} ms ({v / got['floor']:.2f}x)" for k, v in got.items())
              + "; " + "; ".join(f"{k} {v:.1f} ms" for k, v in got_self.items())
              + f"; models built in {build:.1f} ms; load: hand {hand:.0f} µs, pydantic-settings {pyd:.0f} µs", flush=True)
    print("medians:")
    floor = statistics.median(rows["floor"])
    for k, v in rows.items():
        m = statistics.median(v)
        print(f"  {k:30} {m:8.1f}" + (f"   ({m / floor:.2f}x floor)" if "µs" not in k and "(ms)" not in k and "importtime" not in k else ""))
    print(f"load average at end: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
