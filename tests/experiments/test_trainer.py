import pytest

from experiments import trainer
from experiments.trainer import Trainer, auto_precision, cpu_has_bf16


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu sse avx512f avx512_bf16", True), ("fpu amx_tile amx_bf16", True), ("fpu sse avx2 avx512f", False)],
)
def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_has_bf16(str(cpuinfo)) is expected
    assert cpu_has_bf16(str(tmp_path / "absent")) is False


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_precision_picks_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, native, expected):
    monkeypatch.setattr(trainer, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(trainer.torch.cuda, "is_available", lambda: False)
    assert auto_precision("cpu") == auto_precision("auto") == expected
    built = Trainer(accelerator="cpu", precision="auto", logger=False, enable_checkpointing=False)
    assert built.precision == expected
    assert Trainer(accelerator="cpu", precision="32-true", logger=False).precision == "32-true"  # explicit wins
