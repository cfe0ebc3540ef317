"""An application is one module in ``gigasid/apps/`` plus a preset: found, run and checked
without touching any other file."""

from __future__ import annotations

import importlib.util
import inspect
import pkgutil
import sys

import torch

import gigasid.apps as apps_pkg
from gigasid import registry
from gigasid.apps.base import App
from gigasid.config import load_config
from gigasid.core.sampler import sample
from gigasid.engine.execute import sample_once
from gigasid.engine.job import prepare

TOY_MODULE = '''
"""A toy application: unconditional samples that wrap around horizontally."""
from gigasid.apps.base import App
from gigasid.registry import register


@register
class ToyWrap(App):
    name = "toy_wrap"

    def domain(self, cfg):
        return ("plane", "torus")
'''

TOY_PRESET = """app: toy_wrap
input: builtin:hubble
input_resize_to: 64
output_size: [40, 56]
seed: 1
num_samples: 1
patch_size: 7
num_steps: 3
pyramid:
  min_short_side: 14
output:
  formats: [png]
"""


def test_every_module_of_the_apps_package_registers_its_application():
    """The registry finds every application class defined in ``gigasid/apps`` (no list)."""
    found = set()
    for mod in pkgutil.iter_modules(apps_pkg.__path__):
        module = importlib.import_module(f"gigasid.apps.{mod.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, App) and cls.__module__ == module.__name__ and cls is not App:
                found.add(cls.name)
    assert found and found <= set(registry.apps()), found - set(registry.apps())


def test_a_new_application_is_one_module_and_a_preset(tmp_path, monkeypatch):
    """A toy application, registered by importing its module alone, runs through
    ``gigasid run`` from its preset and its engine output equals the core sampler's, tiled
    or whole."""
    from conftest import run_here

    (tmp_path / "toy_wrap.py").write_text(TOY_MODULE)
    preset = tmp_path / "toy_wrap.yaml"
    preset.write_text(TOY_PRESET)
    spec = importlib.util.spec_from_file_location("gigasid.apps.toy_wrap", tmp_path / "toy_wrap.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gigasid.apps.toy_wrap", module)
    spec.loader.exec_module(module)  # registers the application
    try:
        assert "toy_wrap" in registry.apps()
        run_here([preset], tmp_path / "run")
        assert (tmp_path / "run" / "sample_000.png").is_file()

        job = prepare(load_config(preset))
        whole = sample_once(job, 1)
        tiled = sample_once(prepare(load_config(preset, ["engine.tile_size=17"])), 1)
        assert torch.equal(tiled, whole)
        programs = [job.program(s, 1) for s in range(job.plan.num_scales)]
        oracle = (sample(job.contexts, programs, 1) + 1) / 2
        assert float((oracle - whole).abs().max()) <= 1e-4
        # it wraps: the last column continues into the first as any two neighbours do
        img = whole.mean(dim=0)
        wrap = float((img[:, 0] - img[:, -1]).abs().mean())
        inner = float((img[:, 1:] - img[:, :-1]).abs().mean())
        assert wrap < 1.3 * inner, (wrap, inner)  # a plane gives 1.6 here, a torus 1.1
    finally:
        registry._APPS.pop("toy_wrap", None)
